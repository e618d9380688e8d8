"""The flow cache with nft rulesets: the same traffic through two identical nodes, one caching flows and
one not, leaves the same results, rule counters, named objects, set elements, conntrack entries, numgen
and limit state and random draws; flows through base chains whose rules are stateless are learnt, and
any stateful statement those chains reach (numgen, limit, quota, named counters, meta random, a set the
packet path updates) keeps every packet on the whole path."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from tests.test_flowcache import exchange, handshake, send, tcp, udp

from kproxy.backends.nft import EmulatedNft
from kproxy.nftables.cli import run_nft
from kproxy.nftables.evaluate import attach
from kproxy.nftables.model import Ruleset
from kproxy.node import Node
from kproxy.packet import ACK, FIN

NODE = {"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]},
                                         {"name": "cni0", "addresses": ["10.0.1.1/24"]}],
        "routes": ["default via 192.168.0.1 dev eth0", "10.0.2.0/24 via 192.168.0.3 dev eth0"],
        "sysctls": {"net.ipv4.ip_forward": "1"}}

# A Service address DNATed (numgen random in the nat chains: new connections only) and masqueraded;
# filter chains at three hooks with every stateless form the cache may replay.
PURE = """table ip nat {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.20.30.60 tcp dport 80 counter jump svc
	}
	chain svc {
		numgen random mod 2 vmap { 0 : goto ep0, 1 : goto ep1 }
	}
	chain ep0 {
		meta l4proto tcp counter dnat to 10.0.2.30:8080
	}
	chain ep1 {
		meta l4proto tcp counter dnat to 10.0.2.31:8080
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		iifname "eth0" oifname "eth0" counter masquerade
	}
}
table inet filter {
	set blocked {
		type ipv4_addr
		elements = { 10.0.2.99 }
	}
	map ports {
		type inet_service : verdict
		elements = { 8080 : jump web, 53 : jump dns }
	}
	chain pre {
		type filter hook prerouting priority -110; policy accept;
		ct state new counter
		ip saddr 10.0.1.0/24 counter
		tcp sport != 1 tcp dport != 2 counter
		meta l4proto . th dport { tcp . 80, udp . 53 } counter
	}
	chain forwarding {
		type filter hook forward priority filter; policy accept;
		ip daddr @blocked counter reject
		ct state established,related ct direction original counter
		fib daddr type unicast counter
		th dport vmap @ports
		ct mark 0 ip daddr . th dport { 10.0.2.30 . 8080, 10.0.2.31 . 8080 } counter accept
		counter
	}
	chain web {
		tcp flags ack counter
		ip daddr 10.0.2.0/24 meta mark 0 counter return
	}
	chain dns {
		udp dport 53 counter accept
	}
	chain post {
		type filter hook postrouting priority 110; policy accept;
		oifname "eth0" jhash ip daddr mod 4 seed 0x1 < 4 counter
	}
}
"""


def nft_node(script: str) -> Node:
    node = Node.from_description(NODE)
    node.clock = 1000.0
    node.subsystems["rng"] = random.Random(3)
    rc, _, err, node.nftables = run_nft(["-f", "-"], Ruleset(), script, set(node.interfaces))
    assert rc == 0, err
    assert attach(node) == []
    return node


def pair(script: str, make: Callable[[str], Node] = nft_node) -> tuple[Node, Node]:
    """Two nodes with the same ruleset; the first caches flows."""
    a, b = make(script), make(script)
    assert a.flows is not None and b.flows is not None
    b.flows.enabled = False
    return a, b


def state(node: Node) -> dict[str, Any]:
    """Everything observable the packets changed: the ruleset's counters, quotas, named counters and
    set elements, the conntrack table, numgen inc's counters, limits' buckets and the random source."""
    runners = node.subsystems["nftables_runners"]
    return {
        "ruleset": run_nft(["list", "ruleset"], node.nftables)[1],
        "conntrack": [{k: v for k, v in e.items() if k != "id"} for e in node.conntrack.to_json()["entries"]],
        "numgen": [sorted(r.counters.values()) for r in runners],
        "limits": [sorted(r.limits.state.values()) for r in runners],
        "rng": node.subsystems["rng"].getstate(),
    }


FLOWS = [("10.0.1.7", "10.20.30.60", 80, "cni0"), ("10.0.1.8", "10.20.30.60", 80, "cni0"),
         ("192.168.0.77", "10.20.30.60", 80, "eth0"), ("10.0.1.9", "10.0.2.40", 22, "cni0")]


def traffic(nodes: tuple[Node, Node]) -> list[tuple[str, str, int, int, str, Any]]:
    """Handshakes, established TCP both ways, assured UDP, a FIN; every result compared on the way."""
    flows = []
    for i, (client, vip, dport, iif) in enumerate(FLOWS):
        out = handshake(nodes, client, vip, 40000 + i, dport, iif)
        flows.append((client, vip, 40000 + i, dport, iif, out))
    for k in range(2):
        out = send(nodes, udp("10.0.1.7", "10.0.2.50", 5300 + k, 53), "cni0").packet
        send(nodes, udp(out.dst_str, out.src_str, out.dport, out.sport), "eth0")
    for n in nodes:
        n.clock = 1003.0                       # UDP streams become assured after 2 s
    for k in range(2):
        for _ in range(4):
            send(nodes, udp("10.0.1.7", "10.0.2.50", 5300 + k, 53), "cni0")
    exchange(nodes, flows, 5)
    client, vip, sport, dport, iif, _ = flows[0]
    send(nodes, tcp(client, vip, sport, dport, FIN | ACK), iif)
    exchange(nodes, flows, 2)
    return flows


def test_stateless_nft_chains_are_replayed_with_the_same_state():
    nodes = pair(PURE)
    traffic(nodes)
    cache = nodes[0].flows
    assert cache is not None and cache.learnt >= len(FLOWS) and cache.hits > 40
    assert state(nodes[0]) == state(nodes[1])
    # the rules counted what they would count without the cache (a replay counts the same objects)
    listing = state(nodes[0])["ruleset"]
    assert "tcp flags ack counter packets 0" not in listing and "ct state established,related" in listing


STATEFUL = {
    "numgen inc": "numgen inc mod 3 0 counter",
    "numgen random": "numgen random mod 3 0 counter",
    "meta random": "meta random < 2147483648 counter",
    "limit": "limit rate 3/second burst 2 packets counter",
    "quota": "quota until 900 bytes counter",
    "named counter": 'counter name "hits"',
    "set updated here": "add @seen { ip saddr } counter",
    "log": 'log prefix "x "',
    "mark set": "meta mark set 0x1",
    "ct mark set": "ct mark set 0x0",
}


@pytest.mark.parametrize("stmt", list(STATEFUL.values()), ids=list(STATEFUL))
def test_a_stateful_statement_keeps_its_chains_flows_on_the_whole_path(stmt: str):
    """In a chain the forward base chain jumps to, so the walk over jumps is checked too."""
    script = PURE.replace("\t\tcounter\n\t}\n\tchain web", f"\t\tjump extra\n\t\tcounter\n\t}}\n\tchain extra {{\n\t\t{stmt}\n"
                          "\t}\n\tchain web") \
        .replace("\tchain pre {\n\t\ttype filter", "\tset seen {\n\t\ttype ipv4_addr\n\t\tflags dynamic\n\t}\n"
                 "\tcounter hits {\n\t}\n\tchain pre {\n\t\ttype filter")
    nodes = pair(script)
    traffic(nodes)
    assert state(nodes[0]) == state(nodes[1])
    cache = nodes[0].flows
    assert cache is not None and cache.hits == 0 and cache.learnt == 0


def test_a_set_the_packet_path_updates_elsewhere_is_not_trusted():
    """``update @recent`` in a nat chain (a new connection's first packet) changes what a filter chain's
    lookup of that set answers for an established flow of the same client: that filter chain is not
    replayed. A set updated by another table (same name, another set) leaves the filter chains
    replayable, as kube-proxy's session-affinity sets, which only its nat chains read, do."""
    natpre = ("\tset recent {\n\t\ttype ipv4_addr\n\t\tflags dynamic\n\t}\n\tchain natpre {\n"
              "\t\ttype nat hook prerouting priority -50; policy accept;\n\t\tupdate @recent { ip saddr }\n\t}\n")
    lookup = "\t\tip saddr 10.0.1.0/24 counter\n\t\tip saddr @recent counter\n"
    elsewhere = PURE.replace("table ip nat {\n", "table ip nat {\n" + natpre, 1) \
        .replace("table inet filter {\n", "table inet filter {\n\tset recent {\n\t\ttype ipv4_addr\n\t}\n", 1) \
        .replace("\t\tip saddr 10.0.1.0/24 counter\n", lookup)
    same_table = PURE.replace("table inet filter {\n", "table inet filter {\n" + natpre, 1) \
        .replace("\t\tip saddr 10.0.1.0/24 counter\n", lookup)
    for script, replayed in ((elsewhere, True), (same_table, False)):
        nodes = pair(script)
        flows = traffic(nodes)
        # a new connection of a client whose first flow was learnt: the nat chain adds the client now
        handshake(nodes, "10.0.1.8", "10.0.2.40", 45000, 22, "cni0")
        exchange(nodes, flows, 2)
        assert state(nodes[0]) == state(nodes[1])
        cache = nodes[0].flows
        assert cache is not None and (cache.hits > 40 if replayed else cache.hits == 0)


KUBE = """table ip kube-proxy {
	set blocked {
		type ipv4_addr
	}
	chain forwarding {
		type filter hook forward priority filter; policy accept;
		ip daddr @blocked counter drop
		ct state established counter
	}
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.20.30.60 tcp dport 80 counter dnat to 10.0.2.30:8080
	}
}
"""


def kube_node(script: str) -> Node:
    node = Node.from_description(NODE)
    node.clock = 1000.0
    node.subsystems["rng"] = random.Random(3)
    EmulatedNft(node).run(script)
    return node


def test_an_in_place_transaction_invalidates_what_was_learnt():
    """The proxier's transactions change its table in place (``EmulatedNft`` journals them): an element
    added to a set the forward chain drops by must stop a learnt flow at once."""
    nodes = pair(KUBE, kube_node)
    flows = traffic(nodes)
    assert nodes[0].flows is not None and nodes[0].flows.hits > 20
    for n in nodes:
        EmulatedNft(n).run("add element ip kube-proxy blocked { 10.0.2.30 }")
    client, vip, sport, dport, iif, _ = flows[1]
    assert send(nodes, tcp(client, vip, sport, dport, ACK), iif).fate == "dropped"
    exchange(nodes, flows, 2)
    assert state(nodes[0]) == state(nodes[1])
