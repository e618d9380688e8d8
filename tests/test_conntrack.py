"""Connection tracking as nf_conntrack does it: tuples, confirmation, states, the TCP tracker, timeouts,
the table limit, persistence. Packets go through the emulated node's real hook path."""

from __future__ import annotations

import pytest

from kproxy.netfilter.conntrack import (
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_SEEN_REPLY,
    TCP_TIMEOUTS,
    Conn,
    Conntrack,
    Tuple,
    tcp_flags_valid,
)
from kproxy.netfilter.hooks import HookState
from kproxy.netfilter.tcp import F_CLOSE_INIT
from kproxy.node import Node
from kproxy.packet import ACK, FIN, ICMP, PSH, RST, SYN, URG, Packet, parse_addr

C, S = "192.168.1.5", "192.168.1.10"        # a client on eth0 and the node itself


def ip(text: str) -> int:
    return parse_addr(text)[1]


def node() -> Node:
    n = Node.default()
    n.conntrack.enabled = True
    n.clock = 100.0
    return n


def tcp(src: str, dst: str, sport: int, dport: int, flags: int) -> Packet:
    return Packet.make(src, dst, "tcp", sport, dport, tcp_flags=flags)


def cin(n: Node, flags: int, sport: int = 1000, dport: int = 22) -> Packet:
    """A client segment arriving on eth0."""
    return n.receive(tcp(C, S, sport, dport, flags), "eth0").packet


def sout(n: Node, flags: int, sport: int = 1000, dport: int = 22) -> Packet:
    """The node's answer."""
    return n.send(tcp(S, C, dport, sport, flags)).packet


def advance(n: Node, seconds: float) -> None:
    n.clock = (n.clock or 0) + seconds


def only(n: Node):
    entries = n.conntrack.entries()
    assert len(entries) == 1, entries
    return entries[0]


# ---- tuples -------------------------------------------------------------------------------------

def test_tuples_and_their_inverses():
    t = Tuple.of(Packet.make("10.0.0.1", "10.0.0.2", "udp", 1234, 53))
    assert t.inverse() == Tuple(4, 17, ip("10.0.0.2"), ip("10.0.0.1"), 53, 1234)
    assert t.inverse().inverse() == t
    echo = Tuple.of(Packet.make("10.0.0.1", "10.0.0.2", "icmp", icmp_type=8, icmp_id=9))
    assert (echo.sport, echo.dport) == (9, 8 << 8)
    assert echo.inverse().dport == 0 << 8 and echo.inverse().sport == 9          # echo reply, same id
    assert echo.text() == "src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=9"
    gre = Tuple.of(Packet.make("10.0.0.1", "10.0.0.2", 47))
    assert (gre.sport, gre.dport) == (0, 0) and gre.text() == "src=10.0.0.1 dst=10.0.0.2"


@pytest.mark.parametrize("flags, valid", [
    (SYN, True), (SYN | ACK, True), (ACK, True), (ACK | PSH, True), (FIN | ACK, True), (RST, True),
    (RST | ACK, True), (SYN | URG, True), (FIN, False), (0, False), (SYN | FIN, False), (SYN | RST, False),
    (FIN | RST | ACK, False),
])
def test_valid_tcp_flag_combinations(flags, valid):
    assert tcp_flags_valid(flags) == valid


# ---- confirmation and states ---------------------------------------------------------------------

def test_a_new_connection_is_confirmed_only_when_its_first_packet_survives():
    n = node()
    n.iptables_restore("*filter\n-A INPUT -p udp --dport 9 -j DROP\nCOMMIT\n")
    assert n.receive(Packet.make(C, S, "udp", 1, 9), "eth0").fate == "dropped"
    assert n.conntrack.entries() == []
    res = n.receive(Packet.make(C, S, "udp", 1, 53), "eth0")
    conn = only(n)
    assert res.packet.ct is conn and conn.status & IPS_CONFIRMED and res.packet.ctstate == "NEW"


def test_state_is_new_until_a_reply_then_established_both_ways():
    n = node()
    assert n.receive(Packet.make(C, S, "udp", 1, 53), "eth0").packet.ctstate == "NEW"
    assert n.receive(Packet.make(C, S, "udp", 1, 53), "eth0").packet.ctstate == "NEW"
    reply = n.send(Packet.make(S, C, "udp", 53, 1)).packet
    assert (reply.ctstate, reply.ctdir) == ("ESTABLISHED", 1)
    again = n.receive(Packet.make(C, S, "udp", 1, 53), "eth0").packet
    assert (again.ctstate, again.ctdir) == ("ESTABLISHED", 0)
    conn = only(n)
    assert conn.status & IPS_SEEN_REPLY and conn.packets == [3, 1]


def test_looped_back_packets_keep_the_connection_they_left_with():
    n = node()
    res = n.send(Packet.make(S, S, "udp", 4000, 53))
    assert res.fate == "delivered"
    conn = only(n)
    assert res.packet.ct is conn and conn.packets == [1, 0]      # counted once, not again on lo


def test_untracked_packets_get_no_entry():
    n = node()
    n.iptables_restore("*raw\n-A PREROUTING -p udp -j CT --notrack\nCOMMIT\n")
    res = n.receive(Packet.make(C, S, "udp", 1, 53), "eth0")
    assert res.packet.ctstate == "UNTRACKED" and res.packet.ct is None
    assert n.conntrack.entries() == []


def test_tracking_is_off_until_a_rule_needs_it():
    n = Node.default()
    assert n.receive(Packet.make(C, S, "udp", 1, 53), "eth0").packet.ctstate == ""
    n.iptables_restore("*filter\n-A INPUT -m state --state INVALID -j DROP\nCOMMIT\n")
    assert n.receive(Packet.make(C, S, "udp", 2, 53), "eth0").packet.ctstate == "NEW"


# ---- the TCP tracker -----------------------------------------------------------------------------

def test_handshake_makes_an_assured_established_connection():
    n = node()
    cin(n, SYN)
    conn = only(n)
    assert (conn.tcp_state, conn.timeout_at(n.now())) == ("SYN_SENT", 120)
    sout(n, SYN | ACK)
    assert (conn.tcp_state, conn.timeout_at(n.now())) == ("SYN_RECV", TCP_TIMEOUTS["SYN_RECV"])
    assert not conn.status & IPS_ASSURED
    cin(n, ACK)
    assert (conn.tcp_state, conn.timeout_at(n.now())) == ("ESTABLISHED", 432000)
    assert conn.status & IPS_ASSURED


def test_close_sequence_and_its_timeouts():
    n = node()
    for f, side in ((SYN, cin), (SYN | ACK, sout), (ACK, cin), (FIN | ACK, cin)):
        side(n, f)
    conn = only(n)
    assert (conn.tcp_state, conn.timeout_at(n.now())) == ("FIN_WAIT", 120)
    sout(n, ACK)
    assert (conn.tcp_state, conn.timeout_at(n.now())) == ("CLOSE_WAIT", 60)
    sout(n, FIN | ACK)
    assert (conn.tcp_state, conn.timeout_at(n.now())) == ("LAST_ACK", 30)
    cin(n, ACK)
    assert (conn.tcp_state, conn.timeout_at(n.now())) == ("TIME_WAIT", 120)


@pytest.mark.parametrize("flags", [FIN, SYN | FIN, 0, SYN | ACK, RST, RST | ACK, FIN | ACK])
def test_segments_that_cannot_start_a_connection_are_invalid(flags):
    n = node()
    pkt = cin(n, flags)
    assert pkt.ctstate == "INVALID" and pkt.ct is None
    assert n.conntrack.entries() == []


def test_a_bad_flag_combination_is_invalid_even_on_an_established_connection():
    n = node()
    for f, side in ((SYN, cin), (SYN | ACK, sout), (ACK, cin)):
        side(n, f)
    conn = only(n)
    before = conn.expires
    advance(n, 5)
    assert cin(n, FIN).ctstate == "INVALID"             # FIN without ACK
    assert conn.tcp_state == "ESTABLISHED" and conn.expires == before


def test_mid_stream_pickup_gets_the_unacknowledged_timeout_until_answered():
    n = node()
    assert cin(n, ACK).ctstate == "NEW"
    conn = only(n)
    assert (conn.tcp_state, conn.timeout_at(n.now())) == ("ESTABLISHED", 300)
    cin(n, ACK)
    assert not conn.status & IPS_ASSURED                # no reply yet: never assured
    sout(n, ACK)
    assert conn.timeout_at(n.now()) == 300 and not conn.status & IPS_ASSURED
    cin(n, ACK)
    assert conn.timeout_at(n.now()) == 432000 and conn.status & IPS_ASSURED


def test_loose_pickup_can_be_switched_off():
    n = node()
    n.sysctls["net.netfilter.nf_conntrack_tcp_loose"] = "0"
    assert cin(n, ACK).ctstate == "INVALID"
    assert n.conntrack.entries() == []


def test_a_retransmitted_syn_does_not_renew_the_timeout():
    n = node()
    cin(n, SYN)
    conn = only(n)
    advance(n, 50)
    cin(n, SYN)
    assert conn.timeout_at(n.now()) == 70


def test_a_rst_as_the_only_answer_kills_the_entry_at_once():
    n = node()
    cin(n, SYN)
    rst = sout(n, RST | ACK)
    assert rst.ctstate == "ESTABLISHED"                 # the RST itself passes with the connection
    assert n.conntrack.entries() == []


def test_a_rst_on_an_established_connection_closes_it():
    n = node()
    for f, side in ((SYN, cin), (SYN | ACK, sout), (ACK, cin), (RST, cin)):
        side(n, f)
    conn = only(n)
    assert (conn.tcp_state, conn.timeout_at(n.now())) == ("CLOSE", 10)


def test_a_new_syn_reopens_a_connection_in_time_wait():
    n = node()
    for f, side in ((SYN, cin), (SYN | ACK, sout), (ACK, cin), (FIN | ACK, cin), (FIN | ACK, sout), (ACK, cin)):
        side(n, f)
    old = only(n)
    assert old.tcp_state == "TIME_WAIT"
    pkt = cin(n, SYN)
    new = only(n)
    assert new is not old and new.id != old.id
    assert (pkt.ctstate, new.tcp_state) == ("NEW", "SYN_SENT") and not new.status & IPS_SEEN_REPLY


def test_a_syn_after_a_reply_side_reset_is_ignored_not_reopened():
    n = node()
    for f, side in ((SYN, cin), (SYN | ACK, sout), (ACK, cin), (RST, sout)):
        side(n, f)
    conn = only(n)
    assert conn.tcp_state == "CLOSE"
    pkt = cin(n, SYN)
    assert only(n) is conn and conn.tcp_state == "CLOSE" and pkt.ctstate == "ESTABLISHED"


def test_ignored_and_invalid_segments_leave_the_state_alone():
    n = node()
    cin(n, SYN)
    conn = only(n)
    assert cin(n, SYN | ACK).ctstate == "INVALID"       # a SYN/ACK from the client side
    assert conn.tcp_state == "SYN_SENT"


# ---- UDP, ICMP, other protocols --------------------------------------------------------------------

def test_udp_first_reply_keeps_the_short_timeout_even_late():
    n = node()
    n.receive(Packet.make(C, S, "udp", 1, 53), "eth0")
    conn = only(n)
    advance(n, 5)
    n.send(Packet.make(S, C, "udp", 53, 1))
    assert conn.timeout_at(n.now()) == 30 and not conn.status & IPS_ASSURED
    n.receive(Packet.make(C, S, "udp", 1, 53), "eth0")
    assert conn.timeout_at(n.now()) == 120 and conn.status & IPS_ASSURED


def test_udp_replied_within_two_seconds_is_not_a_stream_yet():
    n = node()
    n.receive(Packet.make(C, S, "udp", 1, 53), "eth0")
    n.send(Packet.make(S, C, "udp", 53, 1))
    advance(n, 1)
    n.receive(Packet.make(C, S, "udp", 1, 53), "eth0")
    conn = only(n)
    assert conn.timeout_at(n.now()) == 30 and not conn.status & IPS_ASSURED


def test_icmp_errors_are_related_to_the_flow_they_quote():
    n = node()
    out = n.send(Packet.make(S, "8.8.8.8", "udp", 1000, 53)).packet
    err = n.receive(Packet.make("8.8.8.8", S, "icmp", icmp_type=3, icmp_code=3, inner=out.copy()), "eth0").packet
    assert (err.ctstate, err.ctdir) == ("RELATED", 1) and err.ct is only(n)
    assert len(n.conntrack.entries()) == 1                          # the error made no entry of its own


def test_icmp_replies_without_a_request_are_invalid_and_requests_expire_after_30s():
    n = node()
    assert n.receive(Packet.make("8.8.8.8", S, "icmp", icmp_type=0, icmp_id=5), "eth0").packet.ctstate == "INVALID"
    n.receive(Packet.make("8.8.8.8", S, "icmp", icmp_type=8, icmp_id=5), "eth0")
    conn = only(n)
    assert conn.orig.proto == ICMP and conn.timeout_at(n.now()) == 30


def test_other_protocols_use_the_generic_timeout():
    n = node()
    n.receive(Packet.make(C, S, 47), "eth0")
    assert only(n).timeout_at(n.now()) == 600


# ---- the table -------------------------------------------------------------------------------------

def test_expired_entries_vanish_on_lookup_and_listing():
    n = node()
    n.receive(Packet.make(C, S, "udp", 1, 53), "eth0")
    t = only(n).orig
    advance(n, 29.5)
    assert n.conntrack.lookup(t) is not None
    advance(n, 1)
    assert n.conntrack.lookup(t) is None and n.conntrack.entries() == [] and len(n.conntrack) == 0
    assert n.receive(Packet.make(C, S, "udp", 1, 53), "eth0").packet.ctstate == "NEW"


def test_table_full_drops_new_flows_at_the_first_hook_after_evicting_unassured_ones():
    n = node()
    n.sysctls["net.netfilter.nf_conntrack_max"] = "2"
    for port in (1, 2, 3):
        assert n.receive(Packet.make(C, S, "udp", port, 53), "eth0").fate == "delivered"
    assert [c.orig.sport for c in n.conntrack.entries()] == [2, 3]     # the oldest unassured went first
    for conn in n.conntrack.entries():
        conn.status |= IPS_ASSURED
    res = n.receive(Packet.make(C, S, "udp", 4, 53), "eth0")
    assert (res.fate, res.hook) == ("dropped", "PREROUTING")
    assert n.log_lines[-1] == "nf_conntrack: nf_conntrack: table full, dropping packet"
    # Known flows still pass; 0 means no limit.
    assert n.receive(Packet.make(C, S, "udp", 2, 53), "eth0").fate == "delivered"
    n.sysctls["net.netfilter.nf_conntrack_max"] = "0"
    assert n.receive(Packet.make(C, S, "udp", 4, 53), "eth0").fate == "delivered"


def test_delete_and_flush():
    n = node()
    for port in (1, 2):
        n.receive(Packet.make(C, S, "udp", port, 53), "eth0")
    first = n.conntrack.entries()[0]
    n.conntrack.delete(first)
    assert n.conntrack.lookup(first.orig) is None and n.conntrack.lookup(first.reply) is None
    assert len(n.conntrack) == 1
    assert n.conntrack.flush() == 1 and n.conntrack.entries() == []


def test_persistence_round_trip_keeps_every_field():
    n = node()
    for f, side in ((SYN, cin), (SYN | ACK, sout), (ACK, cin), (FIN | ACK, cin)):
        side(n, f)
    n.receive(Packet.make(C, S, "udp", 7, 53), "eth0")
    only_tcp = n.conntrack.entries()[0]
    only_tcp.mark = 0x4000
    data = n.conntrack.to_json()
    again = Conntrack(n)
    again.from_json(data)
    assert [c.to_json() for c in again.entries()] == [c.to_json() for c in n.conntrack.entries()]
    restored = again.entries()[0]
    assert (restored.tcp_state, restored.mark) == ("FIN_WAIT", 0x4000)
    assert restored.tcp is not None and restored.tcp.seen[0].flags & F_CLOSE_INIT    # a FIN was seen
    assert again.lookup(restored.reply) == (restored, 1)


def test_trace_events_tell_the_state():
    n = node()
    res = n.receive(Packet.make(C, S, "udp", 1, 53), "eth0", trace=True)
    texts = [e.text for e in res.trace.of_kind("conntrack")]
    assert texts == [f"NEW src={C} dst={S} sport=1 dport=53"]
    reply = n.send(Packet.make(S, C, "udp", 53, 1), trace=True)
    assert [e.text for e in reply.trace.of_kind("conntrack")] == [
        f"ESTABLISHED (reply) src={C} dst={S} sport=1 dport=53"]
    bad = n.receive(tcp(C, S, 5, 6, FIN), "eth0", trace=True)
    assert bad.trace.of_kind("conntrack")[0].text.startswith("INVALID")


def test_hook_functions_can_be_called_directly():
    n = node()
    pkt = Packet.make(C, S, "udp", 1, 53)
    state = HookState("PREROUTING", "eth0", "", n, now=n.now())
    assert n.conntrack.in_hook(pkt, state) == 1 and pkt.ctstate == "NEW"
    assert n.conntrack.entries() == []                          # not confirmed yet
    assert n.conntrack.confirm_hook(pkt, HookState("INPUT", "eth0", "", n, now=n.now())) == 1
    assert only(n) is pkt.ct


# ---- against the kernel ----------------------------------------------------------------------------

RAW_SEGMENTS = """
import socket, struct
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
def seg(sport, flags):
    h = struct.pack("!HHIIBBHHH", sport, 22, 1000, 2000, 5 << 4, flags, 65535, 0, 0)
    ph = socket.inet_aton("10.9.0.1") + socket.inet_aton("10.9.0.2") + struct.pack("!BBH", 0, 6, len(h))
    c = csum(ph + h)
    return h[:16] + struct.pack("!H", c) + h[18:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
for sport, flags in FLOWS:
    s.sendto(seg(sport, flags), ("10.9.0.2", 0))
"""
RAW_FLOWS = [(50001, ACK), (50002, FIN), (50003, SYN | FIN), (50004, 0), (50005, SYN | ACK), (50006, ACK | PSH)]
TRACKER_RULES = """*raw
-A OUTPUT -p tcp -m tcp --tcp-flags RST RST -j CT --notrack
COMMIT
*filter
-A INPUT -m conntrack --ctstate INVALID
COMMIT
"""


@pytest.mark.kernel
def test_tcp_pickup_and_invalid_segments_match_the_kernel():
    """Lone segments (no handshake) against a real tracker: ACKs are picked up as ESTABLISHED with the
    300 s timeout, the others are INVALID; the emulated node agrees entry for entry."""
    import subprocess
    import sys

    from kproxy.cli.conntrack_cmd import run_conntrack
    from kproxy.lab.netns import Netns, kernel_lab_available

    reason = kernel_lab_available()
    if reason:
        pytest.skip(reason)
    a, b = Netns.create("ctpa"), Netns.create("ctpb")
    try:
        b.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", a.name])
        for ns, addr in ((a, "10.9.0.1"), (b, "10.9.0.2")):
            ns.run(["ip", "addr", "add", f"{addr}/24", "dev", "eth0"])
            ns.run(["ip", "link", "set", "eth0", "up"])
        b.run(["iptables-restore"], input=TRACKER_RULES)
        a.run([sys.executable, "-c", f"FLOWS = {RAW_FLOWS!r}\n" + RAW_SEGMENTS])
        subprocess.run(["sleep", "0.3"])
        theirs = b.run(["conntrack", "-L"]).stdout
        invalid = b.run(["iptables", "-L", "INPUT", "-v", "-n", "-x"]).stdout.splitlines()[2].split()[0]
    finally:
        a.delete()
        b.delete()
    n = Node.from_description({"interfaces": [{"name": "eth0", "addresses": ["10.9.0.2/24"]}]})
    n.clock = 0.5
    n.iptables_restore(TRACKER_RULES)
    for sport, flags in RAW_FLOWS:
        n.clock += 0.001
        n.receive(tcp("10.9.0.1", "10.9.0.2", sport, 22, flags), "eth0")
    n.clock += 0.5
    ours = run_conntrack(["-L"], n)[1]
    assert sorted(theirs.splitlines()) == sorted(ours.splitlines())
    assert int(invalid) == n.iptables[4].tables["filter"].chains["INPUT"].rules[0].packets == 4


# ---- a first TCP segment without sequence numbers is worked out once per combination ------------------

def _track_fields(track: object) -> tuple[object, ...]:
    from dataclasses import astuple

    return astuple(track) if track is not None else ()


@pytest.mark.parametrize("sysctls", [{}, {"net.netfilter.nf_conntrack_tcp_loose": "0"},
                                     {"net.netfilter.nf_conntrack_tcp_be_liberal": "1",
                                      "net.netfilter.nf_conntrack_tcp_ignore_invalid_rst": "1"}])
def test_a_remembered_first_segment_leaves_what_the_tracker_leaves(sysctls):
    """Every flag byte: the connection made from the remembered outcome (the second packet with those
    flags) equals the one the tracker makes when asked directly."""
    n = node()
    n.sysctls.update(sysctls)
    ct = n.conntrack
    for flags in range(256):
        for attempt in range(2):                     # the first fills the memory, the second reads it
            p = tcp(C, S, 2000 + 2 * flags + attempt, 22, flags)
            n.receive(p, "eth0")
            fresh = p.ct
            direct = Conn(Tuple.of(p), Tuple.of(p).inverse())
            why = ct._first_segment(direct, p, n.clock, sysctls.get("net.netfilter.nf_conntrack_tcp_loose", "1") != "0")
            if why is not None or not tcp_flags_valid(flags):
                assert p.ctstate == "INVALID", (flags, why)
                continue
            assert p.ctstate == "NEW" and fresh is not None, flags
            assert (fresh.tcp_state, fresh.expires, fresh.status & ~IPS_CONFIRMED, _track_fields(fresh.tcp)) == \
                (direct.tcp_state, direct.expires, direct.status, _track_fields(direct.tcp)), flags
            assert all(fresh.tcp is not first[1] for by_flags in ct._first_segments.values()  # a copy, never shared
                       for first in by_flags.values())


def test_a_remembered_first_segment_follows_the_sysctls_changed_after():
    """The outcome of a first segment is remembered per flags for the sysctls it was worked out with: a
    mid-stream ACK starts a connection while nf_conntrack_tcp_loose is 1, not after it is set to 0, and
    again once it is back to 1."""
    n = node()
    states = []
    for i, loose in enumerate(["1", "1", "0", "0", "1"]):
        n.sysctls["net.netfilter.nf_conntrack_tcp_loose"] = loose
        p = tcp(C, S, 3000 + i, 22, ACK)
        n.receive(p, "eth0")
        states.append(p.ctstate)
    assert states == ["NEW", "NEW", "INVALID", "INVALID", "NEW"]
