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
from typing import Any

from kproxy.nftables.expr import SetLit, SetRef, Verdict
from kproxy.nftables.model import Chain, NSet, Rule, Table
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


# ---- partial transactions: a reverse jump index kept with the table ---------------------------------
_MAP = "@"      # a parent key for a verdict map's elements: "@" + the map's name (never a chain name)


class JumpIndex:
    """Who jumps to whom in one table, kept up to date by in-place transactions so that one can be
    validated by what it touched: ``parents[chain]`` counts the chains whose rules jump or go to it
    (and ``@map`` for a verdict map whose elements do), ``users[map]`` the chains whose rules look a
    packet up in that verdict map. Never copied with its table (a copy is changed by other paths):
    ``JumpIndex.of`` builds one for a table that has none, or whose dictionaries were replaced."""

    def __init__(self, table: Table) -> None:
        self.chains = table.chains           # held, so their identity says the index is this table's
        self.sets = table.sets
        self.parents: dict[str, dict[str, int]] = {}
        self.users: dict[str, dict[str, int]] = {}
        self._build(table)

    def _build(self, table: Table) -> None:
        """``chain(name, c, 1)`` and ``map(name, s, 1)`` for the whole table, inlined: a full sync
        of a kube-proxy table builds this for 100,000 chains."""
        parents, users = self.parents, self.users
        for name, chain in table.chains.items():
            for rule in chain.rules:
                for st in rule.stmts:
                    tp = type(st)
                    if tp is VerdictStmt:
                        targets: Iterable[Any] = (st.verdict,)       # type: ignore[attr-defined]
                    elif tp is VerdictMap:
                        data = st.data                                # type: ignore[attr-defined]
                        if type(data) is SetRef:
                            c = users.get(data.name)
                            if c is None:
                                users[data.name] = {name: 1}
                            else:
                                c[name] = c.get(name, 0) + 1
                            continue
                        if type(data) is not SetLit:
                            continue
                        targets = [e.data for e in data.elems]
                    else:
                        continue
                    for v in targets:
                        target = v.target if type(v) is Verdict else None
                        if target:
                            c = parents.get(target)
                            if c is None:
                                parents[target] = {name: 1}
                            else:
                                c[name] = c.get(name, 0) + 1
        for name, s in table.sets.items():
            self.map(name, s, 1)

    def __deepcopy__(self, memo: dict[int, object]) -> None:
        return None

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (type(None), ())

    @staticmethod
    def of(table: Table) -> JumpIndex:
        idx = table.__dict__.get("_jump_index")
        if not isinstance(idx, JumpIndex) or idx.chains is not table.chains or idx.sets is not table.sets:
            idx = JumpIndex(table)
            table.__dict__["_jump_index"] = idx
        return idx

    @staticmethod
    def drop(table: Table) -> None:
        table.__dict__.pop("_jump_index", None)

    @staticmethod
    def _bump(d: dict[str, dict[str, int]], key: str, src: str, sign: int) -> None:
        c = d.get(key)
        if c is None:
            c = d[key] = {}
        n = c.get(src, 0) + sign
        if n:
            c[src] = n
        else:
            c.pop(src, None)
            if not c:
                del d[key]

    def chain(self, name: str, chain: Chain | None, sign: int) -> None:
        """Count (``sign`` 1) or uncount (-1) the jumps and map lookups of ``chain``'s rules."""
        if chain is None:
            return
        for rule in chain.rules:
            for st in rule.stmts:
                if type(st) is VerdictStmt:
                    if st.verdict.target:
                        self._bump(self.parents, st.verdict.target, name, sign)
                elif type(st) is VerdictMap:
                    data = st.data
                    if isinstance(data, SetRef):
                        self._bump(self.users, data.name, name, sign)
                    elif isinstance(data, SetLit):
                        for e in data.elems:
                            if isinstance(e.data, Verdict) and e.data.target:
                                self._bump(self.parents, e.data.target, name, sign)

    def map(self, name: str, s: NSet | None, sign: int, elems: Iterable[Any] | None = None) -> None:
        """Count or uncount the jumps of verdict map ``s``'s elements (or of just ``elems``)."""
        if s is None or s.anonymous or not is_verdict_map(s):
            return      # an anonymous map is written into its rule (a SetLit there), counted with it
        key = _MAP + name
        for e in s.elems if elems is None else elems:
            d = e.data
            if isinstance(d, Verdict) and d.target:
                self._bump(self.parents, d.target, key, sign)

    def depth_above(self, table: Table, name: str, memo: dict[str, int | None], path: set[str]) -> int | None:
        """The most jumps from a base chain to chain ``name``; None when no base chain reaches it."""
        if name in memo:
            return memo[name]
        chain = table.chains.get(name)
        if chain is None or name in path:
            return None
        if chain.hook is not None:
            memo[name] = 0
            return 0
        path.add(name)
        best: int | None = None
        for src in self.parents.get(name, ()):
            for user in (self.users.get(src[1:], ()) if src[0] == _MAP else (src,)):
                d = self.depth_above(table, user, memo, path)
                if d is not None and (best is None or d + 1 > best):
                    best = d + 1
            if best is not None and best >= JUMP_STACK_SIZE:
                break
        path.discard(name)
        memo[name] = best
        return best


def touched_too_deep(table: Table, chains_before: dict[str, Any], sets_before: dict[str, Any],
                     missing: object) -> str | None:
    """After an in-place transaction that changed the chains and sets in ``*_before`` (name -> the
    object before, or ``missing``), whether the kernel's commit-time validation fails: the name of a
    chain reached too deep (or in a loop) from a base chain through a jump the transaction may have
    added, else None. The index is brought up to date first; what it costs is what the transaction
    touched and the chains above and below it, not the table."""
    fresh = "_jump_index" not in table.__dict__
    idx = JumpIndex.of(table)          # built from the table as it is now, or brought up to date:
    added: dict[str, list[Any]] = {}   # each verdict map's new elements
    for name, old in chains_before.items():
        if not fresh:
            idx.chain(name, None if old is missing else old, -1)
            idx.chain(name, table.chains.get(name), 1)
    for name, old in sets_before.items():
        new = table.sets.get(name)
        before = None if old is missing else old
        if not (new is not None and not new.anonymous and is_verdict_map(new) or
                before is not None and not before.anonymous and is_verdict_map(before)):
            continue
        old_elems = before.elems if before is not None else []
        new_elems = new.elems if new is not None else []
        kept = {id(e) for e in old_elems}
        added[name] = [e for e in new_elems if id(e) not in kept]
        if not fresh:
            now = {id(e) for e in new_elems}
            idx.map(name, before, -1, [e for e in old_elems if id(e) not in now])
            idx.map(name, new, 1, added[name])
    memo: dict[str, int | None] = {}
    heights: dict[str, int] = {}
    sources: list[tuple[str, list[str | None]]] = []
    for name in chains_before:
        chain = table.chains.get(name)
        if chain is not None:
            sources.append((name, [t for rule in chain.rules for st in rule.stmts
                                   for t in _stmt_targets(table, st)]))
    for name, elems in added.items():
        targets: list[str | None] = [e.data.target for e in elems if isinstance(e.data, Verdict) and e.data.target]
        if targets:
            sources.extend((user, targets) for user in idx.users.get(name, ()))
    for name, targets in sources:
        above = idx.depth_above(table, name, memo, set())
        if above is None:
            continue
        for target in targets:
            if not target or target not in table.chains:
                continue
            h = heights.get(target)
            if h is None:
                h = _height(table, target, heights, ())
            if above + 1 + h >= JUMP_STACK_SIZE or target == name:
                return target
    return None


def _stmt_targets(table: Table, st: object) -> Iterable[str | None]:
    if type(st) is VerdictStmt:
        return (st.verdict.target,)
    if type(st) is VerdictMap:
        return _map_targets(table, st)
    return ()


def is_verdict_map(s: NSet) -> bool:
    return s.is_map and bool(s.data) and s.data[-1].kind == "verdict"   # type: ignore[index]
