"""kube-proxy's iptables and nftables modes applied to a real kernel (in a kp- namespace) next to the emulated node.

For N Services with 5 endpoints: the full sync and a one-endpoint partial sync, timed end to end
(objects in, restore input or nft transaction out, applied with iptables-restore --noflush or
nft -f). Needs root; the namespace is removed afterwards.

    sudo .venv/bin/python bench/bench_kernel_sync.py --sizes 1000,10000 --modes iptables,nftables
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

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


def run(backend: object, services: int, endpoints: int) -> tuple[float, float, int]:
    cfg = ProxyConfig.from_dict({"clusterCIDR": "10.128.0.0/9", "hostnameOverride": "node-a"})
    nft = isinstance(backend, (KernelNft, EmulatedNft))
    proxier = (NftablesProxier if nft else IptablesProxier)(cfg, backend, ["192.168.0.2"])
    objs = build(services, endpoints)
    t0 = time.perf_counter()
    full = proxier.sync(objs)
    full_s = time.perf_counter() - t0
    assert not full.error, full.error[:500]
    objs.dirty = set()
    es = copy.deepcopy(objs.slices["ns0/svc0-a"])
    es.endpoints[0].addresses = ["10.255.255.1"]
    t0 = time.perf_counter()
    objs.update_slice(es)
    part = proxier.sync(objs)
    part_s = time.perf_counter() - t0
    assert not part.error and not part.full, part.error[:500]
    return full_s, part_s, full.rules["rules"] if nft else full.nat_rules + full.filter_rules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--endpoints", type=int, default=5)
    ap.add_argument("--modes", default="iptables,nftables")
    args = ap.parse_args()
    print(f"{'mode':>9} {'services':>9} {'rules':>8} {'kernel full':>12} {'kernel 1-ep':>12} {'emulated full':>14} "
          f"{'emulated 1-ep':>14}")
    for mode in args.modes.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            node = Node.from_description({"name": "node-a",
                                          "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]}]})
            with netns("bench") as ns:
                kernel = KernelNft(netns=ns.name) if mode == "nftables" else KernelBackend(netns=ns.name)
                k_full, k_part, rules = run(kernel, n, args.endpoints)
            e_full, e_part, _ = run(EmulatedNft(node) if mode == "nftables" else EmulatedBackend(node), n,
                                    args.endpoints)
            print(f"{mode:>9} {n:>9} {rules:>8,} {k_full:>11.2f}s {k_part * 1000:>10.0f}ms {e_full:>13.2f}s "
                  f"{e_part * 1000:>12.1f}ms")


if __name__ == "__main__":
    main()
