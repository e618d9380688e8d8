"""An nft transaction applied to one table in place, undone from a journal if it fails.

Copying a ruleset for every transaction costs what the ruleset holds; kube-proxy's partial syncs touch
a few chains of a table of a hundred thousand. Here the table's chain and set dictionaries record, while
a transaction runs, each name's object before its first change; the chains and sets the transaction
names are replaced by copies before it runs, so the objects the packet path holds are never changed
under it; a failure puts every recorded name back. What it costs is what the transaction touches.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from typing import Any

MISSING: Any = object()


class JournalDict(dict):
    """A dict that, while a journal is open, remembers each key's value before its first change."""

    __slots__ = ("journal",)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.journal: dict[Any, Any] | None = None

    def _note(self, key: Any) -> None:
        j = self.journal
        if j is not None and key not in j:
            j[key] = dict.get(self, key, MISSING)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._note(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self._note(key)
        super().__delitem__(key)

    def pop(self, key: Any, *default: Any) -> Any:
        self._note(key)
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
            self._note(key)
        super().clear()

    def begin(self) -> None:
        self.journal = {}

    def end(self) -> dict[Any, Any]:
        """Close the journal; returns it (name -> object before, or MISSING)."""
        j, self.journal = self.journal or {}, None
        return j

    def rollback(self) -> None:
        for key, value in self.end().items():
            if value is MISSING:
                dict.pop(self, key, None)
            else:
                dict.__setitem__(self, key, value)

    def __deepcopy__(self, memo: dict[int, Any]) -> JournalDict:
        return JournalDict({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def __reduce__(self) -> Any:
        return (JournalDict, (dict(self),))


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


def _own(d: JournalDict, names: Iterable[str], fields: tuple[str, ...]) -> None:
    """Replace each named object by a copy with its own lists, so the transaction changes only copies."""
    for name in names:
        obj = dict.get(d, name)
        if obj is not None:
            mine = copy.copy(obj)
            for f in fields:
                setattr(mine, f, list(getattr(obj, f)))
            d[name] = mine


def journaled(table: Any) -> None:
    """Give ``table`` (if any) journaling chain and set dictionaries."""
    if table is not None and not isinstance(table.chains, JournalDict):
        table.chains = JournalDict(table.chains)
    if table is not None and not isinstance(table.sets, JournalDict):
        table.sets = JournalDict(table.sets)


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
        _own(table.chains, chains, ("rules",))
        _own(table.sets, sets, ("elems", "flags"))
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
