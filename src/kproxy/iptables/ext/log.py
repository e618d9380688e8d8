"""The LOG and TRACE targets: kernel log lines, and marking a packet for tracing.

LOG writes the line nf_log_syslog would (``dump_ipv4_packet``/``dump_ipv6_packet``) to
``node.log_lines``, without the trailing blank the kernel leaves. Header fields the Packet model
does not carry come from ``pkt.meta`` when a caller supplies them (``ip_id``, ``tos``, ``df``,
``window``, ``seq``, ``ack_seq``, ``urgp``, ``icmp_seq``, ``uid``, ``gid``, ``dst_mac``) and are
otherwise 0. IPv6 extension headers are walked as dump_ipv6_packet walks them (``FRAG:``, and
``OPT ( ... )`` with --log-ip-options). TRACE sets the packet's nftrace bit; iptables-nft accepts it in any table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.ip6ext import FRAGMENT
from kproxy.iptables.extension import (
    XT_CONTINUE,
    ExtensionError,
    Opt,
    RuleContext,
    Target,
    Xlate,
    register_target,
)
from kproxy.iptables.xtoptions import CUSTOM, NONE, STRING, XtCall, XtOpt, XtOptions
from kproxy.iptables.xtutil import c_strtoui, save_string
from kproxy.packet import ICMP, ICMPV6, TCP, UDP, Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

LEVEL_NAMES = {"emerg": 0, "alert": 1, "crit": 2, "error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7,
               "panic": 0}
LIST_LEVELS = ["emerg", "alert", "crit", "err", "warn", "notice", "info", "debug"]
FLAG_BITS = {"log-tcp-sequence": 1, "log-tcp-options": 2, "log-ip-options": 4, "log-uid": 8,
             "log-macdecode": 32}
PREFIX_MAX = 29
DEFAULT_LEVEL = 4
XT_LOG_MASK = 0x2F     # every flag but NFLOG's
TCP_FLAG_WORDS = [("CWR", 0x80), ("ECE", 0x40), ("URG", 0x20), ("ACK", 0x10), ("PSH", 0x08), ("RST", 0x04),
                  ("SYN", 0x02), ("FIN", 0x01)]
ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_REDIRECT, ICMP_TIME_EXCEEDED, ICMP_PARAMETERPROB = 3, 4, 5, 11, 12


def parse_level(call: XtCall) -> int:
    """XTTYPE_SYSLOGLEVEL: 0..7 (base-0 number) or a syslog level name."""
    text = call.arg
    n = c_strtoui(text, 0, 7)
    if n is None:
        n = LEVEL_NAMES.get(text)
    if n is None:
        raise ExtensionError(f"log level \"{text}\" unknown\n")
    return n


def mac_header(pkt: Packet, ctx: RuleContext) -> str:
    """dump_mac_header: the Ethernet header as received, ``dst:src:ethertype`` in hex bytes."""
    iface = ctx.node.interfaces.get(ctx.state.in_dev)
    dst = pkt.meta.get("dst_mac") or (iface.mac if iface is not None else "")
    if not pkt.src_mac or not dst:
        return "MAC="
    ethertype = "08:00" if pkt.family == 4 else "86:dd"
    return f"MAC={dst.lower()}:{pkt.src_mac.lower()}:{ethertype}"


def exthdr_fields(pkt: Packet, flags: int) -> list[str]:
    """dump_ipv6_packet's walk of the extension headers: a fragment header always shows its offset
    (octets), M flag and id; --log-ip-options wraps each header in ``OPT ( ... )``."""
    out: list[str] = []
    for h in pkt.exthdrs:
        if flags & FLAG_BITS["log-ip-options"]:
            out.append("OPT (")
        if h.kind == FRAGMENT:
            out.append(f"FRAG:{h.offset * 8}")
            if h.mf:
                out.append("INCOMPLETE")
            out.append(f"ID:{h.ident:08x}")
        if flags & FLAG_BITS["log-ip-options"]:
            out.append(")")
    return out


def l4_fields(pkt: Packet, flags: int) -> list[str]:
    """The transport part of a line (nf_log_dump_tcp_header, nf_log_dump_udp_header, the ICMP cases);
    a non-first fragment shows only its protocol."""
    meta = pkt.meta
    if pkt.exthdrs and any(h.kind == FRAGMENT and h.offset for h in pkt.exthdrs):
        names = {TCP: "TCP", UDP: "UDP", 136: "UDPLITE", ICMPV6: "ICMPv6"}
        return [f"PROTO={names.get(pkt.proto, pkt.proto)}"]
    if pkt.proto == TCP:
        out = ["PROTO=TCP", f"SPT={pkt.sport} DPT={pkt.dport}"]
        if flags & FLAG_BITS["log-tcp-sequence"]:
            out.append(f"SEQ={meta.get('seq', 0)} ACK={meta.get('ack_seq', 0)}")
        out.append(f"WINDOW={meta.get('window', 0)} RES=0x00")
        out.extend(name for name, bit in TCP_FLAG_WORDS if pkt.tcp_flags & bit)
        out.append(f"URGP={meta.get('urgp', 0)}")
        return out
    if pkt.proto == UDP:
        header = 20 if pkt.family == 4 else 40 + sum(h.length() for h in pkt.exthdrs)
        return ["PROTO=UDP", f"SPT={pkt.sport} DPT={pkt.dport} LEN={pkt.length - header}"]
    if pkt.proto == ICMP and pkt.family == 4:
        out = ["PROTO=ICMP", f"TYPE={pkt.icmp_type} CODE={pkt.icmp_code}"]
        if pkt.icmp_type in (0, 8):
            out.append(f"ID={pkt.icmp_id} SEQ={meta.get('icmp_seq', 0)}")
        elif pkt.icmp_type in (ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_TIME_EXCEEDED) and pkt.inner is not None:
            out.append("[" + " ".join(ip_fields(pkt.inner, flags)) + "]")
        return out
    if pkt.proto == ICMPV6 and pkt.family == 6:
        out = ["PROTO=ICMPv6", f"TYPE={pkt.icmp_type} CODE={pkt.icmp_code}"]
        if pkt.icmp_type in (128, 129):
            out.append(f"ID={pkt.icmp_id} SEQ={meta.get('icmp_seq', 0)}")
        return out
    return [f"PROTO={pkt.proto}"]


def ip_fields(pkt: Packet, flags: int) -> list[str]:
    """dump_ipv4_packet / dump_ipv6_packet: addresses, header fields, then the transport part."""
    meta = pkt.meta
    if pkt.family == 4:
        tos = meta.get("tos", pkt.tos)
        out = [f"SRC={pkt.src_str} DST={pkt.dst_str}",
               f"LEN={pkt.length} TOS=0x{tos & 0x1E:02X} PREC=0x{tos & 0xE0:02X} TTL={pkt.ttl} ID={meta.get('ip_id', 0)}"]
        if meta.get("df"):
            out.append("DF")
    else:
        out = [f"SRC={pkt.src_str} DST={pkt.dst_str}",
               f"LEN={pkt.length} TC={meta.get('tc', pkt.tos)} HOPLIMIT={pkt.ttl} FLOWLBL={meta.get('flowlabel', 0)}"]
        if pkt.exthdrs:
            out += exthdr_fields(pkt, flags)
    return out + l4_fields(pkt, flags)


def log_line(prefix: str, pkt: Packet, ctx: RuleContext, flags: int = 0) -> str:
    """The line nf_log_syslog writes for a packet (without the kernel timestamp and the trailing blank)."""
    in_dev, out_dev = ctx.state.in_dev, ctx.state.out_dev
    parts = [f"{prefix}IN={in_dev} OUT={out_dev}"]
    if in_dev:
        parts.append(mac_header(pkt, ctx))
    parts.extend(ip_fields(pkt, flags))
    uid = pkt.meta.get("uid", pkt.uid)
    if flags & FLAG_BITS["log-uid"] and uid is not None:
        parts.append(f"UID={uid} GID={pkt.meta.get('gid', pkt.gid or 0)}")
    if pkt.mark:
        parts.append(f"MARK=0x{pkt.mark:x}")
    return " ".join(parts)


@register_target
class LogTarget(Target):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "LOG"
    OPTIONS = XtOptions("LOG", XtOpt("log-level", CUSTOM, parse=parse_level),
                        XtOpt("log-prefix", STRING, min=1, size=PREFIX_MAX + 1), *(XtOpt(f, NONE) for f in FLAG_BITS))

    def __init__(self, level: int, prefix: str, flags: int) -> None:
        self.level, self.prefix, self.flags = level, prefix, flags

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> LogTarget:
        got = cls.OPTIONS.parse_all(opts)
        flags = sum(bit for name, bit in FLAG_BITS.items() if name in got)
        return cls(got.get("log-level", DEFAULT_LEVEL), got.get("log-prefix", ""), flags)

    def save(self) -> str:
        text = "-j LOG"
        if self.prefix:
            text += f" --log-prefix {save_string(self.prefix)}"
        if self.level != DEFAULT_LEVEL:
            text += f" --log-level {self.level}"
        for name, bit in FLAG_BITS.items():
            if self.flags & bit:
                text += f" --{name}"
        return text

    def listing(self, numeric: bool = True) -> str:
        if numeric:
            text = f"LOG flags {self.flags} level {self.level}"
        else:
            text = f"LOG level {LIST_LEVELS[self.level]}"
            for name, bit in FLAG_BITS.items():
                if self.flags & bit:
                    text += " " + name[4:]
        if self.prefix:
            text += f" prefix \"{self.prefix}\""
        return text

    def translate(self, xl: Xlate) -> str:
        """log_xlate: prefix, a level other than the default, and the flags (``all`` for all)."""
        text = "log"
        if self.prefix:
            text += f" prefix \"{self.prefix}\""
        if self.level != DEFAULT_LEVEL:
            text += f" level {LIST_LEVELS[self.level]}"
        flags = self.flags
        if flags & XT_LOG_MASK == XT_LOG_MASK:
            return text + " flags all"
        tcp = [w for w, bit in (("sequence", 1), ("options", 2)) if flags & bit]
        if tcp:
            text += " flags tcp " + ",".join(tcp)
        for word, bit in (("ip options", 4), ("skuid", 8), ("ether", 0x20)):
            if flags & bit:
                text += f" flags {word}"
        return text

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        line = log_line(self.prefix, pkt, ctx, self.flags)
        ctx.node.log_lines.append(line)
        if ctx.state.trace is not None:
            ctx.state.trace.add("log", hook=ctx.hook, table=ctx.table, chain=ctx.chain, text=line,
                                detail={"level": self.level, "prefix": self.prefix})
        return XT_CONTINUE


@register_target
class TraceTarget(Target):
    SHAREABLE = True
    name = "TRACE"

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> TraceTarget:
        return cls()

    def save(self) -> str:
        return "-j TRACE"

    def listing(self, numeric: bool = True) -> str:
        return ""

    def translate(self, xl: Xlate) -> str:
        return "nftrace set 1"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        pkt.trace = True
        return XT_CONTINUE
