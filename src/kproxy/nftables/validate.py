"""The kernel's commit-time chain validation: how deep jumps and gotos nest below each base chain.

nft_chain_validate walks every jump and goto (verdict statements, anonymous and named verdict maps)
from each base chain, one level per chain entered, and refuses the transaction with EMLINK when a
path reaches the jump stack's size (16): so a loop reachable from a base chain is refused, while
regular chains that only call each other, unreached, are accepted (both checked against the kernel).

Once a batch fails that check, the kernel replays it validating the table at every rule it adds:
the first rule that makes the table too deep is refused, and so is every later rule of that table
(``culprit`` finds the first, so nft can point at it).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

from kproxy.nftables.expr import SetLit, SetRef, Verdict
from kproxy.nftables.model import Chain, Rule, Table
from kproxy.nftables.stmt import VerdictMap, VerdictStmt

JUMP_STACK_SIZE = 16


def too_deep(table: Table, without: Collection[int] = ()) -> Chain | None:
    """A base chain of ``table`` whose jumps nest too deep (or loop); None when the table is valid.
    ``without``: ids of rules to leave out (not added yet)."""
    heights: dict[str, int] = {}
    for chain in table.chains.values():
        if chain.base and _height(table, chain.name, heights, set(), without) >= JUMP_STACK_SIZE:
            return chain
    return None


def culprit(table: Table, added: list[Rule]) -> int | None:
    """The index in ``added`` (rules of ``table`` in the order a batch adds them) of the first rule
    with which the table fails validation; None when it passes, -1 when it fails without any of them.
    Adding rules only adds jumps, so the answer is found by bisection."""
    if too_deep(table) is None:
        return None
    ids = [id(r) for r in added]
    if too_deep(table, ids) is not None:
        return -1
    lo, hi = 0, len(ids) - 1          # invalid with added[:hi + 1], valid with added[:lo]
    while lo < hi:
        mid = (lo + hi) // 2
        if too_deep(table, ids[mid + 1:]) is not None:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _height(table: Table, name: str, heights: dict[str, int], path: set[str], without: Collection[int]) -> int:
    """The most jumps on a path from chain ``name`` (JUMP_STACK_SIZE once a loop is on the path)."""
    if name in heights:
        return heights[name]
    if name in path:
        return JUMP_STACK_SIZE
    path.add(name)
    best = 0
    for target in set(_targets(table, table.chains[name], without)):
        if target in table.chains:
            best = max(best, 1 + _height(table, target, heights, path, without))
            if best >= JUMP_STACK_SIZE:
                break
    path.discard(name)
    heights[name] = best
    return best


def _targets(table: Table, chain: Chain, without: Collection[int]) -> Iterator[str]:
    for rule in chain.rules:
        if without and id(rule) in without:
            continue
        for st in rule.stmts:
            if isinstance(st, VerdictStmt) and st.verdict.target:
                yield st.verdict.target
            elif isinstance(st, VerdictMap):
                data = st.data
                elems = data.elems if isinstance(data, SetLit) else (
                    table.sets[data.name].elems if isinstance(data, SetRef) and data.name in table.sets else [])
                for e in elems:
                    if isinstance(e.data, Verdict) and e.data.target:
                        yield e.data.target
