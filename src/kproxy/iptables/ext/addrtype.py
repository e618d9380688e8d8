"""The addrtype match (revision 1): the route type of the source or destination address."""

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
from kproxy.iptables.xtoptions import CUSTOM, NONE, XTOPT_INVERT, XtCall, XtOpt, XtOptions
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

TYPES = ["UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE", "UNREACHABLE",
         "PROHIBIT", "THROW", "NAT", "XRESOLVE"]


FIB_TYPES = TYPES[:9]     # the route types nft's fib expression names
IN_HOOKS = ("PREROUTING", "INPUT", "FORWARD")
OUT_HOOKS = ("OUTPUT", "POSTROUTING", "FORWARD")


def _type(word: str) -> str | None:
    """The first type whose name starts with ``word`` (libxt_addrtype compares only the given length)."""
    for name in TYPES:
        if word and name.startswith(word.upper()):
            return name
    return None


def parse_types(call: XtCall) -> list[str]:
    """A comma list of types, printed back in the kernel's bit order without duplicates."""
    found: set[str] = set()
    rest = call.arg
    while "," in rest:
        word, _, tail = rest.partition(",")
        t = _type(word)
        if t is None:
            raise ExtensionError(f"addrtype: bad type `{rest}'")
        found.add(t)
        rest = tail
    t = _type(rest)
    if t is None:
        raise ExtensionError(f"addrtype: bad type \"{rest}\"")
    found.add(t)
    return sorted(found, key=TYPES.index)


@register_match
class AddrtypeMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "addrtype"
    OPTIONS = XtOptions(
        "addrtype",
        XtOpt("src-type", CUSTOM, XTOPT_INVERT, parse=parse_types),
        XtOpt("dst-type", CUSTOM, XTOPT_INVERT, parse=parse_types),
        XtOpt("limit-iface-in", NONE, excl=("limit-iface-out",)),
        XtOpt("limit-iface-out", NONE, excl=("limit-iface-in",)),
    )

    def __init__(self) -> None:
        self.src: list[str] | None = None
        self.dst: list[str] | None = None
        self.src_inv = self.dst_inv = False
        self.iface_in = self.iface_out = False

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> AddrtypeMatch:
        m = cls()
        got = cls.OPTIONS.parse(opts)
        m.src, m.src_inv = got.get("src-type"), got.invert("src-type")
        m.dst, m.dst_inv = got.get("dst-type"), got.invert("dst-type")
        m.iface_in, m.iface_out = "limit-iface-in" in got, "limit-iface-out" in got
        if m.src is None and m.dst is None:
            raise ExtensionError("addrtype: you must specify --src-type or --dst-type")
        cls.OPTIONS.fcheck(got)
        return m

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        """addrtype_mt_checkentry_v1: an interface limit only where that interface exists."""
        return bool(self.iface_in and builtin_chain_outside(chain, IN_HOOKS)
                    or self.iface_out and builtin_chain_outside(chain, OUT_HOOKS))

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

    def translate(self, xl: Xlate) -> str:
        """addrtype_mt_xlate: ``fib saddr type`` (the source's types when both are given, as the
        tool does), by the interface when limited; types nft has no name for are left out."""
        key, types, inv = ("saddr", self.src, self.src_inv) if self.src is not None else \
            ("daddr", self.dst, self.dst_inv)
        names = [t.lower() for t in types or () if t in FIB_TYPES]
        iface = " . iif" if self.iface_in else " . oif" if self.iface_out else ""
        value = "" if not names else names[0] if len(names) == 1 else "{ " + ", ".join(names) + " }"
        return f"fib {key}{iface} type {'!= ' if inv else ''}{value}".rstrip()

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        node = ctx.node
        dev = ctx.state.in_dev if self.iface_in else ctx.state.out_dev if self.iface_out else None
        if self.src is not None and (node.addr_type(pkt.family, pkt.src, dev) in self.src) == self.src_inv:
            return False
        return not (self.dst is not None and
                    (node.addr_type(pkt.family, pkt.dst, dev) in self.dst) == self.dst_inv)
