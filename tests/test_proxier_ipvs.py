"""The IPVS proxier: upstream's proxier_test scenarios as objects, compared through ipvsadm -Ln, ipset
list and iptables-save on the emulated node; graceful termination; partial syncs; packets."""

from __future__ import annotations

import random

import pytest
from tests import test_proxier_iptables as iptables_tests
from tests.test_proxier_iptables import objects

from kproxy.backends.emulated import EmulatedBackend
from kproxy.ipvs.ipvsadm import run_ipvsadm
from kproxy.node import Node
from kproxy.packet import ACK, SYN, Packet
from kproxy.proxy.config import ConfigError, ProxyConfig
from kproxy.proxy.ipvs import IPSETS, IpvsProxier, set_name
from kproxy.proxy.proxier import ModeUnavailable, proxier_class

NODE = {"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]},
                                         {"name": "cni0", "addresses": ["10.0.1.1/24"]}],
        "routes": ["default via 192.168.0.1 dev eth0", "10.0.2.0/24 via 192.168.0.3 dev eth0"]}


def service(name: str, ip: str, port: int = 80, proto: str = "TCP", ns: str = "ns1", **spec: object) -> dict:
    """A Service as upstream's tests name it (``ns1/svc1:p80``)."""
    doc = iptables_tests.service(name, ip, port, proto, **spec)
    doc["metadata"]["namespace"] = ns
    doc["spec"]["ports"][0]["name"] = "p80"
    return doc


def endpoints(name: str, *eps: tuple[str, str], port: int = 80, proto: str = "TCP", ns: str = "ns1",
              conditions: dict | None = None, family: str = "IPv4") -> dict:
    doc = iptables_tests.endpoints(name, *eps, port=port, proto=proto, conditions=conditions)
    doc["metadata"]["namespace"] = ns
    doc["addressType"] = family
    doc["ports"][0]["name"] = "p80"
    return doc


def setup(node_desc: dict | None = None, family: int = 4, **cfg: object) -> tuple[Node, IpvsProxier]:
    node = Node.from_description(node_desc or NODE)
    node.clock = 1000.0
    node.subsystems["rng"] = random.Random(3)
    config = ProxyConfig.from_dict({"mode": "ipvs", "clusterCIDR": "10.0.0.0/16", "hostnameOverride": "node-a",
                                    **cfg})
    ips = ["192.168.0.2", "10.0.1.1"] if family == 4 else ["fd00::2"]
    return node, IpvsProxier(config, EmulatedBackend(node, family), ips, family=family)


def ipvsadm(node: Node) -> list[str]:
    """``ipvsadm -Ln`` without its two header lines, services sorted (the kernel lists by hash)."""
    rc, out, err = run_ipvsadm(["-Ln"], node.ipvs, node.now())
    assert rc == 0, err
    blocks: list[list[str]] = []
    for line in out.splitlines()[3:]:
        if line.startswith("  ->"):
            blocks[-1].append(line.rstrip())
        else:
            blocks.append([line.rstrip()])
    return [line for block in sorted(blocks, key=lambda b: b[0]) for line in [block[0], *sorted(block[1:])]]


def members(node: Node, name: str) -> set[str]:
    s = node.ipsets.get(name)
    assert s is not None, name
    return {s.format(k) for k in s.members}


def nonempty_sets(node: Node) -> dict[str, set[str]]:
    return {n: members(node, n) for n in node.ipsets.sets if node.ipsets.sets[n].members}


def rules(node: Node, table: str, chain: str, family: int = 4) -> list[str]:
    return [line for line in node.iptables_save(family, tables=[table]).splitlines()
            if line.startswith(f"-A {chain} ")]


def rs(ip_port: str, weight: int = 1, active: int = 0, inact: int = 0) -> str:
    return f"  -> {ip_port:<28} Masq    {weight:<6} {active:<10} {inact:<10}".rstrip()


# The masquerade chains, whatever the Services: KUBE-POSTROUTING returns unmarked packets, clears the
# mark and masquerades; KUBE-MARK-MASQ sets the mark.
POSTROUTING = ["-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
               "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
               '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE '
               "--random-fully"]
MARK_MASQ = ["-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"]
MARK_MASQ_CLUSTER = ('-A KUBE-SERVICES ! -s 10.0.0.0/16 -m comment --comment "Kubernetes service cluster ip + port '
                     'for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ')


# ---- upstream's scenarios ------------------------------------------------------------------------
def test_cluster_ip_layout():
    """TestClusterIP: one virtual server per port of each Service, real servers weight 1 masquerading,
    the cluster IP bound to kube-ipvs0, its set members, and the fixed rules."""
    node, proxier = setup()
    result = proxier.sync(objects(
        service("svc1", "10.20.30.41"), endpoints("svc1", ("10.180.0.1", "node-b")),
        service("svc2", "10.20.30.42", port=53, proto="UDP"),
        endpoints("svc2", ("10.180.0.2", "node-b"), ("10.180.0.3", "node-b"), port=53, proto="UDP")))
    assert not result.error and result.full
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", rs("10.180.0.1:80"),
                             "UDP  10.20.30.42:53 rr", rs("10.180.0.2:53"), rs("10.180.0.3:53")]
    dummy = node.interfaces["kube-ipvs0"]
    assert sorted(str(a) for a in dummy.addresses) == ["10.20.30.41/32", "10.20.30.42/32"] and not dummy.up
    assert node.is_local(4, int.from_bytes(bytes([10, 20, 30, 41]), "big"))
    assert nonempty_sets(node) == {"KUBE-CLUSTER-IP": {"10.20.30.41,tcp:80", "10.20.30.42,udp:53"},
                                   "KUBE-IPVS-IPS": {"10.20.30.41", "10.20.30.42"}}
    assert rules(node, "nat", "KUBE-SERVICES") == [
        "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN", MARK_MASQ_CLUSTER,
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
        "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT"]
    assert rules(node, "nat", "KUBE-POSTROUTING") == POSTROUTING
    assert rules(node, "nat", "KUBE-MARK-MASQ") == MARK_MASQ
    assert rules(node, "filter", "KUBE-IPVS-FILTER") == [
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT "
        "--reject-with icmp-port-unreachable"]
    assert rules(node, "filter", "INPUT") == [
        '-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER',
        '-A INPUT -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL',
        '-A INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT']
    assert rules(node, "filter", "FORWARD") == [
        '-A FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL',
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD']
    assert rules(node, "filter", "KUBE-FORWARD") == [
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
        "RELATED,ESTABLISHED -j ACCEPT"]


def test_every_upstream_set_exists_with_its_type():
    node, proxier = setup()
    proxier.sync(objects())
    save = node.ipsets
    for name, typ, _ in IPSETS:
        s = save.get(name)
        assert s is not None and s.type == typ, name
        assert s.header() == ("range 0-65535" if typ == "bitmap:port" else
                              f"family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x{s.initval:08x}")


def test_cluster_ip_without_endpoints_keeps_an_empty_virtual_server():
    """TestClusterIPNoEndpoint: the virtual server exists, with no real server (ip_vs_leave drops the
    packet and answers ICMP port unreachable, so the client is refused at once)."""
    node, proxier = setup()
    proxier.sync(objects(service("svc1", "10.20.30.41")))
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr"]
    r = node.receive(Packet.make("10.0.1.5", "10.20.30.41", "tcp", 40000, 80, tcp_flags=SYN), "cni0")
    assert (r.fate, r.reject_with) == ("rejected", "icmp-port-unreachable")
    answer = r.extra["reply"].packet
    assert (answer.icmp_type, answer.icmp_code, answer.dst) == (3, 3, r.packet.src)


def test_node_port_virtual_servers_on_every_node_address():
    """TestNodePortIPv4: a virtual server per node address (not loopback, not kube-ipvs0), the port in
    KUBE-NODE-PORT-TCP, and KUBE-NODE-PORT marking for masquerade."""
    node, proxier = setup()
    proxier.sync(objects(service("svc1", "10.20.30.41", nodePort=3001, type="NodePort"),
                         endpoints("svc1", ("10.180.0.1", "node-b"), ("10.180.1.1", "node-a"))))
    eps = [rs("10.180.0.1:80"), rs("10.180.1.1:80")]
    assert ipvsadm(node) == ["TCP  10.0.1.1:3001 rr", *eps, "TCP  10.20.30.41:80 rr", *eps,
                             "TCP  192.168.0.2:3001 rr", *eps]
    assert members(node, "KUBE-NODE-PORT-TCP") == {"3001"}
    assert members(node, "KUBE-LOOP-BACK") == {"10.180.1.1,tcp:80,10.180.1.1"}
    assert rules(node, "nat", "KUBE-NODE-PORT") == [
        '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" '
        "-m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ"]
    assert rules(node, "nat", "KUBE-POSTROUTING")[0] == (
        '-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin '
        'purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE')


def test_node_port_addresses_limit_the_virtual_servers():
    node, proxier = setup(nodePortAddresses=["192.168.0.0/24"])
    proxier.sync(objects(service("svc1", "10.20.30.41", nodePort=3001, type="NodePort"),
                         endpoints("svc1", ("10.180.0.1", "node-b"))))
    assert [line for line in ipvsadm(node) if not line.startswith("  ->")] == [
        "TCP  10.20.30.41:80 rr", "TCP  192.168.0.2:3001 rr"]


def test_sctp_node_port_uses_the_hash_set_with_every_node_address():
    node, proxier = setup()
    proxier.sync(objects(service("svc1", "10.20.30.41", proto="SCTP", nodePort=3001, type="NodePort"),
                         endpoints("svc1", ("10.180.0.1", "node-b"), proto="SCTP")))
    assert members(node, "KUBE-NODE-PORT-SCTP-HASH") == {"10.0.1.1,sctp:3001", "192.168.0.2,sctp:3001"}
    assert rules(node, "nat", "KUBE-NODE-PORT") == [
        "-A KUBE-NODE-PORT -p sctp -m comment --comment \"Kubernetes nodeport SCTP port for masquerade purpose with "
        "type \\'hash ip:port\\'\" -m set --match-set KUBE-NODE-PORT-SCTP-HASH dst,dst -j KUBE-MARK-MASQ"]
    assert "SCTP 192.168.0.2:3001 rr" in ipvsadm(node)


def test_load_balancer_source_ranges():
    """TestLoadBalancerSourceRanges: the LB address in KUBE-LOAD-BALANCER and -FW, the allowed source
    CIDR in -SOURCE-CIDR; the node is not in the range, so the node is kept off the LB by an ipvs match."""
    node, proxier = setup()
    proxier.sync(objects(service("svc1", "10.20.30.41", type="LoadBalancer", nodePort=3001, lb="1.2.3.4",
                                 loadBalancerSourceRanges=["10.0.0.0/8"]),
                         endpoints("svc1", ("10.180.0.1", "node-b"))))
    sets = nonempty_sets(node)
    assert sets["KUBE-LOAD-BALANCER"] == {"1.2.3.4,tcp:80"}
    assert sets["KUBE-LOAD-BALANCER-FW"] == {"1.2.3.4,tcp:80"}
    assert sets["KUBE-LOAD-BALANCER-SOURCE-CIDR"] == {"1.2.3.4,tcp:80,10.0.0.0/8"}
    assert "KUBE-LOAD-BALANCER-SOURCE-IP" not in sets
    assert rules(node, "nat", "KUBE-SERVICES") == [
        "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN",
        '-A KUBE-SERVICES -m comment --comment "Kubernetes service lb portal" -m set --match-set KUBE-LOAD-BALANCER '
        "dst,dst -j KUBE-LOAD-BALANCER",
        MARK_MASQ_CLUSTER,
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
        "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
        "-A KUBE-SERVICES -m set --match-set KUBE-LOAD-BALANCER dst,dst -j ACCEPT"]
    assert rules(node, "filter", "KUBE-PROXY-FIREWALL") == [
        '-A KUBE-PROXY-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port for load balancer '
        'with sourceRange" -m set --match-set KUBE-LOAD-BALANCER-FW dst,dst -j KUBE-SOURCE-RANGES-FIREWALL']
    assert rules(node, "filter", "KUBE-SOURCE-RANGES-FIREWALL") == [
        '-A KUBE-SOURCE-RANGES-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port + source '
        'cidr for packet filter purpose" -m set --match-set KUBE-LOAD-BALANCER-SOURCE-CIDR dst,dst,src -j RETURN',
        "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP"]
    assert rules(node, "filter", "KUBE-IPVS-OUT-FILTER") == [
        "-A KUBE-IPVS-OUT-FILTER -s 1.2.3.4/32 -m ipvs --vproto 6 --vaddr 1.2.3.4 --vport 80 -j DROP"]
    # Outside the range: dropped before IPVS; inside: balanced.
    r = node.receive(Packet.make("203.0.113.9", "1.2.3.4", "tcp", 40000, 80, tcp_flags=SYN), "eth0")
    assert (r.fate, r.hook) == ("dropped", "INPUT")
    r = node.receive(Packet.make("10.9.9.9", "1.2.3.4", "tcp", 40001, 80, tcp_flags=SYN), "eth0")
    assert (r.fate, r.packet.dst_str) == ("forwarded", "10.180.0.1")
    # The node itself is kept off the load balancer (KUBE-IPVS-OUT-FILTER after IPVS chose a server).
    r = node.send(Packet.make("0.0.0.0", "1.2.3.4", "tcp", 40002, 80, tcp_flags=SYN))
    assert r.fate == "dropped"


def test_load_balancer_source_range_holding_the_node_allows_it():
    node, proxier = setup()
    proxier.sync(objects(service("svc1", "10.20.30.41", type="LoadBalancer", nodePort=3001, lb="1.2.3.4",
                                 loadBalancerSourceRanges=["192.168.0.0/16"]),
                         endpoints("svc1", ("10.180.0.1", "node-b"))))
    assert members(node, "KUBE-LOAD-BALANCER-SOURCE-IP") == {"1.2.3.4,tcp:80,1.2.3.4"}
    assert rules(node, "filter", "KUBE-IPVS-OUT-FILTER") == []
    assert rules(node, "filter", "KUBE-SOURCE-RANGES-FIREWALL")[1] == (
        '-A KUBE-SOURCE-RANGES-FIREWALL -m comment --comment "Kubernetes service load balancer ip + port + source IP '
        'for packet filter purpose" -m set --match-set KUBE-LOAD-BALANCER-SOURCE-IP dst,dst,src -j RETURN')


def test_only_local_load_balancing():
    """TestOnlyLocalLoadBalancing: external virtual servers get the local endpoint only, the cluster IP
    both; the LB address is in KUBE-LOAD-BALANCER-LOCAL, which returns before the masquerade mark."""
    node, proxier = setup()
    proxier.sync(objects(service("svc1", "10.20.30.41", type="LoadBalancer", nodePort=3001, lb="1.2.3.4",
                                 externalTrafficPolicy="Local", healthCheckNodePort=30000),
                         endpoints("svc1", ("10.180.0.1", "node-a"), ("10.180.1.1", "other-node"))))
    lines = ipvsadm(node)
    assert lines[lines.index("TCP  1.2.3.4:80 rr") + 1:][:2] == [rs("10.180.0.1:80"), "TCP  10.0.1.1:3001 rr"]
    assert lines[lines.index("TCP  10.20.30.41:80 rr") + 1:][:2] == [rs("10.180.0.1:80"), rs("10.180.1.1:80")]
    assert members(node, "KUBE-LOAD-BALANCER-LOCAL") == {"1.2.3.4,tcp:80"}
    assert members(node, "KUBE-NODE-PORT-LOCAL-TCP") == {"3001"}
    assert members(node, "KUBE-HEALTH-CHECK-NODE-PORT") == {"30000"}
    assert rules(node, "nat", "KUBE-LOAD-BALANCER") == [
        '-A KUBE-LOAD-BALANCER -m comment --comment "Kubernetes service load balancer ip + port with '
        'externalTrafficPolicy=local" -m set --match-set KUBE-LOAD-BALANCER-LOCAL dst,dst -j RETURN',
        "-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ"]
    assert rules(node, "nat", "KUBE-NODE-PORT") == [
        '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port with externalTrafficPolicy=local" '
        "-m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN",
        '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" '
        "-m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ"]
    assert rules(node, "filter", "KUBE-NODE-PORT") == [
        '-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set '
        "KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT"]
    # An external client keeps its address to the local endpoint.
    r = node.receive(Packet.make("203.0.113.9", "192.168.0.2", "tcp", 40000, 3001, tcp_flags=SYN), "eth0")
    assert (r.fate, r.packet.src_str, r.packet.dst_str) == ("forwarded", "203.0.113.9", "10.180.0.1")


def test_only_local_without_local_endpoints_falls_back_to_cluster_endpoints():
    """Upstream (kubernetes#97081): external virtual servers use the cluster endpoints when no local one exists."""
    node, proxier = setup()
    proxier.sync(objects(service("svc1", "10.20.30.41", type="NodePort", nodePort=3001,
                                 externalTrafficPolicy="Local"),
                         endpoints("svc1", ("10.180.1.1", "other-node"))))
    lines = ipvsadm(node)
    assert lines[lines.index("TCP  192.168.0.2:3001 rr") + 1] == rs("10.180.1.1:80")


def test_external_ips():
    """TestExternalIPs / TestAcceptIPVSTraffic: external IPs in KUBE-EXTERNAL-IP, marked for masquerade and
    accepted from off the node or for a local destination; bound to kube-ipvs0 unless a node address."""
    node, proxier = setup()
    proxier.sync(objects(service("svc1", "10.20.30.41", externalIPs=["50.60.70.81", "192.168.0.2"]),
                         endpoints("svc1", ("10.180.0.1", "node-b"))))
    assert members(node, "KUBE-EXTERNAL-IP") == {"50.60.70.81,tcp:80", "192.168.0.2,tcp:80"}
    assert sorted(str(a) for a in node.interfaces["kube-ipvs0"].addresses) == ["10.20.30.41/32", "50.60.70.81/32"]
    head = ('-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for masquerade and filter '
            'purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst')
    assert rules(node, "nat", "KUBE-SERVICES")[2:5] == [
        f"{head} -j KUBE-MARK-MASQ",
        f"{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT",
        f"{head} -m addrtype --dst-type LOCAL -j ACCEPT"]
    assert "TCP  50.60.70.81:80 rr" in ipvsadm(node) and "TCP  192.168.0.2:80 rr" in ipvsadm(node)


def test_session_affinity_is_persistence():
    """TestSessionAffinity: ClientIP affinity is a persistent virtual server with the affinity timeout."""
    node, proxier = setup()
    proxier.sync(objects(service("svc1", "10.20.30.41", type="NodePort", nodePort=3001, sessionAffinity="ClientIP",
                                 sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10800}}),
                         endpoints("svc1", ("10.180.0.1", "node-b"), ("10.180.0.2", "node-b"))))
    heads = [line for line in ipvsadm(node) if not line.startswith("  ->")]
    assert heads == ["TCP  10.0.1.1:3001 rr persistent 10800", "TCP  10.20.30.41:80 rr persistent 10800",
                     "TCP  192.168.0.2:3001 rr persistent 10800"]
    # Every connection from one client goes to the same real server.
    dsts = {node.receive(Packet.make("10.0.1.5", "10.20.30.41", "tcp", 40000 + i, 80, tcp_flags=SYN),
                         "cni0").packet.dst_str for i in range(6)}
    assert len(dsts) == 1


def test_scheduler_and_timeouts_and_sysctls_from_the_configuration():
    node, proxier = setup(ipvs={"scheduler": "wlc", "strictARP": True, "tcpTimeout": "15m",
                                "tcpFinTimeout": "30s", "udpTimeout": "0s"})
    proxier.sync(objects(service("svc1", "10.20.30.41"), endpoints("svc1", ("10.180.0.1", "node-b"))))
    assert ipvsadm(node)[0] == "TCP  10.20.30.41:80 wlc"
    assert run_ipvsadm(["-L", "--timeout"], node.ipvs, node.now())[1] == "Timeout (tcp tcpfin udp): 900 30 300\n"
    for key, value in {"net.ipv4.vs.conntrack": "1", "net.ipv4.vs.expire_nodest_conn": "1",
                       "net.ipv4.vs.expire_quiescent_template": "1", "net.ipv4.ip_forward": "1",
                       "net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2"}.items():
        assert node.sysctls[key] == value, key


def test_ipvs_section_of_the_configuration_is_validated():
    cfg = ProxyConfig.from_dict({"mode": "ipvs", "ipvs": {"excludeCIDRs": ["10.99.0.0/16"], "scheduler": "sh"}})
    assert (cfg.ipvs_scheduler, cfg.ipvs_exclude_cidrs, cfg.ipvs_strict_arp) == ("sh", ["10.99.0.0/16"], False)
    with pytest.raises(ConfigError, match=r"KubeProxyIPVSConfiguration.ExcludeCIDRs\[0\]: Invalid value: "
                                          r'"10.99.0.0": must be a valid CIDR'):
        ProxyConfig.from_dict({"mode": "ipvs", "ipvs": {"excludeCIDRs": ["10.99.0.0"]}})
    with pytest.raises(ConfigError, match=r"KubeProxyIPVSConfiguration.Scheduler: Invalid value: \"fastest\": must be in "
                                          r"\[rr wrr lc wlc lblc lblcr sh dh sed nq \], blank means"):
        ProxyConfig.from_dict({"mode": "ipvs", "ipvs": {"scheduler": "fastest"}})


def test_ipv6_sets_names_and_virtual_servers():
    desc = {"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["fd00::2/64"]}]}
    node, proxier = setup(desc, family=6, clusterCIDR="fd00:10::/64")
    proxier.sync(objects(service("svc1", "fd00:20::41", type="NodePort", nodePort=3001, ipFamilies=["IPv6"]),
                         endpoints("svc1", ("fd00:10::5", "node-a"), family="IPv6")))
    assert ipvsadm(node) == ["TCP  [fd00:20::41]:80 rr", rs("[fd00:10::5]:80"),
                             "TCP  [fd00::2]:3001 rr", rs("[fd00:10::5]:80")]
    assert set_name("KUBE-LOAD-BALANCER-SOURCE-CIDR", 6) == "KUBE-6-LOAD-BALANCER-SOURCE-CID"
    assert members(node, "KUBE-6-CLUSTER-IP") == {"fd00:20::41,tcp:80"}
    assert members(node, "KUBE-6-LOOP-BACK") == {"fd00:10::5,tcp:80,fd00:10::5"}
    assert node.ipsets.get("KUBE-6-CLUSTER-IP").family == "inet6"
    assert rules(node, "nat", "KUBE-SERVICES", family=6)[0] == "-A KUBE-SERVICES -s ::1/128 -j RETURN"
    assert node.iptables_save(4, tables=["nat"]).count("-A ") == 0


def test_exclude_cidrs_keep_foreign_virtual_servers():
    """cleanLegacyService: virtual servers nobody asks for are deleted, except in excludeCIDRs."""
    node, proxier = setup(ipvs={"excludeCIDRs": ["10.99.0.0/16"]})
    for line in ("-A -t 10.99.0.1:80 -s rr", "-A -t 10.98.0.1:80 -s rr"):
        assert run_ipvsadm(line.split(), node.ipvs, node.now())[0] == 0
    proxier.sync(objects(service("svc1", "10.20.30.41")))
    assert [line for line in ipvsadm(node)] == ["TCP  10.20.30.41:80 rr", "TCP  10.99.0.1:80 rr"]


# ---- graceful termination ------------------------------------------------------------------------
def test_removed_real_server_with_connections_terminates_gracefully():
    node, proxier = setup()
    svc = service("svc1", "10.20.30.41")
    proxier.sync(objects(svc, endpoints("svc1", ("10.180.0.1", "node-b"))))
    r = node.receive(Packet.make("10.0.1.5", "10.20.30.41", "tcp", 40000, 80, tcp_flags=SYN), "cni0")
    assert r.packet.dst_str == "10.180.0.1"
    proxier.sync(objects(svc, endpoints("svc1", ("10.180.0.2", "node-b"))))
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", rs("10.180.0.1:80", weight=0, inact=1), rs("10.180.0.2:80")]
    # New connections go to the new server only; the old one keeps its connection.
    r = node.receive(Packet.make("10.0.1.6", "10.20.30.41", "tcp", 40001, 80, tcp_flags=SYN), "cni0")
    assert r.packet.dst_str == "10.180.0.2"
    assert proxier.check_graceful() == []
    node.clock += 121           # the SYN_RECV connections expire
    assert proxier.check_graceful() == ["10.20.30.41:80/TCP/10.180.0.1:80"]
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", rs("10.180.0.2:80")]


def test_removed_real_server_coming_back_is_added_afresh():
    node, proxier = setup()
    svc = service("svc1", "10.20.30.41")
    proxier.sync(objects(svc, endpoints("svc1", ("10.180.0.1", "node-b"))))
    node.receive(Packet.make("10.0.1.5", "10.20.30.41", "tcp", 40000, 80, tcp_flags=SYN), "cni0")
    proxier.sync(objects(svc, endpoints("svc1")))
    assert ipvsadm(node)[1] == rs("10.180.0.1:80", weight=0, inact=1)
    proxier.sync(objects(svc, endpoints("svc1", ("10.180.0.1", "node-b"))))
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", rs("10.180.0.1:80")]
    assert not proxier.graceful.pending


def test_udp_real_servers_are_deleted_at_once():
    """No graceful termination for UDP: the server goes; its flow's next packet is dropped and the flow
    forgotten (expire_nodest_conn, which the proxier sets), and the one after goes to the new server."""
    node, proxier = setup()
    svc = service("dns", "10.20.30.53", port=53, proto="UDP")
    proxier.sync(objects(svc, endpoints("dns", ("10.180.0.1", "node-b"), port=53, proto="UDP")))
    node.receive(Packet.make("10.0.1.5", "10.20.30.53", "udp", 40000, 53), "cni0")
    proxier.sync(objects(svc, endpoints("dns", ("10.180.0.2", "node-b"), port=53, proto="UDP")))
    assert ipvsadm(node) == ["UDP  10.20.30.53:53 rr", rs("10.180.0.2:53")]
    r = node.receive(Packet.make("10.0.1.5", "10.20.30.53", "udp", 40000, 53), "cni0")
    assert (r.fate, r.hook) == ("dropped", "INPUT")
    r = node.receive(Packet.make("10.0.1.5", "10.20.30.53", "udp", 40000, 53), "cni0")
    assert (r.fate, r.packet.dst_str) == ("forwarded", "10.180.0.2")


def test_terminating_endpoints_serve_only_without_ready_ones():
    node, proxier = setup()
    term = {"ready": False, "serving": True, "terminating": True}
    svc = service("svc1", "10.20.30.41")
    proxier.sync(objects(svc, endpoints("svc1", ("10.180.0.1", "node-b"), conditions=term)))
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", rs("10.180.0.1:80")]
    mixed = endpoints("svc1", ("10.180.0.1", "node-b"), conditions=term)
    mixed["endpoints"].append({"addresses": ["10.180.0.2"], "nodeName": "node-b", "conditions": {"ready": True}})
    proxier.sync(objects(svc, mixed))
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", rs("10.180.0.2:80")]


# ---- partial syncs -------------------------------------------------------------------------------
def many(n: int) -> list[dict]:
    docs = []
    for i in range(n):
        docs.append(service(f"s{i}", f"10.20.{i // 250}.{i % 250 + 1}", type="NodePort", nodePort=30000 + i))
        docs.append(endpoints(f"s{i}", (f"10.180.0.{i % 250 + 1}", "node-a"), (f"10.180.1.{i % 250 + 1}", "node-b")))
    return docs


def snapshot(node: Node) -> tuple[list[str], dict[str, set[str]], str, list[str]]:
    save = "\n".join(line for t in ("nat", "filter") for line in node.iptables_save(tables=[t]).splitlines()
                     if not line.startswith("#"))
    return ipvsadm(node), nonempty_sets(node), save, sorted(str(a) for a in node.interfaces["kube-ipvs0"].addresses)


@pytest.mark.parametrize("size", [5, 200])
def test_partial_sync_touches_only_the_changed_service(size):
    node, proxier = setup()
    docs = many(size)
    assert proxier.sync(objects(*docs)).full and len(node.ipvs.services) == 3 * size
    others = {k: v for k, v in node.ipvs.services.items()}
    calls: list[str] = []
    backend = proxier.backend
    for name in ("ipvs_add_service", "ipvs_update_service", "ipvs_delete_service", "ipvs_add_real_servers",
                 "ipvs_delete_real_server", "ipvs_update_real_server", "ipset_restore", "restore", "bind_addresses"):
        orig = getattr(backend, name)
        setattr(backend, name, lambda *a, _n=name, _o=orig, **k: (calls.append(_n), _o(*a, **k))[1])
    docs[1] = endpoints("s0", ("10.180.0.1", "node-a"), ("10.180.9.9", "node-b"))
    second = proxier.sync(objects(*docs))
    assert not second.full and not second.error and second.changed_services == {"ns1/s0"}
    # Three virtual servers (cluster IP, two node addresses) get the new server; the old one goes at once
    # (no connections); no set, rule or address changes.
    assert sorted(calls) == ["ipvs_add_real_servers"] * 3 + ["ipvs_delete_real_server"] * 3
    assert all(node.ipvs.services[k] is v for k, v in others.items())
    _, fresh = setup()
    fresh.sync(objects(*docs))
    assert snapshot(node) == snapshot(fresh.backend.node)


def test_partial_syncs_end_like_a_full_sync():
    node, proxier = setup()
    docs = many(4)
    proxier.sync(objects(*docs))
    steps = [
        (0, service("s0", "10.20.0.1", type="LoadBalancer", nodePort=30000, lb="1.2.3.4",
                    externalTrafficPolicy="Local", healthCheckNodePort=31000)),
        (2, service("s1", "10.20.0.2", sessionAffinity="ClientIP")),
        (3, endpoints("s1")),
        (4, service("s2", "10.20.0.99", externalIPs=["50.60.70.80"])),
    ]
    for index, doc in steps:
        docs[index] = doc
        result = proxier.sync(objects(*docs))
        assert not result.full and not result.error
        _, fresh = setup()
        fresh.sync(objects(*docs))
        assert snapshot(node) == snapshot(fresh.backend.node), index
    # A deleted Service takes its virtual servers, members and address with it.
    del docs[6:8]
    proxier.sync(objects(*docs))
    _, fresh = setup()
    fresh.sync(objects(*docs))
    assert snapshot(node) == snapshot(fresh.backend.node)
    assert "10.20.0.4/32" not in snapshot(node)[3]


def test_a_failed_sync_is_followed_by_a_full_one():
    node, proxier = setup()
    docs = many(2)
    proxier.sync(objects(*docs))
    backend = proxier.backend
    orig = backend.ipvs_add_real_servers

    def broken(*a: object, **k: object) -> None:
        from kproxy.backends import BackendError

        raise BackendError("Memory allocation problem")

    backend.ipvs_add_real_servers = broken
    docs[1] = endpoints("s0", ("10.180.0.7", "node-b"))
    failed = proxier.sync(objects(*docs))
    assert failed.error == "Memory allocation problem" and proxier.need_full
    backend.ipvs_add_real_servers = orig
    again = proxier.sync(objects(*docs))
    assert again.full and not again.error
    assert rs("10.180.0.7:80") in ipvsadm(node)


# ---- packets ------------------------------------------------------------------------------------
def reply_to(p: Packet) -> Packet:
    return Packet.make(p.dst_str, p.src_str, "tcp", p.dport, p.sport, tcp_flags=SYN | ACK)


def test_packets_cluster_ip_node_port_and_hairpin():
    node, proxier = setup()
    proxier.sync(objects(service("np", "10.20.30.60", nodePort=30080, type="NodePort"),
                         endpoints("np", ("10.0.2.30", "node-b")),
                         service("self", "10.20.30.61"), endpoints("self", ("10.0.1.5", "node-a"))))
    # Pod to a ClusterIP: IPVS picks the server; the pod's address is kept (it is in the cluster CIDR).
    r = node.receive(Packet.make("10.0.1.7", "10.20.30.60", "tcp", 40001, 80, tcp_flags=SYN), "cni0", trace=True)
    assert (r.fate, r.out_dev, r.packet.dst_str, r.packet.src_str) == ("forwarded", "eth0", "10.0.2.30", "10.0.1.7")
    assert any("IPVS: TCP 10.20.30.60:80 -> 10.0.2.30:80 (rr, Masq)" in str(e.as_dict()) for e in r.trace.events)
    # The reply goes back as the virtual service.
    back = node.receive(Packet.make("10.0.2.30", "10.0.1.7", "tcp", 80, 40001, tcp_flags=SYN | ACK), "eth0")
    assert (back.fate, back.packet.src_str, back.packet.sport) == ("forwarded", "10.20.30.60", 80)
    # From outside the cluster to the ClusterIP: masqueraded (KUBE-CLUSTER-IP ! -s cluster CIDR).
    r = node.receive(Packet.make("192.168.0.77", "10.20.30.60", "tcp", 40002, 80, tcp_flags=SYN), "eth0")
    assert (r.fate, r.packet.dst_str, r.packet.src_str) == ("forwarded", "10.0.2.30", "192.168.0.2")
    # External client to the NodePort: masqueraded to the node's address (KUBE-NODE-PORT-TCP); the
    # answer goes back to the client from the NodePort.
    r = node.receive(Packet.make("203.0.113.9", "192.168.0.2", "tcp", 40003, 30080, tcp_flags=SYN), "eth0")
    assert (r.fate, r.packet.dst_str, r.packet.src_str) == ("forwarded", "10.0.2.30", "192.168.0.2")
    back = node.receive(reply_to(r.packet), "eth0")
    assert (back.fate, back.packet.src_str, back.packet.sport, back.packet.dst_str, back.packet.dport) == \
        ("forwarded", "192.168.0.2", 30080, "203.0.113.9", 40003)
    # The node itself to a ClusterIP: scheduled at LOCAL_OUT, masqueraded; the answer comes from the VIP.
    r = node.send(Packet.make("0.0.0.0", "10.20.30.60", "tcp", 40006, 80, tcp_flags=SYN), trace=True)
    assert (r.fate, r.packet.dst_str, r.packet.src_str) == ("forwarded", "10.0.2.30", "192.168.0.2")
    assert [e.hook for e in r.trace.of_kind("ipvs")] == ["OUTPUT"]
    back = node.receive(reply_to(r.packet), "eth0")
    assert (back.fate, back.packet.src_str, back.packet.sport, back.packet.dport) == ("delivered", "10.20.30.60", 80,
                                                                                       40006)
    # Hairpin: a pod to its own Service lands on itself, masqueraded (KUBE-LOOP-BACK) so it answers via the node.
    r = node.receive(Packet.make("10.0.1.5", "10.20.30.61", "tcp", 40004, 80, tcp_flags=SYN), "cni0")
    assert (r.fate, r.out_dev, r.packet.dst_str, r.packet.src_str) == ("forwarded", "cni0", "10.0.1.5", "10.0.1.1")
    # The node's own ports are not reachable on service addresses (KUBE-IPVS-FILTER).
    r = node.receive(Packet.make("10.0.1.7", "10.20.30.60", "tcp", 40005, 22, tcp_flags=SYN), "cni0")
    assert (r.fate, r.hook) == ("rejected", "INPUT")


# ---- the mode at start ---------------------------------------------------------------------------
def test_mode_is_registered_and_refuses_a_backend_without_ipvs():
    assert proxier_class("ipvs") is IpvsProxier

    class NoIpvs(EmulatedBackend):
        def ipvs_unavailable(self) -> str:
            return "this kernel has no IPVS"

    node = Node.from_description(NODE)
    before = node.describe()
    with pytest.raises(ModeUnavailable, match="proxy mode 'ipvs': this kernel has no IPVS"):
        IpvsProxier(ProxyConfig.from_dict({"mode": "ipvs"}), NoIpvs(node), ["192.168.0.2"])
    assert node.describe() == before and not node.ipsets.sets


# ---- the command line ----------------------------------------------------------------------------
def test_proxy_once_in_ipvs_mode_on_the_emulated_node(tmp_path):
    from pathlib import Path

    from click.testing import CliRunner

    import kproxy.cli.proxy_cmd  # noqa: F401
    from kproxy.cli.main import cli

    examples = Path(__file__).resolve().parent.parent / "examples"
    state = str(tmp_path / "node.json")

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(cli, ["--node", state, *args])

    assert run("node", "init", "--from", str(examples / "node.yaml")).exit_code == 0
    for _ in range(2):          # the second run finds everything in place and leaves it so
        res = run("proxy", "--mode", "ipvs", "--once", "--no-serve", "--hostname-override", "worker-1",
                  "--manifests", str(examples / "manifests.yaml"))
        assert res.exit_code == 0, res.output
        assert "sync full" in res.output and "ok" in res.output
        listing = run("ipvsadm", "-Ln").output
        assert "TCP  10.96.0.1:443 rr\n  -> 192.168.1.5:6443             Masq    1      0          0" in listing
        assert listing.count("-> ") == 15      # the header line and 14 real servers
        assert run("ipset", "list", "KUBE-CLUSTER-IP").output.count(",tcp:") == 4
        save = run("iptables-save", "-t", "nat").output
        assert "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT" in save
        assert save.count("-A PREROUTING") == 1


def test_cleanup_removes_the_ipvs_mode_and_leaves_a_users_ipvs_ipsets_and_rules(tmp_path):
    from pathlib import Path

    from click.testing import CliRunner

    import kproxy.cli.proxy_cmd  # noqa: F401
    from kproxy.cli.main import cli

    examples = Path(__file__).resolve().parent.parent / "examples"
    state = str(tmp_path / "node.db")

    def run(*args: str):  # type: ignore[no-untyped-def]
        res = CliRunner().invoke(cli, ["--node", state, *args])
        assert res.exit_code == 0, (args, res.output)
        return res.output

    run("node", "init", "--from", str(examples / "node.yaml"))
    run("proxy", "--mode", "ipvs", "--once", "--no-serve", "--hostname-override", "worker-1",
        "--manifests", str(examples / "manifests.yaml"))
    run("ipvsadm", "-A", "-t", "192.168.1.10:8443", "-s", "wrr")        # a user's own IPVS service,
    run("ipset", "create", "mine", "hash:ip")                            # ipset and rule
    run("iptables", "-A", "INPUT", "-m", "set", "--match-set", "mine", "src", "-j", "DROP")
    ours = run("ipvsadm", "-Ln").count("TCP  ") + run("ipvsadm", "-Ln").count("UDP  ") - 1
    assert ours >= 3 and "kube-ipvs0" in run("node", "show")      # cluster IPs and a NodePort among them
    assert run("ipset", "list", "KUBE-NODE-PORT-TCP").endswith("Members:\n30080\n")
    out = run("cleanup")
    assert f"{ours} IPVS virtual servers, 1 devices, {len(IPSETS)} ipsets" in out
    assert run("ipvsadm", "-Ln").count("TCP  ") == 1 and "192.168.1.10:8443 wrr" in run("ipvsadm", "-Ln")
    assert run("ipset", "list", "-n").split() == ["mine"]
    assert "kube-ipvs0" not in run("node", "show")
    saved = run("iptables-save")
    assert "KUBE-" not in saved and "-A INPUT -m set --match-set mine src -j DROP" in saved
    assert "0 IPVS virtual servers, 0 devices, 0 ipsets" in run("cleanup")     # nothing left to do


def test_dual_stack_proxiers_share_the_node_and_leave_each_other_alone():
    desc = {"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24", "fd00::2/64"]}]}
    node = Node.from_description(desc)
    node.clock = 1000.0
    cfg = ProxyConfig.from_dict({"mode": "ipvs", "clusterCIDR": "10.0.0.0/16,fd00:10::/64", "hostnameOverride": "node-a"})
    v4 = IpvsProxier(cfg, EmulatedBackend(node, 4), ["192.168.0.2"], family=4)
    v6 = IpvsProxier(cfg, EmulatedBackend(node, 6), ["fd00::2"], family=6)
    svc = service("ds", "10.20.30.41", clusterIPs=["10.20.30.41", "fd00:20::41"], ipFamilies=["IPv4", "IPv6"])
    docs = [svc, endpoints("ds", ("10.0.1.5", "node-a")), endpoints("ds", ("fd00:10::5", "node-a"), family="IPv6")]
    docs[2]["metadata"]["name"] = "ds-y"
    for proxier in (v4, v6, v4):          # the second IPv4 sync must not remove what the IPv6 one made
        assert not proxier.sync(objects(*docs), force_full=True).error
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", rs("10.0.1.5:80"),
                             "TCP  [fd00:20::41]:80 rr", rs("[fd00:10::5]:80")]
    assert sorted(str(a) for a in node.interfaces["kube-ipvs0"].addresses) == ["10.20.30.41/32", "fd00:20::41/128"]
    assert members(node, "KUBE-IPVS-IPS") == {"10.20.30.41"} and members(node, "KUBE-6-IPVS-IPS") == {"fd00:20::41"}
    assert rules(node, "nat", "KUBE-SERVICES", family=6)[0] == "-A KUBE-SERVICES -s ::1/128 -j RETURN"


def test_a_new_node_address_gets_node_port_virtual_servers():
    from kproxy.node import Address, Interface

    node, proxier = setup()
    docs = [service("svc1", "10.20.30.41", nodePort=3001, type="NodePort"), endpoints("svc1", ("10.180.0.1", "node-b"))]
    proxier.sync(objects(*docs))
    node.add_interface(Interface("eth1", [Address.parse("172.16.0.2/24")]))
    result = proxier.sync(objects(*docs))
    assert result.full and not result.error
    assert "TCP  172.16.0.2:3001 rr" in ipvsadm(node)


def test_internal_traffic_policy_local():
    """TestInternalTrafficPolicy: the cluster IP's real servers are the local endpoints; with none,
    the virtual server has none (and the Service counts as having no local endpoints)."""
    from kproxy.proxy.metrics import ProxyMetrics

    node = Node.from_description(NODE)
    metrics = ProxyMetrics()
    proxier = IpvsProxier(ProxyConfig.from_dict({"mode": "ipvs", "clusterCIDR": "10.0.0.0/16",
                                                 "hostnameOverride": "node-a"}),
                          EmulatedBackend(node), ["192.168.0.2"], metrics=metrics)
    svc = service("svc1", "10.20.30.41", internalTrafficPolicy="Local")
    proxier.sync(objects(svc, endpoints("svc1", ("10.180.0.1", "node-a"), ("10.180.1.1", "node-b"))))
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", rs("10.180.0.1:80")]
    result = proxier.sync(objects(svc, endpoints("svc1", ("10.180.1.1", "node-b"))))
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr"]
    assert not result.full
    text = metrics.text().decode()
    assert 'kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="internal"} 1.0' in text


def test_a_restarted_proxier_takes_over_what_is_there():
    """The first sync of a new proxier reads the virtual servers back, resets weights (a server left at
    weight 0 by a terminated kube-proxy) and removes what no Service wants."""
    node, proxier = setup()
    docs = [service("svc1", "10.20.30.41"), endpoints("svc1", ("10.180.0.1", "node-b"), ("10.180.0.2", "node-b"))]
    proxier.sync(objects(*docs))
    assert run_ipvsadm(["-e", "-t", "10.20.30.41:80", "-r", "10.180.0.1:80", "-m", "-w", "0"], node.ipvs,
                       node.now())[0] == 0
    assert run_ipvsadm(["-A", "-t", "10.20.30.99:80", "-s", "rr"], node.ipvs, node.now())[0] == 0
    again = IpvsProxier(proxier.cfg, EmulatedBackend(node), ["192.168.0.2", "10.0.1.1"])
    assert not again.sync(objects(*docs)).error
    assert ipvsadm(node) == ["TCP  10.20.30.41:80 rr", rs("10.180.0.1:80"), rs("10.180.0.2:80")]
