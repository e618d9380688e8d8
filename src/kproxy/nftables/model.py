"""The ruleset: tables, chains, rules, sets/maps and stateful objects, with handles as the kernel assigns them.

Handles: tables share one per-namespace counter; chains, sets, objects and rules of a table share that
table's counter. A ruleset is copied for each transaction, so a failing script leaves it untouched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from kproxy.nftables import types as T
from kproxy.nftables.expr import Elem, Opts
from kproxy.nftables.stmt import Stmt

FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
HOOKS = {"ip": ("prerouting", "input", "forward", "output", "postrouting"),
         "ip6": ("prerouting", "input", "forward", "output", "postrouting"),
         "inet": ("prerouting", "input", "forward", "output", "postrouting", "ingress"),
         "arp": ("input", "output"), "bridge": ("prerouting", "input", "forward", "output", "postrouting"),
         "netdev": ("ingress", "egress")}
PRIO_NAMES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
BRIDGE_PRIO = {"dstnat": -300, "filter": -200, "out": 100, "srcnat": 300}


def named_priorities(family: str, hook: str) -> dict[str, int]:
    """The priority names valid for a family and hook, as nft prints them."""
    if family == "bridge":
        return BRIDGE_PRIO
    if family in ("arp", "netdev"):
        return {"filter": 0}
    out = dict(PRIO_NAMES)
    if hook not in ("prerouting",):
        out.pop("dstnat")
    if hook not in ("postrouting",):
        out.pop("srcnat")
    return out


def priority_text(family: str, hook: str, prio: int, numeric: bool) -> str:
    if not numeric:
        best: tuple[int, str] | None = None
        for name, base in named_priorities(family, hook).items():
            if abs(prio - base) <= 10 and (best is None or abs(prio - base) < best[0]):
                best = (abs(prio - base), name)
        if best is not None:
            base = named_priorities(family, hook)[best[1]]
            off = prio - base
            return best[1] if off == 0 else f"{best[1]} {'+' if off > 0 else '-'} {abs(off)}"
    return str(prio)


@dataclass
class Rule:
    handle: int
    stmts: list[Stmt]
    comment: str | None = None
    anon_sets: list[str] = field(default_factory=list)

    def text(self, o: Opts) -> str:
        s = " ".join(st.text(o) for st in self.stmts)
        if self.comment is not None:
            s += f' comment "{self.comment}"'
        return s


@dataclass
class Chain:
    name: str
    handle: int
    type: str | None = None
    hook: str | None = None
    prio: int = 0
    policy: str = "accept"
    devices: list[str] = field(default_factory=list)
    comment: str | None = None
    rules: list[Rule] = field(default_factory=list)

    @property
    def base(self) -> bool:
        return self.hook is not None


@dataclass
class NSet:
    name: str
    handle: int
    is_map: bool
    key: list[T.DType]
    data: list[T.DType] | None = None
    flags: list[str] = field(default_factory=list)
    timeout: int | None = None
    gc_interval: int | None = None
    size: int | None = None
    policy: str | None = None
    comment: str | None = None
    elems: list[Elem] = field(default_factory=list)
    anonymous: bool = False
    auto_merge: bool = False
    typeof: str | None = None  # ``typeof ...`` as written (listed so), else the set was given ``type``

    def decl_text(self) -> str:
        """The declaration line nft lists: ``typeof ip saddr`` or ``type ipv4_addr``."""
        return f"typeof {self.typeof}" if self.typeof is not None else f"type {self.type_text()}"

    def type_text(self) -> str:
        s = " . ".join(t.name for t in self.key)
        if self.data is not None:
            s += " : " + " . ".join(t.name for t in self.data)
        return s


@dataclass
class Obj:
    kind: str  # counter, quota, limit
    name: str
    handle: int
    values: dict[str, Any] = field(default_factory=dict)
    comment: str | None = None


@dataclass
class Flowtable:
    """A flowtable: the devices whose offloaded connections skip the IP hooks (nf_flowtable)."""

    name: str
    handle: int
    hook: str = "ingress"
    prio: int | None = None
    devices: list[str] = field(default_factory=list)
    counter: bool = False
    offload: bool = False


@dataclass
class Table:
    family: str
    name: str
    handle: int
    flags: list[str] = field(default_factory=list)
    comment: str | None = None
    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, NSet] = field(default_factory=dict)
    objs: dict[tuple[str, str], Obj] = field(default_factory=dict)
    flowtables: dict[str, Flowtable] = field(default_factory=dict)
    next_handle: int = 1
    anon_seq: int = 0

    def alloc(self) -> int:
        h = self.next_handle
        self.next_handle += 1
        return h


@dataclass
class Ruleset:
    tables: list[Table] = field(default_factory=list)
    next_table_handle: int = 1
    generation: int = 0  # the namespace's nf_tables generation, bumped by each committed batch (``--echo``)

    def find(self, family: str, name: str) -> Table | None:
        for t in self.tables:
            if t.family == family and t.name == name:
                return t
        return None

    def copy(self) -> Ruleset:
        return copy.deepcopy(self)
