"""The CT target (--notrack and --zone; --helper and the rest are refused) and the old NOTRACK target."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.extension import (
    XT_CONTINUE,
    ExtensionError,
    Opt,
    RuleContext,
    Target,
    Xlate,
    register_target,
)
from kproxy.iptables.xtoptions import CUSTOM, NONE, STRING, XtCall, XtOpt, XtOptions
from kproxy.iptables.xtutil import c_strtoui
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule


def parse_zone(call: XtCall) -> int:
    """libxt_CT's zone: a number up to 65535 (``--zone-orig`` / ``--zone-reply`` are not modelled)."""
    got = c_strtoui(call.arg, 0, 0xFFFF)
    if got is None:
        raise ExtensionError(f"Cannot parse {call.arg} as a zone ID")
    return got


UNSUPPORTED = ("helper", "ctevents", "expevents", "timeout")


@register_target
class CtTarget(Target):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "CT"
    TABLES = ("raw",)
    OPTIONS = XtOptions("CT", XtOpt("notrack", NONE), XtOpt("zone", CUSTOM, parse=parse_zone),
                        *(XtOpt(n, STRING) for n in UNSUPPORTED))

    def __init__(self, notrack: bool, zone: int = 0) -> None:
        self.notrack, self.zone = notrack, zone

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> CtTarget:
        if any(o.name in UNSUPPORTED for o in opts):
            raise ExtensionError("CT: only --notrack and --zone are supported by kproxy")
        got = cls.OPTIONS.parse_all(opts)
        return cls("notrack" in got, got.get("zone", 0))

    def needs_conntrack(self) -> bool:
        return not self.notrack      # xt_ct_tg_check returns before nf_ct_netns_get for --notrack

    def save(self) -> str:
        return "-j CT" + (" --notrack" if self.notrack else "") + (f" --zone {self.zone}" if self.zone else "")

    def listing(self, numeric: bool = True) -> str:
        return "CT" + (" notrack" if self.notrack else "") + (f" zone {self.zone}" if self.zone else "")

    def translate(self, xl: Xlate) -> str | None:
        """Only ``--notrack`` alone has an nft form here."""
        return "notrack" if self.notrack and not self.zone else None

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        # xt_ct_target: a packet that already has a conntrack reference (looped back) is left alone;
        # --notrack attaches the untracked template at once, so later rules see the state UNTRACKED.
        # Otherwise it attaches its template, whose zone the conntrack lookup then uses. Either way the
        # first template wins.
        if pkt.ct is not None or pkt.notrack or pkt.zone_dir:
            return XT_CONTINUE
        if self.notrack:
            pkt.notrack = True
            pkt.ctstate = "UNTRACKED"
        else:
            pkt.zone, pkt.zone_dir = self.zone, 3
        return XT_CONTINUE


@register_target
class NotrackTarget(CtTarget):
    name = "NOTRACK"
    OPTIONS = XtOptions("NOTRACK")

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> NotrackTarget:
        return cls(True)

    LIST_NAME = "CT"

    def save(self) -> str:
        return "-j NOTRACK"

    def listing(self, numeric: bool = True) -> str:
        return "NOTRACK"
