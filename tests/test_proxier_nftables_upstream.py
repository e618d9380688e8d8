"""Upstream's nftables proxier tests (kubernetes pkg/proxy/nftables/proxier_test.go), scenario by scenario.

Each upstream test builds Services and EndpointSlices, syncs, and then either compares the whole
table with a dump it expects, or traces packets through the table (its ``runPacketFlowTests``: a
source, a destination, the endpoints the packet may be DNATed to or ``REJECT``/``DROP``, and
whether it is masqueraded), or reads metrics. Here the same scenarios are built as our objects; the
dumps upstream expects are in ``tests/data/nft_proxier/`` (written from what upstream asserts), and
the packets go through the emulated node's real packet path: a pod's packet arrives on ``cni0``, an
outside client's on ``eth0``, the node's own leaves a local process (OUTPUT). Each flow is sent as
several new connections, so every endpoint a random choice can make shows up; the masquerade
decision is the SNAT the ``masquerading`` chain made in POSTROUTING.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from tests.test_proxier_nftables import (
    DATA,
    ORDER,
    Clock,
    assert_same_table,
    blocks,
    ep,
    fake_proxier,
    objects,
    port,
    put,
    slice_,
    svc,
    table_of,
)
from tests.upstream_flows import (
    EXTERNAL_CLIENT,
    NODE_IP,
    NODE_IPS,
    NODE_IPV6,
    NODE_PORT_CASES,
    P80,
    READY,
    SERVING_TERMINATING,
    TERMINATING,
    UNNAMED,
    UPSTREAM_NODE,
    Flow,
    UpstreamScenarios,
    cond,
    lb,
    run_flows,
    sync,
)

from kproxy.backends.nft import EmulatedNft
from kproxy.k8s.manifests import Objects
from kproxy.nftables.cli import run_nft
from kproxy.nftables.model import Ruleset
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.metrics import ProxyMetrics
from kproxy.proxy.nftables import NftablesProxier


def upstream_proxier(family: int = 4, node_port_addresses: list[str] | None = None, masquerade_all: bool = False,
                     local_detector: bool = True) -> tuple[Node, NftablesProxier]:
    """Upstream's NewFakeProxier on an emulated node that can carry packets."""
    node = Node.from_description(UPSTREAM_NODE)
    node.clock = 1000.0
    node.subsystems["rng"] = random.Random(13)
    pod, svc_cidr = ("10.0.0.0/8", "172.30.0.0/16") if family == 4 else ("fd00:10::/64", "fd00:10:96::/112")
    cfg: dict[str, Any] = {"mode": "nftables", "hostnameOverride": "test-node",
                           "nodePortAddresses": node_port_addresses if node_port_addresses is not None
                           else ["192.168.0.2/32", "2001:db8::1/128"],
                           "nftables": {"masqueradeAll": masquerade_all}}
    if local_detector:
        cfg.update(clusterCIDR=pod, detectLocalMode="ClusterCIDR")
    proxier = NftablesProxier(ProxyConfig.from_dict(cfg), EmulatedNft(node, family), NODE_IPS, family=family,
                              metrics=ProxyMetrics(), service_cidrs=[svc_cidr],
                              node_ip=NODE_IP if family == 4 else NODE_IPV6)
    return node, proxier


# ---- the scenarios the iptables mode's upstream tests run too (tests/upstream_flows.py) -----------------
class TestUpstreamScenarios(UpstreamScenarios):
    """TestNoEndpointsReject, TestClusterIPGeneral, TestLoadBalancer, the traffic-policy, terminating-endpoint
    and masquerade scenarios, and TestNoEndpointsMetric on the nftables proxier."""

    mode = "nftables"
    cluster_ip_check = True
    localhost_node_ports = False

    def proxier(self, *, masquerade_all: bool = False, local_detector: bool = True
                ) -> tuple[Node, NftablesProxier]:
        return upstream_proxier(masquerade_all=masquerade_all, local_detector=local_detector)


# ---- TestNodePorts --------------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "node_port_addresses", "allow_alt"), [
    (4, None, False),
    (4, ["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"], True),
    (6, None, False),
    (6, ["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64", "2001:db8:1::2/128"], True),
], ids=["ipv4", "ipv4, multiple nodeport-addresses", "ipv6", "ipv6, multiple nodeport-addresses"])
def test_node_ports(family: int, node_port_addresses: list[str] | None, allow_alt: bool) -> None:
    node, proxier = upstream_proxier(family, node_port_addresses)
    case = NODE_PORT_CASES[family]
    sync(proxier, case.objects())
    run_flows(node, case.flows(allow_alt))


# ---- whole tables: TestSyncProxyRulesRepeated, TestSyncProxyRulesStartup, TestBadIPs ---------------------
def parts(name: str, *wanted: str) -> list[str]:
    """The lines of the named ``# part:`` sections of a data file, in the order asked."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in (DATA / name).read_text().splitlines():
        if line.startswith("# part: "):
            current = sections.setdefault(line[len("# part: "):].strip(), [])
        elif current is not None and line.strip() and not line.startswith("#"):
            current.append(line)
    missing = [w for w in wanted if w not in sections]
    assert not missing, f"{name} has no part {missing}"
    return [line for w in wanted for line in sections[w]]


def transaction(lines: list[str]) -> str:
    """Upstream's dump (a sorted listing) in an order nft accepts: the table, then containers and chains,
    then rules, then elements."""
    return "\n".join(sorted(dict.fromkeys(lines), key=lambda line: ORDER[line.split()[1]])) + "\n"


def listing_of(lines: list[str]) -> dict[str, list[str]]:
    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), transaction(lines))
    assert rc == 0, err
    rc, out, err, _ = run_nft(["list", "table", "ip", "kube-proxy"], rs)
    assert rc == 0, err
    return blocks(out)


def base() -> list[str]:
    return [line for line in (DATA / "base_ipv4.nft").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def assert_table(node: Node, lines: list[str]) -> None:
    """The node's table is upstream's dump: the same chains with the same rules in order, the same sets
    and maps with the same elements."""
    want, got = listing_of(lines), blocks(table_of(node))
    assert sorted(got) == sorted(want), (sorted(set(got) - set(want)), sorted(set(want) - set(got)))
    for header in want:
        assert got[header] == want[header], header


def test_sync_proxy_rules_repeated() -> None:
    """Every dump and (but one) every operation count upstream's TestSyncProxyRulesRepeated asserts."""
    clock = Clock()
    node, proxier = fake_proxier()
    proxier.clock = clock

    def step(*wanted: str) -> int:
        r = proxier.sync(objs)
        assert not r.error, r.error
        assert_table(node, base() + parts("repeated.nft", *wanted))
        return r.lines

    def age() -> None:
        clock.now += 2

    eps3 = ["10.0.3.1"]
    objs = objects(svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)]),
                   svc("ns2", "svc2", "172.30.0.42", [port("p8080", 8080)]),
                   slice_("ns1", "svc1", [ep("10.0.1.1")], P80),
                   slice_("ns2", "svc2", [ep("10.0.2.1")], [("p8080", 8080, "TCP")]))
    step("svc1", "svc2")
    # a new Service with its endpoint: 2 elements, 2 chains added and flushed with 2 rules each
    put(objs, svc("ns3", "svc3", "172.30.0.43", [port("p80", 80)]), slice_("ns3", "svc3", [ep(eps3[0])], P80))
    assert step("svc1", "svc2", "svc3 with 10.0.3.1") == 10
    # a Service deleted: 2 elements deleted, its 2 chains flushed, not yet deleted
    objs.delete_service("ns2/svc2")
    assert step("svc1", "svc2 deleted (its chains flushed, not yet deleted)", "svc3 with 10.0.3.1") == 4
    # a second later the stale chains go in a transaction of their own; the sync's own is empty
    age()
    assert step("svc1", "svc3 with 10.0.3.1") == 0
    # a Service without endpoints: 2 elements; then its endpoints: 2 elements, 2 chains with 2 rules each
    put(objs, svc("ns4", "svc4", "172.30.0.44", [port("p80", 80)]))
    assert step("svc1", "svc3 with 10.0.3.1", "svc4 without endpoints") == 2
    put(objs, slice_("ns4", "svc4", [ep("10.0.4.1")], P80))
    assert step("svc1", "svc3 with 10.0.3.1", "svc4") == 10
    # an endpoint changes: 2 chains rewritten, the old endpoint chain flushed
    put(objs, slice_("ns3", "svc3", [ep("10.0.3.2")], P80))
    assert step("svc1", "svc3 moved to 10.0.3.2 (the old endpoint chain flushed, not yet deleted)", "svc4") == 9
    age()
    # an endpoint added. Upstream rewrites all 3 of the Service's chains (12 operations); the endpoint
    # chain that did not change is left alone here (8), and the table is the same.
    put(objs, slice_("ns3", "svc3", [ep("10.0.3.2"), ep("10.0.3.3")], P80))
    assert step("svc1", "svc3 with 10.0.3.2 and 10.0.3.3", "svc4") == 8
    # endpoints emptied: element moved to no-endpoint-services, 3 chains flushed
    put(objs, slice_("ns3", "svc3", [], P80))
    assert step("svc1", "svc3 emptied (its chains flushed, not yet deleted)", "svc4") == 5
    assert set(proxier.stale_chains) == {"service-4AT6LBPK-ns3/svc3/tcp/p80",
                                         "endpoint-SWWHDC7X-ns3/svc3/tcp/p80__10.0.3.2/80",
                                         "endpoint-TQ2QKHCZ-ns3/svc3/tcp/p80__10.0.3.3/80"}
    # restored at once: the chains are written again and no longer stale
    put(objs, slice_("ns3", "svc3", [ep("10.0.3.2"), ep("10.0.3.3")], P80))
    assert step("svc1", "svc3 with 10.0.3.2 and 10.0.3.3", "svc4") == 14
    assert not proxier.stale_chains
    # emptied, aged, restored: deleted first, then made again; the same table as before
    put(objs, slice_("ns3", "svc3", [], P80))
    step("svc1", "svc3 emptied (its chains flushed, not yet deleted)", "svc4")
    age()
    put(objs, slice_("ns3", "svc3", [ep("10.0.3.2"), ep("10.0.3.3")], P80))
    step("svc1", "svc3 with 10.0.3.2 and 10.0.3.3", "svc4")
    # nothing changed: nothing written
    assert step("svc1", "svc3 with 10.0.3.2 and 10.0.3.3", "svc4") == 0


def test_sync_proxy_rules_startup() -> None:
    """A new proxier finds part of its state in the table (a restart): its first sync ends at upstream's
    dump. (Upstream also counts the operations: it keeps the elements and endpoint chains it finds, where
    this proxier's full sync flushes the maps and writes them again; the table is the same.)"""
    node, proxier = fake_proxier()
    EmulatedNft(node).run(transaction(base() + parts("startup.nft", "preloaded")))
    objs = objects(svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)]),
                   svc("ns2", "svc2", "172.30.0.42", [port("p8080", 8080)]),
                   svc("ns3", "svc3", "172.30.0.43", [port("p80", 80)]),
                   slice_("ns1", "svc1", [ep("10.0.1.1"), ep("10.0.1.2")], P80),
                   slice_("ns2", "svc2", [ep("10.0.2.1")], [("p8080", 8080, "TCP")]))
    sync(proxier, objs)
    assert_table(node, base() + parts("startup.nft", "expected"))
    assert not proxier.stale_chains


def test_bad_ips() -> None:
    node, proxier = fake_proxier()
    sync(proxier, objects(
        lb("ns1", "svc1", "172.30.0.041", [port("p80", 80, node_port=3001)], ["1.2.3.004"],
           externalIPs=["192.168.099.022"], loadBalancerSourceRanges=["203.0.113.000/025"]),
        slice_("ns1", "svc1", [ep("10.180.00.001")], P80)))
    assert_same_table(node, "base_ipv4.nft", "badips.nft")


# ---- TestLoadBalancerIngressRouteTypeProxy ------------------------------------------------------------
@pytest.mark.parametrize(("cluster_ip", "lb_ip", "ip_mode", "in_service_ips"), [
    ("10.20.30.41", "1.2.3.4", "Proxy", False),
    ("10.20.30.42", "1.2.3.5", "VIP", True),
    ("10.20.30.43", "1.2.3.6", None, True),
], ids=["ipMode Proxy", "ipMode VIP", "ipMode nil"])
def test_load_balancer_ingress_route_type_proxy(cluster_ip: str, lb_ip: str, ip_mode: str | None,
                                                in_service_ips: bool) -> None:
    """An ingress IP whose load balancer proxies (ipMode Proxy) gets no rules: its traffic arrives at
    the node's own address."""
    node, proxier = fake_proxier()
    service = lb("ns1", "svc1", cluster_ip, [port("p80", 80, node_port=3001)], [lb_ip])
    if ip_mode is not None:
        service["status"]["loadBalancer"]["ingress"][0]["ipMode"] = ip_mode
    sync(proxier, objects(service, slice_("ns1", "svc1", [ep("10.180.0.1")], P80)))
    elements = blocks(table_of(node))["map service-ips {"]
    assert any(e.startswith(f"{lb_ip} . tcp . 80 : goto external-") for e in elements) == in_service_ips
    assert any(e.startswith(f"{cluster_ip} . tcp . 80 : goto service-") for e in elements)


# ---- TestNoEndpointsMetric, per family ----------------------------------------------------------------
def test_no_endpoints_metric_is_per_family() -> None:
    """One metrics registry for both halves of a dual-stack proxier: each family keeps its own count."""
    from kproxy.proxy.proxier import MetaProxier

    node = Node.from_description(UPSTREAM_NODE)
    metrics = ProxyMetrics()
    config = ProxyConfig.from_dict({"mode": "nftables", "clusterCIDR": "10.0.0.0/8,fd00:10::/64",
                                    "hostnameOverride": "test-node"})
    dual = MetaProxier(NftablesProxier(config, EmulatedNft(node, 4), NODE_IPS, metrics=metrics),
                       NftablesProxier(config, EmulatedNft(node, 6), NODE_IPS, family=6, metrics=metrics))
    r = dual.sync(objects(
        svc("ns1", "svc1", "172.30.1.1", [port("", 80)], clusterIPs=["172.30.1.1", "fd00:10:96::1"],
            ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack", internalTrafficPolicy="Local"),
        slice_("ns1", "svc1", [ep("10.0.1.1", "node0")], UNNAMED),
        slice_("ns1", "svc1", [ep("fd00:10::1", "test-node")], UNNAMED, family="IPv6", suffix="6")))
    assert not r.error
    text = metrics.text().decode()
    assert 'no_local_endpoints_total{ip_family="IPv4",traffic_policy="internal"} 1.0' in text
    assert metrics.no_local.labels(traffic_policy="internal", ip_family="IPv6")._value.get() == 0


# ---- Test_servicePortChainNameBase, Test_servicePortEndpointChainNameBase ---------------------------
LONG_NS = "very-long-namespace-name-abcdefghijklmnopqrstuvwxyz0123456789xx"
LONG_SVC = "very-long-service-name-why-would-you-even-do-this-i-mean-really"
LONG_PORT = "port-443-providing-the-hypertext-transmission-protocol-with-tls"


def port_info(ns: str, name: str, port_name: str, protocol: str) -> Any:
    from kproxy.k8s.objects import Service
    from kproxy.proxy.serviceports import service_ports

    service = Service.from_dict(svc("ns", "svc", "172.30.0.1", [port("p", 80)]))
    ((info, _),) = service_ports(service, [], "test-node", sep_chains=False).values()
    return replace(info, namespace=ns, name=name, port_name=port_name, protocol=protocol)


@pytest.mark.parametrize(("ns", "name", "port_name", "protocol", "expected"), [
    ("testing", "service", "http", "tcp", "P4ZYZVCF-testing/service/tcp/http"),
    ("testing", "service", "https", "tcp", "LZBRENCP-testing/service/tcp/https"),
    (LONG_NS, LONG_SVC, LONG_PORT, "sctp", f"KR6NACJP-{LONG_NS}/{LONG_SVC}/sctp/{LONG_PORT}"),
], ids=["simple", "different port, different hash", "max length"])
def test_service_port_chain_name_base(ns: str, name: str, port_name: str, protocol: str, expected: str) -> None:
    from kproxy.proxy.nftables import port_base

    assert port_base(port_info(ns, name, port_name, protocol)) == expected


@pytest.mark.parametrize(("ns", "name", "port_name", "protocol", "endpoint", "expected"), [
    ("testing", "service", "http", "tcp", "10.180.0.1:80", "JO2XBXZR-testing/service/tcp/http__10.180.0.1/80"),
    ("testing", "service", "http", "tcp", "10.180.0.2:80", "5S6H3H22-testing/service/tcp/http__10.180.0.2/80"),
    ("testing", "service", "http", "tcp", "[fd80:abcd:12::a1b2:c3d4:e5f6:9999]:80",
     "U7E2ET36-testing/service/tcp/http__fd80.abcd.12..a1b2.c3d4.e5f6.9999/80"),
    (LONG_NS, LONG_SVC, LONG_PORT, "sctp", "[1234:5678:9abc:def0::abc:1234]:443",
     f"5YS7AFEA-{LONG_NS}/{LONG_SVC}/sctp/{LONG_PORT}__1234.5678.9abc.def0..abc.1234/443"),
    (LONG_NS, LONG_SVC, LONG_PORT, "sctp", "[1234:5678:9abc:def0::abcd:1234:5678]:443",
     f"CI6C53Q3-{LONG_NS}/{LONG_SVC}/sctp/{LONG_PORT}__1234.5678.9abc.def0..abcd.1234..."),
    (LONG_NS, LONG_SVC, LONG_PORT, "sctp", "[1234:5678:9abc:def0::abcd:1234:8765]:443",
     f"2FLXFK6X-{LONG_NS}/{LONG_SVC}/sctp/{LONG_PORT}__1234.5678.9abc.def0..abcd.1234..."),
], ids=["simple", "different endpoint, different hash", "ipv6", "max length without truncation", "truncated, 1",
        "truncated, 2 (different IP, which is not visible in the result)"])
def test_service_port_endpoint_chain_name_base(ns: str, name: str, port_name: str, protocol: str, endpoint: str,
                                               expected: str) -> None:
    from kproxy.proxy.nftables import endpoint_base
    from kproxy.proxy.serviceports import EndpointInfo

    ip, _, number = endpoint.rpartition(":")
    ip = ip.strip("[]")
    endpoint_info = EndpointInfo(ip, int(number), True, True, False, False, None, "", endpoint)
    assert endpoint_base(port_info(ns, name, port_name, protocol), endpoint_info) == expected


# ---- TestProxier_OnServiceCIDRsChanged -----------------------------------------------------------------
@pytest.mark.parametrize("family", [4, 6])
def test_on_service_cidrs_changed(family: int) -> None:
    _, proxier = upstream_proxier(family)
    proxier.service_cidrs_changed(["172.30.0.0/16", "fd00:10:96::/112"])
    assert ",".join(proxier.service_cidrs) == ("172.30.0.0/16" if family == 4 else "fd00:10:96::/112")
    proxier.service_cidrs_changed(["172.30.0.0/16", "172.50.0.0/16", "fd00:10:96::/112", "fd00:172:30::/112"])
    assert ",".join(proxier.service_cidrs) == ("172.30.0.0/16,172.50.0.0/16" if family == 4
                                               else "fd00:10:96::/112,fd00:172:30::/112")
    assert proxier.need_full
    sync(proxier, objects())
    table = blocks(table_of(proxier.backend.node, family))
    x = "ip" if family == 4 else "ip6"
    assert table["chain cluster-ips-check {"][1] == \
        f'{x} daddr {{ {proxier.service_cidrs[0]}, {proxier.service_cidrs[1]} }} drop comment "Drop traffic to unallocated ClusterIPs"'


def test_both_traffic_policies_local_still_short_circuit_to_all_endpoints() -> None:
    """Upstream's UsesClusterEndpoints holds for any externally reachable port, whatever its external
    policy: the short-circuit rules need the cluster chain (TestNoEndpointsMetric's "both policies" cases
    failed to sync when it was missing)."""
    node, proxier = upstream_proxier()
    sync(proxier, objects(
        lb("ns1", "svc1", "172.30.0.41", [port("p80", 80, node_port=3001)], ["1.2.3.4"], healthCheckNodePort=30000,
           externalTrafficPolicy="Local", internalTrafficPolicy="Local"),
        slice_("ns1", "svc1", [ep("10.180.0.1", "test-node"), ep("10.180.1.1", "remote")], P80)))
    both, local = "10.180.0.1:80, 10.180.1.1:80", "10.180.0.1:80"
    run_flows(node, [
        Flow("pod to ClusterIP", "10.0.0.2", "172.30.0.41", 80, local),
        Flow("pod to LB", "10.0.0.2", "1.2.3.4", 80, both),
        Flow("node to LB", NODE_IP, "1.2.3.4", 80, both, True),
        Flow("external to LB", EXTERNAL_CLIENT, "1.2.3.4", 80, local),
        Flow("external to NodePort", EXTERNAL_CLIENT, NODE_IP, 3001, local),
    ])


# ---- localhost NodePorts: the nftables mode never accepts them -------------------------------------------
@pytest.mark.parametrize(("family", "node_port_addresses"), [
    (4, ["0.0.0.0/0"]), (4, ["127.0.0.0/8", "192.168.0.2/32"]), (6, ["::/0"]), (6, ["::1/128", "2001:db8::1/128"]),
], ids=["ipv4, all addresses", "ipv4, loopback listed", "ipv6, all addresses", "ipv6, loopback listed"])
def test_no_node_ports_on_localhost(family: int, node_port_addresses: list[str]) -> None:
    """Upstream's nftables mode drops localhost NodePorts (its nodeport-ips skip loopback addresses, and
    with every address allowed the dispatch rule excludes the loopback range)."""
    node, proxier = upstream_proxier(family, node_port_addresses)
    svc_ip, ep_ip, lo, node_ip = (("172.30.0.41", "10.180.0.1", "127.0.0.1", NODE_IP) if family == 4 else
                                  ("fd00:172:30::41", "fd00:10:180::1", "::1", NODE_IPV6))
    sync(proxier, objects(svc("ns1", "svc1", svc_ip, [port("p80", 80, node_port=3001)], "NodePort"),
                          slice_("ns1", "svc1", [ep(ep_ip)], P80, family=f"IPv{family}")))
    out = f"[{ep_ip}]:80" if family == 6 else f"{ep_ip}:80"
    run_flows(node, [Flow("node to localhost NodePort", lo, lo, 3001, ""),
                     Flow("node to nodePort", node_ip, node_ip, 3001, out, masq=True)])
    assert lo not in blocks(table_of(node, family)).get("set nodeport-ips {", [])


# ---- the service map and its health check node ports (TestBuildServiceMap*) ------------------------------
def service_map(objs: Objects) -> tuple[int, dict[str, int]]:
    """Upstream's svcPortMap size and HealthCheckNodePorts()."""
    from kproxy.proxy.serviceports import snapshot

    snap = snapshot(objs, "test-node")
    return len(snap.ports), {i.key: i.health_check_node_port for i in snap.ports.values() if i.health_check_node_port}


def add_port(name: str, proto: str, number: int, node_port: int, target: int = 0) -> dict[str, Any]:
    return {"name": name, "protocol": proto, "port": number, "nodePort": node_port, "targetPort": target or number}


def test_build_service_map_add_remove() -> None:
    p = add_port
    objs = objects(
        svc("somewhere-else", "cluster-ip", "172.30.55.4",
            [p("something", "UDP", 1234, 4321), p("somethingelse", "UDP", 1235, 5321), p("sctpport", "SCTP", 1236, 6321)]),
        svc("somewhere-else", "node-port", "172.30.55.10", [p("blahblah", "UDP", 345, 678),
                                                            p("moreblahblah", "TCP", 344, 677),
                                                            p("muchmoreblah", "SCTP", 343, 676)], "NodePort"),
        lb("somewhere", "load-balancer", "172.30.55.11", [p("foobar", "UDP", 8675, 30061, 7000),
                                                          p("baz", "UDP", 8676, 30062, 7001)], ["1.2.3.4"],
           loadBalancerIP="1.2.3.4"),
        lb("somewhere", "only-local-load-balancer", "172.30.55.12", [p("foobar2", "UDP", 8677, 30063, 7002),
                                                                     p("baz", "UDP", 8678, 30064, 7003)], ["5.6.7.8"],
           loadBalancerIP="5.6.7.8", externalTrafficPolicy="Local", healthCheckNodePort=345))
    assert service_map(objs) == (10, {"somewhere/only-local-load-balancer": 345})
    put(objs, svc("somewhere-else", "cluster-ip", "172.30.55.4", [p("somethingelse", "UDP", 1235, 5321)]))
    for key in ("somewhere-else/node-port", "somewhere/load-balancer", "somewhere/only-local-load-balancer"):
        objs.delete_service(key)
    assert service_map(objs) == (1, {})


def test_build_service_map_headless_and_external_name() -> None:
    assert service_map(objects(
        svc("somewhere-else", "headless", "None", [add_port("rpc", "UDP", 1234, 0)]),
        svc("somewhere-else", "headless-without-port", "None", []),
        svc("somewhere-else", "external-name", "172.30.55.4", [add_port("blah", "UDP", 1235, 5321)],
            "ExternalName", externalName="foo2.bar.com"))) == (0, {})


def test_build_service_map_service_update() -> None:
    p = add_port
    v1 = svc("somewhere", "some-service", "172.30.55.4", [p("something", "UDP", 1234, 4321),
                                                           p("somethingelse", "TCP", 1235, 5321)])
    v2 = lb("somewhere", "some-service", "172.30.55.4", [p("something", "UDP", 1234, 4321, 7002),
                                                          p("somethingelse", "TCP", 1235, 5321, 7003)], ["1.2.3.4"],
            loadBalancerIP="1.2.3.4", externalTrafficPolicy="Local", healthCheckNodePort=345)
    objs = objects(v1)
    assert service_map(objs) == (2, {})
    put(objs, v2)
    assert service_map(objs) == (2, {"somewhere/some-service": 345})
    put(objs, v2)
    assert service_map(objs) == (2, {"somewhere/some-service": 345})
    put(objs, v1)
    assert service_map(objs) == (2, {})
    # only a LoadBalancer gets one (upstream's NeedsHealthCheck), whatever a NodePort Service's spec says
    put(objs, {**v2, "spec": {**v2["spec"], "type": "NodePort"}})
    assert service_map(objs) == (2, {})


def test_health_check_node_port_when_terminating() -> None:
    """TestHealthCheckNodePortWhenTerminating: the health check counts local ready endpoints only, so a
    Service whose local endpoints all terminate reports none. (Upstream counts on the endpoints map;
    here the health check server of a LoadBalancer with the Local policy does.)"""
    from kproxy.proxy.healthz import ServiceHealthServers

    class Recording(ServiceHealthServers):
        def _open(self, key: str, port: int) -> None:        # no sockets: the count is what is checked
            self.ports[key] = port

    def eps(*conds: dict[str, bool]) -> dict[str, Any]:
        return slice_("ns1", "svc1", [{"addresses": [f"10.0.1.{i}"], "nodeName": "test-node", "conditions": c}
                                      for i, c in enumerate(conds, 1)], UNNAMED)

    servers = Recording(["127.0.0.1"])
    service = lb("ns1", "svc1", "172.30.1.1", [port("", 80)], ["1.2.3.4"], externalTrafficPolicy="Local",
                 healthCheckNodePort=30000)
    objs = objects(service, eps(READY, READY, READY, cond(False, False, False)))
    servers.sync(objs, "test-node", None)
    assert servers.counts == {"ns1/svc1": 3}
    put(objs, eps(cond(False, True, False), SERVING_TERMINATING, SERVING_TERMINATING, TERMINATING))
    servers.sync(objs, "test-node", None)
    assert servers.counts == {"ns1/svc1": 0}


# ---- the same scenarios on a real kernel ---------------------------------------------------------------
@pytest.mark.kernel
def test_upstream_scenarios_on_the_kernel_equal_the_emulated_table() -> None:
    """The startup takeover, the policy and ipMode scenarios and sloppy addresses: the kernel (``nft -f``
    in a ``kp-`` namespace) takes the same transactions and lists the same table; both hold upstream's
    startup dump."""
    from tests.test_proxier_nftables_kernel import twin_proxiers

    from kproxy.lab.netns import Netns, kernel_lab_available

    if kernel_lab_available() is not None:
        pytest.skip(str(kernel_lab_available()))
    ns = Netns.create("nftup")
    try:
        kernel, emulated, node, _ = twin_proxiers(ns)
        preload = transaction(base() + parts("startup.nft", "preloaded"))
        kernel.backend.run(preload)
        emulated.backend.run(preload)
        startup = [svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)]),
                   svc("ns2", "svc2", "172.30.0.42", [port("p8080", 8080)]),
                   svc("ns3", "svc3", "172.30.0.43", [port("p80", 80)]),
                   slice_("ns1", "svc1", [ep("10.0.1.1"), ep("10.0.1.2")], P80),
                   slice_("ns2", "svc2", [ep("10.0.2.1")], [("p8080", 8080, "TCP")])]
        twins = [objects(*startup), objects(*startup)]
        for p, o in zip((kernel, emulated), twins, strict=True):
            sync(p, o)
        assert kernel.backend.list_table() == emulated.backend.list_table()
        assert_table(node, base() + parts("startup.nft", "expected"))
        proxy_lb = lb("ns9", "proxied", "172.30.0.49", [port("p80", 80, node_port=3009)], ["1.2.3.9"])
        proxy_lb["status"]["loadBalancer"]["ingress"][0]["ipMode"] = "Proxy"
        for p, o in zip((kernel, emulated), twins, strict=True):
            put(o, lb("ns5", "both-local", "172.30.0.45", [port("p80", 80, node_port=3005)], ["1.2.3.5"],
                      healthCheckNodePort=30005, externalTrafficPolicy="Local", internalTrafficPolicy="Local"),
                slice_("ns5", "both-local", [ep("10.180.0.5", "test-node"), ep("10.180.1.5", "remote")], P80),
                proxy_lb, slice_("ns9", "proxied", [ep("10.180.0.9")], P80),
                lb("ns8", "sloppy", "172.30.0.048", [port("p80", 80, node_port=3008)], ["1.2.3.008"],
                   loadBalancerSourceRanges=["203.0.113.000/025"]),
                slice_("ns8", "sloppy", [ep("10.180.00.008")], P80))
            r = p.sync(o)
            assert not r.full and not r.error, r.error
        listing = kernel.backend.list_table()
        assert listing == emulated.backend.list_table()
        assert "1.2.3.9" not in listing and "1.2.3.5 . tcp . 80 : goto external-" in listing
        assert "203.0.113.0/25" in listing and "172.30.0.48 . tcp . 80" in listing
    finally:
        ns.delete()
