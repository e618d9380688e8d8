"""Conntrack's TCP window tracking (tcp_in_window) on hand-built segments, checked against the
kernel's rules: which segments are in window, INVALID or ignored, and what that does to the entry."""

from __future__ import annotations

from kproxy.netfilter.tcp import M32, TcpSeg, after, before
from kproxy.node import Node
from kproxy.packet import ACK, FIN, RST, SYN, Packet

CLIENT, SERVER = "10.0.1.2", "10.0.2.2"
ISN_C, ISN_S = 1000, 5000


def router() -> Node:
    node = Node.from_description({"interfaces": [{"name": "eth0", "addresses": ["10.0.1.1/24"]},
                                                 {"name": "eth1", "addresses": ["10.0.2.1/24"]}]})
    node.clock = 100.0
    node.iptables_restore("*filter\n-A FORWARD -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n")
    return node


def out(node: Node, flags: int, seg: TcpSeg | None, length: int = 52) -> str:
    pkt = Packet.make(CLIENT, SERVER, "tcp", 40000, 80, tcp_flags=flags, length=length, seg=seg)
    return node.receive(pkt, "eth0").fate


def back(node: Node, flags: int, seg: TcpSeg | None, length: int = 52) -> str:
    pkt = Packet.make(SERVER, CLIENT, "tcp", 80, 40000, tcp_flags=flags, length=length, seg=seg)
    return node.receive(pkt, "eth1").fate


def handshake(node: Node) -> None:
    assert out(node, SYN, TcpSeg(ISN_C, 0, 64240, 7, True), 60) == "forwarded"
    assert back(node, SYN | ACK, TcpSeg(ISN_S, ISN_C + 1, 65160, 7, True), 60) == "forwarded"
    assert out(node, ACK, TcpSeg(ISN_C + 1, ISN_S + 1, 502)) == "forwarded"


def entry(node: Node):
    (conn,) = node.conntrack.entries()
    return conn


def test_sequence_comparisons_wrap_around():
    assert before(M32, 0) and after(0, M32) and before(1, 2) and not before(2, 2)


def test_a_clean_handshake_and_data_are_in_window():
    node = router()
    handshake(node)
    assert out(node, ACK | 0x08, TcpSeg(ISN_C + 1, ISN_S + 1, 502, payload=100), 152) == "forwarded"
    assert back(node, ACK, TcpSeg(ISN_S + 1, ISN_C + 101, 509)) == "forwarded"
    conn = entry(node)
    assert conn.tcp_state == "ESTABLISHED" and conn.timeout_at(node.now()) == 432000


def test_unacknowledged_data_shortens_the_established_timeout():
    node = router()
    handshake(node)
    out(node, ACK | 0x08, TcpSeg(ISN_C + 1, ISN_S + 1, 502, payload=100), 152)
    assert entry(node).timeout_at(node.now()) == 300     # TCP_CONNTRACK_UNACK until the peer acknowledges


def test_data_beyond_the_receivers_window_is_invalid():
    node = router()
    handshake(node)
    far = TcpSeg((ISN_C + 1 + 10_000_000) & M32, ISN_S + 1, 502, payload=100)
    assert out(node, ACK | 0x08, far, 152) == "dropped"     # SEQ is over upper bound: INVALID, dropped by the rule


def test_an_ack_for_data_not_yet_sent_is_invalid():
    node = router()
    handshake(node)
    assert out(node, ACK, TcpSeg(ISN_C + 1, ISN_S + 1 + 1_000_000, 502)) == "dropped"


def test_be_liberal_accepts_out_of_window_segments():
    node = router()
    node.sysctls["net.netfilter.nf_conntrack_tcp_be_liberal"] = "1"
    handshake(node)
    assert out(node, ACK, TcpSeg(ISN_C + 1, ISN_S + 1 + 1_000_000, 502)) == "forwarded"


def test_a_reset_acknowledging_an_unseen_syn_ack_is_judged_by_its_acknowledgement():
    """The SYN-ACK bypassed conntrack, so the reply side's sequence space is unknown (td_end 0): an
    acknowledgement in the lower half of the space fails bound III (INVALID: the rule drops it), one
    in the upper half fails bound IV (ignored: it passes, the entry stays), and only one just below 0
    is in window (the reset is accepted and, with no reply seen, the entry dies)."""
    for isn_s, fate, left in ((0x10000000, "dropped", "SYN_SENT"), (0x90000000, "forwarded", "SYN_SENT"),
                              (0xFFFFFF00, "forwarded", "gone")):
        node = router()
        out(node, SYN, TcpSeg(ISN_C, 0, 64240, 7, True), 60)
        assert out(node, RST | ACK, TcpSeg(ISN_C + 1, isn_s + 1, 502), 40) == fate, hex(isn_s)
        conns = node.conntrack.entries()
        assert (conns[0].tcp_state if conns else "gone") == left, hex(isn_s)


def test_a_syn_reopens_a_connection_closed_by_fin():
    node = router()
    handshake(node)
    out(node, FIN | ACK, TcpSeg(ISN_C + 1, ISN_S + 1, 502))
    back(node, FIN | ACK, TcpSeg(ISN_S + 1, ISN_C + 2, 509))
    out(node, ACK, TcpSeg(ISN_C + 2, ISN_S + 2, 502))
    assert entry(node).tcp_state == "TIME_WAIT"
    old = entry(node)
    assert out(node, SYN, TcpSeg(ISN_C + 100_000, 0, 64240, 7, True), 60) == "forwarded"
    new = entry(node)
    assert new is not old and new.tcp_state == "SYN_SENT"


def test_packets_without_sequence_numbers_use_the_state_table_only():
    node = router()
    assert out(node, SYN, None, 60) == "forwarded"
    assert back(node, SYN | ACK, None, 60) == "forwarded"
    assert out(node, ACK, TcpSeg(7, 7_000_000, 1)) == "forwarded"    # no window known: not checked
    assert entry(node).tcp_state == "ESTABLISHED"


def test_the_tracker_survives_a_save_and_load(tmp_path):
    node = router()
    handshake(node)
    data = node.conntrack.to_json()
    again = router()
    again.conntrack.from_json(data)
    assert entry(again).tcp == entry(node).tcp
    assert out(again, ACK, TcpSeg(ISN_C + 1, ISN_S + 1 + 1_000_000, 502)) == "dropped"
