"""The tcp, udp and sctp matches: port ranges, TCP flags and options (xt_tcpudp, xt_sctp)."""

from __future__ import annotations

from typing import Any, ClassVar

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtutil import parse_port_range, port_name
from kproxy.packet import SCTP, TCP, UDP, Packet, parse_tcp_flags

FLAG_ORDER = [("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10), ("URG", 0x20)]
CANONICAL = {"source-port": "sport", "sport": "sport", "destination-port": "dport", "dport": "dport"}
LONG = {"sport": "source-port", "dport": "destination-port"}


def flags_text(bits: int) -> str:
    if bits == 0:
        return "NONE"
    return ",".join(name for name, b in FLAG_ORDER if bits & b)


class PortMatch(Match):
    """Shared by tcp, udp and sctp: optional source and destination port ranges."""
    SHAREABLE = True   # no per-rule state: rules with the same options share one object

    PROTO: ClassVar[int] = TCP
    OPTIONS: ClassVar[dict[str, int]] = {"sport": 1, "source-port": 1, "dport": 1, "destination-port": 1}

    def __init__(self) -> None:
        self.sport: tuple[int, int] | None = None
        self.dport: tuple[int, int] | None = None
        self.sinv = self.dinv = False

    @classmethod
    def _check_proto(cls, rule: Any) -> None:
        if rule.proto != cls.PROTO or rule.proto_inv:
            raise ExtensionError(f"{cls.name.upper()} match requires '-p {cls.name}'")

    def _port_opt(self, o: Opt) -> bool:
        key = CANONICAL.get(o.name)
        if key is None:
            return False
        if getattr(self, key) is not None:
            raise ExtensionError(f"Only one `--{LONG[key]}' allowed")
        setattr(self, key, parse_port_range(o.values[0], self.PROTO))
        setattr(self, key[0] + "inv", o.invert)
        return True

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> PortMatch:
        cls._check_proto(rule)
        m = cls()
        for o in opts:
            if not m._port_opt(o):
                m._extra(o)
        return m

    def _extra(self, o: Opt) -> None:
        raise ExtensionError(f"unknown option \"--{o.name}\"")

    @staticmethod
    def _save_ports(flag: str, rng: tuple[int, int] | None, invert: bool) -> str:
        if rng is None:
            return ""
        text = str(rng[0]) if rng[0] == rng[1] else f"{rng[0]}:{rng[1]}"
        return f" {'! ' if invert else ''}--{flag} {text}"

    def save(self) -> str:
        return f"-m {self.name}" + self._save_ports("sport", self.sport, self.sinv) + \
            self._save_ports("dport", self.dport, self.dinv) + self._save_extra()

    def _save_extra(self) -> str:
        return ""

    def _list_ports(self, label: str, rng: tuple[int, int] | None, invert: bool, numeric: bool) -> str:
        if rng is None:
            return ""
        bang = "!" if invert else ""
        if rng[0] == rng[1]:
            return f" {label}t:{bang}{port_name(rng[0], self.PROTO, numeric)}"
        if rng == (0, 65535) and not invert:
            return ""
        return f" {label}ts:{bang}{port_name(rng[0], self.PROTO, numeric)}:{port_name(rng[1], self.PROTO, numeric)}"

    def listing(self, numeric: bool = True) -> str:
        return self.name + self._list_ports("sp", self.sport, self.sinv, numeric) + \
            self._list_ports("dp", self.dport, self.dinv, numeric) + self._list_extra(numeric)

    def _list_extra(self, numeric: bool) -> str:
        return ""

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if pkt.proto != self.PROTO:
            return False
        if self.sport is not None and ((self.sport[0] <= pkt.sport <= self.sport[1]) == self.sinv):
            return False
        return not (self.dport is not None and ((self.dport[0] <= pkt.dport <= self.dport[1]) == self.dinv))

    def index_key(self) -> tuple[str, Any] | None:
        if self.dport is not None and not self.dinv and self.dport[0] == self.dport[1]:
            return ("dport", self.dport[0])
        return None

    def redundant(self, rule: Any) -> bool:
        return self.sport is None and self.dport is None and rule.proto == self.PROTO and not rule.proto_inv \
            and getattr(self, "flags", None) is None and getattr(self, "option", None) is None


@register_match
class TcpMatch(PortMatch):
    name = "tcp"
    PROTO = TCP
    OPTIONS = {**PortMatch.OPTIONS, "tcp-flags": 2, "syn": 0, "tcp-option": 1}

    def __init__(self) -> None:
        super().__init__()
        self.flags: tuple[int, int] | None = None
        self.finv = False
        self.option: int | None = None
        self.oinv = False

    def _extra(self, o: Opt) -> None:
        if o.name in ("tcp-flags", "syn"):
            if self.flags is not None:
                raise ExtensionError("Only one of `--syn' or `--tcp-flags'  allowed")
            try:
                self.flags = (0x17, 0x02) if o.name == "syn" else \
                    (parse_tcp_flags(o.values[0]), parse_tcp_flags(o.values[1]))
            except ValueError as exc:
                raise ExtensionError(str(exc)) from None
            self.finv = o.invert
        elif o.name == "tcp-option":
            self.option = int(o.values[0])
            self.oinv = o.invert
        else:
            super()._extra(o)

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


@register_match
class SctpMatch(PortMatch):
    name = "sctp"
    PROTO = SCTP
