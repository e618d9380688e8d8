"""Conntrack hygiene after a sync: UDP flows pinned to endpoints that are gone are deleted.

A UDP client that keeps its source port (DNS resolvers do) keeps hitting its conntrack entry,
which still points at the old endpoint, or at nothing when the Service had no endpoints when the
flow began. Like upstream, after each sync every UDP flow to a Service address or node port whose
reply source is not a current endpoint is deleted, so the next packet is load-balanced afresh.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kproxy.proxy.serviceports import Snapshot

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node

_FIELD = re.compile(r"(src|dst|sport|dport)=(\S+)")


@dataclass(frozen=True)
class UdpFlow:
    src: str
    dst: str
    sport: int
    dport: int
    reply_src: str


def stale_targets(old: Snapshot, new: Snapshot) -> tuple[dict[tuple[str, int], set[str]], dict[int, set[str]]]:
    """For UDP service ports whose endpoints changed: (address, port) and node port -> valid endpoint IPs."""
    vips: dict[tuple[str, int], set[str]] = {}
    nodeports: dict[int, set[str]] = {}
    for key in set(old.ports) | set(new.ports):
        info = new.ports.get(key) or old.ports[key]
        if info.protocol != "udp":
            continue
        before = {e.ip for e in old.endpoints.get(key, []) if e.ready or (e.serving and e.terminating)}
        after = {e.ip for e in new.endpoints.get(key, []) if e.ready or (e.serving and e.terminating)}
        if before == after and key in old.ports and key in new.ports:
            continue
        for ip in (info.cluster_ip, *info.external_ips, *info.lb_vips):
            vips[(ip, info.port)] = after
        if info.node_port:
            nodeports[info.node_port] = after
    return vips, nodeports


def is_stale(flow: UdpFlow, vips: dict[tuple[str, int], set[str]], nodeports: dict[int, set[str]],
             local: set[str]) -> bool:
    valid = vips.get((flow.dst, flow.dport))
    if valid is None and flow.dst in local:
        valid = nodeports.get(flow.dport)
    return valid is not None and flow.reply_src not in valid


class EmulatedConntrackCleaner:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.deleted = 0

    def clean_stale(self, old: Snapshot, new: Snapshot, proxier: Any) -> int:
        from kproxy.packet import format_addr

        vips, nodeports = stale_targets(old, new)
        if not vips and not nodeports:
            return 0
        ct = self.node.conntrack
        local = {format_addr(a.addr, a.family) for i in self.node.interfaces.values() for a in i.addresses}
        n = 0
        for conn in ct.entries():
            if conn.orig.proto != 17:
                continue
            o, r = conn.orig, conn.reply
            flow = UdpFlow(format_addr(o.src, o.family), format_addr(o.dst, o.family), o.sport, o.dport,
                           format_addr(r.src, r.family))
            if is_stale(flow, vips, nodeports, local):
                ct.delete(conn)
                n += 1
        self.deleted += n
        return n


def parse_conntrack_udp(text: str) -> list[UdpFlow]:
    flows = []
    for line in text.splitlines():
        if not line.startswith("udp"):
            continue
        fields = _FIELD.findall(line)
        if len(fields) < 8:
            continue
        o = dict(fields[:4])
        r = dict(fields[4:8])
        flows.append(UdpFlow(o["src"], o["dst"], int(o["sport"]), int(o["dport"]), r["src"]))
    return flows


class KernelConntrackCleaner:
    """The same on a real kernel, through the conntrack tool (in ``netns`` when given)."""

    def __init__(self, netns: str | None = None) -> None:
        self.prefix = ["ip", "netns", "exec", netns] if netns else []
        self.deleted = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, "conntrack", *args], capture_output=True, text=True, timeout=30)

    def clean_stale(self, old: Snapshot, new: Snapshot, proxier: Any) -> int:
        vips, nodeports = stale_targets(old, new)
        if not vips and not nodeports:
            return 0
        flows = parse_conntrack_udp(self._run("-L", "-p", "udp").stdout)
        local = set(proxier.node_ips)
        n = 0
        for f in flows:
            if is_stale(f, vips, nodeports, local):
                self._run("-D", "-p", "udp", "-s", f.src, "-d", f.dst, "--sport", str(f.sport), "--dport", str(f.dport))
                n += 1
        self.deleted += n
        return n
