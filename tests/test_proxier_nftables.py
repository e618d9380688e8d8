"""The nftables proxier: upstream's unit-test scenarios as our objects, compared table against table.

Upstream's expectations (``tests/data/nft_proxier/*.nft``, written from what
pkg/proxy/nftables/proxier_test.go asserts) are loaded into a fresh emulated ruleset; the proxier's
own transactions go to an emulated node; the two ``nft list table`` outputs must be the same, up to
the order nft happens to list blocks and set elements in.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from kproxy.backends import BackendError
from kproxy.backends.nft import EmulatedNft
from kproxy.k8s.manifests import Objects
from kproxy.nftables.cli import run_nft
from kproxy.nftables.model import Ruleset
from kproxy.nftables.transaction import op_text
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.metrics import ProxyMetrics
from kproxy.proxy.nftables import NftablesProxier, endpoint_base, hash_and_truncate
from kproxy.proxy.proxier import proxier_class

DATA = Path(__file__).parent / "data" / "nft_proxier"
NODE = {"name": "test-node", "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]}]}
# upstream's fake network: lo and eth0 with these addresses
NODE_IPS = ["127.0.0.1", "::1", "192.168.0.2", "192.168.1.2", "192.168.99.11", "2001:db8::1", "2001:db8:1::2"]
ORDER = {"table": 0, "set": 1, "map": 1, "chain": 1, "rule": 2, "element": 3}


# ---- objects as upstream's makeTestService / makeTestEndpointSlice build them ----------------------
def svc(ns: str, name: str, cluster_ip: str, ports: list[dict[str, Any]], type_: str = "ClusterIP",
        lb: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    status = {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb]}} if lb else {}
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"type": type_, "clusterIP": cluster_ip, "ports": ports, **spec}, "status": status}


def port(name: str, number: int, proto: str = "TCP", node_port: int = 0, target: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "port": number, "protocol": proto, "targetPort": target or number}
    if node_port:
        out["nodePort"] = node_port
    return out


def slice_(ns: str, name: str, eps: list[dict[str, Any]], ports: list[tuple[str, int, str]],
           family: str = "IPv4", suffix: str = "1") -> dict[str, Any]:
    return {"kind": "EndpointSlice", "metadata": {"name": f"{name}-{suffix}", "namespace": ns,
                                                  "labels": {"kubernetes.io/service-name": name}},
            "addressType": family,
            "endpoints": [{"conditions": {"ready": True}, **e} for e in eps],
            "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports]}


def ep(ip: str, node: str | None = None, **conditions: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [ip]}
    if node:
        out["nodeName"] = node
    if conditions:
        out["conditions"] = conditions
    return out


def objects(*docs: dict[str, Any]) -> Objects:
    objs = Objects()
    for d in docs:
        objs.add(d, "test")
    assert not objs.warnings, objs.warnings
    return objs


def fake_proxier(family: int = 4, **cfg: Any) -> tuple[Node, NftablesProxier]:
    """Upstream's NewFakeProxier: pod CIDR 10.0.0.0/8, service CIDR 172.30.0.0/16, node IP 192.168.0.2,
    nodePortAddresses 192.168.0.2/32 and 2001:db8::1/128, masquerade bit 14."""
    node = Node.from_description(NODE)
    pod, svc_cidr = ("10.0.0.0/8", "172.30.0.0/16") if family == 4 else ("fd00:10::/64", "fd00:10:96::/112")
    config = ProxyConfig.from_dict({"mode": "nftables", "clusterCIDR": pod, "detectLocalMode": "ClusterCIDR",
                                    "hostnameOverride": "test-node",
                                    "nodePortAddresses": ["192.168.0.2/32", "2001:db8::1/128"], **cfg})
    proxier = NftablesProxier(config, EmulatedNft(node, family), NODE_IPS, family=family, metrics=ProxyMetrics(),
                              service_cidrs=[svc_cidr], node_ip="192.168.0.2" if family == 4 else "2001:db8::1")
    return node, proxier


# ---- comparing tables -----------------------------------------------------------------------------
def load_expected(*names: str) -> str:
    """Upstream's expected dump (a sorted listing, not a valid transaction order) applied in an order
    nft accepts; returns nft's listing of the table."""
    lines = [line for name in names for line in (DATA / name).read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    lines.sort(key=lambda line: ORDER[line.split()[1]])
    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), "\n".join(lines) + "\n")
    assert rc == 0, err
    fam = lines[0].split()[2]
    rc, out, err, _ = run_nft(["list", "table", fam, "kube-proxy"], rs)
    assert rc == 0, err
    return out


def blocks(listing: str) -> dict[str, list[str]]:
    """A table listing as {block header: its lines}, with set and map elements sorted (nft lists blocks
    in creation order and elements in the order it holds them; neither is the table's content)."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in listing.splitlines():
        line = raw.strip()
        if re.match(r"^(set|map|chain) \S+ \{$", line):
            current = out.setdefault(line, [])
        elif line == "}" and raw.startswith("\t}"):
            current = None
        elif current is not None and line:
            current.append(line)
        elif line and not line.startswith("table") and line != "}":
            out.setdefault("table", []).append(line)
    for header, body in out.items():
        text = " ".join(body)
        m = re.search(r"elements = \{ (.*) \}", text)
        if m:
            rest = text[:m.start()].split("  ") + [text[m.end():]]
            out[header] = [x for x in rest if x.strip()] + sorted(e.strip() for e in m.group(1).split(","))
    return out


def table_of(node: Node, family: int = 4) -> str:
    return EmulatedNft(node, family).list_table()


def assert_same_table(node: Node, *expected: str, family: int = 4) -> None:
    want, got = blocks(load_expected(*expected)), blocks(table_of(node, family))
    assert sorted(got) == sorted(want)
    for header in want:
        assert got[header] == want[header], header


# ---- upstream's scenarios -------------------------------------------------------------------------
def overall_objects() -> Objects:
    p80 = [("p80", 80, "TCP")]
    return objects(
        svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)]),
        svc("ns2", "svc2", "172.30.0.42", [port("p80", 80, node_port=3001)], "LoadBalancer", lb=["1.2.3.4"],
            externalTrafficPolicy="Local", externalIPs=["192.168.99.22"], healthCheckNodePort=30000),
        svc("ns3", "svc3", "172.30.0.43", [port("p80", 80, node_port=3003)], "NodePort"),
        svc("ns4", "svc4", "172.30.0.44", [port("p80", 80)], "NodePort", externalIPs=["192.168.99.33"]),
        svc("ns5", "svc5", "172.30.0.45", [port("p80", 80, node_port=3002)], "LoadBalancer", lb=["5.6.7.8"],
            externalTrafficPolicy="Cluster", healthCheckNodePort=30000, loadBalancerSourceRanges=[" 203.0.113.0/25"],
            sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10800}}),
        svc("ns6", "svc6", "172.30.0.46", [port("p80", 80)]),
        slice_("ns1", "svc1", [ep("10.180.0.1")], p80),
        slice_("ns2", "svc2", [ep("10.180.0.2")], p80),
        slice_("ns3", "svc3", [ep("10.180.0.3")], p80),
        slice_("ns4", "svc4", [ep("10.180.0.4"), ep("10.180.0.5", "test-node")], p80),
        slice_("ns5", "svc5", [ep("10.180.0.3")], p80),
    )


def test_chain_names_are_upstreams_hashes() -> None:
    assert hash_and_truncate("ns1/svc1/tcp/p80") == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert hash_and_truncate("ns1/svc1/tcp/p80__10.180.0.1/80") == "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    long = "n" * 63 + "/" + "s" * 63 + "/sctp/" + "p" * 63 + "__2001.0db8.1234.5678.9abc.def0.1234.5678/65535"
    assert len(hash_and_truncate(long)) == 240 and hash_and_truncate(long).endswith("...")


def test_the_mode_is_registered() -> None:
    assert proxier_class("nftables") is NftablesProxier


def test_empty_cluster_is_upstreams_base_table() -> None:
    node, proxier = fake_proxier()
    result = proxier.sync(objects())
    assert result.full and not result.error
    assert_same_table(node, "base_ipv4.nft")


def test_overall_rules_are_upstreams() -> None:
    """TestOverallNFTablesRules: ClusterIP, LoadBalancer eTP Local, NodePort, external IP, LoadBalancer
    with source ranges and affinity, and a Service without endpoints."""
    node, proxier = fake_proxier()
    result = proxier.sync(overall_objects())
    assert not result.error, result.error
    assert_same_table(node, "base_ipv4.nft", "overall.nft")
    assert result.rules["elements"] == 23


def test_first_sync_creates_and_flushes_the_table_in_one_transaction() -> None:
    node, proxier = fake_proxier()
    text = proxier.sync(overall_objects()).text
    assert text.startswith('add table ip kube-proxy { comment "rules for kube-proxy" ; }\n')
    for name in ("filter-input", "nat-prerouting", "services", "masquerading"):
        assert f"flush chain ip kube-proxy {name}\n" in text
    for kind, name in (("set", "cluster-ips"), ("map", "service-ips"), ("map", "no-endpoint-services")):
        assert f"flush {kind} ip kube-proxy {name}\n" in text
    chain = "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert f"add chain ip kube-proxy {chain}\nflush chain ip kube-proxy {chain}\n" in text


# ---- partial syncs (upstream's TestSyncProxyRulesRepeated) ----------------------------------------
class Clock:
    """The proxier's monotonic clock, advanced by hand (upstream's ageStaleChains)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def es(ns: str, name: str, *ips: str, port_name: str = "p80", number: int = 80) -> dict[str, Any]:
    return slice_(ns, name, [ep(ip) for ip in ips], [(port_name, number, "TCP")])


def put(objs: Objects, *docs: dict[str, Any]) -> None:
    """Objects changed after a sync, as the watch delivers them (only their Services marked dirty)."""
    if objs.dirty is None:
        objs.dirty = set()
    for d in docs:
        if d["kind"] == "Service":
            from kproxy.k8s.objects import Service

            objs.update_service(Service.from_dict(d))
        else:
            from kproxy.k8s.objects import EndpointSlice

            objs.update_slice(EndpointSlice.from_dict(d))


def fresh_table(objs: Objects) -> dict[str, list[str]]:
    """The table a new proxier writes for ``objs`` in one full sync (what a partial one must reach)."""
    node, proxier = fake_proxier()
    assert not proxier.sync(rebuilt(objs)).error
    return blocks(table_of(node))


def assert_converged(node: Node, objs: Objects, stale: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """The table is what a full sync would write, plus the stale chains (flushed, waiting)."""
    got, want = blocks(table_of(node)), fresh_table(objs)
    for c in stale:
        assert got.pop(f"chain {c} {{", None) == [], c
    assert got == want


def test_repeated_syncs_change_only_what_changed() -> None:
    clock = Clock()
    node, proxier = fake_proxier()
    proxier.clock = clock
    objs = objects(svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)]),
                   svc("ns2", "svc2", "172.30.0.42", [port("p8080", 8080)]),
                   es("ns1", "svc1", "10.0.1.1"), es("ns2", "svc2", "10.0.2.1", port_name="p8080", number=8080))
    assert proxier.sync(objs).full
    assert_converged(node, objs)

    # add a Service with an endpoint: 2 elements, 2 chains added and flushed, 2 rules in each
    put(objs, svc("ns3", "svc3", "172.30.0.43", [port("p80", 80)]), es("ns3", "svc3", "10.0.3.1"))
    r = proxier.sync(objs)
    assert not r.full and not r.error and r.lines == 10
    assert_converged(node, objs)

    # delete a Service: its 2 elements deleted, its 2 chains flushed but kept for now
    objs.delete_service("ns2/svc2")
    r = proxier.sync(objs)
    assert r.lines == 4
    gone = {"service-MHHHYRWA-ns2/svc2/tcp/p8080", "endpoint-7RVP4LUQ-ns2/svc2/tcp/p8080__10.0.2.1/8080"}
    assert set(proxier.stale_chains) == gone
    assert_converged(node, objs, gone)
    assert "delete element ip kube-proxy service-ips { 172.30.0.42 . tcp . 8080 }" in r.text

    # a second later the stale chains go, in their own transaction; nothing else is written
    clock.now += 2
    r = proxier.sync(objs)
    assert r.lines == 0 and not proxier.stale_chains
    assert_converged(node, objs)

    # a Service without endpoints, then its endpoints
    put(objs, svc("ns4", "svc4", "172.30.0.44", [port("p80", 80)]))
    r = proxier.sync(objs)
    assert r.lines == 2 and 'no-endpoint-services { 172.30.0.44 . tcp . 80 comment "ns4/svc4:p80" : goto reject-chain }' in r.text
    put(objs, es("ns4", "svc4", "10.0.4.1"))
    assert proxier.sync(objs).lines == 10
    assert_converged(node, objs)

    # an endpoint changes: the service chain rewritten, the new endpoint chain made, the old one flushed
    put(objs, es("ns3", "svc3", "10.0.3.2"))
    r = proxier.sync(objs)
    assert r.lines == 9
    assert set(proxier.stale_chains) == {"endpoint-2OCDJSZQ-ns3/svc3/tcp/p80__10.0.3.1/80"}
    clock.now += 2
    # an endpoint added: upstream rewrites all 3 chains (12 operations); the endpoint chain that did not
    # change is left as it is here, so 8
    put(objs, es("ns3", "svc3", "10.0.3.2", "10.0.3.3"))
    assert proxier.sync(objs).lines == 8
    assert_converged(node, objs)

    # emptied endpoints: element moved to no-endpoint-services, 3 chains flushed; restored at once
    put(objs, es("ns3", "svc3"))
    assert proxier.sync(objs).lines == 5
    assert set(proxier.stale_chains) == {"service-4AT6LBPK-ns3/svc3/tcp/p80",
                                         "endpoint-SWWHDC7X-ns3/svc3/tcp/p80__10.0.3.2/80",
                                         "endpoint-TQ2QKHCZ-ns3/svc3/tcp/p80__10.0.3.3/80"}
    put(objs, es("ns3", "svc3", "10.0.3.2", "10.0.3.3"))
    assert proxier.sync(objs).lines == 14 and not proxier.stale_chains
    assert_converged(node, objs)

    # emptied, aged, restored: the chains are deleted first, then made again
    put(objs, es("ns3", "svc3"))
    proxier.sync(objs)
    clock.now += 2
    put(objs, es("ns3", "svc3", "10.0.3.2", "10.0.3.3"))
    assert not proxier.sync(objs).error
    assert_converged(node, objs)
    assert proxier.sync(objs).lines == 0
    from kproxy.nftables.evaluate import conntrack_users

    assert node.subsystems["nftables_ct_refs"] == conntrack_users(node.nftables)
    assert proxier.counts == fresh_proxier_counts(objs)


def fresh_proxier_counts(objs: Objects) -> dict[str, int]:
    _, proxier = fake_proxier()
    proxier.sync(rebuilt(objs))
    return proxier.counts


def rebuilt(objs: Objects) -> Objects:
    clone = Objects(dict(objs.services))
    for s in objs.slices.values():
        clone.update_slice(s)
    clone.dirty = None
    return clone


def test_a_failed_sync_keeps_the_rules_and_the_next_one_is_full() -> None:
    node, proxier = fake_proxier()
    metrics = proxier.metrics
    objs = objects(svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)]), es("ns1", "svc1", "10.0.1.1"))
    proxier.sync(objs)
    before = table_of(node)
    put(objs, svc("ns2", "svc2", "172.30.0.42", [port("p80", 80)]), es("ns2", "svc2", "10.0.2.1"))
    real_run = proxier.backend.run

    def failing(text: str) -> None:
        raise BackendError("Error: Could not process rule: No buffer space available")

    proxier.backend.run = failing
    r = proxier.sync(objs)
    assert r.error and not r.full and proxier.need_full
    assert table_of(node) == before
    assert metrics.nft_sync_failures._value.get() == 1
    proxier.backend.run = real_run
    r = proxier.sync(objs)
    assert r.full and not r.error and not proxier.need_full
    assert_converged(node, objs)


def test_a_full_sync_flushes_service_chains_it_does_not_know() -> None:
    """After a restart the table may hold chains of Services deleted meanwhile: flushed, then deleted."""
    clock = Clock()
    node, proxier = fake_proxier()
    proxier.clock = clock
    objs = objects(svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)]), es("ns1", "svc1", "10.0.1.1"))
    EmulatedNft(node).run('add table ip kube-proxy\nadd chain ip kube-proxy service-XXXXXXXX-ns9/old/tcp/p\n'
                          "add chain ip kube-proxy scratch\n"
                          "add set ip kube-proxy affinity-XXXXXXXX-ns9/old/tcp/p__10.0.9.9/80 { type ipv4_addr ; }\n")
    r = proxier.sync(objs)
    assert "flush chain ip kube-proxy service-XXXXXXXX-ns9/old/tcp/p\n" in r.text
    assert "delete set ip kube-proxy affinity-XXXXXXXX-ns9/old/tcp/p__10.0.9.9/80\n" in r.text
    assert set(proxier.stale_chains) == {"service-XXXXXXXX-ns9/old/tcp/p"}
    clock.now += 2
    proxier.sync(objs)
    got = blocks(table_of(node))
    assert got.pop("chain scratch {") == []          # not a service chain: left alone
    assert got == fresh_table(objs)


def test_a_failed_transaction_changes_nothing_on_the_node() -> None:
    node, proxier = fake_proxier()
    objs = objects(svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)]), es("ns1", "svc1", "10.0.1.1"))
    proxier.sync(objs)
    before = table_of(node)
    with pytest.raises(Exception, match="No such file or directory"):
        proxier.backend.run("add element ip kube-proxy service-ips { 172.30.0.50 . tcp . 80 : drop }\n"
                            "add element ip kube-proxy no-such-map { 172.30.0.50 }\n")
    assert table_of(node) == before


# ---- packets through the table ---------------------------------------------------------------------
FLOW_NODE = {"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]},
                                              {"name": "cni0", "addresses": ["10.0.1.1/24"]}],
             "routes": ["default via 192.168.0.1 dev eth0", "10.0.2.0/24 via 192.168.0.3 dev eth0"]}


def flow_setup(**cfg: Any) -> tuple[Node, NftablesProxier]:
    import random

    node = Node.from_description(FLOW_NODE)
    node.clock = 1000.0
    node.subsystems["rng"] = random.Random(3)
    config = ProxyConfig.from_dict({"mode": "nftables", "clusterCIDR": "10.0.0.0/16", "hostnameOverride": "node-a",
                                    **cfg})
    return node, NftablesProxier(config, EmulatedNft(node), ["192.168.0.2", "10.0.1.1"],
                                 service_cidrs=["172.30.0.0/16"])


def tcp(src: str, dst: str, sport: int, dport: int) -> Any:
    from kproxy.packet import SYN, Packet

    return Packet.make(src, dst, "tcp", sport, dport, tcp_flags=SYN)


def np_svc(name: str, ip: str, node_port: int, **spec: Any) -> dict[str, Any]:
    return svc("ns", name, ip, [port("p", 80, node_port=node_port)], "NodePort", **spec)


def test_flows_from_pods_node_and_outside() -> None:
    """Upstream's packet-flow expectations (runPacketFlowTests), on the emulated packet path."""
    node, proxier = flow_setup()
    p = [("p", 80, "TCP")]
    proxier.sync(objs := objects(
        np_svc("np", "172.30.0.60", 30080), slice_("ns", "np", [ep("10.0.2.30", "node-b")], p),
        np_svc("lo", "172.30.0.61", 30081, externalTrafficPolicy="Local"),
        slice_("ns", "lo", [ep("10.0.1.31", "node-a")], p),
        np_svc("lo2", "172.30.0.62", 30082, externalTrafficPolicy="Local"),
        slice_("ns", "lo2", [ep("10.0.2.32", "node-b")], p),
        svc("ns", "none", "172.30.0.63", [port("p", 80)])))
    r = node.receive(tcp("10.0.1.5", "172.30.0.60", 40001, 80), "cni0")      # pod to ClusterIP: DNAT only
    assert (r.fate, r.packet.dst_str, r.packet.src_str) == ("forwarded", "10.0.2.30", "10.0.1.5")
    r = node.send(tcp("0.0.0.0", "172.30.0.60", 40003, 80))                  # node to ClusterIP: masqueraded
    assert (r.packet.dst_str, r.packet.src_str) == ("10.0.2.30", "192.168.0.2")
    r = node.receive(tcp("203.0.113.9", "192.168.0.2", 40004, 30080), "eth0")   # NodePort, Cluster policy
    assert (r.fate, r.packet.dst_str, r.packet.src_str) == ("forwarded", "10.0.2.30", "192.168.0.2")
    r = node.receive(tcp("203.0.113.9", "192.168.0.2", 40005, 30081), "eth0")   # Local policy, local endpoint
    assert (r.fate, r.packet.dst_str, r.packet.src_str) == ("forwarded", "10.0.1.31", "203.0.113.9")
    r = node.receive(tcp("203.0.113.9", "192.168.0.2", 40006, 30082), "eth0")   # Local policy, none here
    assert r.fate == "dropped"
    r = node.receive(tcp("10.0.1.5", "172.30.0.63", 40007, 80), "cni0")      # no endpoints: rejected
    assert (r.fate, r.reject_with) == ("rejected", "icmp-port-unreachable")
    r = node.receive(tcp("10.0.1.5", "172.30.0.60", 40008, 443), "cni0")     # unknown port of a ClusterIP
    assert r.fate == "rejected"
    r = node.receive(tcp("10.0.1.5", "172.30.0.99", 40009, 80), "cni0")      # unallocated ClusterIP: dropped
    assert r.fate == "dropped"
    r = node.send(tcp("0.0.0.0", "127.0.0.1", 40010, 30080))                 # no NodePorts on localhost
    assert r.packet.dst_str == "127.0.0.1"
    # after partial syncs (the table updated in place), new connections follow the new endpoints
    put(objs, slice_("ns", "np", [ep("10.0.2.40", "node-b")], p), slice_("ns", "none", [ep("10.0.2.41", "node-b")], p))
    assert not proxier.sync(objs).full
    r = node.receive(tcp("10.0.1.5", "172.30.0.60", 40011, 80), "cni0")
    assert (r.fate, r.packet.dst_str) == ("forwarded", "10.0.2.40")
    r = node.receive(tcp("10.0.1.5", "172.30.0.63", 40012, 80), "cni0")
    assert (r.fate, r.packet.dst_str) == ("forwarded", "10.0.2.41")


# ---- policies, affinity, ranges, families -----------------------------------------------------------
def rules_of(proxier: NftablesProxier, key: str) -> list[str]:
    """A Service's rule lines, without the ``add rule ip kube-proxy`` prefix."""
    return [line.split(" ", 4)[4] for p in proxier._services[key].ports for op in p.body
            for line in op_text(proxier.fam, "kube-proxy", op).splitlines() if line.startswith("add rule")]


def test_external_policy_local_with_a_local_endpoint() -> None:
    node, proxier = fake_proxier()
    proxier.sync(objects(
        svc("ns1", "svc1", "172.30.0.41", [port("p80", 80, node_port=3001)], "LoadBalancer", lb=["1.2.3.4"],
            externalTrafficPolicy="Local", healthCheckNodePort=30000),
        slice_("ns1", "svc1", [ep("10.180.0.1", "test-node"), ep("10.180.2.1", "node2")], [("p80", 80, "TCP")])))
    base = "42NFTM6N"
    base = hash_and_truncate("ns1/svc1/tcp/p80")
    ext, cluster, local = f"external-{base}", f"service-{base}", f"local-{base}"
    assert set(proxier._services["ns1/svc1"].chains) == {ext, cluster, local,
                                                         "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
                                                         "endpoint-" + hash_and_truncate(
                                                             "ns1/svc1/tcp/p80__10.180.2.1/80")}
    r = rules_of(proxier, "ns1/svc1")
    assert f'{ext} ip saddr 10.0.0.0/8 goto {cluster} comment "short-circuit pod traffic"' in r
    assert f'{ext} fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"' in r
    assert f'{ext} fib saddr type local goto {cluster} comment "short-circuit local traffic"' in r
    assert r[r.index(f'{ext} fib saddr type local goto {cluster} comment "short-circuit local traffic"') + 1] == \
        f"{ext} goto {local}"
    assert f"{local} numgen random mod 1 vmap {{ 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }}" in r
    elements = proxier._services["ns1/svc1"].elements
    assert elements[("service-ips", "172.30.0.41 . tcp . 80")] == (f"goto {cluster}", None)
    assert elements[("service-ips", "1.2.3.4 . tcp . 80")] == (f"goto {ext}", None)
    assert elements[("service-nodeports", "tcp . 3001")] == (f"goto {ext}", None)
    assert not any(c in ("no-endpoint-services", "no-endpoint-nodeports") for c, _ in elements)


def test_internal_policy_local_without_local_endpoints_drops_cluster_ip_traffic() -> None:
    node, proxier = fake_proxier()
    metrics = proxier.metrics
    proxier.sync(objects(svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)], internalTrafficPolicy="Local"),
                         slice_("ns1", "svc1", [ep("10.180.2.1", "node2")], [("p80", 80, "TCP")])))
    elements = proxier._services["ns1/svc1"].elements
    assert elements == {("cluster-ips", "172.30.0.41"): ("", None),
                        ("no-endpoint-services", "172.30.0.41 . tcp . 80"): ("drop", "ns1/svc1:p80")}
    assert proxier._services["ns1/svc1"].chains == set()
    text = metrics.text().decode()
    assert 'kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="internal"} 1.0' in text


def test_terminating_endpoints_are_used_when_no_endpoint_is_ready() -> None:
    node, proxier = fake_proxier()
    proxier.sync(objects(svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)]),
                         slice_("ns1", "svc1", [ep("10.180.0.1", ready=False, serving=True, terminating=True),
                                                ep("10.180.0.2", ready=False, serving=False, terminating=True)],
                                [("p80", 80, "TCP")])))
    r = rules_of(proxier, "ns1/svc1")
    assert r[-1].endswith("meta l4proto tcp dnat to 10.180.0.1:80") and not any("10.180.0.2" in x for x in r)


def test_masquerade_all_and_every_local_address_for_node_ports() -> None:
    node, proxier = fake_proxier(nodePortAddresses=[], nftables={"masqueradeAll": True, "masqueradeBit": 5})
    text = proxier.sync(objects(svc("ns1", "svc1", "172.30.0.41", [port("p80", 80, node_port=3001)], "NodePort"),
                                es("ns1", "svc1", "10.180.0.1"))).text
    assert "add rule ip kube-proxy mark-for-masquerade mark set mark or 0x000020\n" in text
    assert rules_of(proxier, "ns1/svc1")[0] == \
        f"service-{hash_and_truncate('ns1/svc1/tcp/p80')} ip daddr 172.30.0.41 jump mark-for-masquerade"
    assert "delete set ip kube-proxy nodeport-ips\n" in text
    got = blocks(table_of(node))
    assert "set nodeport-ips {" not in got
    assert got["chain services {"][1] == \
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
    assert got["chain nodeport-endpoints-check {"] == \
        ["ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"]


def test_source_ranges_that_hold_the_node_let_the_load_balancer_ips_in() -> None:
    node, proxier = fake_proxier()
    proxier.sync(objects(
        svc("ns1", "svc1", "172.30.0.41", [port("p80", 80, node_port=3001)], "LoadBalancer", lb=["1.2.3.4", "5.6.7.8"],
            loadBalancerSourceRanges=["192.168.0.0/24", " 203.0.113.0/25"]),
        es("ns1", "svc1", "10.180.0.1")))
    fw = f"firewall-{hash_and_truncate('ns1/svc1/tcp/p80')}"
    assert f"{fw} ip saddr != {{ 192.168.0.0/24 , 203.0.113.0/25 , 1.2.3.4 , 5.6.7.8 }} drop" in \
        rules_of(proxier, "ns1/svc1")
    got = blocks(table_of(node))
    assert [e for e in got["map firewall-ips {"] if ": goto" in e] == [f"1.2.3.4 . tcp . 80 : goto {fw}", f"5.6.7.8 . tcp . 80 : goto {fw}"]


def test_affinity_sticks_a_client_to_its_endpoint() -> None:
    node, proxier = flow_setup()
    proxier.sync(objects(
        svc("ns", "aff", "172.30.0.70", [port("p", 80)], sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}),
        slice_("ns", "aff", [ep(f"10.0.2.{i}", "node-b") for i in (40, 41, 42)], [("p", 80, "TCP")])))
    first = node.receive(tcp("10.0.1.5", "172.30.0.70", 41000, 80), "cni0").packet.dst_str
    for sport in range(41001, 41011):
        assert node.receive(tcp("10.0.1.5", "172.30.0.70", sport, 80), "cni0").packet.dst_str == first
    assert len({node.receive(tcp(f"10.0.1.{i}", "172.30.0.70", 42000, 80), "cni0").packet.dst_str
                for i in range(6, 40)}) == 3


def ipv6_objects() -> Objects:
    return objects(
        svc("ns1", "svc1", "fd00:10:96::41", [port("p80", 80, node_port=3001)], "NodePort"),
        slice_("ns1", "svc1", [ep("fd00:10::1"), ep("fd00:10::2", "test-node")], [("p80", 80, "TCP")], family="IPv6"),
        svc("ns2", "svc2", "fd00:10:96::42", [port("p80", 80)], sessionAffinity="ClientIP"),
        slice_("ns2", "svc2", [ep("fd00:10::3")], [("p80", 80, "TCP")], family="IPv6"),
        svc("ns3", "svc3", "fd00:10:96::43", [port("p53", 53, "UDP")]))


def test_ipv6_table() -> None:
    node, proxier = fake_proxier(6)
    r = proxier.sync(ipv6_objects())
    assert not r.error, r.error
    got = blocks(table_of(node, 6))
    ep1 = "endpoint-" + endpoint_base(proxier.tracker.ports["ns1/svc1"][("ns1/svc1", "p80", "TCP")][0],
                                      proxier.tracker.ports["ns1/svc1"][("ns1/svc1", "p80", "TCP")][1][0])
    assert ep1.endswith("-ns1/svc1/tcp/p80__fd00.10..1/80")
    assert got[f"chain {ep1} {{"] == ["ip6 saddr fd00:10::1 jump mark-for-masquerade",
                                      "meta l4proto tcp dnat to [fd00:10::1]:80"]
    assert got["set nodeport-ips {"][-1] == "2001:db8::1"
    assert got["chain cluster-ips-check {"][1] == 'ip6 daddr fd00:10:96::/112 drop comment "Drop traffic to unallocated ClusterIPs"'
    assert "udp . 53" in " ".join(got["map no-endpoint-services {"])
    assert got["chain services {"] == ["ip6 daddr . meta l4proto . th dport vmap @service-ips",
                                       "ip6 daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"]


def test_dual_stack_syncs_both_tables_from_the_same_changes() -> None:
    from kproxy.proxy.proxier import MetaProxier

    node = Node.from_description(NODE)
    config = ProxyConfig.from_dict({"mode": "nftables", "clusterCIDR": "10.0.0.0/8,fd00:10::/64",
                                    "hostnameOverride": "test-node"})
    dual = MetaProxier(NftablesProxier(config, EmulatedNft(node, 4), NODE_IPS),
                       NftablesProxier(config, EmulatedNft(node, 6), NODE_IPS, family=6))
    objs = objects(svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)], clusterIPs=["172.30.0.41", "fd00:10:96::41"],
                       ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack"),
                   es("ns1", "svc1", "10.180.0.1"),
                   slice_("ns1", "svc1", [ep("fd00:10::1")], [("p80", 80, "TCP")], family="IPv6", suffix="6"))
    r = dual.sync(objs)
    assert r.full and not r.error and not dual.need_full
    assert "add table ip kube-proxy" in r.text and "add table ip6 kube-proxy" in r.text
    assert "dnat to 10.180.0.1:80" in table_of(node, 4) and "dnat to [fd00:10::1]:80" in table_of(node, 6)
    put(objs, slice_("ns1", "svc1", [ep("fd00:10::2")], [("p80", 80, "TCP")], family="IPv6", suffix="6"))
    r = dual.sync(objs)
    assert not r.full and r.lines == 9 and "[fd00:10::2]:80" in table_of(node, 6)


# ---- the command line -------------------------------------------------------------------------------
def test_proxy_once_in_nftables_mode_and_cleanup(tmp_path: Path) -> None:
    from click.testing import CliRunner

    import kproxy.cli.nft_cmd  # noqa: F401
    import kproxy.cli.proxy_cmd  # noqa: F401
    from kproxy.cli.main import cli

    node = str(tmp_path / "n.json")
    manifests = Path(__file__).parent.parent / "examples" / "manifests.yaml"
    run = CliRunner().invoke
    assert run(cli, ["--node", node, "node", "init"]).exit_code == 0
    cfg = tmp_path / "kp.yaml"
    cfg.write_text("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n"
                   "nftables:\n  masqueradeBit: 10\n  syncPeriod: 20s\n  minSyncPeriod: 2s\n")
    res = run(cli, ["--node", node, "proxy", "--config", str(cfg), "--manifests", str(manifests), "--once"])
    assert res.exit_code == 0, res.output
    assert "sync full:" in res.output and "map elements" in res.output
    listing = run(cli, ["--node", node, "nft", "list", "table", "ip", "kube-proxy"]).output
    assert "meta mark set meta mark | 0x00000400" in listing and "map service-ips {" in listing
    assert run(cli, ["--node", node, "nft", "add", "table", "inet", "mine"]).exit_code == 0
    res = run(cli, ["--node", node, "cleanup"])
    assert res.exit_code == 0 and "nft tables ip kube-proxy deleted" in res.output
    assert run(cli, ["--node", node, "nft", "list", "tables"]).output == "table inet mine\n"


def test_element_lines_make_the_table_one_command_makes_and_keep_nfts_error_lines() -> None:
    lines = ("add element ip kube-proxy cluster-ips { 172.30.0.9 }\n"
             "add element ip kube-proxy service-ips { 172.30.0.1 . tcp . 80 : drop }\n"
             "add element ip kube-proxy cluster-ips { 172.30.0.2 }\n"
             "add element ip kube-proxy cluster-ips { 172.30.0.9 }\n")
    joined = ("add element ip kube-proxy cluster-ips { 172.30.0.9, 172.30.0.2, 172.30.0.9 }\n"
              "add element ip kube-proxy service-ips { 172.30.0.1 . tcp . 80 : drop }\n")
    tables = []
    for text in (lines, joined):
        node, proxier = fake_proxier()
        proxier.sync(objects())
        proxier.backend.run(text)
        tables.append(table_of(node))
    assert tables[0] == tables[1] and "172.30.0.2, 172.30.0.9" in tables[0]
    node, proxier = fake_proxier()
    proxier.sync(objects())
    with pytest.raises(BackendError, match=r"^/dev/stdin:3:\d+-\d+: Error: "):
        proxier.backend.run("add element ip kube-proxy cluster-ips { 172.30.0.1 }\n"
                            "add element ip kube-proxy cluster-ips { 172.30.0.2 }\n"
                            "add element ip kube-proxy cluster-ips { 172.30.0.300 }\n")
    assert "172.30.0.1" not in table_of(node)


def one_endpoint_gone() -> tuple[Node, NftablesProxier, Objects, Clock]:
    """A Service synced with two endpoints, then with one: its old endpoint chain is stale."""
    clock = Clock()
    node, proxier = fake_proxier()
    proxier.clock = clock
    objs = objects(svc("ns1", "svc1", "172.30.0.41", [port("p80", 80)]), es("ns1", "svc1", "10.0.1.1", "10.0.1.2"))
    proxier.sync(objs)
    put(objs, es("ns1", "svc1", "10.0.1.1"))
    proxier.sync(objs)
    return node, proxier, objs, clock


def test_metrics_of_the_nftables_mode() -> None:
    node, proxier, objs, clock = one_endpoint_gone()
    text = proxier.metrics.text().decode()
    assert "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1.0" in text
    assert "kubeproxy_sync_partial_proxy_rules_duration_seconds_count 1.0" in text
    assert 'kubeproxy_sync_proxy_rules_nftables_objects{kind="rules"} 4.0' in text      # 2 service + 2 endpoint
    assert 'kubeproxy_sync_proxy_rules_nftables_objects{kind="chains"} 2.0' in text
    assert 'kubeproxy_sync_proxy_rules_nftables_objects{kind="elements"} 2.0' in text
    assert "kubeproxy_sync_proxy_rules_nftables_stale_chains 1.0" in text
    assert "kubeproxy_sync_proxy_rules_nftables_sync_failures_total 0.0" in text
    assert "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total 0.0" in text
    assert proxier.counts == {"rules": 4, "chains": 2, "elements": 2}


def test_a_stale_chain_that_cannot_be_deleted_is_counted_and_the_sync_goes_on() -> None:
    node, proxier, objs, clock = one_endpoint_gone()
    (stale,) = proxier.stale_chains
    EmulatedNft(node).run(f"add chain ip kube-proxy scratch\nadd rule ip kube-proxy scratch jump {stale}\n")
    clock.now += 2
    put(objs, es("ns1", "svc1", "10.0.1.1", "10.0.1.3"))
    r = proxier.sync(objs)
    assert not r.error and not proxier.stale_chains
    assert proxier.metrics.nft_cleanup_failures._value.get() == 1
    assert f"chain {stale} {{" in blocks(table_of(node))


def test_a_node_whose_nft_lacks_a_feature_is_told_which(tmp_path: Path) -> None:
    from kproxy.backends.nft import KernelNft

    old = tmp_path / "nft-old"
    old.write_text("#!/bin/sh\necho 'nftables v0.9.8 (E.D.S.)'\n")
    old.chmod(0o755)
    assert KernelNft(nft=str(old)).check() == "nft 0.9.8 is too old for the nftables proxy mode (needs 1.0.1 or later)"
    # an nft that rejects fib: the first feature whose probe fails is named, with nft's message
    no_fib = tmp_path / "nft-nofib"
    no_fib.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'nftables v1.0.6 (Lester Gooch #5)'; exit 0; }\n"
                      "if grep -q fib; then echo 'Error: syntax error, unexpected fib' >&2; exit 1; fi\n")
    no_fib.chmod(0o755)
    assert KernelNft(nft=str(no_fib)).check() == \
        "this node's nft (ip) lacks fib expressions: Error: syntax error, unexpected fib"
    assert "cannot run" in KernelNft(nft=str(tmp_path / "missing")).check()


class Sent:
    """The proxier's nft backend, keeping each transaction it was given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def run(self, text: str) -> None:
        self.texts.append(text)
        self.inner.run(text)

    def names(self, kind: str, table: str = "kube-proxy") -> list[str]:
        return self.inner.names(kind, table)


@pytest.mark.parametrize("full", [False, True])
def test_stale_chains_go_in_the_next_syncs_transaction_first(full: bool) -> None:
    """One ``nft -f`` per sync (each reads the whole table's chains first on a kernel): the deletion
    of the chains stale long enough leads the sync's own transaction; the sync's result is as before."""
    node, proxier, objs, clock = one_endpoint_gone()
    (stale,) = proxier.stale_chains
    sent = Sent(proxier.backend)
    proxier.backend = sent
    clock.now += 2
    put(objs, es("ns1", "svc1", "10.0.1.1", "10.0.1.3"))
    r = proxier.sync(objs, force_full=full)
    assert not r.error and not proxier.stale_chains and r.full == full
    assert sent.texts == [f"delete chain ip kube-proxy {stale}\n" + r.text]
    assert f"delete chain ip kube-proxy {stale}" not in r.text and f"flush chain ip kube-proxy {stale}" not in r.text
    assert f"chain {stale} {{" not in table_of(node)
    assert_converged(node, objs)


def test_a_sync_whose_transaction_fails_after_stale_chains_tries_them_on_their_own() -> None:
    node, proxier, objs, clock = one_endpoint_gone()
    (stale,) = proxier.stale_chains
    sent = Sent(proxier.backend)
    proxier.backend = sent
    clock.now += 2
    put(objs, es("ns1", "svc1", "10.0.1.1", "10.0.1.3"))
    real_run = sent.inner.run

    def failing(text: str) -> None:          # the sync's own lines are refused, the deletion is not
        if "add rule" in text:
            raise BackendError("Error: refused")
        real_run(text)

    sent.inner.run = failing  # type: ignore[method-assign]
    r = proxier.sync(objs)
    assert r.error == "Error: refused" and proxier.need_full
    assert len(sent.texts) == 3 and sent.texts[1] == f"delete chain ip kube-proxy {stale}\n"
    assert sent.texts[0] == sent.texts[1] + sent.texts[2]
    assert f"chain {stale} {{" not in table_of(node)         # upstream's own transaction for it went through
    assert proxier.metrics.nft_cleanup_failures._value.get() == 0


def test_a_full_sync_after_a_stale_chain_that_cannot_be_deleted_reads_the_chains_again() -> None:
    """The joint transaction fails on the deletion; upstream's order follows, and the sync's own text
    goes after the table's chains were read again (a kernel backend shapes a full sync by them)."""
    node, proxier, objs, clock = one_endpoint_gone()
    (stale,) = proxier.stale_chains
    EmulatedNft(node).run(f"add chain ip kube-proxy scratch\nadd rule ip kube-proxy scratch jump {stale}\n")
    calls: list[str] = []
    sent = Sent(proxier.backend)
    sent.names = lambda kind, table="kube-proxy": calls.append(f"names {kind}") or sent.inner.names(kind, table)  # type: ignore[method-assign]
    real_run = sent.run
    sent.run = lambda text: calls.append("run") or real_run(text)  # type: ignore[method-assign]
    proxier.backend = sent
    clock.now += 2
    r = proxier.sync(objs, force_full=True)
    assert not r.error and r.full
    assert calls == ["names chains", "names sets", "run", "run", "names chains", "run"]
    assert sent.texts[1] == f"delete chain ip kube-proxy {stale}\n" and sent.texts[2] == r.text
    assert proxier.metrics.nft_cleanup_failures._value.get() == 1
    assert set(proxier.stale_chains) == {stale}             # tried again after the grace period
    assert f"chain {stale} {{" in blocks(table_of(node))       # still there, stale again
