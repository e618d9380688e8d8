"""A full sync's nft transaction reshaped for the kernel: rules that bind anonymous sets go first.

Why: when a rule binds an anonymous set (``numgen random mod 5 vmap { 0 : goto ... }``, one per
Service chain), the kernel walks the whole transaction so far (``__nft_set_trans_bind`` in
nf_tables_api.c visits every entry, no early exit). A full sync of N Services interleaves ~26 lines
per Service, so the binds cost N x (half the transaction): 84 s of kernel time at 10,000 Services.

Moving each such chain's ``flush`` and rules (in their order) to the start of the transaction makes
every walk short. Only the order *between* chains changes; each chain's, set's and map's own lines
keep theirs, so the committed ruleset is the one the text gives. A chain can only move ahead of its
``add chain`` if it already exists, so:

- the table exists: one transaction; a chain moves to the front if it existed before and its rules
  name only chains that existed before and no set the text creates;
- the table does not exist yet (a node's first sync): two transactions. The first creates the table,
  its chains and its sets in the text's order (so ``nft list`` shows them in the same order; base
  chains are empty with policy accept, which decides no packet); the second is the rest with every
  anonymous-set chain in front. If the second fails the table is deleted again, so a failed sync
  leaves nothing behind.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Below this many anonymous-set rules the binds cost little and the text goes as it is.
MIN_ANONYMOUS_RULES = 64

_CREATION_KINDS = ("table", "chain", "set", "map")


@dataclass
class Reshaped:
    first: str            # the creations, for a table that does not exist yet ("" when it does)
    second: str           # the rest, anonymous-set chains in front


def _lines(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _binds_anonymous_set(line: str) -> bool:
    """An ``add rule`` whose body has an inline ``{ ... }`` (an anonymous set or verdict map)."""
    return line.startswith("add rule ") and " { " in line


def _is_creation(w: list[str]) -> bool:
    return w[0] in ("add", "delete") and w[1] in _CREATION_KINDS


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


def reshape(text: str, family: str, table: str,
            chains: Callable[[], set[str] | None]) -> Reshaped | None:
    """``text`` reshaped (see the module doc), or None when it is better sent as it is. ``chains``
    asks the kernel for the table's chains (None: no such table); only big texts ask."""
    lines = text.splitlines()
    movable = _movable(lines, family, table)
    if movable is None:
        return None
    first: list[str] = []
    existing_chains = chains()
    if existing_chains is None:
        first = [ln for ln in lines if _is_creation(ln.split(" ", 5))]
        lines = [ln for ln in lines if not _is_creation(ln.split(" ", 5))]
    else:
        movable = _ready(lines, movable & existing_chains, existing_chains)
    front: list[str] = []
    rest: list[str] = []
    for line in lines:
        w = line.split(" ", 5)
        moves = w[1] in ("chain", "rule") and w[0] != "add" or w[1] == "rule"
        (front if moves and w[4] in movable else rest).append(line)
    return Reshaped(_lines(first), _lines(front + rest))


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
