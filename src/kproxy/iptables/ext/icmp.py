"""The icmp and icmp6 matches (--icmp-type / --icmpv6-type, by name, number, number/code or number/lo:hi).

Both stay xt matches under iptables-nft 1.8.9, so the kernel checks -p (kernel_proto) and
``icmp_type_code_match`` decides: type 255 is ``any`` for IPv4 only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, Xlate, register_match
from kproxy.iptables.xtoptions import CUSTOM, XTOPT_INVERT, XTOPT_MAND, XtOpt, XtOptions
from kproxy.iptables.xtutil import c_strtoul
from kproxy.packet import ICMP, ICMPV6, Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

Entry = tuple[str, int, int, int]   # name, type, code_min, code_max (libxtables' tables, in their order)
ICMP_TYPES: list[Entry] = [
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
ICMP6_TYPES: list[Entry] = [
    ("destination-unreachable", 1, 0, 0xFF), ("no-route", 1, 0, 0), ("communication-prohibited", 1, 1, 1),
    ("beyond-scope", 1, 2, 2), ("address-unreachable", 1, 3, 3), ("port-unreachable", 1, 4, 4),
    ("failed-policy", 1, 5, 5), ("reject-route", 1, 6, 6), ("packet-too-big", 2, 0, 0xFF),
    ("time-exceeded", 3, 0, 0xFF), ("ttl-zero-during-transit", 3, 0, 0), ("ttl-zero-during-reassembly", 3, 1, 1),
    ("parameter-problem", 4, 0, 0xFF), ("bad-header", 4, 0, 0), ("unknown-header-type", 4, 1, 1),
    ("unknown-option", 4, 2, 2), ("echo-request", 128, 0, 0xFF), ("echo-reply", 129, 0, 0xFF),
    ("router-solicitation", 133, 0, 0xFF), ("router-advertisement", 134, 0, 0xFF),
    ("neighbour-solicitation", 135, 0, 0xFF), ("neighbor-solicitation", 135, 0, 0xFF),
    ("neighbour-advertisement", 136, 0, 0xFF), ("neighbor-advertisement", 136, 0, 0xFF),
    ("redirect", 137, 0, 0xFF),
]


# nft's names for the types (what its icmp_type and icmpv6_type print).
NFT_ICMP = {0: "echo-reply", 3: "destination-unreachable", 4: "source-quench", 5: "redirect", 8: "echo-request",
            9: "router-advertisement", 10: "router-solicitation", 11: "time-exceeded", 12: "parameter-problem",
            13: "timestamp-request", 14: "timestamp-reply", 15: "info-request", 16: "info-reply",
            17: "address-mask-request", 18: "address-mask-reply"}
NFT_ICMP6 = {1: "destination-unreachable", 2: "packet-too-big", 3: "time-exceeded", 4: "parameter-problem",
             128: "echo-request", 129: "echo-reply", 130: "mld-listener-query", 131: "mld-listener-report",
             132: "mld-listener-done", 133: "nd-router-solicit", 134: "nd-router-advert",
             135: "nd-neighbor-solicit", 136: "nd-neighbor-advert", 137: "nd-redirect", 138: "router-renumbering",
             141: "ind-neighbor-solicit", 142: "ind-neighbor-advert", 143: "mld2-listener-report"}


def _byte(text: str) -> tuple[int, str] | None:
    got = c_strtoul(text, 0)
    return got if got is not None and got[0] <= 0xFF else None


def parse_icmp_type(text: str, table: list[Entry], what: str) -> tuple[int, int, int]:
    """A type name (any unambiguous case-insensitive prefix) or ``type[/code[:code]]``."""
    found: Entry | None = None
    for entry in table:
        if entry[0].lower().startswith(text.lower()):
            if found is not None:
                raise ExtensionError(f"Ambiguous {what} type `{text}': `{found[0]}' or `{entry[0]}'?")
            found = entry
    if found is not None:
        return found[1], found[2], found[3]
    got = _byte(text)
    if got is None:
        raise ExtensionError(f"Unknown {what} type `{text}'")
    t, rest = got
    lo, hi = 0, 0xFF
    if rest.startswith(":"):
        raise ExtensionError(f"{what} type range not supported")
    if rest.startswith("/"):
        code = _byte(rest[1:])
        if code is None:
            raise ExtensionError(f"Unknown {what} code `{text}'")
        lo, rest = code
        hi = lo
        if rest.startswith(":"):
            code = _byte(rest[1:])
            if code is None:
                raise ExtensionError(f"Unknown {what} code `{text}'")
            hi, rest = code
    if rest:
        raise ExtensionError(f"unknown character {rest[0]}")
    return t, lo, hi


class IcmpBase(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    PROTO = ICMP
    TABLE = ICMP_TYPES
    OPT = "icmp-type"
    WHAT = "ICMP"
    WORD = "icmp"
    WORD_EXT = "icmp"     # the extension's own name (``-m icmpv6`` is an alias of icmp6)
    NFT_WORD = "icmp"
    NFT_NAMES = NFT_ICMP

    def __init__(self, t: int, lo: int, hi: int, invert: bool) -> None:
        self.type, self.code_min, self.code_max, self.invert = t, lo, hi, invert
        self.kernel_proto = self.PROTO   # an xt match: the kernel refuses another (or inverted) -p
        self.any = t == 0xFF and self.PROTO == ICMP

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> IcmpBase:
        got = cls.OPTIONS.parse_all(opts)
        t, lo, hi = got.get(cls.OPT)
        return cls(t, lo, hi, got.invert(cls.OPT))

    def _type_text(self) -> str:
        if self.any:
            return "any"
        text = str(self.type)
        if (self.code_min, self.code_max) != (0, 0xFF):
            text += f"/{self.code_min}"
        return text

    def save(self) -> str:
        return f"-m {self.WORD_EXT} {'! ' if self.invert else ''}--{self.OPT} {self._type_text()}"

    def listing(self, numeric: bool = True) -> str:
        bang = "!" if self.invert else ""
        if not numeric:
            for name, t, lo, hi in self.TABLE:
                if (t, lo, hi) == (self.type, self.code_min, self.code_max):
                    return f"{self.WORD} {bang}{name}"
        text = f"{self.WORD}{' !' if self.invert else ''}type {self.type}"
        if (self.code_min, self.code_max) != (0, 0xFF):
            text += f" code {self.code_min}" if self.code_min == self.code_max else \
                f" codes {self.code_min}-{self.code_max}"
        return text

    def translate(self, xl: Xlate) -> str | None:
        """A type with all its codes, by nft's name for it; a code or code range has no translation."""
        if self.any:
            return "ip protocol icmp"
        name = self.NFT_NAMES.get(self.type)
        if (self.code_min, self.code_max) != (0, 0xFF) or name is None or \
                not any(e[1:] == (self.type, 0, 0xFF) for e in self.TABLE):
            return None
        return f"{self.NFT_WORD} type {'!= ' if self.invert else ''}{name}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        hit = self.any or (pkt.icmp_type == self.type and self.code_min <= pkt.icmp_code <= self.code_max)
        return hit != self.invert


def icmp_options(ext: str, opt: str, table: list[Entry], what: str) -> XtOptions:
    """The one mandatory, invertible type option of icmp and icmp6."""
    return XtOptions(ext, XtOpt(opt, CUSTOM, XTOPT_INVERT | XTOPT_MAND,
                                parse=lambda call: parse_icmp_type(call.arg, table, what)))


@register_match
class IcmpMatch(IcmpBase):
    name = "icmp"
    OPTIONS = icmp_options("icmp", "icmp-type", ICMP_TYPES, "ICMP")


@register_match
class Icmp6Match(IcmpBase):
    name = "icmp6"
    PROTO = ICMPV6
    TABLE = ICMP6_TYPES
    OPT = "icmpv6-type"
    WHAT = "ICMPv6"
    WORD = "ipv6-icmp"
    WORD_EXT = "icmp6"
    NFT_WORD = "icmpv6"
    NFT_NAMES = NFT_ICMP6
    OPTIONS = icmp_options("icmp6", "icmpv6-type", ICMP6_TYPES, "ICMPv6")


@register_match
class Icmpv6Alias(Icmp6Match):
    """``-m icmpv6``: the same match, saved as ``-m icmp6``."""

    name = "icmpv6"
