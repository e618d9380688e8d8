"""A later full sync on a kernel sent as a repair: only the chains, sets and elements that differ.

Why: a full sync rewrites every chain, set and map of the table in one transaction. On a kernel
whose table already holds 10,000 Services, each new anonymous vmap (one per Service chain) is named
and found by walking every set of the table, the old ones included until the commit, so that one
batch held nf_tables' commit mutex for ~40 s of CPU (docs/performance.md). A full sync is there to
repair drift (a flushed or deleted chain, an edited rule, a lost element), not to rewrite what is
right.

How: the kernel's table, read once as ``nft list table`` prints it, is loaded into an emulated
ruleset, and the full sync's transaction is applied to it there: the result is what the kernel would
hold after the full sync (the *twin*). Each chain, set and map is printed on both sides with nft
1.0.6's text (handles are not printed, counters come from the kernel's own listing on both sides)
and compared: a chain whose header or rules differ (rule order and anonymous sets' contents are in
its text) is flushed and rewritten, elements are added or deleted one by one, what the twin has
and the kernel lacks is created, and what the transaction deleted is deleted. The elements of
dynamic sets (kube-proxy's affinity sets: the kernel adds and expires them) are left alone, as
upstream's full sync leaves them.

``plan`` says None when the repair cannot be worked out here (the listing does not load, the
transaction fails on the twin, a set's type or the table's own attributes differ): the caller then
sends the full transaction as before, whose outcome (or nft's error) is the kernel's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kproxy.nftables.expr import Opts
from kproxy.nftables.listing import chain_text, set_text

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.nftables.model import Chain, NSet, Table
    from kproxy.nftables.transaction import Tx

PLAIN = Opts()


@dataclass
class ChainState:
    """A chain as listed: its header (the declaration and comment lines) and its rules' text."""

    head: tuple[str, ...]
    rules: list[str]


@dataclass
class SetState:
    """A set or map as listed: its declaration lines, and its elements (key text -> element text;
    None for a dynamic set, whose elements are the kernel's)."""

    is_map: bool
    head: tuple[str, ...]
    elements: dict[str, str] | None


@dataclass
class TableState:
    """One table's objects, each as nft lists it (handles left out)."""

    head: tuple[Any, ...]
    chains: dict[str, ChainState] = field(default_factory=dict)
    sets: dict[str, SetState] = field(default_factory=dict)
    objects: bool = False         # stateful objects or flowtables (not the proxier's: not compared)


def dynamic(s: NSet) -> bool:
    """A set whose elements the packet path adds and times out (``update @set``)."""
    return "dynamic" in s.flags or "timeout" in s.flags or s.timeout is not None


def chain_state(t: Table, c: Chain) -> ChainState:
    head = chain_text(t, c, PLAIN, indent="", rules=False).split("\n")[1:-1]
    return ChainState(tuple(line.strip() for line in head), [r.text(PLAIN) for r in c.rules])


def set_state(s: NSet) -> SetState:
    elems, s.elems = s.elems, []
    try:
        head = set_text(s, PLAIN, indent="").split("\n")[1:-1]
    finally:
        s.elems = elems
    elements = None if dynamic(s) else {e.key.text(PLAIN): e.text(PLAIN) for e in s.elems}
    return SetState(s.is_map, tuple(line.strip() for line in head), elements)


def table_state(t: Table) -> TableState:
    out = TableState((tuple(t.flags), t.comment))
    out.chains = {name: chain_state(t, c) for name, c in t.chains.items()}
    out.sets = {s.name: set_state(s) for s in t.sets.values() if not s.anonymous}
    out.objects = bool(t.objs or t.flowtables)
    return out


def _decl(head: Iterable[str]) -> str:
    """A listed declaration as ``add chain``/``add set`` input: `` { LINE ; LINE ; }``."""
    lines = [line.rstrip(";") for line in head]
    return " { " + " ; ".join(lines) + " ; }" if lines else ""


def diff(family: str, table: str, have: TableState, want: TableState) -> list[str] | None:
    """The transaction's lines that turn ``have`` into ``want`` (see the module doc), or None when
    that needs more than chains, rules, sets and elements (the table's own attributes, a set's type)."""
    if have.head != want.head:
        return None
    where = f"{family} {table}"
    new_sets: list[str] = []
    new_chains: list[str] = []
    rewrites: list[str] = []
    element_deletes: list[str] = []
    element_adds: list[str] = []
    gone: list[str] = []
    for name, s in want.sets.items():
        kind = "map" if s.is_map else "set"
        old = have.sets.get(name)
        if old is not None and (old.head != s.head or old.is_map != s.is_map):
            return None                 # a set's type cannot change in place
        if old is None:
            new_sets.append(f"add {kind} {where} {name}{_decl(s.head)}")
        if s.elements is None:
            continue
        held = old.elements if old is not None and old.elements is not None else {}
        for key, text in held.items():
            if s.elements.get(key) != text:
                element_deletes.append(f"delete element {where} {name} {{ {key} }}")
        for key, text in s.elements.items():
            if held.get(key) != text:
                element_adds.append(f"add element {where} {name} {{ {text} }}")
    for name, c in want.chains.items():
        old_chain = have.chains.get(name)
        if old_chain is not None and old_chain.head == c.head and old_chain.rules == c.rules:
            continue
        if old_chain is None:
            new_chains.append(f"add chain {where} {name}{_decl(c.head)}")
        elif old_chain.head != c.head:
            # a base chain's hook or priority cannot change in place: it goes and comes back
            new_chains += [f"delete chain {where} {name}", f"add chain {where} {name}{_decl(c.head)}"]
        else:
            rewrites.append(f"flush chain {where} {name}")
        rewrites += [f"add rule {where} {name} {rule}" for rule in c.rules]
    for name in have.chains.keys() - want.chains.keys():
        if have.chains[name].rules:
            rewrites.insert(0, f"flush chain {where} {name}")
        gone.append(f"delete chain {where} {name}")
    for name in have.sets.keys() - want.sets.keys():
        gone.append(f"delete {'map' if have.sets[name].is_map else 'set'} {where} {name}")
    gone.sort()
    return new_sets + new_chains + rewrites + element_deletes + element_adds + gone


def twin(listing: str, tx: str | Tx, family: str, table: str) -> tuple[TableState, TableState] | None:
    """(the kernel's table as listed, the same after the transaction), or None when the listing does
    not load or the transaction fails on it."""
    from kproxy.nftables.cli import run_nft
    from kproxy.nftables.model import Ruleset
    from kproxy.nftables.transaction import TxError, apply

    rc, _, _, rs = run_nft(["-f", "-"], Ruleset(), listing)
    t = rs.find(family, table)
    if rc != 0 or t is None or len(rs.tables) != 1:
        return None
    before = table_state(t)
    if before.objects:
        return None
    if not isinstance(tx, str) and tx.family == "ip" and tx.table == table:
        try:
            apply(tx, rs)
        except TxError:
            return None
    else:
        rc, _, _, rs = run_nft(["-f", "-"], rs, tx if isinstance(tx, str) else tx.text())
        if rc != 0:
            return None
    after = rs.find(family, table)
    if after is None:
        return None
    return before, table_state(after)


def plan(listing: str, tx: str | Tx, family: str, table: str) -> str | None:
    """The repair transaction's text ("" when the kernel holds what the sync wants already), or None
    when the full transaction must go as it is."""
    states = twin(listing, tx, family, table)
    if states is None:
        return None
    lines = diff(family, table, *states)
    if lines is None:
        return None
    return "".join(line + "\n" for line in lines)
