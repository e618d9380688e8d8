"""The kernel's jump validation: no chain sits ``JUMP_STACK`` jumps below a base chain.

nf_tables walks every jump and goto from each base chain and refuses a ruleset (EMLINK, iptables-nft's
``Too many links``) in which a chain is entered 16 levels deep; a loop a base chain can reach is refused
the same way, while loops no base chain reaches are allowed.

Walking a kube-proxy table costs more than a partial sync that changes a few chains, so each committed
table keeps its jump graph (targets per chain, and an upper bound on each reachable chain's level). A
working copy is checked by raising those levels from the chains it changed only; the exact walk runs when
there is no graph to start from or when the bounds reach the limit (a deleted rule may have lowered a level).
"""

from __future__ import annotations

from typing import Any

from kproxy.iptables.model import Rule, Table

JUMP_STACK = 16        # NFT_JUMP_STACK_SIZE
_KEEP = 8              # graphs of the most recently checked tables


class _TooDeep(Exception):
    pass


class JumpGraph:
    """User-chain targets of every chain reachable from a base chain, with bounds on their levels."""

    __slots__ = ("targets", "levels")

    def __init__(self, targets: dict[str, set[str]], levels: dict[str, int]) -> None:
        self.targets = targets
        self.levels = levels


_GRAPHS: dict[int, tuple[Table, JumpGraph]] = {}


def _targets(table: Table, name: str, skip: set[int] | None = None) -> set[str]:
    rules = table.chains[name].rules
    found = {r.jump for r in rules if id(r) not in skip} if skip else {r.jump for r in rules}
    if len(found) == 1:                 # most chains: one target, or none (None)
        return found if next(iter(found)) in table.chains else set()  # type: ignore[return-value]
    chains = table.chains
    return {j for j in found if j in chains}  # type: ignore[misc]


def walk(table: Table, skip: set[int] | None = None) -> JumpGraph | None:
    """The exact check: the table's jump graph, or None when it is too deep. ``skip``: rule ids left out."""
    chains = table.chains
    targets: dict[str, set[str]] = {}
    heights: dict[str, int] = {}
    order: list[str] = []               # chains in post-order: reversed, a topological order
    visiting: set[str] = set()

    def visit(name: str, level: int) -> int:
        visiting.add(name)
        h = 0
        below = targets[name] = _targets(table, name, skip)
        for j in below:
            hj = heights.get(j)
            if hj is None:
                if level + 1 >= JUMP_STACK or j in visiting:
                    raise _TooDeep
                hj = visit(j, level + 1)
            elif level + 1 + hj >= JUMP_STACK:
                raise _TooDeep
            if hj >= h:
                h = hj + 1
        visiting.discard(name)
        heights[name] = h
        order.append(name)
        return h

    try:
        for chain in chains.values():
            if chain.policy is not None:
                visit(chain.name, 0)
    except _TooDeep:
        return None
    levels = dict.fromkeys(order, 0)
    for name in reversed(order):
        up = levels[name] + 1
        for j in targets[name]:
            if levels[j] < up:
                levels[j] = up
    return JumpGraph(targets, levels)


def _raise_levels(table: Table, base: JumpGraph) -> JumpGraph | None:
    """The base table's graph with the changed chains' targets, levels raised along them; None if a bound
    reaches the limit (the exact walk then decides)."""
    assert table.owned is not None
    chains = table.chains
    targets = {n: t for n, t in base.targets.items() if n in chains}
    levels = {n: v for n, v in base.levels.items() if n in chains}
    changed = [n for n in table.owned if n in chains]
    for n in changed:
        targets[n] = _targets(table, n)
    stack = [n for n in changed if n in levels or chains[n].policy is not None]
    for n in stack:
        levels.setdefault(n, 0)
    while stack:
        name = stack.pop()
        below = targets.get(name)
        if below is None:
            below = targets[name] = _targets(table, name)
        up = levels[name] + 1
        for j in below:
            if levels.get(j, -1) < up:
                if up >= JUMP_STACK:
                    return None
                levels[j] = up
                stack.append(j)
    return JumpGraph(targets, levels)


def too_deep(table: Table) -> bool:
    """Whether the kernel refuses ``table`` for its jumps; remembers the graph of a table that passes."""
    graph = None
    if table.owned is not None and table.base is not None:
        known = _GRAPHS.get(id(table.base))
        if known is not None and known[0] is table.base:
            graph = _raise_levels(table, known[1])
    if graph is None:
        graph = walk(table)
        if graph is None:
            return True
    if len(_GRAPHS) >= _KEEP:
        del _GRAPHS[next(iter(_GRAPHS))]
    _GRAPHS[id(table)] = (table, graph)
    return False


def first_too_deep(table: Table, jumps: list[tuple[Any, str, Rule]]) -> tuple[Any, str] | None:
    """Of the jump rules added in order (``(where, chain, rule)``), the first after which the table is too deep:
    the one the kernel refuses. None when the table is too deep without any of them."""
    present = {id(r) for ch in table.chains.values() for r in ch.rules}
    added = [(where, chain, r) for where, chain, r in jumps if id(r) in present]
    skip = {id(r) for _, _, r in added}
    if walk(table, skip) is None:
        return None
    for where, chain, r in added:
        skip.discard(id(r))
        if walk(table, skip) is None:
            return where, chain
    return None
