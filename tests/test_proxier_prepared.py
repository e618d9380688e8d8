"""Rules the proxier hands the emulated node ready-built must be exactly what their lines parse to.

Each scenario is synced twice: onto a node whose backend takes the prepared rules (and verifies
every one against its line), and onto a node that only gets the text. Both nodes must then hold
the same rules, field by field, and save the same text; partial syncs are compared the same way.
"""

from __future__ import annotations

import copy

import pytest
from tests.test_proxier_iptables import NODE, endpoints, objects, service

from kproxy.backends.emulated import EmulatedBackend
from kproxy.iptables.model import rule_fields
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.iptables import IptablesProxier
from saves import rules_of


class TextOnly(EmulatedBackend):
    takes_prepared_rules = False


class Recording(EmulatedBackend):
    """Counts the prepared rules it is handed, so the tests know the fast path was taken."""

    prepared_count = 0

    def restore(self, text, noflush=True, counters=False, prepared=None):
        self.prepared_count += sum(len(rules) for _, rules in (prepared or {}).values())
        super().restore(text, noflush, counters, prepared)


def pair(**cfg: object) -> list[tuple[Node, IptablesProxier]]:
    out = []
    for cls in (Recording, TextOnly):
        node = Node.from_description(NODE)
        config = ProxyConfig.from_dict({"clusterCIDR": "10.0.0.0/16", "hostnameOverride": "node-a", **cfg})
        backend = cls(node, verify_prepared=True)
        out.append((node, IptablesProxier(config, backend, ["192.168.0.2", "10.0.1.1"])))
    return out


def same_rules(a: Node, b: Node) -> int:
    """Assert both nodes hold identical tables; return how many rules were compared."""
    assert rules_of(a.iptables_save()) == rules_of(b.iptables_save())
    n = 0
    for name, ta in a.iptables[4].tables.items():
        tb = b.iptables[4].tables[name]
        assert list(ta.chains) == list(tb.chains)
        for chain, ca in ta.chains.items():
            cb = tb.chains[chain]
            assert [rule_fields(r) for r in ca.rules] == [rule_fields(r) for r in cb.rules], chain
            n += len(ca.rules)
    return n


EPS = [("10.0.1.5", "node-a"), ("10.0.2.5", "node-b"), ("10.0.2.6", "node-b")]
SCENARIOS = {
    "cluster ip": [service("web", "172.30.0.41"), endpoints("web", *EPS)],
    "one endpoint": [service("one", "172.30.0.42"), endpoints("one", EPS[1])],
    "udp and sctp": [service("dns", "172.30.0.10", 53, "UDP"), endpoints("dns", *EPS, port=53, proto="UDP"),
                     service("sc", "172.30.0.11", 9, "SCTP"), endpoints("sc", *EPS[:2], port=9, proto="SCTP")],
    "node port, local policy": [service("np", "172.30.0.43", type="NodePort", nodePort=30080,
                                        externalTrafficPolicy="Local"), endpoints("np", *EPS)],
    "load balancer with ranges": [service("lb", "172.30.0.44", type="LoadBalancer", nodePort=30081, lb="5.6.7.8",
                                          loadBalancerSourceRanges=["192.168.0.0/24"], externalIPs=["9.9.9.9"]),
                                  endpoints("lb", *EPS)],
    "affinity": [service("aff", "172.30.0.45", sessionAffinity="ClientIP"), endpoints("aff", *EPS)],
    "internal local": [service("il", "172.30.0.46", internalTrafficPolicy="Local"), endpoints("il", *EPS)],
    "terminating": [service("t", "172.30.0.47"),
                    endpoints("t", *EPS, conditions={"ready": False, "serving": True, "terminating": True})],
    "no endpoints": [service("none", "172.30.0.48"), endpoints("none")],
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("cfg", [{}, {"iptables": {"masqueradeAll": True}},
                                 {"detectLocalMode": "InterfaceNamePrefix", "detectLocal": {"interfaceNamePrefix": "veth"}}])
def test_prepared_rules_equal_parsed_ones(name, cfg):
    (fast_node, fast), (text_node, text) = pair(**cfg)
    docs = SCENARIOS[name]
    r1, r2 = fast.sync(objects(*docs)), text.sync(objects(*docs))
    assert not r1.error and not r2.error and r1.text == r2.text
    assert same_rules(fast_node, text_node) > 0
    endpoint_rules = sum(line.startswith("-A KUBE-SEP-") for line in r1.text.splitlines())
    assert fast.backend.prepared_count >= endpoint_rules // 2      # the MASQ rules at least, DNAT too without affinity


def test_prepared_rules_equal_parsed_ones_across_partial_syncs():
    (fast_node, fast), (text_node, text) = pair()
    docs = [d for name in sorted(SCENARIOS) for d in SCENARIOS[name]]
    objs = [objects(*docs), objects(*docs)]
    for proxier, o in zip((fast, text), objs, strict=True):
        proxier.sync(o)
        o.dirty = set()
    for step in range(3):
        for proxier, o in zip((fast, text), objs, strict=True):
            es = copy.deepcopy(o.slices["ns/web-x"])
            es.endpoints[0].addresses = [f"10.0.3.{step + 1}"]
            o.update_slice(es)
            result = proxier.sync(o)
            assert not result.error and not result.full
        assert same_rules(fast_node, text_node) > 0
    for proxier, o in zip((fast, text), objs, strict=True):      # a new Service: KUBE-SERVICES is rewritten
        o.add(service("late", "172.30.0.99"), "test")
        o.add(endpoints("late", *EPS), "test")
        result = proxier.sync(o)
        assert not result.error and ":KUBE-SERVICES" in result.text
    assert same_rules(fast_node, text_node) > 0
    assert fast.backend.prepared_count > 0


def test_a_prepared_rule_that_differs_from_its_line_fails_the_restore_and_changes_nothing():
    from kproxy.iptables.parser import parse_command, tokenize
    from kproxy.iptables.restore import RestoreError

    node = Node.from_description(NODE)
    before = rules_of(node.iptables_save())
    text = "*nat\n:KUBE-SEP-X - [0:0]\n-A KUBE-SEP-X -s 10.0.0.1/32 -j ACCEPT\nCOMMIT\n"
    wrong = parse_command(tokenize("-A KUBE-SEP-X -s 10.0.0.2/32 -j ACCEPT"), 4).rules[0]
    with pytest.raises(RestoreError, match="line 3: the prepared rule differs"):
        node.iptables_restore(text, noflush=True, prepared={3: ("KUBE-SEP-X", [wrong])}, verify_prepared=True)
    assert rules_of(node.iptables_save()) == before


def test_prepared_rules_equal_parsed_ones_for_ipv6():
    nodes = []
    for cls in (Recording, TextOnly):
        node = Node.from_description({"name": "node-a", "interfaces": [
            {"name": "eth0", "addresses": ["192.168.0.2/24", "fd00::2/64"]}]})
        config = ProxyConfig.from_dict({"clusterCIDR": "fd00:10::/64", "hostnameOverride": "node-a"})
        proxier = IptablesProxier(config, cls(node, family=6, verify_prepared=True), ["fd00::2"], family=6)
        svc = {"kind": "Service", "metadata": {"name": "v6", "namespace": "ns"},
               "spec": {"clusterIP": "fd00:96::10", "clusterIPs": ["fd00:96::10"], "ipFamilies": ["IPv6"],
                        "ports": [{"name": "p", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}
        es = {"kind": "EndpointSlice", "metadata": {"name": "v6-x", "namespace": "ns",
                                                    "labels": {"kubernetes.io/service-name": "v6"}},
              "addressType": "IPv6",
              "endpoints": [{"addresses": [f"fd00:10::{i}"], "nodeName": "node-b", "conditions": {"ready": True}}
                            for i in range(1, 4)],
              "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}]}
        result = proxier.sync(objects(svc, es))
        assert not result.error and "[fd00:10::1]:8080" in result.text
        nodes.append((node, proxier))
    (a, fast), (b, _) = nodes
    assert fast.backend.prepared_count >= 6
    assert rules_of(a.iptables_save(6)) == rules_of(b.iptables_save(6))
    ta, tb = a.iptables[6].tables["nat"], b.iptables[6].tables["nat"]
    for chain, ca in ta.chains.items():
        assert [rule_fields(r) for r in ca.rules] == [rule_fields(r) for r in tb.chains[chain].rules], chain


def test_prepared_rules_equal_parsed_ones_in_a_large_cluster():
    """Over 1,000 endpoints the endpoint rules have no comments (upstream's large-cluster mode); the rules
    built for them are still exactly what their lines parse to, affinity included."""
    (fast_node, fast), (text_node, text) = pair()
    eps = [(f"10.0.{i // 250}.{i % 250 + 1}", "node-b" if i % 3 else "node-a") for i in range(1002)]
    docs = [service("big", "172.30.0.50"), endpoints("big", *eps[:500]),
            service("aff", "172.30.0.51", sessionAffinity="ClientIP"), endpoints("aff", *eps[500:])]
    r1, r2 = fast.sync(objects(*docs)), text.sync(objects(*docs))
    assert not r1.error and not r2.error and r1.text == r2.text
    assert fast.large_cluster and "-m comment --comment ns/big:p " not in r1.text
    assert same_rules(fast_node, text_node) > 2000
    assert fast.backend.prepared_count >= 1500
