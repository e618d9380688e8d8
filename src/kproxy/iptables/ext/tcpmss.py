"""The tcpmss match and the TCPMSS target: the MSS option of TCP SYN packets.

The packet's ``tcp_mss`` is its MSS option (0: none sent). The match on a packet without the option
matches only when inverted (tcpmss_mt returns ``invert``); TCPMSS --clamp-mss-to-pmtu lowers the
option to the route's MTU minus the headers, --set-mss to at most the given value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.ext.unknown import changed
from kproxy.iptables.extension import (
    XT_CONTINUE,
    ExtensionError,
    Match,
    Opt,
    RuleContext,
    Target,
    builtin_chain_outside,
    register_match,
    register_target,
)
from kproxy.iptables.xtoptions import NONE, UINT16, UINT16RC, XTOPT_INVERT, XTOPT_MAND, XtOpt, XtOptions
from kproxy.packet import SYN, TCP, Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

CLAMP = 0xFFFF           # XT_TCPMSS_CLAMP_PMTU
TCPMSS_HOOKS = ("FORWARD", "OUTPUT", "POSTROUTING")


def tcp_only(rule: Rule) -> bool:
    """What xt_tcpmss, the TCPMSS target, SYNPROXY and TCPOPTSTRIP require of the rule: ``-p tcp``,
    not inverted."""
    return rule.proto == TCP and not rule.proto_inv


@register_match
class TcpmssMatch(Match):
    SHAREABLE = True
    name = "tcpmss"
    OPTIONS = XtOptions("tcpmss", XtOpt("mss", UINT16RC, XTOPT_INVERT | XTOPT_MAND))

    def __init__(self, lo: int, hi: int, invert: bool) -> None:
        self.lo, self.hi, self.invert = lo, hi, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> TcpmssMatch:
        got = cls.OPTIONS.parse(opts)
        lo, hi = got.get("mss", (0, 0))
        if hi < lo:
            raise ExtensionError("tcpmss: invalid range given")
        cls.OPTIONS.fcheck(got)
        return cls(lo, hi, got.invert("mss"))

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return not tcp_only(rule)

    def _range(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi}"

    def save(self) -> str:
        return f"-m tcpmss {'! ' if self.invert else ''}--mss {self._range()}"

    def listing(self, numeric: bool = True) -> str:
        return f"tcpmss match {'!' if self.invert else ''}{self._range()}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if not pkt.tcp_mss:
            return self.invert
        return (self.lo <= pkt.tcp_mss <= self.hi) != self.invert


@register_target
class TcpmssTarget(Target):
    SHAREABLE = True
    name = "TCPMSS"
    OPTIONS = XtOptions("TCPMSS", XtOpt("set-mss", UINT16, max=0xFFFF - 20), XtOpt("clamp-mss-to-pmtu", NONE))
    OPTIONS6 = XtOptions("TCPMSS", XtOpt("set-mss", UINT16, max=0xFFFF - 40), XtOpt("clamp-mss-to-pmtu", NONE))

    def __init__(self, mss: int) -> None:
        self.mss = mss

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> TcpmssTarget:
        table = cls.OPTIONS if family == 4 else cls.OPTIONS6
        got = table.parse(opts, family)
        if not got.seen():
            raise ExtensionError("TCPMSS target: At least one parameter is required")
        mss = 0
        for key in got.order:       # each option writes the one field: the last one given wins
            mss = CLAMP if key == "clamp-mss-to-pmtu" else got.get("set-mss")
        return cls(mss)

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        # The target's protocol is tcp; clamping needs the route, so only where one was chosen. (Under
        # iptables-nft the kernel skips its check for a SYN match.)
        return not tcp_only(rule) or (self.mss == CLAMP and builtin_chain_outside(chain, TCPMSS_HOOKS))

    def save(self) -> str:
        return "-j TCPMSS " + ("--clamp-mss-to-pmtu" if self.mss == CLAMP else f"--set-mss {self.mss}")

    def listing(self, numeric: bool = True) -> str:
        return "TCPMSS " + ("clamp to PMTU" if self.mss == CLAMP else f"set {self.mss}")

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        if pkt.proto != TCP or not pkt.tcp_flags & SYN:
            return XT_CONTINUE
        limit = self.mss
        if limit == CLAMP:
            mtu = route_mtu(pkt, ctx)
            limit = mtu - (40 if pkt.family == 4 else 60)
        old = pkt.tcp_mss or (536 if pkt.family == 4 else 1220)    # the RFC default when none was sent
        if old > limit:
            pkt.tcp_mss = limit
            changed(ctx, "TCPMSS", f"MSS {old} -> {limit}")
        return XT_CONTINUE


def route_mtu(pkt: Packet, ctx: RuleContext) -> int:
    """The MTU of the interface the packet leaves by (1500 when the node does not say)."""
    iface = ctx.node.interfaces.get(ctx.state.out_dev) if ctx.state.out_dev else None
    return int(getattr(iface, "mtu", 0) or 1500)
