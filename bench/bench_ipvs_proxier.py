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

import argparse
import copy
import gc
import json
import random
import subprocess
import sys
import time

from bench_proxier import build
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
    objs = build(services, endpoints)
    gc.collect()
    t0 = time.perf_counter()
    full = proxier.sync(objs)
    full_secs = time.perf_counter() - t0
    assert not full.error, full.error
    assert len(node.ipvs.services) == services
    objs.dirty = set()                           # from now on, changes are tracked as informers report them
    es = copy.deepcopy(objs.slices["ns0/svc0-a"])
    es.endpoints[1].addresses = ["10.255.255.1"]  # one (remote) endpoint replaced
    t0 = time.perf_counter()
    objs.update_slice(es)
    part = proxier.sync(objs)
    part_secs = time.perf_counter() - t0
    assert not part.error and not part.full, part.error
    dests = sum(len(s.dests) for s in node.ipvs.services.values())
    new_pps, est_pps = packets(node, services)
    return {"full_s": full_secs, "virtual_servers": len(node.ipvs.services), "real_servers": dests,
            "set_members": sum(len(s.members) for s in node.ipsets.sets.values()), "partial_s": part_secs,
            "new_pps": new_pps, "est_pps": est_pps}


def packets(node: Node, services: int, new: int = 5000, est: int = 30000) -> tuple[float, float]:
    """New-connection and established packets per second from a remote pod (10.200.0.0/16, inside the
    cluster CIDR: not masqueraded) to random cluster IPs; the best of three batches each."""
    rng = random.Random(1)
    new_rates, est_rates = [], []
    for r in range(3):
        src = parse_addr(f"10.200.{r}.5")[1]
        targets = [parse_addr(f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}")[1]
                   for i in (rng.randrange(services) for _ in range(new))]
        syns = [Packet(src=src + i // 60000, dst=targets[i], proto=6, sport=1024 + i % 60000, dport=80,
                       tcp_flags=SYN) for i in range(new)]
        gc.collect()
        gc.freeze()
        t0 = time.perf_counter()
        results = [node.receive(p, "eth0") for p in syns]
        new_rates.append(new / (time.perf_counter() - t0))
        assert results[-1].fate == "forwarded", results[-1].fate
        for res in results[:1000]:
            rs = res.packet
            node.receive(Packet(src=rs.dst, dst=rs.src, proto=6, sport=rs.dport, dport=rs.sport,
                                tcp_flags=SYN | ACK), "eth0")
        acks = [Packet(src=src + k % 1000 // 60000, dst=targets[k % 1000], proto=6, sport=1024 + k % 1000, dport=80,
                       tcp_flags=ACK) for k in range(est)]
        t0 = time.perf_counter()
        for p in acks:
            node.receive(p, "eth0")
        est_rates.append(est / (time.perf_counter() - t0))
        assert acks[-1].ctstate == "ESTABLISHED" and acks[-1].dport == 8080, (acks[-1].ctstate, acks[-1].dport)
        gc.unfreeze()
    return max(new_rates), max(est_rates)


def _child(services: int, endpoints: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--one", str(services), "--endpoints", str(endpoints)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="runs per size, each in a fresh interpreter; the best is shown")
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)    # a child: measure one size
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.endpoints)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = {}
    print(f"{'services':>9} {'virtual':>8} {'real':>8} {'members':>8} {'full sync':>10} {'1-endpoint sync':>16} "
          f"{'new pkt/s':>10} {'est pkt/s':>10}")
    for n in sizes:
        runs = [_child(n, args.endpoints) for _ in range(args.repeat)]
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
