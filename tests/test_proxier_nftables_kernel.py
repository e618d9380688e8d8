"""The nftables proxier's transactions on a real kernel (``nft -f -`` in a ``kp-`` namespace): the
kernel's ``nft list table ip kube-proxy`` must equal the emulated node's after each sync."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kproxy.backends import BackendError
from kproxy.backends.nft import EmulatedNft, KernelNft
from kproxy.lab.netns import Netns, kernel_lab_available
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.nftables import NftablesProxier

sys.path.insert(0, str(Path(__file__).parent))
from test_proxier_nftables import (  # noqa: E402
    NODE,
    NODE_IPS,
    Clock,
    es,
    overall_objects,
    port,
    put,
    svc,
)

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(kernel_lab_available() is not None, reason=str(kernel_lab_available()))]


@pytest.fixture
def ns() -> Iterator[Netns]:
    n = Netns.create("nftp")
    try:
        yield n
    finally:
        n.delete()


def twin_proxiers(ns: Netns, **cfg: object) -> tuple[NftablesProxier, NftablesProxier, Node, Clock]:
    """The same proxier twice: on the kernel of ``ns`` and on an emulated node, one clock."""
    config = ProxyConfig.from_dict({"mode": "nftables", "clusterCIDR": "10.0.0.0/8", "hostnameOverride": "test-node",
                                    "nodePortAddresses": ["192.168.0.2/32"], **cfg})
    clock = Clock()
    node = Node.from_description(NODE)
    kw = {"service_cidrs": ["172.30.0.0/16"], "node_ip": "192.168.0.2", "clock": clock}
    kernel = NftablesProxier(config, KernelNft(4, netns=ns.name), NODE_IPS, **kw)  # type: ignore[arg-type]
    emulated = NftablesProxier(config, EmulatedNft(node), NODE_IPS, **kw)  # type: ignore[arg-type]
    return kernel, emulated, node, clock


def assert_twins(kernel: NftablesProxier, emulated: NftablesProxier) -> str:
    got = kernel.backend.list_table()
    assert got == emulated.backend.list_table()
    return got


def test_the_kernels_nft_has_what_the_mode_needs(ns: Netns) -> None:
    assert KernelNft(4, netns=ns.name).check() == ""
    assert KernelNft(6, netns=ns.name).check() == ""
    assert ns.run(["nft", "list", "ruleset"]).stdout == ""          # the probes left nothing behind


def test_first_and_partial_syncs_on_the_kernel_equal_the_emulated_table(ns: Netns) -> None:
    kernel, emulated, _, clock = twin_proxiers(ns)
    objs = overall_objects()
    objs_twin = overall_objects()
    for p, o in ((kernel, objs), (emulated, objs_twin)):
        r = p.sync(o)
        assert r.full and not r.error, r.error
    listing = assert_twins(kernel, emulated)
    assert "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80" in listing

    # one endpoint changes: a partial transaction on both
    for p, o in ((kernel, objs), (emulated, objs_twin)):
        put(o, es("ns1", "svc1", "10.180.0.9"))
        r = p.sync(o)
        assert not r.full and not r.error and r.lines == 9, (r.error, r.text)
    assert_twins(kernel, emulated)

    # a Service goes away; its chains are flushed, then deleted a second later
    for p, o in ((kernel, objs), (emulated, objs_twin)):
        o.delete_service("ns5/svc5")
        assert not p.sync(o).error
    listing = assert_twins(kernel, emulated)
    assert "affinity-GTK6MW7G" not in listing and "chain service-HVFWP5L3-ns5/svc5/tcp/p80 {\n\t}" in listing
    clock.now += 2
    for p, o in ((kernel, objs), (emulated, objs_twin)):
        put(o, svc("ns7", "svc7", "172.30.0.47", [port("p80", 80)]))
        assert not p.sync(o).error
    listing = assert_twins(kernel, emulated)
    assert "ns5/svc5" not in listing


def test_a_restarted_proxier_takes_over_the_kernels_table(ns: Netns) -> None:
    kernel, emulated, _, _ = twin_proxiers(ns)
    kernel.sync(overall_objects())
    again, _, _, _ = twin_proxiers(ns)
    r = again.sync(overall_objects())
    assert r.full and not r.error, r.error
    assert again.backend.list_table() == kernel.backend.list_table()


def test_a_rejected_transaction_is_an_error_with_nfts_message_and_changes_nothing(ns: Netns) -> None:
    kernel, _, _, _ = twin_proxiers(ns)
    kernel.sync(overall_objects())
    before = kernel.backend.list_table()
    with pytest.raises(Exception, match="No such file or directory"):
        kernel.backend.run("add element ip kube-proxy service-ips { 172.30.0.50 . tcp . 80 : goto nowhere }\n")
    assert kernel.backend.list_table() == before


def test_cleanup_deletes_the_kube_proxy_tables_and_nothing_else(ns: Netns) -> None:
    kernel, _, _, _ = twin_proxiers(ns)
    kernel.sync(overall_objects())
    ns.run(["nft", "add table inet mine"])
    assert KernelNft(4, netns=ns.name).delete_table() is True
    assert KernelNft(6, netns=ns.name).delete_table() is False
    assert ns.run(["nft", "list", "tables"]).stdout == "table inet mine\n"


def test_ipv6_table_on_the_kernel_equals_the_emulated_one(ns: Netns) -> None:
    from test_proxier_nftables import ipv6_objects

    config = ProxyConfig.from_dict({"mode": "nftables", "clusterCIDR": "fd00:10::/64", "hostnameOverride": "test-node",
                                    "nodePortAddresses": ["2001:db8::1/128"]})
    node = Node.from_description(NODE)
    kw = {"family": 6, "service_cidrs": ["fd00:10:96::/112"], "node_ip": "2001:db8::1"}
    kernel = NftablesProxier(config, KernelNft(6, netns=ns.name), NODE_IPS, **kw)  # type: ignore[arg-type]
    emulated = NftablesProxier(config, EmulatedNft(node, 6), NODE_IPS, **kw)  # type: ignore[arg-type]
    for p in (kernel, emulated):
        r = p.sync(ipv6_objects())
        assert r.full and not r.error, r.error
    listing = assert_twins(kernel, emulated)
    assert listing.startswith("table ip6 kube-proxy {") and "dnat to [fd00:10::1]:80" in listing


def test_reshaped_big_transactions_leave_the_emulated_table(ns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every anonymous-vmap chain moved to the front of later full syncs, a first sync in transactions
    of 40 lines with the hooks' rules last: the same table as the text applied as it is, through first,
    forced full (with new Services and endpoints), partial and restarted syncs."""
    from kproxy.backends import nft_phases

    monkeypatch.setattr(nft_phases, "MIN_ANONYMOUS_RULES", 1)
    monkeypatch.setattr(nft_phases, "CHUNK_LINES", 40)
    shapes: list[str] = []
    reshape = nft_phases.reshape

    def spy(*args: object) -> object:
        out = reshape(*args)  # type: ignore[arg-type]
        shapes.append("none" if out is None else f"new table in {len(out.parts)}" if out.fresh else "one")
        return out

    monkeypatch.setattr(nft_phases, "reshape", spy)
    # later full syncs as full transactions (not repairs of what differs: tests/test_nft_resync_kernel.py)
    monkeypatch.setattr(KernelNft, "resync", False, raising=False)
    kernel, emulated, _, _ = twin_proxiers(ns)
    objs, objs_twin = overall_objects(), overall_objects()
    for p, o in ((kernel, objs), (emulated, objs_twin)):
        assert not p.sync(o).error
    assert_twins(kernel, emulated)
    for p, o in ((kernel, objs), (emulated, objs_twin)):
        put(o, es("ns1", "svc1", "10.180.0.9", "10.180.0.10"))
        put(o, svc("ns7", "svc7", "172.30.0.47", [port("p80", 80)]), es("ns7", "svc7", "10.180.0.11"))
        assert not p.sync(o, force_full=True).error     # new chains: those Services' rules keep their place
        put(o, es("ns1", "svc1", "10.180.0.12"))
        assert not p.sync(o).error
    assert_twins(kernel, emulated)
    again, _, _, _ = twin_proxiers(ns)
    assert not again.sync(overall_objects()).error
    fresh, _, _, _ = twin_proxiers(ns)
    fresh.backend.delete_table()
    assert not fresh.sync(overall_objects()).error
    assert again.backend.list_table() == fresh.backend.list_table()
    assert shapes[1:3] == ["one", "one"]                 # forced full, restarted
    assert shapes[0] == shapes[3] and shapes[0].startswith("new table in ")     # first, fresh table
    assert int(shapes[0].split()[-1]) > 3


@pytest.mark.parametrize("chunk", [2, 20_000])
def test_a_first_sync_whose_rules_fail_leaves_no_table(ns: Netns, monkeypatch: pytest.MonkeyPatch,
                                                       chunk: int) -> None:
    """Whether the failing line's transaction is the first or the third (two committed before it)."""
    from kproxy.backends import nft_phases

    monkeypatch.setattr(nft_phases, "MIN_ANONYMOUS_RULES", 1)
    monkeypatch.setattr(nft_phases, "CHUNK_LINES", chunk)
    nft = KernelNft(4, netns=ns.name)
    text = ("add table ip kube-proxy\nadd chain ip kube-proxy a\nadd chain ip kube-proxy e\n"
            "add rule ip kube-proxy a numgen random mod 1 vmap { 0 : goto e }\n"
            "add rule ip kube-proxy e jump nowhere\n")
    as_given = ns.run(["nft", "-f", "-"], input=text, check=False).stderr.strip()
    assert "/dev/stdin:5:" in as_given
    assert nft.names("chains") == []                    # as a full sync reads them before its transaction
    with pytest.raises(BackendError) as err:
        nft.run(text)
    assert str(err.value) == as_given                   # nft's message, line numbers of the text as given
    assert ns.run(["nft", "list", "ruleset"]).stdout == ""
    nft.run("add table ip kube-proxy\nadd chain ip kube-proxy a\n")
    before = nft.list_table()
    assert nft.names("chains") == ["a"]
    with pytest.raises(Exception, match="nowhere"):
        nft.run(text)
    assert nft.list_table() == before


@pytest.mark.parametrize("text", [
    "add table ip t\nadd chain ip t a\nadd rule ip t a numgen random mod 2 vmap { 0 : goto a, 1 : goto e }\n"
    "add chain ip t e\n",
    "table ip t {\n chain x {\n  numgen random mod 1 vmap { 0 : goto y }\n }\n chain y {\n }\n}\n",
])
def test_an_anonymous_vmap_may_only_go_to_chains_that_exist_like_the_kernels(ns: Netns, text: str) -> None:
    """A goto in a rule's inline vmap needs its chain when the rule is added (a table block adds its
    chains first): the emulated nft must refuse and accept what the kernel does, with its message."""
    from kproxy.nftables.cli import run_nft
    from kproxy.nftables.model import Ruleset

    real = ns.run(["nft", "-f", "-"], input=text, check=False)
    rc, _, err, _ = run_nft(["-f", "-"], Ruleset(), text)
    assert (rc, err) == (real.returncode, real.stderr)
