"""What the kernel tools print, parsed: ``conntrack -L`` lines and ``iptables-save -c`` counters.

The kernel harness (``kproxy.lab.kernel``) reads the node's state through these, and the differential
runs (``kproxy.lab.differential``) compare the kernel's and the emulator's in the same normal form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


# ---- conntrack -L --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CtTuple:
    """One direction of a connection as ``conntrack -L`` prints it (ICMP: type, code, id; ports 0)."""

    src: str
    dst: str
    sport: int = 0
    dport: int = 0
    type: int | None = None
    code: int | None = None
    id: int | None = None
    packets: int | None = None
    bytes: int | None = None

    def text(self) -> str:
        if self.type is not None:
            return f"{self.src} -> {self.dst} type={self.type} code={self.code} id={self.id}"
        return f"{self.src}:{self.sport} -> {self.dst}:{self.dport}"


@dataclass(frozen=True)
class CtEntry:
    """A conntrack entry: protocol, timeout, TCP state, both tuples and the bracketed status words."""

    proto: str
    protonum: int
    timeout: int
    state: str
    orig: CtTuple
    reply: CtTuple
    flags: frozenset[str] = frozenset()     # UNREPLIED, ASSURED, OFFLOAD, ...
    mark: int = 0
    zone: int = 0
    use: int = 0
    line: str = ""

    @property
    def replied(self) -> bool:
        return "UNREPLIED" not in self.flags

    @property
    def assured(self) -> bool:
        return "ASSURED" in self.flags

    @property
    def dnat(self) -> bool:
        """The reply comes from somewhere else than the original destination."""
        return self.reply.src != self.orig.dst or (self.type_free and self.reply.sport != self.orig.dport)

    @property
    def snat(self) -> bool:
        """The reply goes somewhere else than the original source."""
        return self.reply.dst != self.orig.src or (self.type_free and self.reply.dport != self.orig.sport)

    @property
    def type_free(self) -> bool:
        return self.orig.type is None


_TUPLE_KEYS = {"src", "dst", "sport", "dport", "type", "code", "id", "packets", "bytes"}


def parse_conntrack(text: str) -> list[CtEntry]:
    """``conntrack -L`` (plain or ``-o extended``) output as entries; the summary line is skipped."""
    return [e for e in (_parse_ct_line(line) for line in text.splitlines()) if e is not None]


def _parse_ct_line(line: str) -> CtEntry | None:
    words = line.split()
    if len(words) > 2 and words[0] in ("ipv4", "ipv6") and words[1].isdigit():
        words = words[2:]                                     # -o extended: layer-3 name and number first
    if len(words) < 4 or not words[1].isdigit() or not words[2].isdigit():
        return None
    proto, protonum, timeout = words[0], int(words[1]), int(words[2])
    rest = words[3:]
    state = rest.pop(0) if rest and "=" not in rest[0] and not rest[0].startswith("[") else ""
    tuples: list[dict[str, Any]] = []
    flags: set[str] = set()
    extra: dict[str, str] = {}
    for w in rest:
        if w.startswith("[") and w.endswith("]"):
            flags.add(w[1:-1])
            continue
        key, sep, value = w.partition("=")
        if not sep:
            continue
        if key == "src" and len(tuples) < 2:
            tuples.append({})
        if key in _TUPLE_KEYS and tuples and key not in tuples[-1]:
            tuples[-1][key] = value
        else:
            extra[key] = value
    if len(tuples) != 2:
        return None
    orig, reply = (_ct_tuple(t) for t in tuples)
    return CtEntry(proto, protonum, timeout, state, orig, reply, frozenset(flags), int(extra.get("mark", "0"), 0),
                   int(extra.get("zone", "0")), int(extra.get("use", "0")), line)


def _ct_tuple(d: dict[str, str]) -> CtTuple:
    def num(key: str) -> int | None:
        return int(d[key]) if key in d else None

    return CtTuple(d.get("src", ""), d.get("dst", ""), int(d.get("sport", 0)), int(d.get("dport", 0)),
                   num("type"), num("code"), num("id"), num("packets"), num("bytes"))


def conntrack_lines(text: str) -> list[str]:
    """``conntrack -L`` entries without their timeouts (which tick), sorted: two tables compare equal
    when they hold the same connections in the same states."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[1].isdigit():
            out.append(" ".join(parts[:2] + parts[3:]))
    return sorted(out)


# ---- iptables-save -c ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RuleCounter:
    """One rule of ``iptables-save -c``: its table, chain, 1-based position in the chain and counters."""

    table: str
    chain: str
    index: int
    rule: str            # the rule as saved, without the counters: ``-A CHAIN ...``
    packets: int
    bytes: int


@dataclass
class Counters:
    """Every rule's and every built-in chain policy's packet and byte counters."""

    rules: list[RuleCounter] = field(default_factory=list)
    policies: dict[tuple[str, str], tuple[str, int, int]] = field(default_factory=dict)   # -> policy, pkts, bytes

    def rule(self, table: str, chain: str, index: int) -> RuleCounter:
        for r in self.rules:
            if (r.table, r.chain, r.index) == (table, chain, index):
                return r
        raise KeyError(f"no rule {index} in {table}/{chain}")

    def packets(self, table: str, chain: str, index: int) -> int:
        return self.rule(table, chain, index).packets

    def matching(self, text: str) -> list[RuleCounter]:
        """Rules whose saved text contains ``text``."""
        return [r for r in self.rules if text in r.rule]

    def nonzero(self) -> dict[str, int]:
        return {f"{r.table} {r.rule}": r.packets for r in self.rules if r.packets}


_SAVED_RULE = re.compile(r"^\[(\d+):(\d+)\] (-A (\S+).*)$")
_SAVED_CHAIN = re.compile(r"^:(\S+) (\S+) \[(\d+):(\d+)\]$")


def parse_counters(save_text: str) -> Counters:
    """``iptables-save -c`` output (nft or legacy) as counters per rule and per chain policy."""
    out = Counters()
    table = ""
    position: dict[tuple[str, str], int] = {}
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif m := _SAVED_CHAIN.match(line):
            if m.group(2) != "-":
                out.policies[(table, m.group(1))] = (m.group(2), int(m.group(3)), int(m.group(4)))
        elif m := _SAVED_RULE.match(line):
            key = (table, m.group(4))
            position[key] = position.get(key, 0) + 1
            out.rules.append(RuleCounter(table, m.group(4), position[key], m.group(3), int(m.group(1)),
                                         int(m.group(2))))
    return out


_COUNTED = re.compile(r"^\[(\d+):(\d+)\] (-A .*)$")


def rule_counters(save_text: str) -> dict[str, int]:
    """``-A ...`` line (numbered when repeated) -> packet count, from ``iptables-save -c``."""
    out: dict[str, int] = {}
    for line in save_text.splitlines():
        m = _COUNTED.match(line)
        if m:
            key = m.group(3)
            n = 1
            while key in out:
                n += 1
                key = f"{m.group(3)}  #{n}"
            out[key] = int(m.group(1))
    return out


# ---- nft list ruleset ------------------------------------------------------------------------------
_NFT_BLOCK = re.compile(r"^\t?(table|chain) (.+) \{$")
_NFT_OBJ = re.compile(r"^\tcounter (\S+) \{$")
_NFT_PACKETS = re.compile(r"\bcounter packets (\d+) bytes \d+")


def nft_rule_counters(listing: str) -> dict[str, int]:
    """``table F T chain C rule N`` -> packet count of each counted rule in ``nft list ruleset``.

    Rules are keyed by position, not text, so a listing difference shows as itself and not as a
    counter difference; byte counts are left out (the emulator's TCP options are not the kernel's
    byte for byte, as in the iptables comparison)."""
    out: dict[str, int] = {}
    table = chain = obj = ""
    index = 0
    for line in listing.splitlines():
        named = _NFT_OBJ.match(line)
        if named:
            obj = named.group(1)
        elif obj and line.startswith("\t\tpackets "):
            out[f"table {table} counter {obj}"] = int(line.split()[1])
        if not line.startswith("\t\t"):
            obj = obj if named else ""
            block = _NFT_BLOCK.match(line)
            kind, name = block.groups() if block else ("", "")
            table = name if kind == "table" else table
            chain, index = (name if kind == "chain" else ""), 0
            continue
        if not chain or not line.startswith("\t\t") or line.startswith("\t\ttype "):
            continue
        index += 1
        m = _NFT_PACKETS.search(line)
        if m:
            out[f"table {table} chain {chain} rule {index}"] = int(m.group(1))
    return out
