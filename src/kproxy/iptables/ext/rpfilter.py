"""The rpfilter match (raw and mangle PREROUTING): would the reply to this packet leave by the
interface it came in on (strict) or by any interface (--loose)? Decided on the node's routes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.extension import Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import NONE, XtOpt, XtOptions
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

FLAGS = ("loose", "validmark", "accept-local", "invert")


@register_match
class RpfilterMatch(Match):
    SHAREABLE = True
    name = "rpfilter"
    TABLES = ("raw", "mangle")
    HOOKS = ("PREROUTING",)
    OPTIONS = XtOptions("rpfilter", *(XtOpt(f, NONE) for f in FLAGS))

    def __init__(self, flags: frozenset[str]) -> None:
        self.flags = flags

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> RpfilterMatch:
        return cls(frozenset(cls.OPTIONS.parse_all(opts).seen()))

    def _words(self, prefix: str) -> str:
        return "".join(f" {prefix}{f}" for f in FLAGS if f in self.flags)

    def save(self) -> str:
        return "-m rpfilter" + self._words("--")

    def listing(self, numeric: bool = True) -> str:
        return "rpfilter" + self._words("")

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        # rpfilter_mt: local packets pass; a reply route to the source must exist (strict: leaving
        # by the interface the packet came in on); "local" routes fail unless --accept-local.
        invert = "invert" in self.flags
        if pkt.local:
            return True
        back = ctx.node.route(pkt.family, pkt.src)
        if back.type == "local":
            ok = "accept-local" in self.flags
        elif back.type != "unicast":
            ok = False
        else:
            ok = "loose" in self.flags or back.dev == ctx.state.in_dev
        return ok != invert
