"""NAT as nf_nat does it: once per flow, null bindings, reply un-NAT, the kernel's address and port choice.

Address selection from a range is the kernel's own hash (jhash2 of the addresses), so the expected
addresses below were read from a real 6.x kernel; the kernel test repeats that comparison live.
"""

from __future__ import annotations

import re
import sys

import pytest

from kproxy.netfilter.conntrack import IPS_DST_NAT, IPS_DST_NAT_DONE, IPS_SRC_NAT, IPS_SRC_NAT_DONE
from kproxy.netfilter.nat import NatRange, Tuple, _best_ips, jhash2
from kproxy.node import Node
from kproxy.packet import SYN, Packet, format_addr, parse_addr


def ip(text: str) -> int:
    return parse_addr(text)[1]


def router(rules: str = "") -> Node:
    """client side 10.1.0.1/24 on in0, server side 10.2.0.1/24 on out0, forwarding."""
    n = Node.from_description({"name": "r", "interfaces": [
        {"name": "in0", "addresses": ["10.1.0.1/24"]}, {"name": "out0", "addresses": ["10.2.0.1/24"]}]})
    n.clock = 10.0
    if rules:
        n.iptables_restore(rules)
    return n


def nat(rules: str) -> str:
    return "*nat\n" + rules.strip() + "\nCOMMIT\n"


def udp(src: str, dst: str, sport: int, dport: int) -> Packet:
    return Packet.make(src, dst, "udp", sport, dport)


def fwd(n: Node, pkt: Packet, dev: str = "in0") -> Packet:
    res = n.receive(pkt, dev)
    assert res.fate == "forwarded", res
    return res.packet


def hp(p: Packet, side: str) -> tuple[str, int]:
    return (p.src_str, p.sport) if side == "src" else (p.dst_str, p.dport)


# ---- address selection -----------------------------------------------------------------------------

# (client, original destination, range, persistent) -> the address a 6.18 kernel chose.
KERNEL_CHOICES = [
    ("10.1.0.10", "10.9.9.9", ("10.2.0.10", "10.2.0.20"), False, "10.2.0.11"),
    ("10.1.0.11", "10.9.9.9", ("10.2.0.10", "10.2.0.20"), False, "10.2.0.13"),
    ("10.1.0.12", "10.9.9.9", ("10.2.0.10", "10.2.0.20"), False, "10.2.0.13"),
    ("10.1.0.10", "10.9.9.9", ("10.2.0.10", "10.2.0.20"), True, "10.2.0.19"),
    ("10.1.0.11", "10.9.9.9", ("10.2.0.10", "10.2.0.20"), True, "10.2.0.10"),
    ("10.1.0.12", "10.9.9.9", ("10.2.0.10", "10.2.0.20"), True, "10.2.0.14"),
    ("10.1.0.10", "10.9.9.10", ("10.2.0.0", "10.2.1.255"), False, "10.2.0.5"),
    ("10.1.0.12", "10.9.9.12", ("10.2.0.0", "10.2.1.255"), False, "10.2.0.18"),
    ("10.1.0.13", "10.9.9.13", ("10.2.0.0", "10.2.1.255"), False, "10.2.0.89"),
]


@pytest.mark.parametrize("src, dst, rng, persistent, chosen", KERNEL_CHOICES)
def test_range_address_is_the_one_the_kernel_picks(src, dst, rng, persistent, chosen):
    t = Tuple(4, 6, ip(src), ip(dst), 40000, 80)
    r = NatRange(ip(rng[0]), ip(rng[1]), persistent=persistent)
    assert format_addr(_best_ips(t, r, "DST").dst) == chosen


def test_jhash2_basics():
    # No words: the initial state itself (0xdeadbeef + 4 * length + initval).
    assert jhash2([], 0) == 0xDEADBEEF and jhash2([], 1) == 0xDEADBEF0
    assert jhash2([1], 0) != jhash2([2], 0) and jhash2([1, 2, 3, 4], 0) != jhash2([1, 2, 3, 4], 9)


def test_persistent_ignores_the_destination_and_plain_spreads_by_it():
    r = NatRange(ip("10.2.0.10"), ip("10.2.0.20"), persistent=True)
    picks = {_best_ips(Tuple(4, 6, ip("10.1.0.7"), ip(f"10.9.9.{i}"), 1, 80), r, "DST").dst for i in range(40)}
    assert len(picks) == 1
    spread = NatRange(ip("10.2.0.10"), ip("10.2.0.20"))
    picks = {_best_ips(Tuple(4, 6, ip("10.1.0.7"), ip(f"10.9.9.{i}"), 1, 80), spread, "DST").dst for i in range(40)}
    assert len(picks) > 5 and all(ip("10.2.0.10") <= a <= ip("10.2.0.20") for a in picks)


def test_ipv6_range_choice_stays_in_range():
    lo, hi = ip("2001:db8::10"), ip("2001:db8::1:20")
    r = NatRange(lo, hi)
    for i in range(50):
        t = Tuple(6, 6, ip(f"2001:db8:1::{i:x}"), ip("2001:db8:2::1"), 1, 80)
        assert lo <= _best_ips(t, r, "DST").dst <= hi


# ---- DNAT --------------------------------------------------------------------------------------------

def test_dnat_binds_once_and_the_reply_is_un_natted():
    n = router(nat("-A PREROUTING -d 10.96.0.10/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.2.0.3:5353"))
    first = fwd(n, udp("10.1.0.5", "10.96.0.10", 4000, 53))
    assert hp(first, "dst") == ("10.2.0.3", 5353) and hp(first, "src") == ("10.1.0.5", 4000)
    conn = n.conntrack.entries()[0]
    assert conn.status & (IPS_DST_NAT | IPS_DST_NAT_DONE | IPS_SRC_NAT_DONE) == \
        IPS_DST_NAT | IPS_DST_NAT_DONE | IPS_SRC_NAT_DONE and not conn.status & IPS_SRC_NAT
    assert conn.reply == Tuple(4, 17, ip("10.2.0.3"), ip("10.1.0.5"), 5353, 4000)
    reply = fwd(n, udp("10.2.0.3", "10.1.0.5", 5353, 4000), "out0")
    assert hp(reply, "src") == ("10.96.0.10", 53)
    fwd(n, udp("10.1.0.5", "10.96.0.10", 4000, 53))
    assert n.iptables[4].tables["nat"].chains["PREROUTING"].rules[0].packets == 1     # first packet only


def test_dnat_trace_event():
    n = router(nat("-A PREROUTING -p udp -j DNAT --to-destination 10.2.0.3:53"))
    res = n.receive(udp("10.1.0.5", "10.96.0.10", 4000, 53), "in0", trace=True)
    assert [e.text for e in res.trace.of_kind("nat")] == ["DNAT 10.96.0.10:53 -> 10.2.0.3:53"]


def test_dnat_to_a_single_port_never_moves_it_and_without_a_port_keeps_the_port():
    n = router(nat("-A PREROUTING -p tcp -j DNAT --to-destination 10.2.0.3:8080"))
    a = fwd(n, Packet.make("10.1.0.5", "10.96.0.10", "tcp", 4000, 80))
    b = fwd(n, Packet.make("10.1.0.5", "10.96.0.11", "tcp", 4000, 80))
    assert hp(a, "dst") == hp(b, "dst") == ("10.2.0.3", 8080)
    # Same reply tuple for both: the second is source-mapped by its null binding.
    assert hp(a, "src") == ("10.1.0.5", 4000) and b.src_str == "10.1.0.5" and b.sport != 4000


def test_dnat_port_range_walks_up_from_its_first_port_on_a_clash():
    n = router(nat("-A PREROUTING -p tcp -j DNAT --to-destination 10.2.0.3:8000-8010"))
    ports = [fwd(n, Packet.make("10.1.0.5", f"10.96.0.{i}", "tcp", 4000, 80)).dport for i in range(1, 5)]
    assert ports == [8000, 8001, 8002, 8003]


def test_dnat_port_offset_maps_each_port_by_its_distance_from_the_base():
    n = router(nat("-A PREROUTING -p tcp -j DNAT --to-destination 10.2.0.3:80-90/100"))
    assert fwd(n, Packet.make("10.1.0.5", "10.96.0.1", "tcp", 4000, 105)).dport == 85
    assert fwd(n, Packet.make("10.1.0.5", "10.96.0.1", "tcp", 4001, 100)).dport == 80


# ---- SNAT and MASQUERADE -------------------------------------------------------------------------------

def test_snat_keeps_a_free_port_and_moves_a_clashing_one_randomly_within_its_class():
    n = router(nat("-A POSTROUTING -o out0 -j SNAT --to-source 10.2.0.1"))
    a = fwd(n, udp("10.1.0.5", "10.2.0.9", 5000, 53))
    b = fwd(n, udp("10.1.0.6", "10.2.0.9", 5000, 53))
    low = fwd(n, udp("10.1.0.6", "10.2.0.9", 700, 53))
    low2 = fwd(n, udp("10.1.0.7", "10.2.0.9", 700, 53))
    priv = fwd(n, udp("10.1.0.6", "10.2.0.9", 100, 53))
    priv2 = fwd(n, udp("10.1.0.7", "10.2.0.9", 100, 53))
    assert hp(a, "src") == ("10.2.0.1", 5000)
    assert b.src_str == "10.2.0.1" and 1024 <= b.sport <= 65535 and b.sport not in (5000, 1024)
    assert low.sport == 700 and 600 <= low2.sport <= 1023 and low2.sport != 700
    assert priv.sport == 100 and 1 <= priv2.sport <= 511 and priv2.sport != 100
    back = fwd(n, udp("10.2.0.9", "10.2.0.1", 53, b.sport), "out0")
    assert hp(back, "dst") == ("10.1.0.6", 5000)


def test_a_source_keeps_its_mapping_towards_other_destinations():
    """find_appropriate_src: once 10.1.0.6:5000 was moved to port P, its next flow uses P too."""
    n = router(nat("-A POSTROUTING -o out0 -j MASQUERADE"))
    fwd(n, udp("10.1.0.5", "10.2.0.9", 5000, 53))
    moved = fwd(n, udp("10.1.0.6", "10.2.0.9", 5000, 53)).sport
    assert moved != 5000
    assert fwd(n, udp("10.1.0.6", "10.2.0.9", 5000, 54)).sport == moved
    assert fwd(n, udp("10.1.0.6", "10.2.0.8", 5000, 53)).sport == moved


def test_random_fully_moves_the_port_even_without_a_clash_and_stays_in_range():
    n = router(nat("-A POSTROUTING -o out0 -p udp -j MASQUERADE --to-ports 20000-20100 --random-fully"))
    ports = {fwd(n, udp("10.1.0.5", "10.2.0.9", 5000 + i, 53)).sport for i in range(20)}
    assert all(20000 <= p <= 20100 for p in ports) and len(ports) == 20


def test_snat_port_range_keeps_an_in_range_port():
    n = router(nat("-A POSTROUTING -p udp -j SNAT --to-source 10.2.0.1:1000-2000"))
    assert fwd(n, udp("10.1.0.5", "10.2.0.9", 1500, 53)).sport == 1500
    assert 1000 <= fwd(n, udp("10.1.0.5", "10.2.0.9", 5000, 53)).sport <= 2000


def test_masquerade_uses_the_out_device_address_on_the_next_hop_subnet():
    n = Node.from_description({"interfaces": [
        {"name": "in0", "addresses": ["10.1.0.1/24"]}, {"name": "out0", "addresses": ["10.2.0.1/24", "10.3.0.1/24"]}],
        "routes": ["10.4.0.0/16 via 10.3.0.254 dev out0"]})
    n.iptables_restore(nat("-A POSTROUTING -o out0 -j MASQUERADE"))
    assert fwd(n, udp("10.1.0.5", "10.2.0.9", 1, 2)).src_str == "10.2.0.1"
    assert fwd(n, udp("10.1.0.5", "10.4.0.9", 1, 2)).src_str == "10.3.0.1"


def test_icmp_echo_ids_are_mapped_like_ports():
    n = router(nat("-A POSTROUTING -o out0 -j MASQUERADE"))
    a = fwd(n, Packet.make("10.1.0.5", "10.2.0.9", "icmp", icmp_type=8, icmp_id=7))
    b = fwd(n, Packet.make("10.1.0.6", "10.2.0.9", "icmp", icmp_type=8, icmp_id=7))
    assert (a.src_str, a.icmp_id) == ("10.2.0.1", 7) and b.src_str == "10.2.0.1" and b.icmp_id != 7
    reply = fwd(n, Packet.make("10.2.0.9", "10.2.0.1", "icmp", icmp_type=0, icmp_id=b.icmp_id), "out0")
    assert (reply.dst_str, reply.icmp_id) == ("10.1.0.6", 7)


# ---- REDIRECT ------------------------------------------------------------------------------------------

def test_redirect_goes_to_the_in_device_address_or_loopback_for_local_traffic():
    n = router(nat("""
-A PREROUTING -p tcp -j REDIRECT --to-ports 15001
-A OUTPUT -p tcp -j REDIRECT --to-ports 15001
"""))
    res = n.receive(Packet.make("10.1.0.5", "10.9.9.9", "tcp", 4000, 80), "in0")
    assert res.fate == "delivered" and hp(res.packet, "dst") == ("10.1.0.1", 15001)
    local = n.send(Packet.make("10.2.0.1", "10.2.0.9", "tcp", 4001, 80))
    assert hp(local.packet, "dst") == ("127.0.0.1", 15001)


# ---- once per flow -------------------------------------------------------------------------------------

def test_a_flow_that_began_before_the_nat_rules_keeps_its_null_binding_but_runs_the_chain():
    n = router("*filter\n-A FORWARD -m conntrack --ctstate NEW\nCOMMIT\n")
    fwd(n, udp("10.1.0.5", "10.2.0.9", 4000, 53))
    n.iptables_restore(nat("-A PREROUTING -p udp -j DNAT --to-destination 10.2.0.7"))
    again = fwd(n, udp("10.1.0.5", "10.2.0.9", 4000, 53))
    assert again.dst_str == "10.2.0.9"                                   # a confirmed flow cannot be bound
    assert n.iptables[4].tables["nat"].chains["PREROUTING"].rules[0].packets == 1   # but the chain ran
    assert fwd(n, udp("10.1.0.5", "10.2.0.9", 4001, 53)).dst_str == "10.2.0.7"      # a new flow is NATed


def test_related_icmp_errors_are_translated_inside_and_out():
    n = router(nat("-A PREROUTING -p udp -j DNAT --to-destination 10.2.0.3:5353"))
    sent = fwd(n, udp("10.1.0.5", "10.96.0.10", 4000, 53))
    err = Packet.make("10.2.0.3", "10.1.0.5", "icmp", icmp_type=3, icmp_code=3, inner=sent.copy())
    out = fwd(n, err, "out0")
    assert out.ctstate == "RELATED" and out.src_str == "10.96.0.10"
    assert out.inner is not None and hp(out.inner, "dst") == ("10.96.0.10", 53)


def test_setup_directly_through_the_api():
    n = router()
    n.conntrack.enabled = True
    from kproxy.netfilter.hooks import HookState

    pkt = Packet.make("10.1.0.5", "10.2.0.9", "tcp", 1, 2, tcp_flags=SYN)
    st = HookState("PREROUTING", "in0", "", n, now=n.now())
    n.conntrack.in_hook(pkt, st)
    assert n.nat.setup(pkt, NatRange(ip("10.2.0.50"), ip("10.2.0.50"), 80, 80), "DST", st) == 1
    assert pkt.ct is not None and pkt.ct.reply.src == ip("10.2.0.50") and pkt.ct.reply.sport == 80
    assert n.nat.setup(pkt, NatRange(ip("10.2.0.51"), ip("10.2.0.51")), "DST", st) == 1    # already bound
    assert pkt.ct.reply.src == ip("10.2.0.50")
    assert pkt.ct.status & IPS_DST_NAT


# ---- against the kernel ----------------------------------------------------------------------------------

CLIENT_FLOWS = """
import socket, time
keep = []
def u(a, p, d):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((a, p)); s.sendto(b"x", ("10.2.0.2", d))
    keep.append(s)
u("10.1.0.2", 7000, 53); u("10.1.0.3", 7000, 53); time.sleep(0.1); u("10.1.0.3", 7000, 54)
for i in range(10, 30):
    for dp in (80, 81):
        t = socket.socket(); t.setblocking(False); t.bind(("10.1.0.%d" % i, 0))
        try:
            t.connect(("10.9.9.9", dp))
        except BlockingIOError:
            pass
        keep.append(t)
time.sleep(0.3)
"""


@pytest.mark.kernel
def test_address_choice_and_source_mapping_match_the_kernel():
    from kproxy.lab.netns import Netns, kernel_lab_available

    reason = kernel_lab_available()
    if reason:
        pytest.skip(reason)
    c, r, s = Netns.create("natc"), Netns.create("natr"), Netns.create("nats")
    try:
        r.run(["ip", "link", "add", "in0", "type", "veth", "peer", "name", "eth0", "netns", c.name])
        r.run(["ip", "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", s.name])
        for ns, dev, addrs in ((c, "eth0", ["10.1.0.2/24", "10.1.0.3/24", *(f"10.1.0.{i}/24" for i in range(10, 30))]),
                               (r, "in0", ["10.1.0.1/24"]), (r, "out0", ["10.2.0.1/24"]), (s, "eth0", ["10.2.0.2/24"])):
            for a in addrs:
                ns.run(["ip", "addr", "add", a, "dev", dev])
            ns.run(["ip", "link", "set", dev, "up"])
        c.run(["ip", "route", "add", "default", "via", "10.1.0.1"])
        r.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        rules = nat("""
-A PREROUTING -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.2.0.10-10.2.0.20
-A PREROUTING -p tcp -m tcp --dport 81 -j DNAT --to-destination 10.2.0.10-10.2.0.20 --persistent
-A POSTROUTING -o out0 -p udp -j MASQUERADE
""")
        r.run(["iptables-restore"], input=rules)
        c.run([sys.executable, "-c", CLIENT_FLOWS])
        listing = r.run(["conntrack", "-L"]).stdout
    finally:
        for ns in (c, r, s):
            ns.delete()
    entries = [dict(zip(("osrc", "odst", "osport", "odport", "rsrc", "rdst", "rsport", "rdport"),
                        re.findall(r"(?:src|dst|sport|dport)=(\S+)", line), strict=False)) for line in listing.splitlines()]
    tcp_entries = [e for e in entries if e["odport"] in ("80", "81")]
    assert len(tcp_entries) >= 20
    for e in tcp_entries:
        rng = NatRange(ip("10.2.0.10"), ip("10.2.0.20"), persistent=e["odport"] == "81")
        t = Tuple(4, 6, ip(e["osrc"]), ip(e["odst"]), int(e["osport"]), int(e["odport"]))
        assert format_addr(_best_ips(t, rng, "DST").dst) == e["rsrc"], e
    udp = {(e["osrc"], e["odport"]): int(e["rdport"]) for e in entries if e["odport"] in ("53", "54")}
    assert udp[("10.1.0.2", "53")] == 7000                      # the first keeps its port
    assert udp[("10.1.0.3", "53")] != 7000                      # the clash moved
    assert udp[("10.1.0.3", "54")] == udp[("10.1.0.3", "53")]   # and the source keeps that mapping
    # The emulated router, same flows, same rules: the same kept and reused ports.
    n = router(rules)
    fwd(n, udp_pkt("10.1.0.2", 7000, 53))
    moved = fwd(n, udp_pkt("10.1.0.3", 7000, 53)).sport
    assert moved != 7000 and fwd(n, udp_pkt("10.1.0.3", 7000, 54)).sport == moved


def udp_pkt(src: str, sport: int, dport: int) -> Packet:
    return Packet.make(src, "10.2.0.2", "udp", sport, dport)


@pytest.mark.parametrize("case", ["plain", "same", "already-bound", "ipvs-moved", "confirmed", "icmp"])
def test_one_destination_setup_binds_as_the_general_setup(case: str) -> None:
    """``setup_one_destination`` (the compiled nft chains' DNAT to one address and one port) leaves the
    connection as ``setup`` does: the reply tuple and the status bits, for a fresh flow, one already
    going there, one already bound, one whose reply IPVS moved, a confirmed one and an ICMP one."""
    from kproxy.netfilter.conntrack import IPS_CONFIRMED, Conn
    from kproxy.netfilter.hooks import HookState
    from kproxy.netfilter.nat import one_destination

    rng = NatRange(ip("10.100.0.7"), ip("10.100.0.7"), 8080, 8080)
    one = one_destination(rng)
    assert one == (ip("10.100.0.7"), 8080)
    results = []
    for general in (True, False):
        n = router()
        proto = 1 if case == "icmp" else 6
        orig = Tuple(4, proto, ip("10.244.1.5"), ip("172.30.0.1"), 1234, 8 << 8 if case == "icmp" else 80)
        if case == "same":
            orig = Tuple(4, 6, ip("10.244.1.5"), ip("10.100.0.7"), 1234, 8080)
        reply = orig.inverse()
        status = {"already-bound": IPS_DST_NAT_DONE, "confirmed": IPS_CONFIRMED}.get(case, 0)
        if case == "ipvs-moved":
            reply, status = Tuple(4, 6, ip("10.100.0.9"), ip("10.244.1.5"), 9090, 1234), IPS_DST_NAT
        conn = Conn(orig, reply, status)
        pkt = Packet(src=orig.src, dst=orig.dst, proto=proto, sport=1234, dport=80)
        pkt.ct = conn
        state = HookState("PREROUTING", "in0", "", n)
        verdict = n.nat.setup(pkt, rng, "DST", state) if general else n.nat.setup_one_destination(pkt, rng, state)
        results.append((verdict, conn.reply, conn.status))
    assert results[0] == results[1]
