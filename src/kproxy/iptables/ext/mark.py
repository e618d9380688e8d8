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
from kproxy.iptables.xtutil import parse_mark_mask
from kproxy.packet import Packet

FULL = 0xFFFFFFFF


def mark_text(value: int, mask: int) -> str:
    return f"0x{value:x}" if mask == FULL else f"0x{value:x}/0x{mask:x}"


@register_match
class MarkMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "mark"
    OPTIONS = {"mark": 1}

    def __init__(self, value: int, mask: int, invert: bool) -> None:
        self.value, self.mask, self.invert = value, mask, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> MarkMatch:
        if not opts:
            raise ExtensionError("mark: option \"--mark\" must be specified")
        o = opts[-1]
        v, m = parse_mark_mask(o.values[0])
        return cls(v, FULL if m is None else m, o.invert)

    def save(self) -> str:
        return f"-m mark {'! ' if self.invert else ''}--mark {mark_text(self.value, self.mask)}"

    def listing(self, numeric: bool = True) -> str:
        return f"mark match {'! ' if self.invert else ''}{mark_text(self.value, self.mask)}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return ((pkt.mark & self.mask) == self.value) != self.invert


def xmark_from(opts: list[Opt], what: str = "MARK") -> tuple[int, int]:
    """The (value, mask) of --set-xmark/--set-mark/--and-mark/--or-mark/--xor-mark: mark = (mark & ~mask) ^ value."""
    if len(opts) != 1:
        raise ExtensionError(f"{what} target: Parameter --set/and/or/xor-mark is required" if not opts
                             else f"{what}: --set-xmark/--set-mark/--and-mark/--or-mark/--xor-mark are exclusive")
    o = opts[0]
    v, m = parse_mark_mask(o.values[0])
    if o.name == "set-xmark":
        return v, FULL if m is None else m
    if o.name == "set-mark":
        return v, (FULL if m is None else m | v)
    if o.name == "and-mark":
        return 0, (~v) & FULL
    if o.name == "or-mark":
        return v, v
    return v, 0   # xor-mark


def xmark_listing(label: str, value: int, mask: int) -> str:
    if mask == FULL:
        return f"{label} set 0x{value:x}"
    if value == 0:
        return f"{label} and 0x{(~mask) & FULL:x}"
    if value == mask:
        return f"{label} or 0x{value:x}"
    if mask == 0:
        return f"{label} xor 0x{value:x}"
    return f"{label} xset 0x{value:x}/0x{mask:x}"


@register_target
class MarkTarget(Target):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "MARK"
    OPTIONS = {"set-xmark": 1, "set-mark": 1, "and-mark": 1, "or-mark": 1, "xor-mark": 1}

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
