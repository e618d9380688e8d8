"""An nft transaction applied to a ruleset in place, undone from a journal if it fails.

Copying a ruleset for every transaction costs what the ruleset holds; kube-proxy's partial syncs touch
a few chains of a table of a hundred thousand, and a user's ``nft add element`` on a node file one set.
Here a table's dictionaries (chains, sets, objects, flowtables) record, while a transaction runs, each
name's object before its first change, and the object a transaction changes is a copy of the one
before (its lists and dictionaries its own): so the objects the packet path holds are never changed
under it, and a failure puts every recorded name back. What it costs is what the transaction touches.

Two ways to know what a transaction will change: the kube-proxy backend names the chains and sets
beforehand (``named_objects``, ``apply_in_place``: one table); ``RulesetJournal`` (the ``kproxy nft``
command on any script) lets the dictionaries hand out a copy of an object on its first lookup by name,
so whatever the parser looks up to change is already a copy. Writers that reach objects by iterating a
table's dictionary (``values()``, ``items()``) read them only; one that changes them looks each up by
name first.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

MISSING: Any = object()


class JournalDict(dict):
    """A dict that, while a journal is open, remembers each key's value before its first change."""

    __slots__ = ("journal", "order", "by_handle")

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.journal: dict[Any, Any] | None = None
        self.order: list[Any] | None = None     # the keys in order, kept before a first deletion
        # A table's chains, sets and objects are in handle order (creation order, as the kernel lists
        # them): a rollback puts a deleted one back by its handle, with no copy of the keys' order
        # at the first deletion (a partial sync deleting one of 10,000 affinity sets paid 0.6 ms for it).
        self.by_handle = False

    def _note(self, key: Any) -> None:
        j = self.journal
        if j is not None and key not in j:
            j[key] = dict.get(self, key, MISSING)

    def _deleting(self, key: Any) -> None:
        """Before a key goes: a rollback that puts it back must put it back in its place."""
        self._note(key)
        if self.journal is not None and self.order is None and dict.__contains__(self, key):
            self.order = [] if self.by_handle else list(self)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._note(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self._deleting(key)
        super().__delitem__(key)

    def pop(self, key: Any, *default: Any) -> Any:
        self._deleting(key)
        return super().pop(key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return super().setdefault(key, default)

    def update(self, *args: Any, **kw: Any) -> None:
        for key, value in dict(*args, **kw).items():
            self[key] = value

    def popitem(self) -> tuple[Any, Any]:
        key = next(reversed(self))
        return key, self.pop(key)

    def clear(self) -> None:
        for key in list(self):
            self._deleting(key)
        super().clear()

    def begin(self) -> None:
        self.journal = {}
        self.order = None

    def end(self) -> dict[Any, Any]:
        """Close the journal; returns it (name -> object before, or MISSING)."""
        j, self.journal, self.order = self.journal or {}, None, None
        return j

    def rollback(self) -> None:
        order = self.order
        for key, value in self.end().items():
            if value is MISSING:
                dict.pop(self, key, None)
            else:
                dict.__setitem__(self, key, value)
        if order is not None and self.by_handle:
            self._by_handle()
        elif order is not None and list(self) != order:
            # (keys added before the first deletion are in ``order`` too, and gone now)
            items = [(k, dict.__getitem__(self, k)) for k in order if dict.__contains__(self, k)]
            dict.clear(self)
            dict.update(self, items)

    def _by_handle(self) -> None:
        """Back in handle order, if a rollback's re-inserted keys (at the end now) broke it."""
        keys = list(self)
        handles = [dict.__getitem__(self, k).handle for k in keys]
        if all(a < b for a, b in zip(handles, handles[1:])):
            return
        items = sorted(dict.items(self), key=lambda kv: kv[1].handle)
        dict.clear(self)
        dict.update(self, items)

    def own(self, key: Any) -> Any:
        """The object under ``key``, replaced first (and journaled) by a copy of it with its own lists
        and dictionaries, unless the open journal already has the key (then it is this transaction's)."""
        j = self.journal
        if j is None or key in j:
            return dict.__getitem__(self, key)
        mine = owned_copy(dict.__getitem__(self, key))
        self[key] = mine
        return mine

    def __deepcopy__(self, memo: dict[int, Any]) -> JournalDict:
        return JournalDict({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def __reduce__(self) -> Any:
        return (JournalDict, (dict(self),))


class OwningJournalDict(JournalDict):
    """A ``JournalDict`` whose open journal hands out each object looked up by name (``d[k]``,
    ``d.get(k)``) as ``own`` does. A journaled dictionary is of this class only while a
    ``RulesetJournal`` is open, so other lookups (the packet path's) cost what a dict's do."""

    __slots__ = ()

    def __getitem__(self, key: Any) -> Any:
        return self.own(key)

    def get(self, key: Any, default: Any = None) -> Any:
        if not dict.__contains__(self, key):
            return default
        return self.own(key)


@contextmanager
def reading(tables: Iterable[Any]) -> Iterator[None]:
    """Lookups by name that only read (the commit-time walk over every jump of a table): while it
    runs, an open ``RulesetJournal`` hands out the objects themselves, not copies of them all."""
    swapped: list[JournalDict] = [d for t in tables for name in DICTS
                                  if type(d := getattr(t, name)) is OwningJournalDict]
    for d in swapped:
        d.__class__ = JournalDict
    try:
        yield
    finally:
        for d in swapped:
            d.__class__ = OwningJournalDict


def may_nest_deeper(table: Any) -> bool:
    """Whether the transaction running may have made ``table``'s jumps nest deeper: so unless a journal
    open on its dictionaries shows that it added no jump (no new rule that jumps, goes to or looks up
    a verdict map, no verdict map changed, no base chain made or changed). A committed table was
    valid, and deleting can only make paths shorter."""
    chains, sets = table.chains, table.sets
    if not isinstance(chains, JournalDict) or chains.journal is None or \
            not isinstance(sets, JournalDict) or sets.journal is None:
        return True
    from kproxy.nftables.stmt import VerdictMap, VerdictStmt
    from kproxy.nftables.validate import is_verdict_map

    def jumps(st: Any) -> bool:
        return type(st) is VerdictMap or type(st) is VerdictStmt and bool(st.verdict.target)

    for name, old in chains.journal.items():
        new = dict.get(chains, name)
        if new is None:
            continue
        if new.hook is not None and (old is MISSING or (old.hook, old.type, old.prio) != (new.hook, new.type, new.prio)):
            return True
        kept = {id(r) for r in old.rules} if old is not MISSING else set()
        for r in new.rules:
            if id(r) not in kept and any(jumps(st) for st in r.stmts):
                return True
    return any(s is not MISSING and is_verdict_map(s) for s in sets.journal.values()) or \
        any(is_verdict_map(s) for name in sets.journal if (s := dict.get(sets, name)) is not None)


def owned_copy(obj: Any) -> Any:
    """A shallow copy of a model object (chain, set, object, flowtable) with its own lists and dicts:
    changing its rules, elements, flags, devices or values leaves ``obj`` as it was."""
    mine = copy.copy(obj)
    d = mine.__dict__
    for k, v in d.items():
        if type(v) is list:
            d[k] = list(v)
        elif type(v) is dict:
            d[k] = dict(v)
    return mine


DICTS = ("chains", "sets", "objs", "flowtables")


def handle_counters(rs: Any) -> tuple[int, dict[int, int]]:
    """The ruleset's table handle counter and each table's handle counter (by table identity)."""
    return rs.next_table_handle, {id(t): t.next_handle for t in rs.tables}


class RulesetJournal:
    """An open undo journal over a whole ruleset: its table list and counters, each table's attributes
    (flags, comment, handle counters, which dictionaries it has) and each table's journaled
    dictionaries, whose lookups by name hand out copies. ``rollback`` puts everything back;
    ``commit`` keeps the changes and says, per table, which names of each dictionary they touched."""

    def __init__(self, rs: Any) -> None:
        self.rs = rs
        self.rs_state = dict(rs.__dict__)
        self.tables = list(rs.tables)
        self.states: list[tuple[Any, dict[str, Any]]] = []
        for t in rs.tables:
            for name in DICTS:
                d = getattr(t, name)
                if not isinstance(d, JournalDict):
                    d = JournalDict(d)
                    setattr(t, name, d)
                d.by_handle = True
                d.begin()
                d.__class__ = OwningJournalDict
            self.states.append((t, dict(t.__dict__)))

    def _close(self) -> dict[int, dict[str, dict[Any, Any]]]:
        out = {}
        for t, state in self.states:
            ends = {}
            for name in DICTS:
                d = state[name]
                d.__class__ = JournalDict
                ends[name] = d.end()
            out[id(t)] = ends
        return out

    def handle_counters(self) -> tuple[int, dict[int, int]]:
        return handle_counters(self.rs)

    def rollback(self, handed_out: int = 0) -> None:
        """Put the ruleset back as it was; ``handed_out``: how many times the handles the transaction
        handed out stay handed out (the kernel's counters stay advanced after it rejects a batch, twice
        for a batch it replayed), for each table that was there before and still is."""
        next_table, per_table = self.handle_counters()
        for t, state in self.states:
            for name in DICTS:
                d = state[name]
                d.__class__ = JournalDict
                d.rollback()
            t.__dict__.clear()
            t.__dict__.update(state)
        tables = self.rs_state["tables"]
        tables[:] = self.tables           # the same list object, as it was
        self.rs.__dict__.clear()
        self.rs.__dict__.update(self.rs_state)
        if handed_out:
            self.rs.next_table_handle += handed_out * (next_table - self.rs.next_table_handle)
            for t in self.rs.tables:
                n = per_table.get(id(t))
                if n is not None:
                    t.next_handle += handed_out * max(0, n - t.next_handle)

    def commit(self) -> Changes:
        """Close the journal, keeping the changes."""
        ends = self._close()
        before = {id(t): state for t, state in self.states}
        changes = Changes()
        for t in self.rs.tables:
            state = before.get(id(t))
            if state is None or any(t.__dict__.get(k) is not state[k] for k in DICTS):
                changes.new_tables.add(id(t))       # new, or a whole dictionary replaced
                continue
            touched = {k: set(v) for k, v in ends[id(t)].items()}
            touched["attrs"] = {k for k, v in t.__dict__.items()
                                if not k.startswith("_") and k not in DICTS and state.get(k, MISSING) != v}
            changes.touched[id(t)] = touched
        return changes


class Changes:
    """What a committed ``RulesetJournal`` saw: per table (by identity) the names each dictionary's
    journal recorded (changed, added, deleted, or looked up to change) and, under ``attrs``, the
    attributes that changed (flags, comment, handle counters); and the tables that are new or whose
    dictionaries were replaced, to be taken as wholly changed."""

    def __init__(self) -> None:
        self.touched: dict[int, dict[str, set[Any]]] = {}
        self.new_tables: set[int] = set()


def named_objects(text: str, family: str, table: str) -> tuple[set[str], set[str]] | None:
    """The chains and sets of ``family table`` that the transaction names (a rule's ``@set`` too);
    None if it does anything else (other tables, deleting or flushing the table, objects)."""
    chains: set[str] = set()
    sets: set[str] = set()
    for line in text.splitlines():
        words = line.split(None, 5)
        if not words:
            continue
        if len(words) < 4 or words[2] != family or words[3] != table:
            return None
        kind = words[1]
        if kind == "table":
            if words[0] != "add":
                return None
            continue
        if len(words) < 5:
            return None
        if kind in ("chain", "rule"):
            chains.add(words[4])
            if kind == "rule":
                sets.update(re.findall(r"@([A-Za-z0-9_./-]+)", words[5] if len(words) > 5 else ""))
        elif kind in ("set", "map", "element"):
            sets.add(words[4])
        else:
            return None
    return chains, sets


def _own(d: JournalDict, names: Iterable[str]) -> None:
    """Replace each named object by a copy with its own lists, so the transaction changes only copies."""
    for name in names:
        if dict.__contains__(d, name):
            d.own(name)


def journaled(table: Any) -> None:
    """Give ``table`` (if any) journaling chain and set dictionaries."""
    if table is not None and not isinstance(table.chains, JournalDict):
        table.chains = JournalDict(table.chains)
    if table is not None and not isinstance(table.sets, JournalDict):
        table.sets = JournalDict(table.sets)
    if table is not None:
        table.chains.by_handle = table.sets.by_handle = True


def apply_in_place(rs: Any, table: Any, chains: set[str], sets: set[str],
                   run: Callable[[], None],
                   check: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``run`` (which parses the transaction into ``rs``) against ``table`` in place; on an error
    everything is put back and the error re-raised. ``check`` (given the chains and sets before, as
    below) may refuse the result by raising, as the kernel's commit-time validation does. Returns the
    chains before (name -> chain or MISSING) of every chain the transaction added, changed or deleted."""
    journaled(table)
    scalars = (table.next_handle, table.anon_seq, table.comment, list(table.flags), rs.next_table_handle)
    table.chains.begin()
    table.sets.begin()
    try:
        _own(table.chains, chains)
        _own(table.sets, sets)
        run()
        if check is not None:
            check(table.chains.journal or {}, table.sets.journal or {})
    except BaseException:
        table.chains.rollback()
        table.sets.rollback()
        table.next_handle, table.anon_seq, table.comment, table.flags, rs.next_table_handle = scalars
        raise
    table.sets.end()
    return table.chains.end()
