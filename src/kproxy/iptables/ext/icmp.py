"""The icmp and icmp6 matches (--icmp-type / --icmpv6-type, by name or number, with a code)."""

from __future__ import annotations

from typing import Any

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.packet import ICMP, ICMPV6, Packet

# (name, type, code_min, code_max), as libxt_icmp's table.
ICMP_TYPES = [
    ("any", 0xFF, 0, 0xFF), ("echo-reply", 0, 0, 0xFF), ("destination-unreachable", 3, 0, 0xFF),
    ("network-unreachable", 3, 0, 0), ("host-unreachable", 3, 1, 1), ("protocol-unreachable", 3, 2, 2),
    ("port-unreachable", 3, 3, 3), ("fragmentation-needed", 3, 4, 4), ("source-route-failed", 3, 5, 5),
    ("network-unknown", 3, 6, 6), ("host-unknown", 3, 7, 7), ("network-prohibited", 3, 9, 9),
    ("host-prohibited", 3, 10, 10), ("TOS-network-unreachable", 3, 11, 11), ("TOS-host-unreachable", 3, 12, 12),
    ("communication-prohibited", 3, 13, 13), ("host-precedence-violation", 3, 14, 14),
    ("precedence-cutoff", 3, 15, 15), ("source-quench", 4, 0, 0xFF), ("redirect", 5, 0, 0xFF),
    ("network-redirect", 5, 0, 0), ("host-redirect", 5, 1, 1), ("TOS-network-redirect", 5, 2, 2),
    ("TOS-host-redirect", 5, 3, 3), ("echo-request", 8, 0, 0xFF), ("router-advertisement", 9, 0, 0xFF),
    ("router-solicitation", 10, 0, 0xFF), ("time-exceeded", 11, 0, 0xFF), ("ttl-zero-during-transit", 11, 0, 0),
    ("ttl-zero-during-reassembly", 11, 1, 1), ("parameter-problem", 12, 0, 0xFF), ("ip-header-bad", 12, 0, 0),
    ("required-option-missing", 12, 1, 1), ("timestamp-request", 13, 0, 0xFF), ("timestamp-reply", 14, 0, 0xFF),
    ("address-mask-request", 17, 0, 0xFF), ("address-mask-reply", 18, 0, 0xFF),
]
ICMP6_TYPES = [
    ("destination-unreachable", 1, 0, 0xFF), ("no-route", 1, 0, 0), ("communication-prohibited", 1, 1, 1),
    ("address-unreachable", 1, 3, 3), ("port-unreachable", 1, 4, 4), ("packet-too-big", 2, 0, 0xFF),
    ("time-exceeded", 3, 0, 0xFF), ("parameter-problem", 4, 0, 0xFF), ("echo-request", 128, 0, 0xFF),
    ("echo-reply", 129, 0, 0xFF), ("router-solicitation", 133, 0, 0xFF), ("router-advertisement", 134, 0, 0xFF),
    ("neighbour-solicitation", 135, 0, 0xFF), ("neighbour-advertisement", 136, 0, 0xFF),
    ("redirect", 137, 0, 0xFF),
]


def parse_icmp_type(text: str, table: list[tuple[str, int, int, int]], what: str) -> tuple[int, int, int]:
    for name, t, lo, hi in table:
        if name == text:
            return t, lo, hi
    matches = [e for e in table if e[0].startswith(text)]
    if len(matches) == 1:
        return matches[0][1], matches[0][2], matches[0][3]
    if len(matches) > 1:
        raise ExtensionError(f"Ambiguous {what} type `{text}': `{matches[0][0]}' or `{matches[1][0]}'?")
    t_s, slash, c_s = text.partition("/")
    try:
        t = int(t_s)
        lo = hi = int(c_s) if slash else 0
        if not slash:
            lo, hi = 0, 0xFF
    except ValueError:
        raise ExtensionError(f"Invalid {what} type `{text}'") from None
    if not 0 <= t <= 255:
        raise ExtensionError(f"Invalid {what} type `{t_s}'")
    return t, lo, hi


class IcmpBase(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    PROTO = ICMP
    TABLE = ICMP_TYPES
    OPT = "icmp-type"
    WHAT = "ICMP"

    def __init__(self, t: int, lo: int, hi: int, invert: bool) -> None:
        self.type, self.code_min, self.code_max, self.invert = t, lo, hi, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> IcmpBase:
        if not opts:
            return cls(0xFF, 0, 0xFF, False) if cls.PROTO == ICMP else cls(0, 0, 0xFF, False)
        o = opts[-1]
        t, lo, hi = parse_icmp_type(o.values[0], cls.TABLE, cls.WHAT)
        return cls(t, lo, hi, o.invert)

    def _type_text(self) -> str:
        if self.type == 0xFF and self.PROTO == ICMP:
            return "any"
        text = str(self.type)
        if (self.code_min, self.code_max) != (0, 0xFF):
            text += f"/{self.code_min}"
        return text

    def save(self) -> str:
        return f"-m {self.name} {'! ' if self.invert else ''}--{self.OPT} {self._type_text()}"

    def listing(self, numeric: bool = True) -> str:
        bang = "!" if self.invert else ""
        if not numeric:
            for name, t, lo, hi in self.TABLE:
                if (t, lo, hi) == (self.type, self.code_min, self.code_max):
                    return f"{self.name} {bang}{name}"
        word = "icmp" if self.PROTO == ICMP else "ipv6-icmp"
        text = f"{word}{' !' if self.invert else ''}type {self.type}"
        if (self.code_min, self.code_max) != (0, 0xFF):
            text += f" code {self.code_min}" if self.code_min == self.code_max else \
                f" codes {self.code_min}-{self.code_max}"
        return text

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if pkt.proto != self.PROTO:
            return False
        hit = (self.type == 0xFF and self.PROTO == ICMP) or (
            pkt.icmp_type == self.type and self.code_min <= pkt.icmp_code <= self.code_max)
        return hit != self.invert


@register_match
class IcmpMatch(IcmpBase):
    name = "icmp"
    OPTIONS = {"icmp-type": 1}


@register_match
class Icmp6Match(IcmpBase):
    name = "icmp6"
    PROTO = ICMPV6
    TABLE = ICMP6_TYPES
    OPT = "icmpv6-type"
    WHAT = "ICMPv6"
    OPTIONS = {"icmpv6-type": 1}
