"""A full sync's nft transaction reshaped for the kernel, whose cost per rule grows with the
transaction.

Why: when a rule binds an anonymous set (``numgen random mod 5 vmap { 0 : goto ... }``, one per
Service chain), the kernel walks the whole transaction so far (``__nft_set_trans_bind`` in
nf_tables_api.c visits every entry of the commit list, no early exit). A full sync of N Services
interleaves ~26 lines per Service, so the binds cost N x (half the transaction): 84 s of kernel time
at 10,000 Services.

- The table does not exist yet (a node's first sync): nothing is there to keep intact, so the text
  goes in its own order as transactions of at most ``CHUNK_LINES`` lines, every walk bounded by one
  of them. The rules of the base chains (the jumps from the hooks into the table) wait for the last
  one, so until it commits every base chain is empty with policy accept and decides no packet: a
  packet sees no table or the whole table, never a part. If any transaction fails the table is
  deleted again, so a failed sync leaves nothing behind.
- The table exists: one transaction, as the previous rules must survive a failure. Each chain with
  anonymous-set rules moves its ``flush`` and rules to the start, so every walk is short, if it
  existed before and its rules name only chains that existed before and no set the text creates.

Only the order *between* chains changes, never a chain's, set's or map's own lines, so the committed
ruleset (and ``nft list``'s order of chains and sets) is the one the text gives. What stays
quadratic is the kernel's, not the order's: each new anonymous set is named (``__map%d``: every set
of the table read with ``sscanf``) and found by name (``nft_set_lookup``: a list walk) several times,
so N Services cost N x (the table's sets).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Below this many anonymous-set rules the binds cost little and the text goes as it is.
MIN_ANONYMOUS_RULES = 64
# A new table's transactions: at most this many lines each (about 770 Services of 5 endpoints). Each
# ``nft -f`` first reads the table's chains and sets (nft 1.0.6's cache), which costs more as the
# table grows, so smaller ones pay that more often: at 10,000 Services x 5, 5,000 lines: 25 s of CPU,
# 10,000: 16 s, 20,000: 14 s, 40,000: 22 s, one transaction: 25 s (the walks).
CHUNK_LINES = 20_000

_CREATION_KINDS = ("table", "chain", "set", "map")


@dataclass
class Reshaped:
    parts: list[str]      # the transactions, in order
    fresh: bool           # the table did not exist: delete it again if a part fails


def _lines(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _binds_anonymous_set(line: str) -> bool:
    """An ``add rule`` whose body has an inline ``{ ... }`` (an anonymous set or verdict map)."""
    return line.startswith("add rule ") and " { " in line


def _movable(lines: list[str], family: str, table: str) -> set[str] | None:
    """The plain chains with anonymous-set rules, or None if the text is small or names anything
    but ``family table``'s chains, rules, sets, maps and elements."""
    if sum(1 for ln in lines if _binds_anonymous_set(ln)) < MIN_ANONYMOUS_RULES:
        return None
    pinned: set[str] = set()          # deleted, or base chains: their lines keep their place
    anonymous: set[str] = set()
    for line in lines:
        w = line.split(" ", 5)
        if len(w) < 4 or w[2] != family or w[3] != table or w[1] not in (*_CREATION_KINDS, "rule", "element"):
            return None
        if w[1] == "table":
            if w[0] != "add":
                return None
        elif len(w) < 5:
            return None
        elif w[0] == "delete" and w[1] == "chain" or w[0] == "add" and w[1] == "chain" and len(w) > 5:
            pinned.add(w[4])
        elif _binds_anonymous_set(line):
            anonymous.add(w[4])
    return anonymous - pinned


def _references(line: str) -> tuple[set[str], set[str]]:
    """The chains (``jump``/``goto``) and sets (``@name``) a rule names."""
    words = line.replace("{", " ").replace("}", " ").replace(",", " ").split()
    chains = {words[i + 1] for i, w in enumerate(words[:-1]) if w in ("jump", "goto")}
    return chains, {w[1:] for w in words if w.startswith("@")}


def _ready(lines: list[str], movable: set[str], existing_chains: set[str]) -> set[str]:
    """The movable chains whose rules name only chains that exist already and sets the text does
    not create: only those may go ahead of the text's ``add chain`` and ``add set`` lines."""
    created_sets = {w[4] for w in (ln.split(" ", 5) for ln in lines) if w[0] == "add" and w[1] in ("set", "map")}
    out = set(movable)
    for line in lines:
        w = line.split(" ", 5)
        if w[1] == "rule" and w[4] in out:
            chains, sets = _references(line)
            if not chains <= existing_chains or sets & created_sets:
                out.discard(w[4])
    return out


def _base_chains(lines: list[str]) -> set[str]:
    """The chains the text declares with a hook."""
    out = set()
    for line in lines:
        w = line.split(" ", 5)
        if w[0] == "add" and w[1] == "chain" and len(w) > 5 and " hook " in f" {w[5]}":
            out.add(w[4])
    return out


def chunked(lines: list[str], size: int) -> list[str]:
    """A new table's text as transactions of at most ``size`` lines in the text's order, the base
    chains' rules held back for the last (see the module doc)."""
    base = _base_chains(lines)
    hooked = [ln for ln in lines if ln.startswith("add rule ") and ln.split(" ", 5)[4] in base]
    rest = [ln for ln in lines if not (ln.startswith("add rule ") and ln.split(" ", 5)[4] in base)]
    parts = [rest[i:i + size] for i in range(0, len(rest), size)] or [[]]
    parts[-1] = parts[-1] + hooked
    return [_lines(p) for p in parts]


def reshape(text: str, family: str, table: str,
            chains: Callable[[], set[str] | None]) -> Reshaped | None:
    """``text`` reshaped (see the module doc), or None when it is better sent as it is. ``chains``
    asks the kernel for the table's chains (None: no such table); only big texts ask."""
    lines = text.splitlines()
    movable = _movable(lines, family, table)
    if movable is None:
        return None
    existing_chains = chains()
    if existing_chains is None:
        return Reshaped(chunked(lines, CHUNK_LINES), True)
    movable = _ready(lines, movable & existing_chains, existing_chains)
    front: list[str] = []
    rest: list[str] = []
    for line in lines:
        w = line.split(" ", 5)
        moves = w[1] in ("chain", "rule") and w[0] != "add" or w[1] == "rule"
        (front if moves and w[4] in movable else rest).append(line)
    return Reshaped([_lines(front + rest)], False)


_WHERE = re.compile(r"^(/dev/stdin|-):(\d+):", re.M)


def as_in_text(message: str, sent: str, text: str) -> str:
    """nft's error for a reshaped part, its line numbers turned into the original text's (the line
    nft quotes is the same line there)."""
    sent_lines, lines = sent.splitlines(), text.splitlines()
    first_at: dict[str, int] = {}
    for i, line in enumerate(lines, 1):
        first_at.setdefault(line, i)

    def renumber(m: re.Match[str]) -> str:
        n = int(m.group(2))
        at = first_at.get(sent_lines[n - 1]) if 0 < n <= len(sent_lines) else None
        return f"{m.group(1)}:{at or n}:"

    return _WHERE.sub(renumber, message)
