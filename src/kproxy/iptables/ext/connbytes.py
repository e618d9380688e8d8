"""The connbytes match: a connection's packet or byte count (or average packet size) so far, in one
direction or both, within a range. Read from the connection's accounting (``Conn.acct``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import (
    CUSTOM,
    STRING,
    XTOPT_INVERT,
    XTOPT_MAND,
    XtCall,
    XtOpt,
    XtOptions,
    xtopt_uint_range,
)
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

U64 = 0xFFFFFFFFFFFFFFFF
DIRS = ("original", "reply", "both")
MODES = ("packets", "bytes", "avgpkt")


def parse_range(call: XtCall) -> tuple[int, int, int]:
    """XTTYPE_UINT64RC, and how many numbers were given (one means "from here on")."""
    lo, hi = xtopt_uint_range(call.arg, call.ext, call.opt, U64)
    return lo, hi, 1 if ":" not in call.arg else 2


@register_match
class ConnbytesMatch(Match):
    SHAREABLE = True
    name = "connbytes"
    NEEDS_CONNTRACK = True
    OPTIONS = XtOptions("connbytes", XtOpt("connbytes", CUSTOM, XTOPT_MAND | XTOPT_INVERT, parse=parse_range),
                        XtOpt("connbytes-dir", STRING, XTOPT_MAND), XtOpt("connbytes-mode", STRING, XTOPT_MAND))

    def __init__(self, lo: int, hi: int, direction: str, mode: str) -> None:
        self.lo, self.hi, self.direction, self.mode = lo, hi, direction, mode   # lo > hi: inverted

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> ConnbytesMatch:
        got = cls.OPTIONS.parse(opts)
        direction, mode = got.get("connbytes-dir"), got.get("connbytes-mode")
        if direction is not None and direction not in DIRS:
            raise ExtensionError(f"Unknown --connbytes-dir `{direction}'")
        if mode is not None and mode not in MODES:
            raise ExtensionError(f"Unknown --connbytes-mode `{mode}'")
        cls.OPTIONS.fcheck(got)
        lo, hi, n = got.get("connbytes")
        hi = hi if n == 2 else U64
        if got.invert("connbytes"):
            lo, hi = hi, lo
        return cls(lo, hi, direction, mode)

    def _range(self, prefix: str) -> str:
        lo, hi, bang = (self.hi, self.lo, "! ") if self.lo > self.hi else (self.lo, self.hi, "")
        return f"{bang}{prefix}connbytes {lo}" + (f":{hi}" if hi and hi < U64 else "")

    def save(self) -> str:
        return f"-m connbytes {self._range('--')} --connbytes-mode {self.mode} --connbytes-dir {self.direction}"

    def listing(self, numeric: bool = True) -> str:
        return f"{self._range('')} connbytes mode {self.mode} connbytes direction {self.direction}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        """connbytes_mt: no connection never matches; the count is compared with from and to."""
        ct = pkt.ct
        if ct is None:
            return False
        opk, rpk, oby, rby = ct.acct
        pk = {"original": opk, "reply": rpk, "both": opk + rpk}[self.direction]
        by = {"original": oby, "reply": rby, "both": oby + rby}[self.direction]
        what = pk if self.mode == "packets" else by if self.mode == "bytes" else (by // pk if pk else 0)
        if self.hi >= self.lo:
            return self.lo <= what <= self.hi
        return what < self.hi or what > self.lo
