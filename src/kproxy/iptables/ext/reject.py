"""The REJECT target: drop the packet and answer with an ICMP error or a TCP reset."""

from __future__ import annotations

from typing import Any

from kproxy.iptables.extension import ExtensionError, Opt, RuleContext, Target, register_target
from kproxy.packet import NF_DROP, Packet

KINDS4 = {"icmp-net-unreachable": "icmp-net-unreachable", "net-unreach": "icmp-net-unreachable",
          "icmp-host-unreachable": "icmp-host-unreachable", "host-unreach": "icmp-host-unreachable",
          "icmp-proto-unreachable": "icmp-proto-unreachable", "proto-unreach": "icmp-proto-unreachable",
          "icmp-port-unreachable": "icmp-port-unreachable", "port-unreach": "icmp-port-unreachable",
          "icmp-net-prohibited": "icmp-net-prohibited", "net-prohib": "icmp-net-prohibited",
          "icmp-host-prohibited": "icmp-host-prohibited", "host-prohib": "icmp-host-prohibited",
          "icmp-admin-prohibited": "icmp-admin-prohibited", "admin-prohib": "icmp-admin-prohibited",
          "tcp-reset": "tcp-reset"}
KINDS6 = {"icmp6-no-route": "icmp6-no-route", "no-route": "icmp6-no-route",
          "icmp6-adm-prohibited": "icmp6-adm-prohibited", "adm-prohibited": "icmp6-adm-prohibited",
          "icmp6-addr-unreachable": "icmp6-addr-unreachable", "addr-unreach": "icmp6-addr-unreachable",
          "icmp6-port-unreachable": "icmp6-port-unreachable", "port-unreach": "icmp6-port-unreachable",
          "icmp6-policy-fail": "icmp6-policy-fail", "icmp6-reject-route": "icmp6-reject-route",
          "tcp-reset": "tcp-reset"}


@register_target
class RejectTarget(Target):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "REJECT"
    OPTIONS = {"reject-with": 1}
    HOOKS = ("INPUT", "FORWARD", "OUTPUT")
    TABLES = ("filter", "mangle", "raw", "security")

    def __init__(self, kind: str) -> None:
        self.kind = kind

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> RejectTarget:
        kinds = KINDS4 if family == 4 else KINDS6
        kind = "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"
        if opts:
            word = opts[-1].values[0]
            if word not in kinds:
                raise ExtensionError(f"unknown reject type \"{word}\"")
            kind = kinds[word]
        if kind == "tcp-reset" and (rule.proto != 6 or rule.proto_inv):
            raise ExtensionError("TCP_RESET invalid for non-tcp")
        return cls(kind)

    def save(self) -> str:
        return f"-j REJECT --reject-with {self.kind}"

    def listing(self, numeric: bool = True) -> str:
        return f"reject-with {self.kind}"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        ctx.state.rejected_with = self.kind
        return NF_DROP
