"""TTL (IPv4) and hop limit (IPv6): the ttl and hl matches and the TTL and HL targets (mangle only).
The packet's ``ttl`` is the IPv4 TTL or the IPv6 hop limit."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from kproxy.iptables.ext.unknown import changed
from kproxy.iptables.extension import (
    XT_CONTINUE,
    Match,
    Opt,
    RuleContext,
    Target,
    register_match,
    register_target,
)
from kproxy.iptables.xtoptions import UINT8, XTOPT_INVERT, XtOpt, XtOptions
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

OPS = {"eq": "==", "ne": "!=", "lt": "<", "gt": ">"}


def match_options(word: str) -> XtOptions:
    others = {f"{word}-lt", f"{word}-gt", f"{word}-eq"}
    return XtOptions(word, XtOpt(f"{word}-lt", UINT8, excl=tuple(sorted(others - {f"{word}-lt"}))),
                     XtOpt(f"{word}-gt", UINT8, excl=tuple(sorted(others - {f"{word}-gt"}))),
                     XtOpt(f"{word}-eq", UINT8, XTOPT_INVERT, excl=tuple(sorted(others - {f"{word}-eq"}))),
                     XtOpt(word, UINT8, id=f"{word}-eq"))


def target_options(word: str) -> XtOptions:
    names = [f"{word}-set", f"{word}-dec", f"{word}-inc"]
    return XtOptions(word.upper(), *(XtOpt(n, UINT8, min=0 if n.endswith("set") else 1,
                                           excl=tuple(o for o in names if o != n)) for n in names))


@register_match
class TtlMatch(Match):
    SHAREABLE = True
    name = "ttl"
    FAMILIES: ClassVar[tuple[int, ...]] = (4,)
    WORD = "ttl"
    LABEL = "TTL match TTL"
    MISSING = "TTL match: You must specify one of `--ttl-eq', `--ttl-lt', `--ttl-gt"
    OPTIONS = match_options("ttl")

    def __init__(self, op: str, value: int) -> None:
        self.op, self.value = op, value

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> TtlMatch:
        got = cls.OPTIONS.parse_required(opts, cls.MISSING)
        key = got.last
        op = key.rsplit("-", 1)[1]
        if op == "eq" and got.invert(key):
            op = "ne"
        return cls(op, got.get(key))

    def save(self) -> str:
        opt = f"! --{self.WORD}-eq" if self.op == "ne" else f"--{self.WORD}-{self.op}"
        return f"-m {self.WORD} {opt} {self.value}"

    def listing(self, numeric: bool = True) -> str:
        return f"{self.LABEL} {OPS[self.op]} {self.value}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        t, v = pkt.ttl, self.value
        return {"eq": t == v, "ne": t != v, "lt": t < v, "gt": t > v}[self.op]


@register_match
class HlMatch(TtlMatch):
    name = "hl"
    FAMILIES = (6,)
    WORD = "hl"
    LABEL = "HL match HL"
    MISSING = "HL match: You must specify one of `--hl-eq', `--hl-lt', `--hl-gt'"
    OPTIONS = match_options("hl")


@register_target
class TtlTarget(Target):
    SHAREABLE = True
    name = "TTL"
    FAMILIES: ClassVar[tuple[int, ...]] = (4,)
    TABLES = ("mangle",)
    WORD = "ttl"
    OPTIONS = target_options("ttl")

    def __init__(self, mode: str, value: int) -> None:
        self.mode, self.value = mode, value

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> TtlTarget:
        got = cls.OPTIONS.parse_required(opts, f"{cls.name}: You must specify an action")
        key = got.last
        return cls(key.rsplit("-", 1)[1], got.get(key))

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return self.mode != "set" and self.value == 0

    def save(self) -> str:
        return f"-j {self.name} --{self.WORD}-{self.mode} {self.value}"

    def listing(self, numeric: bool = True) -> str:
        words = {"set": "set to", "dec": "decrement by", "inc": "increment by"}[self.mode]
        return f"{self.name} {words} {self.value}"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        old = pkt.ttl
        new = self.value if self.mode == "set" else \
            max(old - self.value, 0) if self.mode == "dec" else min(old + self.value, 255)
        if new != old:
            pkt.ttl = new
            changed(ctx, self.name, f"{self.WORD} {old} -> {new}")
        return XT_CONTINUE


@register_target
class HlTarget(TtlTarget):
    name = "HL"
    FAMILIES = (6,)
    WORD = "hl"
    OPTIONS = target_options("hl")
