"""Targets that send packets elsewhere or rewrite their addresses without conntrack's NAT: TEE (a
copy to a gateway), TPROXY (to a local socket, keeping the destination), NETMAP (a prefix mapped
onto another, one to one) and DNPT/SNPT (IPv6 prefix translation, RFC 6296)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from kproxy.iptables.ext.unknown import changed
from kproxy.iptables.extension import XT_CONTINUE, ExtensionError, Opt, RuleContext, Target, register_target
from kproxy.iptables.xtoptions import (
    CUSTOM,
    HOST,
    HOSTMASK,
    MARKMASK32,
    PORT,
    STRING,
    XTOPT_MAND,
    XtCall,
    XtOpt,
    XtOptions,
    xtopt_host,
)
from kproxy.iptables.xtutil import c_strtoul
from kproxy.packet import NF_DROP, TCP, UDP, Packet, format_addr

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule


@register_target
class TeeTarget(Target):
    SHAREABLE = True
    name = "TEE"
    OPTIONS = XtOptions("TEE", XtOpt("gateway", HOST, XTOPT_MAND), XtOpt("oif", STRING, size=16))

    def __init__(self, family: int, gateway: int, oif: str) -> None:
        self.family, self.gateway, self.oif = family, gateway, oif

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> TeeTarget:
        got = cls.OPTIONS.parse_all(opts, family)
        return cls(family, got.get("gateway"), got.get("oif", ""))

    def save(self) -> str:
        return f"-j TEE --gateway {format_addr(self.gateway, self.family)}" + (f" --oif {self.oif}" if self.oif else "")

    def listing(self, numeric: bool = True) -> str:
        return f"TEE gw:{format_addr(self.gateway, self.family)}" + (f" oif={self.oif}" if self.oif else "")

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        changed(ctx, "TEE", f"a copy is sent to {format_addr(self.gateway, self.family)}"
                + (f" via {self.oif}" if self.oif else ""))
        return XT_CONTINUE


@register_target
class TproxyTarget(Target):
    SHAREABLE = True
    name = "TPROXY"
    REVISION = 1
    TABLES = ("mangle",)
    HOOKS = ("PREROUTING",)
    OPTIONS = XtOptions("TPROXY", XtOpt("on-port", PORT, XTOPT_MAND), XtOpt("on-ip", HOST),
                        XtOpt("tproxy-mark", MARKMASK32))

    def __init__(self, family: int, port: int, addr: int, mark: int, mask: int) -> None:
        self.family, self.port, self.addr, self.mark, self.mask = family, port, addr, mark, mask

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> TproxyTarget:
        got = cls.OPTIONS.parse_all(opts, family)
        mark, mask = got.get("tproxy-mark", (0, 0))
        return cls(family, got.get("on-port"), got.get("on-ip", 0), mark, 0xFFFFFFFF if mask is None else mask)

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return rule.proto not in (TCP, UDP) or rule.proto_inv

    def save(self) -> str:
        return (f"-j TPROXY --on-port {self.port} --on-ip {format_addr(self.addr, self.family)} "
                f"--tproxy-mark 0x{self.mark:x}/0x{self.mask:x}")

    def listing(self, numeric: bool = True) -> str:
        return (f"TPROXY redirect {format_addr(self.addr, self.family)}:{self.port} "
                f"mark 0x{self.mark:x}/0x{self.mask:x}")

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        """tproxy_tg: only a local socket listening (transparently) on the port takes the packet; the
        emulated node has no sockets, so the packet is dropped as the kernel drops it without one."""
        changed(ctx, "TPROXY", f"no transparent socket on port {self.port}: dropped")
        return NF_DROP


@register_target
class NetmapTarget(Target):
    SHAREABLE = True
    name = "NETMAP"
    TABLES = ("nat",)
    NEEDS_CONNTRACK = True
    OPTIONS = XtOptions("NETMAP", XtOpt("to", HOSTMASK, XTOPT_MAND))

    def __init__(self, family: int, addr: int, prefix: int) -> None:
        self.family, self.addr, self.prefix = family, addr, prefix
        self.bits = 32 if family == 4 else 128

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> NetmapTarget:
        net = cls.OPTIONS.parse_all(opts, family).get("to")
        return cls(family, net.addr, net.prefixlen)

    def save(self) -> str:
        return f"-j NETMAP --to {format_addr(self.addr, self.family)}/{self.prefix}"

    def listing(self, numeric: bool = True) -> str:
        return f"to:{format_addr(self.addr, self.family)}/{self.prefix}"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        """netmap_tg: keep the host part, replace the network part (the destination before routing
        and on output, the source after routing and on input)."""
        host = (1 << (self.bits - self.prefix)) - 1
        if ctx.hook in ("PREROUTING", "OUTPUT"):
            new = self.addr | (pkt.dst & host)
            changed(ctx, "NETMAP", f"destination {pkt.dst_str} -> {format_addr(new, self.family)}")
            pkt.dst = new
        else:
            new = self.addr | (pkt.src & host)
            changed(ctx, "NETMAP", f"source {pkt.src_str} -> {format_addr(new, self.family)}")
            pkt.src = new
        return XT_CONTINUE


def parse_prefix(call: XtCall) -> tuple[int, int]:
    """XTTYPE_HOSTMASK as DNPT/SNPT keep it: the address as given and the prefix length."""
    addr, slash, length = call.arg.partition("/")
    ip = xtopt_host(addr, call.family)
    plen = 128
    if slash:
        got = c_strtoul(length, 10)
        if got is None or got[1]:
            raise ExtensionError(f"{call.ext}: bad value for option \"--{call.opt}\", neither a valid network "
                                 "mask nor valid CIDR (0-128).\n")
        plen = min(got[0], 128)
    return ip, plen


@register_target
class DnptTarget(Target):
    SHAREABLE = True
    name = "DNPT"
    FAMILIES = (6,)
    TABLES = ("mangle",)
    HOOKS: ClassVar[tuple[str, ...] | None] = ("PREROUTING", "OUTPUT")
    OPTIONS = XtOptions("DNPT", XtOpt("src-pfx", CUSTOM, XTOPT_MAND, parse=parse_prefix),
                        XtOpt("dst-pfx", CUSTOM, XTOPT_MAND, parse=parse_prefix))

    def __init__(self, src: tuple[int, int], dst: tuple[int, int]) -> None:
        self.src, self.dst = src, dst

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> DnptTarget:
        got = cls.OPTIONS.parse_all(opts, family)
        return cls(got.get("src-pfx"), got.get("dst-pfx"))

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        # ip6t_npt_checkentry: prefixes of at most 64 bits, the addresses' host bits zero, the same
        # checksum-neutral adjustment possible.
        return any(plen > 64 or addr & ((1 << (128 - plen)) - 1) for addr, plen in (self.src, self.dst))

    def save(self) -> str:
        return f"-j {self.name} --src-pfx {format_addr(self.src[0], 6)}/{self.src[1]} " \
            f"--dst-pfx {format_addr(self.dst[0], 6)}/{self.dst[1]}"

    def listing(self, numeric: bool = True) -> str:
        return f"{self.name} src-pfx {format_addr(self.src[0], 6)}/{self.src[1]} " \
            f"dst-pfx {format_addr(self.dst[0], 6)}/{self.dst[1]}"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        """The prefix of the destination (DNPT) or source (SNPT) replaced; RFC 6296 also adjusts one
        16-bit word to keep the checksum, which this model (without checksums) leaves out."""
        plen = self.src[1]
        host = (1 << (128 - plen)) - 1
        field = "dst" if self.name == "DNPT" else "src"
        old = getattr(pkt, field)
        if old & ~host & ((1 << 128) - 1) != self.src[0]:
            return XT_CONTINUE
        new = self.dst[0] | (old & host)
        changed(ctx, self.name, f"{field} {format_addr(old, 6)} -> {format_addr(new, 6)}")
        setattr(pkt, field, new)
        return XT_CONTINUE


@register_target
class SnptTarget(DnptTarget):
    name = "SNPT"
    HOOKS = ("INPUT", "POSTROUTING")
    OPTIONS = XtOptions("SNPT", XtOpt("src-pfx", CUSTOM, XTOPT_MAND, parse=parse_prefix),
                        XtOpt("dst-pfx", CUSTOM, XTOPT_MAND, parse=parse_prefix))
