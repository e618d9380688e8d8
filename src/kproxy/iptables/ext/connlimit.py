"""The connlimit match: the number of tracked connections from (or to) an address group, compared
with a limit. Counted over the node's conntrack table, as xt_connlimit counts its own list."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import CUSTOM, NONE, UINT32, XTOPT_INVERT, XtCall, XtOpt, XtOptions
from kproxy.iptables.xtutil import c_strtoul
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule


def parse_plen(call: XtCall) -> int:
    """XTTYPE_PLEN as iptables 1.8.9 reads it: a decimal prefix length (IPv4 takes any number, which the
    extension or the kernel then limits; IPv6 at most 128) or a network mask, counted in bits."""
    bits = 32 if call.family == 4 else 128
    got = c_strtoul(call.arg, 10)
    if got is not None and not got[1] and (call.family == 4 or got[0] <= bits):
        return got[0]
    try:
        mask = ipaddress.ip_address(call.arg)
        if mask.version == call.family:
            return bin(int(mask)).count("1")
    except ValueError:
        pass
    raise ExtensionError(f"{call.ext}: bad value for option \"--{call.opt}\", neither a valid network mask "
                         f"nor valid CIDR (0-{bits}).\n")


def options() -> XtOptions:
    return XtOptions(
        "connlimit",
        XtOpt("connlimit-upto", UINT32, XTOPT_INVERT, excl=("connlimit-above",)),
        XtOpt("connlimit-above", UINT32, XTOPT_INVERT, excl=("connlimit-upto",)),
        XtOpt("connlimit-mask", CUSTOM, parse=parse_plen),
        XtOpt("connlimit-saddr", NONE, excl=("connlimit-daddr",)),
        XtOpt("connlimit-daddr", NONE, excl=("connlimit-saddr",)),
    )


@register_match
class ConnlimitMatch(Match):
    SHAREABLE = True
    name = "connlimit"
    REVISION = 1
    NEEDS_CONNTRACK = True
    OPTIONS = options()

    def __init__(self, limit: int, upto: bool, mask: int, daddr: bool, bits: int) -> None:
        self.limit, self.upto, self.mask, self.daddr, self.bits = limit, upto, mask, daddr, bits

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> ConnlimitMatch:
        table = cls.OPTIONS
        got = table.parse(opts, family)
        if "connlimit-upto" not in got and "connlimit-above" not in got:
            raise ExtensionError("You must specify \"--connlimit-above\" or \"--connlimit-upto\".")
        table.fcheck(got)
        key = "connlimit-upto" if "connlimit-upto" in got else "connlimit-above"
        upto = (key == "connlimit-upto") != got.invert(key)
        bits = 32 if family == 4 else 128
        return cls(got.get(key), upto, min(got.get("connlimit-mask", bits), bits), "connlimit-daddr" in got, bits)

    def save(self) -> str:
        return (f"-m connlimit --connlimit-{'upto' if self.upto else 'above'} {self.limit} --connlimit-mask "
                f"{self.mask} --connlimit-{'daddr' if self.daddr else 'saddr'}")

    def listing(self, numeric: bool = True) -> str:
        return f"#conn {'dst' if self.daddr else 'src'}/{self.mask} {'<=' if self.upto else '>'} {self.limit}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        """Count the tracked connections whose original address (masked) is this packet's, this one
        included when it is new, then compare (connlimit_mt)."""
        shift = self.bits - self.mask
        want = (pkt.dst if self.daddr else pkt.src) >> shift
        count = 0
        conns = ctx.node.conntrack.entries() if getattr(ctx.node, "conntrack", None) is not None else []
        mine = pkt.ct
        for conn in conns:
            orig = conn.orig
            if orig.family == pkt.family and ((orig.dst if self.daddr else orig.src) >> shift) == want:
                count += 1
        if mine is None or not any(conn is mine for conn in conns):
            count += 1
        return (count > self.limit) != self.upto
