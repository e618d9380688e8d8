"""kube-proxy iptables and nftables modes at scale: full sync and a one-endpoint partial sync, on the emulated node.

For N Services with E endpoints each: the full sync (objects in, restore input out, applied to the
emulated node) and then a change of one endpoint of one Service (a partial sync). Prints the times,
the restore input (or nft transaction) sizes, and the ratio of partial-sync cost at the largest size
to the smallest, for each mode (``--modes``).
Each size is measured ``--repeat`` times, each time in a fresh interpreter, and the best time is
shown: the machine's noise only ever adds time.

    .venv/bin/python bench/bench_proxier.py
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import time
from typing import Any

from kproxy.backends.emulated import EmulatedBackend
from kproxy.backends.nft import EmulatedNft
from kproxy.k8s.manifests import Objects
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.iptables import IptablesProxier
from kproxy.proxy.nftables import NftablesProxier


def CLOCK() -> float:  # noqa: N802 - the wall clock, or with --cpu (inherited by the children) CPU seconds
    return time.process_time() if os.environ.get("KPROXY_BENCH_CLOCK") == "cpu" else time.perf_counter()


def build(services: int, endpoints: int) -> Objects:
    objs = Objects()
    for i in range(services):
        name = f"svc{i}"
        objs.add({"kind": "Service", "metadata": {"name": name, "namespace": f"ns{i % 50}"},
                  "spec": {"clusterIP": f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}",
                           "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}, "bench")
        objs.add({"kind": "EndpointSlice",
                  "metadata": {"name": f"{name}-a", "namespace": f"ns{i % 50}",
                               "labels": {"kubernetes.io/service-name": name}},
                  "addressType": "IPv4",
                  "endpoints": [{"addresses": [f"10.{128 + (i * endpoints + j) // 65536}."
                                               f"{(i * endpoints + j) // 256 % 256}.{(i * endpoints + j) % 256}"],
                                 "nodeName": "node-a" if j == 0 else "node-b", "conditions": {"ready": True}}
                                for j in range(endpoints)],
                  "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}, "bench")
    return objs


def full_then_partial(proxier: Any, services: int, endpoints: int, changed: int = 0) -> tuple[Any, float, Any, float]:
    """A full sync of ``build(services, endpoints)``, then the partial sync after endpoint ``changed`` of
    the first Service is replaced: each result with its time."""
    objs = build(services, endpoints)
    gc.collect()
    t0 = CLOCK()
    full = proxier.sync(objs)
    full_secs = CLOCK() - t0
    assert not full.error, full.error
    objs.dirty = set()                           # from now on, changes are tracked as informers report them
    es = copy.deepcopy(objs.slices["ns0/svc0-a"])
    es.endpoints[changed].addresses = ["10.255.255.1"]  # one endpoint replaced
    t0 = CLOCK()
    objs.update_slice(es)
    part = proxier.sync(objs)
    part_secs = CLOCK() - t0
    assert not part.error and not part.full, part.error
    return full, full_secs, part, part_secs


def measure(services: int, endpoints: int, mode: str = "iptables") -> dict[str, float]:
    node = Node.from_description({"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]}]})
    cfg = ProxyConfig.from_dict({"clusterCIDR": "10.128.0.0/9", "hostnameOverride": "node-a", "mode": mode})
    proxier: Any
    if mode == "nftables":
        proxier = NftablesProxier(cfg, EmulatedNft(node), ["192.168.0.2"])
    else:
        proxier = IptablesProxier(cfg, EmulatedBackend(node), ["192.168.0.2"])
    full, full_secs, part, part_secs = full_then_partial(proxier, services, endpoints)
    rules = full.rules.get("rules", 0) if mode == "nftables" else full.nat_rules + full.filter_rules
    return {"full_s": full_secs, "full_lines": full.lines, "rules": rules,
            "partial_s": part_secs, "partial_lines": part.lines}


def _child(services: int, endpoints: int, script: str = __file__, mode: str = "") -> dict[str, float]:
    """One measurement in a fresh interpreter, as a kube-proxy's first sync runs: a process whose heap
    has already grown (an earlier size's run) syncs the same objects noticeably faster."""
    out = subprocess.run([sys.executable, script, "--one", str(services), "--endpoints", str(endpoints),
                          *(["--modes", mode] if mode else [])], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def arguments(doc: str, measure: Any, extra: Any = None) -> tuple[argparse.Namespace, list[int]]:
    """The options of a proxier benchmark (also bench_ipvs_proxier.py's, which adds its own with
    ``extra(parser)``) and its sizes; a child (``--one``) prints its one measurement and exits here."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    if extra is not None:
        extra(ap)
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="runs per size, each in a fresh interpreter; the best is shown")
    ap.add_argument("--modes", default="iptables,nftables", help="proxy modes to measure (this benchmark only)")
    ap.add_argument("--cpu", action="store_true", help="time with process CPU seconds (a machine shared with other work)")
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)    # a child: measure one size
    args = ap.parse_args()
    if args.cpu:
        os.environ["KPROXY_BENCH_CLOCK"] = "cpu"
    if args.one:
        extra = {"mode": args.modes} if "," not in args.modes and "mode" in measure.__code__.co_varnames else {}
        print(json.dumps(measure(args.one, args.endpoints, **extra)))
        sys.exit(0)
    return args, [int(s) for s in args.sizes.split(",")]


def main() -> None:
    args, sizes = arguments(__doc__, measure)
    for mode in args.modes.split(","):
        print(f"{mode} mode")
        print(f"{'services':>9} {'rules':>9} {'full sync':>10} {'lines':>14} {'1-endpoint sync':>16} {'lines':>6}")
        rows = {}
        for n in sizes:
            runs = [_child(n, args.endpoints, mode=mode) for _ in range(args.repeat)]
            r = dict(runs[0], full_s=min(x["full_s"] for x in runs), partial_s=min(x["partial_s"] for x in runs))
            rows[n] = r
            print(f"{n:>9} {r['rules']:>9,.0f} {r['full_s']:>9.2f}s {r['full_lines']:>14,.0f} "
                  f"{r['partial_s'] * 1000:>14.1f}ms {r['partial_lines']:>6.0f}")
        lo, hi = sizes[0], sizes[-1]
        print(f"partial-sync cost ratio {hi} / {lo}: {rows[hi]['partial_s'] / rows[lo]['partial_s']:.2f}; "
              f"lines {rows[hi]['partial_lines']:.0f} vs {rows[lo]['partial_lines']:.0f}")


if __name__ == "__main__":
    main()
