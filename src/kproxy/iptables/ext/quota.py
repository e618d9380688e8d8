"""The quota match: matches until the rule has seen its number of bytes, then stops (xt_quota).
Each rule keeps its own remaining count."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import CUSTOM, XTOPT_INVERT, XTOPT_MAND, XtCall, XtOpt, XtOptions
from kproxy.iptables.xtutil import c_strtoul
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

U64 = 0xFFFFFFFFFFFFFFFF


def parse_u64(call: XtCall) -> int:
    """XTTYPE_UINT64: one base-0 number."""
    got = c_strtoul(call.arg)
    if got is None or got[1] or got[0] > U64:
        raise ExtensionError(f"{call.ext}: bad value for option \"--{call.opt}\", or out of range (0-{U64}).\n")
    return got[0]


@register_match
class QuotaMatch(Match):
    name = "quota"
    OPTIONS = XtOptions("quota", XtOpt("quota", CUSTOM, XTOPT_MAND | XTOPT_INVERT, parse=parse_u64))

    def __init__(self, quota: int, invert: bool) -> None:
        self.quota, self.invert, self.left = quota, invert, quota
        self.stateful = True

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> QuotaMatch:
        got = cls.OPTIONS.parse_all(opts)
        return cls(got.get("quota"), got.invert("quota"))

    def save(self) -> str:
        return f"-m quota {'! ' if self.invert else ''}--quota {self.quota}"

    def listing(self, numeric: bool = True) -> str:
        return f"quota: {self.quota} bytes"

    def state_json(self) -> int:
        return self.left

    def load_state(self, data: int) -> None:
        self.left = int(data)

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if self.left >= pkt.length:
            self.left -= pkt.length
            return not self.invert
        self.left = 0
        return self.invert
