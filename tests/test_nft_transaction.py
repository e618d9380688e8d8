"""Structured nft transactions (``kproxy.nftables.transaction``): the emulated node applies the nftables
proxier's operations without printing and parsing them; the text route (``nft -f -`` of the same
transaction's text) must give exactly the same node.

Upstream's scenarios (``tests/test_proxier_nftables.py``) are synced by two proxiers, one through each
route, and the listings (with handles), the node files and the fates of the same packets are compared
after every sync; single operations of every rule shape are compared object for object with what the
parser makes of their text; a failing transaction changes nothing and says what nft says.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

import pytest
from tests.test_proxier_nftables import (
    FLOW_NODE,
    NODE,
    NODE_IPS,
    Clock,
    blocks,
    ep,
    es,
    ipv6_objects,
    np_svc,
    objects,
    overall_objects,
    port,
    put,
    slice_,
    svc,
    tcp,
)

from kproxy.backends import BackendError
from kproxy.backends.nft import EmulatedNft
from kproxy.k8s.manifests import Objects
from kproxy.nftables.cli import run_nft
from kproxy.nftables.evaluate import conntrack_users
from kproxy.nftables.model import Ruleset
from kproxy.nftables.parser import Parser
from kproxy.nftables.store import node_ruleset
from kproxy.nftables.transaction import ADD_FLUSH, DNAT, GO, JUMP, MASQ, NUMGEN, RULES, Tx, apply, op_text
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.nftables import NftablesProxier
from kproxy.store.jsonfile import node_to_json


class TextRoute(EmulatedNft):
    """The emulated node's nft, given every transaction as text (the route before structured ones)."""

    def run(self, text: str | Tx) -> None:
        super().run(text if isinstance(text, str) else text.text())


def pair(family: int = 4, node_desc: dict[str, Any] | None = None, **cfg: Any) -> list[tuple[Node, NftablesProxier]]:
    """Two nodes and proxiers alike in all but the route: structured first, text second."""
    out = []
    for backend in (EmulatedNft, TextRoute):
        node = Node.from_description(node_desc or NODE)
        node.clock = 1000.0
        node.subsystems["rng"] = random.Random(3)
        pod, svc_cidr = ("10.0.0.0/8", "172.30.0.0/16") if family == 4 else ("fd00:10::/64", "fd00:10:96::/112")
        config = ProxyConfig.from_dict({"mode": "nftables", "clusterCIDR": pod, "detectLocalMode": "ClusterCIDR",
                                        "hostnameOverride": "test-node" if node_desc is None else "node-a",
                                        "nodePortAddresses": ["192.168.0.2/32", "2001:db8::1/128"], **cfg})
        proxier = NftablesProxier(config, backend(node, family), NODE_IPS, family=family, service_cidrs=[svc_cidr],
                                  node_ip="192.168.0.2" if family == 4 else "2001:db8::1", clock=Clock())
        out.append((node, proxier))
    return out


def assert_same_nodes(a: Node, b: Node) -> None:
    for argv in (["-a", "list", "ruleset"], ["-j", "list", "ruleset"]):
        ra, outa, _, _ = run_nft(argv, a.nftables)
        rb, outb, _, _ = run_nft(argv, b.nftables)
        assert (ra, outa) == (rb, outb)
    assert node_to_json(a) == node_to_json(b)
    assert a.subsystems.get("nftables_ct_refs") == b.subsystems.get("nftables_ct_refs") == conntrack_users(a.nftables)


Step = Callable[[Objects], None]


def run_scenario(objs: Objects, steps: list[Step], family: int = 4, advance: float = 0.0,
                 **cfg: Any) -> list[tuple[Node, NftablesProxier]]:
    """Sync ``objs`` and then each step's change through both routes, comparing after every sync."""
    nodes = pair(family, **cfg)
    worlds = [objs, copy.deepcopy(objs)]
    for n, step in enumerate([lambda o: None, *steps]):
        results = []
        for (_, proxier), world in zip(nodes, worlds, strict=True):
            step(world)
            proxier.clock.now += advance           # type: ignore[attr-defined]
            results.append(proxier.sync(world))
        a, b = results
        assert not a.error and not b.error, (n, a.error, b.error)
        assert (a.full, a.lines, a.text) == (b.full, b.lines, b.text), n
        assert_same_nodes(nodes[0][0], nodes[1][0])
    return nodes


def test_upstreams_overall_scenario_is_the_same_either_way() -> None:
    nodes = run_scenario(overall_objects(), [
        lambda o: put(o, slice_("ns1", "svc1", [ep("10.180.0.1"), ep("10.180.0.9")], [("p80", 80, "TCP")])),
        lambda o: o.delete_service("ns2/svc2"),
        lambda o: put(o, svc("ns6", "svc6", "172.30.0.46", [port("p80", 80)]),
                      slice_("ns6", "svc6", [ep("10.180.0.6", "test-node")], [("p80", 80, "TCP")])),
        lambda o: put(o, slice_("ns5", "svc5", [ep("10.180.0.3"), ep("10.180.0.7")], [("p80", 80, "TCP")])),
    ], advance=0.7)
    assert nodes[0][1].counts == nodes[1][1].counts


def test_only_the_fixed_part_of_the_table_goes_through_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """At scale every Service's chains, rules and elements are made directly: what the parser reads is
    the table's fixed part, the same for 3 Services as for 300."""
    from kproxy.nftables import transaction

    parsed: list[str] = []
    flush = transaction._Builder.flush

    def counting(self: Any) -> None:
        parsed.extend(self.pending)
        flush(self)

    monkeypatch.setattr(transaction._Builder, "flush", counting)
    sizes = []
    for n in (3, 300):
        (node, proxier), _ = pair()
        parsed.clear()
        objs = objects(*[d for i in range(n) for d in (
            svc(f"ns{i % 7}", f"s{i}", f"172.30.{i // 250}.{i % 250 + 1}", [port("p80", 80, node_port=30000 + i)],
                "NodePort"),
            slice_(f"ns{i % 7}", f"s{i}", [ep(f"10.1.{i // 250}.{i % 250 + j}") for j in range(3)],
                   [("p80", 80, "TCP")]))])
        r = proxier.sync(objs)
        assert not r.error and r.lines > 20 * n
        assert [line for line in parsed if "/" in line.split(" ")[4] or " element " in line] == []
        sizes.append(len(parsed))
    assert sizes[0] == sizes[1] > 0


def test_repeated_syncs_are_the_same_either_way() -> None:
    """Upstream's TestSyncProxyRulesRepeated: adds, deletes, emptied and restored endpoints, stale chains."""
    objs = objects(svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)]),
                   svc("ns2", "svc2", "172.30.0.42", [port("p8080", 8080)]),
                   es("ns1", "svc1", "10.0.1.1"), es("ns2", "svc2", "10.0.2.1", port_name="p8080", number=8080))
    run_scenario(objs, [
        lambda o: put(o, svc("ns3", "svc3", "172.30.0.43", [port("p80", 80)]), es("ns3", "svc3", "10.0.3.1")),
        lambda o: o.delete_service("ns2/svc2"),
        lambda o: put(o, svc("ns4", "svc4", "172.30.0.44", [port("p80", 80)])),
        lambda o: put(o, es("ns4", "svc4", "10.0.4.1")),
        lambda o: put(o, es("ns3", "svc3", "10.0.3.2")),
        lambda o: put(o, es("ns3", "svc3", "10.0.3.2", "10.0.3.3")),
        lambda o: put(o, es("ns3", "svc3")),
        lambda o: put(o, es("ns3", "svc3", "10.0.3.2", "10.0.3.3")),
    ], advance=0.6)


@pytest.mark.parametrize("cfg", [{}, {"nftables": {"masqueradeAll": True}}, {"detectLocalMode": "InterfaceNamePrefix",
                                                                 "detectLocal": {"interfaceNamePrefix": "veth"}},
                                 {"clusterCIDR": "10.0.0.1/32"}, {"nodePortAddresses": []}])
def test_configurations_are_the_same_either_way(cfg: dict[str, Any]) -> None:
    """Masquerade rules the transaction does not shape (masquerade-all, an interface detector, a /32
    pod range: text handed to the parser) and every-address NodePorts."""
    run_scenario(overall_objects(), [lambda o: put(o, es("ns1", "svc1", "10.180.0.8"))], **cfg)


def test_beside_another_table_that_uses_conntrack() -> None:
    """The node's conntrack references count the other table's users and the new table's."""
    nodes = pair()
    worlds = [overall_objects(), overall_objects()]
    for (node, proxier), objs in zip(nodes, worlds, strict=True):
        EmulatedNft(node).run("add table inet filter\nadd chain inet filter input { type filter hook input priority 0 ; }\n"
                              "add rule inet filter input ct state established accept\n")
        assert node.subsystems["nftables_ct_refs"] == {4: 1, 6: 1}
        assert not proxier.sync(objs).error
    assert_same_nodes(nodes[0][0], nodes[1][0])
    assert nodes[0][0].subsystems["nftables_ct_refs"][4] > 1


def test_ipv6_is_the_same_either_way() -> None:
    run_scenario(ipv6_objects(), [lambda o: o.delete_service("ns3/svc3")], family=6)


def test_packets_meet_the_same_fates_either_way() -> None:
    nodes = pair(node_desc=FLOW_NODE, clusterCIDR="10.0.0.0/16")
    p = [("p", 80, "TCP")]
    worlds = [objects(
        np_svc("np", "172.30.0.60", 30080), slice_("ns", "np", [ep(f"10.0.2.{i}", "node-b") for i in (30, 31, 32)], p),
        np_svc("lo", "172.30.0.61", 30081, externalTrafficPolicy="Local"),
        slice_("ns", "lo", [ep("10.0.1.31", "node-a")], p),
        svc("ns", "aff", "172.30.0.70", [port("p", 80)], sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}),
        slice_("ns", "aff", [ep(f"10.0.2.{i}", "node-b") for i in (40, 41)], p),
        svc("ns", "none", "172.30.0.63", [port("p", 80)])) for _ in nodes]
    for (_, proxier), objs in zip(nodes, worlds, strict=True):
        assert not proxier.sync(objs).error

    def fates(node: Node, sport: int) -> list[tuple[Any, ...]]:
        out = []
        for src, dst, dport, dev in (("10.0.1.5", "172.30.0.60", 80, "cni0"), ("203.0.113.9", "192.168.0.2", 30080, "eth0"),
                                     ("203.0.113.9", "192.168.0.2", 30081, "eth0"), ("10.0.1.6", "172.30.0.70", 80, "cni0"),
                                     ("10.0.1.5", "172.30.0.63", 80, "cni0"), ("10.0.1.5", "172.30.0.60", 443, "cni0"),
                                     ("10.0.1.5", "172.30.0.99", 80, "cni0")):
            for n in range(4):
                r = node.receive(tcp(src, dst, sport + n, dport), dev)
                out.append((r.fate, r.packet.src_str, r.packet.dst_str, r.reject_with))
        r = node.send(tcp("0.0.0.0", "172.30.0.60", sport, 80))
        return [*out, (r.fate, r.packet.src_str, r.packet.dst_str)]

    first = [fates(node, 40000) for node, _ in nodes]
    assert first[0] == first[1]
    assert {f[0] for f in first[0]} >= {"forwarded", "rejected", "dropped"}
    for (_, proxier), objs in zip(nodes, worlds, strict=True):     # a partial sync, in place
        put(objs, slice_("ns", "np", [ep("10.0.2.50", "node-b")], p), slice_("ns", "none", [ep("10.0.2.51", "node-b")], p))
        assert not proxier.sync(objs).full
    second = [fates(node, 41000) for node, _ in nodes]
    assert second[0] == second[1] and second[0] != first[0]
    assert_same_nodes(nodes[0][0], nodes[1][0])


# ---- operations against the parser, object for object -----------------------------------------------
SETUP = """add table ip t
add chain ip t a
add chain ip t b
add map ip t m { type ipv4_addr . inet_proto . inet_service : verdict ; }
add set ip t s { type ipv4_addr ; }
add map ip t n { type inet_proto . inet_service : verdict ; }
"""
OPS = [
    ("add", "chain", "c", ""),
    ("flush", "chain", "c", ""),
    ("add", "rule", "c", ((JUMP, "saddr", "10.1.2.3", "jump", "a"), None)),
    ("add", "rule", "c", ((JUMP, "daddr", "0.0.0.0", "goto", "b"), "a comment")),
    ("add", "rule", "c", ((DNAT, "tcp", "10.1.2.3", 8080), None)),
    ("add", "rule", "c", ((DNAT, "udp", "255.255.255.255", 53), None)),
    ("add", "rule", "c", ((DNAT, "sctp", "10.9.9.9", 65535), None)),
    ("add", "rule", "a", ((NUMGEN, ("b", "c", "b")), None)),
    ("add", "rule", "a", ((NUMGEN, ("c",)), None)),
    ("add", "rule", "b", ((MASQ, "172.30.0.1", "10.0.0.0/8", "jump", "a"), None)),
    ("add", "rule", "b", ((MASQ, "172.30.0.1", "10.1.2.3/16", "jump", "a"), None)),   # host bits cleared
    ("add", "rule", "b", ((MASQ, "172.30.0.1", "10.1.2.3/32", "jump", "a"), None)),   # a /32: the parser's
    ("add", "rule", "b", ("ip daddr 1.2.3.4 counter accept", None)),
    ("add", "rule", "b", ((GO, "jump", "a"), None)),
    ("add", "rule", "b", ((GO, "goto", "c"), "short-circuit")),
    ("add", "element", "m", ("172.30.0.1 . tcp . 80", "goto c", None)),
    ("add", "element", "m", ("172.30.0.2 . udp . 53", "drop", "ns/svc:dns")),
    ("add", "element", "m", ("172.30.0.1 . tcp . 80", "goto b", None)),              # exists: the first stays
    ("add", "element", "s", ("172.30.0.9", "", None)),
    ("add", "element", "s", ("172.30.0.3", "", None)),
    ("add", "element", "n", ("tcp . 30080", "goto a", None)),
    ("add", "element", "n", ("udp . domain", "accept", None)),                       # a service by name
    ("flush", "chain", "a", ""),                                                       # its anonymous maps go
    ("add", "rule", "a", ((NUMGEN, ("c", "b")), None)),
    ("delete", "element", "s", ("172.30.0.9", "", None)),
    (ADD_FLUSH, "chain", "e", ""),
    ("add", RULES, "e", ((JUMP, "saddr", "10.2.0.1", "jump", "a"), (DNAT, "tcp", "10.2.0.1", 80))),
    ("add", RULES, "e", ((JUMP, "saddr", "10.2.0.1", "jump", "a"), (DNAT, "udp", "10.2.0.2", 53))),  # two addresses
    (ADD_FLUSH, "chain", "e", ""),                                                    # there: flushed
    ("add", RULES, "e", ((JUMP, "saddr", "10.2.0.3", "goto", "b"), (DNAT, "sctp", "10.2.0.3", 9))),
    ("add", "chain", "d", ' { comment "x" ; }'),
    ("add", "set", "aff", " { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }"),
    ("add", "rule", "d", ("update @aff { ip saddr }", None)),
]


def both_routes(ops: list[Any], setup: str = SETUP) -> tuple[Ruleset, Ruleset]:
    direct, parsed = Ruleset(), Ruleset()
    for rs in (direct, parsed):
        Parser(setup, rs).script()
    apply(Tx("ip", "t", list(ops)), direct)
    Parser(Tx("ip", "t", list(ops)).text(), parsed, validate_jumps=False).script()
    return direct, parsed


def test_every_operation_makes_what_the_parser_makes() -> None:
    direct, parsed = both_routes(OPS)
    a, b = direct.tables[0], parsed.tables[0]
    assert (a.next_handle, a.anon_seq) == (b.next_handle, b.anon_seq)
    assert list(a.chains) == list(b.chains) and list(a.sets) == list(b.sets)
    for name, chain in b.chains.items():
        mine = a.chains[name]
        assert (mine.handle, mine.comment, [r.handle for r in mine.rules]) == \
            (chain.handle, chain.comment, [r.handle for r in chain.rules]), name
        for r1, r2 in zip(mine.rules, chain.rules, strict=True):
            assert (r1.stmts, r1.comment, r1.anon_sets) == (r2.stmts, r2.comment, r2.anon_sets), name
    for name, s in b.sets.items():
        mine_s = a.sets[name]
        assert (mine_s.handle, mine_s.flags, mine_s.key, mine_s.data, mine_s.elems) == \
            (s.handle, s.flags, s.key, s.data, s.elems), name
    assert run_nft(["-a", "list", "ruleset"], direct)[1] == run_nft(["-a", "list", "ruleset"], parsed)[1]


def test_the_text_is_the_proxiers_lines() -> None:
    tx = Tx("ip", "kube-proxy", [("add", "table", "", ' { comment "rules for kube-proxy" ; }'),
                                 ("add", "rule", "c", ((NUMGEN, ("e0", "e1")), None)),
                                 (ADD_FLUSH, "chain", "e0", ""),
                                 ("add", RULES, "e0", ((JUMP, "saddr", "10.1.0.1", "jump", "m"),
                                                       (DNAT, "tcp", "10.1.0.1", 8080))),
                                 ("add", "element", "m", ("1.2.3.4 . tcp . 80", "goto c", "ns/s:p")),
                                 ("delete", "element", "m", ("1.2.3.4 . tcp . 80", "goto c", "ns/s:p"))])
    assert tx.text() == ('add table ip kube-proxy { comment "rules for kube-proxy" ; }\n'
                         "add rule ip kube-proxy c numgen random mod 2 vmap { 0 : goto e0 , 1 : goto e1 }\n"
                         "add chain ip kube-proxy e0\nflush chain ip kube-proxy e0\n"
                         "add rule ip kube-proxy e0 ip saddr 10.1.0.1 jump m\n"
                         "add rule ip kube-proxy e0 meta l4proto tcp dnat to 10.1.0.1:8080\n"
                         'add element ip kube-proxy m { 1.2.3.4 . tcp . 80 comment "ns/s:p" : goto c }\n'
                         "delete element ip kube-proxy m { 1.2.3.4 . tcp . 80 }\n")
    assert str(tx) == tx.text() and len(tx) == 6 and tx.lines == 8 == tx.text().count("\n")
    assert op_text("ip6", "t", ("add", "rule", "c", ((JUMP, "saddr", "fd00::1", "jump", "m"), None))) == \
        "add rule ip6 t c ip6 saddr fd00::1 jump m"


# ---- failures --------------------------------------------------------------------------------------
def loaded_node() -> tuple[Node, NftablesProxier, Objects]:
    (node, proxier), _ = pair()
    objs = overall_objects()
    assert not proxier.sync(objs).error
    return node, proxier, objs


@pytest.mark.parametrize("bad", [
    ("add", "rule", "mark-for-masquerade", ((JUMP, "saddr", "10.1.1.1", "jump", "no-such-chain"), None)),
    ("add", "rule", "no-such-chain", ((DNAT, "tcp", "10.1.1.1", 80), None)),
    ("add", "element", "no-such-map", ("10.1.1.1", "", None)),
    ("add", "element", "service-ips", ("10.1.1.1 . tcp . 80", "goto no-such-chain", None)),
    ("add", "rule", "services", ("ip daddr 10.1.1.1 nonsense", None)),
    ("add", RULES, "fresh", ((JUMP, "saddr", "10.1.1.1", "jump", "nowhere"), (DNAT, "tcp", "10.1.1.1", 80))),
    ("add", "rule", "fresh", ((DNAT, "tcp", "10.1.1.1", 99999), None)),        # nft's own error, not the kernel's
])
@pytest.mark.parametrize("table_exists", [True, False])
def test_a_failed_transaction_changes_nothing_and_says_what_nft_says(bad: Any, table_exists: bool) -> None:
    node, proxier, _ = loaded_node()
    if not table_exists:
        node = Node.from_description(NODE)
        node_ruleset(node)
    before = (run_nft(["-a", "list", "ruleset"], node.nftables or Ruleset())[1], node_to_json(node))
    ops = [("add", "table", "", ""), ("add", "chain", "fresh", ""), ("add", "chain", "mark-for-masquerade", ""),
           ("add", "rule", "fresh", ((JUMP, "saddr", "10.1.1.1", "jump", "mark-for-masquerade"), None)),
           ("add", "map", "service-ips", " { type ipv4_addr . inet_proto . inet_service : verdict ; }"), bad,
           ("add", "rule", "fresh", ((DNAT, "tcp", "10.1.1.1", 80), None))]
    tx = Tx("ip", "kube-proxy", ops)
    with pytest.raises(BackendError) as structured:
        EmulatedNft(node).run(tx)
    assert (run_nft(["-a", "list", "ruleset"], node.nftables or Ruleset())[1], node_to_json(node)) == before
    with pytest.raises(BackendError) as text:
        EmulatedNft(node).run(tx.text())
    assert str(structured.value) == str(text.value) and "/dev/stdin:6:" in str(text.value)
    assert (run_nft(["-a", "list", "ruleset"], node.nftables or Ruleset())[1], node_to_json(node)) == before


def test_a_sync_that_fails_on_the_node_leaves_it_and_the_next_one_is_full() -> None:
    """Someone deleted an endpoint chain the proxier keeps: its next partial sync names the chain in a
    verdict map and fails whole; the full sync after it puts everything back."""
    node, proxier, objs = loaded_node()
    svc4 = [c for c in proxier._services["ns4/svc4"].chains if c.startswith("endpoint-")]
    kept, changed = sorted(svc4)
    service_chain = next(c for c in proxier._services["ns4/svc4"].chains if c.startswith("service-"))
    EmulatedNft(node).run(f"flush chain ip kube-proxy {service_chain}\ndelete chain ip kube-proxy {kept}\n")
    before = run_nft(["-a", "list", "ruleset"], node.nftables)[1]
    eps = [e for e in ("10.180.0.4", "10.180.0.5") if e in kept] + ["10.180.0.99"]
    put(objs, slice_("ns4", "svc4", [ep(eps[0], "test-node" if eps[0] == "10.180.0.5" else None), ep(eps[1])],
                     [("p80", 80, "TCP")]))
    r = proxier.sync(objs)
    assert r.error.startswith("/dev/stdin:") and "No such file or directory" in r.error and proxier.need_full
    assert f"goto {kept}" in r.error.splitlines()[1]
    assert run_nft(["-a", "list", "ruleset"], node.nftables)[1] == before
    r = proxier.sync(objs)
    assert r.full and not r.error and kept in node.nftables.tables[0].chains
    (fresh, fresh_proxier), _ = pair()
    assert not fresh_proxier.sync(copy.deepcopy(objs)).error
    # the same table (nft lists the chains the failed sync left alone where they were), but for the
    # chain of the endpoint replaced, flushed and waiting to be deleted
    got = blocks(run_nft(["list", "ruleset"], node.nftables)[1])
    assert set(proxier.stale_chains) == {changed} and got.pop(f"chain {changed} {{") == []
    assert got == blocks(run_nft(["list", "ruleset"], fresh.nftables)[1])
