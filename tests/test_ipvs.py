"""IPVS: each scheduler's choices as its kernel module makes them, the packet path, and ipvsadm's formats.

Expected sequences are worked out by hand from the kernel's algorithms (net/netfilter/ipvs/ip_vs_*.c),
not read back from this implementation.
"""

from __future__ import annotations

import pytest

from kproxy.ipvs.ipvs import Dest, Ipvs, VirtualService
from kproxy.ipvs.ipvsadm import run_ipvsadm
from kproxy.node import Node
from kproxy.packet import ACK, SYN, Packet, parse_addr


def ip(text: str) -> int:
    return parse_addr(text)[1]


def service(sched: str, *dests: tuple[str, int], **conns: tuple[int, int]) -> VirtualService:
    svc = VirtualService(6, ip("10.96.0.1"), 80, scheduler_name=sched)
    for name, weight in dests:
        d = Dest(ip(name), 80, weight=weight)
        d.activeconns, d.inactconns = conns.get(name.replace(".", "_"), (0, 0))
        svc.dests.append(d)
    assert svc.scheduler is not None
    svc.scheduler.update()
    return svc


def picks(svc: VirtualService, n: int, pkt: Packet | None = None) -> list[str]:
    assert svc.scheduler is not None
    out = []
    for _ in range(n):
        d = svc.scheduler.schedule(pkt)
        out.append(d.text().split(":")[0][-1] if d else "-")
    return out


def test_rr_cycles_and_skips_weight_zero():
    assert picks(service("rr", ("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)), 6) == list("123123")
    assert picks(service("rr", ("10.0.0.1", 1), ("10.0.0.2", 0), ("10.0.0.3", 1)), 4) == list("1313")


@pytest.mark.parametrize("weights, expected", [
    ((3, 2, 1), "112123112123"),     # cw 3: 1; cw 2: 1,2; cw 1: 1,2,3
    ((4, 2), "112112"),              # gcd 2, mw 3: cw 3 -> 1; cw 1 -> 1,2
    ((1, 1, 1), "123123"),
    ((0, 5), "2222"),
])
def test_wrr_follows_the_gcd_stepping(weights, expected):
    svc = service("wrr", *[(f"10.0.0.{i + 1}", w) for i, w in enumerate(weights)])
    assert "".join(picks(svc, len(expected))) == expected


def test_lc_and_wlc_use_256_times_active_plus_inactive():
    # overheads: .1 = 1*256, .2 = 5, .3 = 0 -> .3
    assert picks(service("lc", ("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1),
                         **{"10_0_0_1": (1, 0), "10_0_0_2": (0, 5)}), 1) == ["3"]
    # ties go to the first in the list
    assert picks(service("lc", ("10.0.0.1", 1), ("10.0.0.2", 1), **{"10_0_0_1": (0, 1), "10_0_0_2": (0, 1)}), 1) == ["1"]
    # wlc: .1 512/1 vs .2 1024/3 -> 512*3 > 1024*1, so .2
    assert picks(service("wlc", ("10.0.0.1", 1), ("10.0.0.2", 3), **{"10_0_0_1": (2, 0), "10_0_0_2": (4, 0)}), 1) == ["2"]


def test_sed_nq_fo_ovf():
    # sed: (0+1)/1 vs (1+1)/2 -> equal, the first stays
    assert picks(service("sed", ("10.0.0.1", 1), ("10.0.0.2", 2), **{"10_0_0_2": (1, 0)}), 1) == ["1"]
    # nq: an idle server at once, even with a lower weight
    assert picks(service("nq", ("10.0.0.1", 5), ("10.0.0.2", 1), **{"10_0_0_1": (1, 0)}), 1) == ["2"]
    # fo: the highest weight, the first among equals
    assert picks(service("fo", ("10.0.0.1", 1), ("10.0.0.2", 5), ("10.0.0.3", 5)), 2) == ["2", "2"]
    # ovf: the highest weight whose active connections are below its weight
    assert picks(service("ovf", ("10.0.0.1", 1), ("10.0.0.2", 3), **{"10_0_0_1": (1, 0), "10_0_0_2": (1, 0)}), 1) == ["2"]


def test_sh_and_dh_hash_like_the_kernel():
    src = ip("10.0.0.77")
    bucket = ((src * 0x61C88647) % 2**32) >> 24                 # hash_32(addr, 8), port not used
    svc = service("sh", ("10.0.0.1", 1), ("10.0.0.2", 1))
    pkt = Packet.make("10.0.0.77", "10.96.0.1", "tcp", 5555, 80)
    assert picks(svc, 1, pkt) == ["1" if bucket % 2 == 0 else "2"]    # buckets alternate for equal weights
    dst = ip("10.96.0.1")
    dbucket = (dst * 2654435761) & 255
    svc = service("dh", ("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1))
    assert picks(svc, 1, pkt) == [str(dbucket % 3 + 1)]


def test_thresholds_overload_a_destination():
    d = Dest(ip("10.0.0.1"), 80, u_threshold=4)
    d.inactconns = 4
    d.update_overload()
    assert d.overloaded
    d.inactconns = 2                 # below the default lower threshold (3/4 of 4 = 3)
    d.update_overload()
    assert not d.overloaded


def node_with_vip() -> Node:
    node = Node.from_description({"interfaces": [{"name": "eth0", "addresses": ["192.168.1.10/24"]},
                                                 {"name": "kube-ipvs0", "addresses": ["10.96.0.1/32"]},
                                                 {"name": "cni0", "addresses": ["10.244.1.1/24"]}]})
    node.clock = 100.0
    node.conntrack.enabled = True
    return node


def test_packet_path_schedules_masquerades_and_un_nats_replies():
    node = node_with_vip()
    for argv in (["-A", "-t", "10.96.0.1:443", "-s", "rr"], ["-a", "-t", "10.96.0.1:443", "-r", "10.244.1.5:6443", "-m"],
                 ["-a", "-t", "10.96.0.1:443", "-r", "10.244.1.6:6443", "-m"]):
        assert run_ipvsadm(argv, node.ipvs, 0)[0] == 0
    res = node.receive(Packet.make("10.244.1.9", "10.96.0.1", "tcp", 1000, 443), "cni0", trace=True)
    assert res.fate == "forwarded" and (res.packet.dst_str, res.packet.dport) == ("10.244.1.5", 6443)
    assert any(e.kind == "ipvs" for e in res.trace.events)
    reply = node.receive(Packet.make("10.244.1.5", "10.244.1.9", "tcp", 6443, 1000, tcp_flags=SYN | ACK), "cni0")
    assert (reply.packet.src_str, reply.packet.sport) == ("10.96.0.1", 443)
    node.receive(Packet.make("10.244.1.9", "10.96.0.1", "tcp", 1000, 443, tcp_flags=ACK), "cni0")
    listing = run_ipvsadm(["-Ln"], node.ipvs, 0)[1]
    assert "  -> 10.244.1.5:6443              Masq    1      1          0         " in listing
    conns = run_ipvsadm(["-Lnc"], node.ipvs, node.now())[1]
    assert "ESTABLISHED" in conns and "10.244.1.9:1000" in conns
    second = node.receive(Packet.make("10.244.1.9", "10.96.0.1", "tcp", 1001, 443), "cni0")
    assert second.packet.dst_str == "10.244.1.6"


def test_persistence_keeps_a_client_on_its_server():
    node = node_with_vip()
    run_ipvsadm(["-A", "-t", "10.96.0.1:80", "-s", "rr", "-p", "60"], node.ipvs, 0)
    for r in ("10.244.1.5:80", "10.244.1.6:80"):
        run_ipvsadm(["-a", "-t", "10.96.0.1:80", "-r", r, "-m"], node.ipvs, 0)
    dsts = {node.receive(Packet.make("10.244.1.9", "10.96.0.1", "tcp", 2000 + i, 80), "cni0").packet.dst_str
            for i in range(4)}
    assert len(dsts) == 1


def test_ipvsadm_formats_save_restore_and_errors():
    ipvs = Ipvs()
    for argv in (["-A", "-t", "10.96.0.1:443", "-s", "wrr"], ["-a", "-t", "10.96.0.1:443", "-r", "10.0.0.1:6443", "-m", "-w", "3"],
                 ["-A", "-u", "10.96.0.10:53", "-s", "rr", "-p", "30"], ["-a", "-u", "10.96.0.10:53", "-r", "10.0.0.2:53", "-g"],
                 ["-A", "-f", "7", "-s", "sh"]):
        assert run_ipvsadm(argv, ipvs, 0)[0] == 0, argv
    out = run_ipvsadm(["-L", "-n"], ipvs, 0)[1].splitlines()
    assert out[:3] == ["IP Virtual Server version 1.2.1 (size=4096)", "Prot LocalAddress:Port Scheduler Flags",
                       "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]
    assert out[3] == "TCP  10.96.0.1:443 wrr"
    assert out[5] == "UDP  10.96.0.10:53 rr persistent 30"
    assert out[6] == f"  -> {'10.0.0.2:53':<28} {'Route':<7} {1:<6} {0:<10} {0:<10}"
    assert out[7] == "FWM  7 sh"
    saved = run_ipvsadm(["-S", "-n"], ipvs, 0)[1]
    assert "-a -t 10.96.0.1:443 -r 10.0.0.1:6443 -m -w 3\n" in saved
    other = Ipvs()
    assert run_ipvsadm(["-R"], other, 0, stdin=saved)[0] == 0
    assert run_ipvsadm(["-S", "-n"], other, 0)[1] == saved
    assert run_ipvsadm(["-A", "-t", "10.96.0.1:443"], ipvs, 0) == (1, "", "Service already exists\n")
    assert run_ipvsadm(["-d", "-t", "10.96.0.9:1", "-r", "10.0.0.1"], ipvs, 0) == (1, "", "No such service\n")
    assert run_ipvsadm(["-A", "-t", "10.96.0.2:80", "-s", "nope"], ipvs, 0)[0] == 1
    bad = run_ipvsadm(["-R"], other, 0, stdin="-A -t 10.9.9.9:1 -s rr\n-a -t 10.9.9.8:1 -r 1.1.1.1\n")
    assert bad[0] == 1 and run_ipvsadm(["-S", "-n"], other, 0)[1] == saved      # restore is all or nothing


def test_lblc_keeps_a_destination_address_on_its_server_until_overloaded():
    svc = service("lblc", ("10.0.0.1", 1), ("10.0.0.2", 1))
    to_a = Packet.make("10.0.9.9", "192.0.2.10", "tcp", 1, 80)
    first = picks(svc, 1, to_a)[0]
    svc.dests[int(first) - 1].activeconns = 5          # now busier than its weight
    other = "2" if first == "1" else "1"
    # the other server is idle (0 * 2 < 1), so the cached one counts as overloaded and a new one is chosen
    assert picks(svc, 1, to_a) == [other]


def test_lblcr_grows_the_set_of_a_destination_when_overloaded():
    svc = service("lblcr", ("10.0.0.1", 1), ("10.0.0.2", 1))
    pkt = Packet.make("10.0.9.9", "192.0.2.10", "tcp", 1, 80)
    first = picks(svc, 1, pkt)[0]
    assert picks(svc, 1, pkt) == [first]
    svc.dests[int(first) - 1].activeconns = 5
    assert picks(svc, 1, pkt) != [first]
    assert len(svc.scheduler.sets[pkt.dst]) == 2


def test_mh_fills_by_weight_and_moves_little_when_a_server_goes():
    svc = service("mh", ("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 2))
    table = svc.scheduler.table
    counts = {d.addr: sum(1 for x in table if x is d) for d in svc.dests}
    assert sorted(counts.values()) == [1023, 1024, 2046]          # M = 4093 entries, in the weights' proportion
    before = list(table)
    gone = svc.dests.pop()
    svc.scheduler.update()
    moved = sum(1 for a, b in zip(before, svc.scheduler.table) if a is not gone and a is not b)
    assert moved < 50                                              # only the removed server's entries move


def test_twos_prefers_the_less_loaded_of_two_draws():
    svc = service("twos", ("10.0.0.1", 1), ("10.0.0.2", 1), **{"10_0_0_1": (9, 0)})
    chosen = picks(svc, 50)
    assert chosen.count("2") > chosen.count("1")


def test_set_timeouts():
    ipvs = Ipvs()
    assert run_ipvsadm(["--set", "100", "0", "30"], ipvs, 0)[0] == 0
    assert run_ipvsadm(["-L", "--timeout"], ipvs, 0)[1] == "Timeout (tcp tcpfin udp): 100 120 30\n"


def test_direct_routing_sends_the_unchanged_packet_to_the_real_server():
    node = node_with_vip()
    run_ipvsadm(["-A", "-t", "10.96.0.1:80", "-s", "rr"], node.ipvs, 0)
    run_ipvsadm(["-a", "-t", "10.96.0.1:80", "-r", "10.244.1.7:80", "-g"], node.ipvs, 0)
    res = node.receive(Packet.make("10.244.1.9", "10.96.0.1", "tcp", 3000, 80), "cni0")
    assert res.fate == "forwarded" and res.out_dev == "cni0"
    assert (res.packet.dst_str, res.packet.dport) == ("10.96.0.1", 80)       # not rewritten


def test_rates_follow_the_kernel_estimator():
    from kproxy.ipvs.ipvs import RateEstimator

    est = RateEstimator(0.0)
    stats = dict.fromkeys(RateEstimator.KEYS, 0)
    for second in range(2, 41, 2):          # 10 new connections and 100 packets of 100 bytes every 2 s
        stats["conns"] += 10
        stats["inpkts"] += 100
        stats["inbytes"] += 10000
        est.sample(stats, float(second))
    cps, inpps, _, inbps, _ = est.rates()
    # ip_vs_est.c arithmetic, step by step: avg += ((delta << shift) - avg) >> 2, read with rounding.
    avg_b = 0
    for _ in range(20):
        avg_b += ((10000 << 4) - avg_b) >> 2
    assert (cps, inpps, inbps) == (5, 50, (avg_b + 0xF) >> 5)
    assert 4900 < inbps <= 5000
