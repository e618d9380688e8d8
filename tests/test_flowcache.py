"""The flow cache replays what the whole path does: the same traffic through two identical nodes, one
with the cache and one without, ends with the same results, rule counters, conntrack entries and IPVS
connections and statistics, across configuration changes that must invalidate what was learnt."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from tests.test_proxier_iptables import objects
from tests.test_proxier_ipvs import NODE, endpoints, service, setup

from kproxy.ipset.cli import run_ipset
from kproxy.ipvs.ipvsadm import run_ipvsadm
from kproxy.netfilter.nfacct import objects_of
from kproxy.node import Node
from kproxy.packet import ACK, FIN, SYN, Packet

SERVICES = (service("web", "10.20.30.60"), endpoints("web", ("10.0.2.30", "node-b"), ("10.0.2.31", "node-b")),
            service("np", "10.20.30.61", nodePort=30080, type="NodePort"), endpoints("np", ("10.0.2.40", "node-b")),
            service("dns", "10.20.30.62", port=53, proto="UDP"), endpoints("dns", ("10.0.2.50", "node-b"), port=53,
                                                                          proto="UDP"),
            service("self", "10.20.30.63"), endpoints("self", ("10.0.1.5", "node-a")))


def pair(make: Callable[[], tuple[Node, Any]] = setup, services: tuple[dict, ...] = SERVICES) -> tuple[Node, Node]:
    """Two nodes with kube-proxy (the IPVS mode unless ``make`` says otherwise) for the same Services:
    the first caches flows."""
    nodes = []
    for _ in range(2):
        node, proxier = make()
        proxier.sync(objects(*services))
        nodes.append(node)
    assert nodes[0].flows is not None and nodes[1].flows is not None
    nodes[1].flows.enabled = False
    return nodes[0], nodes[1]


def outcome(res: Any) -> tuple[Any, ...]:
    p = res.packet
    return (res.fate, res.hook, res.out_dev, res.gateway, res.reason, res.reject_with, p.src, p.dst, p.sport,
            p.dport, p.mark, p.ttl, p.oif, p.ctstate, p.ctdir, sorted(p.meta), p.meta.get("stolen_by"))


def state(node: Node) -> dict[str, Any]:
    """Everything observable the packets changed."""
    rc, stats, err = run_ipvsadm(["-Ln", "--stats"], node.ipvs, node.now())
    assert rc == 0, err
    rc, conns, err = run_ipvsadm(["-Lnc"], node.ipvs, node.now())
    assert rc == 0, err
    ipvs = node.ipvs.to_json()
    return {
        "counters": [line for line in node.iptables_save(counters=True).splitlines() if not line.startswith("#")],
        "conntrack": [{k: v for k, v in e.items() if k != "id"} for e in node.conntrack.to_json()["entries"]],
        "ipvs_services": ipvs["services"], "ipvs_conns": sorted(ipvs["conns"]), "stats": stats, "conns": conns,
        "nfacct": objects_of(node).to_json(),
    }


def send(nodes: tuple[Node, Node], make: Callable[[], Packet], iif: str) -> Any:
    """The same packet into both nodes; their results must agree."""
    a, b = (n.receive(make(), iif) for n in nodes)
    assert outcome(a) == outcome(b)
    return a


def tcp(src: str, dst: str, sport: int, dport: int, flags: int) -> Callable[[], Packet]:
    return lambda: Packet.make(src, dst, "tcp", sport, dport, tcp_flags=flags)


def udp(src: str, dst: str, sport: int, dport: int) -> Callable[[], Packet]:
    return lambda: Packet.make(src, dst, "udp", sport, dport)


def handshake(nodes: tuple[Node, Node], client: str, vip: str, sport: int, dport: int, iif: str) -> Packet:
    """SYN, the real server's SYN-ACK, the client's ACK; returns the SYN as it left."""
    syn = send(nodes, tcp(client, vip, sport, dport, SYN), iif).packet
    send(nodes, tcp(syn.dst_str, syn.src_str, syn.dport, syn.sport, SYN | ACK), "eth0")
    send(nodes, tcp(client, vip, sport, dport, ACK), iif)
    return syn


def exchange(nodes: tuple[Node, Node], flows: list[tuple[str, str, int, int, str, Packet]], rounds: int) -> None:
    """Client ACKs and the real servers' ACKs, interleaved in a shuffled order."""
    order = [(f, d) for f in flows for d in (0, 1)] * rounds
    random.Random(7).shuffle(order)
    for (client, vip, sport, dport, iif, out), d in order:
        if d == 0:
            send(nodes, tcp(client, vip, sport, dport, ACK), iif)
        else:
            send(nodes, tcp(out.dst_str, out.src_str, out.dport, out.sport, ACK), "eth0")


def learnt_flow(nodes: tuple[Node, Node]) -> list[tuple[str, str, int, int, str, Packet]]:
    """A pod's connection to the web Service, exchanged until the first node replays it."""
    out = handshake(nodes, "10.0.1.7", "10.20.30.60", 40000, 80, "cni0")
    flow = [("10.0.1.7", "10.20.30.60", 40000, 80, "cni0", out)]
    exchange(nodes, flow, 3)
    return flow


def test_same_flows_with_and_without_the_cache_leave_the_same_state():
    nodes = pair()
    flows = []
    for i, (client, vip, dport, iif) in enumerate([("10.0.1.7", "10.20.30.60", 80, "cni0"),
                                                   ("10.0.1.8", "10.20.30.60", 80, "cni0"),
                                                   ("192.168.0.77", "10.20.30.60", 80, "eth0"),   # masqueraded
                                                   ("203.0.113.9", "192.168.0.2", 30080, "eth0"),   # NodePort
                                                   ("10.0.1.5", "10.20.30.63", 80, "cni0")]):      # hairpin
        out = handshake(nodes, client, vip, 40000 + i, dport, iif)
        flows.append((client, vip, 40000 + i, dport, iif, out))
    for k in range(3):                                      # UDP: assured once answered
        out = send(nodes, udp("10.0.1.7", "10.20.30.62", 5300 + k, 53), "cni0").packet
        send(nodes, udp(out.dst_str, out.src_str, out.dport, out.sport), "eth0")
    nodes[0].clock = nodes[1].clock = 1003.0               # UDP streams become assured after 2 s
    for k in range(3):
        for _ in range(4):
            send(nodes, udp("10.0.1.7", "10.20.30.62", 5300 + k, 53), "cni0")
    exchange(nodes, flows, 6)
    cache = nodes[0].flows
    assert cache is not None and cache.hits > 40 and cache.learnt >= len(flows)
    assert state(nodes[0]) == state(nodes[1])
    # Closing: a FIN changes conntrack's and IPVS's state, so it takes the whole path; later packets too.
    client, vip, sport, dport, iif, _ = flows[0]
    send(nodes, tcp(client, vip, sport, dport, FIN | ACK), iif)
    exchange(nodes, flows, 2)
    assert state(nodes[0]) == state(nodes[1])


def test_configuration_changes_invalidate_what_was_learnt():
    nodes = pair()
    flow = learnt_flow(nodes)
    out = flow[0][5]
    cache = nodes[0].flows
    assert cache is not None and cache.hits > 0
    # A rule that drops the client: both nodes drop from the next packet on.
    for n in nodes:
        assert n.iptables_cmd(["-I", "INPUT", "-s", "10.0.1.7", "-j", "DROP"])[0] == 0
    assert send(nodes, tcp("10.0.1.7", "10.20.30.60", 40000, 80, ACK), "cni0").fate == "dropped"
    for n in nodes:
        assert n.iptables_cmd(["-D", "INPUT", "1"])[0] == 0
    exchange(nodes, flow, 3)
    # The ClusterIP leaves KUBE-CLUSTER-IP: KUBE-IPVS-FILTER's RETURN no longer matches.
    for n in nodes:
        assert run_ipset(["del", "KUBE-CLUSTER-IP", "10.20.30.60,tcp:80"], n.ipsets, n.now())[0] == 0
    exchange(nodes, flow, 3)
    assert state(nodes[0]) == state(nodes[1])
    # The real server goes away: its connections' packets are dropped (as IPVS does).
    for n in nodes:
        assert run_ipvsadm(["-d", "-t", "10.20.30.60:80", "-r", out.dst_str + ":80"], n.ipvs, n.now())[0] == 0
    assert send(nodes, tcp("10.0.1.7", "10.20.30.60", 40000, 80, ACK), "cni0").fate == "dropped"
    assert state(nodes[0]) == state(nodes[1])


def test_expired_connections_are_not_replayed():
    nodes = pair()
    flow = learnt_flow(nodes)
    nodes[0].clock = nodes[1].clock = 1000.0 + 901       # past IPVS's 900 s TCP timeout, not conntrack's
    res = send(nodes, tcp("10.0.1.7", "10.20.30.60", 40000, 80, ACK), "cni0")
    assert res.fate == "delivered"                        # no IPVS connection: an ACK is not scheduled
    exchange(nodes, flow, 2)
    assert state(nodes[0]) == state(nodes[1])
    # A SYN of the same tuple schedules a new IPVS connection: the learnt "delivered" no longer holds.
    send(nodes, tcp("10.0.1.7", "10.20.30.60", 40000, 80, SYN), "cni0")
    assert send(nodes, tcp("10.0.1.7", "10.20.30.60", 40000, 80, ACK), "cni0").fate == "forwarded"
    assert state(nodes[0]) == state(nodes[1])


def test_a_changed_connection_mark_is_seen():
    nodes = pair()
    for n in nodes:
        assert n.iptables_cmd(["-I", "INPUT", "-m", "connmark", "--mark", "0x1", "-j", "DROP"])[0] == 0
    learnt_flow(nodes)
    assert nodes[0].flows is not None and nodes[0].flows.hits > 0
    for n in nodes:                                       # as conntrack -U --mark 1 does
        for conn in n.conntrack.entries(n.now()):
            conn.mark = 1
    assert send(nodes, tcp("10.0.1.7", "10.20.30.60", 40000, 80, ACK), "cni0").fate == "dropped"
    assert state(nodes[0]) == state(nodes[1])


def test_a_stateful_match_keeps_every_packet_on_the_whole_path():
    nodes = pair()
    for n in nodes:
        assert n.iptables_cmd(["-I", "INPUT", "-m", "statistic", "--mode", "nth", "--every", "3", "--packet", "0",
                               "-j", "LOG"])[0] == 0
    out = handshake(nodes, "10.0.1.7", "10.20.30.60", 40000, 80, "cni0")
    exchange(nodes, [("10.0.1.7", "10.20.30.60", 40000, 80, "cni0", out)], 5)
    cache = nodes[0].flows
    assert cache is not None and cache.hits == 0 and cache.learnt == 0
    assert state(nodes[0]) == state(nodes[1])
    assert nodes[0].log_lines == nodes[1].log_lines and nodes[0].log_lines


def test_a_traced_packet_of_a_learnt_flow_shows_every_rule():
    nodes = pair()
    learnt_flow(nodes)
    traces = [n.receive(Packet.make("10.0.1.7", "10.20.30.60", "tcp", 40000, 80, tcp_flags=ACK), "cni0",
                        trace=True).trace for n in nodes]
    rules = [[(e.table, e.chain, e.rule, e.text) for e in t.of_kind("rule")] for t in traces if t is not None]
    assert len(rules) == 2 and rules[0] == rules[1]
    assert ("filter", "KUBE-IPVS-FILTER", 2, "-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN") \
        in rules[0]
    assert state(nodes[0]) == state(nodes[1])


RULESET = """*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -i eth0 -j MARK --set-xmark 0x100/0x100
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:SVC - [0:0]
-A PREROUTING -m comment --comment "services" -j SVC
-A SVC -d 10.20.30.60/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.2.30:8080
-A SVC -d 192.168.0.2/32 -p tcp -m tcp --dport 30080 -j DNAT --to-destination 10.0.2.40:8080
-A POSTROUTING -m mark --mark 0x100/0x100 -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:FWD - [0:0]
-A FORWARD -j FWD
-A FWD -m conntrack --ctstate INVALID -j DROP
-A FWD -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "established" -j ACCEPT
-A FWD -p tcp -m multiport --dports 8080,9090 -j ACCEPT
COMMIT
"""


def iptables_node() -> tuple[Node, Any]:
    """A node whose iptables rules DNAT two addresses and masquerade what came in on eth0."""
    node = Node.from_description(NODE)
    node.clock = 1000.0

    class Restore:
        def sync(self, _objects: Any) -> None:
            node.iptables_restore(RULESET)

    return node, Restore()


def test_iptables_flows_with_dnat_and_masquerade_replay_the_same():
    """The cache is the node's, not IPVS's: established packets DNATed (and masqueraded) by iptables
    rules replay with their rewritten headers both ways, and count the same mangle, nat and filter
    rules and policies."""
    nodes = pair(iptables_node, ())
    flows = []
    for i, (client, vip, dport, iif) in enumerate([("10.0.1.7", "10.20.30.60", 80, "cni0"),
                                                   ("10.0.1.8", "10.20.30.60", 80, "cni0"),
                                                   ("203.0.113.9", "192.168.0.2", 30080, "eth0")]):
        out = handshake(nodes, client, vip, 41000 + i, dport, iif)
        flows.append((client, vip, 41000 + i, dport, iif, out))
    exchange(nodes, flows, 6)
    cache = nodes[0].flows
    assert cache is not None and cache.hits > 20
    assert (flows[2][5].src_str, flows[2][5].dst_str, flows[2][5].dport) == ("192.168.0.2", "10.0.2.40", 8080)
    assert state(nodes[0]) == state(nodes[1])


def iptables_mode() -> tuple[Node, Any]:
    """kube-proxy's iptables mode on the test node (its filter table counts into nfacct objects)."""
    from tests.test_proxier_iptables import setup as iptables_setup

    return iptables_setup()


def test_kube_proxy_iptables_mode_flows_replay_nfacct_counters():
    """kube-proxy's iptables mode has ``-m nfacct`` in its filter table; the cache learns its flows and
    replays the accounting objects' counters with the rules'. User rules count into two more objects,
    one in a rule whose later match fails (the object still counts: xt_nfacct counts when it is
    reached), one only for the answers."""
    nodes = pair(iptables_mode)
    for n in nodes:
        assert {o.name for o in objects_of(n)} >= {"ct_state_invalid_dropped_pkts"}
        for name in ("fwd-all", "fwd-probe", "back"):
            objects_of(n).add(name)
        for argv in (["-I", "FORWARD", "-m", "nfacct", "--nfacct-name", "fwd-all"],
                     ["-I", "FORWARD", "2", "-p", "tcp", "-m", "nfacct", "--nfacct-name", "fwd-probe", "-m", "tcp",
                      "--dport", "9999", "-j", "DROP"],
                     ["-I", "FORWARD", "-i", "eth0", "-m", "nfacct", "--nfacct-name", "back"]):
            assert n.iptables_cmd(argv) == (0, "", "")
    flows = []
    for i, (client, vip, dport, iif) in enumerate([("10.0.1.7", "10.20.30.60", 80, "cni0"),
                                                   ("10.0.1.8", "10.20.30.60", 80, "cni0"),
                                                   ("203.0.113.9", "192.168.0.2", 30080, "eth0")]):   # NodePort
        out = handshake(nodes, client, vip, 42000 + i, dport, iif)
        flows.append((client, vip, 42000 + i, dport, iif, out))
    exchange(nodes, flows, 6)
    cache = nodes[0].flows
    assert cache is not None and cache.learnt >= len(flows) and cache.hits >= 30
    counts = {o.name: o.pkts for o in objects_of(nodes[0])}
    assert counts["fwd-all"] == counts["fwd-probe"] > 40 and counts["back"] > 20
    assert state(nodes[0]) == state(nodes[1])
    # The rule leaves, its object goes and comes back (a new object, at zero): no replay counts into
    # the old one.
    for n in nodes:
        assert n.iptables_cmd(["-D", "FORWARD", "-m", "nfacct", "--nfacct-name", "fwd-all"]) == (0, "", "")
        assert n.iptables_cmd(["-D", "FORWARD", "-i", "eth0", "-m", "nfacct", "--nfacct-name", "back"]) == (0, "", "")
    exchange(nodes, flows, 2)
    for n in nodes:
        objects_of(n).delete("back", set())
        objects_of(n).add("back")
        assert n.iptables_cmd(["-I", "FORWARD", "-m", "nfacct", "--nfacct-name", "back"]) == (0, "", "")
    hits = cache.hits
    exchange(nodes, flows, 3)
    assert cache.hits > hits
    assert objects_of(nodes[0]).read("back").pkts == 3 * 2 * len(flows)
    assert state(nodes[0]) == state(nodes[1])


def test_the_packet_that_makes_a_connection_assured_is_learnt_from():
    """The handshake's last ACK moves conntrack to ESTABLISHED and assured and IPVS's connection to
    ESTABLISHED; the rules it passes already see that state, so the flow is learnt from it and the
    next ACK is replayed, leaving the same state (the real server's active-connection count too)."""
    nodes = pair()
    handshake(nodes, "10.0.1.7", "10.20.30.60", 40000, 80, "cni0")
    cache = nodes[0].flows
    assert cache is not None and (cache.learnt, cache.hits) == (1, 0)
    send(nodes, tcp("10.0.1.7", "10.20.30.60", 40000, 80, ACK), "cni0")
    assert cache.hits == 1
    assert state(nodes[0]) == state(nodes[1])
    assert [d.activeconns for s in nodes[0].ipvs.services.values() for d in s.dests if d.activeconns] == [1]
