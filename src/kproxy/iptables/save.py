"""``iptables-save`` output: the canonical text of rules, chains and tables, as iptables-nft 1.8.9 prints it.

Tables print in the tool's fixed order (mangle, security, raw, filter, nat), built-in chains
first and then user chains sorted by name, and rules grouped by chain in that order. A rule prints
``-s -d -i -o -p -f``, its matches in the order they were given, then ``-j``/``-g``.
"""

from __future__ import annotations

import time
from typing import Any

from kproxy.iptables.model import Chain, Net, Rule, Table
from kproxy.nftables.types import protocols
from kproxy.packet import PROTO_NAMES, format_addr

SAVE_TABLE_ORDER = ("mangle", "security", "raw", "filter", "nat")
VERSION = "v1.8.9 (nf_tables)"


def format_net(net: Net) -> str:
    return f"{format_addr(net.addr, net.family)}/{net.prefixlen}"


def proto_name(proto: int) -> str:
    """xtables' proto_to_name: /etc/protocols' name (135 is "mobility-header"), else the number."""
    if proto == 0:
        return "all"
    return protocols()[1].get(proto) or PROTO_NAMES.get(proto, str(proto))


# What save prints for the objects a dump repeats: a shared (stateless) extension object's fragment,
# an address, a protocol. A node of 100,000 rules holds a few thousand distinct comments and ports,
# so formatting its chains is mostly lookups. Shared extension objects are never changed once built
# (every rule using one would change with it), so their text is theirs for life; the object is kept
# beside its text, so an id is never taken for a later object's.
_EXT_TEXT: dict[int, tuple[Any, str]] = {}
_NET_TEXT: dict[tuple[Net, bool, str], str] = {}
_PROTO_TEXT: dict[tuple[int, bool], str] = {}
_CACHE_MAX = 100_000


def ext_save(ext: Any) -> str:
    """``ext.save()``, remembered for shared extension objects."""
    if not ext.SHAREABLE or ext.stateful:
        return str(ext.save())
    hit = _EXT_TEXT.get(id(ext))
    if hit is not None and hit[0] is ext:
        return hit[1]
    text = str(ext.save())
    if len(_EXT_TEXT) >= _CACHE_MAX:
        _EXT_TEXT.clear()
    _EXT_TEXT[id(ext)] = (ext, text)
    return text


def _net_part(net: Net, inv: bool, opt: str) -> str:
    key = (net, inv, opt)
    text = _NET_TEXT.get(key)
    if text is None:
        text = f"{'! ' if inv else ''}{opt} {format_addr(net.addr, net.family)}/{net.prefixlen}"
        if len(_NET_TEXT) >= _CACHE_MAX:
            _NET_TEXT.clear()
        _NET_TEXT[key] = text
    return text


def _proto_part(proto: int, inv: bool) -> str:
    text = _PROTO_TEXT.get((proto, inv))
    if text is None:
        text = _PROTO_TEXT[(proto, inv)] = ("! -p " if inv else "-p ") + proto_name(proto)
    return text


def rule_spec(rule: Rule) -> str:
    """The rule without ``-A CHAIN``: what follows the chain name in ``iptables-save``."""
    body, verdict = rule_parts(rule)
    return f"{body} {verdict}" if body and verdict else body or verdict


def rule_parts(rule: Rule) -> tuple[str, str]:
    """The match part and the verdict part (``-j ...``/``-g ...``) of a rule, as save prints them."""
    parts: list[str] = []
    if rule.src is not None:
        parts.append(_net_part(rule.src, rule.src_inv, "-s"))
    if rule.dst is not None:
        parts.append(_net_part(rule.dst, rule.dst_inv, "-d"))
    if rule.iif is not None:
        parts.append(("! -i " if rule.iif_inv else "-i ") + rule.iif)
    if rule.oif is not None:
        parts.append(("! -o " if rule.oif_inv else "-o ") + rule.oif)
    if rule.proto:
        parts.append(_proto_part(rule.proto, rule.proto_inv))
    if rule.fragment is not None:
        parts.append("-f" if rule.fragment else "! -f")
    for m in rule.matches:
        text = ext_save(m)
        if text:
            parts.append(text)
    verdict = ""
    if rule.jump is not None:
        verdict = ("-g " if rule.goto else "-j ") + rule.jump
    elif rule.target is not None:
        verdict = ext_save(rule.target)
    return " ".join(parts), verdict


def format_rule(chain: str, rule: Rule, counters: bool = False) -> str:
    """One ``-A CHAIN ...`` line (with ``[pkts:bytes]`` in front when ``counters``)."""
    body, verdict = rule_parts(rule)
    spec = f"{body} {verdict}" if body and verdict else body or verdict
    text = f"-A {chain} {spec}" if spec else f"-A {chain}"
    return f"[{rule.packets}:{rule.bytes}] {text}" if counters else text


def ordered_chains(table: Table) -> list[Chain]:
    builtin = [c for c in table.chains.values() if c.builtin]
    user = sorted((c for c in table.chains.values() if not c.builtin), key=lambda c: c.name.encode(errors="surrogateescape"))
    return builtin + user


def save_table(table: Table, counters: bool = False) -> list[str]:
    lines = [f"*{table.name}"]
    chains = ordered_chains(table)
    for c in chains:
        lines.append(f":{c.name} {c.policy or '-'} [{c.packets if c.builtin else 0}:{c.bytes if c.builtin else 0}]")
    for c in chains:
        stored = getattr(c, "saved_lines", None)     # a chain still unread from the node file prints its row
        text = stored(counters) if stored is not None else None
        if text is not None:
            lines.extend(text)
            continue
        for r in c.rules:
            lines.append(format_rule(c.name, r, counters))
    lines.append("COMMIT")
    return lines


def save(state: Any, tables: list[str] | None = None, counters: bool = False, header: bool = True,
         now: float | None = None) -> str:
    """The whole ``iptables-save`` output for ``state`` (an IptablesState)."""
    prog = "iptables-save" if state.family == 4 else "ip6tables-save"
    stamp = time.ctime(now) if header else ""
    out: list[str] = []
    for name in SAVE_TABLE_ORDER:
        t = state.tables.get(name)
        if t is None or (tables is not None and name not in tables):
            continue
        if header:
            out.append(f"# Generated by {prog} {VERSION} on {stamp}")
        out.extend(save_table(t, counters))
        if header:
            out.append(f"# Completed on {stamp}")
    return "\n".join(out) + "\n" if out else ""
