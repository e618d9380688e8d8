"""Where a later full sync's time goes on a real kernel (nftables mode), in CPU seconds of kproxy and
the tools it ran: reading the table three ways (twice each, in turn), then forced full syncs on an untouched table and
after one chain was flushed, split into the nft commands run and the repair's planning
(``kproxy.backends.nft_resync``). Needs root; the kp- namespace is removed afterwards.

    sudo .venv/bin/python bench/bench_nft_resync.py --sizes 1000,10000
"""

from __future__ import annotations

import argparse
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_proxier import build  # noqa: E402
from kproxy.backends import nft_resync  # noqa: E402
from kproxy.backends.nft import KernelNft  # noqa: E402
from kproxy.lab.netns import netns  # noqa: E402
from kproxy.proxy.config import ProxyConfig  # noqa: E402
from kproxy.proxy.nftables import NftablesProxier  # noqa: E402

READS = (["list", "table"], ["-t", "list", "table"], ["-j", "list", "table"])


def cpu() -> tuple[float, float]:
    """(CPU seconds of this process and its finished children, the children's system time)."""
    me, tools = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + tools.ru_utime + tools.ru_stime, tools.ru_stime


def measure(services: int, endpoints: int) -> None:
    parts: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kw: Any) -> Any:
            c0 = cpu()[0]
            try:
                return fn(*args, **kw)
            finally:
                parts[name] = parts.get(name, 0.0) + cpu()[0] - c0
        return wrapper

    with netns("resync") as ns:
        cfg = ProxyConfig.from_dict({"clusterCIDR": "10.128.0.0/9", "hostnameOverride": "node-a"})
        backend = KernelNft(netns=ns.name)
        proxier = NftablesProxier(cfg, backend, ["192.168.0.2"])
        objs = build(services, endpoints)
        first = proxier.sync(objs)
        assert not first.error, first.error[:500]
        reads: dict[str, list[tuple[float, float, int]]] = {}
        for _ in range(2):                  # each form twice, in turn: the best of two
            for argv in READS:
                (c0, s0) = cpu()
                proc = backend._run([*argv, "ip", "kube-proxy"])
                (c1, s1) = cpu()
                reads.setdefault(" ".join(argv), []).append((c1 - c0, s1 - s0, len(proc.stdout)))
        for name, runs in reads.items():
            best = min(runs)
            print(f"{services:>6} nft {name:<16} {best[0]:6.2f}s CPU ({best[1]:5.2f}s kernel; runs "
                  f"{', '.join(f'{r[0]:.2f}' for r in runs)}) {best[2] / 1e6:5.1f} MB", flush=True)
        real_run, real_plan = backend._run, nft_resync.plan

        def run(argv: list[str], stdin: str | None = None) -> Any:
            return timed("nft " + " ".join(argv[:2]), real_run)(argv, stdin)

        backend._run = run  # type: ignore[method-assign]
        nft_resync.plan = timed("planning (Python)", real_plan)
        try:
            for label, tamper in (("untouched", None), ("one chain flushed", "flush chain ip kube-proxy services")):
                if tamper:
                    ns.run(["nft", tamper])
                parts.clear()
                c0 = cpu()[0]
                r = proxier.sync(objs, force_full=True)
                total = cpu()[0] - c0
                assert not r.error, r.error[:500]
                shown = ", ".join(f"{k} {v:.2f}s" for k, v in parts.items())
                repair = (backend.last_repair or "").count("\n")
                print(f"{services:>6} later full sync, {label}: {total:.2f}s CPU ({shown}; the rest is the proxier); "
                      f"repair {repair} lines", flush=True)
        finally:
            nft_resync.plan = real_plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--endpoints", type=int, default=5)
    args = ap.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        measure(n, args.endpoints)


if __name__ == "__main__":
    main()
