"""A conntrack entry as one line of ``conntrack -L`` (conntrack-tools 1.4.7) prints it.

Kept beside the conntrack table rather than in the CLI: the ``conntrack`` command prints these lines,
and the lab's differential runs compare them with the kernel's.
"""

from __future__ import annotations

from kproxy.netfilter.conntrack import IPS_ASSURED, IPS_SEEN_REPLY, Conn
from kproxy.netfilter.offload import IPS_OFFLOAD
from kproxy.packet import PROTO_NAMES, TCP


def format_conn(conn: Conn, now: float, extended: bool = False, use: int = 1, with_id: bool = False,
                acct: bool = False) -> str:
    """One line of ``conntrack -L``; ``acct`` (nf_conntrack_acct on) adds each direction's packets and bytes."""
    proto = conn.orig.proto
    name = {58: "icmpv6"}.get(proto, PROTO_NAMES.get(proto, "unknown"))
    parts = [f"{name:<8} {proto} {conn.timeout_at(now)}"]
    if proto == TCP:
        parts.append(conn.tcp_state)
    parts.append(conn.orig.text())
    if conn.zone and conn.zone_dir == 1:
        parts.append(f"zone-orig={conn.zone}")
    if acct:
        parts.append(f"packets={conn.acct[0]} bytes={conn.acct[2]}")
    if not conn.status & IPS_SEEN_REPLY:
        parts.append("[UNREPLIED]")
    parts.append(conn.reply.text())
    if conn.zone and conn.zone_dir == 2:
        parts.append(f"zone-reply={conn.zone}")
    if acct:
        parts.append(f"packets={conn.acct[1]} bytes={conn.acct[3]}")
    if conn.status & IPS_OFFLOAD:       # libnetfilter_conntrack shows [OFFLOAD] in place of [ASSURED]
        parts.append("[OFFLOAD]")
    elif conn.status & IPS_ASSURED:
        parts.append("[ASSURED]")
    parts.append(f"mark={conn.mark}")
    if conn.zone and conn.zone_dir == 3:
        parts.append(f"zone={conn.zone}")
    if conn.helper:
        parts.append(f"helper={conn.helper}")
    parts.append(f"use={use}")
    if with_id:
        parts.append(f"id={conn.id}")
    line = " ".join(parts)
    if extended:
        fam = "ipv4     2" if conn.orig.family == 4 else "ipv6     10"
        line = f"{fam} {line}"
    return line
