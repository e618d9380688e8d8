"""The connmark match and the CONNMARK target: the mark kept on the connection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kproxy.iptables.ext.mark import (
    FULL,
    MarkMatch,
    mark_text,
    mark_xlate,
    xmark_entries,
    xmark_listing,
    xmark_op,
)
from kproxy.iptables.extension import (
    XT_CONTINUE,
    ExtensionError,
    Opt,
    RuleContext,
    Target,
    Xlate,
    register_match,
    register_target,
)
from kproxy.iptables.xtoptions import MARKMASK32, NONE, UINT32, XTOPT_INVERT, XTOPT_MAND, XtOpt, XtOptions
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule


@register_match
class ConnmarkMatch(MarkMatch):
    """``-m connmark --mark``: the mark match, read from the packet's connection instead of the packet."""
    NEEDS_CONNTRACK = True

    name = "connmark"
    OPTIONS = XtOptions("connmark", XtOpt("mark", MARKMASK32, XTOPT_INVERT | XTOPT_MAND))

    def save(self) -> str:
        return f"-m connmark {'! ' if self.invert else ''}--mark {mark_text(self.value, self.mask)}"

    def listing(self, numeric: bool = True) -> str:
        return f"connmark match {'!' if self.invert else ''} {mark_text(self.value, self.mask)}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if pkt.ct is None:
            return False
        return ((pkt.ct.mark & self.mask) == self.value) != self.invert

    def inline(self) -> tuple[str, tuple[Any, ...]]:
        return f"p.ct is not None and (p.ct.mark & {{}}) {'!=' if self.invert else '=='} {{}}", (self.mask, self.value)

    def translate(self, xl: Xlate) -> str:
        return mark_xlate("ct mark", self.value, self.mask, self.invert)


MODES = ("save-mark", "restore-mark")
OPERATIONS = (*(e.name for e in xmark_entries()), *MODES)


@register_target
class ConnmarkTarget(Target):
    NEEDS_CONNTRACK = True
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "CONNMARK"
    OPTIONS = XtOptions(
        "CONNMARK",
        *(XtOpt(e.name, e.type, excl=(*e.excl, *MODES)) for e in xmark_entries()),
        *(XtOpt(n, NONE, excl=tuple(o for o in OPERATIONS if o != n)) for n in MODES),
        XtOpt("ctmask", UINT32, excl=("mask",)), XtOpt("nfmask", UINT32, excl=("mask",)),
        XtOpt("mask", UINT32, excl=("ctmask", "nfmask")),
    )

    def __init__(self, mode: str, value: int = 0, mask: int = FULL, nfmask: int = FULL, ctmask: int = FULL) -> None:
        self.mode, self.value, self.mask, self.nfmask, self.ctmask = mode, value, mask, nfmask, ctmask

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> ConnmarkTarget:
        """Options fill one xt_connmark_tginfo in order: the set operations write (ctmark, ctmask), so a
        later --mask overrides a set operation's mask and an earlier one is overridden by it."""
        got = cls.OPTIONS.parse(opts)
        if not got.seen() & set(OPERATIONS):
            raise ExtensionError("CONNMARK target: No operation specified")
        cls.OPTIONS.fcheck(got)
        info = {"ctmark": 0, "ctmask": FULL, "nfmask": FULL}
        for name in got.order:
            if name in ("ctmask", "nfmask", "mask"):
                for key in ("ctmask", "nfmask") if name == "mask" else (name,):
                    info[key] = got.get(name)
            elif name not in MODES:
                info["ctmark"], info["ctmask"] = xmark_op(name, got.get(name))
        for mode in MODES:
            if mode in got:
                return cls(mode, nfmask=info["nfmask"], ctmask=info["ctmask"])
        return cls("set", info["ctmark"], info["ctmask"])

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

    def translate(self, xl: Xlate) -> str | None:
        """connmark_tg_xlate: a set as the simplest bit operation; save and restore only with one mask."""
        if self.mode == "set":
            value, mask = self.value, self.mask
            if mask == FULL:
                return f"ct mark set 0x{value:x} "    # the tool's trailing space (seen before a comment)
            if value == 0:
                return f"ct mark set ct mark and 0x{~mask & FULL:x}"
            if value == mask:
                return f"ct mark set ct mark or 0x{value:x}"
            if mask == 0:
                return f"ct mark set ct mark xor 0x{value:x}"
            return f"ct mark set ct mark xor 0x{value:x} and 0x{~mask & FULL:x}"
        if self.nfmask != self.ctmask:
            return None
        what = "ct mark set mark" if self.mode == "save-mark" else "meta mark set ct mark"
        return what if self.nfmask == FULL else f"{what} and 0x{self.nfmask:x}"

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
