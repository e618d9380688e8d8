"""The sync loop (watching manifests, minSyncPeriod) and the /healthz and /metrics endpoints."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

from kproxy.backends.emulated import EmulatedBackend
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.healthz import HealthState, serve
from kproxy.proxy.iptables import IptablesProxier
from kproxy.proxy.metrics import ProxyMetrics
from kproxy.proxy.runner import ProxyRunner

SVC = """apiVersion: v1
kind: List
items:
- {kind: Service, metadata: {name: web, namespace: d}, spec: {clusterIP: 10.96.0.5, ports: [{name: h, port: 80}]}}
- kind: EndpointSlice
  metadata: {name: web-1, namespace: d, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints: [{addresses: [%s], nodeName: n}]
  ports: [{name: h, port: 8080}]
"""


def wait_for(cond, seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    end = time.time() + seconds
    while time.time() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("not reached in time")


def test_the_loop_resyncs_on_change_and_coalesces_within_min_sync_period(tmp_path):
    manifest = Path(tmp_path / "m.yaml")
    manifest.write_text(SVC % "10.244.0.7")
    node = Node.default()
    cfg = ProxyConfig.from_dict({"clusterCIDR": "10.244.0.0/16", "hostnameOverride": "n",
                                 "iptables": {"minSyncPeriod": "500ms", "syncPeriod": "1h"}})
    results = []
    runner = ProxyRunner(IptablesProxier(cfg, EmulatedBackend(node)), str(manifest), after_sync=results.append)
    stop = threading.Event()
    thread = threading.Thread(target=runner.loop, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(results) == 1)
        assert results[0].full and "10.244.0.7:8080" in node.iptables_save()
        started = time.monotonic()
        for ip in ("10.244.0.8", "10.244.0.9"):          # two changes in quick succession
            time.sleep(0.05)
            manifest.write_text(SVC % ip)
        wait_for(lambda: len(results) >= 2)
        waited = time.monotonic() - started
        time.sleep(0.3)
        assert len(results) == 2                          # coalesced into one sync
        assert waited >= 0.4                              # not before minSyncPeriod after the first sync
        assert not results[1].full and results[1].changed_services == {"d/web"}
        saved = node.iptables_save()
        assert "10.244.0.9:8080" in saved and "10.244.0.7:8080" not in saved
    finally:
        stop.set()
        thread.join(timeout=5)


def test_healthz_and_metrics_endpoints():
    health = HealthState(timeout=60)
    metrics = ProxyMetrics()
    servers = serve(health, metrics, "127.0.0.1:0", "127.0.0.1:0", time.time)
    try:
        hz, mx = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
        with urllib.request.urlopen(hz + "/healthz") as r:
            assert r.status == 200 and "lastUpdated" in json.loads(r.read())
        health.queued(time.time() - 120)                  # a change waiting for longer than the timeout
        try:
            urllib.request.urlopen(hz + "/healthz")
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
        with urllib.request.urlopen(mx + "/metrics") as r:
            text = r.read().decode()
        assert "kubeproxy_sync_proxy_rules_duration_seconds_bucket" in text
        assert "kubeproxy_sync_proxy_rules_iptables_restore_failures_total" in text
    finally:
        for s in servers:
            s.shutdown()
