"""Connection tracking as nf_conntrack does it: tuples, directions, states, timeouts, confirmation.

A packet's first sight of a flow makes an unconfirmed entry (state NEW) that NAT may bind; the
entry enters the table only when the packet survives to the last hook (``confirm_hook`` at
INPUT/POSTROUTING, priority INT_MAX), so a dropped first packet leaves nothing behind. Later
packets find the entry by either tuple: ESTABLISHED once a reply was seen (and for replies),
NEW in the original direction before that, RELATED for ICMP errors about a tracked flow, INVALID
when the TCP state machine refuses the packet. State belongs to the flow, not the packet.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kproxy.ip6ext import fragment
from kproxy.netfilter.hooks import (
    INPUT,
    OUTPUT,
    POSTROUTING,
    PREROUTING,
    PRI_CONNTRACK,
    PRI_CONNTRACK_CONFIRM,
    PRI_CONNTRACK_DEFRAG,
    HookState,
)
from kproxy.netfilter.netns import NetNamespace
from kproxy.netfilter.tcp import (  # noqa: F401 - re-exported: conntrack's public names
    ORIGINAL,
    REPLY,
    TCP_FLAG_MASK,
    TCP_STATES,
    TCP_TIMEOUT_UNACK,
    TCP_TIMEOUTS,
    TCP_VALID_FLAGS,
    TcpTrack,
    TcpTracker,
    tcp_flags_valid,
    tcp_kind,
    tcp_new,
)
from kproxy.packet import (
    ACK,
    FIN,
    ICMP,
    ICMPV6,
    NF_ACCEPT,
    NF_DROP,
    NF_STOLEN,
    RST,
    SYN,
    TCP,
    UDP,
    Packet,
    format_addr,
)
from kproxy.versioned import Sysctls

# include/uapi/linux/netfilter/nf_conntrack_common.h: enum ip_conntrack_status bits.
IPS_EXPECTED = 1 << 0
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
IPS_NAT_MASK = IPS_SRC_NAT | IPS_DST_NAT
IPS_SEQ_ADJUST = 1 << 6
IPS_SRC_NAT_DONE = 1 << 7
IPS_DST_NAT_DONE = 1 << 8
IPS_DYING = 1 << 9
IPS_FIXED_TIMEOUT = 1 << 10
IPS_UNTRACKED = 1 << 12

UDP_UNREPLIED, UDP_REPLIED, UDP_STREAM_AFTER = 30, 120, 2.0
ICMP_TIMEOUT = 30
GENERIC_TIMEOUT = 600

# ICMP types whose reply type makes the reply tuple; errors that carry an inner header.
ICMP_REPLY_TYPE = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17}
ICMP_NEW_TYPES = {8, 13, 15, 17}
ICMP_ERRORS = {3, 4, 5, 11, 12}
ICMPV6_REPLY_TYPE = {128: 129, 129: 128}
ICMPV6_ERRORS = {1, 2, 3, 4}

_new_tuple = tuple.__new__
ZONE_BOTH = 3           # a zone for both directions (NF_CT_DEFAULT_ZONE_DIR)


def _key(t: Tuple, zone: int) -> Any:
    """A tuple's key in the table: the tuple itself in the default zone (most entries), else with its zone."""
    return (zone, t) if zone else t

PORT_PROTOS = frozenset({TCP, UDP, 132, 136, 33})


class Tuple(NamedTuple):
    """A conntrack tuple. For ICMP, ``sport`` is the echo id and ``dport`` is ``type << 8 | code``.

    A named tuple: it is created several times per new connection, hashed on every lookup.
    """

    family: int
    proto: int
    src: int
    dst: int
    sport: int
    dport: int

    # Built with tuple.__new__ directly: the named tuple's own __new__ is a Python function, and
    # these are made several times for every new connection.
    @classmethod
    def of(cls, pkt: Packet) -> Tuple:
        proto = pkt.proto
        if proto in PORT_PROTOS:
            return _new_tuple(Tuple, (pkt.family, proto, pkt.src, pkt.dst, pkt.sport, pkt.dport))
        if proto in (ICMP, ICMPV6):
            return _new_tuple(Tuple, (pkt.family, proto, pkt.src, pkt.dst, pkt.icmp_id,
                                      pkt.icmp_type << 8 | pkt.icmp_code))
        return _new_tuple(Tuple, (pkt.family, proto, pkt.src, pkt.dst, 0, 0))

    def inverse(self) -> Tuple:
        family, proto, src, dst, sport, dport = self
        if proto in (ICMP, ICMPV6):
            replies = ICMP_REPLY_TYPE if proto == ICMP else ICMPV6_REPLY_TYPE
            itype = replies.get(dport >> 8, dport >> 8)
            return _new_tuple(Tuple, (family, proto, dst, src, sport, itype << 8 | (dport & 0xFF)))
        return _new_tuple(Tuple, (family, proto, dst, src, dport, sport))

    def with_src(self, addr: int, port: int) -> Tuple:
        return _new_tuple(Tuple, (self[0], self[1], addr, self[3], port, self[5]))

    def with_dst(self, addr: int, port: int) -> Tuple:
        return _new_tuple(Tuple, (self[0], self[1], self[2], addr, self[4], port))

    @property
    def has_ports(self) -> bool:
        return self.proto in PORT_PROTOS

    def text(self) -> str:
        """``src=.. dst=.. sport=.. dport=..`` (or ``type= code= id=`` for ICMP) as conntrack -L prints."""
        s, d = format_addr(self.src, self.family), format_addr(self.dst, self.family)
        if self.proto in (ICMP, ICMPV6):
            return f"src={s} dst={d} type={self.dport >> 8} code={self.dport & 0xFF} id={self.sport}"
        if self.has_ports:
            return f"src={s} dst={d} sport={self.sport} dport={self.dport}"
        return f"src={s} dst={d}"

    def as_list(self) -> list[int]:
        return list(self)


_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class Conn:
    """One tracked connection (struct nf_conn)."""

    orig: Tuple
    reply: Tuple
    status: int = 0
    mark: int = 0
    tcp_state: str = ""
    expires: float = 0.0
    created: float = 0.0
    id: int = field(default_factory=lambda: next(_ids))
    # Packets and bytes per direction: [original packets, reply packets, original bytes, reply bytes].
    acct: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    zone: int = 0
    zone_dir: int = ZONE_BOTH       # the directions the zone applies to (bit 0 original, bit 1 reply)
    helper: str | None = None
    secmark: int = 0
    labels: int = 0
    nat_targets: tuple[Tuple, Tuple, Tuple] | None = None   # (reply it was made for, targets by direction)
    tcp: TcpTrack | None = None      # the TCP tracker's memory (ip_ct_tcp)

    @property
    def proto(self) -> int:
        return self.orig.proto

    def zone_id(self, d: int) -> int:
        """nf_ct_zone_id: the zone the connection is in for direction ``d`` (0 where it does not apply)."""
        return self.zone if self.zone_dir >> d & 1 else 0

    @property
    def packets(self) -> list[int]:
        """Packets seen in the original and reply directions."""
        return self.acct[:2]

    @property
    def bytes(self) -> list[int]:
        """Bytes seen in the original and reply directions."""
        return self.acct[2:]

    @property
    def confirmed(self) -> bool:
        return bool(self.status & IPS_CONFIRMED)

    def timeout_at(self, now: float) -> int:
        """Seconds left, as conntrack -L prints them."""
        return max(0, int(self.expires - now))

    def nat_done(self, manip: str) -> bool:
        return bool(self.status & (IPS_SRC_NAT_DONE if manip == "SRC" else IPS_DST_NAT_DONE))

    def to_json(self) -> dict[str, Any]:
        d = {"orig": self.orig.as_list(), "reply": self.reply.as_list(), "status": self.status,
             "mark": self.mark, "tcp_state": self.tcp_state, "expires": self.expires, "created": self.created,
             "id": self.id, "packets": self.packets, "bytes": self.bytes}
        if self.tcp is not None:
            d["tcp"] = self.tcp.to_json()
        if self.zone:
            d["zone"] = [self.zone, self.zone_dir]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Conn:
        conn = cls(Tuple(*d["orig"]), Tuple(*d["reply"]), d["status"], d["mark"], d["tcp_state"], d["expires"],
                   d.get("created", 0.0), d["id"], [*d["packets"], *d["bytes"]])
        if d.get("zone"):
            conn.zone, conn.zone_dir = d["zone"]
        if d.get("tcp"):
            conn.tcp = TcpTrack.from_json(d["tcp"])
        elif conn.orig.proto == TCP:
            conn.tcp = TcpTrack(windowed=False)
        return conn


_KIND_BITS = SYN | FIN | RST | ACK
_ESTABLISHED_TIMEOUT = TCP_TIMEOUTS["ESTABLISHED"]


class TableFull(Exception):
    pass


class Conntrack:
    """One network namespace's connection table."""

    def __init__(self, node: NetNamespace) -> None:
        self.node = node
        # nf_ct_netns_get/put: per family, how many users (rules, expressions) need tracking. A
        # namespace tracks a family's connections only while it has one; a nat table alone does not
        # count (its chains see only packets that have an entry). Front ends take and release these
        # at commit, declared by each extension or expression.
        self.users: dict[int, int] = {4: 0, 6: 0}
        # None: tracking follows ``users`` as in the kernel; True: always on.
        self.enabled: bool | None = None
        # The confirmed connections by original tuple and by reply tuple: the kernel's one hash table.
        # A hit's direction is whether the tuple is the connection's original one.
        self._table: dict[Tuple, Conn] = {}
        self.changes = 0      # entries added or removed: a cache of lookups knows when to look again
        self.drops = 0
        self._next_id = 1
        self._count = 0
        # nf_nat_bysource: source-NATed connections by their original source (family, proto, addr, port),
        # newest last, so a source keeps its mapping across destinations (find_appropriate_src).
        self.bysource: dict[tuple[int, int, int, int], list[Conn]] = {}
        self._tcp_tracker = TcpTracker()
        self._max_text: str | None = None
        self._max = 0
        # A TCP connection's first segment without sequence numbers, by (loose, liberal,
        # ignore_invalid_rst), then by flags: (why it cannot start one, or None; the tracker memory,
        # state, timeout and status bits it leaves).
        self._first_segments: dict[tuple[bool, bool, bool],
                                   dict[int, tuple[str | None, TcpTrack | None, str, float, int]]] = {}
        # The sysctls (object and change count) the outcomes were last looked up for, their outcomes, loose.
        self._first_for: tuple[Any, int, dict[int, tuple[str | None, TcpTrack | None, str, float, int]], bool] = \
            (None, -1, {}, True)

    # ---- the table ------------------------------------------------------------------------
    @property
    def max_entries(self) -> int:
        text = self.node.sysctls.get("net.netfilter.nf_conntrack_max", "262144")
        if text is not self._max_text:
            self._max_text, self._max = text, int(text)
        return self._max

    def find(self, t: Tuple, zone: int = 0, zone_dir: int = 0) -> Conn | None:
        """The connection holding tuple ``t`` in zone ``zone`` (for the directions ``zone_dir`` names;
        0: all), as __nf_conntrack_find_get compares zones per direction."""
        if not zone:
            return self._table.get(t)
        dirs = zone_dir or ZONE_BOTH
        conn = self._table.get(_key(t, zone if dirs & 1 else 0))
        if conn is not None and conn.orig == t:
            return conn
        conn = self._table.get(_key(t, zone if dirs & 2 else 0))
        return conn if conn is not None and conn.reply == t else None

    def lookup(self, t: Tuple, now: float | None = None, zone: int = 0, zone_dir: int = 0) -> tuple[Conn, int] | None:
        """The live connection with tuple ``t`` in either direction, and that direction."""
        conn = self.find(t, zone, zone_dir)
        if conn is None:
            return None
        if conn.expires <= (self.node.now() if now is None else now):
            self.delete(conn)
            return None
        return conn, ORIGINAL if conn.orig == t else REPLY

    def entries(self, now: float | None = None) -> list[Conn]:
        """Live confirmed entries, oldest first; expired ones are reaped on the way."""
        now = self.node.now() if now is None else now
        seen: dict[int, Conn] = {}
        for conn in list(self._table.values()):
            if conn.expires <= now:
                self.delete(conn)
            else:
                seen[conn.id] = conn
        return sorted(seen.values(), key=lambda c: c.id)

    def __len__(self) -> int:
        return self._count

    def entry(self, t: Tuple) -> Conn | None:
        """The entry ``t`` names (either direction's tuple), expired or not."""
        return self._table.get(t)

    def insert(self, conn: Conn) -> None:
        self.changes += 1
        if conn.zone:
            self._table[_key(conn.orig, conn.zone_id(ORIGINAL))] = conn
            self._table[_key(conn.reply, conn.zone_id(REPLY))] = conn
        else:       # the default zone (nearly every entry): the tuples are the keys
            self._table[conn.orig] = self._table[conn.reply] = conn
        conn.status |= IPS_CONFIRMED
        self._count += 1
        if conn.status & IPS_SRC_NAT:
            o = conn.orig
            self.bysource.setdefault((o.family, o.proto, o.src, o.sport), []).append(conn)

    def delete(self, conn: Conn) -> None:
        self.changes += 1
        table = self._table
        orig, reply = _key(conn.orig, conn.zone_id(ORIGINAL)), _key(conn.reply, conn.zone_id(REPLY))
        if table.get(orig) is conn:
            del table[orig]
            self._count -= 1
        if table.get(reply) is conn:
            del table[reply]
        if conn.status & IPS_SRC_NAT:
            o = conn.orig
            key = (o.family, o.proto, o.src, o.sport)
            same = self.bysource.get(key)
            if same is not None:
                same[:] = [c for c in same if c is not conn]
                if not same:
                    del self.bysource[key]

    def flush(self) -> int:
        n = self._count
        self.changes += 1
        self._table.clear()
        self.bysource.clear()
        self._count = 0
        return n

    def taken(self, t: Tuple, ignore: Conn | None = None, now: float | None = None) -> bool:
        """nf_conntrack_tuple_taken: is ``t`` already some other confirmed connection's tuple (in the
        zone of ``ignore``, the connection asking)?"""
        other = self.find(t, ignore.zone, ignore.zone_dir) if ignore is not None else self._table.get(t)
        return other is not None and other is not ignore and \
            other.expires > (self.node.now() if now is None else now)

    # ---- hooks ----------------------------------------------------------------------------
    def register(self, families: tuple[int, ...]) -> None:
        """Hook in: nf_conntrack_in at PREROUTING and OUTPUT, confirm last at INPUT and POSTROUTING.

        The functions stay registered; ``in_hook`` passes packets untouched while ``users`` is zero.
        IPv6 also gets nf_defrag_ipv6 at -400 (``defrag_hook``), which conntrack turns on with itself."""
        for fam in families:
            if fam == 6:
                for hook in (PREROUTING, OUTPUT):
                    self.node.hooks.register(fam, hook, PRI_CONNTRACK_DEFRAG, "conntrack:defrag", self.defrag_hook)
            for hook in (PREROUTING, OUTPUT):
                self.node.hooks.register(fam, hook, PRI_CONNTRACK, "conntrack:in", self.in_hook)
            for hook in (INPUT, POSTROUTING):
                self.node.hooks.register(fam, hook, PRI_CONNTRACK_CONFIRM, "conntrack:confirm", self.confirm_hook)

    def netns_get(self, family: int, n: int = 1) -> None:
        """Take ``n`` references that keep ``family``'s connection tracking on (nf_ct_netns_get)."""
        self.users[family] += n

    def netns_put(self, family: int, n: int = 1) -> None:
        """Release ``n`` references taken with ``netns_get`` (nf_ct_netns_put)."""
        if n > self.users[family]:
            raise ValueError(f"conntrack: IPv{family} reference count would go below zero")
        self.users[family] -= n

    def defrag_hook(self, pkt: Packet, state: HookState) -> int:
        """ipv6_defrag (PREROUTING and OUTPUT, priority -400) while conntrack is on; nf_ct_frag6_gather
        on the packet's fragment header, with ``pkt.length`` giving the fragment's data length:

        - a fragment is queued for reassembly (STOLEN; the emulator never completes a datagram: its
          other fragments are beyond a one-packet model);
        - an atomic fragment (offset 0, no M flag) is a whole datagram, "reassembled" at once: it goes
          on without its fragment header, 8 octets shorter;
        - a non-last fragment whose data is not a multiple of 8 octets goes on untouched (-EPROTO: the
          stack answers it), one with no data or ending past 65535 octets is dropped.

        A packet already tracked or marked untracked (by a chain before -400) is left alone, as the
        kernel leaves it. Seen in the kernel: tests/test_ip6ext_kernel.py."""
        if not pkt.exthdrs or pkt.ct is not None or pkt.notrack or not (self.enabled or self.users[6]):
            return NF_ACCEPT
        frag = fragment(pkt.exthdrs)
        if frag is None:
            return NF_ACCEPT
        chain = pkt.exthdrs
        before = sum(h.length() for h in chain[:chain.index(frag) + 1])
        data = pkt.length - 40 - before
        start = frag.offset * 8
        end = start + data
        if frag.mf and end & 7 and data > 0:
            return NF_ACCEPT
        if data <= 0 or end > 0xFFFF:
            return NF_DROP
        if frag.offset or frag.mf:
            pkt.meta["stolen_by"] = "nf_defrag_ipv6 (a fragment waiting for the rest of its datagram)"
            return NF_STOLEN
        pkt.exthdrs = tuple(h for h in chain if h is not frag)
        pkt.length -= 8
        return NF_ACCEPT

    def in_hook(self, pkt: Packet, state: HookState) -> int:
        """nf_conntrack_in (PREROUTING and OUTPUT, priority -200)."""
        if pkt.ct is not None:
            return NF_ACCEPT            # looped back: already attached on the way out
        if not (self.enabled or self.users[pkt.family]):
            return NF_ACCEPT
        if pkt.notrack:
            pkt.ctstate = "UNTRACKED"
            return NF_ACCEPT
        now = state.now
        proto = pkt.proto
        if proto == TCP:
            if pkt.tcp_flags & TCP_FLAG_MASK not in TCP_VALID_FLAGS:
                return self._invalid(pkt, state, "invalid tcp flag combination")
            t = _new_tuple(Tuple, (pkt.family, TCP, pkt.src, pkt.dst, pkt.sport, pkt.dport))
        elif proto in (ICMP, ICMPV6) and pkt.icmp_type in (ICMP_ERRORS if proto == ICMP else ICMPV6_ERRORS):
            return self._related(pkt, state)
        else:
            t = Tuple.of(pkt)
        conn = self._table.get(t) if not pkt.zone else self.find(t, pkt.zone, pkt.zone_dir)
        if conn is None:
            return self._new(pkt, t, state)
        d = ORIGINAL if conn.orig == t else REPLY
        if conn.expires <= now:
            self.delete(conn)
            return self._new(pkt, t, state)
        verdict = self.packet_update(conn, d, pkt, now)
        if verdict == "reopen":
            # "Attempt to reopen a closed/aborted connection": kill it and look up again (-NF_REPEAT).
            self.delete(conn)
            conn.expires = now
            if state.trace is not None:
                self._trace(state, f"reopened: old entry {conn.orig.text()} destroyed")
            return self._new(pkt, t, state)
        if verdict == "invalid":
            return self._invalid(pkt, state, f"tcp state {conn.tcp_state}")
        self.attach(conn, d, pkt, verdict == "ok")
        if state.trace is not None and not state.trace.quiet:
            self._trace(state, f"{pkt.ctstate} ({'reply' if d else 'original'}) {conn.orig.text()}"
                        + (" (segment ignored)" if verdict == "ignore" else ""))
        return NF_ACCEPT

    def packet_update(self, conn: Conn, d: int, pkt: Packet, now: float) -> str:
        """The protocol's verdict on a packet of ``conn`` in direction ``d`` (see ``_update``)."""
        return self._tcp_packet(conn, d, pkt, now) if pkt.proto == TCP else self._update(conn, d, pkt, now)

    def replay_packet(self, conn: Conn, d: int, pkt: Packet, now: float) -> None:
        """``packet_update`` then ``attach``, as the conntrack hook does for a packet of a confirmed
        connection (the flow cache's replay): the steady TCP state's branch of ``_tcp_packet`` is
        taken here without the calls, anything else goes through them."""
        track = conn.tcp
        status = conn.status
        if track is not None and not track.windowed and status & IPS_ASSURED and conn.tcp_state == "ESTABLISHED" \
                and pkt.tcp_flags & _KIND_BITS == ACK and pkt.proto == TCP:
            track.last_index, track.last_dir = "ACK", d
            if not status & IPS_FIXED_TIMEOUT:
                conn.expires = now + _ESTABLISHED_TIMEOUT
            pkt.ct, pkt.ctdir = conn, d
            if d == REPLY:
                conn.status = status | IPS_SEEN_REPLY
                pkt.ctstate = "ESTABLISHED"
            else:
                pkt.ctstate = "ESTABLISHED" if status & IPS_SEEN_REPLY else "NEW"
            acct = conn.acct
            acct[d] += 1
            acct[2 + d] += pkt.length
            return
        self.attach(conn, d, pkt, self.packet_update(conn, d, pkt, now) == "ok")

    @staticmethod
    def attach(conn: Conn, d: int, pkt: Packet, counted: bool) -> None:
        """The packet joins its connection (its state follows the direction), and is accounted."""
        pkt.ct, pkt.ctdir = conn, d
        if d == REPLY:
            conn.status |= IPS_SEEN_REPLY
            pkt.ctstate = "ESTABLISHED"
        else:
            pkt.ctstate = "ESTABLISHED" if conn.status & IPS_SEEN_REPLY else "NEW"
        if counted:
            acct = conn.acct
            acct[d] += 1
            acct[2 + d] += pkt.length

    def _invalid(self, pkt: Packet, state: HookState, why: str) -> int:
        """The packet passes without a connection: ctstate INVALID (the hook returns -NF_ACCEPT)."""
        pkt.ctstate = "INVALID"
        if state.trace is not None:
            self._trace(state, f"INVALID {Tuple.of(pkt).text()} ({why})")
        return NF_ACCEPT

    def _new(self, pkt: Packet, t: Tuple, state: HookState) -> int:
        """init_conntrack: allocate (the table limit applies here), then the protocol's new() check."""
        now = state.now
        text = self.node.sysctls.get("net.netfilter.nf_conntrack_max", "262144")
        limit = self._max if text is self._max_text else self.max_entries
        if limit and self._count >= limit and not self._early_drop(now):
            self.drops += 1
            self.node.log_lines.append("nf_conntrack: nf_conntrack: table full, dropping packet")
            self._trace(state, "table full, dropping packet")
            return NF_DROP
        conn = Conn(t, t.inverse(), 0, 0, "", 0.0, now, self._next_id, [1, 0, pkt.length, 0])
        if pkt.zone:
            conn.zone, conn.zone_dir = pkt.zone, pkt.zone_dir or ZONE_BOTH
        if pkt.proto == TCP:
            why = self._start_tcp(conn, pkt, now)
            if why is not None:
                return self._invalid(pkt, state, why)
        elif pkt.proto in (ICMP, ICMPV6):
            ok = ICMP_NEW_TYPES if pkt.proto == ICMP else {128}
            if pkt.icmp_type not in ok:
                return self._invalid(pkt, state, "icmp type cannot start a connection")
            self._update(conn, ORIGINAL, pkt, now)
        else:
            self._update(conn, ORIGINAL, pkt, now)
        self._next_id += 1
        pkt.ct, pkt.ctdir, pkt.ctstate = conn, ORIGINAL, "NEW"
        if state.trace is not None:
            self._trace(state, f"NEW {t.text()}")
        return NF_ACCEPT

    def _start_tcp(self, conn: Conn, pkt: Packet, now: float) -> str | None:
        """tcp_new and the first segment's packet(): None when it starts the connection, else why not.

        Without sequence numbers the outcome depends only on the flags and three sysctls, so it is
        worked out once per combination (by the same code, on a scratch connection) and copied."""
        sysctls = self.node.sysctls
        if pkt.seg is not None:
            return self._first_segment(conn, pkt, now, sysctls.get("net.netfilter.nf_conntrack_tcp_loose", "1") != "0")
        # The outcomes for the current sysctls, by flags; worked out again when any sysctl changes.
        seen = self._first_for
        if seen[0] is not sysctls or seen[1] != Sysctls.changes or type(sysctls) is not Sysctls:
            loose = sysctls.get("net.netfilter.nf_conntrack_tcp_loose", "1") != "0"
            key3 = (loose, sysctls.get("net.netfilter.nf_conntrack_tcp_be_liberal", "0") != "0",
                    sysctls.get("net.netfilter.nf_conntrack_tcp_ignore_invalid_rst", "0") != "0")
            seen = self._first_for = (sysctls, Sysctls.changes, self._first_segments.setdefault(key3, {}), loose)
        by_flags, loose = seen[2], seen[3]
        first = by_flags.get(pkt.tcp_flags)
        if first is None:
            scratch = Conn(conn.orig, conn.reply)
            why = self._first_segment(scratch, pkt, 0.0, loose)
            first = by_flags[pkt.tcp_flags] = (why, scratch.tcp, scratch.tcp_state, scratch.expires, scratch.status)
        why, track, tcp_state, expires, status = first
        if why is None and track is not None:
            conn.tcp = track.copy()
            conn.tcp_state = tcp_state
            conn.expires = now + expires
            conn.status |= status
        return why

    def _first_segment(self, conn: Conn, pkt: Packet, now: float, loose: bool) -> str | None:
        conn.tcp = tcp_new(pkt.tcp_flags, pkt.seg, loose)
        if conn.tcp is None:
            return "cannot start a connection"
        if self._tcp_packet(conn, ORIGINAL, pkt, now) == "invalid":
            return "out of window"
        return None

    def _update(self, conn: Conn, d: int, pkt: Packet, now: float) -> str:
        """The protocol's packet() callback: ``ok``, ``ignore`` (passes, nothing changes), ``invalid``
        or ``reopen`` (a SYN replaces a closed connection)."""
        if conn.proto == TCP:
            return self._tcp_packet(conn, d, pkt, now)
        if conn.proto == UDP:
            # nf_conntrack_udp_packet: SEEN_REPLY is the status before this packet (the first reply
            # still gets the unreplied timeout); a flow still active 2 s after it began is a stream.
            timeout = UDP_UNREPLIED
            if conn.status & IPS_SEEN_REPLY and now > conn.created + UDP_STREAM_AFTER:
                timeout = UDP_REPLIED
                conn.status |= IPS_ASSURED
            self._refresh(conn, now, timeout)
            return "ok"
        self._refresh(conn, now, ICMP_TIMEOUT if conn.proto in (ICMP, ICMPV6) else GENERIC_TIMEOUT)
        return "ok"

    @staticmethod
    def _refresh(conn: Conn, now: float, timeout: float) -> None:
        if not conn.status & IPS_FIXED_TIMEOUT:
            conn.expires = now + timeout

    def tracker(self) -> TcpTracker:
        """The TCP tracker with this namespace's tcp_be_liberal and tcp_ignore_invalid_rst sysctls."""
        sysctls, tracker = self.node.sysctls, self._tcp_tracker
        tracker.liberal = sysctls.get("net.netfilter.nf_conntrack_tcp_be_liberal", "0") != "0"
        tracker.ignore_invalid_rst = sysctls.get("net.netfilter.nf_conntrack_tcp_ignore_invalid_rst", "0") != "0"
        return tracker

    def _tcp_packet(self, conn: Conn, d: int, pkt: Packet, now: float) -> str:
        """nf_conntrack_tcp_packet: the tracker's verdict, then the timeout and the kernel's special cases."""
        track = conn.tcp
        if track is None:
            track = conn.tcp = TcpTrack(windowed=False)
        if not track.windowed and conn.tcp_state == "ESTABLISHED" and pkt.tcp_flags & _KIND_BITS == ACK \
                and conn.status & IPS_ASSURED:
            # The steady state without window tracking: ESTABLISHED stays ESTABLISHED, the timeout renews.
            track.last_index, track.last_dir = "ACK", d
            if not conn.status & IPS_FIXED_TIMEOUT:
                conn.expires = now + _ESTABLISHED_TIMEOUT
            return "ok"
        seen_reply = bool(conn.status & IPS_SEEN_REPLY)
        verdict, new = self.tracker().packet(track, conn.tcp_state, d, pkt.tcp_flags, pkt.seg, seen_reply,
                                             bool(conn.status & IPS_ASSURED))
        if verdict.action == "invalid" and verdict.timeout and not conn.status & IPS_FIXED_TIMEOUT:
            left = conn.expires - now
            if left >= 120 and left > verdict.timeout:
                conn.expires = now + verdict.timeout
        if verdict.action != "accept":
            return verdict.action
        old = conn.tcp_state or "NONE"
        conn.tcp_state = new
        timeout = verdict.timeout
        if not seen_reply:
            if pkt.tcp_flags & RST:
                # "If only reply is a RST, we can consider ourselves not to have an established
                # connection": the entry dies at once (the packet still passes).
                self.delete(conn)
                conn.expires = now
                return "ok"
            if pkt.tcp_flags & (RST | SYN | ACK) == SYN and old == "SYN_SENT":
                return "ok"         # a retransmitted SYN does not renew the timeout
            if new == "ESTABLISHED":
                timeout = min(timeout, TCP_TIMEOUT_UNACK)   # picked up mid-stream, unanswered
        elif not conn.status & IPS_ASSURED and old in ("SYN_RECV", "ESTABLISHED") and new == "ESTABLISHED":
            conn.status |= IPS_ASSURED
        self._refresh(conn, now, timeout)
        return "ok"

    def set_closing(self, conn: Conn | None, now: float) -> None:
        """nf_conntrack_tcp_set_closing: a TCP reset sent for this flow (REJECT) moves it to CLOSE."""
        if conn is None or conn.proto != TCP or not conn.confirmed:
            return
        old, conn.tcp_state = conn.tcp_state, "CLOSE"
        if old != "CLOSE" and not conn.status & IPS_FIXED_TIMEOUT:
            conn.expires = now + TCP_TIMEOUTS["CLOSE"]

    def _related(self, pkt: Packet, state: HookState) -> int:
        """An ICMP error: RELATED to the connection its quoted header belongs to, else INVALID."""
        inner = pkt.inner
        if inner is None:
            pkt.ctstate = "INVALID"
            return NF_ACCEPT
        # The quoted header travelled the other way: look up its inverse (icmp_error_message).
        hit = self.lookup(Tuple.of(inner).inverse(), state.now, pkt.zone, pkt.zone_dir)
        if hit is None:
            pkt.ctstate = "INVALID"
            return NF_ACCEPT
        conn, d = hit
        pkt.ct, pkt.ctdir, pkt.ctstate = conn, d, "RELATED"
        if state.trace is not None:
            self._trace(state, f"RELATED to {conn.orig.text()}")
        return NF_ACCEPT

    def confirm_hook(self, pkt: Packet, state: HookState) -> int:
        """__nf_conntrack_confirm (INPUT and POSTROUTING, last): a new entry joins the table.

        A packet attached to the entry in the reply direction (REJECT's answer to the packet that
        created it) does not confirm it; one in the original direction does, even when RELATED
        (the ICMP error REJECT sends about that answer)."""
        conn = pkt.ct
        if conn is None or conn.status & IPS_CONFIRMED or pkt.ctdir != ORIGINAL:
            return NF_ACCEPT
        now = state.now
        if conn.zone:
            clash = self.taken(conn.reply, conn, now) or self.taken(conn.orig, conn, now)
        else:       # ``taken`` in the default zone, inline: this runs for every new connection
            table = self._table
            other = table.get(conn.reply)
            clash = other is not None and other is not conn and other.expires > now
            if not clash:
                other = table.get(conn.orig)
                clash = other is not None and other is not conn and other.expires > now
        if clash:
            self._trace(state, "clash with an existing entry: dropping packet")
            return NF_DROP
        self.insert(conn)
        return NF_ACCEPT

    def _early_drop(self, now: float) -> bool:
        """Make room by evicting the oldest entry that is not ASSURED, as early_drop does."""
        for conn in self.entries(now):
            if not conn.status & IPS_ASSURED:
                self.delete(conn)
                return True
        return False

    def _trace(self, state: HookState, text: str) -> None:
        if state.trace is not None:
            state.trace.add("conntrack", hook=state.hook, text=text)

    # ---- persistence ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"entries": [c.to_json() for c in self.entries()]}

    def from_json(self, data: dict[str, Any]) -> None:
        self.changes += 1
        self._table.clear()
        self.bysource.clear()
        self._count = 0
        for d in data.get("entries") or []:
            conn = Conn.from_json(d)
            self.insert(conn)
            self._next_id = max(self._next_id, conn.id + 1)
