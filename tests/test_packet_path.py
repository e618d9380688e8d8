"""The packet path on the emulated node: hooks, traversal semantics, conntrack states and NAT bindings."""

from __future__ import annotations

import pytest

from kproxy.node import Node
from kproxy.packet import ACK, FIN, ICMP, RST, SYN, Packet, parse_addr

KUBE = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-WEB - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SEP-B - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-WEB
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp -m tcp --dport 30080 -j KUBE-MARK-MASQ
-A KUBE-NODEPORTS -p tcp -m tcp --dport 30080 -j KUBE-SVC-WEB
-A KUBE-SVC-WEB ! -s 10.244.0.0/16 -d 10.96.0.20/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-WEB -m statistic --mode nth --every 2 --packet 0 -j KUBE-SEP-A
-A KUBE-SVC-WEB -j KUBE-SEP-B
-A KUBE-SEP-A -s 10.244.1.6/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.244.1.6:8080
-A KUBE-SEP-B -s 10.244.2.6/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-B -p tcp -m tcp -j DNAT --to-destination 10.244.2.6:8080
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -j KUBE-SERVICES
-A FORWARD -j KUBE-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.99/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-SERVICES -d 10.96.0.98/32 -j DROP
COMMIT
"""


def ip(text: str) -> int:
    return parse_addr(text)[1]


def tracked(node: Node) -> Node:
    """Connection tracking on, as on any node with a rule that needs it (it is off in a bare namespace)."""
    node.conntrack.enabled = True
    return node


def worker() -> Node:
    node = Node.from_description({
        "name": "worker-1",
        "interfaces": [{"name": "eth0", "addresses": ["192.168.1.10/24"]},
                       {"name": "cni0", "addresses": ["10.244.1.1/24"]}],
        "routes": ["default via 192.168.1.1 dev eth0", "10.244.2.0/24 via 192.168.1.11 dev eth0"],
    })
    node.clock = 1000.0
    node.iptables_restore(KUBE)
    return node


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = SYN) -> Packet:
    return Packet.make(src, dst, "tcp", sport, dport, tcp_flags=flags)


def counters(node: Node, table: str, chain: str) -> list[int]:
    return [r.packets for r in node.iptables[4].tables[table].chains[chain].rules]


def test_clusterip_from_a_pod_is_dnated_once_and_the_reply_is_un_nated():
    node = worker()
    syn = node.receive(tcp("10.244.1.5", "10.96.0.20", 40000, 80), "cni0")
    assert syn.fate == "forwarded" and syn.out_dev == "cni0"
    assert (syn.packet.dst_str, syn.packet.dport) == ("10.244.1.6", 8080)
    assert syn.packet.ctstate == "NEW" and syn.packet.src_str == "10.244.1.5"   # pod source: no masquerade
    synack = node.receive(tcp("10.244.1.6", "10.244.1.5", 8080, 40000, SYN | ACK), "cni0")
    assert synack.fate == "forwarded"
    assert (synack.packet.src_str, synack.packet.sport) == ("10.96.0.20", 80)
    assert synack.packet.ctstate == "ESTABLISHED"
    ack = node.receive(tcp("10.244.1.5", "10.96.0.20", 40000, 80, ACK), "cni0")
    assert ack.packet.dst_str == "10.244.1.6" and ack.packet.ctstate == "ESTABLISHED"
    # The nat table saw only the first packet: one hit on the service rule, one on the endpoint's DNAT.
    assert counters(node, "nat", "KUBE-SERVICES")[0] == 1
    assert counters(node, "nat", "KUBE-SEP-A") == [0, 1]
    entry = node.conntrack.entries()[0]
    assert entry.tcp_state == "ESTABLISHED" and entry.status & 0x4   # ASSURED after the third packet


def test_nth_statistic_spreads_new_connections_and_shares_its_counter():
    node = worker()
    dests = [node.receive(tcp("10.244.1.5", "10.96.0.20", 41000 + i, 80), "cni0").packet.dst_str for i in range(4)]
    assert dests == ["10.244.1.6", "10.244.2.6", "10.244.1.6", "10.244.2.6"]


def test_nodeport_from_outside_is_masqueraded_to_the_out_interface_address():
    node = worker()
    res = node.receive(tcp("203.0.113.7", "192.168.1.10", 50000, 30080), "eth0")
    assert res.fate == "forwarded"
    p = res.packet
    assert p.dst_str in ("10.244.1.6", "10.244.2.6") and p.dport == 8080
    expected_src = "10.244.1.1" if p.dst_str == "10.244.1.6" else "192.168.1.10"
    assert p.src_str == expected_src
    assert p.mark & 0x4000 == 0          # KUBE-POSTROUTING clears the bit it used
    conn = node.conntrack.entries()[0]
    assert conn.status & 0x30 == 0x30     # both SRC_NAT and DST_NAT


def test_reject_and_drop_are_reported_as_fates():
    node = worker()
    rej = node.receive(tcp("10.244.1.5", "10.96.0.99", 40000, 80), "cni0")
    assert rej.fate == "rejected" and rej.reject_with == "icmp-port-unreachable" and rej.hook == "FORWARD"
    drop = node.receive(Packet.make("10.244.1.5", "10.96.0.98", "udp", 1, 2), "cni0")
    assert drop.fate == "dropped" and drop.hook == "FORWARD"
    assert node.conntrack.entries() == []   # dropped first packets never confirm


def test_locally_generated_traffic_is_dnated_in_output_and_rerouted():
    node = worker()
    res = node.send(tcp("0.0.0.0", "10.96.0.20", 45000, 80))
    assert res.fate == "forwarded"
    assert res.packet.dst_str in ("10.244.1.6", "10.244.2.6")
    assert res.out_dev == ("cni0" if res.packet.dst_str == "10.244.1.6" else "eth0")
    assert res.packet.src_str == ("10.244.1.1" if res.out_dev == "cni0" else "192.168.1.10")


def test_goto_returns_to_the_caller_of_the_calling_chain():
    node = tracked(Node.default())
    node.iptables_restore("""*filter
:A - [0:0]
:B - [0:0]
-A INPUT -j A
-A INPUT -p udp -j DROP
-A A -g B
-A A -j ACCEPT
-A B -j RETURN
COMMIT
""")
    res = node.receive(Packet.make("192.168.1.5", "192.168.1.10", "udp", 1, 2), "eth0")
    assert res.fate == "dropped"                        # RETURN from B went back to INPUT, not to A
    assert counters(node, "filter", "A") == [1, 0]


def test_accept_ends_only_the_current_table():
    node = tracked(Node.default())
    node.iptables_restore("*mangle\n-A INPUT -j ACCEPT\nCOMMIT\n*filter\n:INPUT DROP [0:0]\nCOMMIT\n")
    res = node.receive(Packet.make("192.168.1.5", "192.168.1.10", "udp", 1, 2), "eth0")
    assert res.fate == "dropped"
    assert node.iptables[4].tables["filter"].chains["INPUT"].packets == 1


def test_masquerade_keeps_ports_until_they_clash():
    node = worker()
    node.iptables_restore("*nat\n-A POSTROUTING -o eth0 -j MASQUERADE\nCOMMIT\n")
    a = node.receive(Packet.make("10.244.1.5", "8.8.8.8", "udp", 5000, 53), "cni0")
    b = node.receive(Packet.make("10.244.1.6", "8.8.8.8", "udp", 5000, 53), "cni0")
    assert (a.packet.src_str, a.packet.sport) == ("192.168.1.10", 5000)
    # The clash moves the second flow to a port of 1024-65535 found from a random offset (6.x kernels).
    assert b.packet.src_str == "192.168.1.10" and 1024 <= b.packet.sport <= 65535 and b.packet.sport != 5000
    reply = node.receive(Packet.make("8.8.8.8", "192.168.1.10", "udp", 53, b.packet.sport), "eth0")
    assert (reply.packet.dst_str, reply.packet.dport) == ("10.244.1.6", 5000)


def test_masquerade_without_any_usable_address_drops():
    node = Node.from_description({"interfaces": [{"name": "tun0", "addresses": []}], "routes": ["10.50.0.0/16 dev tun0"]})
    node.iptables_restore("*nat\n-A POSTROUTING -o tun0 -j MASQUERADE\nCOMMIT\n")
    res = node.send(Packet.make("127.0.0.1", "10.50.0.1", "udp", 5000, 53))
    assert res.fate == "dropped" and res.hook == "POSTROUTING"


def test_udp_timeout_grows_to_120s_only_after_two_seconds_of_replies():
    node = tracked(Node.default())
    node.clock = 100.0
    node.receive(Packet.make("192.168.1.5", "192.168.1.10", "udp", 1000, 53), "eth0")
    node.send(Packet.make("192.168.1.10", "192.168.1.5", "udp", 53, 1000))
    conn = node.conntrack.entries()[0]
    assert conn.timeout_at(node.now()) == 30 and not conn.status & 0x4
    node.clock = (node.clock or 0) + 3
    node.receive(Packet.make("192.168.1.5", "192.168.1.10", "udp", 1000, 53), "eth0")
    assert conn.timeout_at(node.now()) == 120 and conn.status & 0x4


def test_conntrack_entries_expire():
    node = tracked(Node.default())
    node.clock = 0.0
    node.receive(Packet.make("192.168.1.5", "192.168.1.10", "udp", 1000, 53), "eth0")
    node.clock = 31.0
    assert node.conntrack.entries() == []


@pytest.mark.parametrize("flags, state", [(RST, "INVALID"), (FIN, "INVALID"), (SYN | ACK, "INVALID"),
                                          (ACK, "NEW"), (SYN, "NEW")])
def test_tcp_packets_that_cannot_start_a_connection_are_invalid(flags, state):
    node = tracked(Node.default())
    res = node.receive(tcp("192.168.1.5", "192.168.1.10", 1000, 22, flags), "eth0")
    assert res.packet.ctstate == state


def test_tcp_state_progression_and_timeouts():
    node = tracked(Node.default())
    node.clock = 0.0
    c, s = ("192.168.1.5", 1000), ("192.168.1.10", 22)
    node.receive(tcp(c[0], s[0], c[1], s[1], SYN), "eth0")
    conn = node.conntrack.entries()[0]
    assert (conn.tcp_state, conn.timeout_at(0)) == ("SYN_SENT", 120)
    node.send(tcp(s[0], c[0], s[1], c[1], SYN | ACK))
    assert (conn.tcp_state, conn.timeout_at(0)) == ("SYN_RECV", 60)
    node.receive(tcp(c[0], s[0], c[1], s[1], ACK), "eth0")
    assert (conn.tcp_state, conn.timeout_at(0)) == ("ESTABLISHED", 432000)
    node.receive(tcp(c[0], s[0], c[1], s[1], FIN | ACK), "eth0")
    assert conn.tcp_state == "FIN_WAIT"
    node.send(tcp(s[0], c[0], s[1], c[1], FIN | ACK))
    assert conn.tcp_state == "LAST_ACK"
    node.receive(tcp(c[0], s[0], c[1], s[1], ACK), "eth0")
    assert (conn.tcp_state, conn.timeout_at(0)) == ("TIME_WAIT", 120)


def test_icmp_error_about_a_tracked_flow_is_related():
    node = tracked(Node.default())
    out = node.send(Packet.make("192.168.1.10", "8.8.8.8", "udp", 1000, 53))
    err = Packet.make("8.8.8.8", "192.168.1.10", "icmp", icmp_type=3, icmp_code=3, inner=out.packet.copy())
    res = node.receive(err, "eth0")
    assert res.packet.ctstate == "RELATED"
    stray = Packet.make("8.8.8.8", "192.168.1.10", "icmp", icmp_type=3, icmp_code=3,
                        inner=Packet.make("192.168.1.10", "8.8.4.4", "udp", 1, 2))
    assert node.receive(stray, "eth0").packet.ctstate == "INVALID"


def test_a_full_table_drops_new_connections_but_evicts_unassured_ones_first():
    node = tracked(Node.default())
    node.sysctls["net.netfilter.nf_conntrack_max"] = "2"
    for port in (1, 2, 3):
        res = node.receive(Packet.make("192.168.1.5", "192.168.1.10", "udp", port, 53), "eth0")
        assert res.fate == "delivered"
    assert [c.orig.sport for c in node.conntrack.entries()] == [2, 3]
    for conn in node.conntrack.entries():
        conn.status |= 0x4
    res = node.receive(Packet.make("192.168.1.5", "192.168.1.10", "udp", 4, 53), "eth0")
    assert res.fate == "dropped" and "table full" in node.log_lines[-1]


def test_trace_shows_hooks_rules_nat_and_fate():
    node = worker()
    res = node.receive(tcp("10.244.1.5", "10.96.0.20", 40000, 80), "cni0", trace=True)
    kinds = [e.kind for e in res.trace.events]
    assert kinds[0] == "packet" and kinds[-1] == "fate"
    rules = [e.text for e in res.trace.of_kind("rule")]
    assert "-A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.244.1.6:8080" in rules or \
        "-A KUBE-SEP-B -p tcp -m tcp -j DNAT --to-destination 10.244.2.6:8080" in rules
    nat = res.trace.of_kind("nat")
    assert nat and nat[0].text.startswith("DNAT 10.96.0.20:80 -> 10.244.")
    assert [e.hook for e in res.trace.of_kind("hook")] == ["PREROUTING", "FORWARD", "POSTROUTING"]


def test_untracked_packets_skip_conntrack_and_nat():
    node = worker()
    node.iptables_restore("*raw\n-A PREROUTING -p tcp -j CT --notrack\nCOMMIT\n", noflush=True)
    res = node.receive(tcp("10.244.1.5", "10.96.0.20", 40000, 80), "cni0")
    assert res.packet.ctstate == "UNTRACKED" and res.packet.dst_str == "10.96.0.20"
    assert node.conntrack.entries() == []


def test_icmp_echo_is_tracked_by_id():
    node = tracked(Node.default())
    node.send(Packet.make("192.168.1.10", "8.8.8.8", "icmp", icmp_type=8, icmp_id=77))
    res = node.receive(Packet.make("8.8.8.8", "192.168.1.10", ICMP, icmp_type=0, icmp_id=77), "eth0")
    assert res.packet.ctstate == "ESTABLISHED"
    assert node.conntrack.entries()[0].orig.proto == ICMP


