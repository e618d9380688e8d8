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

from collections.abc import Collection, Iterable

from kproxy.nftables.expr import SetLit, SetRef, Verdict
from kproxy.nftables.model import Chain, Rule, Table
from kproxy.nftables.stmt import VerdictMap, VerdictStmt

JUMP_STACK_SIZE = 16
JUMPING = frozenset([VerdictStmt, VerdictMap])


def too_deep(table: Table, without: Collection[int] = ()) -> Chain | None:
    """A base chain of ``table`` whose jumps nest too deep (or loop); None when the table is valid.
    ``without``: ids of rules to leave out (not added yet)."""
    heights: dict[str, int] = {}
    for chain in table.chains.values():
        if chain.base and _height(table, chain.name, heights, without) >= JUMP_STACK_SIZE:
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


def _height(table: Table, name: str, heights: dict[str, int], without: Collection[int]) -> int:
    """The most jumps on a path from chain ``name`` (JUMP_STACK_SIZE once a loop is on the path),
    leaving out the rules whose ids are in ``without``.

    Written for speed: a kube-proxy table has 100,000 chains, each visited once; statement classes
    are compared exactly (none of them has subclasses)."""
    h = heights.get(name)
    if h is not None:
        return JUMP_STACK_SIZE if h < 0 else h  # -1: on the path being walked, a loop
    heights[name] = -1
    best = 0
    chains = table.chains
    rules = chains[name].rules
    if without:
        rules = [rule for rule in rules if id(rule) not in without]
    # the statements that jump, gathered in one comprehension (most rules hold none)
    for st in [st for rule in rules for st in rule.stmts if type(st) in JUMPING]:
        if type(st) is VerdictStmt:
            target = st.verdict.target
            if not target or target not in chains:
                continue
            targets: Iterable[str | None] = (target,)
        else:
            targets = _map_targets(table, st)  # type: ignore[arg-type]
        for target in targets:
            if target and target in chains:
                h = heights.get(target)
                if h is None or h < 0:
                    h = _height(table, target, heights, without)
                if h >= best:
                    best = h + 1
                if best >= JUMP_STACK_SIZE:
                    heights[name] = best
                    return best
    heights[name] = best
    return best


def _map_targets(table: Table, st: VerdictMap) -> list[str | None]:
    """The chains a verdict map's elements jump or go to."""
    data = st.data
    elems = data.elems if isinstance(data, SetLit) else (
        table.sets[data.name].elems if isinstance(data, SetRef) and data.name in table.sets else [])
    return [e.data.target for e in elems if isinstance(e.data, Verdict)]
