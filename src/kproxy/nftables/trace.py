"""nft rules in packet traces, and ``nft monitor trace``'s lines for them.

The evaluator records a ``rule`` event for each rule that matched (its verdict: continue, accept,
drop, return, jump/goto CHAIN) and a ``policy`` event when a base chain falls through, as the kernel's
nft_trace_notify does; ``kproxy trace`` shows them beside iptables' rules. Each event says whether
the packet carried nf_trace (``meta nftrace set 1``, or iptables' TRACE) at that point: only those
reach ``nft monitor trace``, which prints the packet's headers with the first event of each base
chain, then ``rule ... (verdict ...)`` and ``policy ...`` lines.
"""

from __future__ import annotations

import itertools
import random
from typing import TYPE_CHECKING, Any

from kproxy.netfilter.trace import Trace
from kproxy.nftables import types as T
from kproxy.nftables.expr import Opts
from kproxy.nftables.model import Ruleset

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.netfilter.hooks import HookState
    from kproxy.nftables.model import Chain, Rule, Table
    from kproxy.packet import Packet

RUNS = itertools.count(1)
TCP_FLAGS = ((0x01, "fin"), (0x02, "syn"), (0x04, "rst"), (0x08, "psh"), (0x10, "ack"), (0x20, "urg"),
             (0x40, "ecn"), (0x80, "cwr"))


class ChainTrace:
    """One traversal of a base chain: its run number and whether the packet line was printed yet."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.run = next(RUNS)
        self.packet_shown = False

    def event(self, state: HookState, pkt: Packet, kind: str, chain: Chain, verdict: str,
              rule: Rule | None = None, number: int = 0) -> None:
        assert state.trace is not None
        detail: dict[str, Any] = {"nft": self.table.family, "run": self.run, "nftrace": bool(pkt.trace)}
        if pkt.trace and not self.packet_shown:
            detail["packet"] = packet_fields(pkt, state, self.table.family)
            self.packet_shown = True
        if rule is not None:
            detail["handle"] = rule.handle
        state.trace.add(kind, hook=state.hook, table=f"{self.table.family} {self.table.name}", chain=chain.name,
                        rule=number, text=rule.text(Opts()) if rule is not None else "", verdict=verdict,
                        detail=detail)


def packet_fields(pkt: Packet, state: HookState, family: str) -> str:
    """The headers nft monitor prints for a packet (those the emulator knows: no link layer, IP id 0)."""
    net = "ip" if pkt.family == 4 else "ip6"
    iif = state.in_dev or ("" if pkt.local else pkt.iif)  # a forwarded packet keeps its input device
    parts = [f'{word} "{dev}"' for word, dev in (("iif", iif), ("oif", state.out_dev)) if dev]
    parts += [f"{net} saddr {pkt.src_str}", f"{net} daddr {pkt.dst_str}"]
    if pkt.family == 4:
        parts += ["ip dscp cs0", "ip ecn not-ect", f"ip ttl {pkt.ttl}", "ip id 0"]
        if family == "inet":
            parts.append(f"ip protocol {pkt.proto_name}")
        parts.append(f"ip length {pkt.length}")
    else:
        parts += ["ip6 dscp cs0", "ip6 ecn not-ect", "ip6 flowlabel 0", f"ip6 length {max(0, pkt.length - 40)}",
                  f"ip6 nexthdr {nexthdr_name(pkt)}", f"ip6 hoplimit {pkt.ttl}"]
    return " ".join(parts + l4_fields(pkt))


def nexthdr_name(pkt: Packet) -> str:
    """The IPv6 header's next header: the first extension header's protocol name when there is one."""
    if not pkt.exthdrs:
        return pkt.proto_name
    return T.protocols()[1].get(pkt.nexthdr, str(pkt.nexthdr))


def l4_fields(pkt: Packet) -> list[str]:
    name = pkt.proto_name
    if name == "tcp":
        flags = ",".join(n for bit, n in TCP_FLAGS if pkt.tcp_flags & bit)
        window = pkt.seg.window if pkt.seg is not None and pkt.seg.window else 64240
        return [f"tcp sport {pkt.sport}", f"tcp dport {pkt.dport}", f"tcp flags == {flags or '0x0'}",
                f"tcp window {window}"]
    if name in ("udp", "udplite", "sctp"):
        out = [f"{name} sport {pkt.sport}", f"{name} dport {pkt.dport}"]
        return out + ([f"udp length {max(8, pkt.length - 20)}"] if name == "udp" else [])
    if name in ("icmp", "icmpv6", "ipv6-icmp"):
        proto = "icmp" if name == "icmp" else "icmpv6"
        types, codes = (T.ICMP_TYPE, T.ICMP_CODE) if proto == "icmp" else (T.ICMPV6_TYPE, T.ICMPV6_CODE)
        echo = pkt.icmp_type in (0, 8, 128, 129)  # other types carry no id: nft prints the zero bytes
        return [f"{proto} type {types.text(pkt.icmp_type, 0)}", f"{proto} code {codes.text(pkt.icmp_code, 0)}",
                f"{proto} id {pkt.icmp_id if echo else 0}", f"{proto} sequence {1 if echo else 0}"]
    return []


def monitor_lines(trace: Trace, rs: Ruleset | None = None, trace_id: str | None = None) -> list[str]:
    """``nft monitor trace`` output for one traced packet.

    ``rs`` is the ruleset as the monitor cached it when it started (rules print with the counters of
    that moment, as nft prints its cache); without it the rule text recorded in the event is used.
    """
    tid = trace_id or f"{random.getrandbits(32):08x}"
    lines = []
    for e in trace.events:
        d = e.detail
        if "nft" not in d or not d.get("nftrace") or e.kind not in ("rule", "policy"):
            continue
        head = f"trace id {tid} {e.table} {e.chain} "
        if "packet" in d:
            lines.append(f"{head}packet: {d['packet']} ")
        if e.kind == "policy":
            lines.append(f"{head}policy {e.verdict} ")
        else:
            lines.append(f"{head}rule {cached_text(rs, e.table, e.chain, d.get('handle'), e.text)} "
                         f"(verdict {e.verdict})")
    return lines


def cached_text(rs: Ruleset | None, table: str, chain: str, handle: int | None, fallback: str) -> str:
    family, _, name = table.partition(" ")
    t = rs.find(family, name) if rs is not None else None
    c = t.chains.get(chain) if t is not None else None
    for r in c.rules if c is not None else []:
        if r.handle == handle:
            return r.text(Opts())
    return fallback
