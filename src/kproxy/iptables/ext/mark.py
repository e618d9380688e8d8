"""The mark match and the MARK target (xt_mark): the packet's fwmark, with masks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kproxy.iptables.extension import (
    XT_CONTINUE,
    ExtensionError,
    Match,
    Opt,
    RuleContext,
    Target,
    Xlate,
    register_match,
    register_target,
)
from kproxy.iptables.xtoptions import MARKMASK32, UINT32, XTOPT_INVERT, XTOPT_MAND, XtOpt, XtOptions, XtParsed
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

FULL = 0xFFFFFFFF
XMARK_NAMES = ("set-xmark", "set-mark", "and-mark", "or-mark", "xor-mark")


def mark_text(value: int, mask: int) -> str:
    return f"0x{value:x}" if mask == FULL else f"0x{value:x}/0x{mask:x}"


def mark_xlate(key: str, value: int, mask: int, invert: bool) -> str:
    """The nft comparison of a mark (``mark``, ``ct mark``) with a value under a mask."""
    if mask == FULL:
        return f"{key} {'!= ' if invert else ''}0x{value:x}"
    return f"{key} and 0x{mask:x} {'!=' if invert else '=='} 0x{value:x}"


def xmark_entries() -> tuple[XtOpt, ...]:
    """The five ways of writing a mark operation, each excluding the others (MARK's and CONNMARK's)."""
    return tuple(XtOpt(n, MARKMASK32 if n in ("set-xmark", "set-mark") else UINT32,
                       excl=tuple(o for o in XMARK_NAMES if o != n)) for n in XMARK_NAMES)


def xmark_op(name: str, v: Any) -> tuple[int, int]:
    """The (value, mask) a parsed mark operation amounts to: mark = (mark & ~mask) ^ value."""
    if name in ("set-xmark", "set-mark"):
        value, m = v
        mask = FULL if m is None else m
        return value, mask if name == "set-xmark" else mask | value
    return {"and-mark": (0, (~v) & FULL), "or-mark": (v, v), "xor-mark": (v, 0)}[name]


def xmark_value(got: XtParsed) -> tuple[int, int] | None:
    """The (value, mask) of the mark operation given, if one was."""
    for name in XMARK_NAMES:
        if name in got:
            return xmark_op(name, got.get(name))
    return None


@register_match
class MarkMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "mark"
    OPTIONS = XtOptions("mark", XtOpt("mark", MARKMASK32, XTOPT_INVERT | XTOPT_MAND))

    def __init__(self, value: int, mask: int, invert: bool) -> None:
        self.value, self.mask, self.invert = value, mask, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> MarkMatch:
        got = cls.OPTIONS.parse_all(opts)
        v, m = got.get("mark")
        return cls(v, FULL if m is None else m, got.invert("mark"))

    def save(self) -> str:
        return f"-m mark {'! ' if self.invert else ''}--mark {mark_text(self.value, self.mask)}"

    def listing(self, numeric: bool = True) -> str:
        return f"mark match {'! ' if self.invert else ''}{mark_text(self.value, self.mask)}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return ((pkt.mark & self.mask) == self.value) != self.invert

    def inline(self) -> tuple[str, tuple[Any, ...]]:
        return f"(p.mark & {{}}) {'!=' if self.invert else '=='} {{}}", (self.mask, self.value)

    def translate(self, xl: Xlate) -> str:
        return mark_xlate("mark", self.value, self.mask, self.invert)


def xmark_kind(value: int, mask: int, set_first: bool = False) -> str:
    """The simplest operation the (value, mask) pair amounts to: and, or, xor, set or xset (both); the
    listing tries ``set`` last, the translation first."""
    if set_first and mask == FULL:
        return "set"
    if value == 0:
        return "and"
    if value == mask:
        return "or"
    if mask == 0:
        return "xor"
    return "set" if mask == FULL else "xset"


def xmark_listing(label: str, value: int, mask: int) -> str:
    """mark_tg_print."""
    kind = xmark_kind(value, mask)
    if kind == "and":
        return f"{label} and 0x{(~mask) & FULL:x}"
    return f"{label} {kind} 0x{value:x}" + (f"/0x{mask:x}" if kind == "xset" else "")


@register_target
class MarkTarget(Target):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "MARK"
    OPTIONS = XtOptions("MARK", *xmark_entries())

    def __init__(self, value: int, mask: int) -> None:
        self.value, self.mask = value, mask

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> MarkTarget:
        got = cls.OPTIONS.parse(opts)
        xmark = xmark_value(got)
        if xmark is None:
            raise ExtensionError("MARK: One of the --set-xmark, --{and,or,xor,set}-mark options is required")
        cls.OPTIONS.fcheck(got)
        return cls(*xmark)

    def save(self) -> str:
        return f"-j MARK --set-xmark 0x{self.value:x}/0x{self.mask:x}"

    def listing(self, numeric: bool = True) -> str:
        return xmark_listing("MARK", self.value, self.mask)

    def translate(self, xl: Xlate) -> str:
        """mark_tg_xlate: the simplest nft statement for the (value, mask) pair."""
        value, mask = self.value, self.mask
        kind = xmark_kind(value, mask, set_first=True)
        if kind == "set":
            return f"meta mark set 0x{value:x} "      # the tool's trailing space (seen before a comment)
        keep = f"and 0x{(~mask) & FULL:x}"
        op = {"and": keep, "xset": f"{keep} xor 0x{value:x}"}.get(kind, f"{kind} 0x{value:x}")
        return f"meta mark set mark {op} "

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        pkt.mark = (pkt.mark & ~self.mask & FULL) ^ self.value
        return XT_CONTINUE
