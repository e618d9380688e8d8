"""From an EndpointSlice change on the API server to rules applied on the emulated node.

A fake API server (kproxy.k8s.fakeapi) runs in a child process, as a real one is another process,
holding N Services with one EndpointSlice of E endpoints each. kproxy lists and watches it with the
kubernetes client, runs the sync loop (minSyncPeriod 0) with the iptables proxier over an emulated
node, and after the first full sync one endpoint of one Service is replaced, ``--changes`` times
(a different Service each time, a pause between). Measured for each change: from the moment the
command to change the slice is sent until the sync that applied it returns (the end-to-end
latency), and the network_programming_duration_seconds histogram as kproxy reports it (from the
slice's last-change-trigger-time annotation, set when the API server stored the change).

    .venv/bin/python bench/bench_api_watch.py [--services 10000] [--endpoints 5] [--changes 50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

from kproxy.backends.emulated import EmulatedBackend
from kproxy.k8s.fakeapi import FakeAPIServer
from kproxy.k8s.watch import ApiSource, api_client
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.iptables import IptablesProxier
from kproxy.proxy.metrics import ProxyMetrics
from kproxy.proxy.runner import ProxyRunner


def _ip(base: int, n: int) -> str:
    return f"10.{base + n // 65536}.{n // 256 % 256}.{n % 256}"


def service(i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"svc{i}", "namespace": f"ns{i % 50}"},
            "spec": {"type": "ClusterIP", "clusterIP": _ip(96, i), "clusterIPs": [_ip(96, i)],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}


def endpoint_slice(i: int, endpoints: int, first: str = "", trigger: str = "") -> dict[str, Any]:
    addrs = [first or _ip(128, i * endpoints)] + [_ip(128, i * endpoints + j) for j in range(1, endpoints)]
    meta: dict[str, Any] = {"name": f"svc{i}-a", "namespace": f"ns{i % 50}",
                            "labels": {"kubernetes.io/service-name": f"svc{i}",
                                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}}
    if trigger:
        meta["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": trigger}
    return {"metadata": meta, "addressType": "IPv4",
            "endpoints": [{"addresses": [a], "conditions": {"ready": True, "serving": True, "terminating": False},
                           "nodeName": "node-a" if j == 0 else "node-b"} for j, a in enumerate(addrs)],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def serve(services: int, endpoints: int) -> None:
    """The child: the API server, then one line per command on stdin ("<service index> <new ip>")."""
    api = FakeAPIServer(history=100000).start()
    for i in range(services):
        api.put("services", service(i))
        api.put("endpointslices", endpoint_slice(i, endpoints))
    api.put("nodes", {"metadata": {"name": "node-a"}, "spec": {"podCIDRs": ["10.128.0.0/24"]},
                      "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}})
    print(api.url, flush=True)
    for line in sys.stdin:
        idx, ip = line.split()
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        api.put("endpointslices", endpoint_slice(int(idx), endpoints, ip, now))
    api.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=5)
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.services, args.endpoints)
        return
    child = subprocess.Popen([sys.executable, __file__, "--serve", "--services", str(args.services),
                              "--endpoints", str(args.endpoints)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        url = child.stdout.readline().strip()
        run(url, args, child.stdin)
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def run(url: str, args: argparse.Namespace, commands: Any) -> None:
    node = Node.from_description({"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]}]})
    cfg = ProxyConfig.from_dict({"clusterCIDR": "10.128.0.0/9", "hostnameOverride": "node-a",
                                 "iptables": {"minSyncPeriod": "0s", "syncPeriod": "1h"}})
    metrics = ProxyMetrics()
    stop = threading.Event()
    source = ApiSource(api_client(master=url), "node-a", stop)
    applied: dict[str, float] = {}
    done = threading.Condition()
    syncs = []

    def after(result: Any) -> None:
        t = time.perf_counter()
        syncs.append(result)
        with done:
            for key in result.changed_services:
                applied[key] = t
            done.notify_all()

    runner = ProxyRunner(IptablesProxier(cfg, EmulatedBackend(node), ["192.168.0.2"], metrics=metrics), source,
                         after_sync=after, metrics=metrics)
    t0 = time.perf_counter()
    thread = threading.Thread(target=runner.loop, args=(stop,), daemon=True)
    thread.start()
    with done:
        done.wait_for(lambda: syncs, timeout=600)
    first = time.perf_counter() - t0
    full = syncs[0]
    assert not full.error, full.error
    latencies = []
    for n in range(args.changes):
        i = (n * 7919) % args.services
        key = f"ns{i % 50}/svc{i}"
        time.sleep(0.2)
        start = time.perf_counter()
        commands.write(f"{i} 10.250.{n // 256}.{n % 256}\n")
        commands.flush()
        with done:
            assert done.wait_for(lambda k=key, s=start: applied.get(k, 0) > s, timeout=10), f"change {n} not applied"
            latencies.append(applied[key] - start)
    stop.set()
    thread.join(timeout=10)
    source.close()
    saved = node.iptables_save()
    assert f"10.250.{(args.changes - 1) // 256}.{(args.changes - 1) % 256}:8080" in saved
    samples = {s.name: s.value for s in metrics.network_programming.collect()[0].samples
               if not s.name.endswith("_bucket")}
    n_obs, total = samples["kubeproxy_network_programming_duration_seconds_count"], \
        samples["kubeproxy_network_programming_duration_seconds_sum"]
    lat = sorted(latencies)
    print(f"{args.services} Services x {args.endpoints} endpoints; list + first full sync {first:.2f}s "
          f"({full.nat_rules + full.filter_rules:,} rules)")
    print(f"EndpointSlice change -> rules applied, {len(lat)} changes: median {statistics.median(lat) * 1000:.1f} ms, "
          f"p90 {lat[int(len(lat) * 0.9) - 1] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms (target <= 50 ms)")
    print(f"kubeproxy_network_programming_duration_seconds: count {n_obs:.0f}, mean "
          f"{total / max(n_obs, 1) * 1000:.1f} ms")
    partial = [s.duration for s in syncs[1:]]
    if partial:
        print(f"partial syncs: {len(partial)}, median {statistics.median(partial) * 1000:.1f} ms of sync work")


if __name__ == "__main__":
    main()
