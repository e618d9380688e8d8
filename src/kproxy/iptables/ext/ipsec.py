"""IPsec matches: esp and ah (their SPI; ip6tables' ah also its length and reserved field) and
policy (the IPsec policy a packet was or will be handled by). The emulated node has no IPsec, so
no packet was decapsulated or will be encapsulated: ``--pol none`` matches, ``--pol ipsec`` never."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from kproxy.iptables.extension import (
    ExtensionError,
    Match,
    Opt,
    RuleContext,
    builtin_chain_outside,
    register_match,
)
from kproxy.iptables.xtoptions import (
    CUSTOM,
    HOSTMASK,
    NONE,
    STRING,
    UINT32,
    UINT32RC,
    XTOPT_INVERT,
    XTOPT_MULTI,
    XtCall,
    XtOpt,
    XtOptions,
)
from kproxy.packet import Packet, format_addr

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Net, Rule

U32 = 0xFFFFFFFF
ESP, AH, COMP = 50, 51, 108
PROTO_WORDS = {"esp": ESP, "ah": AH, "ipcomp": COMP, "comp": COMP}
PROTO_NAMES = {ESP: "esp", AH: "ah", COMP: "ipcomp"}


def spi_text(lo: int, hi: int, inv: bool, word: str, sep: str = "") -> str | None:
    """print_spis: None when the range is everything and not inverted."""
    if lo == 0 and hi == U32 and not inv:
        return None
    bang = "!" if inv else ""
    return f"{word}:{sep}{bang}{lo}" if lo == hi else f"{word}s:{sep}{bang}{lo}:{hi}"


class SpiMatch(Match):
    """esp and IPv4 ah: one SPI range of the protocol's header."""

    SHAREABLE = True
    PROTO: ClassVar[int] = ESP
    OPT: ClassVar[str] = "espspi"

    def __init__(self, lo: int, hi: int, invert: bool) -> None:
        self.lo, self.hi, self.invert = lo, hi, invert
        self.kernel_proto = self.PROTO

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> Any:
        got = cls.OPTIONS.parse_all(opts)
        lo, hi = got.get(cls.OPT, (0, U32))
        return cls(lo, hi, got.invert(cls.OPT))

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return rule.proto != self.PROTO or rule.proto_inv

    def _spi_save(self) -> str:
        if self.lo == 0 and self.hi == U32 and not self.invert:
            return ""
        value = str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi}"
        return f" {'! ' if self.invert else ''}--{self.OPT} {value}"

    def save(self) -> str:
        return f"-m {self.name}" + self._spi_save()

    def listing(self, numeric: bool = True) -> str:
        text = spi_text(self.lo, self.hi, self.invert, "spi")
        return self.name + (f" {text}" if text else "")

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        spi = pkt.meta.get("spi", pkt.sport << 16 | pkt.dport)
        return (self.lo <= spi <= self.hi) != self.invert


@register_match
class EspMatch(SpiMatch):
    name = "esp"
    OPTIONS = XtOptions("esp", XtOpt("espspi", UINT32RC, XTOPT_INVERT))


@register_match
class AhMatch(SpiMatch):
    name = "ah"
    FAMILIES = (4,)
    PROTO = AH
    OPT = "ahspi"
    OPTIONS = XtOptions("ah", XtOpt("ahspi", UINT32RC, XTOPT_INVERT))

    def listing(self, numeric: bool = True) -> str:
        return "ah " + (spi_text(self.lo, self.hi, self.invert, "spi") or "")


@register_match
class Ah6Match(SpiMatch):
    name = "ah"
    FAMILIES = (6,)
    PROTO = AH
    OPT = "ahspi"
    OPTIONS = XtOptions("ah", XtOpt("ahspi", UINT32RC, XTOPT_INVERT), XtOpt("ahlen", UINT32, XTOPT_INVERT),
                        XtOpt("ahres", NONE))

    def __init__(self, lo: int, hi: int, invert: bool) -> None:
        super().__init__(lo, hi, invert)
        self.hdrlen, self.len_inv, self.res = 0, False, False

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> Ah6Match:
        got = cls.OPTIONS.parse_all(opts)
        lo, hi = got.get("ahspi", (0, U32))
        m = cls(lo, hi, got.invert("ahspi"))
        m.hdrlen, m.len_inv, m.res = got.get("ahlen", 0), got.invert("ahlen"), "ahres" in got
        return m

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return False        # an extension header: found by walking the header chain, any -p

    def save(self) -> str:
        text = "-m ah" + self._spi_save()
        if self.hdrlen or self.len_inv:
            text += f" {'! ' if self.len_inv else ''}--ahlen {self.hdrlen}"
        return text + (" --ahres" if self.res else "")

    def listing(self, numeric: bool = True) -> str:
        text = "ah " + (spi_text(self.lo, self.hi, self.invert, "spi") or "")
        if self.hdrlen or self.len_inv:
            text += f"length:{'!' if self.len_inv else ''}{self.hdrlen}"
        return text + (" reserved" if self.res else "")

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return pkt.proto == AH and super().matches(pkt, ctx)


def parse_choice(words: tuple[str, ...], message: str) -> Any:
    def parse(call: XtCall) -> str:
        if call.arg not in words:
            raise ExtensionError(message.format(call.arg))
        return call.arg
    return parse


def parse_ipsec_proto(call: XtCall) -> int:
    from kproxy.packet import parse_proto

    word = call.arg.lower()
    try:
        proto = PROTO_WORDS[word] if word in PROTO_WORDS else parse_proto(word)
    except ValueError:
        raise ExtensionError(f"unknown protocol \"{call.arg}\" specified") from None
    if proto not in (ESP, AH, COMP):
        raise ExtensionError("policy match: protocol must be ah/esp/ipcomp")
    return proto


class Element:
    """One policy element (what ``--next`` separates): each field with its ``!``."""

    KEYS = ("reqid", "spi", "proto", "mode", "tunnel-dst", "tunnel-src")

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.inv: dict[str, bool] = {}


@register_match
class PolicyMatch(Match):
    SHAREABLE = True
    name = "policy"
    OPTIONS = XtOptions(
        "policy", XtOpt("dir", STRING), XtOpt("pol", STRING), XtOpt("strict", NONE),
        XtOpt("reqid", UINT32, XTOPT_MULTI | XTOPT_INVERT), XtOpt("spi", UINT32, XTOPT_MULTI | XTOPT_INVERT),
        XtOpt("tunnel-src", HOSTMASK, XTOPT_MULTI | XTOPT_INVERT),
        XtOpt("tunnel-dst", HOSTMASK, XTOPT_MULTI | XTOPT_INVERT),
        XtOpt("proto", CUSTOM, XTOPT_MULTI | XTOPT_INVERT, parse=parse_ipsec_proto),
        XtOpt("mode", STRING, XTOPT_MULTI | XTOPT_INVERT), XtOpt("next", NONE, XTOPT_MULTI, also=("strict",)))

    def __init__(self, family: int) -> None:
        self.family = family
        self.direction = ""
        self.none = self.strict = False
        self.elements: list[Element] = []

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> PolicyMatch:
        m = cls(family)
        current = Element()
        elements = [current]
        for i, o in enumerate(opts):    # option by option, as libxtables then policy_parse see them
            got = cls.OPTIONS.parse(opts[:i + 1], family)
            key, value = o.name, got.get(o.name)
            if key == "dir":
                if value not in ("in", "out"):
                    raise ExtensionError(f"policy_match: invalid dir \"{value}\"")
                m.direction = m.direction or value
            elif key == "pol":
                if value not in ("none", "ipsec"):
                    raise ExtensionError(f"policy match: invalid policy \"{value}\"")
                m.none = m.none or value == "none"
            elif key == "strict":
                m.strict = True
            elif key == "next":
                if len(elements) == 4:
                    raise ExtensionError("policy match: maximum policy depth reached")
                current = Element()
                elements.append(current)
            else:
                if key in current.values:
                    raise ExtensionError(f"policy match: double --{key} option")
                if key == "mode" and value not in ("transport", "tunnel"):
                    raise ExtensionError(f"policy match: invalid mode \"{value}\"")
                current.values[key], current.inv[key] = value, o.invert
        cls.OPTIONS.fcheck(cls.OPTIONS.parse(opts, family))
        m._check(opts, elements)
        return m

    def _check(self, opts: list[Opt], elements: list[Element]) -> None:
        """policy_check (after the table's own checks: ``--next`` needs ``--strict``)."""
        if not self.direction:
            raise ExtensionError("policy match: neither --dir in nor --dir out specified")
        if self.none:
            if self.strict:
                raise ExtensionError("policy match: policy none but --strict given")
            if len(elements) > 1:
                raise ExtensionError("policy match: policy none but policy given")
            elements = []
        if not self.strict and len(elements) > 1:
            raise ExtensionError("policy match: multiple elements but no --strict")
        for i, e in enumerate(elements):
            if self.strict and not e.values:
                raise ExtensionError(f"policy match: empty policy element {i}. --strict is in effect, but at least "
                                     "one of reqid, spi, tunnel-src, tunnel-dst, proto or mode is required.")
            if ("tunnel-src" in e.values or "tunnel-dst" in e.values) and "mode" in e.values and \
                    (e.values["mode"] == "tunnel") == e.inv["mode"]:
                raise ExtensionError("policy match: --tunnel-src/--tunnel-dst is only valid in tunnel mode")
        self.elements = elements

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        hooks = ("PREROUTING", "INPUT", "FORWARD") if self.direction == "in" else ("POSTROUTING", "OUTPUT", "FORWARD")
        return builtin_chain_outside(chain, hooks)

    def _net(self, net: Net) -> str:
        text = format_addr(net.addr, net.family)
        return text if net.prefixlen == net.bits else f"{text}/{net.prefixlen}"

    def _value(self, key: str, v: Any, numeric: bool) -> str:
        if key == "spi":
            return f"0x{v:x}"
        if key == "proto":
            return str(v) if numeric else PROTO_NAMES.get(v, str(v))
        if key.startswith("tunnel"):
            return self._net(v)
        return str(v)

    def _show(self, prefix: str, numeric: bool, save: bool) -> str:
        out = [f"{prefix}dir {self.direction}", f"{prefix}pol {'none' if self.none else 'ipsec'}"]
        if self.strict:
            out.append(f"{prefix}strict")
        for i, e in enumerate(self.elements):
            if len(self.elements) > 1 and not save:
                out.append(f"[{i}]")
            for key in Element.KEYS:
                if key not in e.values:
                    continue
                v = e.values[key]
                text = self._value(key, v, numeric)
                out.append(f"{'! ' if e.inv[key] else ''}{prefix}{key} {text}")
            if save and i + 1 < len(self.elements):
                out.append("--next")
        return " ".join(out)

    def save(self) -> str:
        return "-m policy " + self._show("--", False, True)

    def listing(self, numeric: bool = True) -> str:
        return "policy match " + self._show("", numeric, False)

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return self.none


@register_match
class IpcompMatch(SpiMatch):
    """ipcomp: the IP payload compression header's CPI (like esp's SPI) and its reserved field."""

    name = "ipcomp"
    PROTO = COMP
    OPT = "ipcompspi"
    OPTIONS = XtOptions("ipcomp", XtOpt("ipcompspi", UINT32RC, XTOPT_INVERT), XtOpt("compres", NONE))

    def __init__(self, lo: int, hi: int, invert: bool) -> None:
        super().__init__(lo, hi, invert)
        self.res = False

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> IpcompMatch:
        got = cls.OPTIONS.parse_all(opts)
        lo, hi = got.get("ipcompspi", (0, 0))       # (libxt_ipcomp has no init: no SPI is 0:0, saved as 0)
        m = cls(lo, hi, got.invert("ipcompspi"))
        m.res = "compres" in got
        return m

    def save(self) -> str:
        return "-m ipcomp" + self._spi_save() + (" --compres" if self.res else "")

    def listing(self, numeric: bool = True) -> str:
        return "comp " + (spi_text(self.lo, self.hi, self.invert, "spi") or "") + (" reserved" if self.res else "")
