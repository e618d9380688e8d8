"""kube-proxy IPVS mode at scale: full sync and a one-endpoint partial sync, on the emulated node.

For N Services with E endpoints each (the objects of bench_proxier.py: one endpoint of each Service
on this node): the full sync (virtual and real servers, kube-ipvs0 addresses, ipset members and the
iptables rules applied to the emulated node) and then a change of one endpoint of one Service (a
partial sync). Then packets through the result, from a pod on another node to the cluster IPs: new
connections (the nat rules' set matches, IPVS scheduling, the hairpin check in POSTROUTING) and
established ones (conntrack and the IPVS connection, KUBE-IPVS-FILTER's set matches), and the
ratio of their per-packet cost at the largest size to the smallest. Each size is measured
``--repeat`` times in a fresh interpreter; the best is shown.

    .venv/bin/python bench/bench_ipvs_proxier.py
"""

from __future__ import annotations

import gc
import random

from bench_proxier import CLOCK, _child, arguments, full_then_partial
from kproxy.backends.emulated import EmulatedBackend
from kproxy.node import Node
from kproxy.packet import ACK, SYN, Packet, parse_addr
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.ipvs import IpvsProxier


def measure(services: int, endpoints: int) -> dict[str, float]:
    node = Node.from_description({"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]}],
                                  "routes": ["default via 192.168.0.1 dev eth0"],
                                  "sysctls": {"net.netfilter.nf_conntrack_max": "2000000"}})
    node.clock = 1000.0
    cfg = ProxyConfig.from_dict({"mode": "ipvs", "clusterCIDR": "10.128.0.0/9", "hostnameOverride": "node-a"})
    proxier = IpvsProxier(cfg, EmulatedBackend(node), ["192.168.0.2"])
    _, full_secs, _, part_secs = full_then_partial(proxier, services, endpoints, changed=1)   # a remote endpoint
    assert len(node.ipvs.services) == services
    dests = sum(len(s.dests) for s in node.ipvs.services.values())
    new_pps, est_pps = packets(node, services)
    return {"full_s": full_secs, "virtual_servers": len(node.ipvs.services), "real_servers": dests,
            "set_members": sum(len(s.members) for s in node.ipsets.sets.values()), "partial_s": part_secs,
            "new_pps": new_pps, "est_pps": est_pps}


def _rate(node: Node, pkts: list[Packet]) -> float:
    """Packets per second received on eth0 (the cyclic GC frozen: the node's state is long-lived)."""
    gc.collect()
    gc.freeze()
    try:
        t0 = CLOCK()
        for p in pkts:
            node.receive(p, "eth0")
        return len(pkts) / (CLOCK() - t0)
    finally:
        gc.unfreeze()


def packets(node: Node, services: int, new: int = 5000, est: int = 30000) -> tuple[float, float]:
    """New-connection and established packets per second from a remote pod (10.200.0.0/16, inside the
    cluster CIDR: not masqueraded) to random cluster IPs; the best of three batches each."""
    rng = random.Random(1)
    rates: list[tuple[float, float]] = []
    for r in range(3):
        client = parse_addr(f"10.200.{r}.5")[1]
        vips = [parse_addr(f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}")[1]
                for i in (rng.randrange(services) for _ in range(new))]
        syns = [Packet(src=client, dst=vips[i], proto=6, sport=1024 + i, dport=80, tcp_flags=SYN) for i in range(new)]
        new_rate = _rate(node, syns)
        assert syns[-1].dport == 8080, "not balanced"
        # The real servers' answers for the first 1,000 connections, then their clients' ACKs.
        _rate(node, [Packet(src=p.dst, dst=p.src, proto=6, sport=p.dport, dport=p.sport, tcp_flags=SYN | ACK)
                     for p in syns[:1000]])
        acks = [Packet(src=client, dst=vips[k % 1000], proto=6, sport=1024 + k % 1000, dport=80, tcp_flags=ACK)
                for k in range(est)]
        rates.append((new_rate, _rate(node, acks)))
        assert acks[-1].ctstate == "ESTABLISHED" and acks[-1].dport == 8080, (acks[-1].ctstate, acks[-1].dport)
    return max(r[0] for r in rates), max(r[1] for r in rates)


def main() -> None:
    args, sizes = arguments(__doc__, measure)
    rows = {}
    print(f"{'services':>9} {'virtual':>8} {'real':>8} {'members':>8} {'full sync':>10} {'1-endpoint sync':>16} "
          f"{'new pkt/s':>10} {'est pkt/s':>10}")
    for n in sizes:
        runs = [_child(n, args.endpoints, __file__) for _ in range(args.repeat)]
        r = dict(runs[0], full_s=min(x["full_s"] for x in runs), partial_s=min(x["partial_s"] for x in runs),
                 new_pps=max(x["new_pps"] for x in runs), est_pps=max(x["est_pps"] for x in runs))
        rows[n] = r
        print(f"{n:>9} {r['virtual_servers']:>8,.0f} {r['real_servers']:>8,.0f} {r['set_members']:>8,.0f} "
              f"{r['full_s']:>9.2f}s {r['partial_s'] * 1000:>14.1f}ms {r['new_pps']:>10,.0f} {r['est_pps']:>10,.0f}")
    lo, hi = sizes[0], sizes[-1]
    print(f"cost ratio {hi} / {lo}: partial sync {rows[hi]['partial_s'] / rows[lo]['partial_s']:.2f}, "
          f"new packet {rows[lo]['new_pps'] / rows[hi]['new_pps']:.2f}, "
          f"established packet {rows[lo]['est_pps'] / rows[hi]['est_pps']:.2f}")


if __name__ == "__main__":
    main()
