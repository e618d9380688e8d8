"""The set match compiled inline (a lookup in the set's members) agrees with the full match for every
set of addresses and ports, and falls back to it where the lookup alone is not the answer: sets with
timeouts or counters, a swap that brings one, nets, inverted matches and extra options."""

from __future__ import annotations

import random

from kproxy.ipset.cli import run_ipset
from kproxy.iptables.ext.set import SetMatch
from kproxy.node import Node
from kproxy.packet import ACK, Packet

SETS = [
    ("A", "hash:ip", ["10.0.0.1", "10.0.0.2", "192.168.1.5"]),
    ("B", "hash:ip,port", ["10.0.0.1,tcp:80", "10.0.0.2,udp:53", "10.0.0.3,tcp:443"]),
    ("C", "bitmap:port range 0-65535", ["80", "53", "1234"]),
    ("D", "hash:ip,port,ip", ["10.0.0.1,tcp:80,192.168.1.5", "10.0.0.2,udp:53,192.168.1.6"]),
    ("N", "hash:net", ["10.0.0.0/30", "192.168.1.0/24"]),
    ("T", "hash:ip timeout 10", ["10.0.0.1", "10.0.0.3 timeout 0"]),
    ("K", "hash:ip counters", ["10.0.0.2"]),
    ("A2", "hash:ip counters", ["10.0.0.3"]),
]
RULES = [("A", "dst"), ("A", "src"), ("B", "dst,dst"), ("B", "dst,src"), ("C", "dst"), ("C", "src"),
         ("D", "dst,dst,src"), ("D", "dst,dst"), ("N", "dst"), ("T", "dst"), ("K", "dst"), ("A", "dst,dst")]
INLINED = {("A", "dst"), ("A", "src"), ("B", "dst,dst"), ("B", "dst,src"), ("C", "dst"), ("C", "src"),
           ("D", "dst,dst,src"), ("T", "dst"), ("K", "dst"), ("A", "dst,dst")}


def lab() -> Node:
    n = Node.default()
    n.sysctls["net.ipv4.ip_forward"] = "1"
    n.clock = 1000.0
    for name, typ, members in SETS:
        assert run_ipset(["create", name, *typ.split()], n.ipsets, n.clock)[0] == 0
        for m in members:
            assert run_ipset(["add", name, *m.split()], n.ipsets, n.clock)[0] == 0, m
    rules = "".join(f"-A FORWARD -m set --match-set {s} {f}\n" for s, f in RULES)
    rules += "-A FORWARD -m set ! --match-set A dst\n-A FORWARD -m set --match-set A dst --return-nomatch\n"
    n.iptables_restore(f"*filter\n:FORWARD ACCEPT [0:0]\n{rules}COMMIT\n")
    return n


def packets(seed: int, count: int) -> list[Packet]:
    rng = random.Random(seed)
    addrs = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9", "192.168.1.5", "192.168.1.6", "172.16.0.1"]
    out = []
    for _ in range(count):
        proto = rng.choice(["tcp", "udp", "icmp"])
        ports = (rng.choice([0, 53, 80, 443, 1234]), rng.choice([0, 53, 80, 443, 1234])) if proto != "icmp" else (0, 0)
        out.append(Packet.make(rng.choice(addrs), rng.choice(addrs), proto, *ports,
                               **({"tcp_flags": ACK} if proto == "tcp" else {})))
    return out


def counts(n: Node) -> list[int]:
    return [r.packets for r in n.iptables[4].tables["filter"].chains["FORWARD"].rules]


def expected(n: Node, pkts: list[Packet]) -> list[int]:
    """What the full match says, rule by rule (the sets' own lookups, as ``ipset test`` uses)."""
    got = [0] * (len(RULES) + 2)
    reg = n.ipsets
    for p in pkts:
        for i, (s, f) in enumerate([*RULES, ("A", "dst"), ("A", "dst")]):
            hit = reg.get(s).matches_packet(p, f.split(","), n.clock, reg)
            got[i] += hit != (i == len(RULES))
    return got


def test_the_inline_form_is_the_common_case_only():
    n = lab()
    forms = {(m.set_name, ",".join(m.flags), m.invert, bool(m.extra)): m.inline()
             for r in n.iptables[4].tables["filter"].chains["FORWARD"].rules for m in r.matches}
    assert {k[:2] for k, v in forms.items() if v is not None} == INLINED
    assert forms[("A", "dst", True, False)] is None and forms[("A", "dst", False, True)] is None
    assert SetMatch("A", ["dst"], False, []).inline() is None          # a set it has not seen: called


def test_compiled_set_matches_agree_with_the_full_match():
    n = lab()
    forwarded = [p.copy() for p in packets(1, 600)]
    want = expected(n, forwarded)
    for p in forwarded:
        assert n.receive(p, "eth0").fate == "forwarded"
    assert counts(n) == want
    short = RULES.index(("D", "dst,dst"))      # fewer directions than the set has parts: never a match
    assert want[short] == 0 and all(w > 0 for i, w in enumerate(want) if i != short)
    # The counters set still counts its members' packets (the inline form leaves those to the match).
    k = n.ipsets.get("K")
    assert k.members[k.parse("10.0.0.2")].packets == want[RULES.index(("K", "dst"))]


def test_timeouts_and_a_swap_are_seen_by_the_compiled_match():
    n = lab()
    rule = {k: i for i, k in reversed(list(enumerate(RULES)))}
    ask = Packet.make("172.16.0.1", "10.0.0.1", "udp", 1, 2)
    n.receive(ask.copy(), "eth0")
    assert counts(n)[rule[("T", "dst")]] == 1
    n.clock += 11                                                  # T's member times out
    n.receive(ask.copy(), "eth0")
    assert counts(n)[rule[("T", "dst")]] == 1
    assert run_ipset(["swap", "A", "A2"], n.ipsets, n.clock)[0] == 0
    before = counts(n)[rule[("A", "dst")]]
    n.receive(ask.copy(), "eth0")                                  # 10.0.0.1 was in A, is not in A2
    assert counts(n)[rule[("A", "dst")]] == before
    for _ in range(2):
        n.receive(Packet.make("172.16.0.1", "10.0.0.3", "udp", 1, 2), "eth0")
    assert counts(n)[rule[("A", "dst")]] == before + 2
    # The swapped-in set has counters: each of the four rules looking up A's dst counted both packets.
    now_a = n.ipsets.get("A")
    assert now_a.members[now_a.parse("10.0.0.3")].packets == 4 * 2
