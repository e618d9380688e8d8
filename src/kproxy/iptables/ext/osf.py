"""The osf match: passive OS fingerprinting of TCP SYNs against fingerprints loaded with nfnl_osf.
The emulated node has no fingerprint table, so no packet's OS can be told: the trace says so."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.ext.unknown import cannot_know
from kproxy.iptables.extension import Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import STRING, UINT32, XTOPT_INVERT, XTOPT_MAND, XtOpt, XtOptions
from kproxy.packet import TCP, Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule


@register_match
class OsfMatch(Match):
    SHAREABLE = True
    name = "osf"
    FAMILIES = (4,)
    HOOKS = ("PREROUTING", "INPUT", "FORWARD")
    OPTIONS = XtOptions("osf", XtOpt("genre", STRING, XTOPT_MAND | XTOPT_INVERT, size=32),
                        XtOpt("ttl", UINT32, max=2), XtOpt("log", UINT32, max=2))

    def __init__(self, genre: str, invert: bool, ttl: int | None, log: int | None) -> None:
        self.genre, self.invert, self.ttl, self.log = genre, invert, ttl, log

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> OsfMatch:
        got = cls.OPTIONS.parse_all(opts)
        return cls(got.get("genre"), got.invert("genre"), got.get("ttl"), got.get("log"))

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return rule.proto != TCP or rule.proto_inv

    def save(self) -> str:
        text = f"-m osf {'! ' if self.invert else ''}--genre {self.genre}"
        if self.ttl is not None:
            text += f" --ttl {self.ttl}"
        return text + (f" --log {self.log}" if self.log is not None else "")

    def listing(self, numeric: bool = True) -> str:
        return f"OS fingerprint match {'! ' if self.invert else ''}{self.genre}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return cannot_know(ctx, "osf", "the sender's operating system (no fingerprints are loaded)")
