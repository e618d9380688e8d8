"""Small header matches: iprange, mac, pkttype and length."""

from __future__ import annotations

import ipaddress
from typing import Any

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.packet import Packet, format_addr


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
        for o in opts:
            a, _, b = o.values[0].partition("-")
            try:
                lo = int(ipaddress.ip_address(a))
                hi = int(ipaddress.ip_address(b)) if b else lo
            except ValueError:
                raise ExtensionError(f"iprange: Bad IP address \"{o.values[0]}\"") from None
            if o.name == "src-range":
                m.src, m.src_inv = (lo, hi), o.invert
            else:
                m.dst, m.dst_inv = (lo, hi), o.invert
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
        if not opts:
            raise ExtensionError("mac: option \"--mac-source\" must be specified")
        text = opts[-1].values[0]
        parts = text.split(":")
        if len(parts) != 6 or not all(len(p) in (1, 2) and all(c in "0123456789abcdefABCDEF" for c in p)
                                      for p in parts):
            raise ExtensionError(f"Bad mac address \"{text}\"")
        return cls(":".join(f"{int(p, 16):02x}" for p in parts), opts[-1].invert)

    def save(self) -> str:
        return f"-m mac {'! ' if self.invert else ''}--mac-source {self.mac}"

    def listing(self, numeric: bool = True) -> str:
        return f"MAC {'! ' if self.invert else ''}{self.mac}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return (pkt.src_mac.lower() == self.mac) != self.invert


@register_match
class PkttypeMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "pkttype"
    OPTIONS = {"pkt-type": 1}
    TYPES = ("unicast", "broadcast", "multicast", "host", "otherhost", "outgoing", "loopback")

    def __init__(self, kind: str, invert: bool) -> None:
        self.kind, self.invert = kind, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> PkttypeMatch:
        if not opts:
            raise ExtensionError("pkttype: option \"--pkt-type\" must be specified")
        word = opts[-1].values[0].lower()
        if word not in cls.TYPES:
            raise ExtensionError(f"Bad packet type '{word}'")
        return cls({"host": "unicast"}.get(word, word), opts[-1].invert)

    def save(self) -> str:
        return f"-m pkttype {'! ' if self.invert else ''}--pkt-type {self.kind}"

    def listing(self, numeric: bool = True) -> str:
        return f"PKTTYPE {'!' if self.invert else ''}= {self.kind}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        kind = pkt.pkttype
        if pkt.family == 4 and kind == "unicast":
            if pkt.dst == 0xFFFFFFFF or ctx.node.addr_type(4, pkt.dst) == "BROADCAST":
                kind = "broadcast"
            elif (pkt.dst >> 28) == 0xE:
                kind = "multicast"
        return (kind == self.kind) != self.invert


@register_match
class LengthMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "length"
    OPTIONS = {"length": 1}

    def __init__(self, lo: int, hi: int, invert: bool) -> None:
        self.lo, self.hi, self.invert = lo, hi, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> LengthMatch:
        if not opts:
            raise ExtensionError("length: option \"--length\" must be specified")
        text = opts[-1].values[0]
        lo_s, colon, hi_s = text.partition(":")
        try:
            lo = int(lo_s) if lo_s else 0
            hi = int(hi_s) if colon and hi_s else (65535 if colon else lo)
        except ValueError:
            raise ExtensionError(f"length: Bad value for option \"--length\": \"{text}\"") from None
        if not (0 <= lo <= hi <= 65535):
            raise ExtensionError(f"length: Bad value for option \"--length\": \"{text}\"")
        return cls(lo, hi, opts[-1].invert)

    def _text(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi}"

    def save(self) -> str:
        return f"-m length {'! ' if self.invert else ''}--length {self._text()}"

    def listing(self, numeric: bool = True) -> str:
        return f"length {'!' if self.invert else ''}{self._text()}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return (self.lo <= pkt.length <= self.hi) != self.invert
