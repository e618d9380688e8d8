"""The connmark match and the CONNMARK target: the mark kept on the connection."""

from __future__ import annotations

from typing import Any

from kproxy.iptables.ext.mark import FULL, MarkMatch, mark_text, xmark_listing
from kproxy.iptables.extension import (
    XT_CONTINUE,
    ExtensionError,
    Opt,
    RuleContext,
    Target,
    register_match,
    register_target,
)
from kproxy.iptables.xtutil import OptSpec, xtopt_fcheck, xtopt_markmask, xtopt_parse, xtopt_uint
from kproxy.packet import Packet


@register_match
class ConnmarkMatch(MarkMatch):
    """``-m connmark --mark``: the mark match, read from the packet's connection instead of the packet."""
    NEEDS_CONNTRACK = True

    name = "connmark"

    def save(self) -> str:
        return f"-m connmark {'! ' if self.invert else ''}--mark {mark_text(self.value, self.mask)}"

    def listing(self, numeric: bool = True) -> str:
        return f"connmark match {'!' if self.invert else ''} {mark_text(self.value, self.mask)}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if pkt.ct is None:
            return False
        return ((pkt.ct.mark & self.mask) == self.value) != self.invert


OPERATIONS = ("set-xmark", "set-mark", "and-mark", "or-mark", "xor-mark", "save-mark", "restore-mark")
CONNMARK_SPECS = [
    *(OptSpec(n, excl=tuple(o for o in OPERATIONS if o != n)) for n in OPERATIONS),
    OptSpec("ctmask", excl=("mask",)), OptSpec("nfmask", excl=("mask",)), OptSpec("mask", excl=("ctmask", "nfmask")),
]


@register_target
class ConnmarkTarget(Target):
    NEEDS_CONNTRACK = True
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "CONNMARK"
    OPTIONS = {"set-xmark": 1, "set-mark": 1, "and-mark": 1, "or-mark": 1, "xor-mark": 1, "save-mark": 0,
               "restore-mark": 0, "nfmask": 1, "ctmask": 1, "mask": 1}

    def __init__(self, mode: str, value: int = 0, mask: int = FULL, nfmask: int = FULL, ctmask: int = FULL) -> None:
        self.mode, self.value, self.mask, self.nfmask, self.ctmask = mode, value, mask, nfmask, ctmask

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> ConnmarkTarget:
        """Options fill one xt_connmark_tginfo in order: the set operations write (ctmark, ctmask), so a
        later --mask overrides a set operation's mask and an earlier one is overridden by it."""
        info: dict[str, Any] = {"mode": "", "ctmark": 0, "ctmask": FULL, "nfmask": FULL}

        def parse(spec: OptSpec, o: Opt) -> None:
            name, text = spec.name, (o.values[0] if o.values else "")
            if name in ("set-xmark", "set-mark"):
                v, m = xtopt_markmask(text, "CONNMARK", name)
                mask = FULL if m is None else m
                info.update(mode="set", ctmark=v, ctmask=mask if name == "set-xmark" else mask | v)
            elif name in ("and-mark", "or-mark", "xor-mark"):
                n = xtopt_uint(text, "CONNMARK", name)
                ctmark, ctmask = {"and-mark": (0, ~n & FULL), "or-mark": (n, n), "xor-mark": (n, 0)}[name]
                info.update(mode="set", ctmark=ctmark, ctmask=ctmask)
            elif name in ("save-mark", "restore-mark"):
                info["mode"] = name
            else:
                n = xtopt_uint(text, "CONNMARK", name)
                for key in ("ctmask", "nfmask") if name == "mask" else (name,):
                    info[key] = n

        seen = xtopt_parse("CONNMARK", CONNMARK_SPECS, opts, parse)
        if not seen & set(OPERATIONS):
            raise ExtensionError("CONNMARK target: No operation specified")
        xtopt_fcheck("CONNMARK", CONNMARK_SPECS, seen)
        mode = str(info["mode"])
        if mode == "set":
            return cls("set", int(info["ctmark"]), int(info["ctmask"]))
        return cls(mode, nfmask=int(info["nfmask"]), ctmask=int(info["ctmask"]))

    def save(self) -> str:
        if self.mode == "set":
            return f"-j CONNMARK --set-xmark 0x{self.value:x}/0x{self.mask:x}"
        return f"-j CONNMARK --{self.mode} --nfmask 0x{self.nfmask:x} --ctmask 0x{self.ctmask:x}"

    def listing(self, numeric: bool = True) -> str:
        if self.mode == "set":
            return xmark_listing("CONNMARK", self.value, self.mask)
        if self.nfmask == FULL and self.ctmask == FULL:
            return "CONNMARK save" if self.mode == "save-mark" else "CONNMARK restore"
        if self.nfmask == self.ctmask:
            word = "save" if self.mode == "save-mark" else "restore"
            return f"CONNMARK {word} mask 0x{self.nfmask:x}"
        if self.mode == "save-mark":
            return f"CONNMARK save nfmask 0x{self.nfmask:x} ctmask ~0x{self.ctmask:x}"
        return f"CONNMARK restore ctmask 0x{self.ctmask:x} nfmask ~0x{self.nfmask:x}"

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
