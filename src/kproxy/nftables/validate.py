"""The kernel's commit-time chain validation: how deep jumps and gotos nest below each base chain.

nft_chain_validate walks every jump and goto (verdict statements, anonymous and named verdict maps)
from each base chain, one level per chain entered, and refuses the transaction with EMLINK when a
path reaches the jump stack's size (16): so a loop reachable from a base chain is refused, while
regular chains that only call each other, unreached, are accepted (both checked against the kernel).
"""

from __future__ import annotations

from collections.abc import Iterable

from kproxy.nftables.expr import SetLit, SetRef, Verdict
from kproxy.nftables.model import Chain, Table
from kproxy.nftables.stmt import VerdictMap, VerdictStmt

JUMP_STACK_SIZE = 16


def too_deep(table: Table) -> Chain | None:
    """A base chain of ``table`` whose jumps nest too deep (or loop); None when the table is valid."""
    heights: dict[str, int] = {}
    for chain in table.chains.values():
        if chain.base and _height(table, chain.name, heights, set()) >= JUMP_STACK_SIZE:
            return chain
    return None


def _height(table: Table, name: str, heights: dict[str, int], path: set[str]) -> int:
    """The most jumps on a path from chain ``name`` (JUMP_STACK_SIZE once a loop is on the path).

    Written for speed: a kube-proxy table has 100,000 chains, each visited once; statement classes
    are compared exactly (none of them has subclasses)."""
    if name in heights:
        return heights[name]
    if name in path:
        return JUMP_STACK_SIZE
    path.add(name)
    best = 0
    chains = table.chains
    for rule in chains[name].rules:
        for st in rule.stmts:
            if type(st) is VerdictStmt:
                targets: Iterable[str | None] = (st.verdict.target,)
            elif type(st) is VerdictMap:
                targets = _map_targets(table, st)
            else:
                continue
            for target in targets:
                if target and target in chains:
                    h = heights.get(target)
                    if h is None:
                        h = _height(table, target, heights, path)
                    if h >= best:
                        best = h + 1
                    if best >= JUMP_STACK_SIZE:
                        path.discard(name)
                        heights[name] = best
                        return best
    path.discard(name)
    heights[name] = best
    return best


def _map_targets(table: Table, st: VerdictMap) -> list[str | None]:
    """The chains a verdict map's elements jump or go to."""
    data = st.data
    elems = data.elems if isinstance(data, SetLit) else (
        table.sets[data.name].elems if isinstance(data, SetRef) and data.name in table.sets else [])
    return [e.data.target for e in elems if isinstance(e.data, Verdict)]
