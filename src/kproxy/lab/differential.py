"""Differential runs: the same ruleset and packets through the Linux kernel and the emulated node.

A case is a ruleset (iptables-restore input) and a list of probes. Each probe is what a real
program does: a TCP connect (SYN, and when answered the SYN-ACK, the ACK and an abortive RST) or a
UDP datagram (and the echo or the ICMP error that answers it), from the client or from the node
itself. The kernel side runs in a ``KernelLab``; the emulator side replays the very same packets
(the same source ports) through a ``Node`` shaped like the lab's node, with the sink and the node's
listeners answering as the kernel's do. Compared: each probe's fate and the addresses it reached
the sink with, every rule's packet counter, and the conntrack table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kproxy.cli.conntrack_cmd import format_conn
from kproxy.lab.kernel import KernelLab, Observation
from kproxy.node import Node
from kproxy.packet import ACK, ICMP, RST, SYN, TCP, UDP, Packet, parse_addr

CLIENT_IP = "10.0.1.2"
TABLES = ("raw", "mangle", "nat", "filter")
SYN_LEN, ACK_LEN, RST_LEN, UDP_LEN = 60, 52, 40, 34
_COUNTED = re.compile(r"^\[(\d+):(\d+)\] (-A .*)$")


@dataclass(frozen=True)
class Probe:
    proto: str            # tcp or udp
    dst: str
    dport: int
    from_node: bool = False

    def text(self) -> str:
        return f"{'node' if self.from_node else 'client'} -> {self.dst}:{self.dport}/{self.proto}"


@dataclass
class Case:
    rules: str
    probes: list[Probe]


@dataclass
class Outcome:
    """One side's view of a case."""

    fates: list[str] = field(default_factory=list)
    arrivals: list[str] = field(default_factory=list)     # src:sport -> dst:dport as the sink saw it
    counters: dict[str, int] = field(default_factory=dict)
    conntrack: list[str] = field(default_factory=list)


@dataclass
class Disagreement:
    what: str
    kernel: Any
    emulator: Any

    def text(self) -> str:
        return f"{self.what}:\n    kernel:   {self.kernel}\n    emulator: {self.emulator}"


RESET = "".join(f"*{t}\nCOMMIT\n" for t in TABLES)


def rule_counters(save_text: str) -> dict[str, int]:
    """``-A ...`` line (numbered when repeated) -> packet count, from ``iptables-save -c``."""
    out: dict[str, int] = {}
    for line in save_text.splitlines():
        m = _COUNTED.match(line)
        if m:
            key = m.group(3)
            n = 1
            while key in out:
                n += 1
                key = f"{m.group(3)}  #{n}"
            out[key] = int(m.group(1))
    return out


def conntrack_lines(text: str) -> list[str]:
    """Entries without their timeouts (which tick), sorted."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[1].isdigit():
            out.append(" ".join(parts[:2] + parts[3:]))
    return sorted(out)


# ---- the kernel side ---------------------------------------------------------------------------------
def run_kernel(lab: KernelLab, case: Case) -> tuple[Outcome, list[Observation]]:
    lab.restore(RESET)
    lab.flush()
    lab.restore(case.rules)
    lab.flush()
    out = Outcome()
    observations = []
    for p in case.probes:
        obs = lab.probe(p.proto, p.dst, p.dport, timeout=0.08, from_node=p.from_node)
        observations.append(obs)
        out.fates.append(obs.fate)
        out.arrivals.append(_arrival(obs.at_sink[0]) if obs.at_sink else "")
    out.counters = rule_counters(lab.save(counters=True))
    out.conntrack = conntrack_lines(lab.conntrack())
    return out, observations


def _arrival(d: dict[str, Any]) -> str:
    return f"{d['src']}:{d['sport']} -> {d['dst']}:{d['dport']}"


# ---- the emulator side -------------------------------------------------------------------------------
class EmulatedPeers:
    """The node under test plus the client, sink and node-local listeners that answer it."""

    def __init__(self, lab: KernelLab | None, description: dict[str, Any]) -> None:
        self.node = Node.from_description(description)
        self.node.clock = 1000.0
        self.tcp_ports = set(lab.listen_tcp) if lab else {80, 8080, 443, 53}
        self.udp_ports = set(lab.listen_udp) if lab else {53, 5353, 8080}
        self.node_ports = set(lab.node_ports) if lab else {53, 80, 443, 5353, 8080, 9999}

    def probe(self, p: Probe, sport: int) -> tuple[str, str]:
        """Play one probe; return (fate, arrival at the sink)."""
        node = self.node
        proto = TCP if p.proto == "tcp" else UDP
        src = "0.0.0.0" if p.from_node else CLIENT_IP
        first = Packet.make(src, p.dst, proto, sport, p.dport, tcp_flags=SYN if proto == TCP else 0,
                            length=SYN_LEN if proto == TCP else UDP_LEN)
        if p.from_node:
            first.src = 0
            res = node.send(first)
        else:
            res = node.receive(first, "eth0")
        sent = res.packet
        if res.fate == "rejected":
            # Seen from the sender: rejected only if the ICMP error or reset reaches it.
            answer = res.extra.get("reply")
            reached = answer is not None and (answer.fate == "delivered" if p.from_node else
                                              answer.fate == "forwarded" and answer.out_dev == "eth0")
            return ("rejected" if reached else "dropped"), ""
        if res.fate == "dropped":
            return "dropped", ""
        if res.fate == "forwarded" and res.out_dev == "eth1":
            arrival = f"{sent.src_str}:{sent.sport} -> {sent.dst_str}:{sent.dport}"
            self._answer(sent, lambda pkt: node.receive(pkt, "eth1"), from_client=not p.from_node)
            return "forwarded", arrival
        if res.fate == "delivered":
            accepted = self._answer(sent, node.send, from_client=not p.from_node, local=True)
            # What a program sees: a TCP server gets a connection only if the handshake completes.
            return ("delivered" if accepted or proto == UDP else "dropped"), ""
        return res.fate, ""

    def _answer(self, got: Packet, send_back: Any, from_client: bool, local: bool = False) -> bool:
        """The receiving end's answer, and the client's next packets, through the node."""
        node = self.node
        proto = got.proto
        ports = self.node_ports if local else (self.tcp_ports if proto == TCP else self.udp_ports)
        listening = got.dport in ports
        if proto == UDP:
            if listening:
                reply = Packet(src=got.dst, dst=got.src, proto=UDP, sport=got.dport, dport=got.sport, length=UDP_LEN)
            else:
                reply = Packet(src=got.dst, dst=got.src, proto=ICMP, icmp_type=3, icmp_code=3, inner=got.copy(),
                               length=UDP_LEN + 28)
            send_back(reply)
            return True
        if not listening:
            send_back(Packet(src=got.dst, dst=got.src, proto=TCP, sport=got.dport, dport=got.sport,
                             tcp_flags=RST | ACK, length=RST_LEN))
            return False
        synack = Packet(src=got.dst, dst=got.src, proto=TCP, sport=got.dport, dport=got.sport, tcp_flags=SYN | ACK,
                        length=SYN_LEN)
        back = send_back(synack)
        if back.fate not in ("forwarded", "delivered"):
            return False
        orig = back.packet          # as the client sees the answer: the client's next packets go the other way
        results = []
        for flags, length in ((ACK, ACK_LEN), (RST | ACK, RST_LEN)):
            pkt = Packet(src=orig.dst, dst=orig.src, proto=TCP, sport=orig.dport, dport=orig.sport, tcp_flags=flags,
                         length=length)
            results.append(node.receive(pkt, "eth0") if from_client else node.send(pkt))
        return results[0].fate in ("forwarded", "delivered")


def run_emulator(case: Case, sports: list[int], lab: KernelLab | None = None,
                 description: dict[str, Any] | None = None) -> Outcome:
    desc = description or KernelLab.node_description()
    peers = EmulatedPeers(lab, desc)
    peers.node.iptables_restore(case.rules)
    out = Outcome()
    for p, sport in zip(case.probes, sports, strict=True):
        fate, arrival = peers.probe(p, sport)
        out.fates.append(fate)
        out.arrivals.append(arrival)
    out.counters = rule_counters(peers.node.iptables_save(counters=True))
    now = peers.node.now()
    out.conntrack = conntrack_lines("\n".join(format_conn(c, now) for c in peers.node.conntrack.entries()))
    return out


def compare(case: Case, kernel: Outcome, emulator: Outcome) -> list[Disagreement]:
    out = []
    for i, p in enumerate(case.probes):
        if kernel.fates[i] != emulator.fates[i]:
            out.append(Disagreement(f"probe {i + 1} ({p.text()}) fate", kernel.fates[i], emulator.fates[i]))
        elif kernel.arrivals[i] != emulator.arrivals[i]:
            out.append(Disagreement(f"probe {i + 1} ({p.text()}) arrived at the sink as",
                                    kernel.arrivals[i], emulator.arrivals[i]))
    for rule in sorted(set(kernel.counters) | set(emulator.counters)):
        k, e = kernel.counters.get(rule), emulator.counters.get(rule)
        if k != e:
            out.append(Disagreement(f"packets counted by {rule}", k, e))
    if kernel.conntrack != emulator.conntrack:
        out.append(Disagreement("conntrack -L", kernel.conntrack, emulator.conntrack))
    return out


def run_case(lab: KernelLab, case: Case) -> list[Disagreement]:
    """Kernel first (it picks the source ports), then the emulator with the same ports; the differences.

    A ruleset the kernel refuses must be refused by the emulator too.
    """
    from kproxy.iptables.restore import RestoreError
    from kproxy.lab.kernel import HarnessError

    try:
        kernel, observations = run_kernel(lab, case)
    except HarnessError as exc:
        try:
            Node.from_description(KernelLab.node_description()).iptables_restore(case.rules)
        except RestoreError:
            return []
        return [Disagreement("iptables-restore", str(exc), "accepted")]
    emulator = run_emulator(case, [o.sport for o in observations], lab)
    return compare(case, kernel, emulator)


def ip(text: str) -> int:
    return parse_addr(text)[1]
