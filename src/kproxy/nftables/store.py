"""Persistence of a node's nftables ruleset: two functions, so the node store can keep it however it likes.

The saved form is ``nft -f`` input plus the handle counters: per table, one ``add chain`` line per
chain, the table as ``nft list`` prints it but without its chains, one ``add rule`` line per rule (files written before
hold the listing itself, which loads the same way). Loading re-parses the text, then puts the
kernel-assigned handles back. The flat rule lines are what the parser's fast path takes, so a big
ruleset reloads several times faster than its listing's blocks would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kproxy.nftables.model import Ruleset

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node


def ruleset_to_json(rs: Ruleset) -> dict[str, Any]:
    """A JSON-ready snapshot of the ruleset (the pickled form is avoided: it would tie files to code)."""
    saved = reusable(rs)
    if saved is not None and saved.unchanged(rs):
        return saved.data       # (the node file then knows its row is unchanged without printing it)
    olds = [saved.table(t) if saved is not None else None for t in rs.tables]
    handles = [[t.family, t.name, t.handle, t.next_handle, t.anon_seq, chain_handles(t, old),
                {s.name: s.handle for s in t.sets.values() if not s.anonymous},
                [[k, n, o.handle] for (k, n), o in t.objs.items()],
                {f.name: f.handle for f in t.flowtables.values()}] for t, old in zip(rs.tables, olds)]
    text, pieces = script_pieces(rs, olds)
    return {"text": text, "pieces": pieces, "next_table_handle": rs.next_table_handle, "handles": handles,
            "generation": rs.generation}


def chain_handles(t: Any, old: SavedTable | None) -> dict[str, Any]:
    """Each chain's handle and its rules' handles; those of a chain not changed since the table was
    loaded are the loaded ones."""
    loaded = old.handles if old is not None else None
    if not loaded:
        return {c.name: [c.handle, [r.handle for r in c.rules]] for c in t.chains.values()}
    out = {}
    for c in t.chains.values():
        kept = loaded.get(c.name) if c.name not in old.changed else None     # type: ignore[union-attr]
        if kept is None or kept[0] != c.handle or len(kept[1]) != len(c.rules):
            kept = [c.handle, [r.handle for r in c.rules]]
        out[c.name] = kept
    return out


def ruleset_script(rs: Ruleset) -> str:
    """The ruleset as ``nft -f`` input that rebuilds it, per table: the table, every chain declared in
    order (``add chain``, with its type, hook, policy and comment in braces), the table's block without
    its chains (attributes, objects, sets and maps, whose verdicts name chains, flowtables), then the
    rules as ``add rule`` lines: every name a rule uses exists before it."""
    return script_pieces(rs, None)[0]


def script_pieces(rs: Ruleset, olds: list[SavedTable | None] | None) -> tuple[str, list[Any]]:
    """``ruleset_script``'s text, and the lengths of its pieces: per table ``[family, name, head, block,
    [rules, ...]]`` (the declarations, the block, the rule lines of each chain that has rules, in order).
    ``olds``: per table, the pieces of the text it was loaded from that are still what it would print
    (``Saved.table``): those are not printed again, so a command that changed one set of a big table
    prints that table's block, not its 200,000 rules."""
    from kproxy.nftables.expr import Opts
    from kproxy.nftables.listing import table_text

    o = Opts()
    out: list[str] = []
    pieces: list[Any] = []
    for i, t in enumerate(rs.tables):
        old = olds[i] if olds is not None else None
        spec = f"{t.family} {t.name} "
        head_text = old.head if old is not None and old.head is not None else declarations(t, spec, o)
        # its attributes, objects, sets (verdict maps name the chains) and flowtables
        block = old.block if old is not None and old.block is not None else table_text(t, o, chains=False)
        out += (head_text, block)
        lengths = []
        for c in t.chains.values():
            if c.rules:
                text = old.rules(c.name) if old is not None else None
                if text is None:
                    start = f"add rule {spec}{c.name} "
                    text = "".join(f"{start}{r.text(o)}\n" for r in c.rules)
                out.append(text)
                lengths.append(len(text))
        pieces.append([t.family, t.name, len(head_text), len(block), lengths])
    return "".join(out), pieces


def declarations(t: Any, spec: str, o: Any) -> str:
    """The table's ``add table`` line and its ``add chain`` lines."""
    from kproxy.nftables.listing import chain_text

    head = [f"add table {spec.rstrip()}\n"]
    for c in t.chains.values():
        if c.base or c.comment is not None:
            inner = chain_text(t, c, o, indent="", rules=False).splitlines()[1:-1]
            body = " ".join(line.strip() if line.endswith(";") else line.strip() + ";" for line in inner)
            head.append(f"add chain {spec}{c.name} {{ {body} }}\n")
        else:
            head.append(f"add chain {spec}{c.name}\n")
    return "".join(head)


class SavedTable:
    """One table's pieces of the loaded text that are still what the table would print: its block
    (None once changed) and the rule lines of each chain not changed since."""

    def __init__(self, text: str, head: tuple[int, int] | None, block: tuple[int, int] | None,
                 rules: dict[str, tuple[int, int]], changed: set[str], handles: dict[str, Any] | None) -> None:
        self.text = text
        self.head = text[head[0]:head[1]] if head is not None else None
        self.block = text[block[0]:block[1]] if block is not None else None
        self.spans = rules
        self.changed = changed
        self.handles = handles      # the loaded chain and rule handles by chain name

    def rules(self, chain: str) -> str | None:
        span = self.spans.get(chain)
        if span is None or chain in self.changed:
            return None
        return self.text[span[0]:span[1]]


class Saved:
    """The text a ruleset was loaded from, cut into its pieces, and what the commands run since changed
    (``note_changes``). Only a command that knows everything it changed says so: until one does (and
    after anything else, which says nothing), the ruleset is printed anew when saved."""

    def __init__(self, data: dict[str, Any], rs: Ruleset) -> None:
        """``rs``: the ruleset just loaded from ``data`` (``ruleset_to_json``'s form); ValueError if the
        pieces do not fit it."""
        self.data = data
        text, pieces = data.get("text", ""), data["pieces"]
        self.text = text
        Span = tuple[int, int]
        self.spans: dict[int, tuple[tuple[str, str], Span, Span, dict[str, Span], dict[str, Any] | None]] = {}
        if len(pieces) != len(rs.tables):
            raise ValueError("not a piece per table")
        handles = {(h[0], h[1]): h[5] for h in data.get("handles", []) if isinstance(h[5], dict)}
        at = 0
        for (family, name, head, block, lengths), t in zip(pieces, rs.tables):
            with_rules = [c.name for c in t.chains.values() if c.rules]
            if (family, name) != (t.family, t.name) or len(with_rules) != len(lengths):
                raise ValueError(f"the pieces of table {family} {name} do not fit it")
            head_span = (at, at + head)
            at += head
            block_span = (at, at + block)
            at += block
            spans = {}
            for chain, n in zip(with_rules, lengths):
                spans[chain] = (at, at + n)
                at += n
            self.spans[id(t)] = ((t.family, t.name), head_span, block_span, spans, handles.get((family, name)))
        if at != len(text):
            raise ValueError("the pieces do not add up to the text")
        self.changes: list[Any] = []
        self.trusted = False

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        return None         # a copy's tables are other objects: it is printed anew

    def unchanged(self, rs: Ruleset) -> bool:
        """Whether the ruleset is still what was loaded, handle counters and all (its loaded form can
        be saved again as it is)."""
        if any(ch.touched and any(any(names.values()) for names in ch.touched.values()) or ch.new_tables
               for ch in self.changes):
            return False
        data = self.data
        if (rs.generation, rs.next_table_handle) != (data.get("generation", 0), data.get("next_table_handle")):
            return False
        handles = data.get("handles", [])
        return len(handles) == len(rs.tables) and all(
            id(t) in self.spans and h[:5] == [t.family, t.name, t.handle, t.next_handle, t.anon_seq]
            for h, t in zip(handles, rs.tables))

    def table(self, t: Any) -> SavedTable | None:
        loaded = self.spans.get(id(t))
        if loaded is None or loaded[0] != (t.family, t.name):
            return None
        chains: set[str] = set()
        block_changed = False
        for ch in self.changes:
            if id(t) in ch.new_tables:
                return None
            touched = ch.touched.get(id(t))
            if touched is None:
                continue
            if touched["attrs"] - {"next_handle", "anon_seq"}:
                return None
            chains |= touched["chains"]
            block_changed = block_changed or bool(touched["sets"] or touched["objs"] or touched["flowtables"])
        _, head_span, block_span, rules, handles = loaded
        return SavedTable(self.text, None if chains else head_span, None if block_changed else block_span, rules,
                          chains, handles)


SAVED = "_saved"    # on a loaded ruleset: its ``Saved`` text


def note_changes(rs: Ruleset, changes: Any = None) -> None:
    """Say that ``changes`` (a ``kproxy.nftables.journal.Changes``; None: nothing) is all that changed
    the ruleset's text since it was loaded (or since the last note): its saving may reuse the loaded
    text elsewhere."""
    from kproxy.nftables.journal import Changes

    changes = Changes() if changes is None else changes
    saved = rs.__dict__.get(SAVED)
    if saved is not None:
        saved.changes.append(changes)
        saved.trusted = True


def reusable(rs: Ruleset) -> Saved | None:
    saved = rs.__dict__.get(SAVED)
    return saved if saved is not None and saved.trusted else None


def ruleset_from_json(data: dict[str, Any]) -> Ruleset:
    from kproxy.nftables.parser import NftError, Parser
    from kproxy.node import NodeError

    rs = Ruleset()
    try:
        # a committed ruleset passed the kernel's jump validation when it was made: not walked again
        Parser(data.get("text", ""), rs, validate_jumps=False, listed=True).script()
    except NftError as exc:
        raise NodeError(f"nftables ruleset in the node file: {exc.msg}") from None
    pieces = data.get("pieces")
    if pieces is not None:
        try:
            rs.__dict__[SAVED] = Saved(data, rs)
        except (ValueError, TypeError):
            pass            # not reused: the ruleset is printed anew when saved
    rs.next_table_handle = data.get("next_table_handle", rs.next_table_handle)
    rs.generation = data.get("generation", 0)
    for fam, name, th, nxt, anon, chains, sets, objs, *flowtables in data.get("handles", []):
        t = rs.find(fam, name)
        if t is None:
            continue
        t.handle, t.next_handle, t.anon_seq = th, nxt, anon
        for cname, (ch, rules) in chains.items():
            c = t.chains[cname]
            c.handle = ch
            for r, h in zip(c.rules, rules):
                r.handle = h
        for sname, sh in sets.items():
            t.sets[sname].handle = sh
        for kind, oname, oh in objs:
            t.objs[(kind, oname)].handle = oh
        for fname, fh in (flowtables[0] if flowtables else {}).items():
            t.flowtables[fname].handle = fh
    return rs


def node_ruleset(node: Node) -> Ruleset:
    """The node's ruleset, created empty on first use."""
    rs = getattr(node, "nftables", None)
    if rs is None:
        rs = Ruleset()
        node.nftables = rs
    return rs
