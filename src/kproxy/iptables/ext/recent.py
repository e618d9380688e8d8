"""The recent match (xt_recent): named lists of recently seen addresses, shared per node.

Lists live in ``node.subsystems["recent"]`` so that every rule naming a list sees the same entries,
as kube-proxy's ClientIP session affinity relies on (``--set`` in one chain, ``--rcheck`` in another).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.packet import Packet, format_addr

MAX_ENTRIES = 200      # ip_list_tot
MAX_HITS = 20          # ip_pkt_list_tot


class RecentTables:
    """All recent lists of a node: name -> {address: [timestamps]}."""

    def __init__(self) -> None:
        self.lists: dict[str, dict[tuple[int, int], list[float]]] = {}

    def table(self, name: str) -> dict[tuple[int, int], list[float]]:
        return self.lists.setdefault(name, {})

    def to_json(self) -> dict[str, Any]:
        return {name: [[fam, addr, stamps] for (fam, addr), stamps in t.items()] for name, t in self.lists.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecentTables:
        rt = cls()
        for name, rows in data.items():
            rt.lists[name] = {(fam, addr): list(stamps) for fam, addr, stamps in rows}
        return rt


def tables_of(node: Any) -> RecentTables:
    rt = node.subsystems.get("recent")
    if rt is None:
        rt = node.subsystems["recent"] = RecentTables()
    return rt


MODES = ("set", "rcheck", "update", "remove")


@register_match
class RecentMatch(Match):
    name = "recent"
    OPTIONS = {"set": 0, "rcheck": 0, "update": 0, "remove": 0, "seconds": 1, "reap": 0, "hitcount": 1,
               "rttl": 0, "name": 1, "mask": 1, "rsource": 0, "rdest": 0}

    def __init__(self) -> None:
        self.mode = ""
        self.invert = False
        self.seconds = 0
        self.hitcount = 0
        self.reap = self.rttl = False
        self.list_name = "DEFAULT"
        self.mask = 0xFFFFFFFF
        self.side = "source"
        self.family = 4

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> RecentMatch:
        m = cls()
        m.family = family
        if family == 6:
            m.mask = (1 << 128) - 1
        for o in opts:
            if o.name in MODES:
                if m.mode:
                    raise ExtensionError("recent: only one of `--set', `--rcheck' `--update' or `--remove' may be set")
                m.mode, m.invert = o.name, o.invert
            elif o.name == "seconds":
                m.seconds = int(o.values[0])
            elif o.name == "hitcount":
                m.hitcount = int(o.values[0])
            elif o.name == "reap":
                m.reap = True
            elif o.name == "rttl":
                m.rttl = True
            elif o.name == "name":
                m.list_name = o.values[0]
            elif o.name == "mask":
                try:
                    m.mask = int(ipaddress.ip_address(o.values[0]))
                except ValueError:
                    raise ExtensionError(f"recent: bad mask \"{o.values[0]}\"") from None
            else:
                m.side = "source" if o.name == "rsource" else "dest"
        if not m.mode:
            raise ExtensionError("recent: you must specify one of `--set', `--rcheck' `--update' or `--remove'")
        if m.reap and not m.seconds:
            raise ExtensionError("recent: --reap is only valid with --seconds")
        if m.mode in ("set", "remove") and (m.seconds or m.hitcount):
            raise ExtensionError("recent: --seconds and --hitcount are only valid with --rcheck or --update")
        return m

    def save(self) -> str:
        parts = ["-m recent", f"{'! ' if self.invert else ''}--{self.mode}"]
        if self.seconds:
            parts.append(f"--seconds {self.seconds}")
        if self.reap:
            parts.append("--reap")
        if self.hitcount:
            parts.append(f"--hitcount {self.hitcount}")
        if self.rttl:
            parts.append("--rttl")
        parts.append(f"--name {self.list_name}")
        parts.append(f"--mask {format_addr(self.mask, self.family)}")
        parts.append("--rsource" if self.side == "source" else "--rdest")
        return " ".join(parts)

    def listing(self, numeric: bool = True) -> str:
        words = {"set": "SET", "rcheck": "CHECK", "update": "UPDATE", "remove": "REMOVE"}
        parts = [f"{'! ' if self.invert else ''}recent: {words[self.mode]}"]
        if self.seconds:
            parts.append(f"seconds: {self.seconds}")
        if self.reap:
            parts.append("reap")
        if self.hitcount:
            parts.append(f"hit_count: {self.hitcount}")
        if self.rttl:
            parts.append("TTL-Match")
        parts.append(f"name: {self.list_name}")
        parts.append(f"side: {self.side}")
        parts.append(f"mask: {format_addr(self.mask, self.family)}")
        return " ".join(parts)

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        now = ctx.now
        table = tables_of(ctx.node).table(self.list_name)
        addr = (pkt.src if self.side == "source" else pkt.dst) & self.mask
        key = (pkt.family, addr)
        stamps = table.get(key)
        if self.mode == "set":
            if stamps is None:
                if len(table) >= MAX_ENTRIES:
                    table.pop(next(iter(table)))
                stamps = table[key] = []
            stamps.append(now)
            del stamps[:-MAX_HITS]
            return not self.invert
        if stamps is None:
            return self.invert
        if self.mode == "remove":
            del table[key]
            return not self.invert
        hit = True
        if self.seconds or self.hitcount:
            recent = [t for t in stamps if not self.seconds or now - t <= self.seconds]
            hit = len(recent) >= max(self.hitcount, 1)
            if self.reap:
                stamps[:] = [t for t in stamps if now - t <= self.seconds]
        if self.mode == "update":
            stamps.append(now)
            del stamps[:-MAX_HITS]
        if not stamps:
            del table[key]
        return hit != self.invert
