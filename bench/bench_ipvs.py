"""Packets per second through IPVS with 100, 1,000 and 10,000 virtual services (3 real servers each).

New connections are SYNs from a pod to random virtual services (lookup, scheduling, masquerade,
re-injection through LOCAL_OUT/POSTROUTING); established packets are ACKs of existing
connections. Each size is measured --repeat times, each time in a fresh interpreter (no size
inherits another's heap); each rate is the best of all its batches (--rounds per interpreter, fresh
connections every batch), as timeit takes the fastest run; prints the cost ratio of the largest size
to the smallest, measured in one run.

    .venv/bin/python bench/bench_ipvs.py
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys

from bench_proxier import CLOCK
from kproxy.ipvs.ipvs import Dest, VirtualService
from kproxy.node import Address, Interface, Node
from kproxy.packet import ACK, SYN, Packet, parse_addr


def vip(i: int) -> str:
    return f"10.96.{i // 250}.{i % 250 + 1}"


def build(services: int) -> Node:
    node = Node.from_description({"name": "bench", "interfaces": [{"name": "eth0", "addresses": ["192.168.1.10/24"]},
                                                                 {"name": "cni0", "addresses": ["10.244.0.1/16"]}],
                                  "sysctls": {"net.netfilter.nf_conntrack_max": "2000000"}})
    node.clock = 1000.0
    node.conntrack.enabled = True
    node.add_interface(Interface("kube-ipvs0", [Address.parse(f"{vip(i)}/32") for i in range(services)]))
    for i in range(services):
        svc = VirtualService(6, parse_addr(vip(i))[1], 80, scheduler_name="rr")
        node.ipvs.add_service(svc)
        for j in range(3):
            node.ipvs.add_dest(svc, Dest(parse_addr(f"10.244.{1 + j}.{i % 250 + 1}")[1], 8080))
    return node


def measure(services: int, new: int, est: int, rounds: int, active: int = 0) -> tuple[float, float]:
    """Best of ``rounds`` batches for each kind of packet (timeit's rule: the fastest batch is the one
    least disturbed by the rest of the machine); every batch opens ``new`` fresh connections."""
    node = build(services)
    rng = random.Random(1)
    node.route(4, 0)              # build the routing table now (the kernel builds it as addresses are added)
    new_rates, est_rates = [], []
    for r in range(rounds):
        pod = parse_addr(f"10.244.{9 + r}.5")[1]
        # New connections go to any of the services; the first 1,000 (the established flows) go to
        # ``active`` services, so every size can carry the same established traffic.
        spread = [services if i >= 1000 or not active else min(active, services) for i in range(new)]
        targets = [parse_addr(vip(rng.randrange(spread[i])))[1] for i in range(new)]
        pkts = [Packet(src=pod + i // 60000, dst=targets[i], proto=6, sport=1024 + i % 60000, dport=80,
                       tcp_flags=SYN) for i in range(new)]
        gc.collect()
        gc.freeze()
        t0 = CLOCK()
        results = [node.receive(p, "cni0") for p in pkts]
        new_rates.append(new / (CLOCK() - t0))
        # Complete the handshake of the first 1,000 (the real server's SYN-ACK, rewritten back), then ACKs.
        for res in results[:1000]:
            rs = res.packet
            node.receive(Packet(src=rs.dst, dst=rs.src, proto=6, sport=rs.dport, dport=rs.sport,
                                tcp_flags=SYN | ACK), res.out_dev)
        flows = [(pod + i // 60000, targets[i], 1024 + i % 60000) for i in range(min(new, 1000))]
        acks = [Packet(src=s, dst=d, proto=6, sport=sp, dport=80, tcp_flags=ACK) for k in range(est)
                for (s, d, sp) in (flows[k % len(flows)],)]
        t0 = CLOCK()
        for p in acks:
            node.receive(p, "cni0")
        est_rates.append(est / (CLOCK() - t0))
        assert acks[-1].ctstate == "ESTABLISHED" and acks[-1].dport == 8080
        gc.unfreeze()
    return max(new_rates), max(est_rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--new", type=int, default=10000)
    ap.add_argument("--est", type=int, default=60000)
    ap.add_argument("--rounds", type=int, default=5, help="batches per interpreter; the best one counts")
    ap.add_argument("--repeat", type=int, default=3, help="fresh interpreters per size")
    ap.add_argument("--active", type=int, default=0,
                    help="established flows go to this many services at every size (0: to any service)")
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)   # a child: measure one size
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.new, args.est, args.rounds, args.active)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    rates = {}
    print(f"{'services':>9} {'new conn/s':>12} {'established pkt/s':>18}")
    for n in sizes:
        # Each size in fresh interpreters, so no size inherits the heap another one left behind.
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--one", str(n), "--new", str(args.new),
                                           "--est", str(args.est), "--rounds", str(args.rounds), "--active",
                                           str(args.active)], capture_output=True, text=True, check=True).stdout)
                for _ in range(args.repeat)]
        rates[n] = (max(r[0] for r in runs), max(r[1] for r in runs))
        print(f"{n:>9} {rates[n][0]:>12,.0f} {rates[n][1]:>18,.0f}")
    lo, hi = sizes[0], sizes[-1]
    print(f"cost ratio {hi} / {lo}: new {rates[lo][0] / rates[hi][0]:.2f}, established {rates[lo][1] / rates[hi][1]:.2f}")


if __name__ == "__main__":
    main()
