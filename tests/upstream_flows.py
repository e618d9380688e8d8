"""Upstream kube-proxy's packet-flow tests (its ``runPacketFlowTests``) on the emulated node, for every mode.

Upstream traces a packet through the rules it expects: a source, a destination, the endpoints the
packet may be DNATed to (``"10.180.0.1:80, 10.180.2.1:80"``) or ``REJECT``/``DROP``/``ACCEPT``, and
whether it is masqueraded. Here the same packet goes through the emulated node's real packet path on
upstream's fake node: a pod's packet arrives on ``cni0``, an outside client's on ``eth0``, the node's
own leaves a local process (OUTPUT). Each flow is sent as several new connections, so every endpoint
a random choice can make shows up; the masquerade decision is the SNAT the mode's masquerade rule made
in POSTROUTING.

Upstream's iptables and nftables proxier tests repeat many scenarios (traffic policies, terminating
endpoints, node ports, masquerading...); they are written once here as ``UpstreamScenarios``, which
each mode's test file runs with its own proxier factory and what its mode does differently.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import pytest
from tests.test_proxier_nftables import ep, objects, port, slice_, svc

from kproxy.k8s.manifests import Objects
from kproxy.node import Node
from kproxy.packet import Packet
from kproxy.proxy.metrics import ProxyMetrics
from kproxy.proxy.proxier import SyncResult

# Upstream's fake node: lo (127.0.0.1/8, ::1) and eth0 with these addresses. Pods (10.0.0.0/8,
# fd00:10::/64 and the test's fd00:10:180::/48 endpoints) sit behind cni0; everything else is
# reached over eth0.
NODE_IP, NODE_IP_ALT, NODE_IPV6, NODE_IPV6_ALT = "192.168.0.2", "192.168.1.2", "2001:db8::1", "2001:db8:1::2"
EXTERNAL_CLIENT, EXTERNAL_CLIENT_BLOCKED = "203.0.113.2", "203.0.113.130"
UPSTREAM_NODE = {
    "name": "test-node",
    "interfaces": [
        {"name": "eth0", "addresses": ["192.168.0.2/24", "192.168.1.2/24", "192.168.99.11/24",
                                       "2001:db8::1/64", "2001:db8:1::2/64"]},
        {"name": "cni0", "addresses": ["10.0.0.1/8", "fd00:10::1/64"]},
    ],
    "routes": ["default via 192.168.0.1 dev eth0", "default via 2001:db8::fffe dev eth0",
               "fd00:10:180::/48 dev cni0"],
}
NODE_IPS = ["127.0.0.1", "::1", NODE_IP, NODE_IP_ALT, "192.168.99.11", NODE_IPV6, NODE_IPV6_ALT]
PODS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00:10::/48")]

# Where each mode's masquerade rule sits, and how the trace shows it firing.
MASQUERADE = {"nftables": ("masquerading", "masquerade"), "iptables": ("KUBE-POSTROUTING", "-A KUBE-POSTROUTING")}


@dataclass
class Flow:
    """One of upstream's packetFlowTest cases."""

    name: str
    source: str
    dest: str
    port: int
    output: str            # "ip:port, ip:port" (any order), "REJECT", "DROP", "ACCEPT", or "" (not NATed)
    masq: bool = False
    protocol: str = "tcp"


CONNECTIONS = 24        # new connections per flow: enough for the random choice to pick each of 3 endpoints
SOURCE_PORTS = itertools.count(10000)       # every connection its own tuple: no NAT clash remaps a port


def trace_flow(node: Node, flow: Flow, mode: str = "nftables") -> tuple[set[str], set[bool]]:
    """The outcomes and masquerade decisions of new connections following ``flow``."""
    outputs: set[str] = set()
    masq: set[bool] = set()
    masq_chain, masq_text = MASQUERADE[mode]
    src = ipaddress.ip_address(flow.source)
    for _ in range(CONNECTIONS):
        pkt = Packet.make(flow.source, flow.dest, flow.protocol, next(SOURCE_PORTS), flow.port)
        if flow.source in NODE_IPS:
            res = node.send(pkt, trace=True)
        else:
            res = node.receive(pkt, "cni0" if any(src in n for n in PODS) else "eth0", trace=True)
        assert res.trace is not None
        nats = [e for e in res.trace.of_kind("nat")]
        if res.fate == "rejected":
            outputs.add("REJECT")
        elif res.fate == "dropped":
            outputs.add("DROP")
        elif any(e.text.startswith("DNAT") for e in nats):
            p = res.packet
            host = f"[{p.dst_str}]" if p.family == 6 else p.dst_str
            outputs.add(f"{host}:{p.dport}")
        elif mode == "iptables" and any(e.kind == "rule" and e.table == "filter" and e.verdict == "ACCEPT"
                                        and e.chain.startswith("KUBE-") for e in res.trace.events):
            outputs.add("ACCEPT")      # upstream's tracer reports a kube-proxy filter ACCEPT
        else:
            outputs.add("")
        masq.add(any(e.kind == "rule" and e.chain == masq_chain and masq_text in e.text and "MASQUERADE" in
                     e.text.upper() for e in res.trace.events) and any(e.text.startswith("SNAT") for e in nats))
    return outputs, masq


def run_flows(node: Node, flows: list[Flow], mode: str = "nftables") -> None:
    failures = []
    for flow in flows:
        outputs, masq = trace_flow(node, flow, mode)
        want = set(flow.output.split(", ")) if flow.output else {""}
        if outputs != want or (flow.output not in ("REJECT", "DROP", "ACCEPT") and masq != {flow.masq}):
            failures.append(f"{flow.name}: {flow.source} -> {flow.dest}:{flow.port}/{flow.protocol}: "
                            f"got {sorted(outputs)} masq {sorted(masq)}, upstream expects {flow.output!r} "
                            f"masq {flow.masq}")
    assert not failures, "\n".join(failures)


# ---- the scenarios both modes' upstream tests run ------------------------------------------------------
P80 = [("p80", 80, "TCP")]
UNNAMED = [("", 80, "TCP")]


class UpstreamProxier(Protocol):
    """What the scenarios use of a proxier: its sync and its metrics."""

    metrics: ProxyMetrics

    def sync(self, objs: Objects, force_full: bool = False) -> SyncResult: ...


def sync(proxier: UpstreamProxier, objs: Objects, force: bool = False) -> SyncResult:
    """A sync that must succeed."""
    result = proxier.sync(objs, force)
    assert not result.error, result.error
    return result


def lb(ns: str, name: str, cluster_ip: str, ports: list[dict[str, Any]], ingress: list[str], **spec: Any
       ) -> dict[str, Any]:
    return svc(ns, name, cluster_ip, ports, "LoadBalancer", lb=ingress, **spec)


def delete_slices(objs: Objects, *keys: str) -> None:
    """EndpointSlices deleted after a sync, as the watch delivers it."""
    if objs.dirty is None:
        objs.dirty = set()
    for key in keys:
        objs.delete_slice(key)


def cond(ready: bool, serving: bool, terminating: bool) -> dict[str, bool]:
    return {"ready": ready, "serving": serving, "terminating": terminating}


READY, SERVING_TERMINATING, TERMINATING = cond(True, True, False), cond(False, True, True), cond(False, False, True)
Endpoints = list[tuple[str, str, dict[str, bool]]]      # address, node, conditions
TERMINATING_LOCAL: dict[str, Endpoints] = {
    "ready endpoints exist": [("10.0.1.1", "test-node", READY), ("10.0.1.2", "test-node", READY),
                              ("10.0.1.3", "test-node", SERVING_TERMINATING), ("10.0.1.4", "test-node", TERMINATING),
                              ("10.0.1.5", "node-1", READY)],
    "only terminating endpoints exist": [("10.0.1.2", "test-node", SERVING_TERMINATING),
                                         ("10.0.1.3", "test-node", SERVING_TERMINATING),
                                         ("10.0.1.4", "test-node", TERMINATING), ("10.0.1.5", "node-1", READY)],
    "terminating endpoints on remote node": [("10.0.1.5", "node-1", SERVING_TERMINATING)],
    "no usable endpoints on any node": [("10.0.1.5", "test-node", TERMINATING), ("10.0.1.5", "node-1", TERMINATING)],
}
# Upstream's Cluster-policy variant places some endpoints on other nodes.
TERMINATING_CLUSTER: dict[str, Endpoints] = {
    "ready endpoints exist": [("10.0.1.1", "test-node", READY), ("10.0.1.2", "test-node", READY),
                              ("10.0.1.3", "another-node", SERVING_TERMINATING),
                              ("10.0.1.4", "another-node", TERMINATING), ("10.0.1.5", "another-node", READY)],
    "only terminating endpoints exist": [("10.0.1.2", "test-node", SERVING_TERMINATING),
                                         ("10.0.1.3", "test-node", SERVING_TERMINATING),
                                         ("10.0.1.4", "another-node", TERMINATING),
                                         ("10.0.1.5", "another-node", SERVING_TERMINATING)],
    "terminating endpoints on remote node": [("10.0.1.5", "node-1", SERVING_TERMINATING)],
    "no usable endpoints on any node": [("10.0.1.5", "test-node", TERMINATING), ("10.0.1.5", "node-1", TERMINATING)],
}

# TestNoEndpointsMetric (all three modes): the policies, the nodes of three endpoints, and how many
# Services each gauge counts as having no local endpoint.
NO_ENDPOINTS_METRIC = pytest.mark.parametrize(("itp", "etp", "nodes", "internal", "external"), [
    ("Local", "", ["test-node", "node1", "node2"], 0, 0),
    ("", "Local", ["test-node", "node1", "node2"], 0, 0),
    ("Local", "Local", ["test-node", "node1", "node2"], 0, 0),
    ("Local", "", ["node0", "node1", "node2"], 1, 0),
    ("", "Local", ["node0", "node1", "node2"], 0, 1),
    ("Local", "Local", ["node0", "node1", "node2"], 1, 1),
    ("Local", "Local", [], 0, 0),
], ids=["internalTrafficPolicy is set and there are local endpoints",
        "externalTrafficPolicy is set and there are local endpoints",
        "both policies are set and there are local endpoints",
        "internalTrafficPolicy is set and there are no local endpoints",
        "externalTrafficPolicy is set and there are no local endpoints",
        "both policies are set and there are no local endpoints",
        "both policies are set and there are no endpoints at all"])


@dataclass(frozen=True)
class NodePortCase:
    """TestNodePorts' addresses for one family: a NodePort Service with a remote and a local endpoint."""

    family: int
    svc_ip: str
    endpoints: tuple[str, str]
    node_ip: str
    pod: str
    client: str
    alt: str            # the node's secondary address
    lo: str

    def objects(self) -> Objects:
        remote, local = self.endpoints
        return objects(svc("ns1", "svc1", self.svc_ip, [port("p80", 80, node_port=3001)], "NodePort"),
                       slice_("ns1", "svc1", [ep(remote), ep(local, "test-node")], P80, family=f"IPv{self.family}"))

    @property
    def output(self) -> str:
        """Both endpoints, as a flow's output."""
        return ", ".join(f"[{ip}]:80" if self.family == 6 else f"{ip}:80" for ip in self.endpoints)

    def flows(self, allow_alt: bool, localhost: Flow | None = None) -> list[Flow]:
        """Upstream's flows; ``localhost``, the mode's own case of 127.0.0.1 or ::1 to the NodePort."""
        out = self.output
        return [
            Flow("pod to cluster IP", self.pod, self.svc_ip, 80, out),
            Flow("external to nodePort", self.client, self.node_ip, 3001, out, masq=True),
            Flow("node to nodePort", self.node_ip, self.node_ip, 3001, out, masq=True),
            *([localhost] if localhost else []),
            Flow("external to nodePort on secondary IP", self.client, self.alt, 3001, out, masq=True) if allow_alt
            else Flow("secondary nodeIP ignores NodePorts", self.client, self.alt, 3001, ""),
        ]


NODE_PORT_CASES = {
    4: NodePortCase(4, "172.30.0.41", ("10.180.0.1", "10.180.2.1"), NODE_IP, "10.0.0.2", EXTERNAL_CLIENT, NODE_IP_ALT,
                    "127.0.0.1"),
    6: NodePortCase(6, "fd00:172:30::41", ("fd00:10:180::1", "fd00:10:180::2:1"), NODE_IPV6, "fd00:10::2",
                    "2600:5200::1", NODE_IPV6_ALT, "::1"),
}


def etp_objects(policy: str) -> Objects:
    return objects(
        lb("ns1", "svc1", "172.30.0.41", [port("p80", 80, node_port=3001)], ["1.2.3.4"], externalIPs=["192.168.99.11"],
           externalTrafficPolicy=policy, **({"healthCheckNodePort": 30000} if policy == "Local" else {})),
        slice_("ns1", "svc1", [ep("10.180.0.1"), ep("10.180.2.1", "test-node")], P80))


def masquerade_objects() -> Objects:
    return objects(
        lb("ns1", "svc1", "172.30.0.41", [port("p80", 80, node_port=3001)], ["1.2.3.4"], healthCheckNodePort=30001),
        lb("ns2", "svc2", "172.30.0.42", [port("p80", 80, node_port=3002)], ["5.6.7.8"], healthCheckNodePort=30002,
           externalTrafficPolicy="Local"),
        lb("ns3", "svc3", "172.30.0.43", [port("p80", 80, node_port=3003)], ["9.10.11.12"],
           healthCheckNodePort=30003, internalTrafficPolicy="Local"),
        *(slice_(f"ns{i}", f"svc{i}", [ep(f"10.180.0.{i}", "test-node"), ep(f"10.180.1.{i}", "remote")], P80)
          for i in (1, 2, 3)))


def masquerade_flows(localhost: bool) -> list[Flow]:
    """Upstream's base expectations (a working local-traffic detector, no masqueradeAll); with
    ``localhost``, the localhost NodePort cases of a mode that accepts them."""
    a, b, c = "10.180.0.1:80, 10.180.1.1:80", "10.180.0.2:80, 10.180.1.2:80", "10.180.0.3:80, 10.180.1.3:80"
    pod, ext, lo = "10.0.0.2", EXTERNAL_CLIENT, "127.0.0.1"

    def local(*flow: Any) -> list[Flow]:
        return [Flow(*flow)] if localhost else []

    return [
        Flow("pod to ClusterIP", pod, "172.30.0.41", 80, a, False),
        Flow("pod to NodePort", pod, NODE_IP, 3001, a, True),
        Flow("pod to LB", pod, "1.2.3.4", 80, a, True),
        Flow("node to ClusterIP", NODE_IP, "172.30.0.41", 80, a, True),
        Flow("node to NodePort", NODE_IP, NODE_IP, 3001, a, True),
        *local("localhost to NodePort", lo, lo, 3001, a, True),
        Flow("node to LB", NODE_IP, "1.2.3.4", 80, a, True),
        Flow("external to ClusterIP", ext, "172.30.0.41", 80, a, True),
        Flow("external to NodePort", ext, NODE_IP, 3001, a, True),
        Flow("external to LB", ext, "1.2.3.4", 80, a, True),
        Flow("pod to ClusterIP with eTP:Local", pod, "172.30.0.42", 80, b, False),
        Flow("pod to NodePort with eTP:Local", pod, NODE_IP, 3002, b, False),
        Flow("pod to LB with eTP:Local", pod, "5.6.7.8", 80, b, False),
        Flow("node to ClusterIP with eTP:Local", NODE_IP, "172.30.0.42", 80, b, True),
        Flow("node to NodePort with eTP:Local", NODE_IP, NODE_IP, 3001, a, True),
        *local("localhost to NodePort with eTP:Local", lo, lo, 3002, b, True),
        Flow("node to LB with eTP:Local", NODE_IP, "5.6.7.8", 80, b, True),
        Flow("external to ClusterIP with eTP:Local", ext, "172.30.0.42", 80, b, True),
        Flow("external to NodePort with eTP:Local", ext, NODE_IP, 3002, "10.180.0.2:80", False),
        Flow("external to LB with eTP:Local", ext, "5.6.7.8", 80, "10.180.0.2:80", False),
        Flow("pod to ClusterIP with iTP:Local", pod, "172.30.0.43", 80, "10.180.0.3:80", False),
        Flow("pod to NodePort with iTP:Local", pod, NODE_IP, 3003, c, True),
        Flow("pod to LB with iTP:Local", pod, "9.10.11.12", 80, c, True),
        Flow("node to ClusterIP with iTP:Local", NODE_IP, "172.30.0.43", 80, "10.180.0.3:80", True),
        Flow("node to NodePort with iTP:Local", NODE_IP, NODE_IP, 3003, c, True),
        *local("localhost to NodePort with iTP:Local", lo, lo, 3003, c, True),
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


class UpstreamScenarios:
    """The scenarios upstream's iptables and nftables proxier tests both run, as test methods. A mode's
    test file runs them by subclassing this as ``TestUpstreamScenarios`` (this class's name keeps pytest
    from collecting it where it is imported) and saying what its mode does differently."""

    mode: ClassVar[str]                 # "iptables" or "nftables": where trace_flow looks for masquerading
    # The nftables mode checks cluster IPs: a port no Service of the IP has is rejected, an address of
    # the service CIDR no Service has is dropped. The iptables mode leaves both alone.
    cluster_ip_check: ClassVar[bool]
    localhost_node_ports: ClassVar[bool]    # 127.0.0.1 reaches NodePorts (the iptables mode's default)

    def proxier(self, *, masquerade_all: bool = False, local_detector: bool = True
                ) -> tuple[Node, UpstreamProxier]:
        """Upstream's NewFakeProxier for this mode, on upstream's fake node."""
        raise NotImplementedError

    def flows(self, node: Node, cases: list[Flow]) -> None:
        run_flows(node, cases, self.mode)

    # ---- TestNoEndpointsReject -------------------------------------------------------------------------
    def test_no_endpoints_reject(self) -> None:
        node, proxier = self.proxier()
        sync(proxier, objects(lb("ns1", "svc1", "172.30.0.41", [port("p80", 80, node_port=3001)], ["1.2.3.4"],
                                 externalIPs=["192.168.99.11"])))
        self.flows(node, [
            Flow("pod to cluster IP with no endpoints", "10.0.0.2", "172.30.0.41", 80, "REJECT"),
            Flow("external to external IP with no endpoints", EXTERNAL_CLIENT, "192.168.99.11", 80, "REJECT"),
            Flow("pod to NodePort with no endpoints", "10.0.0.2", NODE_IP, 3001, "REJECT"),
            Flow("external to NodePort with no endpoints", EXTERNAL_CLIENT, NODE_IP, 3001, "REJECT"),
            Flow("pod to LoadBalancer IP with no endpoints", "10.0.0.2", "1.2.3.4", 80, "REJECT"),
            Flow("external to LoadBalancer IP with no endpoints", EXTERNAL_CLIENT, "1.2.3.4", 80, "REJECT"),
        ])

    # ---- TestClusterIPGeneral --------------------------------------------------------------------------
    def test_cluster_ip_general(self) -> None:
        node, proxier = self.proxier()
        sync(proxier, objects(
            svc("ns1", "svc1", "172.30.0.41", [port("http", 80)]),
            svc("ns2", "svc2", "172.30.0.42", [port("http", 80), port("https", 443, target=8443),
                                               port("dns-udp", 53, "UDP"), port("dns-tcp", 53, target=5353),
                                               port("dns-sctp", 53, "SCTP")]),
            slice_("ns1", "svc1", [ep("10.180.0.1", "test-node")], [("http", 80, "TCP")]),
            slice_("ns2", "svc2", [ep("10.180.0.1", "test-node"), ep("10.180.2.1", "node2")],
                   [("http", 80, "TCP"), ("https", 8443, "TCP"), ("dns-udp", 53, "UDP"), ("dns-tcp", 5353, "TCP"),
                    ("dns-sctp", 53, "SCTP")])))
        unknown_port = "REJECT" if self.cluster_ip_check else ""
        # upstream's iptables test has no case of an unallocated address (that mode does not see it)
        unallocated = [Flow("packet to unallocated cluster ip", "10.180.0.2", "172.30.0.50", 80, "DROP")]
        self.flows(node, [
            Flow("simple clusterIP", "10.180.0.2", "172.30.0.41", 80, "10.180.0.1:80"),
            Flow("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", masq=True),
            Flow("clusterIP with multiple endpoints", "10.180.0.2", "172.30.0.42", 80,
                 "10.180.0.1:80, 10.180.2.1:80"),
            Flow("clusterIP with TargetPort", "10.180.0.2", "172.30.0.42", 443, "10.180.0.1:8443, 10.180.2.1:8443"),
            Flow("same port, TCP", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:5353, 10.180.2.1:5353"),
            Flow("same port, UDP", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53", protocol="udp"),
            Flow("same port, SCTP", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53",
                 protocol="sctp"),
            Flow("TCP-only port does not match UDP traffic", "10.180.0.2", "172.30.0.42", 80, unknown_port,
                 protocol="udp"),
            Flow("svc1 does not accept svc2's ports", "10.180.0.2", "172.30.0.41", 443, unknown_port),
            *(unallocated if self.cluster_ip_check else []),
        ])

    # ---- TestLoadBalancer ------------------------------------------------------------------------------
    def test_load_balancer(self) -> None:
        node, proxier = self.proxier()
        sync(proxier, objects(
            lb("ns1", "svc1", "172.30.0.41", [port("p80", 80, node_port=3001)], ["1.2.3.4", "5.6.7.8"],
               loadBalancerSourceRanges=["192.168.0.0/24", " 203.0.113.0/25"]),
            slice_("ns1", "svc1", [ep("10.180.0.1")], P80)))
        e, blocked = "10.180.0.1:80", EXTERNAL_CLIENT_BLOCKED
        self.flows(node, [
            Flow("pod to cluster IP", "10.0.0.2", "172.30.0.41", 80, e),
            Flow("external to nodePort", EXTERNAL_CLIENT, NODE_IP, 3001, e, masq=True),
            Flow("nodePort bypasses LoadBalancerSourceRanges", blocked, NODE_IP, 3001, e, masq=True),
            Flow("accepted external to LB1", EXTERNAL_CLIENT, "1.2.3.4", 80, e, masq=True),
            Flow("accepted external to LB2", EXTERNAL_CLIENT, "5.6.7.8", 80, e, masq=True),
            Flow("blocked external to LB1", blocked, "1.2.3.4", 80, "DROP"),
            Flow("blocked external to LB2", blocked, "5.6.7.8", 80, "DROP"),
            Flow("pod to LB1 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "1.2.3.4", 80, "DROP"),
            Flow("pod to LB2 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "5.6.7.8", 80, "DROP"),
            Flow("node to LB1 (allowed by LoadBalancerSourceRanges)", NODE_IP, "1.2.3.4", 80, e, masq=True),
            Flow("node to LB2 (allowed by LoadBalancerSourceRanges)", NODE_IP, "5.6.7.8", 80, e, masq=True),
            Flow("same node to LB1, SNATted to LB1 (implicitly allowed)", "1.2.3.4", "1.2.3.4", 80, e, masq=True),
            Flow("same node to LB2, SNATted to LB2 (implicitly allowed)", "5.6.7.8", "5.6.7.8", 80, e, masq=True),
        ])

    # ---- TestExternalTrafficPolicyLocal / TestExternalTrafficPolicyCluster -----------------------------
    def test_external_traffic_policy_local(self) -> None:
        node, proxier = self.proxier()
        sync(proxier, etp_objects("Local"))
        both, local = "10.180.0.1:80, 10.180.2.1:80", "10.180.2.1:80"
        self.flows(node, [
            Flow("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, both),
            Flow("pod to external IP hits both endpoints, unmasqueraded", "10.0.0.2", "192.168.99.11", 80, both),
            Flow("external to external IP hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT,
                 "192.168.99.11", 80, local),
            Flow("pod to LB IP hits only both endpoints, unmasqueraded", "10.0.0.2", "1.2.3.4", 80, both),
            Flow("external to LB IP hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT, "1.2.3.4", 80, local),
            Flow("pod to NodePort hits both endpoints, unmasqueraded", "10.0.0.2", NODE_IP, 3001, both),
            Flow("external to NodePort hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT, NODE_IP, 3001,
                 local),
        ])

    def test_external_traffic_policy_cluster(self) -> None:
        node, proxier = self.proxier()
        sync(proxier, etp_objects("Cluster"))
        both = "10.180.0.1:80, 10.180.2.1:80"
        self.flows(node, [
            Flow("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, both),
            Flow("pod to external IP hits both endpoints, masqueraded", "10.0.0.2", "192.168.99.11", 80, both, True),
            Flow("external to external IP hits both endpoints, masqueraded", EXTERNAL_CLIENT, "192.168.99.11", 80,
                 both, True),
            Flow("pod to LB IP hits both endpoints, masqueraded", "10.0.0.2", "1.2.3.4", 80, both, True),
            Flow("external to LB IP hits both endpoints, masqueraded", EXTERNAL_CLIENT, "1.2.3.4", 80, both, True),
            Flow("pod to NodePort hits both endpoints, masqueraded", "10.0.0.2", NODE_IP, 3001, both, True),
            Flow("external to NodePort hits both endpoints, masqueraded", EXTERNAL_CLIENT, NODE_IP, 3001, both,
                 True),
        ])

    # ---- TestInternalTrafficPolicy ---------------------------------------------------------------------
    @pytest.mark.parametrize(("policy", "nodes", "output"), [
        ("Cluster", ["test-node", "node1", "node2"], "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80"),
        ("Local", ["test-node", "node1", "node2"], "10.0.1.1:80"),
        ("Local", ["test-node", "test-node", "node2"], "10.0.1.1:80, 10.0.1.2:80"),
        ("Local", ["node0", "node1", "node2"], "DROP"),
    ], ids=["internalTrafficPolicy is cluster", "internalTrafficPolicy is local and there is one local endpoint",
            "internalTrafficPolicy is local and there are multiple local endpoints",
            "internalTrafficPolicy is local and there are no local endpoints"])
    def test_internal_traffic_policy(self, policy: str, nodes: list[str], output: str) -> None:
        node, proxier = self.proxier()
        objs = objects(svc("ns1", "svc1", "172.30.1.1", [port("", 80)], internalTrafficPolicy=policy),
                       slice_("ns1", "svc1", [ep(f"10.0.1.{i}", n) for i, n in enumerate(nodes, 1)], UNNAMED))
        sync(proxier, objs)
        self.flows(node, [Flow("pod to ClusterIP", "10.0.0.2", "172.30.1.1", 80, output)])
        delete_slices(objs, "ns1/svc1-1")
        sync(proxier, objs)
        self.flows(node, [Flow("endpoints deleted", "10.0.0.2", "172.30.1.1", 80, "REJECT")])

    # ---- TestTerminatingEndpointsTrafficPolicyLocal / ...Cluster ---------------------------------------
    def terminating_run(self, policy: str, endpoints: Endpoints, cases: list[Flow]) -> None:
        node, proxier = self.proxier()
        objs = objects(
            lb("ns1", "svc1", "172.30.1.1", [port("", 80)], ["1.2.3.4"], externalTrafficPolicy=policy,
               healthCheckNodePort=30000),
            slice_("ns1", "svc1", [{"addresses": [ip], "nodeName": n, "conditions": c} for ip, n, c in endpoints],
                   UNNAMED))
        sync(proxier, objs)
        self.flows(node, cases)
        delete_slices(objs, "ns1/svc1-1")
        sync(proxier, objs)
        self.flows(node, [Flow("pod to clusterIP after endpoints deleted", "10.0.0.2", "172.30.1.1", 80, "REJECT"),
                          Flow("external to LB after endpoints deleted", EXTERNAL_CLIENT, "1.2.3.4", 80, "REJECT")])

    @pytest.mark.parametrize(("case", "cluster_ip", "lb_output"), [
        ("ready endpoints exist", "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", "10.0.1.1:80, 10.0.1.2:80"),
        ("only terminating endpoints exist", "10.0.1.5:80", "10.0.1.2:80, 10.0.1.3:80"),
        ("terminating endpoints on remote node", "10.0.1.5:80", "DROP"),
        ("no usable endpoints on any node", "REJECT", "REJECT"),
    ])
    def test_terminating_endpoints_traffic_policy_local(self, case: str, cluster_ip: str, lb_output: str) -> None:
        self.terminating_run("Local", TERMINATING_LOCAL[case], [
            Flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, cluster_ip),
            Flow("external to LB", EXTERNAL_CLIENT, "1.2.3.4", 80, lb_output)])

    @pytest.mark.parametrize(("case", "output"), [
        ("ready endpoints exist", "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80"),
        ("only terminating endpoints exist", "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80"),
        ("terminating endpoints on remote node", "10.0.1.5:80"),
        ("no usable endpoints on any node", "REJECT"),
    ])
    def test_terminating_endpoints_traffic_policy_cluster(self, case: str, output: str) -> None:
        self.terminating_run("Cluster", TERMINATING_CLUSTER[case], [
            Flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, output),
            Flow("external to LB", EXTERNAL_CLIENT, "1.2.3.4", 80, output, masq=True)])

    # ---- TestInternalExternalMasquerade ----------------------------------------------------------------
    @pytest.mark.parametrize(("masquerade_all", "local_detector", "overrides"), [
        (False, True, {}),
        (False, False, NO_DETECTOR),
        (True, True, MASQUERADE_ALL),
        (True, False, {**MASQUERADE_ALL, **{k: v for k, v in NO_DETECTOR.items() if v[0] is not None}}),
    ], ids=["base", "no LocalTrafficDetector", "masqueradeAll", "masqueradeAll, no LocalTrafficDetector"])
    def test_internal_external_masquerade(self, masquerade_all: bool, local_detector: bool,
                                          overrides: dict[str, tuple[str | None, bool | None]]) -> None:
        node, proxier = self.proxier(masquerade_all=masquerade_all, local_detector=local_detector)
        sync(proxier, masquerade_objects())
        cases = masquerade_flows(self.localhost_node_ports)
        for f in cases:
            output, masq = overrides.get(f.name, (None, None))
            f.output = f.output if output is None else output
            f.masq = f.masq if masq is None else masq
        assert len({f.name for f in cases} & set(overrides)) == len(overrides)
        self.flows(node, cases)

    # ---- TestNoEndpointsMetric -------------------------------------------------------------------------
    @NO_ENDPOINTS_METRIC
    def test_no_endpoints_metric(self, itp: str, etp: str, nodes: list[str], internal: int, external: int) -> None:
        _, proxier = self.proxier()
        spec: dict[str, Any] = {}
        if itp:
            spec["internalTrafficPolicy"] = itp
        if etp:
            spec["externalTrafficPolicy"] = etp
        sync(proxier, objects(
            svc("ns1", "svc1", "172.30.1.1", [port("", 80, node_port=123)], "NodePort" if etp else "ClusterIP",
                **spec),
            slice_("ns1", "svc1", [ep(f"10.0.1.{i}", n) for i, n in enumerate(nodes, 1)], UNNAMED)))
        gauge = proxier.metrics.no_local
        assert gauge.labels(traffic_policy="internal", ip_family="IPv4")._value.get() == internal
        assert gauge.labels(traffic_policy="external", ip_family="IPv4")._value.get() == external
