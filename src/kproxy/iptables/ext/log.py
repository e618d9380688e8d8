"""The LOG and TRACE targets: kernel log lines, and marking a packet for tracing."""

from __future__ import annotations

from typing import Any

from kproxy.iptables.extension import XT_CONTINUE, ExtensionError, Opt, RuleContext, Target, register_target
from kproxy.iptables.xtutil import save_string
from kproxy.packet import ICMP, SCTP, TCP, UDP, Packet, tcp_flags_str

LEVELS = ["emerg", "alert", "crit", "error", "warning", "notice", "info", "debug"]
LIST_LEVELS = ["emerg", "alert", "crit", "err", "warn", "notice", "info", "debug"]
LEVEL_ALIASES = {"err": 3, "warn": 4, "panic": 0}
FLAG_BITS = {"log-tcp-sequence": 1, "log-tcp-options": 2, "log-ip-options": 4, "log-uid": 8,
             "log-macdecode": 32}


def log_line(prefix: str, pkt: Packet, in_dev: str, out_dev: str, flags: int = 0) -> str:
    """The line nf_log_syslog writes for a packet (without the kernel timestamp)."""
    parts = [f"{prefix}IN={in_dev} OUT={out_dev}"]
    if in_dev and pkt.src_mac:
        parts.append(f"MAC={pkt.src_mac}")
    parts.append(f"SRC={pkt.src_str} DST={pkt.dst_str} LEN={pkt.length} TOS=0x00 PREC=0x00 TTL={pkt.ttl} ID=0")
    if pkt.proto == TCP:
        flags_txt = " ".join(tcp_flags_str(pkt.tcp_flags).split(","))
        parts.append(f"PROTO=TCP SPT={pkt.sport} DPT={pkt.dport} WINDOW=0 RES=0x00 {flags_txt} URGP=0")
    elif pkt.proto in (UDP, SCTP):
        parts.append(f"PROTO={'UDP' if pkt.proto == UDP else 'SCTP'} SPT={pkt.sport} DPT={pkt.dport}"
                     + (f" LEN={pkt.length - 20}" if pkt.proto == UDP else ""))
    elif pkt.proto == ICMP:
        parts.append(f"PROTO=ICMP TYPE={pkt.icmp_type} CODE={pkt.icmp_code}")
    else:
        parts.append(f"PROTO={pkt.proto}")
    return " ".join(parts)


@register_target
class LogTarget(Target):
    name = "LOG"
    OPTIONS = {"log-level": 1, "log-prefix": 1, **{k: 0 for k in FLAG_BITS}}

    def __init__(self, level: int, prefix: str, flags: int) -> None:
        self.level, self.prefix, self.flags = level, prefix, flags

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> LogTarget:
        level, prefix, flags = 4, "", 0
        for o in opts:
            if o.name == "log-level":
                word = o.values[0]
                if word.isdigit() and int(word) < 8:
                    level = int(word)
                elif word in LEVELS:
                    level = LEVELS.index(word)
                elif word in LEVEL_ALIASES:
                    level = LEVEL_ALIASES[word]
                else:
                    raise ExtensionError(f"log-level `{word}' unknown")
            elif o.name == "log-prefix":
                prefix = o.values[0]
                if len(prefix) > 29:
                    raise ExtensionError("Maximum prefix length 29 for --log-prefix")
            else:
                flags |= FLAG_BITS[o.name]
        return cls(level, prefix, flags)

    def save(self) -> str:
        text = "-j LOG"
        if self.prefix:
            text += f" --log-prefix {save_string(self.prefix)}"
        if self.level != 4:
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

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        line = log_line(self.prefix, pkt, ctx.state.in_dev, ctx.state.out_dev, self.flags)
        ctx.node.log_lines.append(line)
        if ctx.state.trace is not None:
            ctx.state.trace.add("log", hook=ctx.hook, table=ctx.table, chain=ctx.chain, text=line)
        return XT_CONTINUE


@register_target
class TraceTarget(Target):
    name = "TRACE"
    TABLES = ("raw",)

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> TraceTarget:
        return cls()

    def save(self) -> str:
        return "-j TRACE"

    def listing(self, numeric: bool = True) -> str:
        return ""

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        pkt.trace = True
        return XT_CONTINUE
