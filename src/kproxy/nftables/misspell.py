"""nft 1.0.6's "did you mean" suggestions (misspell.c, rule.c's ``*_lookup_fuzzy``, cmd.c, evaluate.c).

nft suggests the nearest name in its cache when a table, chain, set, map, object or flowtable is not
found: while evaluating a command (``No such file or directory; did you mean ...?``, else plain
``No such file or directory``), or when the kernel answers ENOENT (the same hint, else ``Could not
process rule: No such file or directory``). The distance is nft's own, computed exactly as its C code
does, quirks included: its table is indexed with a row width one too small (rows overlap), and it
compares each string's characters one position late (so the terminating NUL takes part). That is
why ``i`` and ``c`` can bring ``input`` to mind while the true edit distance is 4. A name of one
character is never matched, not even by itself.

For a rule the kernel refused with ENOENT, nft looks up *the rule's own chain* (not a missing jump
target): a hint appears when that chain is missing or too short to match itself (``c``) and another
chain's name is near it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kproxy.nftables.model import Ruleset, Table


def string_distance(a: str, b: str) -> int:
    """misspell.c's string_distance(a, b), bug for bug."""
    x = a.encode() + b"\0"
    y = b.encode() + b"\0"
    la, lb = len(x) - 1, len(y) - 1
    d = [0] * ((la + 1) * (lb + 1))
    for i in range(la + 1):
        d[i * lb] = i
    for j in range(lb + 1):
        d[j] = j
    for i in range(1, la + 1):
        for j in range(1, lb + 1):
            sub = 0 if x[i] == y[j] else 1
            v = min(d[(i - 1) * lb + j] + 1, d[i * lb + j - 1] + 1, d[(i - 1) * lb + j - 1] + sub)
            if i > 1 and j > 1 and x[i] == y[j - 1] and x[i - 1] == y[j]:
                v = min(v, d[(i - 2) * lb + j - 2] + sub)
            d[i * lb + j] = v
    return d[la * lb + lb]


def nearest(wanted: str, candidates: Iterable[tuple[str, Any]]) -> Any:
    """string_misspell_update over the candidates in order: the first of the smallest distance
    within nft's threshold (about a third of the longer name), or None."""
    best, best_d = None, None
    lb = len(wanted.encode())
    for name, obj in candidates:
        la = len(name.encode())
        hi, lo = max(la, lb), min(la, lb)
        if hi <= 1:
            continue
        threshold = max(-(-hi // 3), 1) if hi - lo <= 1 else -(-(hi + 2) // 3)
        d = string_distance(name, wanted)
        if d > threshold:
            continue
        if best_d is None or d < best_d:
            best, best_d = obj, d
    return best


def fuzzy_table(rs: Ruleset, name: str) -> Table | None:
    return nearest(name, ((t.name, t) for t in rs.tables))


def fuzzy_chain(rs: Ruleset, name: str) -> tuple[Table, str] | None:
    return nearest(name, ((c, (t, c)) for t in rs.tables for c in t.chains))


def fuzzy_set(rs: Ruleset, name: str) -> tuple[Table, Any] | None:
    return nearest(name, ((s.name, (t, s)) for t in rs.tables for s in t.sets.values()
                          if not s.anonymous))


def fuzzy_obj(rs: Ruleset, name: str) -> tuple[Table, str] | None:
    return nearest(name, ((n, (t, n)) for t in rs.tables for (_, n) in t.objs))


def table_hint(rs: Ruleset, name: str) -> str | None:
    t = fuzzy_table(rs, name)
    return None if t is None else f"did you mean table \u2018{t.name}\u2019 in family {t.family}?"


def chain_hint(t: Table, chain: str) -> str:
    return f"did you mean chain \u2018{chain}\u2019 in table {t.family} \u2018{t.name}\u2019?"


def set_hint(t: Table, s: Any) -> str:
    return f"did you mean {'map' if s.is_map else 'set'} \u2018{s.name}\u2019 in table {t.family} \u2018{t.name}\u2019?"


def obj_hint(t: Table, name: str) -> str:
    return f"did you mean obj \u2018{name}\u2019 in table {t.family} \u2018{t.name}\u2019?"


ENOENT = "No such file or directory"


def evaluation_message(rs: Ruleset, kind: str, name: str) -> str:
    """evaluate.c's ``*_not_found``: a table, chain, set or object nft's cache does not hold."""
    hint: str | None = None
    if kind == "table":
        hint = table_hint(rs, name)
    elif kind == "chain":
        c = fuzzy_chain(rs, name)
        hint = None if c is None else chain_hint(*c)
    elif kind == "set":
        s = fuzzy_set(rs, name)
        hint = None if s is None else set_hint(*s)
    elif kind == "obj":
        o = fuzzy_obj(rs, name)
        hint = None if o is None else obj_hint(*o)
    return ENOENT if hint is None else f"{ENOENT}; {hint}"


def kernel_hint(rs: Ruleset, kind: str, family: str, table: str, name: str | None) -> tuple[str, bool] | None:
    """cmd.c's nft_cmd_enoent for a command of ``kind`` (table, chain, rule, set, obj) on ``name`` in
    ``family table`` that the kernel answered with ENOENT: the message and whether it points at the
    table's name (True) or where the kernel's error does; None for the plain ``Could not process
    rule``. For a rule, ``name`` is the rule's own chain."""
    if kind == "table":
        t = fuzzy_table(rs, table)
        return None if t is None else (f"{ENOENT}; {table_hint(rs, table)}", False)
    if name is None or kind not in ("chain", "rule", "set", "obj"):
        return None
    found: Any = {"chain": fuzzy_chain, "rule": fuzzy_chain, "set": fuzzy_set, "obj": fuzzy_obj}[kind](rs, name)
    if found is None:
        return None
    tbl = found[0]
    if rs.find(family, table) is None and (tbl.name != table or tbl.family != family):
        return f"{ENOENT}; did you mean table \u2018{tbl.name}\u2019 in family {tbl.family}?", True
    if kind == "rule" and found[1] == name:
        return None
    if kind in ("chain", "rule"):
        return f"{ENOENT}; {chain_hint(*found)}", False
    if kind == "set":
        return f"{ENOENT}; {set_hint(*found)}", False
    return f"{ENOENT}; {obj_hint(*found)}", False
