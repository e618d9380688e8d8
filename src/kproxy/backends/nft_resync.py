"""A later full sync on a kernel sent as a repair: only the chains, sets and elements that differ.

Why: a full sync rewrites every chain, set and map of the table in one transaction. On a kernel
whose table already holds 10,000 Services, each new anonymous vmap (one per Service chain) is named
and found by walking every set of the table, the old ones included until the commit, so that one
batch held nf_tables' commit mutex for ~40 s of CPU (docs/performance.md). A full sync is there to
repair drift (a flushed or deleted chain, an edited rule, a lost element), not to rewrite what is
right.

How: the kernel's table is read once as ``nft list table`` prints it (the cheapest listing: 7.7 s of
CPU at 10,000 Services, most of it the kernel dumping each anonymous set; ``-j`` costs more and
``-t`` still reads every anonymous set) and split into its blocks. What the full transaction's
result depends on is loaded into an emulated ruleset: every chain's and set's declaration, and the
rules and elements of those it does not flush or delete (someone else's chain, say); the transaction
is applied there and the result printed: what the kernel would hold after the full rewrite (the
*twin*). Each chain, set and map is compared as nft 1.0.6's text (no handles; a counter's values
come from the kernel on both sides): a chain whose header or rules differ (rule order and anonymous
sets' contents are in its text) is flushed and rewritten, elements are added or deleted one by one,
what the twin has and the kernel lacks is created, and what the transaction deleted is deleted.
The elements of dynamic sets (kube-proxy's affinity sets: the kernel adds and expires them) are left
alone, as upstream's full sync leaves them. The repair is one transaction, however big, so that a
failure leaves the previous rules (a first sync's pieces are for a table that did not exist).

``plan`` says None when the repair cannot be worked out here (the listing does not load, the
transaction fails on the twin, a set's type or the table's own attributes differ): the caller then
sends the full transaction as before, whose outcome (or nft's error) is the kernel's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kproxy.nftables.expr import Opts

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.nftables.transaction import Tx

PLAIN = Opts()
CONTINUED = "\t     "        # an element line's continuation, inside a set block (nft's NEWLINE_DELIM)


@dataclass
class ChainState:
    """A chain as listed: its header (comment and declaration lines) and its rules' text."""

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
    """One table's objects, each as nft lists it (handles left out), and each block's own lines."""

    head: tuple[str, ...]
    chains: dict[str, ChainState] = field(default_factory=dict)
    sets: dict[str, SetState] = field(default_factory=dict)
    blocks: dict[tuple[str, str], list[str]] = field(default_factory=dict)    # (kind, name) -> inner lines


def dynamic(head: Iterable[str]) -> bool:
    """A set whose elements the packet path adds and times out (``update @set``)."""
    for line in head:
        if line.startswith("timeout ") or line.startswith("flags ") and (
                "dynamic" in line or "timeout" in line):
            return True
    return False


def split_elements(text: str) -> list[str]:
    """``{ a, b : c, d comment "x, y" }`` -> its elements' text (commas in quotes or braces kept)."""
    text = text.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    out: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i].strip())
            start = i + 1
    last = text[start:].strip()
    if last:
        out.append(last)
    return out


def element_key(text: str, is_map: bool) -> str:
    """An element's key as ``delete element`` takes it: without its data and options."""
    if is_map:
        text = text.rpartition(" : ")[0] or text
    cut = len(text)
    for option in (" timeout ", " expires ", ' comment "', " counter"):
        at = text.find(option)
        if 0 <= at < cut:
            cut = at
    return text[:cut]


def chain_state(inner: list[str]) -> ChainState:
    n = 0
    while n < len(inner) and (inner[n].startswith('comment "') or
                              inner[n].startswith("type ") and " hook " in inner[n]):
        n += 1
    return ChainState(tuple(inner[:n]), inner[n:])


def set_state(kind: str, inner: list[str]) -> SetState:
    at = next((i for i, line in enumerate(inner) if line.startswith("elements = ")), len(inner))
    head = tuple(inner[:at])
    if dynamic(head):
        return SetState(kind == "map", head, None)
    if at == len(inner):
        return SetState(kind == "map", head, {})
    text = inner[at][len("elements = "):] + "".join(" " + line[len(CONTINUED):] if line.startswith(CONTINUED)
                                                    else " " + line.strip() for line in inner[at + 1:])
    is_map = kind == "map"
    return SetState(is_map, head, {element_key(e, is_map): e for e in split_elements(text)})


def table_state(listing: str, family: str, table: str) -> TableState | None:
    """``nft list table`` text split by object, or None when it holds anything but chains, sets and
    maps (stateful objects, flowtables: not the proxier's, and not compared here)."""
    lines = listing.split("\n")
    if not lines or lines[0] != f"table {family} {table} {{":
        return None
    out = TableState(())
    head: list[str] = []
    i, n = 1, len(lines)
    while i < n:
        line = lines[i]
        if line == "}":
            if any(lines[i + 1:]):
                return None             # more than the one table
            break
        if not line:
            i += 1
            continue
        if line.startswith("\t") and not line.startswith("\t\t") and line.endswith(" {"):
            kind, _, name = line[1:-2].partition(" ")
            if kind not in ("chain", "set", "map") or not name:
                return None
            j = i + 1
            while j < n and lines[j] != "\t}":
                j += 1
            if j == n:
                return None
            inner = [ln[2:] for ln in lines[i + 1:j]]
            out.blocks[(kind, name)] = inner
            if kind == "chain":
                out.chains[name] = chain_state(inner)
            else:
                out.sets[name] = set_state(kind, inner)
            i = j + 1
        else:
            head.append(line.strip())
            i += 1
    else:
        return None
    out.head = tuple(head)
    return out


def _decl(head: Iterable[str]) -> str:
    """A listed declaration as ``add chain``/``add set`` input: `` { LINE ; LINE ; }``."""
    lines = [line.rstrip(";") for line in head]
    return " { " + " ; ".join(lines) + " ; }" if lines else ""


def diff(family: str, table: str, have: TableState, want: TableState,
         remade: set[str] | frozenset[str] = frozenset()) -> list[str] | None:
    """The transaction's lines that turn ``have`` into ``want`` (see the module doc), or None when
    that needs more than chains, rules, sets and elements (the table's own attributes, a set's type).
    The chains of ``remade`` (deleted and added again by the transaction: upstream's first sync does
    that to its base chains) are deleted and added again here too, so the table lists them where the
    full transaction would (last), not where they were."""
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
        if old_chain is not None and old_chain.head == c.head and old_chain.rules == c.rules and name not in remade:
            continue
        if old_chain is None:
            new_chains.append(f"add chain {where} {name}{_decl(c.head)}")
        elif old_chain.head != c.head or name in remade:
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


def creates_table(tx: str | Tx) -> bool:
    """A full sync's transaction: it has ``add table`` (after the stale chains' deletion, if any);
    a partial sync's never has."""
    if isinstance(tx, str):
        return ("\n" + tx).find("\nadd table ") >= 0
    return any(op[1] == "table" and op[0] == "add" for op in tx.ops)


Op = tuple[str, str, str]       # (verb, kind, name) of one of the transaction's operations on the table


def operations(tx: str | Tx, family: str, table: str) -> list[Op]:
    """The transaction's operations on ``family table``, read from its text or its model."""
    if not isinstance(tx, str):
        return [(op[0], op[1], op[2]) for op in tx.ops]
    ops = []
    for line in tx.splitlines():
        w = line.split(" ", 5)
        if len(w) >= 5 and w[2] == family and w[3] == table:
            ops.append((w[0], w[1], w[4]))
    return ops


def rewritten(ops: list[Op]) -> tuple[set[str], set[str]]:
    """The chains and the sets or maps the transaction flushes or deletes: whatever they held
    before makes no difference to what they hold after it."""
    from kproxy.nftables.transaction import ADD_FLUSH

    chains: set[str] = set()
    sets: set[str] = set()
    for verb, kind, name in ops:
        if verb in ("flush", "delete", ADD_FLUSH):
            if kind == "chain":
                chains.add(name)
            elif kind in ("set", "map"):
                sets.add(name)
    return chains, sets


def readded(ops: list[Op]) -> set[str]:
    """The chains the transaction declares again (``add chain``): a base chain among them whose
    hook or priority someone changed would make the declaration fail (EOPNOTSUPP), where the
    repair deletes it and adds it back."""
    from kproxy.nftables.transaction import ADD_FLUSH

    return {name for verb, kind, name in ops if kind == "chain" and verb in ("add", ADD_FLUSH)}


def remade(ops: list[Op]) -> set[str]:
    """The chains the transaction deletes and then adds again (listed last afterwards)."""
    deleted: set[str] = set()
    out: set[str] = set()
    for verb, kind, name in ops:
        if kind != "chain":
            continue
        if verb == "delete":
            deleted.add(name)
        elif name in deleted:
            out.add(name)
    return out


def skeleton(have: TableState, family: str, table: str, chains: set[str], sets: set[str],
             fresh: set[str] | frozenset[str] = frozenset()) -> str:
    """The kernel's table as ``nft -f`` input, without the rules of ``chains``, the elements of
    ``sets`` and of dynamic sets: what the transaction's result depends on, at a fraction of the
    parsing. A base chain the transaction declares again and flushes (``fresh``) is left out: the
    transaction makes it whole, whatever hook or priority the kernel's has now."""
    out = [f"table {family} {table} {{", *(f"\t{line}" for line in have.head)]
    for (kind, name), inner in have.blocks.items():
        if kind == "chain" and name in chains and name in fresh and any(
                line.startswith("type ") and " hook " in line for line in have.chains[name].head):
            continue
        if kind == "chain":
            keep = list(have.chains[name].head) if name in chains else inner
        else:
            s = have.sets[name]
            keep = list(s.head) if name in sets or s.elements is None else inner
        out.append(f"\t{kind} {name} {{")
        out += [f"\t\t{line}" for line in keep]
        out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


def twin(listing: str, tx: str | Tx, ops: list[Op], family: str,
         table: str) -> tuple[TableState, TableState] | None:
    """(the kernel's table as listed, the same after the transaction, whose ``operations`` are
    ``ops``), or None when the listing does not load or the transaction fails on it."""
    from kproxy.nftables.cli import run_nft
    from kproxy.nftables.listing import table_text
    from kproxy.nftables.model import Ruleset
    from kproxy.nftables.transaction import TxError, apply

    have = table_state(listing, family, table)
    if have is None:
        return None
    rc, _, _, rs = run_nft(["-f", "-"], Ruleset(), skeleton(have, family, table, *rewritten(ops), readded(ops)))
    if rc != 0 or len(rs.tables) != 1:
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
    want = None if after is None else table_state(table_text(after, PLAIN), family, table)
    if want is None:
        return None
    return have, want


def plan(listing: str, tx: str | Tx, family: str, table: str) -> str | None:
    """The repair transaction's text ("" when the kernel holds what the sync wants already), or None
    when the full transaction must go as it is."""
    ops = operations(tx, family, table)
    states = twin(listing, tx, ops, family, table)
    if states is None:
        return None
    lines = diff(family, table, *states, remade(ops))
    if lines is None:
        return None
    return "".join(line + "\n" for line in lines)
