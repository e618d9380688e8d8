"""The kernel's jump validation: no chain sits ``JUMP_STACK`` jumps below a base chain.

nf_tables walks every jump and goto from each base chain and refuses a ruleset (EMLINK, iptables-nft's
``Too many links``) in which a chain is entered 16 levels deep; a loop a base chain can reach is refused
the same way, while loops no base chain reaches are allowed.

Walking a kube-proxy table costs more than a partial sync that changes a few chains, so each committed
table keeps its jump graph (targets per chain, and an upper bound on each reachable chain's level). A
working copy is checked by raising those levels from the chains it changed only; the exact walk runs when
there is no graph to start from or when the bounds reach the limit (a deleted rule may have lowered a level).
Levels only ever rise in these bounds, so a stale one is still a bound; targets of a chain are recomputed
whenever the chain changes, and only chains that still exist are followed.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from operator import attrgetter
from typing import Any

from kproxy.iptables.model import Rule, Table
from kproxy.layered import settle, share

JUMP_STACK = 16        # NFT_JUMP_STACK_SIZE
_KEEP = 8              # graphs of the most recently checked tables
_JUMP = attrgetter("jump")


class JumpGraph:
    """User-chain targets of the chains reachable from a base chain, with upper bounds on their levels.

    A checked working copy's graph is a copy-on-write copy of its base table's graph (``derive``) with
    what changed written over it: a partial sync then costs what it changes, not the table's size."""

    __slots__ = ("targets", "levels")

    def __init__(self, targets: MutableMapping[str, set[str]], levels: MutableMapping[str, int]) -> None:
        self.targets = targets
        self.levels = levels

    def derive(self) -> JumpGraph:
        """A copy to record a working copy's changes in, sharing everything else with this graph."""
        return JumpGraph(share(self.targets), share(self.levels))

    def targets_of(self, name: str) -> set[str] | None:
        return self.targets.get(name)

    def level_of(self, name: str) -> int:
        return self.levels.get(name, -1)


_GRAPHS: dict[int, tuple[Table, JumpGraph]] = {}


def _targets(table: Table, name: str, skip: set[int] | None = None) -> set[str]:
    rules = table.chains[name].rules
    found = {r.jump for r in rules if id(r) not in skip} if skip else {r.jump for r in rules}
    if len(found) == 1:                 # most chains: one target, or none (None)
        return found if next(iter(found)) in table.chains else set()  # type: ignore[return-value]
    chains = table.chains
    return {j for j in found if j is not None and j in chains}


def walk(table: Table, skip: set[int] | None = None) -> JumpGraph | None:
    """The check itself: the table's jump graph, or None when it is too deep. ``skip``: rule ids left out.

    Breadth first, level by level from the base chains: a chain found at level 16 is refused, and a loop
    a base chain reaches keeps every level populated. Each level is gathered with set operations (this
    runs over every rule of a freshly restored table); targets are left for the incremental check to
    read from the rules when it needs them."""
    chains = table.chains
    levels: dict[str, int] = {}
    frontier = [name for name, chain in chains.items() if chain.policy is not None]
    for depth in range(JUMP_STACK):
        levels.update(dict.fromkeys(frontier, depth))
        below: set[str | None] = set()
        for name in frontier:
            rules = chains[name].rules
            below.update(map(_JUMP, rules) if skip is None else (r.jump for r in rules if id(r) not in skip))
        frontier = [n for n in below if n is not None and n in chains]
        if not frontier:
            return JumpGraph({}, levels)
    return None


def _raise_levels(table: Table, base: JumpGraph) -> JumpGraph | None:
    """The base table's graph with the changed chains' targets, levels raised along them; None if a bound
    reaches the limit (the exact walk then decides)."""
    assert table.owned is not None
    chains = table.chains
    graph = base.derive()
    changed = [n for n in table.owned if n in chains]
    for n in changed:
        graph.targets[n] = _targets(table, n)
    stack = []
    for n in changed:
        if graph.level_of(n) >= 0:
            stack.append(n)
        elif chains[n].policy is not None:
            graph.levels[n] = 0
            stack.append(n)
    while stack:
        name = stack.pop()
        below = graph.targets_of(name)
        if below is None:
            below = graph.targets[name] = _targets(table, name)
        up = graph.level_of(name) + 1
        for j in below:
            if j in chains and graph.level_of(j) < up:
                if up >= JUMP_STACK:
                    return None
                graph.levels[j] = up
                stack.append(j)
    return graph


def too_deep(table: Table) -> bool:
    """Whether the kernel refuses ``table`` for its jumps; remembers the graph of a table that passes."""
    graph = None
    # Raising levels costs per changed chain more than the walk does per chain: when most of the
    # table changed (a full resync), walk it.
    if table.owned is not None and table.base is not None and len(table.owned) * 4 < len(table.chains):
        known = _GRAPHS.get(id(table.base))
        if known is not None and known[0] is table.base:
            graph = _raise_levels(table, known[1])
    if graph is None:
        graph = walk(table)
        if graph is None:
            return True
    if len(_GRAPHS) >= _KEEP:
        del _GRAPHS[next(iter(_GRAPHS))]
    settle(graph.targets)
    settle(graph.levels)
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
