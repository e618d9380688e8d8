"""Targets that feed kernel timers and estimators: IDLETIMER (a sysfs timer reset by each packet)
and RATEEST (a named rate estimator the rateest match reads). Neither changes the packet."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from kproxy.iptables.extension import XT_CONTINUE, ExtensionError, Opt, RuleContext, Target, register_target
from kproxy.iptables.xtoptions import NONE, STRING, UINT32, XTOPT_MAND, XtOpt, XtOptions
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

UNITS_PER_SEC = 1_000_000
_FLOAT = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


@register_target
class IdletimerTarget(Target):
    name = "IDLETIMER"
    REVISION = 1
    OPTIONS = XtOptions("IDLETIMER", XtOpt("timeout", UINT32, XTOPT_MAND), XtOpt("label", STRING, XTOPT_MAND, size=28),
                        XtOpt("alarm", NONE))

    def __init__(self, timeout: int, label: str, alarm: bool) -> None:
        self.timeout, self.label, self.alarm = timeout, label, alarm

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> IdletimerTarget:
        got = cls.OPTIONS.parse_all(opts)
        return cls(got.get("timeout"), got.get("label"), "alarm" in got)

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        # idletimer_tg_checkentry_v1: a timeout and a label. (A label is global to the kernel: one in use
        # with the other timer type, alarm or not, is refused too; the emulator has no other users.)
        return self.timeout == 0 or not self.label

    def _tail(self, dash: str, sep: str) -> str:
        text = f"{dash}timeout{sep}{self.timeout} {dash}label{sep}{self.label}"
        return text + (f" {dash}alarm" if self.alarm else "")

    def save(self) -> str:
        return "-j IDLETIMER " + self._tail("--", " ")

    def listing(self, numeric: bool = True) -> str:
        return self._tail("", ":")

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        timers = ctx.node.subsystems.setdefault("idletimers", {})
        timers[self.label] = ctx.now + self.timeout
        return XT_CONTINUE


def parse_time(text: str) -> int | None:
    """RATEEST_get_time: a number with an optional s/ms/us unit, in microseconds."""
    m = _FLOAT.match(text)
    if m is None:
        return None
    t = float(m.group(0))
    unit = text[m.end():].lower()
    if unit:
        scale = {"s": 1e6, "sec": 1e6, "secs": 1e6, "ms": 1e3, "msec": 1e3, "msecs": 1e3,
                 "us": 1.0, "usec": 1.0, "usecs": 1.0}.get(unit)
        if scale is None:
            return None
        t *= scale
    return int(t) & 0xFFFFFFFF


def time_text(units: int) -> str:
    if units >= UNITS_PER_SEC:
        return f"{units / UNITS_PER_SEC:.1f}s"
    if units >= UNITS_PER_SEC // 1000:
        return f"{units / (UNITS_PER_SEC // 1000):.1f}ms"
    return f"{units}us"


@register_target
class RateestTarget(Target):
    name = "RATEEST"
    OPTIONS = XtOptions("RATEEST", XtOpt("rateest-name", STRING, XTOPT_MAND, size=16),
                        XtOpt("rateest-interval", STRING), XtOpt("rateest-ewmalog", STRING))

    def __init__(self, name: str, interval: int, ewma_log: int) -> None:
        self.est_name, self.interval, self.ewma_log = name, interval, ewma_log

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> RateestTarget:
        got = cls.OPTIONS.parse(opts)
        times = {"rateest-interval": 0, "rateest-ewmalog": 0}
        for key, word in (("rateest-interval", "interval"), ("rateest-ewmalog", "ewmalog")):
            if key in got:
                value = parse_time(got.get(key))
                if value is None:
                    raise ExtensionError(f"RATEEST: bad {word} value \"{got.get(key)}\"")
                times[key] = value
        cls.OPTIONS.fcheck(got)
        interval_us, ewma_us = times["rateest-interval"], times["rateest-ewmalog"]
        interval = 0
        while interval <= 5 and interval_us > (1 << interval) * (UNITS_PER_SEC // 4):
            interval += 1
        if interval > 5:
            raise ExtensionError("RATEEST: interval value is too large")
        ewma = 1
        while ewma < 32:
            w = 1.0 - 1.0 / (1 << ewma)
            if interval_us / (-math.log(w)) > ewma_us:
                break
            ewma += 1
        ewma -= 1
        if ewma == 0 or ewma >= 31:
            raise ExtensionError("RATEEST: ewmalog value is out of range")
        return cls(got.get("rateest-name"), interval - 2, ewma)

    def _words(self, prefix: str) -> str:
        interval = (UNITS_PER_SEC << (self.interval + 2)) // 4
        ewma = interval * (1 << self.ewma_log)
        return f"{prefix}name {self.est_name} {prefix}interval {time_text(interval)} " \
            f"{prefix}ewmalog {time_text(ewma & 0xFFFFFFFF)}"

    def save(self) -> str:
        return "-j RATEEST " + self._words("--rateest-")

    def listing(self, numeric: bool = True) -> str:
        return self._words("")

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        est = ctx.node.subsystems.setdefault("rateest", {}).setdefault(self.est_name, [0, 0])
        est[0] += 1
        est[1] += pkt.length
        return XT_CONTINUE


@register_target
class ClusteripTarget(Target):
    """CLUSTERIP (IPv4): gone from this kernel; the tool still parses it, then the kernel refuses."""

    name = "CLUSTERIP"
    FAMILIES = (4,)
    KERNEL_LACKS = True
    OPTIONS = XtOptions("CLUSTERIP", XtOpt("new", NONE), XtOpt("hashmode", STRING), XtOpt("clustermac", STRING),
                        XtOpt("total-nodes", UINT32), XtOpt("local-node", UINT32), XtOpt("hash-init", UINT32))

    def __init__(self, opts: list[Opt]) -> None:
        self.opts = opts

    FULL = frozenset({"new", "hashmode", "clustermac", "total-nodes", "local-node"})

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> ClusteripTarget:
        seen = cls.OPTIONS.parse_all(opts).seen()
        if cls.name == "CLUSTERIP" and seen and not seen >= cls.FULL:
            raise ExtensionError("CLUSTERIP target: Invalid parameter combination")
        return cls(opts)

    def save(self) -> str:
        return "-j CLUSTERIP"

    def listing(self, numeric: bool = True) -> str:
        return "CLUSTERIP"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        return XT_CONTINUE     # pragma: no cover (never committed: the kernel refuses it)


@register_target
class UlogTarget(ClusteripTarget):
    """ULOG (IPv4): replaced by NFLOG and gone from this kernel."""

    name = "ULOG"
    OPTIONS = XtOptions("ULOG", XtOpt("ulog-nlgroup", UINT32), XtOpt("ulog-prefix", STRING),
                        XtOpt("ulog-cprange", UINT32), XtOpt("ulog-qthreshold", UINT32))

    def save(self) -> str:
        return "-j ULOG"

    def listing(self, numeric: bool = True) -> str:
        return "ULOG"
