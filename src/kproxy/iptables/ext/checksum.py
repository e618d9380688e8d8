"""The CHECKSUM target (mangle only): fill in a missing checksum. The model's packets carry no
checksum, so it changes nothing the emulator can see."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.extension import XT_CONTINUE, Opt, RuleContext, Target, register_target
from kproxy.iptables.xtoptions import NONE, XTOPT_MAND, XtOpt, XtOptions
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule


@register_target
class ChecksumTarget(Target):
    SHAREABLE = True
    name = "CHECKSUM"
    TABLES = ("mangle",)
    OPTIONS = XtOptions("CHECKSUM", XtOpt("checksum-fill", NONE, XTOPT_MAND))

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> ChecksumTarget:
        cls.OPTIONS.parse_all(opts)
        return cls()

    def save(self) -> str:
        return "-j CHECKSUM --checksum-fill"

    def listing(self, numeric: bool = True) -> str:
        return "CHECKSUM fill"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        return XT_CONTINUE
