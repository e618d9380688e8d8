"""Manifests and KubeProxyConfiguration: what loads, upstream's defaults, and errors that name the field."""

from __future__ import annotations

import re

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


def test_an_endpoint_slice_with_an_address_of_the_other_family_is_refused_as_the_api_server_refuses_it(tmp_path):
    """The API server validates every address against the slice's addressType; such a slice never
    reaches a proxier (it used to reach IPVS and end as an ipvsadm formatting error)."""
    (tmp_path / "s.yaml").write_text("""kind: EndpointSlice
metadata: {name: a-1, namespace: x, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.5]}, {addresses: ["fd00:10::5"]}]
ports: [{port: 8080}]
---
kind: EndpointSlice
metadata: {name: a-2, namespace: x, labels: {kubernetes.io/service-name: a}}
addressType: IPv6
endpoints: [{addresses: ["10.244.0.6"]}]
ports: [{port: 8080}]
---
kind: EndpointSlice
metadata: {name: a-3, namespace: x, labels: {kubernetes.io/service-name: a}}
addressType: IPv6
endpoints: [{addresses: ["fd00:10::7"]}]
ports: [{port: 8080}]
""")
    objs = load(tmp_path)
    assert list(objs.slices) == ["x/a-3"]
    assert objs.warnings == [
        f"{tmp_path / 's.yaml'} (document 1): EndpointSlice x/a-1: endpoints[1].addresses[0]: invalid value "
        "'fd00:10::5': must be a valid IPv4 address",
        f"{tmp_path / 's.yaml'} (document 2): EndpointSlice x/a-2: endpoints[0].addresses[0]: invalid value "
        "'10.244.0.6': must be a valid IPv6 address"]


def test_yaml_syntax_errors_name_line_and_column(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("kind: Service\nmetadata: {name: [\n")
    with pytest.raises(ManifestError, match=r"bad.yaml:3:1: "):
        load(f)


def test_defaults_are_upstreams():
    c = ProxyConfig.from_dict({})
    assert (c.mode, c.masquerade_mark, c.sync_period, c.min_sync_period, c.localhost_node_ports) == \
        ("iptables", "0x4000", 30.0, 1.0, True)
    assert c.metrics_bind_address == "127.0.0.1:10249" and c.healthz_bind_address == "0.0.0.0:10256"
    c = ProxyConfig.from_dict({"iptables": {"masqueradeBit": 5, "syncPeriod": "1m30s", "minSyncPeriod": "500ms"}})
    assert (c.masquerade_mark, c.sync_period, c.min_sync_period) == ("0x20", 90.0, 0.5)


@pytest.mark.parametrize("data, message", [
    ({"mode": "userspace"}, r'KubeProxyConfiguration.ProxyMode: Invalid value: "userspace": must be iptables, ipvs, '
     r"nftables or blank \(blank means the best-available proxy \[currently iptables\]\)$"),
    ({"clusterCIDR": "10.0.0.0/33"}, r'KubeProxyConfiguration.ClusterCIDR: Invalid value: "10.0.0.0/33": must be a '
     r"valid CIDR block"),
    ({"iptables": {"masqueradeBit": 40}}, "KubeProxyConfiguration.KubeProxyIPTablesConfiguration.MasqueradeBit: "
     r"Invalid value: 40: must be within the range \[0, 31\]"),
    ({"mode": "nftables", "nftables": {"masqueradeBit": -1}},
     "KubeProxyNFTablesConfiguration.MasqueradeBit: Invalid value: -1"),
    ({"iptables": {"syncPeriod": "soon"}}, "iptables.syncPeriod: invalid duration"),
    ({"iptables": {"syncPeriod": "1s", "minSyncPeriod": "2s"}},
     "KubeProxyIPTablesConfiguration.SyncPeriod: Invalid value: 2s: must be greater than or equal to "
     "KubeProxyConfiguration.KubeProxyIPTablesConfiguration.MinSyncPeriod"),
    ({"kind": "Pod"}, "kind: expected KubeProxyConfiguration"),
    ({"nodePortAddresses": ["nope"]}, r'NodePortAddresses\[0\]: Invalid value: "nope": must be a valid CIDR'),
    ({"nodePortAddresses": ["primary", "10.0.0.0/8"]}, "can't use 'primary' with other values"),
    ({"modes": "iptables"}, 'strict decoding error: unknown field "modes"$'),
    ({"iptables": {"masqueradeBits": 1, "x": 2}},
     'strict decoding error: unknown field "iptables.masqueradeBits", unknown field "iptables.x"$'),
    ({"iptables": {"masqueradeBit": "14"}}, "json: cannot unmarshal string into Go struct field "
     "KubeProxyConfiguration.iptables.masqueradeBit of type int32"),
    ({"iptables": {"syncPeriod": 30}}, "cannot unmarshal number into Go struct field "
     "KubeProxyConfiguration.iptables.syncPeriod of type duration"),
    ({"nodePortAddresses": "10.0.0.0/8"}, "cannot unmarshal string into Go struct field "
     "KubeProxyConfiguration.nodePortAddresses of type array"),
    ({"metricsBindAddress": "localhost"}, 'MetricsBindAddress: Invalid value: "localhost": must be IP:port'),
    ({"detectLocalMode": "BridgeInterface"}, "DetectLocalConfiguration.BridgeInterface: Invalid value: \"\": must "
     "not be empty"),
    ({"oomScoreAdj": 2000}, r"OOMScoreAdj: Invalid value: 2000: must be within the range \[-1000, 1000\]"),
])
def test_bad_config_names_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        ProxyConfig.from_dict(data, "kp.yaml")


def test_the_modes_own_section_gives_its_sync_periods_and_masquerade_settings():
    c = ProxyConfig.from_dict({"mode": "nftables", "iptables": {"masqueradeBit": 3, "syncPeriod": "1h"},
                               "nftables": {"masqueradeBit": 5, "masqueradeAll": True, "syncPeriod": "10s",
                                            "minSyncPeriod": "2s"}})
    assert (c.masquerade_mark, c.masquerade_all, c.sync_period, c.min_sync_period) == ("0x20", True, 10.0, 2.0)
    c = ProxyConfig.from_dict({"mode": "ipvs", "iptables": {"masqueradeBit": 3}, "ipvs": {"syncPeriod": "20s"}})
    assert (c.masquerade_mark, c.sync_period) == ("0x8", 20.0)


def test_every_upstream_field_decodes():
    ProxyConfig.from_dict({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "featureGates": {"NFTablesProxyMode": True}, "clientConnection": {"kubeconfig": "/k", "qps": 5, "burst": 10},
        "logging": {"format": "text", "verbosity": 2}, "bindAddress": "0.0.0.0", "bindAddressHardFail": False,
        "enableProfiling": False, "showHiddenMetricsForVersion": "", "portRange": "", "configSyncPeriod": "15m0s",
        "ipvs": {"scheduler": "rr", "excludeCIDRs": ["10.0.0.0/8"], "strictARP": True, "tcpTimeout": "0s",
                 "tcpFinTimeout": "0s", "udpTimeout": "0s"},
        "winkernel": {"enableDSR": False}, "conntrack": {"maxPerCore": 32768, "min": 131072,
                                                         "tcpEstablishedTimeout": "24h0m0s",
                                                         "tcpCloseWaitTimeout": "1h0m0s", "udpTimeout": "0s"},
        "oomScoreAdj": -999, "nodePortAddresses": ["primary"], "clusterCIDR": "10.244.0.0/16,fd00::/48",
    }, "kp.yaml")


def test_a_config_file_that_is_not_text_or_cannot_be_read_is_a_clear_error(tmp_path):
    binary = tmp_path / "kp.yaml"
    binary.write_bytes(b"mode: iptables\n\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"kp.yaml:2: not UTF-8 text \(byte 0xff\)"):
        ProxyConfig.load(binary)
    with pytest.raises(ConfigError, match="No such file or directory"):
        ProxyConfig.load(tmp_path / "missing.yaml")


def test_durations():
    assert parse_duration("1h2m3s") == 3723.0 and parse_duration("250ms") == 0.25


def test_health_follows_upstream_semantics():
    h = HealthState(timeout=60)
    assert h.healthy(0)                       # starting up
    h.queued(100)
    assert h.healthy(159) and not h.healthy(161)
    h.updated(162)
    assert h.healthy(1000)


@pytest.mark.parametrize("meta, message", [
    ({"name": "A B"}, r'Service default/"A B": metadata.name: Invalid value: "A B": a DNS-1035 label must consist'),
    ({"name": 'we"b'}, r'metadata.name: Invalid value: "we\\"b"'),
    ({"name": "web", "namespace": "Prod"}, r'metadata.namespace: Invalid value: "Prod": a lowercase RFC 1123 label'),
    ({"name": "w" * 64}, "must be no more than 63 characters"),
])
def test_object_names_are_checked_as_the_api_server_checks_them(tmp_path, meta, message):
    path = tmp_path / "m.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"kind": "Service", "metadata": meta,
                                    "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}}))
    objs = load(str(path))
    assert not objs.services
    assert len(objs.warnings) == 1 and re.search(message, objs.warnings[0]), objs.warnings


def test_a_duplicate_object_is_reported_with_both_places_and_skipped(tmp_path):
    (tmp_path / "a.yaml").write_text("kind: Service\nmetadata: {name: web, namespace: d}\n"
                                     "spec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}\n")
    (tmp_path / "b.yaml").write_text("kind: Service\nmetadata: {name: web, namespace: d}\n"
                                     "spec: {clusterIP: 10.96.0.6, ports: [{port: 80}]}\n")
    objs = load(str(tmp_path))
    assert objs.services["d/web"].cluster_ips == ["10.96.0.5"]
    assert objs.warnings == [f"{tmp_path / 'b.yaml'}: Service d/web: duplicate of the one in {tmp_path / 'a.yaml'}; "
                             "skipped"]
