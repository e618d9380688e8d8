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

    handles = [[t.family, t.name, t.handle, t.next_handle, t.anon_seq,
                {c.name: [c.handle, [r.handle for r in c.rules]] for c in t.chains.values()},
                {s.name: s.handle for s in t.sets.values() if not s.anonymous},
                [[k, n, o.handle] for (k, n), o in t.objs.items()],
                {f.name: f.handle for f in t.flowtables.values()}] for t in rs.tables]
    return {"text": ruleset_script(rs), "next_table_handle": rs.next_table_handle, "handles": handles,
            "generation": rs.generation}


def ruleset_script(rs: Ruleset) -> str:
    """The ruleset as ``nft -f`` input that rebuilds it, per table: the table, every chain declared in
    order (``add chain``, with its type, hook, policy and comment in braces), the table's block without
    its chains (attributes, objects, sets and maps, whose verdicts name chains, flowtables), then the
    rules as ``add rule`` lines: every name a rule uses exists before it."""
    from kproxy.nftables.expr import Opts
    from kproxy.nftables.listing import chain_text, table_text

    o = Opts()
    out = []
    for t in rs.tables:
        spec = f"{t.family} {t.name} "
        out.append(f"add table {spec.rstrip()}\n")
        for c in t.chains.values():
            if c.base or c.comment is not None:
                inner = chain_text(t, c, o, indent="", rules=False).splitlines()[1:-1]
                body = " ".join(line.strip() if line.endswith(";") else line.strip() + ";" for line in inner)
                out.append(f"add chain {spec}{c.name} {{ {body} }}\n")
            else:
                out.append(f"add chain {spec}{c.name}\n")
        # its attributes, objects, sets (verdict maps name the chains) and flowtables
        out.append(table_text(t, o, chains=False))
        for c in t.chains.values():
            if c.rules:
                start = f"add rule {spec}{c.name} "
                out.append("".join(f"{start}{r.text(o)}\n" for r in c.rules))
    return "".join(out)


def ruleset_from_json(data: dict[str, Any]) -> Ruleset:
    from kproxy.nftables.parser import NftError, Parser
    from kproxy.node import NodeError

    rs = Ruleset()
    try:
        # a committed ruleset passed the kernel's jump validation when it was made: not walked again
        Parser(data.get("text", ""), rs, validate_jumps=False, listed=True).script()
    except NftError as exc:
        raise NodeError(f"nftables ruleset in the node file: {exc.msg}") from None
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
