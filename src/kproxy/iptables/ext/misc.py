"""Small header matches: iprange, mac, pkttype and length.

iprange, mac and pkttype stay xt matches under iptables-nft; mac is refused by the kernel outside
PREROUTING, INPUT and FORWARD (``kernel_refuses``).
"""

from __future__ import annotations

from typing import Any

from kproxy.iptables.extension import (
    ExtensionError,
    Match,
    Opt,
    RuleContext,
    builtin_chain_outside,
    register_match,
)
from kproxy.iptables.xtutil import (
    OptSpec,
    numeric_to_ip6addr,
    numeric_to_ipaddr,
    parse_ethermac,
    xtopt_fcheck,
    xtopt_parse,
    xtopt_uint_range,
)
from kproxy.packet import Packet, format_addr

IPRANGE_OPTS = [OptSpec("src-range", invert=True), OptSpec("dst-range", invert=True)]
MAC_OPTS = [OptSpec("mac-source", invert=True, mand=True)]
PKTTYPE_OPTS = [OptSpec("pkt-type", invert=True, mand=True)]
MAC_HOOKS = ("PREROUTING", "INPUT", "FORWARD")


def parse_iprange(text: str, family: int, option: str) -> tuple[int, int]:
    """``a-b`` or ``a`` (meaning a-a); each side a numeric address of the family (no order check)."""
    lo_s, dash, hi_s = text.partition("-")
    parse = numeric_to_ipaddr if family == 4 else numeric_to_ip6addr
    out = []
    for spec in (lo_s, hi_s if dash else lo_s):
        addr = parse(spec)
        if addr is None:
            raise ExtensionError(f"iprange: Bad value for \"--{option}\" option: \"{spec}\"")
        out.append(addr)
    return out[0], out[1]


@register_match
class IprangeMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "iprange"
    OPTIONS = {"src-range": 1, "dst-range": 1}

    def __init__(self, family: int) -> None:
        self.family = family
        self.src: tuple[int, int] | None = None
        self.dst: tuple[int, int] | None = None
        self.src_inv = self.dst_inv = False

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> IprangeMatch:
        m = cls(family)

        def parse(spec: OptSpec, o: Opt) -> None:
            rng = parse_iprange(o.values[0], family, spec.name)
            if spec.name == "src-range":
                m.src, m.src_inv = rng, o.invert
            else:
                m.dst, m.dst_inv = rng, o.invert

        xtopt_parse("iprange", IPRANGE_OPTS, opts, parse)
        if m.src is None and m.dst is None:
            raise ExtensionError("iprange match: You must specify `--src-range' or `--dst-range'")
        return m

    def _r(self, r: tuple[int, int]) -> str:
        return f"{format_addr(r[0], self.family)}-{format_addr(r[1], self.family)}"

    def save(self) -> str:
        text = "-m iprange"
        if self.src is not None:
            text += f" {'! ' if self.src_inv else ''}--src-range {self._r(self.src)}"
        if self.dst is not None:
            text += f" {'! ' if self.dst_inv else ''}--dst-range {self._r(self.dst)}"
        return text

    def listing(self, numeric: bool = True) -> str:
        parts = []
        if self.src is not None:
            parts.append(f"source IP range {'! ' if self.src_inv else ''}{self._r(self.src)}")
        if self.dst is not None:
            parts.append(f"destination IP range {'! ' if self.dst_inv else ''}{self._r(self.dst)}")
        return " ".join(parts)

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if self.src is not None and (self.src[0] <= pkt.src <= self.src[1]) == self.src_inv:
            return False
        return not (self.dst is not None and (self.dst[0] <= pkt.dst <= self.dst[1]) == self.dst_inv)


@register_match
class MacMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "mac"
    OPTIONS = {"mac-source": 1}

    def __init__(self, mac: str, invert: bool) -> None:
        self.mac, self.invert = mac, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> MacMatch:
        got: list[MacMatch] = []

        def parse(spec: OptSpec, o: Opt) -> None:
            mac = parse_ethermac(o.values[0])
            if mac is None:
                raise ExtensionError("Invalid MAC address specified.")
            got.append(cls(mac, o.invert))

        seen = xtopt_parse("mac", MAC_OPTS, opts, parse)
        xtopt_fcheck("mac", MAC_OPTS, seen)
        return got[0]

    def kernel_refuses(self, rule: Any, chain: str) -> bool:
        return builtin_chain_outside(chain, MAC_HOOKS)

    def save(self) -> str:
        return f"-m mac {'! ' if self.invert else ''}--mac-source {self.mac}"

    def listing(self, numeric: bool = True) -> str:
        return f"MAC {'! ' if self.invert else ''}{self.mac}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        # mac_mt: no Ethernet header (no source MAC known) never matches, inverted or not.
        if not pkt.src_mac:
            return False
        return (pkt.src_mac.lower() == self.mac) != self.invert


@register_match
class PkttypeMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "pkttype"
    OPTIONS = {"pkt-type": 1}
    TYPES = ("unicast", "broadcast", "multicast", "otherhost", "host")

    def __init__(self, kind: str, invert: bool) -> None:
        self.kind, self.invert = kind, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> PkttypeMatch:
        got: list[PkttypeMatch] = []

        def parse(spec: OptSpec, o: Opt) -> None:
            word = o.values[0]
            if word.lower() not in cls.TYPES:
                raise ExtensionError(f"Bad packet type '{word}'")
            got.append(cls({"host": "unicast"}.get(word.lower(), word.lower()), o.invert))

        seen = xtopt_parse("pkttype", PKTTYPE_OPTS, opts, parse)
        xtopt_fcheck("pkttype", PKTTYPE_OPTS, seen)
        return got[0]

    def save(self) -> str:
        return f"-m pkttype {'! ' if self.invert else ''}--pkt-type {self.kind}"

    def listing(self, numeric: bool = True) -> str:
        return f"PKTTYPE {'!' if self.invert else ''}= {self.kind}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        # skb->pkt_type comes from the link layer; a packet left "unicast" by its sender is classified
        # by its destination address, as its Ethernet destination would be.
        kind = pkt.pkttype
        if kind == "unicast":
            if pkt.family == 4:
                if (pkt.dst >> 28) == 0xE:
                    kind = "multicast"
                elif pkt.dst == 0xFFFFFFFF or ctx.node.addr_type(4, pkt.dst) == "BROADCAST":
                    kind = "broadcast"
            elif (pkt.dst >> 120) == 0xFF:
                kind = "multicast"
        return (kind == self.kind) != self.invert


LENGTH_OPTS = [OptSpec("length", invert=True, mand=True)]


@register_match
class LengthMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "length"
    OPTIONS = {"length": 1}

    def __init__(self, lo: int, hi: int, invert: bool) -> None:
        self.lo, self.hi, self.invert = lo, hi, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> LengthMatch:
        got: list[tuple[int, int, bool]] = []
        seen = xtopt_parse("length", LENGTH_OPTS, opts, lambda spec, o: got.append(
            (*xtopt_uint_range(o.values[0], "length", "length"), o.invert)))
        xtopt_fcheck("length", LENGTH_OPTS, seen)
        return cls(*got[0])

    def _text(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi}"

    def save(self) -> str:
        return f"-m length {'! ' if self.invert else ''}--length {self._text()}"

    def listing(self, numeric: bool = True) -> str:
        return f"length {'!' if self.invert else ''}{self._text()}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return (self.lo <= pkt.length <= self.hi) != self.invert
