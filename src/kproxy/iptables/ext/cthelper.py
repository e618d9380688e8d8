"""The CT target with every option of its revision 1: helpers, timeout policies, event masks and
zones by direction or from the mark. A subclass of ``ct.CtTarget``, which keeps --notrack's effect.

The kernel refuses a helper it has no module for (or not for the rule's protocol), and any
``--timeout`` policy (none is defined with nfct here), with ENOENT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kproxy.iptables.ext.ct import CtTarget
from kproxy.iptables.extension import ExtensionError, Opt, register_target
from kproxy.iptables.xtoptions import CUSTOM, NONE, STRING, XtCall, XtOpt, XtOptions
from kproxy.iptables.xtutil import c_strtoui
from kproxy.packet import TCP, UDP

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

CT_EVENTS = ("new", "related", "destroy", "reply", "assured", "protoinfo", "helper", "mark", "natseqinfo",
             "secmark")
EXP_EVENTS = ("new",)
# The conntrack helpers Linux registers (nf_conntrack_*), by the names CT --helper takes, and the
# protocols each is registered for: the kernel looks a helper up by name, family and the rule's -p.
HELPERS = {"ftp": (TCP,), "tftp": (UDP,), "sip": (TCP, UDP), "irc": (TCP,), "amanda": (UDP,), "pptp": (TCP,),
           "sane": (TCP,), "snmp": (UDP,), "netbios-ns": (UDP,), "RAS": (UDP,), "Q.931": (TCP,)}


def parse_events(table: tuple[str, ...]) -> Callable[[XtCall], int]:
    def parse(call: XtCall) -> int:
        mask = 0
        for word in call.arg.split(","):
            if word not in table:
                raise ExtensionError(f"Unknown event type \"{word}\"")
            mask |= 1 << table.index(word)
        return mask
    return parse


def parse_zone_id(call: XtCall) -> int | None:
    """A zone number up to 65535, or None for ``mark`` (the zone is the packet's mark)."""
    if call.arg.lower() == "mark":
        return None
    got = c_strtoui(call.arg, 0, 0xFFFF)
    if got is None:
        raise ExtensionError(f"Cannot parse {call.arg} as a zone ID")
    return got


@register_target
class CtFullTarget(CtTarget):
    name = "CT"
    OPTIONS = XtOptions(
        "CT", XtOpt("notrack", NONE), XtOpt("helper", STRING, size=16), XtOpt("timeout", STRING, size=32),
        XtOpt("ctevents", CUSTOM, parse=parse_events(CT_EVENTS)),
        XtOpt("expevents", CUSTOM, parse=parse_events(EXP_EVENTS)),
        *(XtOpt(n, CUSTOM, parse=parse_zone_id) for n in ("zone-orig", "zone-reply", "zone")),
    )

    def __init__(self, notrack: bool, zone: int = 0) -> None:
        super().__init__(notrack, zone)
        self.helper = self.timeout = ""
        self.ctevents = self.expevents = 0
        self.zone_dir = ""           # "", "-orig" or "-reply"
        self.zone_mark = False

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> CtFullTarget:
        got = cls.OPTIONS.parse_all(opts)
        t = cls("notrack" in got)
        t.helper, t.timeout = got.get("helper", ""), got.get("timeout", "")
        t.ctevents, t.expevents = got.get("ctevents", 0), got.get("expevents", 0)
        dirs = set()
        for key in got.order:         # each zone option sets the zone; the directions accumulate
            if key.startswith("zone"):
                value = got.get(key)
                t.zone_mark = t.zone_mark or value is None
                t.zone = value or 0
                dirs.add(key[4:])
        both = {"-orig", "-reply"} <= dirs
        t.zone_dir = "" if both else "-orig" if "-orig" in dirs else "-reply" if "-reply" in dirs else ""
        t.ERRNO = "No such file or directory"
        return t

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        if self.helper and (rule.proto_inv or rule.proto not in HELPERS.get(self.helper, ())):
            return True
        return bool(self.timeout)

    def _words(self, dash: str) -> str:
        text = ""
        if self.notrack:
            text += f" {dash}notrack"
        if self.helper:
            text += f" {dash}helper {self.helper}"
        if self.timeout:
            text += f" {dash}timeout {self.timeout}"
        for word, table, mask in (("ctevents", CT_EVENTS, self.ctevents), ("expevents", EXP_EVENTS, self.expevents)):
            if mask:
                text += f" {dash}{word} " + ",".join(e for i, e in enumerate(table) if mask >> i & 1)
        if self.zone_mark or self.zone:
            text += f" {dash}zone{self.zone_dir} " + ("mark" if self.zone_mark else str(self.zone))
        return text

    def save(self) -> str:
        return "-j CT" + self._words("--")

    def listing(self, numeric: bool = True) -> str:
        return "CT" + self._words("")
