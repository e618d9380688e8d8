"""Small header matches: iprange, mac, pkttype and length.

iprange, mac and pkttype stay xt matches under iptables-nft; mac is refused by the kernel outside
PREROUTING, INPUT and FORWARD (``kernel_refuses``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.extension import (
    ExtensionError,
    Match,
    Opt,
    RuleContext,
    Xlate,
    builtin_chain_outside,
    register_match,
)
from kproxy.iptables.xtoptions import (
    CHOICE,
    CUSTOM,
    UINT16RC,
    XTOPT_INVERT,
    XTOPT_MAND,
    XtCall,
    XtOpt,
    XtOptions,
)
from kproxy.iptables.xtutil import numeric_to_ip6addr, numeric_to_ipaddr, parse_ethermac
from kproxy.packet import Packet, format_addr

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

MAC_HOOKS = ("PREROUTING", "INPUT", "FORWARD")


def parse_iprange(call: XtCall) -> tuple[int, int]:
    """``a-b`` or ``a`` (meaning a-a); each side a numeric address of the family (no order check)."""
    lo_s, dash, hi_s = call.arg.partition("-")
    parse = numeric_to_ipaddr if call.family == 4 else numeric_to_ip6addr
    out = []
    for spec in (lo_s, hi_s if dash else lo_s):
        addr = parse(spec)
        if addr is None:
            raise ExtensionError(f"iprange: Bad value for \"--{call.opt}\" option: \"{spec}\"")
        out.append(addr)
    return out[0], out[1]


def parse_mac(call: XtCall) -> str:
    mac = parse_ethermac(call.arg)
    if mac is None:
        raise ExtensionError("Invalid MAC address specified.")
    return mac


@register_match
class IprangeMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "iprange"
    OPTIONS = XtOptions("iprange", XtOpt("src-range", CUSTOM, XTOPT_INVERT, parse=parse_iprange),
                        XtOpt("dst-range", CUSTOM, XTOPT_INVERT, parse=parse_iprange))

    def __init__(self, family: int) -> None:
        self.family = family
        self.src: tuple[int, int] | None = None
        self.dst: tuple[int, int] | None = None
        self.src_inv = self.dst_inv = False

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> IprangeMatch:
        m = cls(family)
        got = cls.OPTIONS.parse(opts, family)
        m.src, m.src_inv = got.get("src-range"), got.invert("src-range")
        m.dst, m.dst_inv = got.get("dst-range"), got.invert("dst-range")
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

    def translate(self, xl: Xlate) -> str:
        fam = "ip" if self.family == 4 else "ip6"
        parts = [f"{fam} {key} {'!= ' if inv else ''}{self._r(r)}"
                 for key, r, inv in (("saddr", self.src, self.src_inv), ("daddr", self.dst, self.dst_inv))
                 if r is not None]
        return " ".join(parts)

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if self.src is not None and (self.src[0] <= pkt.src <= self.src[1]) == self.src_inv:
            return False
        return not (self.dst is not None and (self.dst[0] <= pkt.dst <= self.dst[1]) == self.dst_inv)


@register_match
class MacMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "mac"
    OPTIONS = XtOptions("mac", XtOpt("mac-source", CUSTOM, XTOPT_INVERT | XTOPT_MAND, parse=parse_mac))

    def __init__(self, mac: str, invert: bool) -> None:
        self.mac, self.invert = mac, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> MacMatch:
        got = cls.OPTIONS.parse_all(opts)
        return cls(got.get("mac-source"), got.invert("mac-source"))

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return builtin_chain_outside(chain, MAC_HOOKS)

    def save(self) -> str:
        return f"-m mac {'! ' if self.invert else ''}--mac-source {self.mac}"

    def listing(self, numeric: bool = True) -> str:
        return f"MAC {'! ' if self.invert else ''}{self.mac}"

    def translate(self, xl: Xlate) -> str:
        return f"ether saddr {'!= ' if self.invert else ''}{self.mac}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        # mac_mt: no Ethernet header (no source MAC known) never matches, inverted or not.
        if not pkt.src_mac:
            return False
        return (pkt.src_mac.lower() == self.mac) != self.invert


@register_match
class PkttypeMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "pkttype"
    TYPES = ("unicast", "broadcast", "multicast", "otherhost", "host")
    OPTIONS = XtOptions("pkttype", XtOpt("pkt-type", CHOICE, XTOPT_INVERT | XTOPT_MAND, choices=TYPES,
                                         bad="Bad packet type '{value}'"))

    def __init__(self, kind: str, invert: bool) -> None:
        self.kind, self.invert = kind, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> PkttypeMatch:
        got = cls.OPTIONS.parse_all(opts)
        kind = got.get("pkt-type")
        return cls("unicast" if kind == "host" else kind, got.invert("pkt-type"))

    def save(self) -> str:
        return f"-m pkttype {'! ' if self.invert else ''}--pkt-type {self.kind}"

    def listing(self, numeric: bool = True) -> str:
        return f"PKTTYPE {'!' if self.invert else ''}= {self.kind}"

    def translate(self, xl: Xlate) -> str:
        kind = "3" if self.kind == "otherhost" else self.kind     # PACKET_OTHERHOST, by number
        return f"pkttype {'!= ' if self.invert else ''}{kind}"

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


@register_match
class LengthMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "length"
    OPTIONS = XtOptions("length", XtOpt("length", UINT16RC, XTOPT_INVERT | XTOPT_MAND))

    def __init__(self, lo: int, hi: int, invert: bool) -> None:
        self.lo, self.hi, self.invert = lo, hi, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> LengthMatch:
        got = cls.OPTIONS.parse_all(opts)
        lo, hi = got.get("length")
        return cls(lo, hi, got.invert("length"))

    def _text(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi}"

    def save(self) -> str:
        return f"-m length {'! ' if self.invert else ''}--length {self._text()}"

    def listing(self, numeric: bool = True) -> str:
        return f"length {'!' if self.invert else ''}{self._text()}"

    def translate(self, xl: Xlate) -> str:
        text = str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"
        return f"meta length {'!= ' if self.invert else ''}{text}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return (self.lo <= pkt.length <= self.hi) != self.invert
