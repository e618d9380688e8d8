"""kube-proxy's iptables mode (iptables-nft and iptables-legacy) and nftables mode (nft -f) applied to a
real kernel side by side, each in a fresh kp- namespace, next to the emulated node.

For N Services with 5 endpoints: the first full sync, a one-endpoint partial sync and a later full
sync, timed end to end (objects in, restore input or nft transaction out, applied). A user's iptables
rules are loaded first and must come out unchanged, counters included. Needs root; the namespaces
are removed afterwards.

    sudo .venv/bin/python bench/bench_kernel_sync.py --sizes 1000,10000 --modes iptables,nftables
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_proxier import build  # noqa: E402
from kproxy.backends.emulated import EmulatedBackend  # noqa: E402
from kproxy.backends.kernel import KernelBackend  # noqa: E402
from kproxy.backends.nft import EmulatedNft, KernelNft  # noqa: E402
from kproxy.lab.netns import netns  # noqa: E402
from kproxy.node import Node  # noqa: E402
from kproxy.proxy.config import ProxyConfig  # noqa: E402
from kproxy.proxy.iptables import IptablesProxier  # noqa: E402
from kproxy.proxy.nftables import NftablesProxier  # noqa: E402

FOREIGN = """*nat
:PREROUTING ACCEPT [0:0]
:USER-NAT - [0:0]
[7:420] -A PREROUTING -p tcp --dport 2222 -j USER-NAT
[3:180] -A USER-NAT -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:USER-FILTER - [0:0]
[5:300] -A INPUT -s 10.9.9.9/32 -j USER-FILTER
-A USER-FILTER -j DROP
COMMIT
"""


def foreign(save_text: str) -> list[str]:
    """The user's rules as iptables-save -c shows them (kproxy's KUBE- chains and jumps left out)."""
    return [ln for ln in save_text.splitlines() if "USER-" in ln]


def cpu_now() -> float:
    """CPU seconds of this process and of the tools it ran and waited for: on a shared machine the
    wall clock also counts other work, the CPU time only ours (the kernel's work in a tool's
    syscalls, such as nf_tables validating the table on commit, is that tool's system time)."""
    me, tools = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + tools.ru_utime + tools.ru_stime


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``'s result, wall seconds and CPU seconds."""
    w0, c0 = time.perf_counter(), cpu_now()
    out = fn()
    return out, time.perf_counter() - w0, cpu_now() - c0


def run(backend: object, services: int, endpoints: int, changes: int = 5, first_only: bool = False) -> dict[str, Any]:
    """First full sync, ``changes`` one-endpoint partial syncs (median wall and CPU), a later full sync
    (the first sync alone with ``first_only``: the others show as 0)."""
    cfg = ProxyConfig.from_dict({"clusterCIDR": "10.128.0.0/9", "hostnameOverride": "node-a"})
    nft = isinstance(backend, (KernelNft, EmulatedNft))
    proxier = (NftablesProxier if nft else IptablesProxier)(cfg, backend, ["192.168.0.2"])
    objs = build(services, endpoints)
    full, full_s, full_cpu = timed(lambda: proxier.sync(objs))
    assert not full.error, full.error[:500]
    if first_only:
        return {"first": full_s, "first_cpu": full_cpu, "part": 0.0, "part_cpu": 0.0, "again": 0.0, "again_cpu": 0.0,
                "rules": full.rules["rules"] if nft else full.nat_rules + full.filter_rules}
    objs.dirty = set()
    parts = []
    for k in range(changes):
        es = copy.deepcopy(objs.slices["ns0/svc0-a"])
        es.endpoints[0].addresses = [f"10.255.255.{k + 1}"]

        def change(es: Any = es) -> Any:
            objs.update_slice(es)
            return proxier.sync(objs)
        part, wall, cpu = timed(change)
        assert not part.error and not part.full, part.error[:500]
        parts.append((wall, cpu))
    again, again_s, again_cpu = timed(lambda: proxier.sync(objs, force_full=True))
    assert not again.error, again.error[:500]
    return {"first": full_s, "first_cpu": full_cpu, "part": statistics.median(w for w, _ in parts),
            "part_cpu": statistics.median(c for _, c in parts), "again": again_s, "again_cpu": again_cpu,
            "rules": full.rules["rules"] if nft else full.nat_rules + full.filter_rules}


def kernel(services: int, endpoints: int, legacy: bool, nft: bool = False, changes: int = 5,
           first_only: bool = False) -> dict[str, Any]:
    with netns("bench") as ns:
        be = KernelBackend(netns=ns.name, legacy=legacy)
        if nft:
            return run(KernelNft(netns=ns.name), services, endpoints, changes, first_only)
        be.restore(FOREIGN, noflush=True, counters=True)
        before = foreign(be._run([be.iptables_save, "-c"]).stdout)
        out = run(be, services, endpoints, changes, first_only)
        after = foreign(be._run([be.iptables_save, "-c"]).stdout)
        assert after == before, (before, after)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--endpoints", type=int, default=5)
    ap.add_argument("--changes", type=int, default=5, help="one-endpoint changes timed (their median is shown)")
    ap.add_argument("--modes", default="iptables,nftables")
    ap.add_argument("--first-only", action="store_true", help="time the first full sync only, on the kernel only")
    args = ap.parse_args()
    print("wall clock, and in brackets CPU time (kproxy and the tools, the kernel's work in their syscalls)")
    print(f"{'backend':>16} {'services':>9} {'rules':>8} | {'first':>16} {'1-ep':>16} {'again':>16} | "
          f"{'emulated first':>14} {'emulated 1-ep':>13}")
    rows = {"iptables": [("iptables-nft", False), ("iptables-legacy", True)], "nftables": [("nft -f", False)]}
    for mode in args.modes.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            node = Node.from_description({"name": "node-a",
                                          "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]}]})
            emu = {"first": 0.0, "part": 0.0} if args.first_only else \
                run(EmulatedNft(node) if mode == "nftables" else EmulatedBackend(node), n, args.endpoints, args.changes)
            for name, legacy in rows[mode]:
                k = kernel(n, args.endpoints, legacy=legacy, nft=mode == "nftables", changes=args.changes,
                           first_only=args.first_only)
                print(f"{name:>16} {n:>9} {k['rules']:>8,} | {k['first']:>7.2f}s ({k['first_cpu']:>5.2f}s) "
                      f"{k['part'] * 1000:>6.0f}ms ({k['part_cpu'] * 1000:>5.0f}ms) "
                      f"{k['again']:>7.2f}s ({k['again_cpu']:>5.2f}s) | "
                      f"{emu['first']:>13.2f}s {emu['part'] * 1000:>11.1f}ms", flush=True)


if __name__ == "__main__":
    main()
