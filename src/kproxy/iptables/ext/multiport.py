"""The multiport match: up to 15 ports or ranges, source, destination or either."""

from __future__ import annotations

from typing import Any

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtutil import parse_port_range, port_name
from kproxy.packet import Packet

PROTOS_WITH_PORTS = {6: "tcp", 17: "udp", 132: "sctp", 33: "dccp", 136: "udplite"}
FLAGS = {"sports": "sports", "source-ports": "sports", "dports": "dports", "destination-ports": "dports",
         "ports": "ports"}


@register_match
class MultiportMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "multiport"
    OPTIONS = {k: 1 for k in FLAGS}

    def __init__(self, kind: str, ports: list[tuple[int, int]], invert: bool, proto: int) -> None:
        self.kind, self.ports, self.invert, self.proto = kind, ports, invert, proto

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> MultiportMatch:
        if rule.proto not in PROTOS_WITH_PORTS or rule.proto_inv:
            raise ExtensionError("multiport needs `-p tcp', `-p udp', `-p udplite', `-p sctp' or `-p dccp'")
        if len(opts) != 1:
            raise ExtensionError("multiport: exactly one of --sports, --dports or --ports is required" if not opts
                                 else "multiport can only have one option")
        o = opts[0]
        ports = [parse_port_range(p, rule.proto) for p in o.values[0].split(",")]
        if sum(1 if lo == hi else 2 for lo, hi in ports) > 15:
            raise ExtensionError("too many ports specified")
        return cls(FLAGS[o.name], ports, o.invert, rule.proto)

    def _ports_text(self, numeric: bool = True) -> str:
        def one(lo: int, hi: int) -> str:
            a = port_name(lo, self.proto, numeric)
            return a if lo == hi else f"{a}:{port_name(hi, self.proto, numeric)}"

        return ",".join(one(lo, hi) for lo, hi in self.ports)

    def save(self) -> str:
        return f"-m multiport {'! ' if self.invert else ''}--{self.kind} {self._ports_text()}"

    def listing(self, numeric: bool = True) -> str:
        return f"multiport {self.kind} {' !' if self.invert else ''}{self._ports_text(numeric)}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if pkt.proto != self.proto:
            return False
        values = {"sports": (pkt.sport,), "dports": (pkt.dport,), "ports": (pkt.sport, pkt.dport)}[self.kind]
        hit = any(lo <= v <= hi for v in values for lo, hi in self.ports)
        return hit != self.invert
