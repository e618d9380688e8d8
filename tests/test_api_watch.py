"""kproxy as a cluster's kube-proxy: the official client listing and watching a local API server
(kproxy.k8s.fakeapi) that speaks the real list/watch protocol, and the proxier following it."""

from __future__ import annotations

import copy
import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kproxy.backends.emulated import EmulatedBackend
from kproxy.k8s.fakeapi import FakeAPIServer
from kproxy.k8s.watch import ApiSetupError, ApiSource, api_client
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.healthz import HealthState
from kproxy.proxy.iptables import IptablesProxier
from kproxy.proxy.metrics import ProxyMetrics
from kproxy.proxy.runner import ProxyRunner

CLUSTER = json.loads((Path(__file__).parent / "data" / "api" / "cluster.json").read_text())
FAST = {"backoff": (0.05, 0.4)}


def wait_for(cond: Any, seconds: float = 5.0) -> None:
    end = time.time() + seconds
    while time.time() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("not reached in time")


def get(api: FakeAPIServer, path: str) -> tuple[int, dict[str, str], list[dict[str, Any]]]:
    """A raw request: status, headers and the JSON lines of the body (a watch's events)."""
    conn = http.client.HTTPConnection("127.0.0.1", int(api.url.rsplit(":", 1)[1]), timeout=5)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    return resp.status, dict(resp.getheaders()), [json.loads(line) for line in body.splitlines() if line]


def source(api: FakeAPIServer, node: str = "kind-worker", **kw: Any) -> ApiSource:
    return ApiSource(api_client(master=api.url), node, **{**FAST, **kw})


# -- the fake API server speaks the protocol ---------------------------------------------------

def test_list_then_watch_from_its_resource_version_sees_only_later_changes(api):
    code, _, [lst] = get(api, "/api/v1/services")
    assert code == 200 and lst["kind"] == "ServiceList" and lst["apiVersion"] == "v1"
    assert {i["metadata"]["name"] for i in lst["items"]} == {"kubernetes", "kube-dns", "ingress", "db"}
    assert all("kind" not in i for i in lst["items"])            # list items carry no kind, as real lists
    rv = lst["metadata"]["resourceVersion"]
    svc = copy.deepcopy(CLUSTER["services"][1])
    svc["spec"]["ports"] = svc["spec"]["ports"][:1]
    api.put("services", svc)
    api.delete("services", "web", "db")
    code, headers, events = get(api, f"/api/v1/services?watch=true&resourceVersion={rv}&timeoutSeconds=1")
    assert code == 200 and headers["Transfer-Encoding"] == "chunked"
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("MODIFIED", "kube-dns"),
                                                                            ("DELETED", "db")]
    assert events[0]["object"]["kind"] == "Service"
    assert int(events[1]["object"]["metadata"]["resourceVersion"]) > int(events[0]["object"]["metadata"][
        "resourceVersion"]) > int(rv)


def test_watch_selectors_bookmarks_and_410_after_compaction(api):
    _, _, [lst] = get(api, "/api/v1/services?labelSelector=!service.kubernetes.io/headless")
    assert "db" not in {i["metadata"]["name"] for i in lst["items"]}
    _, _, [nodes] = get(api, "/api/v1/nodes?fieldSelector=metadata.name%3Dkind-worker")
    assert [n["metadata"]["name"] for n in nodes["items"]] == ["kind-worker"]
    rv = lst["metadata"]["resourceVersion"]
    _, _, events = get(api, f"/api/v1/services?watch=1&resourceVersion={rv}&allowWatchBookmarks=true"
                            "&timeoutSeconds=1")
    assert events and {e["type"] for e in events} == {"BOOKMARK"}
    assert events[0]["object"] == {"kind": "Service", "apiVersion": "v1",
                                   "metadata": {"resourceVersion": rv, "creationTimestamp": None}}
    api.put("nodes", CLUSTER["nodes"][1])
    code, _, events = get(api, f"/api/v1/services?watch=1&resourceVersion={rv}&timeoutSeconds=1")
    assert code == 200 and events == []             # a later Node change is nothing to a Service watch
    api.compact()
    _, _, [err] = get(api, f"/api/v1/services?watch=1&resourceVersion={rv}")
    assert err["type"] == "ERROR" and err["object"]["code"] == 410 and err["object"]["reason"] == "Expired"
    assert err["object"]["message"].startswith(f"too old resource version: {rv} (")
    code, _, [status] = get(api, "/api/v1/pods")
    assert code == 404 and status["kind"] == "Status"


# -- the client: list, watch, relist, backoff ----------------------------------------------------

def test_the_source_mirrors_the_cluster_and_marks_only_changed_services(api):
    src = source(api)
    try:
        objs = src.initial(timeout=5)
        assert set(objs.services) == {"default/kubernetes", "kube-system/kube-dns", "web/ingress"}   # not headless
        assert {es.name for es in objs.slices_for("kube-system/kube-dns")} == {"kube-dns-8xk2p"}
        assert list(objs.nodes) == ["kind-worker"] and objs.nodes["kind-worker"].pod_cidrs == ["10.244.1.0/24"]
        assert objs.dirty == set()
        es = copy.deepcopy(CLUSTER["endpointslices"][2])
        es["endpoints"][1]["conditions"]["ready"] = False
        api.put("endpointslices", es)
        wait_for(lambda: src.changes(0.1))
        assert objs.dirty == {"web/ingress"}
        assert not objs.slices["web/ingress-q7c4v"].endpoints[1].ready
        objs.dirty.clear()
        api.put("services", CLUSTER["services"][0])            # the same object again: nothing changes
        time.sleep(0.3)
        src.changes(0.1)
        assert objs.dirty == set()
        second = dict(CLUSTER["endpointslices"][1], metadata={**CLUSTER["endpointslices"][1]["metadata"],
                                                             "name": "kube-dns-zz9q1"})
        api.put("endpointslices", second)
        api.delete("services", "default", "kubernetes")
        wait_for(lambda: src.changes(0.1) and "default/kubernetes" not in objs.services)
        src.changes(0.2)
        assert objs.dirty == {"kube-system/kube-dns", "default/kubernetes"}
        assert len(objs.slices_for("kube-system/kube-dns")) == 2           # slices merged per Service
    finally:
        src.close()


def test_a_dropped_watch_resumes_and_an_expired_resource_version_relists(api):
    src = source(api, backoff=(0.5, 1))
    try:
        objs = src.initial(timeout=5)
        svc_refl = src.reflectors[0]
        wait_for(lambda: api.watchers() == 4)             # Services, EndpointSlices, Node, ServiceCIDRs
        assert api.drop_watches() == 4                   # resumed from the last resourceVersion, no relist
        svc = copy.deepcopy(CLUSTER["services"][1])
        svc["spec"]["ports"] = svc["spec"]["ports"][:2]
        api.put("services", svc)
        wait_for(lambda: src.changes(0.05) or len(objs.services["kube-system/kube-dns"].ports) == 2)
        assert svc_refl.lists == 1 and svc_refl.errors == 1
        wait_for(lambda: api.watchers() == 4)             # Services, EndpointSlices, Node, ServiceCIDRs
        assert api.drop_watches() == 4
        api.delete("services", "web", "ingress")         # while the watches are down ...
        api.compact()                                    # ... and the history is gone: 410, relist
        wait_for(lambda: src.changes(0.05) or "web/ingress" not in objs.services)
        assert svc_refl.lists == 2
        assert objs.dirty is not None and "web/ingress" in objs.dirty
        lists = [q.get("resourceVersion", "") for path, q in api.requests
                 if path == "/api/v1/services" and "watch" not in q]
        assert lists == ["0", ""]               # first from the watch cache, after the 410 a consistent read
    finally:
        src.close()


def test_errors_back_off_exponentially(api):
    api.fail_next(7)
    started = time.monotonic()
    src = ApiSource(api_client(master=api.url), "kind-worker", backoff=(0.1, 10))
    try:
        src.initial(timeout=10)
        elapsed = time.monotonic() - started
        # seven failures, spread over four reflectors (the ServiceCIDR one not waited for): in the second
        # round at least one of the three waited for failed again, and waited at least 0.1 + 0.2
        assert max(r.errors for r in src.reflectors) >= 2
        assert elapsed >= 0.3
        assert set(src.objects.services) >= {"default/kubernetes"}
    finally:
        src.close()


def test_client_configuration_as_kube_proxy_takes_it(api, tmp_path, monkeypatch):
    import yaml

    kc = tmp_path / "kubeconfig"
    kc.write_text(yaml.safe_dump(api.kubeconfig()))
    src = ApiSource(api_client(kubeconfig=str(kc)), "kind-worker")
    try:
        assert "default/kubernetes" in src.initial(timeout=5).services
    finally:
        src.close()
    assert api_client(kubeconfig=str(kc), master="http://127.0.0.1:1").configuration.host == "http://127.0.0.1:1"
    with pytest.raises(ApiSetupError, match="missing"):
        api_client(kubeconfig=str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ApiSetupError, match="in-cluster configuration: Service host/port is not set"):
        api_client()


# -- the proxier follows the API -----------------------------------------------------------------

def test_the_proxier_follows_adds_updates_and_deletes_through_the_watch(api):
    node = Node.default()
    cfg = ProxyConfig.from_dict({"clusterCIDR": "10.244.0.0/16", "hostnameOverride": "kind-worker",
                                 "iptables": {"minSyncPeriod": "0s", "syncPeriod": "1h"}})
    metrics = ProxyMetrics()
    health = HealthState(60)
    src = source(api)
    results = []
    runner = ProxyRunner(IptablesProxier(cfg, EmulatedBackend(node), metrics=metrics), src, health,
                         after_sync=results.append, metrics=metrics)
    stop = threading.Event()
    thread = threading.Thread(target=runner.loop, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: results)
        saved = node.iptables_save()
        assert results[0].full and "10.244.0.4:53" in saved and "10.96.120.7/32" in saved
        es = copy.deepcopy(CLUSTER["endpointslices"][1])
        es["endpoints"][0]["addresses"] = ["10.244.0.7"]
        es["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"] = \
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() % 1 * 1e6):06d}Z"
        api.put("endpointslices", es)
        wait_for(lambda: len(results) >= 2)
        assert not results[1].full and results[1].changed_services == {"kube-system/kube-dns"}
        saved = node.iptables_save()
        assert "10.244.0.7:53" in saved and "10.244.0.2:53" not in saved
        text = metrics.text().decode()
        assert "kubeproxy_network_programming_duration_seconds_count 1.0" in text
        api.put("services", {"metadata": {"name": "new", "namespace": "web"},
                             "spec": {"clusterIP": "10.96.5.5", "ports": [{"port": 81, "protocol": "TCP"}]}})
        wait_for(lambda: "10.96.5.5/32" in node.iptables_save())
        api.delete("services", "web", "ingress")
        wait_for(lambda: "10.96.120.7/32" not in node.iptables_save())
        assert all(not r.error for r in results)
    finally:
        stop.set()
        thread.join(timeout=5)
        src.close()
    assert not thread.is_alive()


def test_healthz_says_not_eligible_while_the_node_is_being_deleted(api):
    node = Node.default()
    cfg = ProxyConfig.from_dict({"hostnameOverride": "kind-worker", "iptables": {"minSyncPeriod": "0s"}})
    health = HealthState(60)
    src = source(api)
    runner = ProxyRunner(IptablesProxier(cfg, EmulatedBackend(node)), src, health)
    stop = threading.Event()
    thread = threading.Thread(target=runner.loop, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: runner.syncs >= 1)
        assert health.node_eligible
        dying = copy.deepcopy(CLUSTER["nodes"][0])
        dying["spec"]["taints"] = [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1733216400",
                                    "effect": "NoSchedule"}]
        api.put("nodes", dying)
        wait_for(lambda: not health.node_eligible)
        assert health.body(time.time())["nodeEligible"] is False
        assert "nodeEligible" not in health.body(time.time(), with_node=False)
        api.put("nodes", CLUSTER["nodes"][0])
        wait_for(lambda: health.node_eligible)
        api.delete("nodes", "", "kind-worker")
        wait_for(lambda: not health.node_eligible)
    finally:
        stop.set()
        thread.join(timeout=5)
        src.close()


def test_the_resync_period_replays_the_cache_without_marking_anything(api):
    src = source(api, resync=0.2)
    try:
        objs = src.initial(timeout=5)
        svc_refl = src.reflectors[0]
        replays = []
        original = src._apply

        def spy(kind: str, typ: str, obj: Any) -> bool:
            if typ == "RESYNC":
                replays.append((kind, obj["metadata"]["name"]))
            return original(kind, typ, obj)

        src._apply = spy  # type: ignore[method-assign]
        wait_for(lambda: src.changes(0.05) or ("Service", "kube-dns") in replays)
        wait_for(lambda: src.changes(0.05) or ("Node", "kind-worker") in replays)
        src.changes(0.1)
        assert objs.dirty == set() and svc_refl.lists == 1       # replayed from the cache, not relisted
    finally:
        src.close()
