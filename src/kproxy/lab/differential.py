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

import ipaddress
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from kproxy.lab.kernel import NODE, HarnessError, KernelLab, Observation, Topology
from kproxy.lab.parsers import conntrack_lines, rule_counters
from kproxy.lab.replay import Replay, ScriptedRng, note_choices, steer
from kproxy.netfilter.ctformat import format_conn
from kproxy.netfilter.nfacct import ensure_named, named_in
from kproxy.netfilter.tcp import M32, TcpSeg
from kproxy.node import Node
from kproxy.packet import ACK, FIN, ICMP, RST, SYN, TCP, UDP, Packet, format_addr, parse_addr

TABLES = ("raw", "mangle", "nat", "filter")
SYN_LEN, ACK_LEN, RST_LEN, UDP_LEN = 60, 52, 40, 34
SOFT_ICMP_ERRORS = ("icmp-net-unreachable", "icmp-host-unreachable")   # not fatal in icmp_err_convert


class Segments:
    """The sequence numbers, windows and options of one probe's TCP segments, as the kernel lab's
    sniffers saw them, so the emulator replays the very same numbers (conntrack checks them).

    Without a captured SYN there is nothing to anchor on: the replay then carries no sequence
    numbers and conntrack tracks the flow by its state table only.
    """

    def __init__(self, seen: list[dict[str, Any]] | None) -> None:
        self.seen = seen or []
        syn = self._find(lambda d: d["flags"] & (SYN | ACK | RST) == SYN)
        synack = self._find(lambda d: d["flags"] & (SYN | ACK) == SYN | ACK)
        self.isn_c = None if syn is None else syn["seq"]
        self.isn_s = None if synack is None else synack["seq"]
        self.syn, self.synack = syn, synack

    def _find(self, test: Any) -> dict[str, Any] | None:
        return next((d for d in self.seen if test(d)), None)

    @staticmethod
    def _seg(d: dict[str, Any]) -> TcpSeg:
        return TcpSeg(d["seq"], d["ack"] if d["flags"] & ACK else 0, d["win"], d.get("wscale", -1),
                      bool(d.get("sackperm")), max(0, d.get("payload", 0)))

    def for_syn(self) -> TcpSeg | None:
        return None if self.syn is None else self._seg(self.syn)

    def for_synack(self) -> TcpSeg | None:
        if self.isn_c is None:
            return None
        if self.synack is not None:
            return self._seg(self.synack)
        return TcpSeg(0x5EED0000, (self.isn_c + 1) & M32, 65160, 7, True)   # never seen: any answer

    def for_reset_to_syn(self) -> TcpSeg | None:
        """tcp_v4_send_reset answering a SYN: sequence 0, acknowledging the SYN, window 0."""
        return None if self.isn_c is None else TcpSeg(0, (self.isn_c + 1) & M32, 0)

    def _client_seen(self, flags: int) -> dict[str, Any] | None:
        if self.isn_c is None:
            return None
        nxt = (self.isn_c + 1) & M32
        want = flags & (SYN | FIN | RST | ACK)
        return self._find(lambda d: d["flags"] & (SYN | FIN | RST | ACK) == want and d["seq"] == nxt)

    def length(self, which: str, default: int, flags: int = 0) -> int:
        """The IP length the kernel's segment had (``syn``, ``synack`` or the initiator's ``client``
        segment with ``flags``): options such as timestamps make it differ from the bare header's."""
        got = {"syn": self.syn, "synack": self.synack}.get(which) if which != "client" else self._client_seen(flags)
        return int(got.get("len", default)) if got is not None else default

    def for_client(self, flags: int) -> TcpSeg | None:
        """The initiator's ACK or abortive RST after the handshake."""
        if self.isn_c is None:
            return None
        nxt = (self.isn_c + 1) & M32
        got = self._client_seen(flags)
        if got is not None:
            return self._seg(got)
        ack = ((self.isn_s if self.isn_s is not None else 0x5EED0000) + 1) & M32
        return TcpSeg(nxt, ack, 502)


@dataclass(frozen=True)
class Probe:
    proto: str            # tcp or udp
    dst: str
    dport: int
    from_node: bool = False
    pause: float = 0.0    # seconds to wait before sending (limit, recent and timeouts see time pass)
    via: str = ""         # the node interface a client's probe arrives on ("": the lab's first)

    def text(self) -> str:
        via = f" via {self.via}" if self.via else ""
        return f"{'node' if self.from_node else 'client'}{via} -> {self.dst}:{self.dport}/{self.proto}"


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
    steps: list[dict[str, int]] = field(default_factory=list)   # the counters after each probe, when asked


@dataclass
class Disagreement:
    what: str
    kernel: Any
    emulator: Any

    def text(self) -> str:
        return f"{self.what}:\n    kernel:   {self.kernel}\n    emulator: {self.emulator}"


RESET = "".join(f"*{t}\nCOMMIT\n" for t in TABLES)


# ---- the kernel side ---------------------------------------------------------------------------------
def run_kernel(lab: KernelLab, case: Case, steps: bool = False) -> tuple[Outcome, list[Observation]]:
    """``steps`` also reads the counters after each probe (a replay matches the kernel's draws by them)."""
    lab.restore(RESET)
    lab.flush()
    ensure_kernel_nfacct(lab, case.rules)
    lab.restore(case.rules)
    lab.flush()
    out, observations = probe_kernel(lab, case, kernel_counters if steps else None)
    out.counters = kernel_counters(lab)
    return out, observations


def kernel_counters(lab: KernelLab) -> dict[str, int]:
    return rule_counters(lab.save(counters=True))


def ensure_kernel_nfacct(lab: KernelLab, rules: str) -> None:
    """Make the accounting objects the rules name on the lab's node (as kube-proxy does before its
    rules), so a ruleset taken from a node that had them loads here too."""
    for name in named_in(rules):
        made = lab.run(NODE, sys.executable, "-m", "kproxy.backends.kernel_nfacct", "ensure", name)
        if made["rc"] != 0:
            raise HarnessError(f"cannot make the nfacct object {name}: {made['err'].strip()}")


def probe_kernel(lab: KernelLab, case: Case, count: Any = None) -> tuple[Outcome, list[Observation]]:
    """The case's probes through the lab's node as loaded: fates, arrivals and the conntrack table
    (and with ``count(lab)``, the counters after each probe)."""
    out = Outcome()
    observations = []
    for p in case.probes:
        if p.pause:
            time.sleep(p.pause)
        linked = bool(p.via) and not p.from_node
        obs = lab.probe(p.proto, p.dst, p.dport, timeout=0.08, from_node=p.from_node,
                        src=lab.topology.client_on(p.via) if linked else None,
                        dev=lab.topology.client_dev_for(p.via) if linked else None)
        observations.append(obs)
        out.fates.append(obs.fate)
        out.arrivals.append(_arrival(obs.at_sink[0]) if obs.at_sink else "")
        if count is not None:
            out.steps.append(count(lab))
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
        topo = self.topology = lab.topology if lab else Topology()
        self.dev_in, self.dev_out = topo.node_in, topo.node_out   # the probe's link, the sink's
        self.sink_net = ipaddress.ip_network(f"{topo.sink}/{topo.out_prefixlen}", strict=False)
        self.node_out = parse_addr(topo.node_out_addr)[1]
        self.segs = Segments(None)
        self.peer: tuple[int, int] = (0, 0)
        self.sink_saw: Packet | None = None
        self.tracing = False                        # trace each probe's first packet (into .trace)
        self.held: dict[int, float] = {}            # connections whose packet waits for a neighbour, since
        self.owners = {topo.sink, topo.client, *topo.client_extra, *(topo.client_on(n) for n, _ in topo.links)}
        self.trace: Any = None

    def probe(self, p: Probe, sport: int, segments: Segments | None = None) -> tuple[str, str]:
        """Play one probe; return (fate, arrival at the sink)."""
        node = self.node
        self.segs = segments or Segments(None)
        proto = TCP if p.proto == "tcp" else UDP
        self.dev_in = p.via or self.topology.node_in
        src = "0.0.0.0" if p.from_node else self.topology.client_on(self.dev_in)
        first = Packet.make(src, p.dst, proto, sport, p.dport, tcp_flags=SYN if proto == TCP else 0,
                            length=self.segs.length("syn", SYN_LEN) if proto == TCP else UDP_LEN)
        if proto == TCP:
            first.seg = self.segs.for_syn()
        self.peer = (first.dst, first.dport)        # what the sender's socket is connected to
        self.sink_saw = None
        if p.from_node:
            first.src = 0
            res = node.send(_owned(first), trace=self.tracing)
        else:
            res = node.receive(first, self.dev_in, trace=self.tracing)
        self.trace = res.trace if self.tracing else None
        sent = res.packet
        if res.fate == "rejected":
            if p.from_node and proto == UDP and res.hook in ("OUTPUT", "POSTROUTING"):
                # Refused on its way out: the node's own send() fails with EPERM, and the ICMP error
                # that follows is never read (a TCP connect, by contrast, waits and sees it).
                return "dropped", ""
            if proto == UDP and res.reject_with in SOFT_ICMP_ERRORS:
                # udp_err: net and host unreachable are soft errors, which a socket without
                # IP_RECVERR never reports: the sender sees nothing come back.
                return "dropped", ""
            # Seen from the sender: rejected only if the ICMP error or reset reaches it.
            return ("rejected" if _answer_reached(res, p.from_node, self.dev_in) else "dropped"), ""
        if res.fate == "dropped":
            return "dropped", ""
        if res.fate == "forwarded" and not self._owned_next_hop(sent):
            # Nobody on that link has the next hop's address: its ARP goes unanswered and the packet
            # waits in the neighbour queue, holding its conntrack entry, until it is dropped.
            if sent.ct is not None:
                self.held[id(sent.ct)] = self.node.now()
            return "dropped", ""
        if res.fate == "forwarded" and res.out_dev == self.dev_out:
            arrival = f"{sent.src_str}:{sent.sport} -> {sent.dst_str}:{sent.dport}"
            if self.sink_answers_via_node(sent.src):
                self._answer(sent, lambda pkt: node.receive(pkt, self.dev_out), from_client=not p.from_node)
            return "forwarded", arrival
        if res.fate == "delivered":
            outcome = self._answer(sent, node.send, from_client=not p.from_node, local=True)
            # What a program sees: a TCP server gets a connection only if the handshake completes; the
            # client's connect fails if its ACK was rejected and the answer came back (a connect with a
            # timeout reads SO_ERROR, which reports the ICMP error or reset).
            if self.sink_saw is not None:       # the lab judges by what reached the sink first
                seen = self.sink_saw
                return "forwarded", f"{seen.src_str}:{seen.sport} -> {seen.dst_str}:{seen.dport}"
            if outcome == "accepted":
                return "delivered", ""
            return ("rejected" if outcome == "rejected" else "dropped"), ""
        return res.fate, ""

    def _owned_next_hop(self, sent: Packet) -> bool:
        """Whether a lab peer answers ARP for the packet's next hop (the sink answers for whatever is
        routed through it, the client for its own addresses)."""
        route = self.node.route(sent.family, sent.dst)
        hop = route.gateway if route.gateway is not None else sent.dst
        return sent.family != 4 or format_addr(hop) in self.owners

    def sink_answers_via_node(self, src: int) -> bool:
        """The sink routes its answer to the node unless the packet came from the sink's own subnet
        (SNAT to a neighbour's address): then the answer goes to itself, or to a neighbour nobody is."""
        return src == self.node_out or ipaddress.ip_address(src) not in self.sink_net

    def _answer(self, got: Packet, send_back: Any, from_client: bool, local: bool = False) -> str:
        """The receiving end's answer, and the client's next packets, through the node: whether the
        client's ACK was ``accepted``, ``rejected`` (and the answer reached the client) or ``dropped``."""
        node = self.node
        proto = got.proto
        ports = self.node_ports if local else (self.tcp_ports if proto == TCP else self.udp_ports)
        listening = got.dport in ports
        if proto == UDP:
            answer = _udp_answer(got, listening)
            back = send_back(_owned(answer) if local and listening else answer)
            if from_client:             # (a node's own probe is answered to its open socket)
                self._closed_local_port(back)
            if listening:
                self._misaddressed_datagram(back, from_client)
            if back.fate == "forwarded" and back.out_dev == self.dev_out:
                # The answer went (back) towards the sink: a node answering its own probe, or a nat
                # rule turning the sink's echo around.
                self._misdirected_to_sink(back.packet)
            if listening:
                return "accepted"
            return "rejected" if self._at_sender(back, from_client) else "dropped"     # the port unreachable
        if not listening:
            back = send_back(Packet(src=got.dst, dst=got.src, proto=TCP, sport=got.dport, dport=got.sport,
                                    tcp_flags=RST | ACK, length=RST_LEN, seg=self.segs.for_reset_to_syn()))
            return "rejected" if self._at_sender(back, from_client) else "dropped"
        synack = Packet(src=got.dst, dst=got.src, proto=TCP, sport=got.dport, dport=got.sport, tcp_flags=SYN | ACK,
                        length=self.segs.length("synack", SYN_LEN), seg=self.segs.for_synack())
        back = send_back(_owned(synack) if local else synack)
        if back.fate not in ("forwarded", "delivered"):
            return "dropped"
        orig = back.packet          # as the client sees the answer: the client's next packets go the other way
        to_client = back.fate == "forwarded" and back.out_dev == self.dev_in
        if (orig.src, orig.sport) != self.peer or (from_client and back.fate == "delivered"):
            # Not un-NATed (its reply skipped conntrack, say): no socket is connected to that address,
            # so the TCP that got it (the client's, or the node's own) answers with a reset, and the
            # connection never completes.
            seg = None if synack.seg is None else TcpSeg(synack.seg.ack)
            reset = Packet(src=orig.dst, dst=orig.src, proto=TCP, sport=orig.dport, dport=orig.sport, tcp_flags=RST,
                           length=RST_LEN, seg=seg)
            if to_client:
                node.receive(reset, self.dev_in)
            elif back.fate == "delivered":
                node.send(reset)
            return "dropped"
        ack = self._client_segment(orig, ACK, ACK_LEN, from_client)
        was_reset = ack.fate == "rejected" and ack.reject_with == "tcp-reset" and \
            _answer_reached(ack, not from_client, self.dev_in)
        if not was_reset and not local and ack.fate == "forwarded" and ack.out_dev == self.dev_out:
            was_reset = self._sink_resets(got, ack.packet, from_client)
        if not was_reset:
            # The program closes with SO_LINGER 0: an abortive RST, unless a reset for its ACK already
            # closed the socket (it arrives before connect() returns to the program).
            self._client_segment(orig, RST | ACK, RST_LEN, from_client)
        if ack.fate in ("forwarded", "delivered"):
            return "accepted"
        return "rejected" if ack.fate == "rejected" and _answer_reached(ack, not from_client, self.dev_in) else "dropped"

    def _sink_resets(self, syn: Packet, ack: Packet, from_client: bool) -> bool:
        """The sink's TCP knows the connection by the addresses its SYN arrived with. An ACK that
        arrives otherwise (it skipped NAT: untracked, say) finds only the listener, which answers
        with a reset; whether that reset reached the sender (and so closed its socket)."""
        if (ack.src, ack.sport, ack.dst, ack.dport) == (syn.src, syn.sport, syn.dst, syn.dport):
            return False
        seg = None if ack.seg is None else TcpSeg(ack.seg.ack)
        reset = Packet(src=ack.dst, dst=ack.src, proto=TCP, sport=ack.dport, dport=ack.sport, tcp_flags=RST,
                       length=RST_LEN, seg=seg)
        res = self.node.receive(reset, self.dev_out)
        return self._at_sender(res, from_client)

    def _at_sender(self, res: Any, from_client: bool) -> bool:
        return _at_sender(res, from_client, self.dev_in)

    def _client_segment(self, answer: Packet, flags: int, length: int, from_client: bool) -> Any:
        """The initiator's next segment after ``answer`` (its ACK, or its RST on close), through the node."""
        pkt = Packet(src=answer.dst, dst=answer.src, proto=TCP, sport=answer.dport, dport=answer.sport,
                     tcp_flags=flags, length=self.segs.length("client", length, flags), seg=self.segs.for_client(flags))
        return self.node.receive(pkt, self.dev_in) if from_client else self.node.send(_owned(pkt))

    def _misaddressed_datagram(self, res: Any, from_client: bool) -> None:
        """A reply that reaches the sender from an address its connected socket did not send to (a nat
        rule changed it on the way back): no socket takes it, and the sender's UDP answers with a port
        unreachable (the client's stack, or the node's own for a node's probe)."""
        got = res.packet
        if not self._at_sender(res, from_client) or (got.src, got.sport) == self.peer:
            return
        error = _port_unreachable(got)
        if from_client:
            self.node.receive(error, self.dev_in)
        else:
            self.node.send(error)

    def _misdirected_to_sink(self, got: Packet) -> None:
        """An answer was sent towards the sink (a nat rule took it there): the lab's sink sniffer sees
        it, so the kernel side counts a node-local probe as forwarded; the sink answers a datagram for
        a port nobody listens on with a port unreachable (and echoes one for a port it serves, once:
        the kernel's peers would go on echoing each other)."""
        if self.sink_saw is None:
            self.sink_saw = got
        self.node.receive(_udp_answer(got, got.dport in self.udp_ports), self.dev_out)

    def _closed_local_port(self, res: Any) -> None:
        """A datagram the node's rules turned back to the node itself (REDIRECT, DNAT to a local
        address) finds no socket there: the node's UDP answers with a port unreachable, as Linux does."""
        got = res.packet
        if res.fate != "delivered" or got.proto != UDP or got.dport in self.node_ports:
            return
        self.node.send(_port_unreachable(got))


def _at_sender(res: Any, from_client: bool, dev_in: str) -> bool:
    """Whether an answer reached the probe's sender: out of the probe's link to the client, or the node itself."""
    return (res.fate == "forwarded" and res.out_dev == dev_in) if from_client else res.fate == "delivered"


def _owned(pkt: Packet) -> Packet:
    """A packet a socket of the node sends (the lab's programs run as root): nft's ``meta skuid``
    sees its owner; what the kernel sends by itself (resets, ICMP errors) has none."""
    pkt.meta.update(uid=0, gid=0)
    return pkt


def _udp_answer(got: Packet, listening: bool) -> Packet:
    """What a lab peer sends back for a datagram: its echo from a listening port, else a port unreachable."""
    if listening:
        return Packet(src=got.dst, dst=got.src, proto=UDP, sport=got.dport, dport=got.sport, length=UDP_LEN)
    return _port_unreachable(got)


def _port_unreachable(got: Packet) -> Packet:
    """The ICMP port unreachable a host's UDP sends back for a datagram no socket takes."""
    return Packet(src=got.dst, dst=got.src, proto=ICMP, icmp_type=3, icmp_code=3, inner=got.copy(),
                  length=UDP_LEN + 28)


def _answer_reached(res: Any, from_node: bool, dev_in: str) -> bool:
    """Whether REJECT's ICMP error or reset made it back to the sender (the node's own socket, or
    out of the probe's link to the client)."""
    answer = res.extra.get("reply")
    if answer is None:
        return False
    return _at_sender(answer, not from_node, dev_in)


def run_emulator(case: Case, sports: list[int], lab: KernelLab | None = None,
                 description: dict[str, Any] | None = None,
                 segments: list[list[dict[str, Any]]] | None = None, replay: Replay | None = None) -> Outcome:
    """The case on an emulated node; ``segments`` (per probe, from the kernel's observations) gives
    the TCP sequence numbers and windows to replay, ``replay`` the kernel's clock and dice."""
    desc = description or (lab or KernelLab).node_description()

    def load() -> EmulatedPeers:
        peers = EmulatedPeers(lab, desc)
        ensure_named(peers.node, case.rules)
        peers.node.iptables_restore(case.rules)
        return peers

    return emulate(load, emulator_counters, case, sports, segments, replay)


def emulator_counters(peers: EmulatedPeers) -> dict[str, int]:
    return rule_counters(peers.node.iptables_save(counters=True))


def emulate(load: Any, count: Any, case: Case, sports: list[int], segments: list[list[dict[str, Any]]] | None,
            replay: Replay | None) -> Outcome:
    """The probes on a node ``load()`` makes, and its counters (``count(peers)``); with a ``replay``
    that knows the kernel's outcome, first the random choices that reproduce it (each search plays
    the probes again on a fresh node)."""
    def play(scripts: list[list[int]] | None, upto: int | None = None) -> tuple[EmulatedPeers, Outcome]:
        peers = load()
        out = probe_emulator(peers, case, sports, segments, replay, scripts, upto)
        out.counters = count(peers)
        return peers, out

    if replay is None or replay.kernel is None:
        return play(None)[1]
    steer(case, replay, play)
    return play(replay.scripts)[1]


def probe_emulator(peers: EmulatedPeers, case: Case, sports: list[int],
                   segments: list[list[dict[str, Any]]] | None = None, replay: Replay | None = None,
                   scripts: list[list[int]] | None = None, upto: int | None = None) -> Outcome:
    """The case's probes through the emulated node as loaded: fates, arrivals and the conntrack table.

    With a ``replay``, each probe runs at the kernel's time, with the kernel's NAT ports and the
    random choices of ``scripts`` (when given); ``upto`` stops after that many probes."""
    out = Outcome()
    per_probe = segments or [[] for _ in sports]
    node = peers.node
    start = node.now()
    rng = None
    if scripts is not None:
        rng = node.subsystems["rng"] = ScriptedRng()
        peers.tracing = upto is None
    for i, (p, sport, segs) in enumerate(zip(case.probes, sports, per_probe, strict=True)):
        if upto is not None and i >= upto:
            break
        if replay is not None:
            node.clock = start + replay.times[i]
            node.nat.port_hint, node.nat.replayed = replay.hint(i), []
        if rng is not None:
            rng.start(scripts[i] if scripts and i < len(scripts) else [])
        fate, arrival = peers.probe(p, sport, Segments(segs))
        out.fates.append(fate)
        out.arrivals.append(arrival)
        if replay is not None and upto is None:
            note_choices(replay, peers, i, p.text())
    node.nat.port_hint = None
    now = node.now()
    # The neighbour layer gives up on an unanswered address after three solicitations a second apart.
    held = {c for c, since in peers.held.items() if now - since < 3.0}
    out.conntrack = conntrack_lines("\n".join(format_conn(c, now, use=2 if id(c) in held else 1)
                                              for c in node.conntrack.entries()))
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
    emulator = run_emulator(case, [o.sport for o in observations], lab,
                            segments=[o.segments for o in observations])
    return compare(case, kernel, emulator)


def ip(text: str) -> int:
    return parse_addr(text)[1]
