"""The multiport match (revision 1): up to 15 port slots (a range takes two), source, destination or either."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, Xlate, register_match
from kproxy.iptables.xtoptions import CUSTOM, XTOPT_INVERT, XtCall, XtOpt, XtOptions
from kproxy.iptables.xtutil import parse_port, port_name, proto_word
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

PROTOS_WITH_PORTS = {6: "tcp", 17: "udp", 132: "sctp", 33: "dccp", 136: "udplite"}
KINDS = {"source-ports": "sports", "destination-ports": "dports", "ports": "ports"}
MAX_SLOTS = 15   # XT_MULTI_PORTS


def check_proto(rule: Rule) -> None:
    """libxt_multiport's check, made when an option is parsed."""
    if rule.proto == 0:
        raise ExtensionError("multiport needs `-p tcp', `-p udp', `-p udplite', `-p sctp' or `-p dccp'")
    if rule.proto_inv or rule.proto not in PROTOS_WITH_PORTS:
        raise ExtensionError("multiport only works with TCP, UDP, UDPLITE, SCTP and DCCP")


def parse_option(call: XtCall) -> list[tuple[int, int]]:
    """An option's ports, after the protocol check libxt_multiport makes for each option."""
    check_proto(call.rule)
    return parse_ports(call.arg, call.rule.proto)


def parse_ports(text: str, proto: int) -> list[tuple[int, int]]:
    """Comma-separated ports and ``lo:hi`` ranges (lo < hi), refusing more than 15 slots."""
    out: list[tuple[int, int]] = []
    slots = 0
    for item in text.split(","):
        lo_s, colon, hi_s = item.partition(":")
        if slots >= MAX_SLOTS or (colon and slots == MAX_SLOTS - 1):
            raise ExtensionError("too many ports specified")
        lo = parse_port(lo_s, proto)
        if not colon:
            out.append((lo, lo))
            slots += 1
            continue
        hi = parse_port(hi_s, proto)
        if lo >= hi:
            raise ExtensionError("invalid portrange specified")
        out.append((lo, hi))
        slots += 2
    return out


@register_match
class MultiportMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "multiport"
    OPTIONS = XtOptions(
        "multiport",
        *(XtOpt(n, CUSTOM, XTOPT_INVERT, id=i, excl=tuple(o for o in KINDS if o != i), parse=parse_option)
          for i in KINDS for n in (i, KINDS[i])),
    )

    def __init__(self, kind: str, ports: list[tuple[int, int]], invert: bool, proto: int) -> None:
        self.kind, self.ports, self.invert, self.proto = kind, ports, invert, proto

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> MultiportMatch:
        got = cls.OPTIONS.parse(opts, family, rule)
        if not got.values:
            raise ExtensionError("multiport expection an option")
        cls.OPTIONS.fcheck(got)
        key = got.order[0]
        return cls(KINDS[key], got.get(key), got.invert(key), rule.proto)

    def _ports_text(self, numeric: bool = True) -> str:
        def one(lo: int, hi: int) -> str:
            a = port_name(lo, self.proto, numeric)
            return a if lo == hi else f"{a}:{port_name(hi, self.proto, numeric)}"

        return ",".join(one(lo, hi) for lo, hi in self.ports)

    def save(self) -> str:
        return f"-m multiport {'! ' if self.invert else ''}--{self.kind} {self._ports_text()}"

    def listing(self, numeric: bool = True) -> str:
        return f"multiport {self.kind} {' !' if self.invert else ''}{self._ports_text(numeric)}"

    def translate(self, xl: Xlate) -> str:
        """multiport_xlate: a port, or an anonymous set; ``--ports`` as source . destination pairs
        where the other side is any port."""
        p = proto_word(xl.proto)
        neq = "!= " if self.invert else ""

        def one(lo: int, hi: int) -> str:
            return str(lo) if lo == hi else f"{lo}-{hi}"

        if self.kind == "ports":
            # Each port value on its own (a range's two ends), and no ``!=``: as the tool does.
            values = [v for lo, hi in self.ports for v in ((lo,) if lo == hi else (lo, hi))]
            pairs = ", ".join(f"0-65535 . {v}, {v} . 0-65535" for v in values)
            return f"{p} sport . {p} dport {{ {pairs} }}"
        key = f"{p} {self.kind[:-1]}"
        if len(self.ports) == 1:
            return f"{key} {neq}{one(*self.ports[0])}"
        return f"{key} {neq}{{ {', '.join(one(lo, hi) for lo, hi in self.ports)} }}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        # xt_multiport relies on the rule's -p (checked when the rule is added) and reads the ports.
        ports = self.ports
        if self.kind == "dports":
            v = pkt.dport
            hit = any(lo <= v <= hi for lo, hi in ports)
        elif self.kind == "sports":
            v = pkt.sport
            hit = any(lo <= v <= hi for lo, hi in ports)
        else:
            s, d = pkt.sport, pkt.dport
            hit = any(lo <= s <= hi or lo <= d <= hi for lo, hi in ports)
        return hit != self.invert
