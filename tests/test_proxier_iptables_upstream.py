"""Upstream's iptables proxier tests (kubernetes pkg/proxy/iptables/proxier_test.go), scenario by scenario.

Each upstream test builds Services and EndpointSlices, syncs, and then compares what the proxier
wrote (``iptables-restore`` input) with a dump it expects, traces packets through the rules (its
``runPacketFlowTests``), or reads metrics. Here the same scenarios are built as our objects on
upstream's fake node (``tests/upstream_flows.py``): the packets go through the emulated node's real
packet path, and the dumps upstream expects (``tests/data/ipt_proxier/*.rules``, transcribed from
its assertions) are compared the way its ``assertIPTablesRulesEqual`` compares them: chain
declarations sorted, rules in order within each chain, KUBE-SERVICES and KUBE-NODEPORTS ordered by
Service name. A whole-table test also loads the expected dump into a fresh node and requires the
node's ``iptables-save`` to be the same.

Upstream's fake node has no ``--random-fully`` and has both nfacct counters; ``Fake`` below is that.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
from tests.test_proxier_nftables import ep, objects, port, put, slice_, svc
from tests.upstream_flows import (
    EXTERNAL_CLIENT,
    EXTERNAL_CLIENT_BLOCKED,
    NODE_IP,
    NODE_IP_ALT,
    NODE_IPS,
    NODE_IPV6,
    NODE_IPV6_ALT,
    UPSTREAM_NODE,
    Flow,
    run_flows,
)

from kproxy.backends.emulated import EmulatedBackend
from kproxy.k8s.manifests import Objects
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.iptables import IptablesProxier
from kproxy.proxy.metrics import ProxyMetrics

DATA = Path(__file__).parent / "data" / "ipt_proxier"
P80 = [("p80", 80, "TCP")]
UNNAMED = [("", 80, "TCP")]


class Fake(EmulatedBackend):
    """Upstream's iptablestest.NewFake: an iptables without --random-fully (SetHasRandomFully turns it on)."""

    random_fully = False
    nfacct = True

    def has_random_fully(self) -> bool:
        return self.random_fully

    def nfacct_ensure(self, name: str) -> bool:
        return super().nfacct_ensure(name) if self.nfacct else False


def upstream_proxier(family: int = 4, node_port_addresses: list[str] | None = None, masquerade_all: bool = False,
                     local_detector: bool = True, localhost_node_ports: bool = True, random_fully: bool = False,
                     nfacct: bool = True, **extra: Any) -> tuple[Node, IptablesProxier]:
    """Upstream's NewFakeProxier on an emulated node that can carry packets."""
    node = Node.from_description(UPSTREAM_NODE)
    node.clock = 1000.0
    node.subsystems["rng"] = random.Random(13)
    cfg: dict[str, Any] = {"mode": "iptables", "hostnameOverride": "test-node",
                           "nodePortAddresses": node_port_addresses or [],
                           "iptables": {"masqueradeAll": masquerade_all, "localhostNodePorts": localhost_node_ports},
                           **extra}
    if local_detector:
        cfg.update(clusterCIDR="10.0.0.0/8" if family == 4 else "fd00:10::/64", detectLocalMode="ClusterCIDR")
    backend = Fake(node, family)
    backend.random_fully = random_fully
    backend.nfacct = nfacct
    proxier = IptablesProxier(ProxyConfig.from_dict(cfg), backend, NODE_IPS, family=family, metrics=ProxyMetrics())
    return node, proxier


def sync(proxier: IptablesProxier, objs: Objects, force: bool = False) -> Any:
    result = proxier.sync(objs, force)
    assert not result.error, result.error
    return result


def flows(node: Node, cases: list[Flow]) -> None:
    run_flows(node, cases, mode="iptables")


def lb(ns: str, name: str, cluster_ip: str, ports: list[dict[str, Any]], ingress: list[str], **spec: Any
       ) -> dict[str, Any]:
    return svc(ns, name, cluster_ip, ports, "LoadBalancer", lb=ingress, **spec)


def delete_slices(objs: Objects, *keys: str) -> None:
    """EndpointSlices deleted after a sync, as the watch delivers it."""
    if objs.dirty is None:
        objs.dirty = set()
    for key in keys:
        objs.delete_slice(key)


# ---- TestNoEndpointsReject -----------------------------------------------------------------------
def test_no_endpoints_reject() -> None:
    node, proxier = upstream_proxier()
    sync(proxier, objects(lb("ns1", "svc1", "172.30.0.41", [port("p80", 80, node_port=3001)], ["1.2.3.4"],
                             externalIPs=["192.168.99.11"])))
    flows(node, [
        Flow("pod to cluster IP with no endpoints", "10.0.0.2", "172.30.0.41", 80, "REJECT"),
        Flow("external to external IP with no endpoints", EXTERNAL_CLIENT, "192.168.99.11", 80, "REJECT"),
        Flow("pod to NodePort with no endpoints", "10.0.0.2", NODE_IP, 3001, "REJECT"),
        Flow("external to NodePort with no endpoints", EXTERNAL_CLIENT, NODE_IP, 3001, "REJECT"),
        Flow("pod to LoadBalancer IP with no endpoints", "10.0.0.2", "1.2.3.4", 80, "REJECT"),
        Flow("external to LoadBalancer IP with no endpoints", EXTERNAL_CLIENT, "1.2.3.4", 80, "REJECT"),
    ])


# ---- TestClusterIPGeneral ------------------------------------------------------------------------
def test_cluster_ip_general() -> None:
    node, proxier = upstream_proxier()
    sync(proxier, objects(
        svc("ns1", "svc1", "172.30.0.41", [port("http", 80)]),
        svc("ns2", "svc2", "172.30.0.42", [port("http", 80), port("https", 443, target=8443),
                                           port("dns-udp", 53, "UDP"), port("dns-tcp", 53, target=5353),
                                           port("dns-sctp", 53, "SCTP")]),
        slice_("ns1", "svc1", [ep("10.180.0.1", "test-node")], [("http", 80, "TCP")]),
        slice_("ns2", "svc2", [ep("10.180.0.1", "test-node"), ep("10.180.2.1", "host2")],
               [("http", 80, "TCP"), ("https", 8443, "TCP"), ("dns-udp", 53, "UDP"), ("dns-tcp", 5353, "TCP"),
                ("dns-sctp", 53, "SCTP")])))
    flows(node, [
        Flow("simple clusterIP", "10.180.0.2", "172.30.0.41", 80, "10.180.0.1:80"),
        Flow("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", masq=True),
        Flow("clusterIP with multiple endpoints", "10.180.0.2", "172.30.0.42", 80, "10.180.0.1:80, 10.180.2.1:80"),
        Flow("clusterIP with TargetPort", "10.180.0.2", "172.30.0.42", 443, "10.180.0.1:8443, 10.180.2.1:8443"),
        Flow("same port (TCP)", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:5353, 10.180.2.1:5353"),
        Flow("same port (UDP)", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53", protocol="udp"),
        Flow("same port (SCTP)", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53", protocol="sctp"),
        # no cluster-IP check in the iptables mode: an unknown port of a cluster IP is not touched
        Flow("TCP-only port does not match UDP traffic", "10.180.0.2", "172.30.0.42", 80, "", protocol="udp"),
        Flow("svc1 does not accept svc2's ports", "10.180.0.2", "172.30.0.41", 443, ""),
    ])


# ---- TestLoadBalancer ----------------------------------------------------------------------------
def test_load_balancer() -> None:
    node, proxier = upstream_proxier()
    sync(proxier, objects(
        lb("ns1", "svc1", "172.30.0.41", [port("p80", 80, node_port=3001)], ["1.2.3.4", "5.6.7.8"],
           loadBalancerSourceRanges=["192.168.0.0/24", " 203.0.113.0/25"]),
        slice_("ns1", "svc1", [ep("10.180.0.1")], P80)))
    e = "10.180.0.1:80"
    flows(node, [
        Flow("pod to cluster IP", "10.0.0.2", "172.30.0.41", 80, e),
        Flow("external to nodePort", EXTERNAL_CLIENT, NODE_IP, 3001, e, masq=True),
        Flow("nodePort bypasses LoadBalancerSourceRanges", EXTERNAL_CLIENT_BLOCKED, NODE_IP, 3001, e, masq=True),
        Flow("accepted external to LB1", EXTERNAL_CLIENT, "1.2.3.4", 80, e, masq=True),
        Flow("accepted external to LB2", EXTERNAL_CLIENT, "5.6.7.8", 80, e, masq=True),
        Flow("blocked external to LB1", EXTERNAL_CLIENT_BLOCKED, "1.2.3.4", 80, "DROP"),
        Flow("blocked external to LB2", EXTERNAL_CLIENT_BLOCKED, "5.6.7.8", 80, "DROP"),
        Flow("pod to LB1 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "1.2.3.4", 80, "DROP"),
        Flow("pod to LB2 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "5.6.7.8", 80, "DROP"),
        Flow("node to LB1 (allowed by LoadBalancerSourceRanges)", NODE_IP, "1.2.3.4", 80, e, masq=True),
        Flow("node to LB2 (allowed by LoadBalancerSourceRanges)", NODE_IP, "5.6.7.8", 80, e, masq=True),
        Flow("same node to LB1, SNATted to LB1 (implicitly allowed)", "1.2.3.4", "1.2.3.4", 80, e, masq=True),
        Flow("same node to LB2, SNATted to LB2 (implicitly allowed)", "5.6.7.8", "5.6.7.8", 80, e, masq=True),
    ])


# ---- TestNodePorts --------------------------------------------------------------------------------
FIREWALL_RULE = ('-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 '
                 '! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP')


@pytest.mark.parametrize(("family", "localhost", "node_port_addresses", "allow_alt", "expect_firewall"), [
    (4, True, None, True, True),
    (4, False, None, True, False),
    (4, False, ["192.168.0.0/24", "127.0.0.1/32"], False, False),
    (4, False, ["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"], True, False),
    (6, True, None, True, False),
    (6, False, None, True, False),
    (6, False, ["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"], False, False),
], ids=["ipv4, localhost-nodeports enabled", "ipv4, localhost-nodeports disabled",
        "ipv4, localhost-nodeports disabled, localhost in nodeport-addresses",
        "ipv4, localhost-nodeports enabled, multiple nodeport-addresses", "ipv6, localhost-nodeports enabled",
        "ipv6, localhost-nodeports disabled", "ipv6, localhost-nodeports disabled, multiple nodeport-addresses"])
def test_node_ports(family: int, localhost: bool, node_port_addresses: list[str] | None, allow_alt: bool,
                    expect_firewall: bool) -> None:
    node, proxier = upstream_proxier(family, node_port_addresses, localhost_node_ports=localhost)
    if family == 4:
        svc_ip, ep1, ep2, node_ip, pod, client, alt, lo = ("172.30.0.41", "10.180.0.1", "10.180.2.1", NODE_IP,
                                                           "10.0.0.2", EXTERNAL_CLIENT, NODE_IP_ALT, "127.0.0.1")
    else:
        svc_ip, ep1, ep2, node_ip, pod, client, alt, lo = ("fd00:172:30::41", "fd00:10:180::1", "fd00:10:180::2:1",
                                                           NODE_IPV6, "fd00:10::2", "2600:5200::1", NODE_IPV6_ALT,
                                                           "::1")
    result = sync(proxier, objects(
        svc("ns1", "svc1", svc_ip, [port("p80", 80, node_port=3001)], "NodePort"),
        slice_("ns1", "svc1", [ep(ep1), ep(ep2, "test-node")], P80, family=f"IPv{family}")))
    out = ", ".join(f"[{ip}]:80" if family == 6 else f"{ip}:80" for ip in (ep1, ep2))
    flows(node, [
        Flow("pod to cluster IP", pod, svc_ip, 80, out),
        Flow("external to nodePort", client, node_ip, 3001, out, masq=True),
        Flow("node to nodePort", node_ip, node_ip, 3001, out, masq=True),
        Flow("localhost to nodePort gets masqueraded", lo, lo, 3001, out, masq=True) if family == 4 and localhost else
        Flow("localhost to nodePort is ignored", lo, lo, 3001, ""),
        Flow("external to nodePort on secondary IP", client, alt, 3001, out, masq=True) if allow_alt else
        Flow("secondary nodeIP ignores NodePorts", client, alt, 3001, ""),
    ])
    # upstream checks KUBE-FIREWALL in what was written (its tracer has no conntrack states)
    assert parse_restore(result.text)["filter"][1].get("KUBE-FIREWALL", []) == \
        ([FIREWALL_RULE] if expect_firewall else [])


# ---- TestHealthCheckNodePort -----------------------------------------------------------------------
def test_health_check_node_port() -> None:
    node, proxier = upstream_proxier(node_port_addresses=["127.0.0.0/8"])
    service = lb("ns1", "svc1", "172.30.0.42", [port("p80", 80, node_port=3001)], [], healthCheckNodePort=30000,
                 externalTrafficPolicy="Local")
    objs = objects(service)
    sync(proxier, objs)
    flows(node, [Flow("firewall accepts HealthCheckNodePort", "1.2.3.4", NODE_IP, 30000, "ACCEPT")])
    objs.delete_service("ns1/svc1")
    sync(proxier, objs)
    flows(node, [Flow("HealthCheckNodePort no longer has any rule", "1.2.3.4", NODE_IP, 30000, "")])


# ---- upstream's dump helpers: sortIPTablesRules, checkIPTablesRuleJumps, and the node's whole tables ----
def dump_text(name: str) -> str:
    """An expected dump as upstream writes it (this file's ``#`` lines are ours)."""
    return "".join(line for line in (DATA / name).read_text().splitlines(True) if not line.startswith("#"))


def _comment(rule: str) -> str | None:
    m = re.search(r'--comment (?:"([^"]*)"|(\S+))', rule)
    return None if m is None else (m.group(1) if m.group(1) is not None else m.group(2))


def _service_of(rule: str) -> str:
    comment = _comment(rule) or ""
    return re.split(r"[ :]", comment, maxsplit=1)[0]


def _chain_order(name: str) -> tuple[int, str]:
    if name == "KUBE-NODEPORTS":
        return (0, "")
    if name == "KUBE-SERVICES":
        return (1, "")
    return (2 if name.startswith("KUBE-") else 3, name)


def parse_restore(text: str) -> dict[str, tuple[list[str], dict[str, list[str]], list[str]]]:
    """Per table: the chains declared (in order), each chain's ``-A`` rules, and the ``-X`` deletions."""
    tables: dict[str, tuple[list[str], dict[str, list[str]], list[str]]] = {}
    current = None
    for line in text.splitlines():
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], ([], {}, []))
        elif line.startswith(":"):
            assert current is not None
            current[0].append(line[1:].split()[0])
        elif line.startswith("-A "):
            assert current is not None
            current[1].setdefault(line.split()[1], []).append(line)
        elif line.startswith("-X "):
            assert current is not None
            current[2].append(line.split()[1])
    return tables


def upstream_sort(text: str) -> str:
    """Upstream's sortIPTablesRules: tables by name; chains with KUBE-NODEPORTS and KUBE-SERVICES first, then
    KUBE-* and the rest by name; rules grouped by chain in their order, except that KUBE-SERVICES and
    KUBE-NODEPORTS are ordered by the Service named in their comments (nat's "must be the last rule" stays
    last)."""
    out = []
    for table, (declared, rules, deleted) in sorted(parse_restore(text).items()):
        chains = sorted(declared, key=_chain_order)
        out.append(f"*{table}")
        out.extend(f":{c} - [0:0]" for c in chains)
        for chain in chains:
            lines = rules.get(chain, [])
            if chain in ("KUBE-SERVICES", "KUBE-NODEPORTS"):
                lines = sorted(lines, key=lambda r: ("must be the last rule" in (_comment(r) or ""), _service_of(r)))
            out.extend(lines)
        out.extend(f"-X {c}" for c in chains if c in deleted)
        out.append("COMMIT")
    return "\n".join(out) + "\n"


BUILTIN_TARGETS = {"ACCEPT", "REJECT", "DROP", "MARK", "RETURN", "DNAT", "SNAT", "MASQUERADE"}
TOP_CHAINS = {"KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-FORWARD",
              "KUBE-MARK-MASQ", "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL"}


def check_rule_jumps(text: str) -> None:
    """Upstream's checkIPTablesRuleJumps: every chain jumped to or filled is declared; every chain jumped to has
    rules (KUBE-NODEPORTS may be empty); every declared chain is used (but the top-level ones)."""
    for table, (declared, rules, deleted) in parse_restore(text).items():
        created = set(declared) - set(deleted)
        filled = set(rules)
        jumped = {m for lines in rules.values() for r in lines for m in re.findall(r"-j (\S+)", r)} - BUILTIN_TARGETS
        assert not (jumped | filled) - created, (table, "used but not created", (jumped | filled) - created)
        assert not jumped - filled - {"KUBE-NODEPORTS"}, (table, "jumped to but empty", jumped - filled)
        assert not created - jumped - TOP_CHAINS, (table, "created but not used", created - jumped - TOP_CHAINS)


def assert_restore_is(text: str, name: str) -> None:
    """What the proxier wrote is upstream's expected dump, compared as upstream compares it."""
    want = dump_text(name)
    check_rule_jumps(want)
    assert upstream_sort(text) == want


def tables_of(node: Node, family: int = 4) -> dict[str, dict[str, list[str]]]:
    """The node's mangle, filter and nat tables as iptables-save prints them: chain -> policy and rules."""
    out: dict[str, dict[str, list[str]]] = {}
    table: dict[str, list[str]] = {}
    for line in node.iptables_save(family=family, tables=["mangle", "filter", "nat"]).splitlines():
        if line.startswith("*"):
            table = out.setdefault(line[1:], {})
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            table[name] = [policy]
        elif line.startswith("-A "):
            table[line.split()[1]].append(line)
    return out


def expected_node(*texts: str, family: int = 4) -> Node:
    """A fresh node given upstream's base and then each expected restore input, as iptables-restore
    --noflush applies them."""
    from kproxy.netfilter.nfacct import objects_of

    node = Node.from_description(UPSTREAM_NODE)
    for name in ("ct_state_invalid_dropped_pkts", "localhost_nps_accepted_pkts"):
        objects_of(node).ensure(name)
    for text in (dump_text("base.rules"), *texts):
        node.iptables_restore(text, family=family, noflush=True)
    return node


def assert_node_tables(node: Node, *texts: str) -> None:
    """The node's whole mangle, filter and nat tables are what upstream's restores leave on a fresh node."""
    got, want = tables_of(node), tables_of(expected_node(*texts))
    for table in want:
        assert sorted(got[table]) == sorted(want[table]), (table, set(got[table]) ^ set(want[table]))
        for chain in want[table]:
            assert got[table][chain] == want[table][chain], (table, chain)


# ---- TestOverallIPTablesRules ------------------------------------------------------------------------
def overall_objects() -> Objects:
    return objects(
        svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)]),
        lb("ns2", "svc2", "172.30.0.42", [port("p80", 80, node_port=3001)], ["1.2.3.4"],
           externalTrafficPolicy="Local", externalIPs=["192.168.99.22"], healthCheckNodePort=30000),
        svc("ns3", "svc3", "172.30.0.43", [port("p80", 80, node_port=3003)], "NodePort"),
        svc("ns4", "svc4", "172.30.0.44", [port("p80", 80)], "NodePort", externalIPs=["192.168.99.33"]),
        lb("ns5", "svc5", "172.30.0.45", [port("p80", 80, node_port=3002)], ["5.6.7.8"],
           externalTrafficPolicy="Cluster", healthCheckNodePort=30000, loadBalancerSourceRanges=[" 203.0.113.0/25"],
           sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10800}}),
        svc("ns6", "svc6", "172.30.0.46", [port("p80", 80)]),
        slice_("ns1", "svc1", [ep("10.180.0.1")], P80),
        slice_("ns2", "svc2", [ep("10.180.0.2")], P80),
        slice_("ns3", "svc3", [ep("10.180.0.3")], P80),
        slice_("ns4", "svc4", [ep("10.180.0.4"), ep("10.180.0.5", "test-node")], P80),
        slice_("ns5", "svc5", [ep("10.180.0.3")], P80))


def nat_rules_in(text: str) -> int:
    return sum(len(lines) for lines in parse_restore(text).get("nat", ([], {}, []))[1].values())


def test_overall_iptables_rules() -> None:
    node, proxier = upstream_proxier()
    result = sync(proxier, overall_objects())
    assert_restore_is(result.text, "overall.rules")
    assert_node_tables(node, dump_text("overall.rules"))
    # the nat rule count upstream's metric reports is the count in what was written
    rules = proxier.metrics.rules_total.labels(table="nat", ip_family="IPv4")._value.get()
    assert rules == nat_rules_in(dump_text("overall.rules"))


# ---- TestBadIPs ------------------------------------------------------------------------------------
def test_bad_ips() -> None:
    node, proxier = upstream_proxier()
    result = sync(proxier, objects(
        lb("ns1", "svc1", "172.30.0.041", [port("p80", 80, node_port=3001)], ["1.2.3.004"],
           externalIPs=["192.168.099.022"], loadBalancerSourceRanges=["203.0.113.000/025"]),
        slice_("ns1", "svc1", [ep("10.180.00.001")], P80)))
    assert_restore_is(result.text, "badips.rules")
    assert_node_tables(node, dump_text("badips.rules"))


# ---- TestExternalTrafficPolicyLocal / TestExternalTrafficPolicyCluster ---------------------------------
def etp_objects(policy: str) -> Objects:
    return objects(
        lb("ns1", "svc1", "172.30.0.41", [port("p80", 80, node_port=3001)], ["1.2.3.4"], externalIPs=["192.168.99.11"],
           externalTrafficPolicy=policy, **({"healthCheckNodePort": 30000} if policy == "Local" else {})),
        slice_("ns1", "svc1", [ep("10.180.0.1"), ep("10.180.2.1", "test-node")], P80))


def test_external_traffic_policy_local() -> None:
    node, proxier = upstream_proxier()
    sync(proxier, etp_objects("Local"))
    both, local = "10.180.0.1:80, 10.180.2.1:80", "10.180.2.1:80"
    flows(node, [
        Flow("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, both),
        Flow("pod to external IP hits both endpoints, unmasqueraded", "10.0.0.2", "192.168.99.11", 80, both),
        Flow("external to external IP hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT, "192.168.99.11", 80,
             local),
        Flow("pod to LB IP hits only both endpoints, unmasqueraded", "10.0.0.2", "1.2.3.4", 80, both),
        Flow("external to LB IP hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT, "1.2.3.4", 80, local),
        Flow("pod to NodePort hits both endpoints, unmasqueraded", "10.0.0.2", NODE_IP, 3001, both),
        Flow("external to NodePort hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT, NODE_IP, 3001, local),
    ])


def test_external_traffic_policy_cluster() -> None:
    node, proxier = upstream_proxier()
    sync(proxier, etp_objects("Cluster"))
    both = "10.180.0.1:80, 10.180.2.1:80"
    flows(node, [
        Flow("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, both),
        Flow("pod to external IP hits both endpoints, masqueraded", "10.0.0.2", "192.168.99.11", 80, both, True),
        Flow("external to external IP hits both endpoints, masqueraded", EXTERNAL_CLIENT, "192.168.99.11", 80, both,
             True),
        Flow("pod to LB IP hits both endpoints, masqueraded", "10.0.0.2", "1.2.3.4", 80, both, True),
        Flow("external to LB IP hits both endpoints, masqueraded", EXTERNAL_CLIENT, "1.2.3.4", 80, both, True),
        Flow("pod to NodePort hits both endpoints, masqueraded", "10.0.0.2", NODE_IP, 3001, both, True),
        Flow("external to NodePort hits both endpoints, masqueraded", EXTERNAL_CLIENT, NODE_IP, 3001, both, True),
    ])


# ---- TestInternalTrafficPolicy --------------------------------------------------------------------
@pytest.mark.parametrize(("policy", "nodes", "output"), [
    ("Cluster", ["test-node", "host1", "host2"], "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80"),
    ("Local", ["test-node", "host1", "host2"], "10.0.1.1:80"),
    ("Local", ["test-node", "test-node", "host2"], "10.0.1.1:80, 10.0.1.2:80"),
    ("Local", ["host0", "host1", "host2"], "DROP"),
], ids=["internalTrafficPolicy is cluster", "internalTrafficPolicy is local and there is one local endpoint",
        "internalTrafficPolicy is local and there are multiple local endpoints",
        "internalTrafficPolicy is local and there are no local endpoints"])
def test_internal_traffic_policy(policy: str, nodes: list[str], output: str) -> None:
    node, proxier = upstream_proxier()
    objs = objects(svc("ns1", "svc1", "172.30.1.1", [port("", 80)], internalTrafficPolicy=policy),
                   slice_("ns1", "svc1", [ep(f"10.0.1.{i}", n) for i, n in enumerate(nodes, 1)], UNNAMED))
    sync(proxier, objs)
    flows(node, [Flow("pod to ClusterIP", "10.0.0.2", "172.30.1.1", 80, output)])
    delete_slices(objs, "ns1/svc1-1")
    sync(proxier, objs)
    flows(node, [Flow("endpoints deleted", "10.0.0.2", "172.30.1.1", 80, "REJECT")])


# ---- TestTerminatingEndpointsTrafficPolicyLocal / ...Cluster ------------------------------------------
def cond(ready: bool, serving: bool, terminating: bool) -> dict[str, bool]:
    return {"ready": ready, "serving": serving, "terminating": terminating}


READY, SERVING_TERMINATING, TERMINATING = cond(True, True, False), cond(False, True, True), cond(False, False, True)
TERMINATING_LOCAL: dict[str, list[tuple[str, str, dict[str, bool]]]] = {
    "ready endpoints exist": [("10.0.1.1", "test-node", READY), ("10.0.1.2", "test-node", READY),
                              ("10.0.1.3", "test-node", SERVING_TERMINATING), ("10.0.1.4", "test-node", TERMINATING),
                              ("10.0.1.5", "host-1", READY)],
    "only terminating endpoints exist": [("10.0.1.2", "test-node", SERVING_TERMINATING),
                                         ("10.0.1.3", "test-node", SERVING_TERMINATING),
                                         ("10.0.1.4", "test-node", TERMINATING), ("10.0.1.5", "host-1", READY)],
    "terminating endpoints on remote node": [("10.0.1.5", "host-1", SERVING_TERMINATING)],
    "no usable endpoints on any node": [("10.0.1.5", "test-node", TERMINATING), ("10.0.1.5", "host-1", TERMINATING)],
}
TERMINATING_CLUSTER: dict[str, list[tuple[str, str, dict[str, bool]]]] = {
    "ready endpoints exist": [("10.0.1.1", "test-node", READY), ("10.0.1.2", "test-node", READY),
                              ("10.0.1.3", "another-host", SERVING_TERMINATING),
                              ("10.0.1.4", "another-host", TERMINATING), ("10.0.1.5", "another-host", READY)],
    "only terminating endpoints exist": [("10.0.1.2", "test-node", SERVING_TERMINATING),
                                         ("10.0.1.3", "test-node", SERVING_TERMINATING),
                                         ("10.0.1.4", "another-host", TERMINATING),
                                         ("10.0.1.5", "another-host", SERVING_TERMINATING)],
    "terminating endpoints on remote node": [("10.0.1.5", "host-1", SERVING_TERMINATING)],
    "no usable endpoints on any node": [("10.0.1.5", "test-node", TERMINATING), ("10.0.1.5", "host-1", TERMINATING)],
}


def terminating_run(policy: str, endpoints: list[tuple[str, str, dict[str, bool]]], cases: list[Flow]) -> None:
    node, proxier = upstream_proxier()
    objs = objects(
        lb("ns1", "svc1", "172.30.1.1", [port("", 80)], ["1.2.3.4"], externalTrafficPolicy=policy,
           healthCheckNodePort=30000),
        slice_("ns1", "svc1", [{"addresses": [ip], "nodeName": n, "conditions": c} for ip, n, c in endpoints],
               UNNAMED))
    sync(proxier, objs)
    flows(node, cases)
    delete_slices(objs, "ns1/svc1-1")
    sync(proxier, objs)
    flows(node, [Flow("pod to clusterIP after endpoints deleted", "10.0.0.2", "172.30.1.1", 80, "REJECT"),
                 Flow("external to LB after endpoints deleted", EXTERNAL_CLIENT, "1.2.3.4", 80, "REJECT")])


@pytest.mark.parametrize(("case", "cluster_ip", "lb_output"), [
    ("ready endpoints exist", "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", "10.0.1.1:80, 10.0.1.2:80"),
    ("only terminating endpoints exist", "10.0.1.5:80", "10.0.1.2:80, 10.0.1.3:80"),
    ("terminating endpoints on remote node", "10.0.1.5:80", "DROP"),
    ("no usable endpoints on any node", "REJECT", "REJECT"),
])
def test_terminating_endpoints_traffic_policy_local(case: str, cluster_ip: str, lb_output: str) -> None:
    terminating_run("Local", TERMINATING_LOCAL[case], [
        Flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, cluster_ip),
        Flow("external to LB", EXTERNAL_CLIENT, "1.2.3.4", 80, lb_output)])


@pytest.mark.parametrize(("case", "output"), [
    ("ready endpoints exist", "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80"),
    ("only terminating endpoints exist", "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80"),
    ("terminating endpoints on remote node", "10.0.1.5:80"),
    ("no usable endpoints on any node", "REJECT"),
])
def test_terminating_endpoints_traffic_policy_cluster(case: str, output: str) -> None:
    terminating_run("Cluster", TERMINATING_CLUSTER[case], [
        Flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, output),
        Flow("external to LB", EXTERNAL_CLIENT, "1.2.3.4", 80, output, masq=True)])


# ---- TestInternalExternalMasquerade -----------------------------------------------------------------
def masquerade_objects() -> Objects:
    return objects(
        lb("ns1", "svc1", "172.30.0.41", [port("p80", 80, node_port=3001)], ["1.2.3.4"], healthCheckNodePort=30001),
        lb("ns2", "svc2", "172.30.0.42", [port("p80", 80, node_port=3002)], ["5.6.7.8"], healthCheckNodePort=30002,
           externalTrafficPolicy="Local"),
        lb("ns3", "svc3", "172.30.0.43", [port("p80", 80, node_port=3003)], ["9.10.11.12"],
           healthCheckNodePort=30003, internalTrafficPolicy="Local"),
        *(slice_(f"ns{i}", f"svc{i}", [ep(f"10.180.0.{i}", "test-node"), ep(f"10.180.1.{i}", "remote")], P80)
          for i in (1, 2, 3)))


def masquerade_flows() -> list[Flow]:
    """Upstream's base expectations (a working local-traffic detector, no masqueradeAll); the iptables
    mode's list has the localhost NodePort cases too."""
    a, b, c = "10.180.0.1:80, 10.180.1.1:80", "10.180.0.2:80, 10.180.1.2:80", "10.180.0.3:80, 10.180.1.3:80"
    pod, ext, lo = "10.0.0.2", EXTERNAL_CLIENT, "127.0.0.1"
    return [
        Flow("pod to ClusterIP", pod, "172.30.0.41", 80, a, False),
        Flow("pod to NodePort", pod, NODE_IP, 3001, a, True),
        Flow("pod to LB", pod, "1.2.3.4", 80, a, True),
        Flow("node to ClusterIP", NODE_IP, "172.30.0.41", 80, a, True),
        Flow("node to NodePort", NODE_IP, NODE_IP, 3001, a, True),
        Flow("localhost to NodePort", lo, lo, 3001, a, True),
        Flow("node to LB", NODE_IP, "1.2.3.4", 80, a, True),
        Flow("external to ClusterIP", ext, "172.30.0.41", 80, a, True),
        Flow("external to NodePort", ext, NODE_IP, 3001, a, True),
        Flow("external to LB", ext, "1.2.3.4", 80, a, True),
        Flow("pod to ClusterIP with eTP:Local", pod, "172.30.0.42", 80, b, False),
        Flow("pod to NodePort with eTP:Local", pod, NODE_IP, 3002, b, False),
        Flow("pod to LB with eTP:Local", pod, "5.6.7.8", 80, b, False),
        Flow("node to ClusterIP with eTP:Local", NODE_IP, "172.30.0.42", 80, b, True),
        Flow("node to NodePort with eTP:Local", NODE_IP, NODE_IP, 3001, a, True),
        Flow("localhost to NodePort with eTP:Local", lo, lo, 3002, b, True),
        Flow("node to LB with eTP:Local", NODE_IP, "5.6.7.8", 80, b, True),
        Flow("external to ClusterIP with eTP:Local", ext, "172.30.0.42", 80, b, True),
        Flow("external to NodePort with eTP:Local", ext, NODE_IP, 3002, "10.180.0.2:80", False),
        Flow("external to LB with eTP:Local", ext, "5.6.7.8", 80, "10.180.0.2:80", False),
        Flow("pod to ClusterIP with iTP:Local", pod, "172.30.0.43", 80, "10.180.0.3:80", False),
        Flow("pod to NodePort with iTP:Local", pod, NODE_IP, 3003, c, True),
        Flow("pod to LB with iTP:Local", pod, "9.10.11.12", 80, c, True),
        Flow("node to ClusterIP with iTP:Local", NODE_IP, "172.30.0.43", 80, "10.180.0.3:80", True),
        Flow("node to NodePort with iTP:Local", NODE_IP, NODE_IP, 3003, c, True),
        Flow("localhost to NodePort with iTP:Local", lo, lo, 3003, c, True),
        Flow("node to LB with iTP:Local", NODE_IP, "9.10.11.12", 80, c, True),
        Flow("external to ClusterIP with iTP:Local", ext, "172.30.0.43", 80, "10.180.0.3:80", True),
        Flow("external to NodePort with iTP:Local", ext, NODE_IP, 3003, c, True),
        Flow("external to LB with iTP:Local", ext, "9.10.11.12", 80, c, True),
    ]


NO_DETECTOR = {"node to ClusterIP": (None, False), "node to ClusterIP with eTP:Local": (None, False),
               "node to ClusterIP with iTP:Local": (None, False), "external to ClusterIP": (None, False),
               "external to ClusterIP with eTP:Local": (None, False),
               "external to ClusterIP with iTP:Local": (None, False),
               "pod to NodePort with eTP:Local": ("10.180.0.2:80", None),
               "pod to LB with eTP:Local": ("10.180.0.2:80", None)}
MASQUERADE_ALL = {"pod to ClusterIP": (None, True), "pod to ClusterIP with eTP:Local": (None, True),
                  "pod to ClusterIP with iTP:Local": (None, True)}


@pytest.mark.parametrize(("masquerade_all", "local_detector", "overrides"), [
    (False, True, {}),
    (False, False, NO_DETECTOR),
    (True, True, MASQUERADE_ALL),
    (True, False, {**MASQUERADE_ALL, **{k: v for k, v in NO_DETECTOR.items() if v[0] is not None}}),
], ids=["base", "no LocalTrafficDetector", "masqueradeAll", "masqueradeAll, no LocalTrafficDetector"])
def test_internal_external_masquerade(masquerade_all: bool, local_detector: bool,
                                      overrides: dict[str, tuple[str | None, bool | None]]) -> None:
    node, proxier = upstream_proxier(masquerade_all=masquerade_all, local_detector=local_detector)
    sync(proxier, masquerade_objects())
    cases = masquerade_flows()
    for f in cases:
        output, masq = overrides.get(f.name, (None, None))
        f.output = f.output if output is None else output
        f.masq = f.masq if masq is None else masq
    assert len({f.name for f in cases} & set(overrides)) == len(overrides)
    flows(node, cases)


# ---- TestSyncProxyRulesRepeated ----------------------------------------------------------------------
def part(name: str, title: str) -> str:
    """One ``# part:`` section of a data file."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in (DATA / name).read_text().splitlines(True):
        if line.startswith("# part: "):
            current = sections.setdefault(line[len("# part: "):].strip(), [])
        elif current is not None and line.strip() and not line.startswith("#"):
            current.append(line)
    assert title in sections, f"{name} has no part {title!r}"
    return "".join(sections[title])


def assert_partial_restore(text: str, want: str) -> None:
    """A partial sync's restore input against upstream's: every chain written holds upstream's rules for it;
    every Service chain upstream writes or deletes is written or deleted here too. (Unlike upstream, a top-level
    chain whose rules did not change is not written again; the whole-table check covers what it holds.)"""
    ours, theirs = parse_restore(upstream_sort(text)), parse_restore(want)
    for table, (declared, rules, deleted) in theirs.items():
        o_declared, o_rules, o_deleted = ours.get(table, ([], {}, []))
        for chain in o_declared:
            assert chain in declared, (table, chain, "written here, not by upstream")
            assert o_rules.get(chain, []) == rules.get(chain, []), (table, chain)
        assert sorted(o_deleted) == sorted(deleted), table
        service_chains = {c for c in declared if c.startswith(("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-",
                                                                "KUBE-SVL-"))}
        assert service_chains <= set(o_declared), (table, service_chains - set(o_declared))


def kube_nat_rules(node: Node) -> int:
    return sum(len(rules) - 1 for chain, rules in tables_of(node)["nat"].items() if chain.startswith("KUBE-"))


def test_sync_proxy_rules_repeated() -> None:
    node, proxier = upstream_proxier()
    applied: list[str] = []
    metrics = proxier.metrics

    def step(title: str, full: bool = False) -> None:
        result = proxier.sync(objs)
        assert not result.error, result.error
        want = part("repeated.rules", title)
        if full:
            assert_restore_is_text(result.text, want)
        else:
            assert_partial_restore(result.text, want)
        applied.append(want)
        assert_node_tables(node, *applied)
        # upstream's metrics: the nat rules written, and all nat rules kube-proxy owns
        assert metrics.rules_last_sync.labels(table="nat", ip_family="IPv4")._value.get() == nat_rules_in(result.text)
        assert metrics.rules_total.labels(table="nat", ip_family="IPv4")._value.get() == \
            kube_nat_rules(expected_node(*applied))

    svc2 = svc("ns2", "svc2", "172.30.0.42", [port("p8080", 8080)])
    objs = objects(svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)]), svc2,
                   slice_("ns1", "svc1", [ep("10.0.1.1")], P80),
                   slice_("ns2", "svc2", [ep("10.0.2.1")], [("p8080", 8080, "TCP")]))
    step("svc1 and svc2", full=True)
    put(objs, svc("ns3", "svc3", "172.30.0.43", [port("p80", 80)]), slice_("ns3", "svc3", [ep("10.0.3.1")], P80))
    step("svc3 added")
    objs.delete_service("ns2/svc2")
    step("svc2 deleted")
    put(objs, svc("ns4", "svc4", "172.30.0.44", [port("p80", 80)]))
    step("svc4 added without endpoints")
    put(objs, slice_("ns4", "svc4", [ep("10.0.4.1")], P80))
    step("svc4 endpoints added")
    put(objs, slice_("ns3", "svc3", [ep("10.0.3.2")], P80))
    step("svc3 endpoint changed to 10.0.3.2")
    put(objs, slice_("ns3", "svc3", [ep("10.0.3.2"), ep("10.0.3.3")], P80))
    step("svc3 endpoint 10.0.3.3 added")
    step("no changes")

    # A rule from svc3's service chain to svc4's endpoint makes deleting svc4 fail in a partial sync (its
    # endpoint chain is still referenced); the failure is counted and the next sync is full and succeeds.
    assert not proxier.need_full
    rc, _, err = node.iptables_cmd(["-t", "nat", "-A", "KUBE-SVC-X27LE4BHSL4DOUIK", "-j", "KUBE-SEP-AYCN5HPXMIRJNJXU"])
    assert rc == 0, err
    objs.delete_service("ns4/svc4")
    assert proxier.sync(objs).error
    assert "KUBE-SEP-AYCN5HPXMIRJNJXU" in tables_of(node)["nat"]
    assert proxier.need_full
    assert metrics.partial_failures.labels(ip_family="IPv4")._value.get() == 1
    step("full resync after the failed partial one (svc4 deleted)", full=True)


def assert_restore_is_text(text: str, want: str) -> None:
    check_rule_jumps(want)
    assert upstream_sort(text) == want


# ---- TestDropInvalidRule, TestMasqueradeRule ------------------------------------------------------------
FORWARD_RULES = ['-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 '
                 '-j ACCEPT',
                 '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
                 'RELATED,ESTABLISHED -j ACCEPT']


@pytest.mark.parametrize(("nfacct", "tcp_liberal", "drop_rule"), [
    (False, False, ["-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"]),
    (True, False, ["-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name "
                   "ct_state_invalid_dropped_pkts -j DROP"]),
    (False, True, []),
], ids=["tcpLiberal is false and nfacctEnsured is false", "tcpLiberal is false and nfacctEnsured is true",
        "tcpLiberal is true and nfacctEnsured is false"])
def test_drop_invalid_rule(nfacct: bool, tcp_liberal: bool, drop_rule: list[str]) -> None:
    _, proxier = upstream_proxier(nfacct=nfacct, conntrack={"tcpBeLiberal": tcp_liberal})
    result = sync(proxier, objects())
    assert parse_restore(result.text)["filter"][1]["KUBE-FORWARD"] == drop_rule + FORWARD_RULES


@pytest.mark.parametrize("random_fully", [False, True])
def test_masquerade_rule(random_fully: bool) -> None:
    _, proxier = upstream_proxier(random_fully=random_fully)
    result = sync(proxier, objects())
    assert parse_restore(result.text)["nat"][1]["KUBE-POSTROUTING"] == [
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
        + (" --random-fully" if random_fully else "")]


# ---- TestLoadBalancerIngressRouteTypeProxy ------------------------------------------------------------
@pytest.mark.parametrize(("cluster_ip", "lb_ip", "ip_mode", "expect_rule"), [
    ("10.20.30.41", "1.2.3.4", "Proxy", False),
    ("10.20.30.42", "1.2.3.5", "VIP", True),
    ("10.20.30.43", "1.2.3.6", None, True),
], ids=["LoadBalancerIPMode enabled, ipMode Proxy", "LoadBalancerIPMode enabled, ipMode VIP",
        "LoadBalancerIPMode enabled, ipMode nil"])
def test_load_balancer_ingress_route_type_proxy(cluster_ip: str, lb_ip: str, ip_mode: str | None,
                                                expect_rule: bool) -> None:
    node, proxier = upstream_proxier()
    service = lb("ns1", "svc1", cluster_ip, [port("p80", 80, node_port=3001)], [lb_ip])
    if ip_mode is not None:
        service["status"]["loadBalancer"]["ingress"][0]["ipMode"] = ip_mode
    sync(proxier, objects(service, slice_("ns1", "svc1", [ep("10.180.0.1")], P80)))
    services = tables_of(node)["nat"]["KUBE-SERVICES"]
    assert any(f"-d {lb_ip}/32 " in rule for rule in services) == expect_rule
    assert any(f"-d {cluster_ip}/32 " in rule for rule in services)


# ---- TestNoEndpointsMetric ----------------------------------------------------------------------------
@pytest.mark.parametrize(("itp", "etp", "nodes", "internal", "external"), [
    ("Local", "", ["test-node", "host1", "host2"], 0, 0),
    ("", "Local", ["test-node", "host1", "host2"], 0, 0),
    ("Local", "Local", ["test-node", "host1", "host2"], 0, 0),
    ("Local", "", ["host0", "host1", "host2"], 1, 0),
    ("", "Local", ["host0", "host1", "host2"], 0, 1),
    ("Local", "Local", ["host0", "host1", "host2"], 1, 1),
    ("Local", "Local", [], 0, 0),
], ids=["internalTrafficPolicy is set and there are local endpoints",
        "externalTrafficPolicy is set and there are local endpoints",
        "both policies are set and there are local endpoints",
        "internalTrafficPolicy is set and there are no local endpoints",
        "externalTrafficPolicy is set and there are no local endpoints",
        "both policies are set and there are no local endpoints",
        "both policies are set and there are no endpoints at all"])
def test_no_endpoints_metric(itp: str, etp: str, nodes: list[str], internal: int, external: int) -> None:
    _, proxier = upstream_proxier()
    spec: dict[str, Any] = {}
    if itp:
        spec["internalTrafficPolicy"] = itp
    if etp:
        spec["externalTrafficPolicy"] = etp
    sync(proxier, objects(
        svc("ns1", "svc1", "172.30.1.1", [port("", 80, node_port=123)], "NodePort" if etp else "ClusterIP", **spec),
        slice_("ns1", "svc1", [ep(f"10.0.1.{i}", n) for i, n in enumerate(nodes, 1)], UNNAMED)))
    gauge = proxier.metrics.no_local
    assert gauge.labels(traffic_policy="internal", ip_family="IPv4")._value.get() == internal
    assert gauge.labels(traffic_policy="external", ip_family="IPv4")._value.get() == external


# ---- TestProxierMetricsIPTablesTotalRules -----------------------------------------------------------------
def kube_rules(node: Node, table: str) -> int:
    return sum(len(rules) - 1 for chain, rules in tables_of(node)[table].items() if chain.startswith("KUBE-"))


def test_proxier_metrics_iptables_total_rules() -> None:
    node, proxier = upstream_proxier()
    objs = objects(svc("ns1", "svc1", "172.30.0.41", [port("p80", 80, node_port=31201)]))
    sync(proxier, objs)
    total = proxier.metrics.rules_total
    for table in ("filter", "nat"):
        assert total.labels(table=table, ip_family="IPv4")._value.get() == kube_rules(node, table)
    put(objs, slice_("ns1", "svc1", [ep("10.0.0.2"), ep("10.0.0.5")], P80))
    result = sync(proxier, objs)
    assert not result.full
    for table in ("filter", "nat"):
        assert total.labels(table=table, ip_family="IPv4")._value.get() == kube_rules(node, table)


# ---- TestSyncProxyRulesLargeClusterMode -------------------------------------------------------------------
class Clock:
    now = 5000.0

    def __call__(self) -> float:
        return self.now


def endpoint_rules(text: str, match: str) -> tuple[str, int, int]:
    """Upstream's countEndpointsAndComments: the DNAT rule naming ``match``, how many DNAT rules, how many
    with a comment."""
    matched, endpoints, comments = "", 0, 0
    for line in text.splitlines():
        if line.startswith("-A KUBE-SEP-") and "-j DNAT" in line:
            endpoints += 1
            comments += "--comment" in line
            if match in line:
                matched = line
    return matched, endpoints, comments


def test_sync_proxy_rules_large_cluster_mode() -> None:
    node, proxier = upstream_proxier(masquerade_all=True, iptables={"masqueradeAll": True, "syncPeriod": "30s"})
    clock = Clock()
    proxier.clock = clock
    half = 1000 // 2 - 1
    objs = objects(
        svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)]),
        svc("ns2", "svc2", "172.30.0.42", [port("p8080", 8080)]),
        svc("ns3", "svc3", "172.30.0.43", [port("p8081", 8081)]),
        slice_("ns1", "svc1", [ep(f"10.0.{i % 256}.{i // 256}") for i in range(half)], P80),
        slice_("ns2", "svc2", [ep(f"10.1.{i % 256}.{i // 256}") for i in range(half)], [("p8080", 8080, "TCP")]))
    result = sync(proxier, objs)
    assert not proxier.large_cluster
    first, n, comments = endpoint_rules(result.text, "10.0.0.0")
    assert first == ("-A KUBE-SEP-DKGQUZGBKLTPAR56 -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT "
                     "--to-destination 10.0.0.0:80")
    assert n == comments == 2 * half

    # past the threshold: only svc3 is written (a partial sync), without comments
    put(objs, slice_("ns3", "svc3", [ep("203.0.113.4"), ep("203.0.113.8"), ep("203.0.113.12")],
                     [("p8081", 8081, "TCP")]))
    result = sync(proxier, objs)
    assert proxier.large_cluster
    first, n, comments = endpoint_rules(result.text, "203.0.113.4")
    assert first == "-A KUBE-SEP-RUVVH7YV3PHQBDOS -m tcp -p tcp -j DNAT --to-destination 203.0.113.4:8081"
    assert (n, comments) == (3, 0)

    # a full sync rewrites the others without comments too
    result = sync(proxier, objs, force=True)
    first, n, comments = endpoint_rules(result.text, "10.0.0.0")
    assert first == "-A KUBE-SEP-DKGQUZGBKLTPAR56 -m tcp -p tcp -j DNAT --to-destination 10.0.0.0:80"
    assert (n, comments) == (2 * half + 3, 0)

    put(objs, svc("ns4", "svc4", "172.30.0.44", [port("p8082", 8082)]),
        slice_("ns4", "svc4", [ep("10.4.0.1")], [("p8082", 8082, "TCP")]))
    result = sync(proxier, objs)
    found, n, _ = endpoint_rules(result.text, "10.4.0.1")
    assert found == "-A KUBE-SEP-SU5STNODRYEWJAUF -m tcp -p tcp -j DNAT --to-destination 10.4.0.1:8082"
    assert n == 1

    # deleting a Service in a large cluster leaves its chains until the next cleanup ...
    proxier.last_cleanup = clock.now
    objs.delete_service("ns4/svc4")
    result = sync(proxier, objs)
    assert endpoint_rules(result.text, "10.4.0.1") == ("", 0, 0)
    assert "-X " not in result.text
    assert "KUBE-SEP-SU5STNODRYEWJAUF" in tables_of(node)["nat"]
    # ... which comes a sync period later
    clock.now += 30.001
    result = sync(proxier, objs)
    assert endpoint_rules(result.text, "10.4.0.1") == ("", 0, 0)
    assert "-X KUBE-SVC-EBDQOQU5SJFXRIL3" in result.text.splitlines()
    assert "-X KUBE-SEP-SU5STNODRYEWJAUF" in result.text.splitlines()
    assert "KUBE-SEP-SU5STNODRYEWJAUF" not in tables_of(node)["nat"]

    result = sync(proxier, objs, force=True)
    assert endpoint_rules(result.text, "10.0.0.0")[1] == 2 * half + 3


def test_source_ranges_let_load_balancer_ips_in_only_for_the_primary_node_ip() -> None:
    """Upstream's allowFromNode looks at the node's primary IP only: a range that holds another of the
    node's addresses does not let the load-balancer IPs in."""
    for ranges, allowed in ((["192.168.1.0/24"], False), (["192.168.0.0/24"], True)):
        node, proxier = upstream_proxier()
        sync(proxier, objects(lb("ns1", "svc1", "172.30.0.41", [port("p80", 80, node_port=3001)], ["1.2.3.4"],
                                 loadBalancerSourceRanges=ranges), slice_("ns1", "svc1", [ep("10.180.0.1")], P80)))
        fw = tables_of(node)["nat"]["KUBE-FW-XPGD46QRK7WJZT7O"]
        assert any("-s 1.2.3.4/32 " in rule for rule in fw) == allowed, fw


# ---- the same rules on a real kernel -------------------------------------------------------------------
@pytest.mark.kernel
def test_upstream_scenarios_on_the_kernel_equal_the_emulated_node(kernel_ns: Any) -> None:
    """TestOverallIPTablesRules and a large cluster (endpoint rules without comments): iptables-restore in a
    ``kp-`` namespace takes the same restore inputs and saves the same kube-proxy rules as the emulated node."""
    from kproxy.backends.kernel import KernelBackend

    def kube(save_text: str) -> list[str]:
        return sorted(ln for ln in save_text.splitlines() if "KUBE-" in ln and "CANARY" not in ln)

    be = KernelBackend(netns=kernel_ns.name)
    cfg = ProxyConfig.from_dict({"mode": "iptables", "hostnameOverride": "test-node", "clusterCIDR": "10.0.0.0/8",
                                 "detectLocalMode": "ClusterCIDR"})
    kernel = IptablesProxier(cfg, be, NODE_IPS, metrics=ProxyMetrics())
    node = Node.from_description(UPSTREAM_NODE)
    twin = Fake(node)
    emulated = IptablesProxier(cfg, twin, NODE_IPS, metrics=ProxyMetrics())
    big = [svc("ns9", "big", "172.30.0.99", [port("p80", 80)]),
           slice_("ns9", "big", [ep(f"10.9.{i // 250}.{i % 250 + 1}") for i in range(1001)], P80)]
    for docs in ([], big):
        sync(kernel, _with(overall_objects(), docs))
        twin.random_fully, twin.nfacct = kernel.random_fully, all(kernel.nfacct.values())
        sync(emulated, _with(overall_objects(), docs))
        assert kube(kernel_ns.run([be.iptables_save]).stdout) == kube(node.iptables_save())
    assert emulated.large_cluster and kernel.large_cluster


def _with(objs: Objects, docs: list[dict[str, Any]]) -> Objects:
    for d in docs:
        objs.add(d, "test")
    return objs


# ---- TestSortIPTablesRules / TestCheckIPTablesRuleJumps: the helpers above do what upstream's do --------
def test_upstream_sort_orders_chains_and_service_rules() -> None:
    text = ("*nat\n:KUBE-SERVICES - [0:0]\n:WHY-HERE - [0:0]\n:KUBE-SEP-B - [0:0]\n:KUBE-NODEPORTS - [0:0]\n"
            ":KUBE-AAA - [0:0]\n"
            '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule '
            'in this chain" -j KUBE-NODEPORTS\n'
            '-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -j X\n'
            "-A KUBE-SERVICES -m comment --comment ns1/svc1 -j Y\n"
            "-A WHY-HERE -j ACCEPT\n-A KUBE-SEP-B -j DNAT\n-A KUBE-AAA -j RETURN\n-X KUBE-AAA\nCOMMIT\n"
            "*filter\nCOMMIT\n")
    assert upstream_sort(text).splitlines() == [
        "*filter", "COMMIT", "*nat", ":KUBE-NODEPORTS - [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-AAA - [0:0]",
        ":KUBE-SEP-B - [0:0]", ":WHY-HERE - [0:0]",
        "-A KUBE-SERVICES -m comment --comment ns1/svc1 -j Y",
        '-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -j X',
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in '
        'this chain" -j KUBE-NODEPORTS',
        "-A KUBE-AAA -j RETURN", "-A KUBE-SEP-B -j DNAT", "-A WHY-HERE -j ACCEPT", "-X KUBE-AAA", "COMMIT"]


@pytest.mark.parametrize(("text", "error"), [
    ("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j KUBE-SVC-X\nCOMMIT\n", "used but not created"),
    ("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-X - [0:0]\n-A KUBE-SERVICES -j KUBE-SVC-X\nCOMMIT\n",
     "jumped to but empty"),
    ("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SVC-X -j KUBE-MARK-MASQ\nCOMMIT\n", "used but not created"),
    ("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-X - [0:0]\n-A KUBE-SERVICES -j ACCEPT\nCOMMIT\n",
     "created but not used"),
])
def test_check_rule_jumps_finds_what_upstreams_finds(text: str, error: str) -> None:
    with pytest.raises(AssertionError, match=error):
        check_rule_jumps(text)
