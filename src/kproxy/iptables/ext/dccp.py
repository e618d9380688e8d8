"""The dccp match: DCCP ports, packet types and options. It stays an xt match under iptables-nft, so
the kernel refuses it without ``-p dccp``; ``-p dccp --dport N`` loads it implicitly."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.ext.unknown import cannot_know
from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import PORTRC, STRING, UINT8, XTOPT_INVERT, XtOpt, XtOptions
from kproxy.iptables.xtutil import port_name
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

DCCP = 33
TYPES = ("REQUEST", "RESPONSE", "DATA", "ACK", "DATAACK", "CLOSEREQ", "CLOSE", "RESET", "SYNC", "SYNCACK", "INVALID")
INVALID_OTHERS = 0xF800


def parse_types(text: str) -> int:
    mask = 0
    for word in [w for w in text.split(",") if w]:
        upper = word.upper()
        if upper not in TYPES:
            raise ExtensionError(f"Unknown DCCP type `{word}'")
        mask |= 1 << TYPES.index(upper)
    if mask & (1 << TYPES.index("INVALID")):
        mask |= INVALID_OTHERS
    return mask


def types_text(mask: int, numeric: bool) -> str:
    out = []
    for i in range(16):
        if mask >> i & 1:
            if numeric:
                out.append(str(i))
            else:
                out.append(TYPES[i])
                if TYPES[i] == "INVALID":
                    break
    return ",".join(out)


@register_match
class DccpMatch(Match):
    SHAREABLE = True
    name = "dccp"
    OPTIONS = XtOptions(
        "dccp", XtOpt("source-port", PORTRC, XTOPT_INVERT), XtOpt("sport", PORTRC, XTOPT_INVERT, id="source-port"),
        XtOpt("destination-port", PORTRC, XTOPT_INVERT), XtOpt("dport", PORTRC, XTOPT_INVERT, id="destination-port"),
        XtOpt("dccp-types", STRING, XTOPT_INVERT), XtOpt("dccp-option", UINT8, XTOPT_INVERT, min=1))

    def __init__(self) -> None:
        self.sport: tuple[int, int] | None = None
        self.dport: tuple[int, int] | None = None
        self.types: int | None = None
        self.option: int | None = None
        self.inv: set[str] = set()
        self.kernel_proto = DCCP

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> DccpMatch:
        got = cls.OPTIONS.parse_all(opts, family)
        m = cls()
        m.sport, m.dport = got.get("source-port"), got.get("destination-port")
        m.types = parse_types(got.get("dccp-types")) if "dccp-types" in got else None
        m.option = got.get("dccp-option")
        m.inv = {k for k in got.seen() if got.invert(k)}
        return m

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return rule.proto != DCCP or rule.proto_inv

    def save(self) -> str:
        text = "-m dccp"
        for key, word, rng in (("source-port", "sport", self.sport), ("destination-port", "dport", self.dport)):
            if rng is not None:
                text += f" {'! ' if key in self.inv else ''}--{word} " + \
                    (str(rng[0]) if rng[0] == rng[1] else f"{rng[0]}:{rng[1]}")
        if self.types is not None:
            text += f" {'! ' if 'dccp-types' in self.inv else ''}--dccp-types {types_text(self.types, False)}"
        if self.option is not None:
            text += f" {'! ' if 'dccp-option' in self.inv else ''}--dccp-option {self.option}"
        return text

    def listing(self, numeric: bool = True) -> str:
        text = "dccp"
        for key, word, rng in (("source-port", "spt", self.sport), ("destination-port", "dpt", self.dport)):
            inv = key in self.inv
            if rng is not None and (rng != (0, 0xFFFF) or inv):
                bang = "!" if inv else ""
                if rng[0] == rng[1]:
                    text += f" {word}:{bang}{port_name(rng[0], DCCP, numeric)}"
                else:
                    text += f" {word}s:{bang}{port_name(rng[0], DCCP, numeric)}:{port_name(rng[1], DCCP, numeric)}"
        if self.types is not None:
            text += (" !" if "dccp-types" in self.inv else "") + " " + types_text(self.types, numeric)
        if self.option is not None:
            text += f" option={'!' if 'dccp-option' in self.inv else ''}{self.option}"
        return text

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        for key, rng, value in (("source-port", self.sport, pkt.sport), ("destination-port", self.dport, pkt.dport)):
            if rng is not None and (rng[0] <= value <= rng[1]) == (key in self.inv):
                return False
        if self.types is not None or self.option is not None:
            return cannot_know(ctx, "dccp", "the DCCP packet type and options")
        return True
