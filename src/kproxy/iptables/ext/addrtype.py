"""The addrtype match (revision 1): the route type of the source or destination address."""

from __future__ import annotations

from typing import Any

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.packet import Packet

TYPES = ["UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE", "UNREACHABLE",
         "PROHIBIT", "THROW", "NAT", "XRESOLVE"]


def parse_types(text: str) -> list[str]:
    out = []
    for word in text.split(","):
        if word.upper() not in TYPES:
            raise ExtensionError(f"addrtype: unknown type \"{word}\"")
        out.append(word.upper())
    return sorted(set(out), key=TYPES.index)


@register_match
class AddrtypeMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "addrtype"
    OPTIONS = {"src-type": 1, "dst-type": 1, "limit-iface-in": 0, "limit-iface-out": 0}

    def __init__(self) -> None:
        self.src: list[str] | None = None
        self.dst: list[str] | None = None
        self.src_inv = self.dst_inv = False
        self.iface_in = self.iface_out = False

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> AddrtypeMatch:
        m = cls()
        for o in opts:
            if o.name == "src-type":
                m.src, m.src_inv = parse_types(o.values[0]), o.invert
            elif o.name == "dst-type":
                m.dst, m.dst_inv = parse_types(o.values[0]), o.invert
            elif o.name == "limit-iface-in":
                m.iface_in = True
            else:
                m.iface_out = True
        if m.src is None and m.dst is None:
            raise ExtensionError("addrtype: you must specify --src-type or --dst-type")
        if m.iface_in and m.iface_out:
            raise ExtensionError("addrtype: you can't specify both --limit-iface-in and --limit-iface-out")
        return m

    def save(self) -> str:
        text = "-m addrtype"
        if self.src is not None:
            text += f" {'! ' if self.src_inv else ''}--src-type {','.join(self.src)}"
        if self.dst is not None:
            text += f" {'! ' if self.dst_inv else ''}--dst-type {','.join(self.dst)}"
        if self.iface_in:
            text += " --limit-iface-in"
        if self.iface_out:
            text += " --limit-iface-out"
        return text

    def listing(self, numeric: bool = True) -> str:
        text = "ADDRTYPE match"
        if self.src is not None:
            text += f" src-type {'!' if self.src_inv else ''}{','.join(self.src)}"
        if self.dst is not None:
            text += f" dst-type {'!' if self.dst_inv else ''}{','.join(self.dst)}"
        if self.iface_in:
            text += " limit-in"
        if self.iface_out:
            text += " limit-out"
        return text

    def check_hook(self, hook: str) -> None:
        if self.iface_in and hook in ("OUTPUT", "POSTROUTING"):
            raise ExtensionError("addrtype: --limit-iface-in cannot be used in this chain")

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        node = ctx.node
        dev = ctx.state.in_dev if self.iface_in else ctx.state.out_dev if self.iface_out else None
        if self.src is not None and (node.addr_type(pkt.family, pkt.src, dev) in self.src) == self.src_inv:
            return False
        return not (self.dst is not None and
                    (node.addr_type(pkt.family, pkt.dst, dev) in self.dst) == self.dst_inv)
