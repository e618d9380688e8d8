"""iptables-nft's tables as ``nft list`` (1.0.6) prints them, quirks included.

iptables-nft 1.8.9 writes part of each rule as native nf_tables expressions (interfaces, ``-p``,
addresses, fragments, the tcp and udp ports and flags, mark, limit, the counter, standard verdicts,
jumps, TRACE) and keeps the rest as xt matches and targets. nft prints the native part its own way
(``tcp dport <= 100``, ``meta mark & 0x000000ff == 0x00000001``, ``limit rate 5/second``) and each
xt part through libxtables' xlate function, which is the translator's text
(``kproxy.iptables.translate``): an extension without one prints as ``xt match NAME``, and the comment
match prints nothing (its text goes to a buffer nft never reads) yet keeps its place, hence two spaces.
Statements are joined by one space. nft drops the ``meta l4proto tcp`` that ``-p tcp`` wrote when a
native tcp/udp port or flag test follows it with no statement other than a plain comparison in
between (any other statement, an xt one or a limit, resets nft's dependency tracking). A table that
holds an xt part makes nft warn on stderr when it prints the table.

What the renderer cannot place prints as a ``# kproxy: ...`` line in the chain with a note on
stderr, never as a plausible but wrong rule.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from kproxy.iptables.ext.limit import LimitMatch
from kproxy.iptables.ext.log import TraceTarget
from kproxy.iptables.ext.mark import MarkMatch
from kproxy.iptables.ext.ports import TcpMatch, UdpMatch
from kproxy.iptables.extension import Extension, Xlate
from kproxy.iptables.model import Net, Rule, Table
from kproxy.iptables.translate import BASE_CHAINS, ifname, net_text, nft_family
from kproxy.nftables.expr import Opts
from kproxy.nftables.model import priority_text
from kproxy.nftables.xtlayout import XtLayout, fresh_handles, node_layout

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node

# Statement kinds: a plain comparison ("cmp"), the -p dependency nft may drop ("dep"), a transport
# header comparison that drops it ("l4"), and any other statement, which resets the tracking ("stmt").
CMP, DEP, L4, STMT = "cmp", "dep", "l4", "stmt"
TCP_FLAGS = ("fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr")
ALL_FLAGS = 0x3F
# Extensions the kernel knows under another name (the revision iptables loads is another module's).
KERNEL_NAMES = {"state": "conntrack", "NOTRACK": "CT", "icmpv6": "icmp6"}
WARNING = "# Warning: table {fam} {name} is managed by iptables-nft, do not touch!\n"


@lru_cache(maxsize=1)
def protocol_names() -> dict[int, str]:
    """/etc/protocols, which nft reads (getprotobynumber) to name ``meta l4proto``."""
    names: dict[int, str] = {}
    try:
        with open(os.environ.get("KPROXY_PROTOCOLS", "/etc/protocols")) as fh:
            for line in fh:
                words = line.split("#", 1)[0].split()
                if len(words) >= 2 and words[1].isdigit():
                    names.setdefault(int(words[1]), words[0])
    except OSError:
        names = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp", 136: "udplite"}
    return names


@dataclass
class Part:
    kind: str
    text: str
    json: Any = None        # the statement's JSON where it is not the parsed text's (xt, counter, verdicts)


@dataclass
class Rendered:
    """One rule's statements; ``xt`` when any part stayed an xt extension."""

    parts: list[Part] = field(default_factory=list)
    xt: bool = False
    missing: str | None = None      # what has no rendering yet

    def add(self, kind: str, text: str, as_json: Any = None) -> None:
        self.parts.append(Part(kind, text, as_json))

    def xt_part(self, ext: Extension, xl: Xlate, what: str) -> None:
        text = ext.translate(xl)
        self.xt = True
        name = KERNEL_NAMES.get(ext.name, ext.name)
        self.add(STMT, f"xt {what} {name}" if text is None else text.rstrip(" "), {"xt": {"type": what, "name": name}})

    def kept(self) -> list[Part]:
        """The statements nft prints: the -p dependency dropped where nft drops it."""
        out: list[Part | None] = []
        dep: int | None = None
        for p in self.parts:
            if p.kind == L4 and dep is not None:
                out[dep] = None
                dep = None
            elif p.kind == DEP:
                dep = len(out)
            elif p.kind == STMT:
                dep = None
            out.append(p)
        return [p for p in out if p is not None]

    def text(self) -> str:
        return " ".join(p.text for p in self.kept())

    def json(self, family: int) -> list[Any]:
        return [p.json if p.json is not None else native_json(p.text, family) for p in self.kept()]


@lru_cache(maxsize=4096)
def _native_json(text: str, family: int) -> str:
    from kproxy.nftables.model import Ruleset
    from kproxy.nftables.parser import Parser

    fam = nft_family(family)
    rs = Ruleset()
    Parser(f"add table {fam} t; add chain {fam} t c; add rule {fam} t c {text}", rs).script()
    table = rs.find(fam, "t")
    assert table is not None
    stmts = table.chains["c"].rules[0].stmts
    return json.dumps(stmts[0].json(Opts()) if len(stmts) == 1 else [s.json(Opts()) for s in stmts])


def native_json(text: str, family: int) -> Any:
    """A native statement's JSON: its text parsed as an nft rule and printed by the nft front end."""
    return json.loads(_native_json(text, family))


def port_text(proto: str, word: str, rng: tuple[int, int], invert: bool) -> str:
    lo, hi = rng
    if lo == hi:
        value = f"{'!= ' if invert else ''}{lo}"
    elif lo == 0:
        value = f"{'> ' if invert else '<= '}{hi}"
    else:
        value = f"{'!= ' if invert else ''}{lo}-{hi}"
    return f"{proto} {word} {value}"


def flag_names(bits: int, numeric: bool = False) -> str:
    """The flags by name, or each as a hex value (``-n``)."""
    return ",".join(f"0x{1 << i:x}" if numeric else n for i, n in enumerate(TCP_FLAGS) if bits & (1 << i))


def flags_text(mask: int, cmp: int, invert: bool, numeric: bool = False) -> str:
    """``tcp flags & mask == cmp`` as nft 1.0.6 prints it back."""
    m, c = flag_names(mask, numeric), flag_names(cmp, numeric)
    if cmp == 0:
        return f"tcp flags {'' if invert else '! '}{m}"
    if cmp == mask and bin(mask).count("1") == 1:
        return f"tcp flags & {m} {'!=' if invert else '=='} {c}"
    return f"tcp flags {'!= ' if invert else ''}{c} / {m}"


def flags_json(mask: int, cmp: int, invert: bool) -> dict[str, Any]:
    """The flags test in nft's JSON: ``!``/``in`` for the zero forms, else the masked comparison."""
    def names(bits: int) -> str | list[str]:
        words = flag_names(bits).split(",")
        return words[0] if len(words) == 1 else words

    flags = {"payload": {"protocol": "tcp", "field": "flags"}}
    if cmp == 0:
        return {"match": {"op": "in" if invert else "!", "left": flags, "right": names(mask)}}
    return {"match": {"op": "!=" if invert else "==", "left": {"&": [flags, names(mask)]}, "right": names(cmp)}}


def native_ports(r: Rendered, m: TcpMatch | UdpMatch, numeric: bool) -> None:
    """The tcp/udp match iptables-nft wrote natively: flags first, then source and destination port."""
    if m.vanished:
        return
    if isinstance(m, TcpMatch) and m.flags is not None:
        mask, cmp = m.flags
        r.add(L4, flags_text(mask, cmp, m.finv, numeric), flags_json(mask, cmp, m.finv))
    for word, rng, inv in (("sport", m.sport, m.sinv), ("dport", m.dport, m.dinv)):
        if rng is not None:
            r.add(L4, port_text(m.name, word, rng, inv))


def native_mark(m: MarkMatch) -> str:
    op = "!= " if m.invert else ""
    if m.mask == 0xFFFFFFFF:
        return f"meta mark {op}0x{m.value:08x}"
    return f"meta mark & 0x{m.mask:08x} {'!=' if m.invert else '=='} 0x{m.value:08x}"


def native_limit(m: LimitMatch, xl: Xlate) -> str:
    """nft prints the burst only when it is not the default 5."""
    rate = m.translate(xl).split(" burst ", 1)[0]
    return rate if m.burst == 5 else f"{rate} burst {m.burst} packets"


def addr_text(key: str, net: Net | None, invert: bool) -> str:
    return "" if net is None else f"{key} {'!= ' if invert else ''}{net_text(net)}"


def header(r: Rendered, rule: Rule, family: int, numeric: bool) -> None:
    """Interfaces, ``meta l4proto``, addresses, fragment: the order iptables-nft writes them in."""
    fam = nft_family(family)
    for text in (ifname("iifname", rule.iif, rule.iif_inv), ifname("oifname", rule.oif, rule.oif_inv)):
        if text:
            r.add(CMP, text)
    if rule.proto:
        name = str(rule.proto) if numeric else protocol_names().get(rule.proto, str(rule.proto))
        r.add(CMP if rule.proto_inv else DEP, f"meta l4proto {'!= ' if rule.proto_inv else ''}{name}")
    for text in (addr_text(f"{fam} saddr", rule.src, rule.src_inv), addr_text(f"{fam} daddr", rule.dst, rule.dst_inv)):
        if text:
            r.add(CMP, text)
    if rule.fragment is not None:
        r.add(CMP, f"ip frag-off & 8191 {'!=' if rule.fragment else '=='} 0")


def render_rule(rule: Rule, family: int, o: Opts) -> Rendered:
    r = Rendered()
    xl = Xlate(family, rule)
    numeric = o.numeric >= 1
    header(r, rule, family, numeric)
    for m in rule.matches:
        if isinstance(m, (TcpMatch, UdpMatch)) and not m._compat():
            native_ports(r, m, numeric)
        elif isinstance(m, MarkMatch) and m.name == "mark":    # connmark derives from it, stays xt
            r.add(CMP, native_mark(m))
        elif isinstance(m, LimitMatch):
            r.add(STMT, native_limit(m, xl))
        else:
            r.xt_part(m, xl, "match")
    packets, nbytes = (0, 0) if o.stateless else (rule.packets, rule.bytes)
    r.add(STMT, "counter" if o.stateless else f"counter packets {packets} bytes {nbytes}",
          {"counter": {"packets": packets, "bytes": nbytes}})
    verdicts = {"ACCEPT": "accept", "DROP": "drop", "RETURN": "return"}
    if rule.jump in verdicts:
        r.add(STMT, verdicts[rule.jump], {verdicts[rule.jump]: None})
    elif rule.jump is not None:
        if rule.jump == "QUEUE":
            r.missing = "the QUEUE verdict"
        word = "goto" if rule.goto else "jump"
        r.add(STMT, f"{word} {rule.jump}", {word: {"target": rule.jump}})
    elif isinstance(rule.target, TraceTarget):
        r.add(STMT, "meta nftrace set 1")
    elif rule.target is not None:
        r.xt_part(rule.target, xl, "target")
    return r


@dataclass
class XtView:
    """The node's iptables-nft tables for one nft invocation; collects the warnings nft prints."""

    node: Node
    warnings: list[str] = field(default_factory=list)

    @property
    def layout(self) -> XtLayout:
        return node_layout(self.node)

    def tables(self, family: str | None = None) -> list[tuple[int, str]]:
        """(family, table) in kernel order; none on an iptables-legacy node."""
        lay = self.layout
        if lay.variant == "legacy":
            return []
        return [k for k in lay.tables if family is None or nft_family(k[0]) == family]

    def flush(self, families: list[str | None]) -> None:
        """``flush ruleset``: iptables-nft's tables are nf_tables tables, and go with the rest (of the
        family flushed); an iptables-legacy node keeps its x_tables."""
        for key in [k for k in self.tables() if None in families or nft_family(k[0]) in families]:
            self.node.iptables[key[0]].drop(key[1])
            self.layout.drop(key)

    def find(self, family: str, name: str) -> tuple[int, str] | None:
        return next((k for k in self.tables(family) if k[1] == name), None)

    def chain_names(self, key: tuple[int, str]) -> list[str]:
        return list(self.layout.chains.get(key, {}))

    def table(self, key: tuple[int, str]) -> Table | None:
        return self.node.iptables[key[0]].tables.get(key[1])

    def handles(self, key: tuple[int, str]) -> dict[str, tuple[int, list[int]]]:
        """Each chain's handle and its rules', as the commands that made the table took them from the
        kernel (``XtLayout.number``); for a table whose history was not kept, as a fresh load of it
        hands them out (the chains in order, then their rules chain by chain)."""
        t = self.table(key)
        if t is None:
            return {}
        kept = self.layout.rule_handles(key, t)
        if kept is not None:
            return kept
        names = [n for n in self.chain_names(key) if n in t.chains]
        h = fresh_handles(t, names)
        return {n: (h.chains[n], h.rules[n]) for n in names}

    def chain_block(self, key: tuple[int, str], name: str, o: Opts, rules: bool = True) -> tuple[str, bool]:
        """A chain as ``list`` prints it, and whether a rule in it is an xt one."""
        t = self.table(key)
        c = t.chains.get(name) if t is not None else None
        if t is None or c is None:
            return "", False
        fam = nft_family(key[0])
        chandle, rhandles = self.handles(key).get(name, (0, [])) if o.handles else (0, [])
        lines = [f"\tchain {name} {{" + (f" # handle {chandle}" if o.handles else "")]
        base = BASE_CHAINS.get(t.name, {}).get(name) if c.builtin else None
        if base is not None:
            kind, hook, prio = base
            prio = 150 if t.name == "security" else prio
            ptext = priority_text(fam, hook, prio, o.numeric_prio or o.numeric >= 1)
            lines.append(f"\t\ttype {kind} hook {hook} priority {ptext}; policy {str(c.policy).lower()};")
        xt = False
        for i, rule in enumerate(c.rules if rules else []):
            r = render_rule(rule, key[0], o)
            xt = xt or r.xt
            if r.missing is not None:      # said plainly, never a plausible but unchecked rule
                lines.append(f"\t\t# kproxy: no nft rendering yet for {r.missing}")
                self.warnings.append(f"kproxy: {fam} {t.name} {name}: no nft rendering yet for {r.missing}\n")
                continue
            lines.append("\t\t" + r.text() + (f" # handle {rhandles[i]}" if o.handles else ""))
        lines.append("\t}")
        return "\n".join(lines), xt

    def table_text(self, key: tuple[int, str], o: Opts, only_chain: str | None = None) -> str:
        fam = nft_family(key[0])
        names = [only_chain] if only_chain is not None else self.chain_names(key)
        blocks = []
        xt = False
        for name in names:
            text, has_xt = self.chain_block(key, name, o)
            blocks.append(text)
            xt = xt or has_xt
        if xt:
            self.warnings.append(WARNING.format(fam=fam, name=key[1]))
        handle = self.layout.handles.get(key, 0)
        head = f"table {fam} {key[1]} {{" + (f" # handle {handle}" if o.handles else "")
        return "\n".join([head, *(["\n\n".join(blocks)] if blocks else []), "}"]) + "\n"

    def chains_text(self, o: Opts, family: str | None = None) -> str:
        """``list chains``: each table's chains, headers only, no blank line between them."""
        out = ""
        for key in self.tables(family):
            blocks = [self.chain_block(key, name, o, rules=False)[0] for name in self.chain_names(key)]
            out += f"table {nft_family(key[0])} {key[1]} {{\n" + "".join(b + "\n" for b in blocks) + "}\n"
        return out

    def ruleset_text(self, o: Opts, family: str | None = None) -> str:
        return "".join(self.table_text(k, o) for k in self.tables(family))

    def items_json(self, key: tuple[int, str], o: Opts, only_chain: str | None = None) -> list[dict[str, Any]]:
        """The table's objects as ``nft -j list`` gives them: the table, its chains, then their rules."""
        fam = nft_family(key[0])
        t = self.table(key)
        if t is None:
            return []
        handles = self.handles(key)
        names = [n for n in ([only_chain] if only_chain else self.chain_names(key)) if n in t.chains]
        items: list[dict[str, Any]] = [{"table": {"family": fam, "name": key[1],
                                                  "handle": self.layout.handles.get(key, 0)}}]
        for name in names:
            c = t.chains[name]
            d: dict[str, Any] = {"family": fam, "table": key[1], "name": name, "handle": handles[name][0]}
            base = BASE_CHAINS.get(t.name, {}).get(name) if c.builtin else None
            if base is not None:
                kind, hook, prio = base
                d.update(type=kind, hook=hook, prio=150 if t.name == "security" else prio,
                         policy=str(c.policy).lower())
            items.append({"chain": d})
        for name in names:
            rhandles = handles[name][1]
            for i, rule in enumerate(t.chains[name].rules):
                items.append({"rule": {"family": fam, "table": key[1], "chain": name, "handle": rhandles[i],
                                       "expr": render_rule(rule, key[0], Opts(stateless=o.stateless)).json(key[0])}})
        return items
