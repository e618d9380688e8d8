"""The REJECT target: drop the packet and answer with an ICMP error or a TCP reset.

The reject type is looked up as libxt_REJECT does: the first entry whose name or alias starts with
the given text, case-insensitively (so ``icmp-net`` is icmp-net-unreachable). The kernel's target
is filter-only, at INPUT, FORWARD and OUTPUT (and user chains), and refuses ``tcp-reset`` unless
the rule says ``-p tcp``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.extension import ExtensionError, Opt, RuleContext, Target, Xlate, register_target
from kproxy.iptables.xtoptions import STRING, XtOpt, XtOptions
from kproxy.packet import NF_DROP, TCP, Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

# (name, alias), in libxt_REJECT's table order.
KINDS4 = [("icmp-net-unreachable", "net-unreach"), ("icmp-host-unreachable", "host-unreach"),
          ("icmp-proto-unreachable", "proto-unreach"), ("icmp-port-unreachable", "port-unreach"),
          ("icmp-net-prohibited", "net-prohib"), ("icmp-host-prohibited", "host-prohib"),
          ("tcp-reset", "tcp-rst"), ("icmp-admin-prohibited", "admin-prohib")]
KINDS6 = [("icmp6-no-route", "no-route"), ("icmp6-adm-prohibited", "adm-prohibited"),
          ("icmp6-addr-unreachable", "addr-unreach"), ("icmp6-port-unreachable", "port-unreach"),
          ("tcp-reset", "tcp-reset"), ("icmp6-policy-fail", "policy-fail"),
          ("icmp6-reject-route", "reject-route")]

# nft's names for the ICMP errors (the port-unreachable defaults have none: plain ``reject``).
XLATE_ICMP = {"icmp-net-unreachable": "net-unreachable", "icmp-host-unreachable": "host-unreachable",
              "icmp-proto-unreachable": "prot-unreachable", "icmp-net-prohibited": "net-prohibited",
              "icmp-host-prohibited": "host-prohibited", "icmp-admin-prohibited": "admin-prohibited",
              "icmp6-no-route": "no-route", "icmp6-adm-prohibited": "admin-prohibited",
              "icmp6-addr-unreachable": "addr-unreachable", "icmp6-policy-fail": "policy-fail",
              "icmp6-reject-route": "reject-route"}


def reject_kind(text: str, family: int) -> str:
    word = text.lower()
    for name, alias in KINDS4 if family == 4 else KINDS6:
        if name.startswith(word) or alias.startswith(word):
            return name
    raise ExtensionError(f"unknown reject type \"{text}\"")


@register_target
class RejectTarget(Target):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "REJECT"
    OPTIONS = XtOptions("REJECT", XtOpt("reject-with", STRING))
    HOOKS = ("INPUT", "FORWARD", "OUTPUT")
    TABLES = ("filter",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> RejectTarget:
        text = cls.OPTIONS.parse(opts).get("reject-with")
        if text is None:
            return cls("icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable")
        return cls(reject_kind(text, family))

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        """reject_tg_check: a TCP reset only for rules that match TCP (and not ``! -p tcp``)."""
        return self.kind == "tcp-reset" and (rule.proto != TCP or rule.proto_inv)

    def save(self) -> str:
        return f"-j REJECT --reject-with {self.kind}"

    def listing(self, numeric: bool = True) -> str:
        return f"reject-with {self.kind}"

    def translate(self, xl: Xlate) -> str:
        """reject_tg_xlate: the default port-unreachable is plain ``reject``."""
        if self.kind == "tcp-reset":
            return "reject with tcp reset"
        word = XLATE_ICMP.get(self.kind)
        if word is None:
            return "reject"
        return f"reject with {'icmp' if xl.family == 4 else 'icmpv6'} type {word}"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        ctx.state.rejected_with = self.kind
        return NF_DROP
