"""The connmark match and the CONNMARK target: the mark kept on the connection."""

from __future__ import annotations

from typing import Any

from kproxy.iptables.ext.mark import FULL, MarkMatch, mark_text, xmark_from, xmark_listing
from kproxy.iptables.extension import (
    XT_CONTINUE,
    ExtensionError,
    Opt,
    RuleContext,
    Target,
    register_match,
    register_target,
)
from kproxy.iptables.xtutil import parse_uint
from kproxy.packet import Packet


@register_match
class ConnmarkMatch(MarkMatch):
    """``-m connmark --mark``: the mark match, read from the packet's connection instead of the packet."""

    name = "connmark"

    def save(self) -> str:
        return f"-m connmark {'! ' if self.invert else ''}--mark {mark_text(self.value, self.mask)}"

    def listing(self, numeric: bool = True) -> str:
        return f"connmark match {'!' if self.invert else ''} {mark_text(self.value, self.mask)}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if pkt.ct is None:
            return False
        return ((pkt.ct.mark & self.mask) == self.value) != self.invert


@register_target
class ConnmarkTarget(Target):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "CONNMARK"
    OPTIONS = {"set-xmark": 1, "set-mark": 1, "and-mark": 1, "or-mark": 1, "xor-mark": 1, "save-mark": 0,
               "restore-mark": 0, "nfmask": 1, "ctmask": 1, "mask": 1}

    def __init__(self, mode: str, value: int = 0, mask: int = FULL, nfmask: int = FULL, ctmask: int = FULL) -> None:
        self.mode, self.value, self.mask, self.nfmask, self.ctmask = mode, value, mask, nfmask, ctmask

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> ConnmarkTarget:
        masks = {o.name: parse_uint(o.values[0], o.name) for o in opts if o.name in ("nfmask", "ctmask", "mask")}
        modes = [o for o in opts if o.name not in ("nfmask", "ctmask", "mask")]
        if len(modes) != 1:
            raise ExtensionError("CONNMARK target: No operation specified" if not modes
                                 else "CONNMARK target: Only one operation allowed")
        kind = modes[0].name
        if kind in ("save-mark", "restore-mark"):
            both = masks.get("mask", FULL)
            return cls(kind, nfmask=masks.get("nfmask", both), ctmask=masks.get("ctmask", both))
        v, m = xmark_from(modes, "CONNMARK")
        return cls("set", v, m)

    def save(self) -> str:
        if self.mode == "set":
            return f"-j CONNMARK --set-xmark 0x{self.value:x}/0x{self.mask:x}"
        return f"-j CONNMARK --{self.mode} --nfmask 0x{self.nfmask:x} --ctmask 0x{self.ctmask:x}"

    def listing(self, numeric: bool = True) -> str:
        if self.mode == "set":
            return xmark_listing("CONNMARK", self.value, self.mask)
        word = "save" if self.mode == "save-mark" else "restore"
        if self.nfmask == FULL and self.ctmask == FULL:
            return f"CONNMARK {word}"
        return f"CONNMARK {word} mask 0x{self.nfmask:x}" if self.nfmask == self.ctmask else \
            f"CONNMARK {word} nfmask 0x{self.nfmask:x} ctmask ~0x{self.ctmask:x}"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        ct = pkt.ct
        if ct is None:
            return XT_CONTINUE
        if self.mode == "set":
            ct.mark = (ct.mark & ~self.mask & FULL) ^ self.value
        elif self.mode == "save-mark":
            ct.mark = (ct.mark & ~self.ctmask & FULL) ^ (pkt.mark & self.nfmask)
        else:
            pkt.mark = (pkt.mark & ~self.nfmask & FULL) ^ (ct.mark & self.ctmask)
        return XT_CONTINUE
