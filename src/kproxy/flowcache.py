"""The flow cache: an established flow's way through the node, learnt once and replayed.

An established TCP (or assured UDP) packet of a flow takes the same way as the flow's previous one
as long as nothing it depends on changes: the same hook functions, the same rules matching, the same
routes, the same IPVS connection. The kernel has no such cache (nf_flowtable skips the rules and
their counters); it is the emulator's, and nothing observable tells it apart from the whole path.
The first such packet (or the one that makes its connection assured) goes the whole way with a
recording trace (the rules and policies that counted it, the nfacct objects counted, the IPVS lookups
it made, where it ended, the headers it left with); the next ones with the same headers only do what
is observable: conntrack's update (its own code: state, timeout, accounting), the counters of every
rule, policy and nfacct object on the way, the IPVS connection's state, expiry and statistics (these
wait in ``kproxy.ipvs.ipvs.PENDING`` until read), and the resulting headers.

A replay is used only while the configuration epoch (``kproxy.versioned.Epoch``: hook registrations,
iptables commits, ipset members and sets, routes and addresses, sysctls, IPVS services and real
servers) is the one it was learnt under, and the connection entries it relied on are the same
objects in the same states, including the IPVS lookups that found nothing (looked up again whenever
the tables changed). A flow is learnt only when every hook function of its family is one whose
behaviour for an established packet is known (conntrack, NAT, iptables, IPVS, and nft base chains
whose reachable statements ``kproxy.nftables.purity.replayable`` finds stateless: their anonymous
counters are what a replay counts), every
iptables table it entered has only matches that are functions of headers, connection and
configuration (no limit, statistic, recent, quota, time, ...), and the rules that fired only count,
jump or set the mark. Anything else takes the whole path every time; so does every traced packet
(a trace shows every rule). ``KPROXY_FLOW_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from kproxy.netfilter.conntrack import IPS_ASSURED, IPS_SEEN_REPLY, UDP_STREAM_AFTER, Conn, Tuple
from kproxy.netfilter.nfacct import AcctObject, objects_of
from kproxy.netfilter.path import DELIVERED, FORWARDED, Result, receive_path
from kproxy.netfilter.tcp import ORIGINAL, REPLY
from kproxy.netfilter.trace import SCRATCH, Trace, TraceEvent
from kproxy.nftables.purity import replayable
from kproxy.packet import ACK, FIN, RST, SYN, TCP, UDP, Packet
from kproxy.versioned import Epoch

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Table
    from kproxy.node import Node

# Hook functions whose effect on an established packet a replay reproduces.
KNOWN_HOOK_OPS = frozenset({"conntrack:defrag", "conntrack:in", "conntrack:confirm", "ipvs:request", "ipvs:local-request", "ipvs:reply",
                            "ipvs:local-reply", "nat:PREROUTING", "nat:INPUT", "nat:OUTPUT", "nat:POSTROUTING"})
TABLE_OPS = ("iptables:", "iptables6:")
NFT_OPS = "nft:"            # nft base chains: known when ``kproxy.nftables.purity.replayable`` says so
NFT_COUNTED = "nft"         # what an nft counter statement is recorded under in ``Recorder.counted``
# Matches whose outcome depends only on the packet's headers, its connection and the configuration.
PURE_MATCHES = frozenset({"comment", "mark", "conntrack", "state", "set", "tcp", "udp", "sctp", "icmp", "icmp6",
                          "multiport", "addrtype", "iprange", "physdev", "pkttype", "ttl", "hl", "dscp", "tos",
                          "length", "mac", "tcpmss", "connmark", "ecn", "esp", "ah", "nfacct"})
# Targets a fired rule may have (besides jumps and verdicts): a mark set is a header change.
PURE_TARGETS = frozenset({"MARK"})
KIND_BITS = SYN | FIN | RST | ACK
MAX_FLOWS = 1 << 17
# The header fields the path may have rewritten, in the order a replay assigns them.
HEADER = attrgetter("src", "dst", "sport", "dport", "mark", "ttl", "tos", "oif", "tcp_mss", "local")


class Recorder(Trace):
    """A trace keeping what counted the packet and the hooks' connection-table lookups (see
    ``Trace.counted`` and ``Trace.note_lookup``), and no events."""

    quiet = True

    def __init__(self) -> None:
        super().__init__()
        self.counted: list[tuple[str, Any]] = []
        self.lookups: list[tuple[Any, Any, Any]] = []

    def add(self, kind: str, **fields: Any) -> TraceEvent:
        return SCRATCH


@dataclass(slots=True, eq=False)
class Flow:
    """What one flow's packets do, learnt from the first: checked, then replayed."""

    stamp: int
    conn: Conn
    ctkey: Tuple
    ctdir: int
    ct_status: int                              # the connection's state (``_ct_signature``)
    ct_tcp: str
    ct_mark: int
    counted: tuple[Any, ...]                    # rules and chains (policies), in the order counted
    acct: tuple[Any, ...]                       # the nfacct objects counted (``AcctObject``), in order
    lookups: tuple[tuple[Any, Any, Any], ...]   # IPVS connection-table lookups and what they found
    ipvs_in: Any                                # the IPVS connection counted as the client's packet
    ipvs_out: Any                               # ... as the real server's answer
    ipvs_in_sig: str | None                     # the connections' states
    ipvs_out_sig: str | None
    in_pending: list[Any] | None                # ipvs_in's entry for ``kproxy.ipvs.ipvs.PENDING``
    ct_seen: int           # the conntrack table's change count when ``ctkey`` last found ``conn``
    ipvs_seen: int         # the IPVS tables' change count when the lookups last found what they found
    header: tuple[Any, ...]
    meta: dict[str, Any]
    fate: str
    hook: str
    out_dev: str
    gateway: str


def _ct_signature(conn: Conn) -> tuple[int, str, int] | None:
    """The connection's state as the conntrack update reads it, or None when the update could change
    it (only the steady states are replayed: assured, and for TCP established without window tracking)."""
    if not conn.status & IPS_ASSURED:
        return None
    if conn.proto == TCP:
        track = conn.tcp
        if track is None or track.windowed or conn.tcp_state != "ESTABLISHED":
            return None
    return (conn.status, conn.tcp_state, conn.mark)


def _turns_steady(conn: Conn, pkt: Packet, now: float) -> bool:
    """Whether conntrack's update for ``pkt`` (an ACK, or UDP) will put ``conn`` in a steady state:
    the packet that makes a connection assured. Such a packet is learnt from, as the connection's
    state after the update is what every later packet's rules see (only the raw table runs before
    conntrack, and there no packet has a connection yet)."""
    if not conn.status & IPS_SEEN_REPLY:
        return False
    if conn.proto == TCP:
        track = conn.tcp
        return track is not None and not track.windowed and conn.tcp_state in ("SYN_RECV", "ESTABLISHED")
    return conn.proto == UDP and now > conn.created + UDP_STREAM_AFTER


class FlowCache:
    """The flows of one node, keyed by their packets' headers and input device."""

    def __init__(self, node: Node) -> None:
        self.node = node
        # KPROXY_FLOW_CACHE=0 turns it off (to compare, or to rule it out when bisecting a difference).
        self.enabled = os.environ.get("KPROXY_FLOW_CACHE", "1") != "0"
        self.flows: dict[tuple[Any, ...], Flow] = {}
        self.hits = 0
        self.learnt = 0
        self._pure_stamp: int | None = None
        self._pure: dict[Any, bool] = {}
        self._refused: int | None = None     # the stamp under which nothing can be learnt
        self._known: dict[int, tuple[int, bool]] = {}

    @staticmethod
    def stamp() -> int:
        """A number that changes whenever the configuration a replay depends on does."""
        return Epoch.value

    def receive(self, pkt: Packet, iif: str) -> Result | None:
        """The packet's result when the cache handles it (replayed, or learnt on the way), else None.

        A replay does what the whole path would, as learnt: conntrack's own update (the signature
        checked says it is the steady one), the counters, the IPVS connections', the headers. The
        checks and the replay are written out in this one function: it is the established packet's
        whole cost."""
        stamp = Epoch.value
        if stamp == self._refused:      # nothing can be learnt under this configuration (nft hooks, ...)
            return None
        # The flow's key: every header field a rule could read. Not taken: a packet carrying sequence
        # numbers, a payload, a socket, a connection or IPv6 extension headers, or not TCP/UDP.
        if pkt.ct is not None or pkt.seg is not None or pkt.payload is not None or pkt.inner is not None or \
                pkt.meta or pkt.notrack or pkt.local or pkt.trace or pkt.uid is not None or pkt.gid is not None or pkt.exthdrs:
            return None
        proto = pkt.proto
        if proto == TCP:
            if pkt.tcp_flags & KIND_BITS != ACK:
                return None
        elif proto != UDP:
            return None
        key = (iif, pkt.family, proto, pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.tcp_flags, pkt.length, pkt.mark,
               pkt.ttl, pkt.tos, pkt.tcp_mss, pkt.pkttype, pkt.src_mac, pkt.oif)
        node = self.node
        clock = node.clock
        now = clock if clock is not None else node.now()
        flow = self.flows.get(key)
        if flow is None or flow.stamp != stamp:
            return self._learn(key, stamp, pkt, iif, now)
        conn = flow.conn
        ct = node.conntrack
        if not flow.fate:
            # This flow's packets end somewhere a replay cannot reproduce: not learnt again
            # until the configuration or the connection changes.
            if ct.entry(flow.ctkey) is conn:
                return None
            return self._learn(key, stamp, pkt, iif, now)
        # Whether the connection entries the flow relied on are still the same, in the same states
        # (the tables are looked up again only when they changed since the flow last looked).
        if conn.expires <= now or conn.status != flow.ct_status or conn.tcp_state != flow.ct_tcp or \
                conn.mark != flow.ct_mark or not (ct.enabled or ct.users[flow.ctkey[0]]):
            return self._learn(key, stamp, pkt, iif, now)
        if ct.changes != flow.ct_seen:
            if ct.entry(flow.ctkey) is not conn:
                return self._learn(key, stamp, pkt, iif, now)
            flow.ct_seen = ct.changes
        ipvs = node.ipvs
        seen = ipvs.conn_changes
        if seen != flow.ipvs_seen:
            for t, k, found in flow.lookups:
                if t.get(k) is not found:
                    return self._learn(key, stamp, pkt, iif, now)
            flow.ipvs_seen = seen
        c_in, c_out = flow.ipvs_in, flow.ipvs_out
        if c_in is not None and (c_in.expires <= now or c_in.state != flow.ipvs_in_sig) or \
                c_out is not None and (c_out.expires <= now or c_out.state != flow.ipvs_out_sig):
            return self._learn(key, stamp, pkt, iif, now)
        # The replay.
        pkt.iif = iif
        ct.replay_packet(conn, flow.ctdir, pkt, now)
        length = pkt.length
        for obj in flow.counted:
            obj.packets += 1
            obj.bytes += length
        if flow.acct:
            for a in flow.acct:
                a.pkts += 1
                a.bytes += length
        if c_in is not None:
            ipvs.replay_in(c_in, pkt, now, flow.in_pending)  # type: ignore[arg-type]  # set with ipvs_in
        if c_out is not None:
            ipvs.count_out(c_out, pkt, now)
        (pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.mark, pkt.ttl, pkt.tos, pkt.oif, pkt.tcp_mss,
         pkt.local) = flow.header
        if flow.meta:
            pkt.meta.update(flow.meta)
        self.hits += 1
        return Result(flow.fate, pkt, flow.hook, flow.out_dev, flow.gateway)

    # ---- learning ----------------------------------------------------------------------------
    def _learn(self, key: tuple[Any, ...], stamp: int, pkt: Packet, iif: str, now: float) -> Result | None:
        """The whole path with a recording trace, for a packet of a connection in a steady state;
        None (not handled) for any other packet, which then takes the path untraced."""
        node = self.node
        ctkey = Tuple(pkt.family, pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport)
        conn = node.conntrack.entry(ctkey)
        if conn is None or conn.expires <= now:
            return None
        if not self._known_hooks(pkt.family, stamp):
            self._refused = stamp
            return None
        before = _ct_signature(conn)
        if before is None and not _turns_steady(conn, pkt, now):
            return None
        logged = len(node.log_lines)
        rec = Recorder()
        accts = objects_of(node)
        acct: list[AcctObject] = []
        accts.recording = acct
        try:
            res = receive_path(node, pkt, iif, rec)
        finally:
            accts.recording = None
        res.trace = None
        ins = [found for table, _, found in rec.lookups if found is not None and table is node.ipvs.conns_in]
        outs = [found for table, _, found in rec.lookups if found is not None and table is node.ipvs.conns_out]
        counted = self._counted(rec, pkt.family)
        meta = dict(pkt.meta)
        if counted is None or len(node.log_lines) != logged:
            self._refused = stamp       # a table or target the cache cannot replay: nothing is learnt
            return res
        if len(self.flows) >= MAX_FLOWS:
            self.flows.clear()
        ctsig = _ct_signature(conn)
        if ctsig is None:
            return res
        if res.fate not in (DELIVERED, FORWARDED) or res.extra or pkt.ct is not conn or \
                before not in (None, ctsig) or len(ins) > 1 or len(outs) > 1 or \
                not set(meta) <= {"ipvs_conn", "stolen_by"} or any(t.get(k) is not f for t, k, f in rec.lookups):
            if res.fate not in (DELIVERED, FORWARDED) or res.extra:
                self.flows[key] = Flow(stamp, conn, ctkey, 0, *ctsig, (), (), (), None, None, None, None, None, -1, -1,
                                       (), {}, "", "", "", "")
            return res
        c_in, c_out = (ins[0] if ins else None), (outs[0] if outs else None)
        if any(c.expires <= now for c in (c_in, c_out) if c is not None):
            return res
        self.flows[key] = Flow(stamp, conn, ctkey, ORIGINAL if conn.orig == ctkey else REPLY, *ctsig, counted, tuple(acct),
                               tuple(rec.lookups), c_in, c_out, c_in and c_in.state, c_out and c_out.state,
                               [c_in.dest.counters, c_in.svc.counters, 0, 0] if c_in else None, -1, -1,
                               HEADER(pkt), meta, res.fate, res.hook, res.out_dev, res.gateway)
        self.learnt += 1
        return res

    def _known_hooks(self, family: int, stamp: int) -> bool:
        """Whether every hook function of ``family`` is one a replay reproduces."""
        hit = self._known.get(family)
        if hit is None or hit[0] != stamp:
            hooks = self.node.hooks
            nft: dict[str, Any] = {}
            for runner in self.node.subsystems.get("nftables_runners", ()):
                nft[f"{NFT_OPS}{runner.table.family}:{runner.table.name}:{runner.chain.name}"] = runner
            known = all(op.name in KNOWN_HOOK_OPS or op.name.startswith(TABLE_OPS) or
                        op.name in nft and replayable(nft[op.name])
                        for (fam, hook) in list(hooks._ops) if fam == family for op in hooks.ops(fam, hook))
            hit = self._known[family] = (stamp, known)
        return hit[1]

    def _counted(self, rec: Recorder, family: int) -> tuple[Any, ...] | None:
        """The rules and policies the recorded packet was counted by, or None when one of the tables
        it passed is not pure or a rule that fired does more than count, jump or mark."""
        stamp = Epoch.value
        if stamp != self._pure_stamp:
            self._pure, self._pure_stamp = {}, stamp
        pure = self._pure
        # Every table a packet enters counts it at least once (a rule's verdict or the policy); nft's
        # counters are statements of chains ``replayable`` found pure.
        for name, obj in rec.counted:
            if name == NFT_COUNTED:
                continue
            ok = pure.get((family, name))
            if ok is None:
                ok = pure[(family, name)] = self._pure_table(self.node.iptables[family].tables[name])
            target = getattr(obj, "target", None)        # a rule's; a chain (its policy) has none
            if not ok or target is not None and target.name not in PURE_TARGETS:
                return None
        return tuple(obj for _, obj in rec.counted)

    def _pure_table(self, table: Table) -> bool:
        """Whether every match of ``table`` is a function of headers, connection and configuration
        (sets only without timeouts, counters or member sets); ``_counted`` remembers the answer
        until the configuration changes."""
        return all(self._pure_match(m) for chain in table.chains.values() for rule in chain.rules
                   for m in rule.matches)

    def _pure_match(self, m: Any) -> bool:
        if m.name not in PURE_MATCHES:
            return False
        if m.name == "conntrack" and "ctexpire" in getattr(m, "opts", {}):
            return False
        if m.name == "set":
            s = self.node.ipsets.get(m.set_name)
            return s is not None and s.timeout is None and not s.counters and s.type != "list:set" and not m.extra
        return True

