"""The nft front end's fast paths give what the general ones give.

``fastpath`` applies kube-proxy's one-line commands without the general parser, and ``compiled`` runs
chains as generated Python instead of the statement interpreter. Each is compared here with the general
form on whole rulesets: the same objects, handles, listings and errors, the same packet fates.
"""

from __future__ import annotations

import random
import sys
from functools import partial
from pathlib import Path

import pytest

from kproxy.nftables import fastpath
from kproxy.nftables.cli import run_nft
from kproxy.nftables.evaluate import attach
from kproxy.nftables.model import Ruleset
from kproxy.node import Node
from kproxy.packet import ACK, SYN, Packet, parse_addr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from nft_rulesets import kube_proxy_script, service_ip  # noqa: E402

# Lines the fast path must leave to the general parser, or must get exactly right, between the common ones.
TRICKY = """\
add chain ip kube-proxy extra
add rule ip kube-proxy extra ip saddr 10.1.2.3 jump no-such-chain
add rule ip kube-proxy extra numgen random mod 2 vmap { 1 : goto extra , 0 : goto extra }
add rule ip kube-proxy extra numgen random mod 3 vmap { 0 : goto extra , 1 : goto extra }
add rule ip kube-proxy extra numgen random mod 3 vmap { 0 : goto extra, 1 : goto extra, 2 : jump extra }
add rule ip kube-proxy extra numgen random mod 2 vmap { 0 : goto extra,1 : goto extra }
add rule ip kube-proxy extra ip saddr 10.0.0.0/8 jump extra
add rule ip kube-proxy extra ip daddr 10.1.1.1 tcp dport 80 ip saddr != 10.0.0.0/33 jump extra
add rule ip kube-proxy extra ip daddr 10.1.1.1 udp dport 53 ip saddr != 10.0.0.0/8 goto extra
add rule ip kube-proxy extra ip daddr 10.1.1.2 ip saddr != 10.0.0.0/9 jump extra
add rule ip kube-proxy extra ip daddr 10.1.1.2 ip saddr != 10.0.0.0/0 goto extra
add rule ip kube-proxy extra ip daddr 10.1.1.2 tcp dport 99999 ip saddr != 10.0.0.0/9 jump extra
add rule ip kube-proxy extra ip saddr 10.1.1.4 jump mark-for-masquerade
add rule ip kube-proxy extra meta l4proto tcp dnat to 10.1.1.5:80
add rule ip kube-proxy nat-output ip saddr 10.1.1.4 jump mark-for-masquerade
add rule ip kube-proxy nat-output meta l4proto tcp dnat to 10.1.1.4:80
add rule ip kube-proxy extra ip saddr 10.1.1.6 goto extra
add rule ip kube-proxy extra meta l4proto udp dnat to 10.1.1.256:53
add rule ip kube-proxy extra ip saddr 10.1.1.7 jump no-such-chain
add rule ip kube-proxy extra meta l4proto udp dnat to 10.1.1.7:53
add rule ip kube-proxy extra meta l4proto udp dnat to 10.9.9.9:53
add rule ip kube-proxy extra meta l4proto tcp dnat to 10.9.9.9
add rule ip kube-proxy nat-prerouting meta l4proto tcp dnat to 10.9.9.9:80
add element ip kube-proxy service-ips { 172.30.0.1 . tcp . 80 : goto extra }
add element ip kube-proxy service-ips { 172.30.0.9 . tcp . 80 : goto extra, 172.30.0.8 . udp . 53 : drop }
add element ip kube-proxy service-ips { 172.30.0.7 . tcp . 80 comment "x" : goto extra }
add element ip kube-proxy cluster-ips { 172.30.0.250 , 172.30.0.3 , 172.30.0.250 }
add element ip kube-proxy cluster-ips { 172.30.0.0/24 }
flush chain ip kube-proxy extra
add rule ip kube-proxy extra numgen random mod 1 vmap { 0 : goto extra }
flush chain ip kube-proxy no-such-chain
add chain ip kube-proxy nat-output
flush chain ip kube-proxy nat-output
add rule ip kube-proxy nat-output ip saddr 10.1.1.1 jump mark-for-masquerade
add rule ip kube-proxy nat-output meta l4proto tcp dnat to 10.1.1.1:80
add chain ip kube-proxy extra
flush chain ip kube-proxy extra
add rule ip kube-proxy extra ip saddr 10.1.1.2 jump extra
add rule ip kube-proxy extra meta l4proto udp dnat to 10.1.1.2:53
add chain ip kube-proxy ep2
flush chain ip kube-proxy ep2
add rule ip kube-proxy ep2 ip saddr 10.1.1.3 jump no-such-chain
add rule ip kube-proxy ep2 meta l4proto tcp dnat to 10.1.1.3:80
add chain ip no-such-table c
"""


def load(script: str, fast: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, Ruleset]:
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(fastpath, "usable", lambda text: False)
        rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), stdin=script)
    return rc, err, rs


def listing(rs: Ruleset) -> str:
    return run_nft(["-a", "list", "ruleset"], rs)[1]


VALID = "".join(line + "\n" for line in TRICKY.splitlines() if "no-such" not in line and "/33" not in line
                and "/24" not in line and "99999" not in line
                and ".256" not in line)


@pytest.mark.parametrize("tail", ["", VALID, TRICKY])
def test_fast_path_makes_what_the_general_parser_makes(tail: str, monkeypatch: pytest.MonkeyPatch) -> None:
    script = kube_proxy_script(12, 3) + tail
    fast_rc, fast_err, fast = load(script, True, monkeypatch)
    slow_rc, slow_err, slow = load(script, False, monkeypatch)
    assert (fast_rc, fast_err) == (slow_rc, slow_err)
    if tail == TRICKY:
        assert fast_rc == 1 and "No such file or directory" in fast_err
        return
    assert fast_rc == 0, fast_err
    assert fast.tables == slow.tables  # every chain, rule, statement, set, element and handle
    locs = [[getattr(r, "anon_locs", []) for c in t.chains.values() for r in c.rules] for t in (fast, slow)
            for t in t.tables]
    assert locs[0] == locs[1]  # where a later kernel error about an anonymous map would point
    assert listing(fast) == listing(slow)


# Lines the fast path must leave to the general parser, each after an otherwise valid script.
ALONE = [
    "add rule ip kube-proxy extra numgen random mod 2 vmap { 0 : goto extra , 1 : goto no-such-chain }",
    "add rule ip kube-proxy extra numgen random mod 1 vmap { 0 : goto 123 }",
    "add rule ip kube-proxy extra numgen random mod 1 vmap { 0 : goto accept }",
    "add rule ip kube-proxy extra ip saddr 010.1.1.1 jump extra",
    "add rule ip kube-proxy extra ip saddr 10.1.1.1 jump 0x10",
    "add rule ip kube-proxy extra meta l4proto tcp dnat to 10.1.1.01:80",
    "add rule ip kube-proxy extra ip daddr 10.1.1.2 tcp dport 80 ip saddr != 10.00.0.0/8 jump extra",
    "add chain ip kube-proxy ep3\nflush chain ip kube-proxy ep3\nadd rule ip kube-proxy ep3 ip saddr 10.1.1.3 "
    "jump extra\nadd rule ip kube-proxy ep3 meta l4proto tcp dnat to 10.1.1.300:80",
]


@pytest.mark.parametrize("line", ALONE)
def test_fast_path_leaves_unusual_lines_to_the_general_parser(line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    script = kube_proxy_script(3, 2) + "add chain ip kube-proxy extra\n" + line + "\n"
    fast_rc, fast_err, fast = load(script, True, monkeypatch)
    slow_rc, slow_err, slow = load(script, False, monkeypatch)
    assert (fast_rc, fast_err) == (slow_rc, slow_err)
    assert fast.tables == slow.tables
    if "no-such-chain" in line:
        assert fast_rc == 1 and "No such file or directory" in fast_err


def general_parser_input(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the general parser is given from now on (its tokens, as text), collected as it runs."""
    from kproxy.nftables.parser import Parser

    general: list[str] = []
    real = Parser.commands

    def spy(self: Parser) -> None:
        general.append("".join(t.text + " " for t in self.toks if t.kind != "nl"))
        real(self)

    monkeypatch.setattr(Parser, "commands", spy)
    return general


def test_fast_path_takes_most_lines_of_a_kube_proxy_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of it: kube-proxy's bulk lines never reach the general parser."""
    general = general_parser_input(monkeypatch)
    script = kube_proxy_script(50, 4)
    rc, err, _ = load(script, True, monkeypatch)
    assert rc == 0, err
    parsed = "".join(general)
    assert "dnat to" not in parsed and "numgen" not in parsed and "service-ips { 172" not in parsed
    assert len(parsed) < 6000 < len(script) // 10  # the table's skeleton, nothing per Service
    assert script.count("\n") > 1000


def test_fast_path_takes_most_lines_of_the_proxiers_full_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The nftables proxier's own transaction (endpoint chains declared first and filled later, the
    service masquerade rule without a port) leaves only the table's skeleton to the general parser."""
    from bench_proxier import build
    from kproxy.backends.nft import EmulatedNft
    from kproxy.proxy.config import ProxyConfig
    from kproxy.proxy.nftables import NftablesProxier

    general = general_parser_input(monkeypatch)
    node = Node.from_description({"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]}]})
    cfg = ProxyConfig.from_dict({"clusterCIDR": "10.128.0.0/9", "hostnameOverride": "node-a", "mode": "nftables"})
    result = NftablesProxier(cfg, EmulatedNft(node), ["192.168.0.2"]).sync(build(60, 4))
    assert not result.error and result.rules["rules"] == 60 * 10
    parsed = "".join(general)
    assert "dnat to" not in parsed and "numgen" not in parsed and "saddr !=" not in parsed
    assert "cluster-ips { 10" not in parsed and len(parsed) < 8000 < len(result.text) // 10


def node_with(rs: Ruleset) -> Node:
    node = Node.from_description({
        "name": "n",
        "interfaces": [{"name": "eth0", "addresses": ["192.168.1.10/24"]},
                       {"name": "cni0", "addresses": ["10.244.1.1/24"]}],
        "routes": ["default via 192.168.1.1 dev eth0", "10.100.0.0/14 dev cni0"],
        "sysctls": {"net.ipv4.ip_forward": "1"},
    })
    node.clock = 1000.0
    node.subsystems["rng"] = random.Random(0)     # numgen random draws the same on every node made here
    node.nftables = rs
    assert attach(node) == []
    return node


def outcomes(node: Node, packets: list[tuple[int, int, int, int]], interpret: bool,
             monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """Fate, rewritten addresses and ports, conntrack state and the reply's fate of each packet."""
    from kproxy.nftables import compiled, evaluate

    out: list[tuple[object, ...]] = []
    with monkeypatch.context() as m:
        if interpret:
            # Every chain through the statement interpreter: the compiled functions are never used.
            m.setattr(compiled.Compiler, "chain", lambda self, chain: partial(self.runner.interpret_chain, chain))
            m.setattr(compiled.Compiler, "fuse", lambda self: self.runner.run_base)   # nor the base chains' code
            m.setattr(evaluate.ChainRunner, "run_chain", evaluate.ChainRunner.interpret_chain)
            attach(node)
        for src, dst, sport, dport in packets:
            res = node.receive(Packet(src=src, dst=dst, proto=6, sport=sport, dport=dport, tcp_flags=SYN,
                                      length=60), "cni0")
            p = res.packet
            row: tuple[object, ...] = (res.fate, p.src, p.dst, p.sport, p.dport, p.ctstate, p.mark)
            if res.fate == "forwarded":
                back = node.receive(Packet(src=p.dst, dst=p.src, proto=6, sport=p.dport, dport=p.sport,
                                           tcp_flags=SYN | ACK, length=60), res.out_dev)
                again = node.receive(Packet(src=src, dst=dst, proto=6, sport=sport, dport=dport, tcp_flags=ACK,
                                            length=52), "cni0")
                row += (back.fate, back.packet.src, again.fate, again.packet.dst, again.packet.ctstate)
            out.append(row)
    return out


def test_compiled_chains_decide_as_the_interpreter_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same packets through the kube-proxy ruleset (plus a firewall map, a no-endpoints map and a
    source-range rule), once compiled and once interpreted: the same fates, DNAT choices, marks and replies."""
    extra = """\
add chain ip kube-proxy fw
add rule ip kube-proxy fw ip saddr != { 10.244.1.0/28 } drop
add element ip kube-proxy firewall-ips { 172.30.0.2 . tcp . 80 : goto fw }
add element ip kube-proxy no-endpoint-services { 172.30.0.3 . tcp . 80 : goto reject-chain }
add element ip kube-proxy no-endpoint-services { 172.30.0.4 . tcp . 81 : drop }
add rule ip kube-proxy filter-forward meta mark and 0x10 == 0x10 counter drop
add set ip kube-proxy marked { type ipv4_addr ; }
add element ip kube-proxy marked { 10.100.0.1, 10.100.0.16, 10.100.0.33, 10.100.0.48 }
add rule ip kube-proxy filter-forward ip daddr @marked meta mark set meta mark | 0x20 counter
add rule ip kube-proxy filter-forward ip saddr { 10.244.1.5, 10.244.1.9 } meta mark set 0x100
add rule ip kube-proxy filter-forward ip saddr != { 10.244.1.6, 10.244.1.7 } meta mark set meta mark ^ 0x1
add rule ip kube-proxy filter-forward meta mark and 0x121 == 0x121 drop
"""
    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), stdin=kube_proxy_script(20, 5) + extra)
    assert rc == 0, err
    rng = random.Random(7)
    pod = parse_addr("10.244.1.5")[1]
    packets = [(pod + rng.randrange(40), parse_addr(service_ip(rng.randrange(24)))[1], 1000 + i, rng.choice([80, 81]))
               for i in range(300)]
    compiled = outcomes(node_with(rs), packets, False, monkeypatch)
    _, _, _, rs2 = run_nft(["-f", "-"], Ruleset(), stdin=kube_proxy_script(20, 5) + extra)
    interpreted = outcomes(node_with(rs2), packets, True, monkeypatch)
    assert compiled == interpreted
    fates = {row[0] for row in compiled}
    assert {"forwarded", "dropped"} <= fates  # the run saw DNAT, the firewall and the no-endpoint drops
    # and the marks, set after a named set's and anonymous sets' lookups
    assert {row[6] for row in compiled} >= {0x0, 0x1, 0x21, 0x101}


def test_compiled_chains_follow_a_transaction_applied_in_place() -> None:
    """kube-proxy's partial syncs change the table in place (the hooks stay): the next connection must
    take the new rules, not the chains compiled before."""
    from kproxy.backends.nft import EmulatedNft

    node = node_with(Ruleset())
    nft = EmulatedNft(node)
    nft.run(kube_proxy_script(3, 1))
    pod, vip = parse_addr("10.244.1.5")[1], parse_addr(service_ip(1))[1]

    def dnat_to(sport: int) -> int:
        res = node.receive(Packet(src=pod, dst=vip, proto=6, sport=sport, dport=80, tcp_flags=SYN, length=60), "cni0")
        return res.packet.dst

    before = dnat_to(1000)
    endpoint = next(c for c in node.nftables.find("ip", "kube-proxy").chains if c.startswith("endpoint-00001000"))
    nft.run(f"flush chain ip kube-proxy {endpoint}\n"
            f"add rule ip kube-proxy {endpoint} meta l4proto tcp dnat to 10.100.9.9:8080\n")
    assert node.subsystems["nftables_runners"], "the hooks stayed"
    assert (before, dnat_to(1001)) == (parse_addr("10.100.0.16")[1], parse_addr("10.100.9.9")[1])


def test_compiled_verdict_maps_and_ct_states_decide_as_the_interpreter_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kind of verdict a map can hold (jump and return, goto, accept, drop, continue, return), in a
    named map, an anonymous numgen map and a named map of intervals, and ``ct state`` sets with and without ``untracked``
    (notrack packets before and after conntrack, new ones, established ones): compiled as interpreted, mark bit by mark bit."""
    script = """\
add table ip t
add chain ip t j
add chain ip t g
add chain ip t raw { type filter hook prerouting priority -300 ; }
add chain ip t pre { type filter hook prerouting priority 0 ; }
add map ip t m { type ipv4_addr . inet_proto . inet_service : verdict ; }
add element ip t m { 10.9.0.1 . tcp . 80 : jump j, 10.9.0.2 . tcp . 80 : goto g, 10.9.0.3 . tcp . 80 : accept }
add element ip t m { 10.9.0.4 . tcp . 80 : drop, 10.9.0.5 . tcp . 80 : continue, 10.9.0.6 . tcp . 80 : return }
add rule ip t j mark set mark or 0x1
add rule ip t j return
add rule ip t j mark set mark or 0x100
add rule ip t g mark set mark or 0x2
add rule ip t raw ip daddr 10.9.0.8 notrack
add rule ip t raw ct state invalid mark set mark or 0x200
add rule ip t raw ct state untracked mark set mark or 0x400
add rule ip t pre ip daddr . meta l4proto . th dport vmap @m
add rule ip t pre mark set mark or 0x4
add rule ip t pre ct state untracked mark set mark or 0x8
add rule ip t pre ct state new mark set mark or 0x10
add rule ip t pre ct state established,untracked mark set mark or 0x20
add rule ip t pre ct state invalid mark set mark or 0x40
add rule ip t pre numgen random mod 4 vmap { 0 : jump j, 1 : goto g, 2 : continue, 3 : drop }
add rule ip t pre mark set mark or 0x80
add map ip t iv { type ipv4_addr : verdict ; flags interval ; }
add element ip t iv { 10.9.0.0/30 : goto g, 10.9.0.6 : drop }
add rule ip t pre ip daddr vmap @iv
add rule ip t pre mark set mark or 0x800
"""
    pod = parse_addr("10.244.1.5")[1]
    packets = [(pod, parse_addr(f"10.9.0.{1 + i % 9}")[1], 2000 + i, 80) for i in range(120)]
    runs = []
    for interpret in (False, True):
        rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), stdin=script)
        assert rc == 0, err
        runs.append(outcomes(node_with(rs), packets, interpret, monkeypatch))
    assert runs[0] == runs[1]
    marks = {row[6] for row in runs[0]}
    for bit in (0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x80, 0x200, 0x400, 0x800):   # each rule decided some packet
        assert any(isinstance(m, int) and m & bit for m in marks), hex(bit)
    assert not any(isinstance(m, int) and m & 0x100 for m in marks)   # the jump's chain returned before it


def test_element_words_check_agrees_with_the_word_by_word_one() -> None:
    """``PLAIN_WORDS`` (one pattern over an element list) takes exactly the lists whose every word, as
    ``ELEM_WORDS`` splits them, is punctuation or a plain word."""
    import re

    word = re.compile(fastpath.WORD)
    rng = random.Random(5)
    alphabet = " ,.:!=aZ09_/-\t\"x"
    for _ in range(50000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        by_word = all(w in fastpath.PUNCT or word.fullmatch(w) for w in fastpath.ELEM_WORDS.findall(text))
        assert (fastpath.PLAIN_WORDS.fullmatch(text) is not None) == by_word, text


INLINED = """\
add table ip t
add chain ip t pre { type filter hook prerouting priority 0 ; }
add chain ip t post { type nat hook postrouting priority 100 ; }
add chain ip t small
add chain ip t inner
add chain ip t gone
add chain ip t big
add rule ip t small mark set mark or 0x1
add rule ip t small ip daddr 10.9.0.2 return
add rule ip t small jump inner
add rule ip t small mark set mark or 0x2
add rule ip t inner ip daddr 10.9.0.3 goto gone
add rule ip t inner ip daddr 10.9.0.4 accept
add rule ip t inner ip daddr 10.9.0.5 drop
add rule ip t inner mark set mark or 0x4
add rule ip t gone mark set mark or 0x8
add rule ip t gone ip daddr 10.9.0.3 tcp dport 81 return
add rule ip t big mark set mark or 0x10
add rule ip t big ip daddr 10.9.0.6 return
add rule ip t big jump small
add rule ip t big mark set mark or 0x20
add rule ip t big ip daddr 10.9.0.7 drop
add rule ip t pre ip daddr 10.9.0.1-10.9.0.5 jump small
add rule ip t pre mark set mark or 0x40
add rule ip t pre ip daddr 10.9.0.6-10.9.0.9 jump big
add rule ip t pre numgen random mod 3 offset 5 vmap { 5 : jump big, 7 : goto inner }
add rule ip t pre mark set mark or 0x80
add rule ip t post jump small
"""


def deep_jumps(levels: int) -> str:
    """A base chain jumping through ``levels`` one-rule chains, the last of which marks the packet."""
    out = ["add table ip d", "add chain ip d pre { type filter hook prerouting priority 0 ; }"]
    out += [f"add chain ip d c{i}" for i in range(levels)]
    out += [f"add rule ip d c{i} jump c{i + 1}" for i in range(levels - 1)]
    out += [f"add rule ip d c{levels - 1} mark set mark or 0x1", "add rule ip d pre jump c0"]
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("script", [INLINED, deep_jumps(4), deep_jumps(15)],
                         ids=["returns-gotos-verdicts", "deep-4", "deep-15"])
def test_jumps_compiled_inline_decide_as_calls_and_the_interpreter_do(script: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A jump to a short chain is compiled into the jumping chain's code. Its RETURN (a ``return``, the
    end of the chain) goes on after the jump, other verdicts (accept, drop, a goto's chain's outcome) end
    the base chain, and jumps nest, also from a ``numgen`` map (a tuple of its actions, one draw missing) (as deep as a ruleset may: ``Too many links`` beyond): the same packets
    decide the same with inlining, with every jump a call, and interpreted."""
    from kproxy.nftables import compiled

    pod = parse_addr("10.244.1.5")[1]
    packets = [(pod, parse_addr(f"10.9.0.{i % 10}")[1], 3000 + i, 80 + i % 2) for i in range(60)]
    runs = []
    for how in ("inline", "calls", "interpret"):
        with monkeypatch.context() as m:
            if how == "calls":
                m.setattr(compiled, "INLINE_RULES", 0)
            rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), stdin=script)
            assert rc == 0, err
            node = node_with(rs)
            runs.append(outcomes(node, packets, how == "interpret", monkeypatch))
            if how == "inline":
                built = {name for r in node.subsystems["nftables_runners"] for name in r.compiled.chains}
                assert not built & {"small", "c1"}, "the short chains were compiled inline"
    assert runs[0] == runs[1] == runs[2]
    if script is INLINED:
        fates, marks = {row[0] for row in runs[0]}, {row[6] for row in runs[0]}
        assert {"forwarded", "dropped"} <= fates
        for bit in (0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80):
            assert any(isinstance(mk, int) and mk & bit for mk in marks), hex(bit)


FUSED = """\
add table ip t
add chain ip t pre { type filter hook prerouting priority 0 ; policy drop ; }
add chain ip t forw { type filter hook forward priority 0 ; }
add chain ip t natpre { type nat hook prerouting priority -100 ; }
add chain ip t small
add rule ip t small ip daddr 10.9.0.3 accept
add rule ip t pre ip daddr 10.9.0.1 accept
add rule ip t pre ip daddr 10.9.0.2 return
add rule ip t pre jump small
add rule ip t pre ip daddr 10.9.0.4 tcp dport 81 accept
add rule ip t pre ip daddr 10.9.0.5-10.9.0.9 mark set mark or 0x1 accept
add rule ip t forw mark 0x1 ip daddr 10.9.0.5 drop
add rule ip t natpre ip daddr 10.9.0.6 meta l4proto tcp dnat to 10.100.0.6:8080
add rule ip t natpre ip daddr 10.9.0.7 return
add rule ip t natpre ip daddr 10.9.0.8 dnat to 10.100.0.8
"""


def test_base_chains_compiled_as_their_hook_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A base chain's compiled code is itself the function at its hook (or among the nat chains) once built:
    its end and its ``return`` are the policy (drop here), its verdicts pass on, and it decides as the
    interpreter does. When the chains are changed in place, the hook's own function is back until the next
    packet builds the new code."""
    from kproxy.netfilter.hooks import PREROUTING
    from kproxy.nftables.evaluate import forget_compiled

    pod = parse_addr("10.244.1.5")[1]
    packets = [(pod, parse_addr(f"10.9.0.{i % 10}")[1], 4000 + i, 80 + i % 2) for i in range(40)]
    runs = []
    for interpret in (False, True):
        rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), stdin=FUSED)
        assert rc == 0, err
        node = node_with(rs)
        runs.append(outcomes(node, packets, interpret, monkeypatch))
        if not interpret:
            pre = next(r for r in node.subsystems["nftables_runners"] if r.chain.name == "pre")
            nat = next(r for r in node.subsystems["nftables_runners"] if r.chain.name == "natpre")
            assert pre.compiled.fused in node.hooks.fns[(4, PREROUTING)] and pre.hook not in node.hooks.fns[(4, PREROUTING)]
            assert [e[3] for e in node.nat._lookups[(4, PREROUTING)]] == [nat.compiled.fused]
            forget_compiled(node)
            assert pre.hook in node.hooks.fns[(4, PREROUTING)] and pre.compiled.fused is None
            assert [e[3] for e in node.nat._lookups[(4, PREROUTING)]] == [nat.hook]
            res = node.receive(Packet(src=pod, dst=parse_addr("10.9.0.1")[1], proto=6, sport=9, dport=80,
                                      tcp_flags=SYN, length=60), "cni0")
            assert res.fate == "forwarded" and pre.compiled.fused in node.hooks.fns[(4, PREROUTING)]
    assert runs[0] == runs[1]
    assert {row[0] for row in runs[0]} == {"forwarded", "dropped"}
    assert {row[2] for row in runs[0]} >= {parse_addr("10.100.0.6")[1], parse_addr("10.100.0.8")[1]}


def test_compiled_chains_and_indexes_hold_one_object_per_number() -> None:
    """A Service's address in its map key and in its chain's test, an endpoint's in its chain's test and in
    its DNAT are one object (``intern_int``): what a new connection reads of a Service it has not met."""
    from kproxy.netfilter.nat import NatRange
    from kproxy.nftables.compiled import SetIndex
    from nft_rulesets import endpoint_chain, service_chain

    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), stdin=kube_proxy_script(3, 2))
    assert rc == 0, err
    node = node_with(rs)
    runner = next(r for r in node.subsystems["nftables_runners"] if r.chain.name == "nat-prerouting")
    runner.compiled.precompile()
    vip = parse_addr(service_ip(1))[1]
    index = next(k for k in runner.compiled.fused.__defaults__ if isinstance(k, SetIndex) and k.exact)
    key = next(k for k in index.exact if k[0] == vip)
    in_chain = next(k for k in runner.compiled.chains[service_chain(1)].__defaults__ if k == vip)
    assert key[0] is in_chain
    ep = runner.compiled.chains[endpoint_chain(1, 1)].__defaults__
    rng = next(k for k in ep if isinstance(k, NatRange))
    assert next(k for k in ep if type(k) is int and k == rng.min_addr) is rng.min_addr
