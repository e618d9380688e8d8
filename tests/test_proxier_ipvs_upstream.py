"""Upstream kube-proxy's IPVS proxier tests (pkg/proxy/ipvs/proxier_test.go) as objects on the emulated node.

Upstream compares its fake IPVS (virtual servers: address, port, protocol, scheduler, flags, timeout;
real servers: address, port, weight), its fake ipsets (set name, type, members) and the rules of its
fake iptables. Here the same Services and EndpointSlices go through the IPVS proxier onto the emulated
node, and the same things are read back with ``ipvsadm -Ln``, the node's ipsets and ``iptables-save``.
Upstream's fake node has the addresses of each test's ``nodeIPs``; ours has them on eth0.
"""

from __future__ import annotations

import random

import pytest
from tests.test_proxier_iptables import objects
from tests.test_proxier_ipvs import (
    MARK_MASQ,
    POSTROUTING,
    endpoints,
    ipvsadm,
    members,
    nonempty_sets,
    rs,
    rules,
    service,
)
from tests.upstream_flows import NO_ENDPOINTS_METRIC, READY, SERVING_TERMINATING, TERMINATING

from kproxy.backends.emulated import EmulatedBackend
from kproxy.ipvs.ipvsadm import run_ipvsadm
from kproxy.node import Node
from kproxy.packet import ACK, SYN, Packet
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.gracefultermination import GracefulTermination
from kproxy.proxy.ipvs import IpvsProxier
from kproxy.proxy.metrics import ProxyMetrics
from kproxy.proxy.virtualserver import RealServer, VirtualServer

HOST = "test-hostname"


def upstream_node(*ips: str) -> dict:
    addrs = [f"{ip}/{24 if ':' not in ip else 64}" for ip in ips]
    return {"name": HOST, "interfaces": [{"name": "eth0", "addresses": addrs}],
            "routes": ["default via 100.101.102.1 dev eth0"] if any(":" not in ip for ip in ips) else []}


def fake_proxier(*node_ips: str, family: int = 4, metrics: ProxyMetrics | None = None,
                 **cfg: object) -> tuple[Node, IpvsProxier]:
    """Upstream's NewFakeProxier: the node's addresses, the primary IP first, no cluster CIDR (masquerade
    by the local-traffic detector's absence: ``src,dst``), hostname ``test-hostname``."""
    node = Node.from_description(upstream_node(*(node_ips or ("100.101.102.103",))))
    node.clock = 1000.0
    node.subsystems["rng"] = random.Random(3)
    config = ProxyConfig.from_dict({"mode": "ipvs", "hostnameOverride": HOST, **cfg})
    ips = [ip for ip in node_ips if (":" in ip) == (family == 6)] or None
    return node, IpvsProxier(config, EmulatedBackend(node, family), ips, family=family, metrics=metrics)


def heads(node: Node) -> list[str]:
    return [line for line in ipvsadm(node) if not line.startswith("  ->")]


def servers_of(node: Node, head: str) -> list[str]:
    lines = ipvsadm(node)
    i = lines.index(head) + 1
    out = []
    while i < len(lines) and lines[i].startswith("  ->"):
        out.append(lines[i])
        i += 1
    return out


def svc(name: str, ip: str, port: int = 80, proto: str = "TCP", **spec: object) -> dict:
    return service(name, ip, port, proto, **spec)


def eps(name: str, *pairs: tuple[str, str], port: int = 80, proto: str = "TCP", **kw: object) -> dict:
    return endpoints(name, *pairs, port=port, proto=proto, **kw)  # type: ignore[arg-type]


def bound(node: Node) -> list[str]:
    return sorted(str(a).split("/")[0] for a in node.interfaces["kube-ipvs0"].addresses)


MASQ = "-A KUBE-NODE-PORT -p {p} -m comment --comment \"Kubernetes nodeport {P} port for masquerade purpose\" " \
       "-m set --match-set KUBE-NODE-PORT-{P} dst -j KUBE-MARK-MASQ"
HC_ACCEPT = ('-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set '
             "KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT")


# ---- TestNodePortIPv4 ------------------------------------------------------------------------------
def test_node_port_ipv4_tcp_with_two_endpoints():
    """"1 service with node port, has 2 endpoints": the cluster IP and the node IP, each with both."""
    node, p = fake_proxier("100.101.102.103")
    v6 = eps("svc1", ("1002:ab8::2:1", "other"), family="IPv6")
    v6["metadata"]["name"] = "svc1-y"
    p.sync(objects(svc("svc1", "10.20.30.41", type="NodePort", nodePort=3001), eps("svc1", ("10.180.0.1", "other")), v6))
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", rs("10.180.0.1:80"),
                             "TCP  100.101.102.103:3001 rr", rs("10.180.0.1:80")]
    assert members(node, "KUBE-NODE-PORT-TCP") == {"3001"}
    assert rules(node, "nat", "KUBE-NODE-PORT") == [MASQ.format(p="tcp", P="TCP")]
    assert rules(node, "filter", "KUBE-NODE-PORT") == [HC_ACCEPT]


def test_node_port_ipv4_udp_with_endpoints():
    """"1 UDP service with node port, has endpoints": KUBE-NODE-PORT-UDP holds the port."""
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(svc("svc1", "10.20.30.41", proto="UDP", type="NodePort", nodePort=3001),
                   eps("svc1", ("10.180.0.1", "other"), proto="UDP")))
    assert ipvsadm(node) == ["UDP  10.20.30.41:80 rr", rs("10.180.0.1:80"),
                             "UDP  100.101.102.103:3001 rr", rs("10.180.0.1:80")]
    assert nonempty_sets(node) == {"KUBE-NODE-PORT-UDP": {"3001"}, "KUBE-CLUSTER-IP": {"10.20.30.41,udp:80"},
                                   "KUBE-IPVS-IPS": {"10.20.30.41"}}
    assert rules(node, "nat", "KUBE-NODE-PORT") == [MASQ.format(p="udp", P="UDP")]


def test_node_port_ipv4_without_endpoints():
    """"service has node port but no endpoints": both virtual servers, no real servers."""
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(svc("svc1", "10.20.30.41", type="NodePort", nodePort=3001)))
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", "TCP  100.101.102.103:3001 rr"]


def test_node_port_ipv4_sctp_on_a_node_with_several_ips():
    """"node port service with protocol sctp on a node with multiple nodeIPs": a virtual server and a
    KUBE-NODE-PORT-SCTP-HASH member per IPv4 node address; the IPv6 ones are the other proxier's."""
    ips = ("100.101.102.103", "100.101.102.104", "100.101.102.105", "2001:db8::1:1", "2001:db8::1:2",
           "2001:db8::1:3")
    node, p = fake_proxier(*ips)
    p.sync(objects(svc("svc1", "10.20.30.41", proto="SCTP", type="NodePort", nodePort=3001),
                   eps("svc1", ("10.180.0.1", "other"), proto="SCTP")))
    assert ipvsadm(node) == ["SCTP 10.20.30.41:80 rr", rs("10.180.0.1:80"),
                             "SCTP 100.101.102.103:3001 rr", rs("10.180.0.1:80"),
                             "SCTP 100.101.102.104:3001 rr", rs("10.180.0.1:80"),
                             "SCTP 100.101.102.105:3001 rr", rs("10.180.0.1:80")]
    assert members(node, "KUBE-NODE-PORT-SCTP-HASH") == {f"100.101.102.{i},sctp:3001" for i in (103, 104, 105)}


def test_node_port_ipv4_sctp_local():
    """"node port service with protocol sctp and externalTrafficPolicy local": the node port gets the
    local endpoint only, both SCTP sets hold the node IP, and KUBE-NODE-PORT returns before marking."""
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(svc("svc1", "10.20.30.41", proto="SCTP", type="NodePort", nodePort=3001,
                       externalTrafficPolicy="Local"),
                   eps("svc1", ("10.180.0.1", HOST), ("10.180.1.1", "otherHost"), proto="SCTP")))
    assert ipvsadm(node) == ["SCTP 10.20.30.41:80 rr", rs("10.180.0.1:80"), rs("10.180.1.1:80"),
                             "SCTP 100.101.102.103:3001 rr", rs("10.180.0.1:80")]
    assert members(node, "KUBE-NODE-PORT-SCTP-HASH") == {"100.101.102.103,sctp:3001"}
    assert members(node, "KUBE-NODE-PORT-LOCAL-SCTP-HASH") == {"100.101.102.103,sctp:3001"}
    assert [r.split(" -j ")[1] for r in rules(node, "nat", "KUBE-NODE-PORT")] == ["RETURN", "KUBE-MARK-MASQ"]
    assert "KUBE-NODE-PORT-LOCAL-SCTP-HASH dst,dst -j RETURN" in rules(node, "nat", "KUBE-NODE-PORT")[0]
    assert rules(node, "filter", "KUBE-NODE-PORT") == [HC_ACCEPT]


# ---- TestNodePortIPv6 ------------------------------------------------------------------------------
def test_node_port_ipv6_with_endpoints_of_both_families():
    """"1 service with node port, has 2 endpoints": the IPv6 proxier takes the IPv6 slice only."""
    node, p = fake_proxier("100.101.102.103", "2001:db8::1:1", family=6)
    v4 = eps("svc1", ("10.180.0.1", "other"))
    v6 = eps("svc1", ("1002:ab8::2:10", "other"), family="IPv6")
    v6["metadata"]["name"] = "svc1-y"
    p.sync(objects(svc("svc1", "2020::1", type="NodePort", nodePort=3001, ipFamilies=["IPv6"]), v4, v6))
    assert ipvsadm(node) == ["TCP  [2001:db8::1:1]:3001 rr", rs("[1002:ab8::2:10]:80"),
                             "TCP  [2020::1]:80 rr", rs("[1002:ab8::2:10]:80")]
    assert members(node, "KUBE-6-NODE-PORT-TCP") == {"3001"}


def test_node_port_ipv6_proxier_ignores_an_ipv4_service():
    """"1 UDP service with node port, has endpoints (no action on IPv6 Proxier)"."""
    node, p = fake_proxier("100.101.102.103", family=6, nodePortAddresses=["0.0.0.0/0"])
    p.sync(objects(svc("svc1", "10.20.30.41", proto="UDP", type="NodePort", nodePort=3001),
                   eps("svc1", ("10.180.0.1", "other"), proto="UDP")))
    assert ipvsadm(node) == []
    assert nonempty_sets(node) == {}


def test_node_port_ipv6_without_endpoints():
    node, p = fake_proxier("100.101.102.103", "2001:db8::1:1", family=6)
    p.sync(objects(svc("svc1", "2020::1", type="NodePort", nodePort=3001, ipFamilies=["IPv6"])))
    assert ipvsadm(node) == ["TCP  [2001:db8::1:1]:3001 rr", "TCP  [2020::1]:80 rr"]


def test_node_port_ipv6_sctp_on_a_node_with_several_ips():
    node, p = fake_proxier("2001:db8::1:1", "2001:db8::1:2", family=6)
    p.sync(objects(svc("svc1", "2020::1", proto="SCTP", type="NodePort", nodePort=3001, ipFamilies=["IPv6"]),
                   eps("svc1", ("2001::1", "other"), proto="SCTP", family="IPv6")))
    assert ipvsadm(node) == ["SCTP [2001:db8::1:1]:3001 rr", rs("[2001::1]:80"),
                             "SCTP [2001:db8::1:2]:3001 rr", rs("[2001::1]:80"),
                             "SCTP [2020::1]:80 rr", rs("[2001::1]:80")]
    assert members(node, "KUBE-6-NODE-PORT-SCTP-HASH") == {"2001:db8::1:1,sctp:3001", "2001:db8::1:2,sctp:3001"}


def test_node_port_ipv6_sctp_local():
    node, p = fake_proxier("2001:db8::1:1", family=6)
    p.sync(objects(svc("svc1", "2020::1", proto="SCTP", type="NodePort", nodePort=3001, ipFamilies=["IPv6"],
                       externalTrafficPolicy="Local"),
                   eps("svc1", ("2001::1", HOST), ("2001::2", "otherHost"), proto="SCTP", family="IPv6")))
    assert ipvsadm(node) == ["SCTP [2001:db8::1:1]:3001 rr", rs("[2001::1]:80"),
                             "SCTP [2020::1]:80 rr", rs("[2001::1]:80"), rs("[2001::2]:80")]
    # KUBE-6- plus the name, cut to ipset's 31 characters (upstream's NewIPSet)
    assert members(node, "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS") == {"2001:db8::1:1,sctp:3001"}


# ---- TestIPv4Proxier / TestIPv6Proxier ---------------------------------------------------------------
def test_ipv4_proxier_cluster_ip_with_and_without_endpoints():
    """TestIPv4Proxier "2 services with Cluster IP, each with endpoints" and "cluster IP service with no
    endpoints": one virtual server per service port; an IPv6 slice of the same Service is ignored."""
    node, p = fake_proxier("100.101.102.103")
    v6 = eps("svc2", ("1009:ab8::5:6", "other"), family="IPv6")
    v6["metadata"]["name"] = "svc2-y"
    p.sync(objects(svc("svc1", "10.20.30.41"), eps("svc1", ("10.180.0.1", "other")),
                   svc("svc2", "1002:ab8::2:1", port=8080, ipFamilies=["IPv6"]), v6,
                   svc("svc3", "10.20.30.43")))
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", rs("10.180.0.1:80"), "TCP  10.20.30.43:80 rr"]
    assert bound(node) == ["10.20.30.41", "10.20.30.43"]


def test_ipv6_proxier_cluster_ip_with_and_without_endpoints():
    node, p = fake_proxier("2001:db8::1:1", family=6)
    v6 = eps("svc2", ("1009:ab8::5:6", "other"), port=8080, family="IPv6")
    p.sync(objects(svc("svc1", "10.20.30.41"), eps("svc1", ("10.180.0.1", "other")),
                   svc("svc2", "1002:ab8::2:1", port=8080, ipFamilies=["IPv6"]), v6,
                   svc("svc3", "2001::1", ipFamilies=["IPv6"])))
    assert ipvsadm(node) == ["TCP  [1002:ab8::2:1]:8080 rr", rs("[1009:ab8::5:6]:8080"), "TCP  [2001::1]:80 rr"]


# ---- TestMasqueradeRule -----------------------------------------------------------------------------
@pytest.mark.parametrize("masquerade_all", [False, True])
def test_masquerade_rule(masquerade_all):
    """KUBE-POSTROUTING returns unmarked packets, clears the mark and masquerades; KUBE-MARK-MASQ sets it."""
    node, p = fake_proxier("100.101.102.103", iptables={"masqueradeAll": masquerade_all})
    p.sync(objects(svc("svc1", "10.20.30.41"), eps("svc1", ("10.180.0.1", "other"))))
    assert rules(node, "nat", "KUBE-POSTROUTING") == POSTROUTING
    assert rules(node, "nat", "KUBE-MARK-MASQ") == MARK_MASQ
    head = ('-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" '
            "-m set --match-set KUBE-CLUSTER-IP")
    # No cluster CIDR and no detector: upstream's "src,dst" match (the pod asks its own service).
    want = f"{head} dst,dst -j KUBE-MARK-MASQ" if masquerade_all else f"{head} src,dst -j KUBE-MARK-MASQ"
    assert rules(node, "nat", "KUBE-SERVICES")[1] == want


# ---- TestExternalIPsNoEndpoint / TestExternalIPs / TestOnlyLocalExternalIPs ---------------------------
def test_external_ips_without_endpoints():
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(svc("svc1", "10.20.30.41", type="NodePort", nodePort=3001, externalIPs=["50.60.70.81"])))
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", "TCP  100.101.102.103:3001 rr", "TCP  50.60.70.81:80 rr"]
    assert members(node, "KUBE-EXTERNAL-IP") == {"50.60.70.81,tcp:80"}


def test_external_ips_with_endpoints():
    """TestExternalIPs: each external IP (an IPv6 one is the other proxier's) has both endpoints."""
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(svc("svc1", "10.20.30.41", type="NodePort", nodePort=3001,
                       externalIPs=["50.60.70.81", "2012::51", "127.0.0.1"]),
                   eps("svc1", ("10.180.0.1", "other"), ("10.180.1.1", HOST))))
    both = [rs("10.180.0.1:80"), rs("10.180.1.1:80")]
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", *both, "TCP  100.101.102.103:3001 rr", *both,
                             "TCP  127.0.0.1:80 rr", *both, "TCP  50.60.70.81:80 rr", *both]
    assert members(node, "KUBE-EXTERNAL-IP") == {"50.60.70.81,tcp:80", "127.0.0.1,tcp:80"}


def test_only_local_external_ips():
    """TestOnlyLocalExternalIPs: the external IPs get the local endpoint only, in KUBE-EXTERNAL-IP-LOCAL."""
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(svc("svc1", "10.20.30.41", type="NodePort", nodePort=3001, externalTrafficPolicy="Local",
                       externalIPs=["50.60.70.81", "2012::51", "127.0.0.1"]),
                   eps("svc1", ("10.180.0.1", "other"), ("10.180.1.1", HOST))))
    assert servers_of(node, "TCP  50.60.70.81:80 rr") == [rs("10.180.1.1:80")]
    assert servers_of(node, "TCP  127.0.0.1:80 rr") == [rs("10.180.1.1:80")]
    assert servers_of(node, "TCP  10.20.30.41:80 rr") == [rs("10.180.0.1:80"), rs("10.180.1.1:80")]
    assert members(node, "KUBE-EXTERNAL-IP-LOCAL") == {"50.60.70.81,tcp:80", "127.0.0.1,tcp:80"}
    assert "KUBE-EXTERNAL-IP" not in nonempty_sets(node)
    head = ('-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port with '
            'externalTrafficPolicy=local" -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst')
    nat = rules(node, "nat", "KUBE-SERVICES")
    assert f"{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT" in nat
    assert f"{head} -m addrtype --dst-type LOCAL -j ACCEPT" in nat
    assert not any("KUBE-EXTERNAL-IP-LOCAL" in r and "KUBE-MARK-MASQ" in r for r in nat)


# ---- TestLoadBalancer / TestOnlyLocalNodePorts / TestHealthCheckNodePort -----------------------------
def test_load_balancer():
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(svc("svc1", "10.20.30.41", type="LoadBalancer", nodePort=3001, lb="1.2.3.4"),
                   eps("svc1", ("10.180.0.1", "other"))))
    assert heads(node) == ["TCP  1.2.3.4:80 rr", "TCP  10.20.30.41:80 rr", "TCP  100.101.102.103:3001 rr"]
    assert members(node, "KUBE-LOAD-BALANCER") == {"1.2.3.4,tcp:80"}
    assert members(node, "KUBE-NODE-PORT-TCP") == {"3001"}
    nat = rules(node, "nat", "KUBE-SERVICES")
    assert ('-A KUBE-SERVICES -m comment --comment "Kubernetes service lb portal" -m set --match-set '
            "KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER") in nat
    assert rules(node, "nat", "KUBE-LOAD-BALANCER") == ["-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ"]
    assert rules(node, "nat", "KUBE-NODE-PORT") == [MASQ.format(p="tcp", P="TCP")]


def test_only_local_node_ports():
    """TestOnlyLocalNodePorts: the node port on the IPv4 node IP has the local endpoint only; both
    node-port sets hold it; KUBE-NODE-PORT returns for the local set, marks the rest, accepts health checks."""
    node, p = fake_proxier("100.101.102.103", "2001:db8::1:1")
    p.sync(objects(svc("svc1", "10.20.30.41", type="NodePort", nodePort=3001, externalTrafficPolicy="Local"),
                   eps("svc1", ("10.180.0.1", "other"), ("10.180.1.1", HOST))))
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", rs("10.180.0.1:80"), rs("10.180.1.1:80"),
                             "TCP  100.101.102.103:3001 rr", rs("10.180.1.1:80")]
    assert members(node, "KUBE-NODE-PORT-TCP") == {"3001"}
    assert members(node, "KUBE-NODE-PORT-LOCAL-TCP") == {"3001"}
    assert [r.rsplit(" -j ", 1)[1] for r in rules(node, "nat", "KUBE-NODE-PORT")] == ["RETURN", "KUBE-MARK-MASQ"]
    assert rules(node, "filter", "KUBE-NODE-PORT") == [HC_ACCEPT]


def test_health_check_node_port():
    """TestHealthCheckNodePort: the health check node ports of Local load balancers in the set; a
    Cluster one's is not, nor a NodePort's (upstream's NeedsHealthCheck: LoadBalancer type only)."""
    node, p = fake_proxier("100.101.102.103", "2001:db8::1", nodePortAddresses=["100.101.102.0/24"])
    p.sync(objects(
        svc("svc1", "10.20.30.41", type="LoadBalancer", nodePort=3001, lb="1.2.3.4", externalTrafficPolicy="Local",
            healthCheckNodePort=30000),
        svc("svc2", "10.20.30.42", proto="UDP", type="LoadBalancer", nodePort=3002, lb="1.2.3.5",
            externalTrafficPolicy="Local", healthCheckNodePort=30001),
        svc("svc3", "10.20.30.43", type="NodePort", nodePort=3003, externalTrafficPolicy="Local",
            healthCheckNodePort=30002),
        svc("svc4", "10.20.30.44", type="LoadBalancer", nodePort=3004, healthCheckNodePort=30003)))
    assert members(node, "KUBE-HEALTH-CHECK-NODE-PORT") == {"30000", "30001"}
    assert [r.rsplit(" -j ", 1)[1] for r in rules(node, "nat", "KUBE-NODE-PORT")] == [
        "RETURN", "KUBE-MARK-MASQ", "RETURN", "KUBE-MARK-MASQ"]
    assert rules(node, "filter", "KUBE-NODE-PORT") == [HC_ACCEPT]


# ---- TestAcceptIPVSTraffic / TestBuildServiceMap* -----------------------------------------------------
def test_accept_ipvs_traffic():
    """KUBE-SERVICES for a ClusterIP Service with an external IP, a LoadBalancer and a NodePort, in
    upstream's order of jumps and set matches."""
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(svc("svc1", "10.20.30.40", externalIPs=["5.6.7.8"]), eps("svc1", ("10.180.0.1", "other")),
                   svc("svc2", "10.20.30.41", type="LoadBalancer", nodePort=80, lb="1.2.3.4"),
                   eps("svc2", ("10.180.0.2", "other")),
                   svc("svc3", "10.20.30.42", type="NodePort", nodePort=80), eps("svc3", ("10.180.0.3", "other"))))
    got = []
    for r in rules(node, "nat", "KUBE-SERVICES"):
        sets = r.split("--match-set ")[1].split()[0] if "--match-set" in r else ""
        got.append((r.rsplit(" -j ", 1)[1], sets))
    assert got == [("RETURN", ""), ("KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER"), ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"),
                   ("KUBE-MARK-MASQ", "KUBE-EXTERNAL-IP"), ("ACCEPT", "KUBE-EXTERNAL-IP"),
                   ("ACCEPT", "KUBE-EXTERNAL-IP"), ("KUBE-NODE-PORT", ""), ("ACCEPT", "KUBE-CLUSTER-IP"),
                   ("ACCEPT", "KUBE-LOAD-BALANCER")]


def test_headless_and_external_name_services_are_ignored():
    """TestBuildServiceMapServiceHeadless / ...TypeExternalName: no virtual server, no set member."""
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(svc("headless", "None", proto="UDP"), svc("headless-sctp", "None", proto="SCTP"),
                   svc("external-name", "172.16.55.4", type="ExternalName", externalName="foo2.bar.com")))
    assert ipvsadm(node) == [] and nonempty_sets(node) == {} and bound(node) == []


def test_build_service_map_add_remove():
    """TestBuildServiceMapAddRemove as the dataplane sees it: four Services with 12 ports, then one port
    of one Service left; the health check node port only for the Local load balancer."""
    def ports(*specs: tuple[str, str, int, int]) -> list[dict]:
        return [{"name": n, "protocol": pr, "port": po, "nodePort": np, "targetPort": po} for n, pr, po, np in specs]
    lb = {"loadBalancer": {"ingress": [{"ip": "10.1.2.4"}]}}
    docs = [
        {"kind": "Service", "metadata": {"name": "cluster-ip", "namespace": "somewhere-else"},
         "spec": {"clusterIP": "172.16.55.4", "ports": [{k: v for k, v in p_.items() if k != "nodePort"} for p_ in ports(
             ("something", "UDP", 1234, 4321), ("somethingelse", "UDP", 1235, 5321), ("somesctp", "SCTP", 1236, 6321))]}},
        {"kind": "Service", "metadata": {"name": "node-port", "namespace": "somewhere-else"},
         "spec": {"type": "NodePort", "clusterIP": "172.16.55.10", "ports": ports(
             ("blahblah", "UDP", 345, 678), ("moreblahblah", "TCP", 344, 677), ("sctpblah", "SCTP", 343, 676))}},
        {"kind": "Service", "metadata": {"name": "load-balancer", "namespace": "somewhere"},
         "spec": {"type": "LoadBalancer", "clusterIP": "172.16.55.11", "ports": ports(
             ("foobar", "UDP", 8675, 30061), ("baz", "UDP", 8676, 30062), ("sctpfoo", "SCTP", 8677, 30063))},
         "status": lb},
        {"kind": "Service", "metadata": {"name": "only-local-load-balancer", "namespace": "somewhere"},
         "spec": {"type": "LoadBalancer", "clusterIP": "172.16.55.12", "externalTrafficPolicy": "Local",
                  "healthCheckNodePort": 345, "ports": ports(
                      ("foobar2", "UDP", 8677, 30063), ("baz", "UDP", 8678, 30064), ("sctpbaz", "SCTP", 8679, 30065))},
         "status": {"loadBalancer": {"ingress": [{"ip": "10.1.2.3"}]}}},
    ]
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(*docs))
    cluster = {r for r in heads(node) if r.split()[1].startswith("172.16.55.")}
    assert len(cluster) == 12
    assert members(node, "KUBE-HEALTH-CHECK-NODE-PORT") == {"345"}
    one = {**docs[0], "spec": {**docs[0]["spec"], "ports": [docs[0]["spec"]["ports"][1]]}}
    p.sync(objects(one))
    assert heads(node) == ["UDP  172.16.55.4:1235 rr"]
    assert nonempty_sets(node) == {"KUBE-CLUSTER-IP": {"172.16.55.4,udp:1235"}, "KUBE-IPVS-IPS": {"172.16.55.4"}}


def test_build_service_map_service_update():
    """TestBuildServiceMapServiceUpdate: ClusterIP -> Local LoadBalancer -> ClusterIP; the health check
    port and the load-balancer virtual servers come and go."""
    def doc(lb: bool) -> dict:
        d = svc("some-service", "172.16.55.4", port=1234, proto="UDP")
        d["spec"]["ports"].append({"name": "somethingelse", "protocol": "TCP", "port": 1235, "targetPort": 1235})
        if lb:
            d["spec"].update(type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=345)
            d["spec"]["ports"][0]["nodePort"], d["spec"]["ports"][1]["nodePort"] = 7002, 7003
            d["status"] = {"loadBalancer": {"ingress": [{"ip": "10.1.2.3"}]}}
        return d
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(doc(False)))
    assert heads(node) == ["TCP  172.16.55.4:1235 rr", "UDP  172.16.55.4:1234 rr"]
    assert "KUBE-HEALTH-CHECK-NODE-PORT" not in nonempty_sets(node)
    for _ in range(2):
        p.sync(objects(doc(True)))
        assert heads(node) == ["TCP  10.1.2.3:1235 rr", "TCP  100.101.102.103:7003 rr", "TCP  172.16.55.4:1235 rr",
                               "UDP  10.1.2.3:1234 rr", "UDP  100.101.102.103:7002 rr", "UDP  172.16.55.4:1234 rr"]
        assert members(node, "KUBE-HEALTH-CHECK-NODE-PORT") == {"345"}
    p.sync(objects(doc(False)))
    assert heads(node) == ["TCP  172.16.55.4:1235 rr", "UDP  172.16.55.4:1234 rr"]
    assert "KUBE-HEALTH-CHECK-NODE-PORT" not in nonempty_sets(node) and bound(node) == ["172.16.55.4"]


# ---- TestSessionAffinity / Test_syncService ----------------------------------------------------------
def test_session_affinity_timeout_on_every_virtual_server():
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(svc("svc1", "10.20.30.41", type="NodePort", nodePort=3001, externalIPs=["50.60.70.81"],
                       sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10800}})))
    assert heads(node) == ["TCP  10.20.30.41:80 rr persistent 10800", "TCP  100.101.102.103:3001 rr persistent 10800",
                           "TCP  50.60.70.81:80 rr persistent 10800"]


def test_sync_service_updates_flags_and_scheduler_of_an_existing_virtual_server():
    """Test_syncService: an existing virtual server with other flags or another scheduler is updated in
    place (its real servers stay); an equal one is left alone."""
    node, p = fake_proxier("100.101.102.103")
    for line in ("-A -t 1.2.3.4:8080 -s rr", "-a -t 1.2.3.4:8080 -r 10.180.0.9:80 -m -w 1",
                 "-A -u 10.20.30.53:53 -s wlc"):
        assert run_ipvsadm(line.split(), node.ipvs, node.now())[0] == 0
    p.sync(objects(svc("bar", "1.2.3.4", port=8080, sessionAffinity="ClientIP"),
                   eps("bar", ("10.180.0.9", "other"), port=80),
                   svc("baz", "10.20.30.53", port=53, proto="UDP")))
    assert ipvsadm(node) == ["TCP  1.2.3.4:8080 rr persistent 10800", rs("10.180.0.9:80"), "UDP  10.20.30.53:53 rr"]
    assert bound(node) == ["1.2.3.4", "10.20.30.53"]


# ---- cleanLegacyService ------------------------------------------------------------------------------
def add_virtual_servers(node: Node, *lines: str) -> None:
    for line in lines:
        assert run_ipvsadm(line.split(), node.ipvs, node.now())[0] == 0, line


def test_clean_legacy_service_keeps_the_exclude_cidrs():
    """TestCleanLegacyService: of six virtual servers, the two a Service asks for stay, the two in
    excludeCIDRs (another party's) stay, the others go, whoever made them."""
    node, p = fake_proxier("100.101.102.103", ipvs={"excludeCIDRs": ["3.3.3.0/24", "4.4.4.0/24"]})
    add_virtual_servers(node, *(f"-A -u {ip}:{port} -s rr" for ip, port in (
        ("1.1.1.1", 53), ("2.2.2.2", 54), ("3.3.3.3", 55), ("4.4.4.4", 56), ("5.5.5.5", 57), ("6.6.6.6", 58))))
    p.sync(objects(svc("ipvs0", "1.1.1.1", port=53, proto="UDP"), svc("ipvs1", "2.2.2.2", port=54, proto="UDP")))
    assert heads(node) == ["UDP  1.1.1.1:53 rr", "UDP  2.2.2.2:54 rr", "UDP  3.3.3.3:55 rr", "UDP  4.4.4.4:56 rr"]


def test_clean_legacy_service_ipv6():
    """TestCleanLegacyService6 (and the IPv6 proxier leaves IPv4 virtual servers to the other one)."""
    node, p = fake_proxier("2001:db8::1:1", family=6, ipvs={"excludeCIDRs": ["3000::/64", "4000::/64"]})
    add_virtual_servers(node, *(f"-A -u [{ip}]:{port} -s rr" for ip, port in (
        ("1000::1", 53), ("1000::2", 54), ("3000::1", 55), ("4000::1", 56), ("5000::1", 57), ("1000::6", 58))),
        "-A -u 6.6.6.6:58 -s rr")
    p.sync(objects(svc("ipvs0", "1000::1", port=53, proto="UDP", ipFamilies=["IPv6"]),
                   svc("ipvs1", "1000::2", port=54, proto="UDP", ipFamilies=["IPv6"])))
    assert heads(node) == ["UDP  6.6.6.6:58 rr", "UDP  [1000::1]:53 rr", "UDP  [1000::2]:54 rr",
                           "UDP  [3000::1]:55 rr", "UDP  [4000::1]:56 rr"]


def test_clean_legacy_service_with_real_servers():
    """TestCleanLegacyServiceWithRealServers: a stale virtual server goes with its real servers, and its
    address is unbound from kube-ipvs0."""
    node, p = fake_proxier("100.101.102.103")
    keep = svc("ipvs2", "3.3.3.3", port=54, proto="UDP")
    p.sync(objects(svc("ipvs0", "1.1.1.1", port=53, proto="UDP"), eps("ipvs0", ("10.180.0.1", "other"), port=53,
                                                                       proto="UDP"),
                   svc("ipvs1", "2.2.2.2", port=54, proto="UDP"), keep))
    assert bound(node) == ["1.1.1.1", "2.2.2.2", "3.3.3.3"]
    p.sync(objects(keep))
    assert ipvsadm(node) == ["UDP  3.3.3.3:54 rr"]
    assert bound(node) == ["3.3.3.3"]


def test_clean_legacy_real_servers_exclude_cidrs():
    """TestCleanLegacyRealServersExcludeCIDRs: a virtual server in excludeCIDRs keeps its real servers,
    even with its address on kube-ipvs0."""
    node, p = fake_proxier("100.101.102.103", ipvs={"excludeCIDRs": ["4.4.4.4/32"]})
    add_virtual_servers(node, "-A -u 4.4.4.4:56 -s rr", "-a -u 4.4.4.4:56 -r 10.10.10.10:56 -m -w 1",
                        "-a -u 4.4.4.4:56 -r 11.11.11.11:56 -m -w 1")
    p.sync(objects())
    p.check_graceful()
    assert ipvsadm(node) == ["UDP  4.4.4.4:56 rr", rs("10.10.10.10:56"), rs("11.11.11.11:56")]


# ---- TestMultiPortServiceBindAddr --------------------------------------------------------------------
def test_multi_port_service_binds_its_address_once():
    def doc(*ports: tuple[str, str, int]) -> dict:
        return {"kind": "Service", "metadata": {"name": "svc1", "namespace": "ns1"},
                "spec": {"clusterIP": "172.16.55.4", "ports": [{"name": n, "protocol": pr, "port": po}
                                                                for n, pr, po in ports]}}
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(doc(("port1", "TCP", 1234), ("port2", "TCP", 1235))))
    assert bound(node) == ["172.16.55.4"]
    p.sync(objects(doc(("port1", "TCP", 1234))))
    assert bound(node) == ["172.16.55.4"] and heads(node) == ["TCP  172.16.55.4:1234 rr"]
    p.sync(objects(doc(("port1", "TCP", 1234), ("port2", "TCP", 1235), ("port3", "UDP", 1236))))
    assert bound(node) == ["172.16.55.4"] and len(heads(node)) == 3
    p.sync(objects())
    assert bound(node) == [] and heads(node) == []


# ---- TestEndpointSliceE2E / TestHealthCheckNodePortE2E -----------------------------------------------
def test_endpoint_slice_e2e():
    """Three ready endpoints (one local) and a not-ready one: three real servers, the local one in
    KUBE-LOOP-BACK; with the slice gone, no real server and no member."""
    node, p = fake_proxier("100.101.102.103")
    s = svc("svc1", "172.20.1.1")
    slice_ = eps("svc1", ("10.0.1.1", HOST), ("10.0.1.2", "node2"), ("10.0.1.3", "node3"))
    slice_["endpoints"].append({"addresses": ["10.0.1.4"], "nodeName": "node3", "conditions": {"ready": False}})
    p.sync(objects(s, slice_))
    assert members(node, "KUBE-LOOP-BACK") == {"10.0.1.1,tcp:80,10.0.1.1"}
    assert ipvsadm(node) == ["TCP  172.20.1.1:80 rr", rs("10.0.1.1:80"), rs("10.0.1.2:80"), rs("10.0.1.3:80")]
    p.sync(objects(s))
    assert members(node, "KUBE-LOOP-BACK") == set()
    assert ipvsadm(node) == ["TCP  172.20.1.1:80 rr"]


def test_health_check_node_port_e2e():
    node, p = fake_proxier("100.101.102.103")
    s = svc("svc1", "172.20.1.1", type="LoadBalancer", healthCheckNodePort=30000, externalTrafficPolicy="Local")
    p.sync(objects(s))
    assert members(node, "KUBE-HEALTH-CHECK-NODE-PORT") == {"30000"}
    s["spec"]["healthCheckNodePort"] = 30001
    p.sync(objects(s))
    assert members(node, "KUBE-HEALTH-CHECK-NODE-PORT") == {"30001"}
    p.sync(objects())
    assert members(node, "KUBE-HEALTH-CHECK-NODE-PORT") == set()


# ---- TestTestInternalTrafficPolicyE2E ----------------------------------------------------------------
@pytest.mark.parametrize("policy,nodes,loopback,servers", [
    ("Cluster", (HOST, "node1", "node2"), 1, ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]),
    ("Cluster", ("node0", "node1", "node2"), 0, ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]),
    ("Local", (HOST, "node1", "node2"), 1, ["10.0.1.1:80"]),
    ("Local", ("node0", "node1", "node2"), 0, []),
])
def test_internal_traffic_policy_e2e(policy, nodes, loopback, servers):
    node, p = fake_proxier("100.101.102.103")
    s = svc("svc1", "172.20.1.1", internalTrafficPolicy=policy)
    p.sync(objects(s, eps("svc1", *zip(("10.0.1.1", "10.0.1.2", "10.0.1.3"), nodes))))
    assert len(members(node, "KUBE-LOOP-BACK")) == loopback
    assert ipvsadm(node) == ["TCP  172.20.1.1:80 rr", *(rs(x) for x in servers)]
    p.sync(objects(s))
    assert members(node, "KUBE-LOOP-BACK") == set() and ipvsadm(node) == ["TCP  172.20.1.1:80 rr"]


# ---- Test_EndpointSlice{Ready,Only}{AndTerminating}{Cluster,Local} -----------------------------------
def slice_of(*entries: tuple[str, str, dict]) -> dict:
    d = eps("svc1")
    d["endpoints"] = [{"addresses": [ip], "nodeName": n, "conditions": c} for ip, n, c in entries]
    return d


def terminating_case(etp: str, entries: list[tuple[str, str, dict]]) -> tuple[Node, IpvsProxier, dict]:
    node, p = fake_proxier("100.101.102.103")
    s = svc("svc1", "172.20.1.1", type="NodePort", nodePort=30080, externalTrafficPolicy=etp,
            internalTrafficPolicy="Cluster", externalIPs=["1.2.3.4"])
    p.sync(objects(s, slice_of(*entries)))
    return node, p, s


def test_ready_and_terminating_cluster():
    """Test_EndpointSliceReadyAndTerminatingCluster: the ready endpoints only; KUBE-LOOP-BACK holds every
    local endpoint, ready or not (upstream walks the whole endpoints map)."""
    node, p, s = terminating_case("Cluster", [
        ("10.0.1.1", HOST, READY), ("10.0.1.2", HOST, READY), ("10.0.1.3", HOST, SERVING_TERMINATING),
        ("10.0.1.4", HOST, TERMINATING), ("10.0.1.5", "another-node", READY)])
    assert members(node, "KUBE-LOOP-BACK") == {f"10.0.1.{i},tcp:80,10.0.1.{i}" for i in (1, 2, 3, 4)}
    want = [rs("10.0.1.1:80"), rs("10.0.1.2:80"), rs("10.0.1.5:80")]
    assert servers_of(node, "TCP  172.20.1.1:80 rr") == want and servers_of(node, "TCP  1.2.3.4:80 rr") == want
    p.sync(objects(s))
    assert members(node, "KUBE-LOOP-BACK") == set()
    assert servers_of(node, "TCP  172.20.1.1:80 rr") == [] and servers_of(node, "TCP  1.2.3.4:80 rr") == []


def test_ready_and_terminating_local():
    """Test_EndpointSliceReadyAndTerminatingLocal: the external IP gets the local ready endpoints."""
    node, p, s = terminating_case("Local", [
        ("10.0.1.1", HOST, READY), ("10.0.1.2", HOST, READY), ("10.0.1.3", HOST, SERVING_TERMINATING),
        ("10.0.1.4", HOST, TERMINATING), ("10.0.1.5", "another-node", READY)])
    assert len(members(node, "KUBE-LOOP-BACK")) == 4
    assert servers_of(node, "TCP  172.20.1.1:80 rr") == [rs("10.0.1.1:80"), rs("10.0.1.2:80"), rs("10.0.1.5:80")]
    assert servers_of(node, "TCP  1.2.3.4:80 rr") == [rs("10.0.1.1:80"), rs("10.0.1.2:80")]


def test_only_terminating_cluster():
    """Test_EndpointSliceOnlyReadyAndTerminatingCluster: no ready endpoint anywhere, so the serving
    terminating ones (of any node) are used."""
    node, p, s = terminating_case("Cluster", [
        ("10.0.1.1", HOST, SERVING_TERMINATING), ("10.0.1.2", HOST, SERVING_TERMINATING),
        ("10.0.1.3", HOST, TERMINATING), ("10.0.1.4", "another-node", SERVING_TERMINATING),
        ("10.0.1.5", "another-node", TERMINATING)])
    assert len(members(node, "KUBE-LOOP-BACK")) == 3
    want = [rs("10.0.1.1:80"), rs("10.0.1.2:80"), rs("10.0.1.4:80")]
    assert servers_of(node, "TCP  172.20.1.1:80 rr") == want and servers_of(node, "TCP  1.2.3.4:80 rr") == want


def test_only_terminating_local():
    """Test_EndpointSliceOnlyReadyAndTerminatingLocal: a remote ready endpoint serves the cluster IP; the
    external IP gets the local serving terminating ones."""
    node, p, s = terminating_case("Local", [
        ("10.0.1.1", HOST, SERVING_TERMINATING), ("10.0.1.2", HOST, SERVING_TERMINATING),
        ("10.0.1.3", HOST, TERMINATING), ("10.0.1.4", "another-node", TERMINATING),
        ("10.0.1.5", "another-node", READY)])
    assert servers_of(node, "TCP  172.20.1.1:80 rr") == [rs("10.0.1.5:80")]
    assert servers_of(node, "TCP  1.2.3.4:80 rr") == [rs("10.0.1.1:80"), rs("10.0.1.2:80")]


# ---- TestNoEndpointsMetric ---------------------------------------------------------------------------
@NO_ENDPOINTS_METRIC
def test_no_endpoints_metric(itp, etp, nodes, internal, external):
    nodes = [HOST if n == "test-node" else n for n in nodes]       # the iptables and nftables tests' node name
    metrics = ProxyMetrics()
    node, p = fake_proxier("10.0.0.1", metrics=metrics)
    spec: dict = {"nodePort": 30000}
    if itp:
        spec["internalTrafficPolicy"] = itp
    if etp:
        spec.update(type="NodePort", externalTrafficPolicy=etp)
    p.sync(objects(svc("svc1", "172.20.1.1", **spec), eps("svc1", *zip(("10.0.1.1", "10.0.1.2", "10.0.1.3"), nodes))))
    text = metrics.text().decode()
    for policy, want in (("internal", internal), ("external", external)):
        line = f'kubeproxy_sync_proxy_rules_no_local_endpoints_total{{ip_family="IPv4",traffic_policy="{policy}"}}'
        assert f"{line} {want}.0" in text, policy


# ---- TestLoadBalancerIngressRouteTypeProxy -----------------------------------------------------------
@pytest.mark.parametrize("ip_mode,servers", [("Proxy", 1), ("VIP", 2), (None, 2)])
def test_load_balancer_ingress_ip_mode_proxy(ip_mode, servers):
    """An ingress IP with ipMode Proxy gets no virtual server (LoadBalancerIPMode is on by default)."""
    node, p = fake_proxier("100.101.102.103", nodePortAddresses=["192.0.2.0/24"])   # no node-port servers
    ingress: dict = {"ip": "1.2.3.4"}
    if ip_mode:
        ingress["ipMode"] = ip_mode
    s = svc("svc1", "10.20.30.41", type="LoadBalancer", nodePort=3001)
    s["status"] = {"loadBalancer": {"ingress": [ingress]}}
    p.sync(objects(s, eps("svc1", ("10.180.0.1", "other"))))
    assert len(heads(node)) == servers
    assert ("1.2.3.4" in bound(node)) == (servers == 2)


# ---- TestCreateAndLinkKubeChain / TestDismissLocalhostRuleExist / TestFilterCIDRs --------------------
def test_create_and_link_kube_chains():
    """The chains in upstream's order in each table, and the jumps from the built-in chains."""
    node, p = fake_proxier("100.101.102.103")
    result = p.sync(objects())
    text = result.text
    nat, flt = text.split("*filter")
    assert [x for x in nat.splitlines() if x.startswith(":")] == [
        ":KUBE-SERVICES - [0:0]", ":KUBE-POSTROUTING - [0:0]", ":KUBE-NODE-PORT - [0:0]",
        ":KUBE-LOAD-BALANCER - [0:0]", ":KUBE-MARK-MASQ - [0:0]"]
    assert [x for x in flt.splitlines() if x.startswith(":")] == [
        ":KUBE-FORWARD - [0:0]", ":KUBE-NODE-PORT - [0:0]", ":KUBE-PROXY-FIREWALL - [0:0]",
        ":KUBE-SOURCE-RANGES-FIREWALL - [0:0]", ":KUBE-IPVS-FILTER - [0:0]", ":KUBE-IPVS-OUT-FILTER - [0:0]"]
    for table, chain, target in (("nat", "OUTPUT", "KUBE-SERVICES"), ("nat", "PREROUTING", "KUBE-SERVICES"),
                                 ("nat", "POSTROUTING", "KUBE-POSTROUTING"), ("filter", "FORWARD", "KUBE-FORWARD"),
                                 ("filter", "OUTPUT", "KUBE-IPVS-OUT-FILTER")):
        assert any(r.endswith(f"-j {target}") for r in rules(node, table, chain)), (table, chain)


@pytest.mark.parametrize("family,ip,src", [(4, "100.101.102.103", "127.0.0.0/8"), (6, "2001:db8::1:1", "::1/128")])
def test_dismiss_localhost_rule_exists(family, ip, src):
    node, p = fake_proxier(ip, family=family)
    p.sync(objects())
    assert rules(node, "nat", "KUBE-SERVICES", family=family)[0] == f"-A KUBE-SERVICES -s {src} -j RETURN"


def test_exclude_cidrs_of_the_other_family_are_ignored():
    """TestFilterCIDRs: each proxier keeps only the excludeCIDRs of its family."""
    cidrs = ["1000::/64", "10.0.0.0/16", "11.0.0.0/16", "2000::/64"]
    _, p4 = fake_proxier("100.101.102.103", ipvs={"excludeCIDRs": cidrs})
    _, p6 = fake_proxier("2001:db8::1:1", family=6, ipvs={"excludeCIDRs": cidrs})
    assert [str(n) for n in p4.exclude] == ["10.0.0.0/16", "11.0.0.0/16"]
    assert [str(n) for n in p6.exclude] == ["1000::/64", "2000::/64"]
    _, p4 = fake_proxier("100.101.102.103", ipvs={"excludeCIDRs": ["1000::/64", "2000::/64"]})
    assert p4.exclude == []


# ---- graceful termination (graceful_termination_test.go's TestGracefulDeleteRS) ----------------------
def graceful_setup(proto: str = "tcp") -> tuple[Node, GracefulTermination, VirtualServer]:
    node, _ = fake_proxier("100.101.102.103")
    flag = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}[proto]
    add_virtual_servers(node, f"-A {flag} 1.1.1.1:80 -s rr", f"-a {flag} 1.1.1.1:80 -r 10.0.0.1:80 -m -w 100")
    backend = EmulatedBackend(node)
    backend.ensure_dummy_device("kube-ipvs0")
    backend.bind_addresses("kube-ipvs0", ["1.1.1.1"], [])          # the node takes the virtual address in
    return node, GracefulTermination(backend), VirtualServer("1.1.1.1", proto.upper(), 80)


def connect(node: Node, proto: str = "tcp", established: bool = False) -> None:
    flags = {"tcp_flags": SYN} if proto == "tcp" else {}
    pkt = Packet.make("192.0.2.7", "1.1.1.1", proto, 40000, 80, **flags)
    r = node.receive(pkt, "eth0")
    assert r.packet.dst_str == "10.0.0.1", r.fate
    if established:
        node.receive(Packet.make("192.0.2.7", "1.1.1.1", proto, 40000, 80, tcp_flags=ACK), "eth0")


def test_graceful_delete_without_connections_deletes_at_once():
    node, gtm, vs = graceful_setup()
    assert gtm.delete(vs, RealServer("10.0.0.1", 80)) and ipvsadm(node) == ["TCP  1.1.1.1:80 rr"]
    assert not gtm.pending


@pytest.mark.parametrize("established,active,inactive", [(True, 1, 0), (False, 0, 1)])
def test_graceful_delete_with_connections_sets_weight_zero(established, active, inactive):
    """Active or inactive connections: weight 0, kept, in the list under upstream's unique name."""
    node, gtm, vs = graceful_setup()
    connect(node, established=established)
    assert not gtm.delete(vs, RealServer("10.0.0.1", 80))
    assert ipvsadm(node) == ["TCP  1.1.1.1:80 rr", rs("10.0.0.1:80", weight=0, active=active, inact=inactive)]
    assert "1.1.1.1:80/TCP/10.0.0.1:80" in gtm
    assert gtm.check() == []


@pytest.mark.parametrize("proto", ["udp", "sctp"])
def test_graceful_delete_udp_and_sctp_at_once_despite_connections(proto):
    node, gtm, vs = graceful_setup(proto)
    if proto == "udp":
        connect(node, "udp")
    assert gtm.delete(vs, RealServer("10.0.0.1", 80))
    assert ipvsadm(node) == [f"{proto.upper():<4} 1.1.1.1:80 rr"]


def test_graceful_delete_of_a_real_server_not_there_is_a_no_op():
    node, gtm, vs = graceful_setup()
    assert gtm.delete(vs, RealServer("10.0.0.2", 80))
    assert ipvsadm(node) == ["TCP  1.1.1.1:80 rr", rs("10.0.0.1:80", weight=100)]
    assert not gtm.pending


# ---- further cases of upstream's syncProxyRules ------------------------------------------------------
def test_load_balancer_ingress_on_a_node_address_and_of_the_other_family():
    """An ingress IP that is a node address gets its virtual server but is not bound (shouldBind); the
    IPv6 ingress and source range are the other proxier's; the node is not in 10.0.0.0/8, so both
    IPv4 ingress IPs are closed to it (lbNoNodeAccessIPPortProtocolEntries)."""
    node, p = fake_proxier("100.101.102.103", "2001:db8::1:1")
    s = svc("svc1", "10.20.30.41", type="LoadBalancer", nodePort=3001, lb="1.2.3.4",
            loadBalancerSourceRanges=["10.0.0.0/8", "2001:db8::/32"])
    s["status"]["loadBalancer"]["ingress"] += [{"ip": "2001:db8::99"}, {"ip": "100.101.102.103"}]
    assert not p.sync(objects(s, eps("svc1", ("10.180.0.1", "other")))).error
    assert heads(node) == ["TCP  1.2.3.4:80 rr", "TCP  10.20.30.41:80 rr", "TCP  100.101.102.103:3001 rr",
                           "TCP  100.101.102.103:80 rr"]
    assert bound(node) == ["1.2.3.4", "10.20.30.41"]
    assert members(node, "KUBE-IPVS-IPS") == {"1.2.3.4", "10.20.30.41"}
    assert members(node, "KUBE-LOAD-BALANCER-SOURCE-CIDR") == {"1.2.3.4,tcp:80,10.0.0.0/8",
                                                              "100.101.102.103,tcp:80,10.0.0.0/8"}
    assert rules(node, "filter", "KUBE-IPVS-OUT-FILTER") == [
        f"-A KUBE-IPVS-OUT-FILTER -s {ip}/32 -m ipvs --vproto 6 --vaddr {ip} --vport 80 -j DROP"
        for ip in ("1.2.3.4", "100.101.102.103")]


def test_external_ip_on_loopback_is_bound():
    """nodeAddressSet leaves out loopback (isValidForSet), so an external IP 127.0.0.1 is bound to
    kube-ipvs0 and listed in KUBE-IPVS-IPS, as upstream's TestExternalIPs state has it."""
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(svc("svc1", "10.20.30.41", externalIPs=["127.0.0.1", "100.101.102.103"])))
    assert bound(node) == ["10.20.30.41", "127.0.0.1"]
    assert members(node, "KUBE-IPVS-IPS") == {"10.20.30.41", "127.0.0.1"}


def test_affinity_timeout_change_and_removal_edit_the_virtual_server():
    node, p = fake_proxier("100.101.102.103")
    s = svc("svc2", "10.20.30.42", sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 100}})
    p.sync(objects(s, eps("svc2", ("10.180.0.1", "other"))))
    assert ipvsadm(node) == ["TCP  10.20.30.42:80 rr persistent 100", rs("10.180.0.1:80")]
    s["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] = 200
    assert not p.sync(objects(s, eps("svc2", ("10.180.0.1", "other")))).full
    assert ipvsadm(node) == ["TCP  10.20.30.42:80 rr persistent 200", rs("10.180.0.1:80")]
    s["spec"]["sessionAffinity"] = "None"
    p.sync(objects(s, eps("svc2", ("10.180.0.1", "other"))))
    assert ipvsadm(node) == ["TCP  10.20.30.42:80 rr", rs("10.180.0.1:80")]


def test_internal_local_external_cluster_node_port():
    """ITP Local, ETP Cluster: the cluster IP has the local endpoint, the node port every endpoint."""
    node, p = fake_proxier("100.101.102.103")
    p.sync(objects(svc("svc1", "10.20.30.41", type="NodePort", nodePort=3001, internalTrafficPolicy="Local"),
                   eps("svc1", ("10.180.0.1", "other"), ("10.180.0.2", HOST))))
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", rs("10.180.0.2:80"),
                             "TCP  100.101.102.103:3001 rr", rs("10.180.0.1:80"), rs("10.180.0.2:80")]
