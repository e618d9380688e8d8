"""kube-proxy IPVS mode at scale: full sync and a one-endpoint partial sync, on the emulated node.

For N Services with E endpoints each (the objects of bench_proxier.py: one endpoint of each Service
on this node): the full sync (virtual and real servers, kube-ipvs0 addresses, ipset members and the
iptables rules applied to the emulated node) and then a change of one endpoint of one Service (a
partial sync), each size ``--repeat`` times in a fresh interpreter (the best is shown: noise only adds).

Then packets through the result, from a pod on another node to the cluster IPs: new connections
(the nat rules' set matches, IPVS scheduling, the hairpin check in POSTROUTING) and established ones
(conntrack and the IPVS connection, KUBE-IPVS-FILTER's set matches). Each established batch is
30,000 ACKs of 1,000 flows opened in the same round (so a flow's first ACKs, which take the whole
path, are in it as they are in a real flow's life). So that the machine's background load falls on
every size alike, one interpreter per ``--repeat`` builds the nodes of all sizes and then measures
them in ``--rounds`` rounds, each batch sent in chunks (500 SYNs, 1,000 ACKs) from each size's node
in turn, after ``--warmup`` rounds that are not counted (a sync leaves the chains to be compiled by
their first packets); before each timed batch the heap is collected and frozen (``gc.freeze``), as a
long-lived kube-proxy's is after a sync. Shown: the median over all rounds with the lowest and highest, and the
per-packet cost ratio of the largest size to the smallest per round (median, lowest, highest).
``--proxy-mode iptables`` sends the same packets through kube-proxy's iptables mode instead.

    KPROXY_BENCH_CLOCK=cpu .venv/bin/python bench/bench_ipvs_proxier.py --sizes 100,10000
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import subprocess
import sys
from typing import Any

from bench_proxier import CLOCK, _child, arguments, full_then_partial
from kproxy.backends.emulated import EmulatedBackend
from kproxy.node import Node
from kproxy.packet import ACK, SYN, Packet, parse_addr
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.iptables import IptablesProxier
from kproxy.proxy.ipvs import IpvsProxier


def synced(services: int, endpoints: int, mode: str = "ipvs") -> tuple[Node, float, float]:
    """A node after the proxier's full sync of the objects and one partial sync; with both times.
    ``mode`` ``iptables`` gives the same node with kube-proxy's iptables mode instead (``--proxy-mode``)."""
    node = Node.from_description({"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]}],
                                  "routes": ["default via 192.168.0.1 dev eth0"],
                                  "sysctls": {"net.netfilter.nf_conntrack_max": "2000000"}})
    node.clock = 1000.0
    cfg = ProxyConfig.from_dict({"mode": mode, "clusterCIDR": "10.128.0.0/9", "hostnameOverride": "node-a"})
    proxier: Any = (IpvsProxier if mode == "ipvs" else IptablesProxier)(cfg, EmulatedBackend(node), ["192.168.0.2"])
    _, full_secs, _, part_secs = full_then_partial(proxier, services, endpoints, changed=1)   # a remote endpoint
    assert mode != "ipvs" or len(node.ipvs.services) == services
    return node, full_secs, part_secs


def measure(services: int, endpoints: int) -> dict[str, float]:
    """The syncs of one size (a child, ``--one``)."""
    node, full_secs, part_secs = synced(services, endpoints)
    dests = sum(len(s.dests) for s in node.ipvs.services.values())
    return {"full_s": full_secs, "virtual_servers": len(node.ipvs.services), "real_servers": dests,
            "set_members": sum(len(s.members) for s in node.ipsets.sets.values()), "partial_s": part_secs}


def _rates(nodes: dict[int, Node], batches: dict[int, list[Packet]], chunk: int) -> dict[int, float]:
    """Packets per second of each node's batch received on eth0, the batches sent ``chunk`` packets at
    a time from each node in turn (the order alternating), so that a burst of the machine's other
    work falls on every size alike. The cyclic GC is frozen: the nodes' state is long-lived."""
    spent = dict.fromkeys(batches, 0.0)
    order = list(batches)
    gc.collect()
    gc.freeze()
    try:
        for k, at in enumerate(range(0, max(len(b) for b in batches.values()), chunk)):
            for n in (order if k % 2 == 0 else order[::-1]):
                node, part = nodes[n], batches[n][at:at + chunk]
                t0 = CLOCK()
                for p in part:
                    node.receive(p, "eth0")
                spent[n] += CLOCK() - t0
    finally:
        gc.unfreeze()
    return {n: len(batches[n]) / spent[n] for n in batches}


def round_of(nodes: dict[int, Node], r: int, rngs: dict[int, random.Random], new: int = 5000,
             est: int = 30000) -> dict[int, tuple[float, float]]:
    """One round on every node: new-connection and established packets per second from a remote pod
    (10.200.r.5, inside the cluster CIDR: not masqueraded) to random cluster IPs."""
    client = parse_addr(f"10.200.{r}.5")[1]
    vips = {n: [parse_addr(f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}")[1]
                for i in (rngs[n].randrange(n) for _ in range(new))] for n in nodes}
    syns = {n: [Packet(src=client, dst=vips[n][i], proto=6, sport=1024 + i, dport=80, tcp_flags=SYN)
                for i in range(new)] for n in nodes}
    new_rates = _rates(nodes, syns, 500)
    acks = {}
    for n, node in nodes.items():
        assert syns[n][-1].dport == 8080, "not balanced"
        # The real servers' answers for the first 1,000 connections, then their clients' ACKs.
        for p in syns[n][:1000]:
            node.receive(Packet(src=p.dst, dst=p.src, proto=6, sport=p.dport, dport=p.sport, tcp_flags=SYN | ACK),
                         "eth0")
        acks[n] = [Packet(src=client, dst=vips[n][k % 1000], proto=6, sport=1024 + k % 1000, dport=80, tcp_flags=ACK)
                   for k in range(est)]
    est_rates = _rates(nodes, acks, 1000)
    for a in acks.values():
        assert a[-1].ctstate == "ESTABLISHED" and a[-1].dport == 8080, (a[-1].ctstate, a[-1].dport)
    return {n: (new_rates[n], est_rates[n]) for n in nodes}


def packets(sizes: list[int], endpoints: int, rounds: int, mode: str = "ipvs",
            warmup: int = 1) -> dict[str, dict[str, list[float]]]:
    """A child (``--packets``): the nodes of every size, then ``warmup`` rounds that are not counted
    (the first packets after a sync compile the chains they pass) and ``rounds`` rounds that are."""
    nodes = {n: synced(n, endpoints, mode)[0] for n in sizes}
    rngs = {n: random.Random(1) for n in sizes}
    out: dict[str, dict[str, list[float]]] = {str(n): {"new": [], "est": []} for n in sizes}
    for r in range(-warmup, rounds):
        got = round_of({n: nodes[n] for n in (sizes if r % 2 == 0 else sizes[::-1])}, r % 256, rngs)
        if r >= 0:
            for n, (new_rate, est_rate) in got.items():
                out[str(n)]["new"].append(new_rate)
                out[str(n)]["est"].append(est_rate)
    return out


def _options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--rounds", type=int, default=4, help="packet rounds per interpreter, sizes interleaved")
    ap.add_argument("--warmup", type=int, default=1, help="packet rounds per interpreter before those measured")
    ap.add_argument("--packets", action="store_true", help=argparse.SUPPRESS)    # a child: the packet rounds
    ap.add_argument("--proxy-mode", default="ipvs", choices=("ipvs", "iptables"),
                    help="packets through kube-proxy's iptables mode instead (syncs are not measured then)")


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):>9,.0f} ({min(xs):,.0f}-{max(xs):,.0f})"


def syncs(args: argparse.Namespace, sizes: list[int]) -> None:
    """The sync figures: each size ``--repeat`` times in a fresh interpreter, the best shown."""
    rows: dict[int, dict[str, Any]] = {}
    print(f"{'services':>9} {'virtual':>8} {'real':>8} {'members':>8} {'full sync':>10} {'1-endpoint sync':>16}")
    for n in sizes:
        runs = [_child(n, args.endpoints, __file__) for _ in range(args.repeat)]
        r = dict(runs[0], full_s=min(x["full_s"] for x in runs), partial_s=min(x["partial_s"] for x in runs))
        rows[n] = r
        print(f"{n:>9} {r['virtual_servers']:>8,.0f} {r['real_servers']:>8,.0f} {r['set_members']:>8,.0f} "
              f"{r['full_s']:>9.2f}s {r['partial_s'] * 1000:>14.1f}ms")
    lo, hi = sizes[0], sizes[-1]
    print(f"partial-sync cost ratio {hi} / {lo}: {rows[hi]['partial_s'] / rows[lo]['partial_s']:.2f}")


def main() -> None:
    args, sizes = arguments(__doc__, measure, _options)
    if args.packets:
        print(json.dumps(packets(sizes, args.endpoints, args.rounds, args.proxy_mode, args.warmup)))
        sys.exit(0)
    lo, hi = sizes[0], sizes[-1]
    if args.proxy_mode == "ipvs":
        syncs(args, sizes)
    rates: dict[int, dict[str, list[float]]] = {n: {"new": [], "est": []} for n in sizes}
    for _ in range(args.repeat):
        out = subprocess.run([sys.executable, __file__, "--packets", "--sizes", args.sizes, "--endpoints",
                              str(args.endpoints), "--rounds", str(args.rounds), "--proxy-mode", args.proxy_mode,
                              "--warmup", str(args.warmup)],
                             capture_output=True, text=True, check=True)
        for n, got in json.loads(out.stdout).items():
            for kind in ("new", "est"):
                rates[int(n)][kind] += got[kind]
    print(f"packets: {args.repeat} interpreters x {args.rounds} rounds, median (lowest-highest)")
    print(f"{'services':>9} {'new pkt/s':>26} {'established pkt/s':>28}")
    for n in sizes:
        print(f"{n:>9} {_spread(rates[n]['new']):>26} {_spread(rates[n]['est']):>28}")
    for kind, name in (("new", "new packet"), ("est", "established packet")):
        ratios = [a / b for a, b in zip(rates[lo][kind], rates[hi][kind], strict=True)]
        print(f"cost ratio {hi} / {lo}, {name}, per round: median {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}): {' '.join(f'{x:.2f}' for x in ratios)}")


if __name__ == "__main__":
    main()
