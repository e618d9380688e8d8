"""The mark match and the MARK target (xt_mark): the packet's fwmark, with masks."""

from __future__ import annotations

from typing import Any

from kproxy.iptables.extension import (
    XT_CONTINUE,
    ExtensionError,
    Match,
    Opt,
    RuleContext,
    Target,
    register_match,
    register_target,
)
from kproxy.iptables.xtutil import OptSpec, xtopt_fcheck, xtopt_markmask, xtopt_parse, xtopt_uint
from kproxy.packet import Packet

FULL = 0xFFFFFFFF
XMARK_NAMES = ("set-xmark", "set-mark", "and-mark", "or-mark", "xor-mark")


def mark_text(value: int, mask: int) -> str:
    return f"0x{value:x}" if mask == FULL else f"0x{value:x}/0x{mask:x}"


MATCH_OPTS = [OptSpec("mark", invert=True, mand=True)]
TARGET_OPTS = [OptSpec(n, excl=tuple(o for o in XMARK_NAMES if o != n)) for n in XMARK_NAMES]


@register_match
class MarkMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "mark"
    OPTIONS = {"mark": 1}

    def __init__(self, value: int, mask: int, invert: bool) -> None:
        self.value, self.mask, self.invert = value, mask, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> MarkMatch:
        got: list[tuple[int, int | None, bool]] = []
        seen = xtopt_parse(cls.name, MATCH_OPTS, opts,
                           lambda spec, o: got.append((*xtopt_markmask(o.values[0], cls.name, "mark"), o.invert)))
        xtopt_fcheck(cls.name, MATCH_OPTS, seen)
        v, m, invert = got[0]
        return cls(v, FULL if m is None else m, invert)

    def save(self) -> str:
        return f"-m mark {'! ' if self.invert else ''}--mark {mark_text(self.value, self.mask)}"

    def listing(self, numeric: bool = True) -> str:
        return f"mark match {'! ' if self.invert else ''}{mark_text(self.value, self.mask)}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return ((pkt.mark & self.mask) == self.value) != self.invert

    def inline(self) -> tuple[str, tuple[Any, ...]]:
        return f"(p.mark & {{}}) {'!=' if self.invert else '=='} {{}}", (self.mask, self.value)


def xmark_from(opts: list[Opt], what: str = "MARK") -> tuple[int, int]:
    """The (value, mask) of --set-xmark/--set-mark/--and-mark/--or-mark/--xor-mark: mark = (mark & ~mask) ^ value."""
    result: list[tuple[int, int]] = []

    def parse(spec: OptSpec, o: Opt) -> None:
        text = o.values[0]
        if spec.name in ("set-xmark", "set-mark"):
            v, m = xtopt_markmask(text, what, spec.name)
            mask = FULL if m is None else m
            result.append((v, mask if spec.name == "set-xmark" else mask | v))
            return
        n = xtopt_uint(text, what, spec.name)
        result.append({"and-mark": (0, (~n) & FULL), "or-mark": (n, n), "xor-mark": (n, 0)}[spec.name])

    seen = xtopt_parse(what, TARGET_OPTS, opts, parse)
    if not seen:
        raise ExtensionError(f"{what}: One of the --set-xmark, --{{and,or,xor,set}}-mark options is required")
    xtopt_fcheck(what, TARGET_OPTS, seen)
    return result[0]


def xmark_listing(label: str, value: int, mask: int) -> str:
    """mark_tg_print: the simplest operation that the (value, mask) pair amounts to."""
    if value == 0:
        return f"{label} and 0x{(~mask) & FULL:x}"
    if value == mask:
        return f"{label} or 0x{value:x}"
    if mask == 0:
        return f"{label} xor 0x{value:x}"
    if mask == FULL:
        return f"{label} set 0x{value:x}"
    return f"{label} xset 0x{value:x}/0x{mask:x}"


@register_target
class MarkTarget(Target):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "MARK"
    OPTIONS = {n: 1 for n in XMARK_NAMES}

    def __init__(self, value: int, mask: int) -> None:
        self.value, self.mask = value, mask

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> MarkTarget:
        return cls(*xmark_from(opts))

    def save(self) -> str:
        return f"-j MARK --set-xmark 0x{self.value:x}/0x{self.mask:x}"

    def listing(self, numeric: bool = True) -> str:
        return xmark_listing("MARK", self.value, self.mask)

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        pkt.mark = (pkt.mark & ~self.mask & FULL) ^ self.value
        return XT_CONTINUE
