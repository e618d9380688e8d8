"""The CT target (--notrack, --zone, --helper not modelled beyond notrack) and the old NOTRACK target."""

from __future__ import annotations

from typing import Any

from kproxy.iptables.extension import XT_CONTINUE, ExtensionError, Opt, RuleContext, Target, register_target
from kproxy.iptables.xtutil import c_strtoui
from kproxy.packet import Packet


@register_target
class CtTarget(Target):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "CT"
    TABLES = ("raw",)
    OPTIONS = {"notrack": 0, "zone": 1, "helper": 1, "ctevents": 1, "expevents": 1, "timeout": 1}

    def __init__(self, notrack: bool, zone: int = 0) -> None:
        self.notrack, self.zone = notrack, zone

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> CtTarget:
        names = {o.name for o in opts}
        if names - {"notrack", "zone"}:
            raise ExtensionError("CT: only --notrack and --zone are supported by kproxy")
        zone = 0
        for o in opts:
            if o.name == "zone":
                got = c_strtoui(o.values[0], 0, 0xFFFF)
                if got is None:
                    raise ExtensionError(f"Cannot parse {o.values[0]} as a zone ID")
                zone = got
        return cls("notrack" in names, zone)

    def needs_conntrack(self) -> bool:
        return not self.notrack      # xt_ct_tg_check returns before nf_ct_netns_get for --notrack

    def save(self) -> str:
        return "-j CT" + (" --notrack" if self.notrack else "") + (f" --zone {self.zone}" if self.zone else "")

    def listing(self, numeric: bool = True) -> str:
        return "CT" + (" notrack" if self.notrack else "") + (f" zone {self.zone}" if self.zone else "")

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        # xt_ct_target: a packet that already has a conntrack reference (looped back) is left alone;
        # --notrack attaches the untracked template at once, so later rules see the state UNTRACKED.
        if self.notrack and pkt.ct is None and not pkt.notrack:
            pkt.notrack = True
            pkt.ctstate = "UNTRACKED"
        return XT_CONTINUE


@register_target
class NotrackTarget(CtTarget):
    name = "NOTRACK"
    OPTIONS = {}

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> NotrackTarget:
        return cls(True)

    LIST_NAME = "CT"

    def save(self) -> str:
        return "-j NOTRACK"

    def listing(self, numeric: bool = True) -> str:
        return "NOTRACK"
