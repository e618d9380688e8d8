"""Big nft transactions reshaped for the kernel (``kproxy.backends.nft_phases``): the reshaped form,
applied to an emulated node, must leave exactly the table the proxier's text leaves."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kproxy.backends import nft_phases
from kproxy.backends.nft import EmulatedNft
from kproxy.backends.nft_phases import reshape
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.nftables import NftablesProxier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from bench_proxier import build  # noqa: E402

NODE = {"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]}]}


class Recorder:
    """An nft backend that keeps each transaction and applies it to an emulated node."""

    family = 4

    def __init__(self) -> None:
        self.nft = EmulatedNft(Node.from_description(NODE))
        self.texts: list[str] = []

    def run(self, text: str) -> None:
        self.texts.append(text)
        self.nft.run(text)

    def names(self, kind: str, table: str = "kube-proxy") -> list[str]:
        return self.nft.names(kind, table)


def syncs(services: int, endpoints: int) -> tuple[Recorder, list[str]]:
    """A first full sync, then a forced full sync after one Service gained an endpoint."""
    rec = Recorder()
    cfg = ProxyConfig.from_dict({"clusterCIDR": "10.128.0.0/9", "hostnameOverride": "node-a"})
    proxier = NftablesProxier(cfg, rec, ["192.168.0.2"])
    assert not proxier.sync(build(services, endpoints)).error
    bigger = build(services + 3, endpoints)
    assert not proxier.sync(bigger, force_full=True).error
    return rec, rec.texts


def apply(nft: EmulatedNft, text: str, existing: set[str] | None) -> None:
    shaped = reshape(text, "ip", "kube-proxy", lambda: existing)
    assert shaped is not None
    for part in shaped.parts:
        nft.run(part)


def test_small_transactions_and_foreign_ones_are_sent_as_they_are() -> None:
    _, (first, _) = syncs(10, 2)
    assert reshape(first, "ip", "kube-proxy", lambda: None) is None      # 10 anonymous vmaps: below the bar
    many = "".join(f"add rule ip kube-proxy c{i} numgen random mod 1 vmap {{ 0 : goto e }}\n" for i in range(100))
    assert reshape(many + "add table ip other\n", "ip", "kube-proxy", lambda: None) is None
    assert reshape(many + "delete table ip kube-proxy\n", "ip", "kube-proxy", lambda: None) is None
    assert reshape(many, "ip6", "kube-proxy", lambda: None) is None


def test_a_first_sync_goes_in_bounded_transactions_in_the_texts_order_with_the_hooks_rules_last(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nft_phases, "CHUNK_LINES", 500)
    rec, (first, _) = syncs(100, 3)
    shaped = reshape(first, "ip", "kube-proxy", lambda: None)
    assert shaped is not None and shaped.fresh
    parts = [p.splitlines() for p in shaped.parts]
    lines = first.splitlines()
    assert len(parts) == -(-len(lines) // 500) and all(len(p) <= 500 for p in parts[:-1])
    base = {ln.split(" ")[4] for ln in lines if " hook " in ln}
    hooked = [ln for ln in lines if ln.startswith("add rule") and ln.split(" ")[4] in base]
    assert len(base) == 8 and len(hooked) == 11
    assert parts[-1][-len(hooked):] == hooked                    # the jumps from the hooks come last
    assert [ln for p in parts for ln in p if ln not in hooked] == [ln for ln in lines if ln not in hooked]
    fresh = EmulatedNft(Node.from_description(NODE))
    for i, part in enumerate(shaped.parts):
        fresh.run(part)
        if i < len(parts) - 1:      # until the last commits, the base chains decide nothing
            table = fresh.node.nftables.find("ip", "kube-proxy")
            assert all(not table.chains[c].rules for c in base)
    reference = EmulatedNft(Node.from_description(NODE))
    reference.run(first)
    assert fresh.list_table() == reference.list_table()


def test_a_small_first_sync_is_one_transaction() -> None:
    _, (first, _) = syncs(100, 3)
    shaped = reshape(first, "ip", "kube-proxy", lambda: None)
    assert shaped is not None and shaped.fresh and len(shaped.parts) == 1
    assert sorted(shaped.parts[0].splitlines()) == sorted(first.splitlines())


def test_a_later_full_sync_is_one_transaction_with_known_chains_in_front() -> None:
    rec, (first, again) = syncs(100, 3)
    node = EmulatedNft(Node.from_description(NODE))
    node.run(first)
    existing = set(node.names("chains"))
    shaped = reshape(again, "ip", "kube-proxy", lambda: existing)
    assert shaped is not None and not shaped.fresh and len(shaped.parts) == 1
    head = shaped.parts[0].splitlines()[0]
    assert head.startswith("flush chain ip kube-proxy service-")
    new_services = [ln for ln in shaped.parts[0].splitlines() if "svc101" in ln and "numgen" in ln]
    assert len(new_services) == 1                           # a new Service's chain stays after its add chain
    node.run(shaped.parts[0])
    assert node.list_table() == rec.nft.list_table()


@pytest.mark.parametrize(("threshold", "chunk"), [(1, 7), (1, 20_000), (64, 100)])
def test_the_proxiers_own_examples_reshape_to_the_same_table(monkeypatch: pytest.MonkeyPatch,
                                                              threshold: int, chunk: int) -> None:
    monkeypatch.setattr(nft_phases, "MIN_ANONYMOUS_RULES", threshold)
    monkeypatch.setattr(nft_phases, "CHUNK_LINES", chunk)
    rec, texts = syncs(70, 1)
    node = EmulatedNft(Node.from_description(NODE))
    for text in texts:
        table = node.names("chains")
        shaped = reshape(text, "ip", "kube-proxy", lambda t=table: set(t) if t else None)  # type: ignore[misc]
        if shaped is None:
            node.run(text)
            continue
        for part in shaped.parts:
            node.run(part)
    assert node.list_table() == rec.nft.list_table()


def test_a_chain_whose_rules_name_new_chains_or_new_sets_keeps_its_place() -> None:
    text = ("add chain ip kube-proxy s1\nflush chain ip kube-proxy s1\nadd chain ip kube-proxy e9\n"
            "add rule ip kube-proxy s1 numgen random mod 1 vmap { 0 : goto e9 }\n"
            "add rule ip kube-proxy s2 numgen random mod 1 vmap { 0 : goto e1 }\n"
            "add set ip kube-proxy aff { type ipv4_addr ; }\n"
            "add rule ip kube-proxy s3 ip saddr @aff goto e1\nadd rule ip kube-proxy s3 numgen random mod 1 vmap { 0 : goto e1 }\n"
            "add rule ip kube-proxy s4 ip saddr @old goto e1\nadd rule ip kube-proxy s4 numgen random mod 1 vmap { 0 : goto e1 }\n")
    shaped = reshape(text * 20, "ip", "kube-proxy", lambda: {"s1", "s2", "s3", "s4", "e1"})
    assert shaped is not None
    moved = {ln.split(" ")[4] for ln in shaped.parts[0].splitlines()[:60]}
    assert moved == {"s2", "s4"}


def test_an_error_names_the_line_of_the_text_as_given() -> None:
    from kproxy.backends.nft_phases import as_in_text

    text = "add chain ip t a\nadd rule ip t a bogus\nadd rule ip t a counter\n"
    sent = "add rule ip t a counter\nadd rule ip t a bogus\n"
    msg = "/dev/stdin:2:17-21: Error: syntax error, unexpected string\nadd rule ip t a bogus\n                ^^^^^\n"
    assert as_in_text(msg, sent, text).startswith("/dev/stdin:2:17-21: Error")
    assert as_in_text(msg.replace(":2:", ":1:", 1), sent, text).startswith("/dev/stdin:3:17-21: Error")
    assert as_in_text("no location", sent, text) == "no location"
