"""Chains compiled into Python functions: shared code per shape, first-match order in every form
(inline, looped, indexed), jumps and gotos through the call stack, policies, counters and traces."""

from __future__ import annotations

from kproxy.iptables.compiler import MAX_INLINE_RULES
from kproxy.iptables.ext.connmark import ConnmarkMatch
from kproxy.iptables.ext.mark import MarkMatch
from kproxy.node import Node
from kproxy.packet import SYN, Packet


def node(rules: str, table: str = "filter") -> Node:
    n = Node.default()
    n.sysctls["net.ipv4.ip_forward"] = "1"
    n.iptables_restore(f"*{table}\n{rules}\nCOMMIT\n")
    return n


def counts(n: Node, chain: str, table: str = "filter") -> list[int]:
    return [r.packets for r in n.iptables[4].tables[table].chains[chain].rules]


def compiled(n: Node, table: str = "filter"):
    engine = n.subsystems["iptables_engines"][4]
    engine.precompile()
    return engine.compiled(table)


def fwd(n: Node, dst: str, dport: int = 80, src: str = "192.168.1.5", proto: str = "tcp") -> object:
    return n.receive(Packet.make(src, dst, proto, 1234, dport, tcp_flags=SYN), "eth0")


def test_chains_of_one_shape_share_code_and_keep_their_own_constants():
    n = node(":FORWARD ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n"
             "-A FORWARD -j A\n-A FORWARD -j B\n"
             "-A A -d 10.0.0.1/32 -p tcp -m tcp --dport 80 -j DROP\n"
             "-A B -d 10.0.0.2/32 -p tcp -m tcp --dport 81 -j DROP\n")
    ct = compiled(n)
    a, b = ct.chains["A"], ct.chains["B"]
    assert a.__code__ is b.__code__ and a.__defaults__ != b.__defaults__
    assert fwd(n, "10.0.0.2", 81).fate == "dropped" and counts(n, "A") == [0] and counts(n, "B") == [1]
    assert fwd(n, "10.0.0.2", 80).fate == "forwarded" and counts(n, "B") == [1]


def test_each_match_declares_its_own_inline_form():
    # connmark reads the connection's mark: its own form, not the packet-mark test it would inherit
    assert "p.mark" in MarkMatch(1, 0xFF, False).inline()[0]
    assert "p.ct.mark" in ConnmarkMatch(1, 0xFF, False).inline()[0]


def test_goto_falls_off_to_the_builtin_policy_and_jump_returns_to_the_next_rule():
    n = node(":FORWARD DROP [0:0]\n:G - [0:0]\n:J - [0:0]\n:R - [0:0]\n"
             "-A FORWARD -p udp -g G\n"
             "-A FORWARD -p tcp -j J\n"
             "-A FORWARD -j ACCEPT\n"
             "-A J -j R\n-A J -d 10.0.0.9/32 -j DROP\n"
             "-A R -j RETURN\n-A R -j DROP\n")
    assert fwd(n, "10.0.0.1", proto="udp").fate == "dropped"          # G is empty: FORWARD's policy, not rule 3
    chains = n.iptables[4].tables["filter"].chains
    assert chains["FORWARD"].packets == 1
    assert fwd(n, "10.0.0.1").fate == "forwarded"                     # R returns to J, J falls off to rule 3
    assert counts(n, "J") == [1, 0] and counts(n, "R") == [1, 0] and counts(n, "FORWARD") == [1, 1, 1]
    assert fwd(n, "10.0.0.9").fate == "dropped" and counts(n, "J") == [2, 1]


def test_a_long_unindexed_chain_keeps_first_match_order():
    count = MAX_INLINE_RULES * 2
    rules = [f"-A FORWARD -s 192.168.{i}.0/24 -j ACCEPT" for i in range(count)]
    rules.insert(count // 2, "-A FORWARD -d 10.0.0.0/8 -j DROP")       # before the match for 192.168.1.5
    n = node(":FORWARD ACCEPT [0:0]\n" + "\n".join(rules))
    assert compiled(n).compiled["FORWARD"].steps                       # the looped form
    assert fwd(n, "10.1.2.3").fate == "forwarded"                       # 192.168.1.0/24 comes first
    assert counts(n, "FORWARD")[1] == 1 and sum(counts(n, "FORWARD")) == 1
    assert fwd(n, "10.1.2.3", src="192.168.100.5").fate == "dropped"   # the DROP comes before 192.168.100.0/24


def test_an_indexed_chain_merges_unindexable_rules_in_order():
    rules = [f"-A FORWARD -d 10.0.0.{i}/32 -p tcp -m tcp --dport 80 -j ACCEPT" for i in range(1, 20)]
    rules.insert(5, "-A FORWARD -s 192.168.1.5/32 -j DROP")            # matches every destination
    n = node(":FORWARD ACCEPT [0:0]\n" + "\n".join(rules))
    cc = compiled(n).compiled["FORWARD"]
    assert cc.field == "dst" and cc.wildcards == [5]
    assert fwd(n, "10.0.0.3").fate == "forwarded"                      # its rule is before the DROP
    assert fwd(n, "10.0.0.9").fate == "dropped"                         # its rule is after the DROP
    assert fwd(n, "10.0.0.9", src="192.168.1.6").fate == "forwarded"
    assert counts(n, "FORWARD")[5] == 1


def test_a_trace_shows_each_matched_rule_the_return_and_the_policy():
    n = node(":FORWARD DROP [0:0]\n:U - [0:0]\n"
             "-A FORWARD -p tcp -j U\n"
             "-A U -p tcp -m mark --mark 0x0 -j MARK --set-xmark 0x1/0xffffffff\n"
             "-A U -p udp -j ACCEPT\n")
    res = n.receive(Packet.make("192.168.1.5", "10.0.0.1", "tcp", 1, 80, tcp_flags=SYN), "eth0", trace=True)
    events = [(e.kind, e.chain, e.rule, e.verdict) for e in res.trace.events
              if e.kind in ("chain", "rule", "return", "policy")]
    assert events == [("chain", "FORWARD", 0, ""), ("rule", "FORWARD", 1, "U"), ("rule", "U", 1, "continue"),
                      ("return", "U", 0, ""), ("policy", "FORWARD", 0, "DROP")]
    assert res.fate == "dropped" and res.packet.mark == 1


def test_a_chain_a_commit_left_alone_jumps_into_the_new_version_of_its_target():
    n = node(":FORWARD ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A FORWARD -j A\n-A A -j B\n-A B -j DROP\n")
    before = compiled(n).compiled["A"]
    assert fwd(n, "10.0.0.1").fate == "dropped"
    n.iptables_restore("*filter\n:B - [0:0]\n-A B -j ACCEPT\nCOMMIT\n", noflush=True)
    after = compiled(n)
    assert after.compiled["A"] is before                  # A's rules are the same objects: kept, rebound
    assert fwd(n, "10.0.0.1").fate == "forwarded"
    assert counts(n, "B") == [1] and counts(n, "A") == [2]
