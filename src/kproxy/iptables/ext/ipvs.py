"""ipvs: packets IPVS has handled, by the virtual service of their IPVS connection.

As xt_ipvs: with any of --vaddr, --vport, --vproto the packet must have been through IPVS
(skb->ipvs_property) and its connection's virtual address, port and the packet's protocol must
agree. kube-proxy's IPVS mode uses it to keep the node itself off load balancers whose source
ranges leave the node out (KUBE-IPVS-OUT-FILTER).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import CUSTOM, XTOPT_INVERT, XtCall, XtOpt, XtOptions
from kproxy.packet import PROTO_NUMBERS, Packet, format_addr

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule


def _proto(call: XtCall) -> int:
    v = call.arg
    num = int(v) if v.isdigit() else PROTO_NUMBERS.get(v.lower())
    if num is None or not 0 <= num <= 255:
        raise ExtensionError(f"unknown protocol \"{v}\" specified")
    return num


def _addr(call: XtCall) -> tuple[int, int]:
    try:
        net = ipaddress.ip_network(call.arg, strict=False)
    except ValueError:
        raise ExtensionError(f"host/network `{call.arg}' not found") from None
    return int(net.network_address), net.prefixlen


def _port(call: XtCall) -> int:
    v = call.arg
    if not v.isdigit() or int(v) > 65535:
        raise ExtensionError(f"ipvs: Bad value for \"--vport\" option: \"{v}\"")
    return int(v)


IPVS_OPTS = XtOptions(
    "ipvs",
    XtOpt("ipvs", flags=XTOPT_INVERT),
    XtOpt("vproto", CUSTOM, XTOPT_INVERT, parse=_proto),
    XtOpt("vaddr", CUSTOM, XTOPT_INVERT, parse=_addr),
    XtOpt("vport", CUSTOM, XTOPT_INVERT, parse=_port),
)


@register_match
class IpvsMatch(Match):
    SHAREABLE = True
    name = "ipvs"
    OPTIONS = IPVS_OPTS

    def __init__(self, family: int) -> None:
        self.family = family
        self.property: bool | None = None        # --ipvs (None: not given), as its truth value
        self.proto: tuple[int, bool] | None = None
        self.addr: tuple[int, int, bool] | None = None     # address, prefix length, inverted
        self.port: tuple[int, bool] | None = None

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> IpvsMatch:
        m = cls(family)
        got = IPVS_OPTS.parse_all(opts, family, rule)
        if "ipvs" in got:
            m.property = not got.invert("ipvs")
        if "vproto" in got:
            m.proto = (got.get("vproto"), got.invert("vproto"))
        if "vaddr" in got:
            m.addr = (*got.get("vaddr"), got.invert("vaddr"))
        if "vport" in got:
            m.port = (got.get("vport"), got.invert("vport"))
        if m.property is None and m.proto is None and m.addr is None and m.port is None:
            raise ExtensionError("IPVS: At least one option is required")
        return m

    def _parts(self, prefix: str) -> list[str]:
        bits = 32 if self.family == 4 else 128
        out = []
        if self.property is not None:
            out.append(f"{'' if self.property else '! '}{prefix}ipvs")
        if self.proto is not None:
            out.append(f"{'! ' if self.proto[1] else ''}{prefix}vproto {self.proto[0]}")
        if self.addr is not None:
            a, plen, inv = self.addr
            mask = "" if plen == bits else f"/{plen}"
            out.append(f"{'! ' if inv else ''}{prefix}vaddr {format_addr(a, self.family)}{mask}")
        if self.port is not None:
            out.append(f"{'! ' if self.port[1] else ''}{prefix}vport {self.port[0]}")
        return out

    def save(self) -> str:
        return " ".join(["-m ipvs", *self._parts("--")])

    def listing(self, numeric: bool = True) -> str:
        return " ".join(self._parts(""))

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        conn = pkt.meta.get("ipvs_conn")
        if self.property is not None and self.proto is None and self.addr is None and self.port is None:
            return (conn is not None) == self.property
        if conn is None:
            return False
        if self.proto is not None and (pkt.proto == self.proto[0]) == self.proto[1]:
            return False
        if self.addr is not None:
            a, plen, inv = self.addr
            bits = 32 if self.family == 4 else 128
            shift = bits - plen
            if ((conn.vaddr >> shift) == (a >> shift)) == inv:
                return False
        return self.port is None or (conn.vport == self.port[0]) != self.port[1]
