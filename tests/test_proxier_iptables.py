"""The iptables proxier: upstream's layout for our own objects, partial syncs, and packets through the result."""

from __future__ import annotations

import math
import random

import pytest

from kproxy.backends.emulated import EmulatedBackend
from kproxy.k8s.manifests import Objects
from kproxy.node import Node
from kproxy.packet import SYN, Packet
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.conntrack import EmulatedConntrackCleaner
from kproxy.proxy.iptables import IptablesProxier
from kproxy.proxy.metrics import ProxyMetrics
from kproxy.proxy.serviceports import endpoint_chain, port_proto_hash
from saves import rules_of

NODE = {"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]},
                                         {"name": "cni0", "addresses": ["10.0.1.1/24"]}],
        "routes": ["default via 192.168.0.1 dev eth0", "10.0.2.0/24 via 192.168.0.3 dev eth0"]}


def service(name: str, ip: str, port: int = 80, proto: str = "TCP", **spec: object) -> dict:
    ports = [{"name": "p", "port": port, "protocol": proto, "targetPort": port}]
    if "nodePort" in spec:
        ports[0]["nodePort"] = spec.pop("nodePort")
    status = {}
    if "lb" in spec:
        status = {"loadBalancer": {"ingress": [{"ip": spec.pop("lb")}]}}
    return {"kind": "Service", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"clusterIP": ip, "ports": ports, **spec}, "status": status}


def endpoints(name: str, *eps: tuple[str, str], port: int = 80, proto: str = "TCP",
              conditions: dict | None = None) -> dict:
    return {"kind": "EndpointSlice", "metadata": {"name": f"{name}-x", "namespace": "ns",
                                                  "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": conditions or {"ready": True}}
                          for ip, node in eps],
            "ports": [{"name": "p", "port": port, "protocol": proto}]}


def objects(*docs: dict) -> Objects:
    objs = Objects()
    for d in docs:
        objs.add(d, "test")
    assert not objs.warnings, objs.warnings
    return objs


def setup(**cfg: object) -> tuple[Node, IptablesProxier]:
    node = Node.from_description(NODE)
    node.clock = 1000.0
    node.subsystems["rng"] = random.Random(3)
    config = ProxyConfig.from_dict({"clusterCIDR": "10.0.0.0/16", "hostnameOverride": "node-a", **cfg})
    proxier = IptablesProxier(config, EmulatedBackend(node), ["192.168.0.2", "10.0.1.1"], metrics=ProxyMetrics(),
                              conntrack=EmulatedConntrackCleaner(node))
    return node, proxier


def saved(node: Node, tables: list[str] | None = None) -> str:
    return rules_of(node.iptables_save(tables=tables))


def nat_rules(node: Node, chain: str) -> list[str]:
    return [line for line in node.iptables_save(tables=["nat"]).splitlines() if line.startswith(f"-A {chain} ")]


def filter_rules(node: Node, chain: str) -> list[str]:
    return [line for line in node.iptables_save(tables=["filter"]).splitlines() if line.startswith(f"-A {chain} ")]


def test_chain_names_are_upstreams_hashes():
    assert port_proto_hash("ns1/svc1:p80", "tcp") == "XPGD46QRK7WJZT7O"
    assert endpoint_chain("default/kubernetes:https", "tcp", "192.168.1.5:6443") == "KUBE-SEP-54IUPJM2TTG4TKF2"


def test_clusterip_service_layout():
    node, proxier = setup()
    proxier.sync(objects(service("web", "172.30.0.41"), endpoints("web", ("10.0.1.5", "node-a"), ("10.0.2.5", "node-b"))))
    svc = "KUBE-SVC-" + port_proto_hash("ns/web:p", "tcp")
    sep1 = endpoint_chain("ns/web:p", "tcp", "10.0.1.5:80")
    sep2 = endpoint_chain("ns/web:p", "tcp", "10.0.2.5:80")
    assert nat_rules(node, "KUBE-SERVICES") == [
        f'-A KUBE-SERVICES -d 172.30.0.41/32 -p tcp -m comment --comment "ns/web:p cluster IP" -m tcp --dport 80 -j {svc}',
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this '
        'chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS']
    assert nat_rules(node, svc) == [
        f'-A {svc} ! -s 10.0.0.0/16 -d 172.30.0.41/32 -p tcp -m comment --comment "ns/web:p cluster IP" -m tcp '
        f'--dport 80 -j KUBE-MARK-MASQ',
        f'-A {svc} -m comment --comment "ns/web:p -> 10.0.1.5:80" -m statistic --mode random --probability '
        f'0.50000000000 -j {sep1}',
        f'-A {svc} -m comment --comment "ns/web:p -> 10.0.2.5:80" -j {sep2}']
    assert nat_rules(node, sep1) == [
        f'-A {sep1} -s 10.0.1.5/32 -m comment --comment "ns/web:p" -j KUBE-MARK-MASQ',
        f'-A {sep1} -p tcp -m comment --comment "ns/web:p" -m tcp -j DNAT --to-destination 10.0.1.5:80']
    assert nat_rules(node, "KUBE-MARK-MASQ") == ["-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"]
    assert nat_rules(node, "KUBE-POSTROUTING") == [
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully']
    assert nat_rules(node, "PREROUTING") == [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES']


def test_service_without_endpoints_is_rejected_in_filter():
    node, proxier = setup()
    proxier.sync(objects(service("empty", "172.30.0.45", nodePort=3001, type="NodePort")))
    assert filter_rules(node, "KUBE-SERVICES") == [
        '-A KUBE-SERVICES -d 172.30.0.45/32 -p tcp -m comment --comment "ns/empty:p has no endpoints" -m tcp '
        '--dport 80 -j REJECT --reject-with icmp-port-unreachable']
    assert filter_rules(node, "KUBE-EXTERNAL-SERVICES") == [
        '-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "ns/empty:p has no endpoints" -m addrtype '
        '--dst-type LOCAL -m tcp --dport 3001 -j REJECT --reject-with icmp-port-unreachable']
    assert not [c for c in node.iptables[4].tables["nat"].chains if c.startswith("KUBE-SVC")]


def test_external_traffic_policy_local_layout_and_drop_without_local_endpoints():
    node, proxier = setup()
    svc = service("loc", "172.30.0.42", nodePort=3002, type="LoadBalancer", externalTrafficPolicy="Local",
                  healthCheckNodePort=30000, lb="1.2.3.4", externalIPs=["192.168.99.22"])
    proxier.sync(objects(svc, endpoints("loc", ("10.0.1.7", "node-a"))))
    h = port_proto_hash("ns/loc:p", "tcp")
    assert nat_rules(node, f"KUBE-EXT-{h}") == [
        f'-A KUBE-EXT-{h} -s 10.0.0.0/16 -m comment --comment "pod traffic for ns/loc:p external destinations" '
        f'-j KUBE-SVC-{h}',
        f'-A KUBE-EXT-{h} -m comment --comment "masquerade LOCAL traffic for ns/loc:p external destinations" '
        f'-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
        f'-A KUBE-EXT-{h} -m comment --comment "route LOCAL traffic for ns/loc:p external destinations" '
        f'-m addrtype --src-type LOCAL -j KUBE-SVC-{h}',
        f'-A KUBE-EXT-{h} -j KUBE-SVL-{h}']
    assert filter_rules(node, "KUBE-NODEPORTS") == [
        '-A KUBE-NODEPORTS -p tcp -m comment --comment "ns/loc:p health check node port" -m tcp --dport 30000 -j ACCEPT']
    kinds = [r.split('comment "ns/loc:p ')[1].split('"')[0] for r in nat_rules(node, "KUBE-SERVICES") if "ns/loc" in r]
    assert kinds == ["cluster IP", "external IP", "loadbalancer IP"]
    # The only endpoint moves to another node: external traffic is dropped, cluster traffic still works.
    proxier.sync(objects(svc, endpoints("loc", ("10.0.2.7", "node-b"))))
    dropped = filter_rules(node, "KUBE-EXTERNAL-SERVICES")
    assert len(dropped) == 3 and all('"ns/loc:p has no local endpoints"' in r and r.endswith("-j DROP") for r in dropped)
    assert f"KUBE-SVL-{h}" not in node.iptables[4].tables["nat"].chains


def test_loadbalancer_source_ranges_use_a_firewall_chain():
    node, proxier = setup()
    svc = service("fw", "172.30.0.43", nodePort=3003, type="LoadBalancer", lb="5.6.7.8",
                  loadBalancerSourceRanges=["203.0.113.0/25"])
    proxier.sync(objects(svc, endpoints("fw", ("10.0.1.8", "node-a"))))
    h = port_proto_hash("ns/fw:p", "tcp")
    assert nat_rules(node, f"KUBE-FW-{h}") == [
        f'-A KUBE-FW-{h} -s 203.0.113.0/25 -m comment --comment "ns/fw:p loadbalancer IP" -j KUBE-EXT-{h}',
        f'-A KUBE-FW-{h} -m comment --comment "other traffic to ns/fw:p will be dropped by KUBE-PROXY-FIREWALL"']
    assert filter_rules(node, "KUBE-PROXY-FIREWALL") == [
        f'-A KUBE-PROXY-FIREWALL -d 5.6.7.8/32 -p tcp -m comment --comment "ns/fw:p traffic not accepted by '
        f'KUBE-FW-{h}" -m tcp --dport 80 -j DROP']


def test_session_affinity_uses_recent_lists():
    node, proxier = setup()
    svc = service("aff", "172.30.0.44", sessionAffinity="ClientIP",
                  sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10800}})
    proxier.sync(objects(svc, endpoints("aff", ("10.0.1.9", "node-a"))))
    sep = endpoint_chain("ns/aff:p", "tcp", "10.0.1.9:80")
    svc_chain = "KUBE-SVC-" + port_proto_hash("ns/aff:p", "tcp")
    assert nat_rules(node, svc_chain)[1] == (
        f'-A {svc_chain} -m comment --comment "ns/aff:p -> 10.0.1.9:80" -m recent --rcheck --seconds 10800 --reap '
        f'--name {sep} --mask 255.255.255.255 --rsource -j {sep}')
    assert nat_rules(node, sep)[1] == (
        f'-A {sep} -p tcp -m comment --comment "ns/aff:p" -m recent --set --name {sep} --mask 255.255.255.255 '
        f'--rsource -m tcp -j DNAT --to-destination 10.0.1.9:80')


def test_terminating_endpoints_are_used_only_when_none_are_ready():
    node, proxier = setup()
    term = {"ready": False, "serving": True, "terminating": True}
    proxier.sync(objects(service("t", "172.30.0.46"), endpoints("t", ("10.0.1.10", "node-a"), conditions=term)))
    svc_chain = "KUBE-SVC-" + port_proto_hash("ns/t:p", "tcp")
    assert any("10.0.1.10:80" in r for r in nat_rules(node, svc_chain))
    mixed = endpoints("t", ("10.0.1.10", "node-a"), conditions=term)
    mixed["endpoints"].append({"addresses": ["10.0.1.11"], "nodeName": "node-a", "conditions": {"ready": True}})
    proxier.sync(objects(service("t", "172.30.0.46"), mixed))
    assert [r for r in nat_rules(node, svc_chain) if "->" in r] == [
        f'-A {svc_chain} -m comment --comment "ns/t:p -> 10.0.1.11:80" -j '
        f'{endpoint_chain("ns/t:p", "tcp", "10.0.1.11:80")}']


def test_internal_traffic_policy_local_without_local_endpoints_drops_cluster_ip():
    node, proxier = setup()
    proxier.sync(objects(service("itp", "172.30.0.47", internalTrafficPolicy="Local"),
                         endpoints("itp", ("10.0.2.12", "node-b"))))
    assert filter_rules(node, "KUBE-SERVICES") == [
        '-A KUBE-SERVICES -d 172.30.0.47/32 -p tcp -m comment --comment "ns/itp:p has no local endpoints" -m tcp '
        '--dport 80 -j DROP']


# ---- syncs --------------------------------------------------------------------------------------
def many(n: int, eps: int = 2) -> list[dict]:
    docs = []
    for i in range(n):
        name = f"s{i}"
        docs.append(service(name, f"172.30.{i // 250}.{i % 250 + 1}"))
        docs.append(endpoints(name, *[(f"10.0.{1 + j}.{i % 250 + 1}", "node-a" if j == 0 else "node-b")
                                      for j in range(eps)]))
    return docs


@pytest.mark.parametrize("size", [10, 300])
def test_partial_sync_input_does_not_grow_with_other_services(size):
    node, proxier = setup()
    docs = many(size)
    first = proxier.sync(objects(*docs))
    assert first.full and not first.error
    docs[1] = endpoints("s0", ("10.0.1.1", "node-a"), ("10.0.2.1", "node-b"), ("10.0.3.1", "node-b"))
    second = proxier.sync(objects(*docs))
    assert not second.full and not second.error
    assert second.lines == 16   # *nat, 4 chain lines (SVC, 3 SEP), 10 rules, COMMIT: nothing of the others
    assert "s1:" not in second.text
    # Same end state as a full sync of the same objects.
    _, fresh = setup()
    fresh.sync(objects(*docs))
    assert saved(node, ["nat"]) == saved(fresh.backend.node, ["nat"])


def test_partial_syncs_reuse_the_gathered_rules_and_end_like_a_full_sync():
    """Endpoint changes touch only the changed Services' entries of the gathered rules; a change of a
    Service's top-level rules (losing its last endpoint: a REJECT in KUBE-SERVICES of filter) gathers
    them again. After each step the node holds what a full sync of the same objects writes."""
    node, proxier = setup()
    docs = many(6)
    proxier.sync(objects(*docs))
    steps = [
        (1, endpoints("s0", ("10.0.1.1", "node-a"), ("10.0.9.9", "node-b")), True),
        (3, endpoints("s1", ("10.0.1.7", "node-a")), True),
        (1, endpoints("s0"), False),                                   # no endpoints left: top-level rules change
        (1, endpoints("s0", ("10.0.1.2", "node-a")), False),
    ]
    for index, doc, reused in steps:
        gathered = proxier._agg
        docs[index] = doc
        result = proxier.sync(objects(*docs))
        assert not result.full and not result.error
        assert (proxier._agg.top is gathered.top) == reused
        _, fresh = setup()
        expected = fresh.sync(objects(*docs))
        for table in ("nat", "filter"):
            assert saved(node, [table]) == saved(fresh.backend.node, [table]), (index, table)
        assert (result.nat_rules, result.filter_rules) == (expected.nat_rules, expected.filter_rules)


def test_removed_service_chains_are_deleted():
    node, proxier = setup()
    docs = many(3)
    proxier.sync(objects(*docs))
    gone = "KUBE-SVC-" + port_proto_hash("ns/s2:p", "tcp")
    assert gone in node.iptables[4].tables["nat"].chains
    result = proxier.sync(objects(*docs[:4]))
    assert f"-X {gone}" in result.text
    assert gone not in node.iptables[4].tables["nat"].chains


def test_a_failed_restore_is_counted_and_followed_by_a_full_sync():
    node, proxier = setup()
    docs = many(3)
    proxier.sync(objects(*docs))

    class Failing:
        def __init__(self, inner):
            self.inner, self.fail = inner, True

        def restore(self, text, noflush=True, counters=False):
            if self.fail:
                self.fail = False
                raise RuntimeError("iptables-restore: line 3 failed")
            return self.inner.restore(text, noflush, counters)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    before = saved(node)
    proxier.backend = Failing(proxier.backend)
    docs[1] = endpoints("s0", ("10.0.1.1", "node-a"))
    failed = proxier.sync(objects(*docs))
    assert failed.error and not failed.full
    assert saved(node) == before
    metrics = proxier.metrics.text().decode()
    assert 'kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total{ip_family="IPv4"} 1.0' in metrics
    retry = proxier.sync(objects(*docs))
    assert retry.full and not retry.error


def test_metrics_report_rule_counts_and_sync_times():
    _, proxier = setup()
    result = proxier.sync(objects(*many(5)))
    text = proxier.metrics.text().decode()
    assert f'kubeproxy_sync_proxy_rules_iptables_total{{ip_family="IPv4",table="nat"}} {float(result.nat_rules)}' in text
    assert "kubeproxy_sync_proxy_rules_duration_seconds_count 1.0" in text
    assert "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1.0" in text


# ---- packets through the rules -------------------------------------------------------------------
def tcp(src: str, dst: str, sport: int, dport: int) -> Packet:
    return Packet.make(src, dst, "tcp", sport, dport, tcp_flags=SYN)


def test_random_statistic_gives_each_endpoint_its_share():
    node, proxier = setup()
    proxier.sync(objects(service("lb", "172.30.0.50"),
                         endpoints("lb", ("10.0.1.20", "node-a"), ("10.0.2.21", "node-b"), ("10.0.2.22", "node-b"))))
    n = 3000
    counts: dict[str, int] = {}
    for i in range(n):
        res = node.receive(tcp(f"10.0.1.{2 + i // 60000}", "172.30.0.50", 1024 + i % 60000, 80), "cni0")
        counts[res.packet.dst_str] = counts.get(res.packet.dst_str, 0) + 1
    # Each endpoint is a binomial(n, 1/3): allow 5 standard deviations (a false alarm about once in 3 million runs).
    sd = math.sqrt(n * (1 / 3) * (2 / 3))
    assert set(counts) == {"10.0.1.20", "10.0.2.21", "10.0.2.22"}
    assert all(abs(c - n / 3) < 5 * sd for c in counts.values()), counts


def test_flows_from_pods_node_and_outside():
    node, proxier = setup()
    docs = [service("np", "172.30.0.60", nodePort=30080, type="NodePort"), endpoints("np", ("10.0.2.30", "node-b")),
            service("lo", "172.30.0.61", nodePort=30081, type="NodePort", externalTrafficPolicy="Local"),
            endpoints("lo", ("10.0.1.31", "node-a")),
            service("lo2", "172.30.0.62", nodePort=30082, type="NodePort", externalTrafficPolicy="Local"),
            endpoints("lo2", ("10.0.2.32", "node-b"))]
    proxier.sync(objects(*docs))
    # Pod on this node to a ClusterIP: DNAT, source kept.
    r = node.receive(tcp("10.0.1.5", "172.30.0.60", 40001, 80), "cni0")
    assert (r.fate, r.packet.dst_str, r.packet.src_str) == ("forwarded", "10.0.2.30", "10.0.1.5")
    # Pod on another node (arrives over eth0) to a ClusterIP: still not masqueraded (inside the cluster CIDR).
    r = node.receive(tcp("10.0.2.9", "172.30.0.60", 40002, 80), "eth0")
    assert (r.packet.dst_str, r.packet.src_str) == ("10.0.2.30", "10.0.2.9")
    # The node itself to a ClusterIP: masqueraded (not from the cluster CIDR).
    r = node.send(tcp("0.0.0.0", "172.30.0.60", 40003, 80))
    assert (r.packet.dst_str, r.packet.src_str) == ("10.0.2.30", "192.168.0.2")
    # External client to a NodePort (Cluster policy): masqueraded to the node address.
    r = node.receive(tcp("203.0.113.9", "192.168.0.2", 40004, 30080), "eth0")
    assert (r.fate, r.packet.dst_str, r.packet.src_str) == ("forwarded", "10.0.2.30", "192.168.0.2")
    # External client to a Local-policy NodePort with a local endpoint: the client address survives.
    r = node.receive(tcp("203.0.113.9", "192.168.0.2", 40005, 30081), "eth0")
    assert (r.fate, r.packet.dst_str, r.packet.src_str) == ("forwarded", "10.0.1.31", "203.0.113.9")
    # ... and without a local endpoint it is dropped.
    r = node.receive(tcp("203.0.113.9", "192.168.0.2", 40006, 30082), "eth0")
    assert (r.fate, r.hook) == ("dropped", "INPUT")
