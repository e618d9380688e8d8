"""The floor of a small change to kube-proxy's nftables table on this kernel: what nft 1.0.6 costs, and
what the same netlink batch costs sent straight to the kernel (no nft, no cache).

Builds the table of N Services x E endpoints with the nftables proxier in a fresh kp- namespace (a
first sync through ``KernelNft``), then times each change, CPU seconds of the process that sends it
(the kernel's commit and validation run in that process's sendmsg):

- ``nft -f``: the tool as the proxier runs it (its cache: every chain and set of the table first);
- ``raw``: nft's own batch for the same change, taken once with ``strace -e write=`` and sent again
  over a NETLINK_NETFILTER socket by this process, which reads nothing first.

Changes: the proxier's one-endpoint transaction (9 lines: a new endpoint chain, the Service chain's
rules, the old endpoint chain flushed; re-sent as is, which the kernel takes again), one set element
without a verdict (``cluster-ips``) and one verdict-map element with a ``goto`` (``service-ips``), each
added and deleted in turn. Needs root and strace.

    sudo .venv/bin/python bench/bench_nft_floor.py --services 10000 --repeat 5
"""

from __future__ import annotations

import argparse
import copy
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_proxier import build  # noqa: E402
from kproxy.backends.nft import KernelNft  # noqa: E402
from kproxy.lab.netns import netns  # noqa: E402
from kproxy.proxy.config import ProxyConfig  # noqa: E402
from kproxy.proxy.nftables import NftablesProxier  # noqa: E402

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
_HEX = re.compile(r" \| [0-9a-f]{5}  (.{48})")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def nft_cpu(ns: str, text: str) -> float:
    """CPU seconds of one ``nft -f -`` of ``text`` in ``ns`` (which must succeed)."""
    c0 = children_cpu()
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, text=True, check=True)
    return children_cpu() - c0


def captured_batch(ns: str, text: str) -> bytes:
    """The bytes nft sends for ``text`` (applying it), from strace's dump of its one sendmsg."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        subprocess.run(["ip", "netns", "exec", ns, "strace", "-e", "trace=sendmsg", "-e", "write=3", "-o", out.name,
                        "nft", "-f", "-"], input=text, text=True, check=True)
        data, started = bytearray(), False
        for line in out.read().splitlines():
            if "bytes in buffer" in line:
                if started:
                    break
                started = True
            elif started and (m := _HEX.match(line)):
                data += bytes.fromhex(m.group(1).replace(" ", ""))
    return bytes(data)


RAW = f"""
import resource, socket, struct, sys
batch = sys.stdin.buffer.read()
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, {NETLINK_NETFILTER})
s.bind((0, 0))
r0 = resource.getrusage(resource.RUSAGE_SELF)
s.send(batch)
s.setblocking(False)
errors = []
try:
    while True:
        buf = s.recv(65536)
        off = 0
        while off < len(buf):
            length, kind = struct.unpack_from("IH", buf, off)
            if kind == {NLMSG_ERROR} and struct.unpack_from("i", buf, off + 16)[0]:
                errors.append(struct.unpack_from("i", buf, off + 16)[0])
            off += (length + 3) & ~3
except BlockingIOError:
    pass
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, errors)
"""


def raw_cpu(ns: str, batch: bytes) -> float:
    """CPU seconds of sending ``batch`` to the kernel of ``ns`` and reading its answers (the kernel
    works inside the send; nft asks for no acknowledgement of a batch that succeeds)."""
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", RAW], input=batch, capture_output=True,
                          check=True)
    cpu, errors = proc.stdout.decode().split(" ", 1)
    if errors.strip() != "[]":
        raise SystemExit(f"the kernel refused the batch: {errors.strip()}")
    return float(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cfg = ProxyConfig.from_dict({"clusterCIDR": "10.128.0.0/9", "hostnameOverride": "node-a"})
    with netns("floor") as ns:
        proxier = NftablesProxier(cfg, KernelNft(netns=ns.name), ["192.168.0.2"])
        objs = build(args.services, args.endpoints)
        t0 = time.perf_counter()
        assert not proxier.sync(objs).error
        print(f"{args.services} Services x {args.endpoints} endpoints programmed in {time.perf_counter() - t0:.1f} s; "
              f"CPU seconds per change, median of {args.repeat} (min-max)")
        objs.dirty = set()
        es = copy.deepcopy(objs.slices["ns0/svc0-a"])
        es.endpoints[0].addresses = ["10.255.255.1"]
        objs.update_slice(es)
        one_endpoint = proxier.sync(objs).text
        t = "ip kube-proxy"
        chain = next(ln.split(" ")[4] for ln in one_endpoint.splitlines() if ln.startswith("add chain") and "service-" in ln)
        pairs = {
            "one-endpoint change (9 lines)": (one_endpoint, one_endpoint),
            "add/delete element, no verdict": (f"add element {t} cluster-ips {{ 10.200.0.1 }}\n",
                                               f"delete element {t} cluster-ips {{ 10.200.0.1 }}\n"),
            "add/delete element with goto": (f"add element {t} service-ips {{ 10.200.0.1 . tcp . 80 : goto {chain} }}\n",
                                             f"delete element {t} service-ips {{ 10.200.0.1 . tcp . 80 }}\n"),
        }
        print(f"{'change':>32} | {'nft -f':>22} | {'raw netlink batch':>22}")
        for name, (do, undo) in pairs.items():
            batches = (captured_batch(ns.name, do), captured_batch(ns.name, undo))
            tool, raw = [], []
            for _ in range(args.repeat):
                tool.append(nft_cpu(ns.name, do))
                nft_cpu(ns.name, undo)
                raw.append(raw_cpu(ns.name, batches[0]))
                raw_cpu(ns.name, batches[1])
            print(f"{name:>32} | " + " | ".join(
                f"{statistics.median(v) * 1000:>6.0f} ms ({min(v) * 1000:.0f}-{max(v) * 1000:.0f})".rjust(22)
                for v in (tool, raw)), flush=True)


if __name__ == "__main__":
    main()
