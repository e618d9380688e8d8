"""The nftables front end's speed on a kube-proxy nftables-mode ruleset (issue 12, item 8).

Prints, for 100, 1,000 and 10,000 Services (10 endpoints each): new connections/s (a pod's SYN to a
random Service: conntrack entry, the filter base chains, nat prerouting → ``services`` → the
``service-ips`` verdict map → the service chain's ``numgen`` verdict map → the endpoint chain's DNAT,
nat postrouting's masquerade check, confirm), established packets/s (ACKs of 1,000 connections whose
handshake completed: conntrack ESTABLISHED and the NAT binding, plus the filter base chains, whose
``ct state new`` rules fail), the cost ratio of the largest size to the smallest, and the time
``nft -f`` takes to load the largest ruleset into an empty emulated ruleset (parse, checks, commit and
hooking the base chains), in a fresh interpreter as a user's ``kproxy nft -f`` runs. Each packet
figure is the best of ``--repeat`` runs, each in a fresh interpreter.

``--proxier`` measures the packets through what kproxy's own nftables proxier (``kproxy.proxy.nftables``)
loads for ``bench_proxier.py``'s Services instead of the script above (issue 13: the per-packet cost
through the proxier's ruleset).

    .venv/bin/python bench/bench_nft.py
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_packet_path  # noqa: E402
from bench_packet_path import packet_rates  # noqa: E402
from bench_proxier import build as build_services  # noqa: E402
from kproxy.backends.nft import EmulatedNft  # noqa: E402
from kproxy.nftables.cli import run_nft  # noqa: E402
from kproxy.nftables.evaluate import attach  # noqa: E402
from kproxy.nftables.model import Ruleset  # noqa: E402
from kproxy.node import Node  # noqa: E402
from kproxy.packet import SYN, Packet, parse_addr  # noqa: E402
from kproxy.proxy.config import ProxyConfig  # noqa: E402
from kproxy.proxy.nftables import NftablesProxier  # noqa: E402
from nft_rulesets import kube_proxy_script, service_ip  # noqa: E402
from rulesets import endpoint_ip  # noqa: E402

ENDPOINTS = 10


def CLOCK() -> float:  # noqa: N802 - bench_packet_path's clock, as --cpu set it
    return bench_packet_path.CLOCK()


def worker(endpoint_route: str = "10.100.0.0/14") -> Node:
    node = Node.from_description({
        "name": "bench",
        "interfaces": [{"name": "eth0", "addresses": ["192.168.1.10/24"]},
                       {"name": "cni0", "addresses": ["10.244.1.1/24"]}],
        "routes": ["default via 192.168.1.1 dev eth0", f"{endpoint_route} dev cni0"],
        "sysctls": {"net.netfilter.nf_conntrack_max": "2000000", "net.ipv4.ip_forward": "1"},
    })
    node.clock = 1_000_000.0
    return node


def load(node: Node, script: str) -> float:
    """``kproxy nft -f FILE`` on the node, in memory; returns the seconds it took."""
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as fh:
        fh.write(script)
        fh.flush()
        t0 = CLOCK()
        rc, _, err, rs = run_nft(["-f", fh.name], Ruleset(), None, set(node.interfaces))
        assert rc == 0, err
        node.nftables = rs
        assert attach(node) == []
        return CLOCK() - t0


def compile_all(node: Node) -> float:
    """Compile every chain the base chains reach; returns the seconds it took."""
    t0 = CLOCK()
    for runner in node.subsystems["nftables_runners"]:
        runner.compiled.precompile()
    return CLOCK() - t0


Loaded = tuple[Node, Callable[[int], int], Callable[[int], set[int]]]


def script_ruleset(services: int) -> Loaded:
    """A node with ``nft_rulesets.py``'s script loaded; each Service's address and its endpoints' addresses."""
    node = worker()
    load(node, kube_proxy_script(services, ENDPOINTS))
    return node, lambda s: parse_addr(service_ip(s))[1], \
        lambda s: {parse_addr(endpoint_ip(s, j))[1] for j in range(ENDPOINTS)}


def proxier_ruleset(services: int) -> Loaded:
    """A node with what the nftables proxier syncs for ``bench_proxier.build``'s Services (ClusterIPs from
    10.96.0.0, endpoints from 10.128.0.0: the cluster CIDR 10.128.0.0/9, so pods are not masqueraded)."""
    node = worker("10.128.0.0/9")
    cfg = ProxyConfig.from_dict({"clusterCIDR": "10.128.0.0/9", "hostnameOverride": "bench", "mode": "nftables"})
    result = NftablesProxier(cfg, EmulatedNft(node), ["192.168.1.10"]).sync(build_services(services, ENDPOINTS))
    assert not result.error, result.error

    def endpoints(s: int) -> set[int]:
        first = parse_addr("10.128.0.0")[1] + s * ENDPOINTS
        return set(range(first, first + ENDPOINTS))

    return node, lambda s: parse_addr("10.96.0.0")[1] + s, endpoints


RULESETS = {"script": script_ruleset, "proxier": proxier_ruleset}


def measure(services: int, new_count: int, est_count: int) -> tuple[float, float]:
    node, vip, endpoints = RULESETS[os.environ.get("KPROXY_BENCH_NFT_RULESET", "script")](services)
    rng = random.Random(1)
    pod = parse_addr("10.244.1.5")[1]
    picks = [rng.randrange(services) for _ in range(new_count)]
    vips = [vip(s) for s in picks]
    packets = [Packet(src=pod + i // 60000, dst=vips[i], proto=6, sport=1024 + i % 60000,
                      dport=80, tcp_flags=SYN, src_mac="", length=60) for i in range(new_count)]
    receive = node.receive
    # Chains compile on first use; compile them all now so the timed part measures the steady per-packet
    # cost (bench_packet_path.py does the same for iptables).
    compile_all(node)
    node.route(4, 0)
    gc.collect()
    gc.freeze()
    t0 = CLOCK()
    results = [receive(p, "cni0") for p in packets]
    new_rate = new_count / (CLOCK() - t0)
    first = results[0].packet
    assert first.dst in endpoints(picks[0]) and first.dport == 8080, \
        "a new connection must be DNATed to one of its Service's endpoints"
    est_rate = bench_packet_path.established_rate(receive, packets, vips[:1000], results, est_count)
    gc.unfreeze()
    return new_rate, est_rate


def load_time(services: int) -> tuple[float, int, int]:
    """Seconds to ``nft -f`` the ruleset of ``services`` Services, its rule and endpoint counts."""
    script = kube_proxy_script(services, ENDPOINTS)
    node = worker()
    # What `kproxy nft` imports before it reads the file; this machine's Python writes no bytecode cache
    # (PYTHONDONTWRITEBYTECODE), so a first import compiles the module's source: not the load's work.
    for module in ("compiled", "fastpath", "listing", "rules"):
        importlib.import_module(f"kproxy.nftables.{module}")
    importlib.import_module("kproxy.store.chains")
    secs = load(node, script)
    rules = sum(len(c.rules) for t in node.nftables.tables for c in t.chains.values())
    return secs, rules, services * ENDPOINTS


def _child(*args: str) -> object:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--new", type=int, default=20000, help="new connections per size")
    ap.add_argument("--est", type=int, default=50000, help="established packets per size")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size, each in a fresh interpreter; the best is shown")
    ap.add_argument("--load", type=int, default=10000, help="Services in the ruleset whose nft -f is timed (0: skip)")
    ap.add_argument("--cpu", action="store_true", help="time with process CPU seconds (see bench_packet_path.CLOCK)")
    ap.add_argument("--proxier", action="store_true",
                    help="packets through the nftables proxier's own ruleset (bench_proxier.py's Services) instead")
    ap.add_argument("--with-iptables", action="store_true",
                    help="then measure iptables mode (bench_packet_path.py) at the same sizes: a same-moment reference")
    ap.add_argument("--load-only", type=int, default=0, help=argparse.SUPPRESS)   # a child: time one load
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)         # a child: measure one size
    args = ap.parse_args()
    if args.cpu:
        os.environ["KPROXY_BENCH_CLOCK"] = "cpu"
        bench_packet_path.CLOCK = time.process_time
    if args.proxier:
        os.environ["KPROXY_BENCH_NFT_RULESET"] = "proxier"     # what the children measure
    if args.load_only:
        print(json.dumps(load_time(args.load_only)))
        return
    if args.one:
        print(json.dumps(measure(args.one, args.new, args.est)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    source = "kproxy's nftables proxier" if args.proxier else "kube-proxy nftables ruleset"
    print(f"nftables mode ({source}, 10 endpoints per Service):")
    packet_rates(__file__, sizes, args.new, args.est, args.repeat)
    if args.load:
        secs, rules, endpoints = _child("--load-only", str(args.load))  # type: ignore[misc]
        print(f"nft -f of {args.load:,} Services, {endpoints:,} endpoints, {rules:,} rules (fresh interpreter): "
              f"{secs:.2f} s")
    if args.with_iptables:
        print("iptables mode (bench_packet_path.py's ruleset, 3 endpoints per Service), measured just after:")
        reference = str(Path(__file__).with_name("bench_packet_path.py"))
        packet_rates(reference, sizes, args.new, args.est, args.repeat)
        out = subprocess.run([sys.executable, reference, "--restore-only", "100000"] + ["--cpu"] * args.cpu,
                             capture_output=True, text=True, check=True)
        print(f"iptables-restore of {json.loads(out.stdout)[1]:,} rules (fresh interpreter): "
              f"{json.loads(out.stdout)[0]:.2f} s")


if __name__ == "__main__":
    main()
