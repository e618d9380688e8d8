"""The tcp, udp and sctp matches: port ranges, TCP flags and options (xt_tcpudp, xt_sctp).

iptables-nft 1.8.9 does not hand tcp and udp to the kernel as xt matches: it translates them to
nft payload comparisons and rebuilds the match from those when listing. That round trip is part of
the rule's identity, so it is reproduced here: a full port range (``0:65535``, even inverted) and a
flag test with an empty mask produce no comparison and vanish from the rule, and a match left with
nothing vanishes entirely (``! --dport 0:65535`` saves as just ``-p tcp``). Only a match with
nothing in it (``-m tcp``) or with ``--tcp-option`` stays an xt match. The payload comparisons read
the transport header whatever the protocol, so ``! -p tcp --dport 80`` matches UDP to port 80.
sctp always stays an xt match and prints what was given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, Xlate, register_match
from kproxy.iptables.xtoptions import (
    CUSTOM,
    LEGACY_ONCE,
    PORTRC,
    XTOPT_INVERT,
    XtCall,
    XtOpt,
    XtOptions,
    XtParsed,
    two_args,
)
from kproxy.iptables.xtutil import c_strtoui, parse_port, port_name
from kproxy.packet import SCTP, TCP, TCP_FLAG_BITS, UDP, Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

FLAG_ORDER = [("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10), ("URG", 0x20)]
FLAG_WORDS = {**dict(FLAG_ORDER), "ALL": 0x3F, "NONE": 0}
FULL = (0, 0xFFFF)
Range = tuple[int, int]


def flags_text(bits: int) -> str:
    if bits == 0:
        return "NONE"
    return ",".join(name for name, b in FLAG_ORDER if bits & b)


def parse_flags(text: str) -> int:
    """libxt_tcp's flag list: comma-separated, case-insensitive, empty items skipped; no ECE/CWR."""
    bits = 0
    for word in text.split(","):
        if not word:
            continue
        bit = FLAG_WORDS.get(word.upper())
        if bit is None:
            raise ExtensionError(f"Unknown TCP flag `{word}'")
        bits |= bit
    return bits


def parse_xt_ports(text: str, proto: int) -> Range:
    """tcp/sctp ``a``, ``a:b``, ``a:``, ``:b`` (xtables_parse_port for each side; min must not exceed max)."""
    if ":" not in text:
        p = parse_port(text, proto)
        return p, p
    lo_s, hi_s = text.split(":", 1)
    lo = parse_port(lo_s, proto) if lo_s else 0
    hi = parse_port(hi_s, proto) if hi_s else 0xFFFF
    if lo > hi:
        raise ExtensionError("invalid portrange (min > max)")
    return lo, hi


def port_entries(kind: str, parse: Callable[[XtCall], Any] | None = None) -> tuple[XtOpt, ...]:
    """``--source-port``/``--sport`` and ``--destination-port``/``--dport``, of a value type or parsed by ``parse``."""
    return tuple(XtOpt(name, kind, XTOPT_INVERT, id=key, parse=parse)
                 for key, alias in (("source-port", "sport"), ("destination-port", "dport")) for name in (key, alias))


def xt_ports(proto: int) -> Callable[[XtCall], Range]:
    """The port range parser of tcp or sctp (their own parse functions, with service names of ``proto``)."""
    return lambda call: parse_xt_ports(call.arg, proto)


def parse_tcp_flags(call: XtCall) -> tuple[int, int]:
    mask, comp = two_args(call)
    return parse_flags(mask), parse_flags(comp)


def parse_tcp_option(call: XtCall) -> int:
    option = c_strtoui(call.arg, 1, 255)
    if option is None:
        raise ExtensionError(f"Bad TCP option \"{call.arg}\"")
    return option


class PortMatch(Match):
    """Shared by tcp, udp and sctp: optional source and destination port ranges."""
    SHAREABLE = True   # no per-rule state: rules with the same options share one object

    PROTO: ClassVar[int] = TCP

    def __init__(self) -> None:
        self.sport: Range | None = None
        self.dport: Range | None = None
        self.sinv = self.dinv = False
        self.vanished = False     # translated to no comparison at all: prints nothing, matches everything
        # Set while this stays an xt match: the kernel then refuses a rule whose -p is not this
        # protocol, or is inverted (x_tables: "RULE_APPEND failed (Invalid argument)").
        self.kernel_proto: int | None = None

    @classmethod
    def _check_proto(cls, rule: Rule) -> None:
        if rule.proto != cls.PROTO:
            raise ExtensionError(f"{cls.name.upper()} match requires '-p {cls.name}'")

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> PortMatch:
        got = cls.OPTIONS.parse(opts, family, rule)
        m = cls()
        m.sport, m.sinv = got.get("source-port"), got.invert("source-port")
        m.dport, m.dinv = got.get("destination-port"), got.invert("destination-port")
        m._extra(got)
        m._translate(rule)
        return m

    def _extra(self, got: XtParsed) -> None:
        """The options besides the ports."""
        return None

    # ---- the nft round trip ------------------------------------------------------------------
    def _all_zero(self) -> bool:
        return self.sport in (None, FULL) and not self.sinv and self.dport in (None, FULL) and not self.dinv

    def _compat(self) -> bool:
        """Whether iptables-nft keeps this as an xt match instead of translating it."""
        return self._all_zero()

    def _translate(self, rule: Rule) -> None:
        if self._compat():
            if self._all_zero():
                self.sport = self.dport = None
            self.kernel_proto = self.PROTO
            return
        self._check_proto(rule)
        if self.sport == FULL:
            self.sport, self.sinv = None, False
        if self.dport == FULL:
            self.dport, self.dinv = None, False
        self._translate_extra()
        self.vanished = self._all_zero() and self._nothing_extra()

    def _translate_extra(self) -> None:
        return None

    def _nothing_extra(self) -> bool:
        return True

    # ---- printing ----------------------------------------------------------------------------
    def _save_ports(self, flag: str, rng: Range | None, invert: bool) -> str:
        if rng is None or rng == FULL:
            return ""
        text = str(rng[0]) if rng[0] == rng[1] else f"{rng[0]}:{rng[1]}"
        return f" {'! ' if invert else ''}--{flag} {text}"

    def save(self) -> str:
        if self.vanished:
            return ""
        return f"-m {self.name}" + self._save_ports("sport", self.sport, self.sinv) + \
            self._save_ports("dport", self.dport, self.dinv) + self._save_extra()

    def _save_extra(self) -> str:
        return ""

    def _list_ports(self, label: str, rng: Range | None, invert: bool, numeric: bool) -> str:
        if rng is None or (rng == FULL and not invert):
            return ""
        bang = "!" if invert else ""
        if rng[0] == rng[1]:
            return f" {label}t:{bang}{port_name(rng[0], self.PROTO, numeric)}"
        return f" {label}ts:{bang}{port_name(rng[0], self.PROTO, numeric)}:{port_name(rng[1], self.PROTO, numeric)}"

    def listing(self, numeric: bool = True) -> str:
        if self.vanished:
            return ""
        return self.name + self._list_ports("sp", self.sport, self.sinv, numeric) + \
            self._list_ports("dp", self.dport, self.dinv, numeric) + self._list_extra(numeric)

    def _list_extra(self, numeric: bool) -> str:
        return ""

    # ---- evaluation --------------------------------------------------------------------------
    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        # The rule's -p does the protocol test (the translated comparisons read any transport header).
        sport, dport = self.sport, self.dport
        if sport is not None and ((sport[0] <= pkt.sport <= sport[1]) == self.sinv):
            return False
        return not (dport is not None and ((dport[0] <= pkt.dport <= dport[1]) == self.dinv))

    def inline(self) -> tuple[str, tuple[Any, ...]] | None:
        if not self._nothing_extra():
            return None
        parts: list[str] = []
        values: list[int] = []
        for field, rng, inv in (("sport", self.sport, self.sinv), ("dport", self.dport, self.dinv)):
            if rng is None:
                continue
            if rng[0] == rng[1]:
                parts.append(f"p.{field} {'!=' if inv else '=='} {{}}")
                values.append(rng[0])
            else:
                parts.append(f"{'not ' if inv else ''}{{}} <= p.{field} <= {{}}")
                values += [rng[0], rng[1]]
        return (" and ".join(parts) or "True"), tuple(values)

    # udp_xlate takes the destination port's ``!=`` from the source port's invert flag.
    DPORT_INVERT_FROM_SPORT: ClassVar[bool] = False

    def translate(self, xl: Xlate) -> str:
        """``tcp sport 80 tcp dport != 1000-2000``, then what the protocol adds (tcp option and flags)."""
        parts = []
        dinv = self.sinv if self.DPORT_INVERT_FROM_SPORT else self.dinv
        for word, rng, inv in (("sport", self.sport, self.sinv), ("dport", self.dport, dinv)):
            if rng is not None and (rng != FULL or self.PROTO == SCTP):
                text = str(rng[0]) if rng[0] == rng[1] else f"{rng[0]}-{rng[1]}"
                parts.append(f"{self.name} {word} {'!= ' if inv else ''}{text}")
        return " ".join(parts + self._xlate_extra())

    def _xlate_extra(self) -> list[str]:
        return []

    def index_key(self) -> tuple[str, Any] | None:
        if self.dport is not None and not self.dinv and self.dport[0] == self.dport[1]:
            return ("dport", self.dport[0])
        return None

    def redundant(self, rule: Rule) -> bool:
        if self.vanished:
            return True
        return self.sport is None and self.dport is None and rule.proto == self.PROTO and not rule.proto_inv \
            and self._nothing_extra()


def xlate_flags(bits: int) -> str:
    """print_tcp_xlate: the flag names in bit order, ``0x0`` for none."""
    names = [n.lower() for n, b in sorted(TCP_FLAG_BITS.items(), key=lambda kv: kv[1]) if bits & b]
    return ",".join(names) if names else "0x0"


@register_match
class TcpMatch(PortMatch):
    name = "tcp"
    PROTO = TCP
    OPTIONS = XtOptions(
        "tcp",
        *port_entries(CUSTOM, xt_ports(TCP)),
        XtOpt("tcp-flags", CUSTOM, XTOPT_INVERT, nvals=2, parse=parse_tcp_flags,
              once="Only one of `--syn' or `--tcp-flags'  allowed"),
        XtOpt("syn", CUSTOM, XTOPT_INVERT, id="tcp-flags", nvals=0, parse=lambda call: (0x17, 0x02)),
        XtOpt("tcp-option", CUSTOM, XTOPT_INVERT, parse=parse_tcp_option),
        once=LEGACY_ONCE,
    )

    def __init__(self) -> None:
        super().__init__()
        self.flags: tuple[int, int] | None = None
        self.finv = False
        self.option: int | None = None
        self.oinv = False

    def _extra(self, got: XtParsed) -> None:
        self.flags, self.finv = got.get("tcp-flags"), got.invert("tcp-flags")
        self.option, self.oinv = got.get("tcp-option"), got.invert("tcp-option")

    def _all_zero(self) -> bool:
        return super()._all_zero() and self.option is None and (self.flags is None or self.flags == (0, 0)) \
            and not self.finv

    def _compat(self) -> bool:
        return self.option is not None or self._all_zero()

    def _translate(self, rule: Rule) -> None:
        if self._all_zero():
            self.flags = None
        super()._translate(rule)

    def _translate_extra(self) -> None:
        if self.flags is not None and self.flags[0] == 0:
            self.flags, self.finv = None, False

    def _nothing_extra(self) -> bool:
        return self.flags is None and self.option is None

    def inline(self) -> tuple[str, tuple[Any, ...]] | None:
        # The ports' form, which declines (None: called) when flags or an option are set.
        return super().inline()

    def _xlate_extra(self) -> list[str]:
        parts = []
        if self.option is not None:
            parts.append(f"tcp option {self.option} {'missing' if self.oinv else 'exists'}")
        if self.flags is not None:
            mask, cmp = self.flags
            parts.append(f"tcp flags {'!= ' if self.finv else ''}{xlate_flags(cmp)} / {xlate_flags(mask)}")
        return parts

    def _save_extra(self) -> str:
        text = ""
        if self.option is not None:
            text += f" {'! ' if self.oinv else ''}--tcp-option {self.option}"
        if self.flags is not None:
            text += f" {'! ' if self.finv else ''}--tcp-flags {flags_text(self.flags[0])} {flags_text(self.flags[1])}"
        return text

    def _list_extra(self, numeric: bool) -> str:
        text = ""
        if self.option is not None:
            text += f" option={'!' if self.oinv else ''}{self.option}"
        if self.flags is not None:
            bang = "!" if self.finv else ""
            if numeric:
                text += f" flags:{bang}0x{self.flags[0]:02X}/0x{self.flags[1]:02X}"
            else:
                text += f" flags:{bang}{flags_text(self.flags[0])}/{flags_text(self.flags[1])}"
        return text

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if not super().matches(pkt, ctx):
            return False
        if self.flags is not None and (((pkt.tcp_flags & self.flags[0]) == self.flags[1]) == self.finv):
            return False
        if self.option is not None:
            has = self.option in pkt.meta.get("tcp_options", ())
            if has == self.oinv:
                return False
        return True


@register_match
class UdpMatch(PortMatch):
    name = "udp"
    PROTO = UDP
    DPORT_INVERT_FROM_SPORT = True
    OPTIONS = XtOptions("udp", *port_entries(PORTRC))


@register_match
class SctpMatch(PortMatch):
    """sctp stays an xt match: it prints the ranges as given (``0:65535`` too) and -p is the kernel's check."""

    name = "sctp"
    PROTO = SCTP
    OPTIONS = XtOptions("sctp", *port_entries(CUSTOM, xt_ports(SCTP)), once=LEGACY_ONCE)

    def _translate(self, rule: Rule) -> None:
        self.kernel_proto = SCTP

    def _save_ports(self, flag: str, rng: Range | None, invert: bool) -> str:
        if rng is None:
            return ""
        text = str(rng[0]) if rng[0] == rng[1] else f"{rng[0]}:{rng[1]}"
        return f" {'! ' if invert else ''}--{flag} {text}"
