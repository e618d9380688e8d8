"""Partial syncs into kube-proxy's own table check the kernel's jump depth and loops from what they
touched (issue 13 note): a reverse jump index kept with the table, checked against the real nft."""

from __future__ import annotations

import pytest

from kproxy.backends import BackendError
from kproxy.backends.nft import EmulatedNft
from kproxy.nftables.validate import JumpIndex
from kproxy.node import Node

BASE = """add table ip kube-proxy
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy services
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
add chain ip kube-proxy service-a
add chain ip kube-proxy endpoint-a1
add chain ip kube-proxy endpoint-a2
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy spare-1
add chain ip kube-proxy spare-2
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy mark-for-masquerade meta mark set meta mark | 0x4000
add rule ip kube-proxy endpoint-a1 ip saddr 10.1.0.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-a1 meta l4proto tcp dnat to 10.1.0.1:80
add rule ip kube-proxy service-a numgen random mod 2 vmap { 0 : goto endpoint-a1, 1 : goto endpoint-a2 }
add element ip kube-proxy service-ips { 172.30.0.1 . tcp . 80 : goto service-a }
"""

# Each step: a transaction, and whether nft 1.0.6 on the kernel commits it (see the kernel test).
STEPS: list[tuple[str, bool]] = [
    # a loop made by a later transaction: endpoint -> service -> endpoint, reached from a base chain
    ("add rule ip kube-proxy endpoint-a2 jump service-a\n", False),
    # the same loop among chains no base chain reaches is accepted, as the kernel accepts it
    ("add rule ip kube-proxy spare-1 jump spare-2\n", True),
    ("add rule ip kube-proxy spare-2 jump spare-1\n", True),
    # ... until a map element makes it reachable
    ("add element ip kube-proxy service-ips { 172.30.0.2 . tcp . 80 : goto spare-1 }\n", False),
    # a map element that jumps back to the chain looking the map up
    ("add element ip kube-proxy service-ips { 172.30.0.3 . tcp . 80 : jump services }\n", False),
    # harmless changes still commit
    ("flush chain ip kube-proxy endpoint-a2\nadd rule ip kube-proxy endpoint-a2 jump mark-for-masquerade\n", True),
    ("add element ip kube-proxy service-ips { 172.30.0.4 . tcp . 80 : goto endpoint-a2 }\n", True),
]


def chain_steps(depth: int) -> list[str]:
    """Chains d1 .. dN jumping one to the next, each link its own transaction, reached from a base chain
    at the end: 16 nested jumps is what the kernel's jump stack refuses."""
    out = ["".join(f"add chain ip kube-proxy d{i}\n" for i in range(1, depth + 1))]
    out += [f"add rule ip kube-proxy d{i} jump d{i + 1}\n" for i in range(1, depth)]
    out.append("add element ip kube-proxy service-ips { 172.30.9.9 . tcp . 80 : jump d1 }\n")
    return out


def emulated() -> tuple[Node, EmulatedNft]:
    node = Node()
    nft = EmulatedNft(node)
    nft.run(BASE)
    return node, nft


def outcome(nft: EmulatedNft, text: str) -> tuple[bool, str]:
    try:
        nft.run(text)
        return True, ""
    except BackendError as exc:
        return False, str(exc)


def test_partial_transactions_refuse_loops_as_the_kernel_does() -> None:
    node, nft = emulated()
    for text, ok in STEPS:
        before = nft.list_table()
        committed, err = outcome(nft, text)
        assert committed == ok, text
        if not ok:
            assert "Could not process rule: Too many links" in err
            assert nft.list_table() == before            # nothing of it stays
    listing = nft.list_table()
    assert "jump service-a" not in listing and "goto spare-1" not in listing
    assert "172.30.0.4 . tcp . 80 : goto endpoint-a2" in listing


def test_the_refused_rule_is_named() -> None:
    _, nft = emulated()
    ok, err = outcome(nft, "add rule ip kube-proxy endpoint-a2 counter\nadd rule ip kube-proxy endpoint-a2 jump service-a\n")
    assert not ok
    assert err.splitlines()[0] == "/dev/stdin:2:1-50: Error: Could not process rule: Too many links"


def test_structured_transactions_refuse_loops_as_the_text_does() -> None:
    """The proxier's structured transactions (``kproxy.nftables.transaction.Tx``) are applied in place
    without text: the same steps as operations are refused or committed as their text is, nothing of
    a refused one stays, and the kept index still equals one built afresh."""
    from kproxy.nftables.transaction import GO, Tx

    ops: list[tuple[list[tuple[str, str, str, object]], bool]] = [
        ([("add", "rule", "endpoint-a2", ((GO, "jump", "service-a"), None))], False),
        ([("add", "rule", "spare-1", ((GO, "jump", "spare-2"), None))], True),
        ([("add", "rule", "spare-2", ("jump spare-1", None))], True),
        ([("add", "element", "service-ips", ("172.30.0.2 . tcp . 80", "goto spare-1", None))], False),
        ([("add", "element", "service-ips", ("172.30.0.3 . tcp . 80", "jump services", None))], False),
        ([("add", "element", "service-ips", ("172.30.0.4 . tcp . 80", "goto endpoint-a2", None))], True),
    ]
    node, nft = emulated()
    for tx_ops, ok in ops:
        before = nft.list_table()
        try:
            nft.run(Tx("ip", "kube-proxy", list(tx_ops)))   # type: ignore[arg-type]
            committed, err = True, ""
        except BackendError as exc:
            committed, err = False, str(exc)
        assert committed == ok, tx_ops
        if not ok:
            assert "Could not process rule: Too many links" in err
            assert nft.list_table() == before
    table = node.nftables.find("ip", "kube-proxy")
    kept = table.__dict__.get("_jump_index")
    assert isinstance(kept, JumpIndex)
    fresh = JumpIndex(table)
    assert (kept.parents, kept.users) == (fresh.parents, fresh.users)


@pytest.mark.parametrize("depth", [14, 15])
def test_jump_depth_built_over_many_transactions(depth: int) -> None:
    """Base -> services -> d1 .. dN: N + 1 jumps; the kernel's limit is 16 (checked on the kernel below)."""
    _, nft = emulated()
    results = [outcome(nft, text)[0] for text in chain_steps(depth)]
    assert results[:-1] == [True] * (len(results) - 1)
    assert results[-1] == (depth + 1 < 16)


def test_the_index_follows_the_table() -> None:
    """After partial transactions (and a refused one) the kept index equals one built afresh."""
    node, nft = emulated()
    for text, _ in STEPS:
        outcome(nft, text)
    for text in chain_steps(5):
        outcome(nft, text)
    outcome(nft, "delete element ip kube-proxy service-ips { 172.30.0.4 . tcp . 80 }\n"
                 "flush chain ip kube-proxy service-a\n")
    table = node.nftables.find("ip", "kube-proxy")
    kept = table.__dict__.get("_jump_index")
    assert isinstance(kept, JumpIndex)
    fresh = JumpIndex(table)
    assert (kept.parents, kept.users) == (fresh.parents, fresh.users)
    assert "_jump_index" not in __import__("copy").deepcopy(table).__dict__ or \
        __import__("copy").deepcopy(table).__dict__["_jump_index"] is None


@pytest.mark.kernel
def test_the_kernel_agrees(kernel_ns) -> None:
    """The same transactions through the real nft in a kp- namespace: committed or refused alike."""
    def real(text: str) -> tuple[bool, str]:
        r = kernel_ns.run(["nft", "-f", "-"], input=text, check=False)
        return r.returncode == 0, r.stderr

    assert real(BASE)[0]
    _, nft = emulated()
    for text, ok in STEPS:
        assert real(text)[0] == ok == outcome(nft, text)[0], text
    ok, err = real("add rule ip kube-proxy endpoint-a2 counter\nadd rule ip kube-proxy endpoint-a2 jump service-a\n")
    assert not ok and err.splitlines()[0] == "/dev/stdin:2:1-50: Error: Could not process rule: Too many links"
    for depth in (14, 15):
        kernel_ns.run(["nft", "flush ruleset"])
        assert real(BASE)[0]
        _, nft = emulated()
        for text in chain_steps(depth):
            assert real(text)[0] == outcome(nft, text)[0], (depth, text)
