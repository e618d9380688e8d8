"""Manifests and KubeProxyConfiguration: what loads, upstream's defaults, and errors that name the field."""

from __future__ import annotations

import pytest

from kproxy.k8s.manifests import ManifestError, load
from kproxy.proxy.config import ConfigError, ProxyConfig, parse_duration
from kproxy.proxy.healthz import HealthState


def test_kubectl_list_and_multi_document_yaml_load(tmp_path):
    (tmp_path / "a.yaml").write_text("""apiVersion: v1
kind: List
items:
- {kind: Service, metadata: {name: a, namespace: x}, spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}}
- {kind: Service, metadata: {name: bad, namespace: x}, spec: {clusterIP: 10.96.0.999, ports: [{port: 80}]}}
---
kind: EndpointSlice
metadata: {name: a-1, namespace: x, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.5], conditions: {ready: false, serving: true, terminating: true}}]
ports: [{port: 8080}]
---
kind: Node
metadata: {name: n1, labels: {topology.kubernetes.io/zone: z1}}
spec: {podCIDR: 10.244.0.0/24}
""")
    objs = load(tmp_path)
    assert list(objs.services) == ["x/a"]
    assert objs.warnings == [f"{tmp_path / 'a.yaml'} (document 1): items[1]: Service x/bad: spec.clusterIPs: "
                             "invalid IP address '10.96.0.999'"]
    ep = objs.slices["x/a-1"].endpoints[0]
    assert (ep.ready, ep.serving, ep.terminating) == (False, True, True)
    assert objs.nodes["n1"].pod_cidrs == ["10.244.0.0/24"]


def test_yaml_syntax_errors_name_line_and_column(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("kind: Service\nmetadata: {name: [\n")
    with pytest.raises(ManifestError, match=r"bad.yaml:3:1: "):
        load(f)


def test_defaults_are_upstreams():
    c = ProxyConfig.from_dict({})
    assert (c.mode, c.masquerade_mark, c.sync_period, c.min_sync_period, c.localhost_node_ports) == \
        ("iptables", "0x4000", 30.0, 1.0, True)
    assert c.metrics_bind_address == "127.0.0.1:10249" and c.healthz_bind_address == "127.0.0.1:10256"
    c = ProxyConfig.from_dict({"iptables": {"masqueradeBit": 5, "syncPeriod": "1m30s", "minSyncPeriod": "500ms"}})
    assert (c.masquerade_mark, c.sync_period, c.min_sync_period) == ("0x20", 90.0, 0.5)


@pytest.mark.parametrize("data, message", [
    ({"mode": "userspace"}, "mode: unknown proxy mode"),
    ({"clusterCIDR": "10.0.0.0/33"}, "clusterCIDR: invalid CIDR"),
    ({"iptables": {"masqueradeBit": 40}}, "iptables.masqueradeBit: must be between 0 and 31"),
    ({"iptables": {"syncPeriod": "soon"}}, "iptables.syncPeriod: invalid duration"),
    ({"kind": "Pod"}, "kind: expected KubeProxyConfiguration"),
    ({"nodePortAddresses": ["nope"]}, "nodePortAddresses: invalid CIDR"),
])
def test_bad_config_names_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        ProxyConfig.from_dict(data, "kp.yaml")


def test_durations():
    assert parse_duration("1h2m3s") == 3723.0 and parse_duration("250ms") == 0.25


def test_health_follows_upstream_semantics():
    h = HealthState(timeout=60)
    assert h.healthy(0)                       # starting up
    h.queued(100)
    assert h.healthy(159) and not h.healthy(161)
    h.updated(162)
    assert h.healthy(1000)
