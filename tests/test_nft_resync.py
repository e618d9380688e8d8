"""The repair a later full sync sends to a kernel (``kproxy.backends.nft_resync``), worked out and
checked on emulated nodes: the kernel's listing with the repair applied must list as the same
listing with the full transaction applied."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest

from kproxy.backends.nft import EmulatedNft
from kproxy.backends.nft_resync import SetState, TableState, diff, plan
from kproxy.nftables.expr import Opts
from kproxy.nftables.store import node_ruleset
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.nftables import NftablesProxier

sys.path.insert(0, str(Path(__file__).parent))
from test_proxier_nftables import NODE, NODE_IPS, Clock, es, overall_objects, put  # noqa: E402

T = "ip kube-proxy"
SVC1 = "service-ULMVA6XW-ns1/svc1/tcp/p80"
EP1 = "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"


class Recording(EmulatedNft):
    """The emulated node's nft, keeping the last transaction it was given."""

    last: Any = None

    def run(self, text: Any) -> None:
        self.last = text
        super().run(text)


def synced() -> tuple[NftablesProxier, Recording, Any]:
    config = ProxyConfig.from_dict({"mode": "nftables", "clusterCIDR": "10.0.0.0/8", "hostnameOverride": "test-node",
                                    "nodePortAddresses": ["192.168.0.2/32"]})
    backend = Recording(Node.from_description(NODE))
    p = NftablesProxier(config, backend, NODE_IPS, service_cidrs=["172.30.0.0/16"], node_ip="192.168.0.2",
                        clock=Clock())
    objs = overall_objects()
    assert not p.sync(objs).error
    return p, backend, objs


def repaired(listing: str, repair: str) -> str:
    """``listing`` loaded on a fresh node, the repair applied: what the kernel would list."""
    nft = EmulatedNft(Node.from_description(NODE))
    nft.run(listing)
    if repair:
        nft.run(repair)
    return nft.list_table()


def full_sync_against(commands: list[str], state: tuple[Any, Any, Any] | None = None) -> tuple[str, str, str]:
    """(the repair, the tampered table repaired, the tampered table after the full transaction);
    ``state``: a proxier, backend and objects already synced (else new ones)."""
    p, backend, objs = state or synced()
    for cmd in commands:
        backend.run(cmd + "\n")
    before = backend.list_table()
    assert not p.sync(objs, force_full=True).error
    repair = plan(before, backend.last, "ip", "kube-proxy")
    assert repair is not None
    return repair, repaired(before, repair), backend.list_table()


def test_nothing_drifted_nothing_to_send() -> None:
    repair, got, want = full_sync_against([])
    assert repair == "" and got == want


CASES = {
    "flushed chain": [f"flush chain {T} services"],
    "deleted element": [f"delete element {T} service-ips {{ 172.30.0.41 . tcp . 80 }}"],
    "extra element": [f"add element {T} cluster-ips {{ 172.30.9.9 }}"],
    "changed element": [f"delete element {T} service-ips {{ 172.30.0.41 . tcp . 80 }}",
                        f"add element {T} service-ips {{ 172.30.0.41 . tcp . 80 : goto reject-chain }}"],
    "rules reordered": [f"flush chain {T} masquerading", f"add rule {T} masquerading masquerade fully-random",
                        f"add rule {T} masquerading mark and 0x4000 == 0 return"],
    "anonymous vmap": [f"flush chain {T} {SVC1}", f"add rule {T} {SVC1} numgen random mod 1 vmap {{ 0 : goto reject-chain }}"],
    "deleted chain": [f"flush chain {T} {SVC1}", f"delete chain {T} {EP1}"],
    "deleted base chain": [f"delete chain {T} nat-output"],
    "deleted set": [f"flush chain {T} cluster-ips-check", f"delete set {T} cluster-ips"],
    "flushed table": [f"flush table {T}"],
    "someone's chain": [f"add chain {T} mine", f"add rule {T} mine drop"],
    "stale service chain": [f"add chain {T} service-XXXXXXXX-ns9/gone/tcp/p", f"add rule {T} service-XXXXXXXX-ns9/gone/tcp/p drop"],
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_repair_gives_what_the_full_transaction_gives(name: str) -> None:
    repair, got, want = full_sync_against(CASES[name])
    assert got == want
    if name == "someone's chain":           # not the proxier's: a full sync leaves it, so does the repair
        assert repair == ""
    elif name == "flushed table":           # every chain and set: the whole table again
        assert len(repair.splitlines()) > 40
    else:
        assert 0 < len(repair.splitlines()) < 40, repair


def test_the_repair_of_a_flushed_chain_is_that_chain() -> None:
    repair, _, _ = full_sync_against([f"flush chain {T} services"])
    assert repair.splitlines() == [
        f"flush chain {T} services",
        f"add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {T} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"]


@pytest.mark.parametrize("seed", range(6))
def test_random_drift_is_repaired(seed: int) -> None:
    """Rules deleted (from any chain, by handle) and elements deleted at random."""
    rng = random.Random(seed)
    p, backend, objs = synced()
    put(objs, es("ns1", "svc1", "10.180.0.7", "10.180.0.8"))    # and a change the full sync brings
    table = node_ruleset(backend.node).find("ip", "kube-proxy")
    assert table is not None
    commands = []
    for c in rng.sample(sorted(table.chains), 6):
        for r in table.chains[c].rules:
            if rng.random() < 0.6:
                commands.append(f"delete rule {T} {c} handle {r.handle}")
    for s in ("service-ips", "cluster-ips", "no-endpoint-services"):
        for e in table.sets[s].elems:
            if rng.random() < 0.4:
                commands.append(f"delete element {T} {s} {{ {e.key.text(Opts())} }}")
    _, got, want = full_sync_against(commands, (p, backend, objs))
    assert got == want


def test_affinity_elements_stay_out_of_the_comparison() -> None:
    p, backend, objs = synced()
    aff = next(s for s in backend.names("sets") if s.startswith("affinity-"))
    backend.run(f"add element {T} {aff} {{ 10.9.9.9 timeout 1h expires 59m }}\n")
    before = backend.list_table()
    assert "10.9.9.9 timeout 1h expires 59m" in before
    assert not p.sync(objs, force_full=True).error
    assert plan(before, backend.last, "ip", "kube-proxy") == ""


def test_what_cannot_change_in_place_goes_in_full() -> None:
    have = TableState(("flags dormant",), sets={"s": SetState(False, ("type ipv4_addr",), {})})
    want = TableState((), sets={"s": SetState(False, ("type ipv4_addr",), {})})
    assert diff("ip", "t", have, want) is None                  # the table's flags
    want = TableState(("flags dormant",), sets={"s": SetState(False, ("type ipv6_addr",), {})})
    assert diff("ip", "t", have, want) is None                  # a set's type
    _, backend, _ = synced()
    assert plan("table ip kube-proxy { chain c { bogus } }\n", "", "ip", "kube-proxy") is None
    assert plan(backend.list_table(), f"add rule {T} services jump nowhere\n", "ip", "kube-proxy") is None
    assert plan(backend.list_table() + "table ip other {\n}\n", "", "ip", "kube-proxy") is None


def test_elements_split_as_listed() -> None:
    from kproxy.backends.nft_resync import element_key, split_elements

    text = '{ 10.0.0.1 . tcp . 80 comment "a, b" : goto x, 10.0.0.2 . tcp . 80 : drop,\t     1.2.3.4 timeout 1h }'
    assert split_elements(text) == ['10.0.0.1 . tcp . 80 comment "a, b" : goto x', "10.0.0.2 . tcp . 80 : drop",
                                    "1.2.3.4 timeout 1h"]
    assert element_key('10.0.0.1 . tcp . 80 comment "a : b" : goto x', True) == "10.0.0.1 . tcp . 80"
    assert element_key("1.2.3.4 timeout 1h expires 59m", False) == "1.2.3.4"
