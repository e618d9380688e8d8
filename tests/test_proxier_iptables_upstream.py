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
    NODE_IP,
    NODE_IPS,
    NODE_PORT_CASES,
    P80,
    UPSTREAM_NODE,
    Flow,
    UpstreamScenarios,
    lb,
    run_flows,
    sync,
)

from kproxy.backends.emulated import EmulatedBackend
from kproxy.k8s.manifests import Objects
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.iptables import IptablesProxier
from kproxy.proxy.metrics import ProxyMetrics

DATA = Path(__file__).parent / "data" / "ipt_proxier"


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


def flows(node: Node, cases: list[Flow]) -> None:
    run_flows(node, cases, mode="iptables")


# ---- the scenarios the nftables mode's upstream tests run too (tests/upstream_flows.py) ----------------
class TestUpstreamScenarios(UpstreamScenarios):
    """TestNoEndpointsReject, TestClusterIPGeneral, TestLoadBalancer, the traffic-policy, terminating-endpoint
    and masquerade scenarios, and TestNoEndpointsMetric on the iptables proxier."""

    mode = "iptables"
    cluster_ip_check = False
    localhost_node_ports = True

    def proxier(self, *, masquerade_all: bool = False, local_detector: bool = True
                ) -> tuple[Node, IptablesProxier]:
        return upstream_proxier(masquerade_all=masquerade_all, local_detector=local_detector)


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
    case = NODE_PORT_CASES[family]
    result = sync(proxier, case.objects())
    lo = case.lo
    flows(node, case.flows(allow_alt, Flow("localhost to nodePort gets masqueraded", lo, lo, 3001, case.output, masq=True)
                           if family == 4 and localhost else Flow("localhost to nodePort is ignored", lo, lo, 3001, "")))
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
