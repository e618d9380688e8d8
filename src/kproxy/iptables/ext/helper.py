"""The helper match: packets of connections expected by a conntrack helper (ftp, sip, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.extension import Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import STRING, XTOPT_INVERT, XTOPT_MAND, XtOpt, XtOptions
from kproxy.iptables.xtutil import save_string
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule


@register_match
class HelperMatch(Match):
    SHAREABLE = True
    name = "helper"
    NEEDS_CONNTRACK = True
    OPTIONS = XtOptions("helper", XtOpt("helper", STRING, XTOPT_INVERT | XTOPT_MAND, size=30))

    def __init__(self, helper: str, invert: bool) -> None:
        self.helper, self.invert = helper, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> HelperMatch:
        got = cls.OPTIONS.parse_all(opts)
        return cls(got.get("helper"), got.invert("helper"))

    def save(self) -> str:
        return f"-m helper {'! ' if self.invert else ''}--helper {save_string(self.helper)}"

    def listing(self, numeric: bool = True) -> str:
        return f"helper match {'! ' if self.invert else ''}\"{self.helper}\""

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        # helper_mt looks at the helper of the connection's master (an expected, RELATED one): the
        # emulated conntrack sets up no expectations, so that is a connection's ``master_helper``
        # when a caller recorded one; without it the answer is ``invert``. "" matches any helper.
        helper = getattr(pkt.ct, "master_helper", "") if pkt.ct is not None else ""
        if not helper:
            return self.invert
        return (not self.helper or helper == self.helper) != self.invert
