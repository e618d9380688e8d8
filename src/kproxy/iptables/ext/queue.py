"""Targets that hand packets to userspace or the kernel's logs: NFLOG (a copy to a netlink log
group) and NFQUEUE (the packet itself to a queue). The emulated node has no listener: NFQUEUE drops
the packet, or lets it through with --queue-bypass, as the kernel does without one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.ext.unknown import changed
from kproxy.iptables.extension import XT_CONTINUE, ExtensionError, Opt, RuleContext, Target, register_target
from kproxy.iptables.xtoptions import NONE, STRING, UINT16, UINT16RC, UINT32, XtOpt, XtOptions
from kproxy.iptables.xtutil import save_string
from kproxy.packet import NF_ACCEPT, NF_DROP, Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

DEFAULT_THRESHOLD = 1


@register_target
class NflogTarget(Target):
    SHAREABLE = True
    name = "NFLOG"
    OPTIONS = XtOptions(
        "NFLOG", XtOpt("nflog-group", UINT16), XtOpt("nflog-prefix", STRING, min=1, size=128),
        XtOpt("nflog-range", UINT32, excl=("nflog-size",)), XtOpt("nflog-size", UINT32, excl=("nflog-range",)),
        XtOpt("nflog-threshold", UINT16))

    def __init__(self) -> None:
        self.group = self.length = 0
        self.prefix = ""
        self.copy_len = False
        self.threshold = DEFAULT_THRESHOLD

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> NflogTarget:
        got = cls.OPTIONS.parse_all(opts)
        t = cls()
        t.group, t.prefix = got.get("nflog-group", 0), got.get("nflog-prefix", "")
        t.copy_len = "nflog-size" in got
        t.length = got.get("nflog-size", 0)      # (iptables-nft keeps no --nflog-range: it never worked)
        if "nflog-range" in got:
            t.warnings = ("warn: --nflog-range has never worked and is no longer supported, please use "
                          "--nflog-size instead\n",)
        t.threshold = got.get("nflog-threshold", DEFAULT_THRESHOLD)
        return t

    def _words(self, dash: str) -> str:
        out = []
        if self.prefix:
            out.append(f"{dash}nflog-prefix {save_string(self.prefix)}")
        if self.group:
            out.append(f"{dash}nflog-group {self.group}")
        if self.copy_len:
            out.append(f"{dash}nflog-size {self.length}")
        if self.threshold != DEFAULT_THRESHOLD:
            out.append(f"{dash}nflog-threshold {self.threshold}")
        return " ".join(out)

    def save(self) -> str:
        words = self._words("--")
        return "-j NFLOG" + (f" {words}" if words else "")

    def listing(self, numeric: bool = True) -> str:
        return self._words("")

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        changed(ctx, "NFLOG", f"copy to log group {self.group}" + (f" prefix {self.prefix!r}" if self.prefix else ""))
        return XT_CONTINUE


def parse_balance(values: tuple[int, int], text: str) -> tuple[int, int]:
    lo, hi = values
    if ":" not in text:
        raise ExtensionError(f"Bad range \"{text}\"")
    if lo >= hi:
        raise ExtensionError(f"{lo} should be less than {hi}")
    return lo, hi - lo + 1


@register_target
class NfqueueTarget(Target):
    SHAREABLE = True
    name = "NFQUEUE"
    REVISION = 3
    OPTIONS = XtOptions(
        "NFQUEUE", XtOpt("queue-num", UINT16, excl=("queue-balance",)),
        XtOpt("queue-balance", UINT16RC, excl=("queue-num",)), XtOpt("queue-bypass", NONE),
        XtOpt("queue-cpu-fanout", NONE, also=("queue-balance",)))

    def __init__(self, num: int, total: int, bypass: bool, fanout: bool) -> None:
        self.num, self.total, self.bypass, self.fanout = num, total, bypass, fanout

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> NfqueueTarget:
        got = cls.OPTIONS.parse(opts)
        num, total = got.get("queue-num", 0), 1
        if "queue-balance" in got:
            text = next(o.values[0] for o in reversed(opts) if o.name == "queue-balance")
            num, total = parse_balance(got.get("queue-balance"), text)
        cls.OPTIONS.fcheck(got)
        return cls(num, total, "queue-bypass" in got, "queue-cpu-fanout" in got)

    def _words(self, dash: str, label: bool) -> str:
        if self.total > 1:
            text = f"{dash}{'balance' if label else 'queue-balance'} {self.num}:{self.num + self.total - 1}"
        else:
            text = f"{dash}{'num' if label else 'queue-num'} {self.num}"
        if self.bypass:
            text += f" {dash}{'bypass' if label else 'queue-bypass'}"
        if self.fanout:
            text += f" {dash}{'cpu-fanout' if label else 'queue-cpu-fanout'}"
        return text

    def save(self) -> str:
        return "-j NFQUEUE " + self._words("--", False)

    def listing(self, numeric: bool = True) -> str:
        return "NFQUEUE " + self._words("", True)

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        changed(ctx, "NFQUEUE", f"queue {self.num} has no listener: " + ("bypassed" if self.bypass else "dropped"))
        return NF_ACCEPT if self.bypass else NF_DROP
