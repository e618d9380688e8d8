"""Upstream kube-proxy's packet-flow tests (its ``runPacketFlowTests``) on the emulated node, for every mode.

Upstream traces a packet through the rules it expects: a source, a destination, the endpoints the
packet may be DNATed to (``"10.180.0.1:80, 10.180.2.1:80"``) or ``REJECT``/``DROP``/``ACCEPT``, and
whether it is masqueraded. Here the same packet goes through the emulated node's real packet path on
upstream's fake node: a pod's packet arrives on ``cni0``, an outside client's on ``eth0``, the node's
own leaves a local process (OUTPUT). Each flow is sent as several new connections, so every endpoint
a random choice can make shows up; the masquerade decision is the SNAT the mode's masquerade rule made
in POSTROUTING.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass

from kproxy.node import Node
from kproxy.packet import Packet

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
