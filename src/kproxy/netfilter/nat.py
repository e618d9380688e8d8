"""NAT as nf_nat does it: decided once per connection, applied to every packet from its bindings.

The NAT core owns one hook function per (family, hook) at the nat priorities (-100 destination
side in PREROUTING/OUTPUT, 100 source side in INPUT/POSTROUTING). For a connection whose binding
of that kind is not made yet, it runs the registered lookups (the iptables nat table, later nft
nat chains); the DNAT/SNAT/MASQUERADE/REDIRECT targets call ``setup`` to bind. When no rule binds,
a null binding is made (which still moves a clashing source port). Every packet, either
direction, is then rewritten from the connection's tuples (``nf_nat_packet``).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from typing import Any, NamedTuple

from kproxy.netfilter.conntrack import (
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_DST_NAT_DONE,
    IPS_NAT_MASK,
    IPS_SRC_NAT,
    IPS_SRC_NAT_DONE,
    PORT_PROTOS,
    REPLY,
    Conn,
    Tuple,
)
from kproxy.netfilter.hooks import INPUT, OUTPUT, POSTROUTING, PREROUTING, PRI_NAT_DST, PRI_NAT_SRC, HookState
from kproxy.netfilter.netns import NetNamespace
from kproxy.packet import ICMP, ICMPV6, NF_ACCEPT, NF_DROP, Packet, format_addr

Lookup = Callable[[Packet, HookState], int]
_new_tuple = tuple.__new__
MAX_ATTEMPTS = 128


class NatRange(NamedTuple):
    """struct nf_nat_range2: an address range and/or a port range, with the mapping flags.

    A named tuple: every new connection builds one (its null binding), and so does every DNAT
    rule of a restore; a tuple is built several times faster than a frozen dataclass."""

    min_addr: int | None = None
    max_addr: int | None = None
    min_port: int | None = None
    max_port: int | None = None
    random: bool = False
    random_fully: bool = False
    persistent: bool = False
    base_port: int | None = None     # NF_NAT_RANGE_PROTO_OFFSET (DNAT ...:lo-hi/base): port = lo + (p - base)

    @property
    def map_ips(self) -> bool:
        return self.min_addr is not None

    @property
    def proto_specified(self) -> bool:
        return self.min_port is not None


def manip_of(hook: str) -> str:
    return "DST" if hook in (PREROUTING, OUTPUT) else "SRC"


class Nat:
    """The NAT core of one node."""

    def __init__(self, node: NetNamespace) -> None:
        self.node = node
        self._lookups: dict[tuple[int, str], list[tuple[int, int, str, Lookup]]] = {}
        self._seq = 0
        self.rng = random.Random(0)
        # The port a replay wants where the kernel chose at random (kproxy verify: the kernel's
        # source and destination ports as the sink saw them), and what the replay took.
        self.port_hint: tuple[int, int] | None = None
        self.replayed: list[str] = []

    def register_lookup(self, family: int, hook: str, priority: int, name: str, fn: Lookup) -> None:
        """Add a nat chain at ``hook``. The family's first one registers the NAT core at all four hooks
        (nf_nat_register_fn), so a lone nft nat chain at prerouting still binds flows at the others."""
        key = (family, hook)
        if key not in self._lookups:
            for h in (PREROUTING, INPUT, OUTPUT, POSTROUTING):
                if (family, h) not in self._lookups:
                    self._lookups[(family, h)] = []
                    prio = PRI_NAT_DST if manip_of(h) == "DST" else PRI_NAT_SRC
                    self.node.hooks.register(family, h, prio, f"nat:{h}", self._hook_fn(family, h))
        self._seq += 1       # at equal priority the newest chain runs first, as at the hooks
        bisect.insort(self._lookups[key], (priority, -self._seq, name, fn), key=lambda e: (e[0], e[1]))

    def replace_lookup(self, old: Lookup, new: Lookup) -> None:
        """Put ``new`` where ``old`` is registered (``HookRegistry.replace``, for nat chains)."""
        for entries in self._lookups.values():
            for i, (prio, seq, name, fn) in enumerate(entries):
                if fn is old:
                    entries[i] = (prio, seq, name, new)

    def unregister_lookup(self, family: int, hook: str, name: str) -> None:
        entries = self._lookups.get((family, hook), [])
        entries[:] = [e for e in entries if e[2] != name]

    def _hook_fn(self, family: int, hook: str) -> Callable[[Packet, HookState], int]:
        manip = manip_of(hook)
        key = (family, hook)
        done = IPS_SRC_NAT_DONE if manip == "SRC" else IPS_DST_NAT_DONE
        bound = IPS_SRC_NAT if manip == "SRC" else IPS_DST_NAT
        bound_by_dir = (bound, bound ^ IPS_NAT_MASK)       # a reply undoes the other kind of binding
        lookups = self._lookups
        manip_packet = self.manip_packet

        def nat_hook(pkt: Packet, state: HookState) -> int:
            conn = pkt.ct
            if conn is None:
                return NF_ACCEPT
            ctstate = pkt.ctstate
            if ctstate != "ESTABLISHED":
                if ctstate == "INVALID" or ctstate == "UNTRACKED":
                    return NF_ACCEPT
                if ctstate == "RELATED" and pkt.proto in (ICMP, ICMPV6):
                    return self._related(pkt, conn, manip)      # nf_nat_icmp_reply_translation
                # IP_CT_NEW (or RELATED, e.g. REJECT's reset) without a binding of this kind: run the
                # chains (a confirmed flow that began before any NAT rule existed runs them on every NEW
                # packet, but can no longer be bound).
                if not conn.status & done:
                    for _, _, _, fn in lookups.get(key, ()):
                        verdict = fn(pkt, state)
                        if verdict != NF_ACCEPT:
                            return verdict
                        if conn.status & done:
                            break
                    if not conn.status & done:
                        self.null_binding(pkt, conn, manip, state)
            direction = pkt.ctdir
            if not conn.status & bound_by_dir[direction]:
                return NF_ACCEPT
            if hook != OUTPUT:
                return manip_packet(pkt, conn, manip, direction)
            before = pkt.dst
            verdict = manip_packet(pkt, conn, manip, direction)
            if verdict == NF_ACCEPT and pkt.dst != before and loopback_source_out(self.node, pkt):
                return NF_DROP    # nf_nat_ipv4_local_fn's ip_route_me_harder fails: dropped here
            return verdict

        return nat_hook

    # ---- binding ----------------------------------------------------------------------------
    def null_binding(self, pkt: Packet, conn: Conn, manip: str, state: HookState) -> None:
        """nf_nat_alloc_null_binding: the flow's own current address, any port that is free.

        get_unique_tuple keeps the current tuple when its reply is not taken, so that case (nearly
        every flow) only marks the binding done; otherwise ``setup`` searches a free port."""
        if conn.status & IPS_CONFIRMED:
            return
        if conn.zone:
            taken = self.node.conntrack.taken(conn.reply, conn, state.now)
        else:       # ``taken`` in the default zone, inline: this runs for most new connections
            other = self.node.conntrack.entry(conn.reply)
            taken = other is not None and other is not conn and other.expires > state.now
        if not taken:
            conn.status |= IPS_SRC_NAT_DONE if manip == "SRC" else IPS_DST_NAT_DONE
            return
        addr = conn.reply.dst if manip == "SRC" else conn.reply.src
        self.setup(pkt, NatRange(addr, addr), manip, state, null=True)

    def setup(self, pkt: Packet, rng: NatRange, manip: str, state: HookState | None = None,
              null: bool = False) -> int:
        """nf_nat_setup_info: choose the connection's new tuple for ``manip`` and record the binding."""
        conn = pkt.ct
        # "Can't setup nat info for confirmed ct": the flow keeps its binding; nor is a binding made twice.
        if conn is None or conn.status & (IPS_CONFIRMED | (IPS_SRC_NAT_DONE if manip == "SRC" else IPS_DST_NAT_DONE)):
            return NF_ACCEPT
        # The current tuple is the reply's inverse; without NAT it is the original tuple, unless IPVS
        # (ip_vs_update_conntrack) moved the reply to its real server.
        reply, orig = conn.reply, conn.orig
        curr = orig if not conn.status & IPS_NAT_MASK and reply.src == orig.dst and reply.sport == orig.dport \
            else reply.inverse()
        new = self._unique_tuple(curr, rng, manip, conn)
        if new is not curr and new != curr:
            conn.reply = new.inverse()
            conn.status |= IPS_SRC_NAT if manip == "SRC" else IPS_DST_NAT
        conn.status |= IPS_SRC_NAT_DONE if manip == "SRC" else IPS_DST_NAT_DONE
        if state is not None and state.trace is not None and (new != curr or not null):
            if manip == "SRC":
                before, after = _hp(curr.src, curr.sport, curr), _hp(new.src, new.sport, curr)
            else:
                before, after = _hp(curr.dst, curr.dport, curr), _hp(new.dst, new.dport, curr)
            kind = "SNAT" if manip == "SRC" else "DNAT"
            state.trace.add("nat", hook=state.hook, text=f"{kind} {before} -> {after}"
                            + (" (null binding)" if null else ""))
        return NF_ACCEPT

    def setup_one_destination(self, pkt: Packet, rng: NatRange, state: HookState) -> int:
        """``setup(pkt, rng, "DST", state)`` for a range of one address and one port (one for which
        ``one_destination`` answers): kube-proxy's DNAT, bound for every new connection to a Service,
        with the tuples built here rather than through the general search."""
        conn = pkt.ct
        if conn is None or conn.status & (IPS_CONFIRMED | IPS_DST_NAT_DONE):
            return NF_ACCEPT
        reply, orig = conn.reply, conn.orig
        if state.trace is not None or orig[1] not in PORT_PROTOS:
            return self.setup(pkt, rng, "DST", state)
        curr = orig if not conn.status & IPS_NAT_MASK and reply.src == orig.dst and reply.sport == orig.dport \
            else reply.inverse()
        family, proto, src, dst, sport, dport = curr
        addr, port = rng[0], rng[2]
        if addr != dst or port != dport:
            # the reply tuple of (family, proto, src, addr, sport, port): what ``setup`` records
            conn.reply = _new_tuple(Tuple, (family, proto, addr, src, port, sport))
            conn.status |= IPS_DST_NAT | IPS_DST_NAT_DONE
        else:
            conn.status |= IPS_DST_NAT_DONE
        return NF_ACCEPT

    def _unique_tuple(self, orig: Tuple, rng: NatRange, manip: str, conn: Conn) -> Tuple:
        """get_unique_tuple: keep what is free, else reuse the source's mapping, else hash an address
        into the range and search a port so that the reply tuple is unique. ``orig`` is the
        connection's current tuple (``setup`` is the only caller), so its inverse is ``conn.reply``."""
        random_all = rng.random or rng.random_fully
        one = one_destination(rng) if manip == "DST" and orig[1] in PORT_PROTOS else None
        if one is not None:
            # One address and one port, no randomness (kube-proxy's DNAT): that address and that
            # port, used or not (find_best_ips_proto, then the in-range or the one-port search).
            return orig.with_dst(*one)
        if manip == "SRC" and not random_all:
            if _in_range(orig, rng):
                if not self.node.conntrack.taken(conn.reply, conn):
                    return orig
            else:
                found = self._appropriate_src(orig, rng)
                if found is not None and not self._used(found, conn):
                    return found
        tup = _best_ips(orig, rng, manip)
        if not random_all:
            if rng.proto_specified:
                if rng.base_port is None and _port_in_range(tup, rng, manip) and (
                        rng.min_port == rng.max_port or not self._used(tup, conn)):
                    return tup
            elif not self._used(tup, conn):
                return tup
        return self._unique_port(tup, rng, manip, conn)

    def _appropriate_src(self, t: Tuple, rng: NatRange) -> Tuple | None:
        """find_appropriate_src: the newest mapping of the same source (address, port, protocol) in range."""
        ct = self.node.conntrack
        for other in reversed(ct.bysource.get((t.family, t.proto, t.src, t.sport), ())):
            if other.expires <= self.node.now():
                continue
            mapped = other.reply.inverse()
            cand = Tuple(t.family, t.proto, mapped.src, t.dst, mapped.sport, t.dport)
            if _in_range(cand, rng):
                return cand
        return None

    def _unique_port(self, t: Tuple, rng: NatRange, manip: str, conn: Conn) -> Tuple:
        """nf_nat_l4proto_unique_tuple: walk the port (or ICMP id) range from an offset until the tuple
        is unused; the offset is random for source NAT and with --random/--random-fully, else 0."""
        if t.proto in (ICMP, ICMPV6):
            key_src = True                      # the echo id, whichever side is mapped
            lo, hi = (rng.min_port or 0, rng.max_port or 0) if rng.proto_specified else (0, 65535)
        elif t.proto in PORT_PROTOS:
            key_src = manip == "SRC"
            port = t.sport if key_src else t.dport
            if rng.proto_specified:
                lo, hi = sorted((rng.min_port or 0, rng.max_port or 0))
            elif manip == "DST":
                return t                        # destination NAT without a port range keeps the port
            elif port < 1024:
                lo, hi = (1, 511) if port < 512 else (600, 1023)
            else:
                lo, hi = 1024, 65535
        else:
            return t
        size = hi - lo + 1
        if size == 1 and manip == "DST" and rng.base_port is None and not (rng.random or rng.random_fully):
            # Offset 0 and a single attempt: that port, free or not (a clash is confirm's to find).
            return t.with_src(t.src, lo) if key_src else t.with_dst(t.dst, lo)
        if rng.base_port is not None:
            off = ((t.sport if key_src else t.dport) - rng.base_port) & 0xFFFF
        elif rng.random or rng.random_fully or manip != "DST":
            off = self._random_offset(lo, hi, key_src, rng)
        else:
            off = 0
        attempts = min(size, MAX_ATTEMPTS)
        cand = t
        while True:
            for _ in range(attempts):
                p = lo + off % size
                cand = t.with_src(t.src, p) if key_src else t.with_dst(t.dst, p)
                if not self._used(cand, conn):
                    return cand
                off += 1
            if attempts >= size or attempts < 16:
                return cand                     # none free: the last one tried (confirm will clash)
            attempts //= 2
            off = self.rng.randrange(65536)

    def _random_offset(self, lo: int, hi: int, key_src: bool, rng: NatRange) -> int:
        """Where the port search starts: at random, or at the port a replay asks for when the range
        allows it (the kernel drew that offset)."""
        if self.port_hint is not None:
            want = self.port_hint[0 if key_src else 1]
            if lo <= want <= hi:
                how = "--random-fully" if rng.random_fully else "--random" if rng.random else "a taken port"
                self.replayed.append(f"{'source' if key_src else 'destination'} port {want} "
                                     f"(drawn at random for {how} from {lo}-{hi})")
                return want - lo
        return self.rng.randrange(65536)

    def _used(self, t: Tuple, conn: Conn) -> bool:
        """nf_nat_used_tuple: would the reply tuple of ``t`` clash with another connection?"""
        return self.node.conntrack.taken(t.inverse(), conn)

    # ---- rewriting --------------------------------------------------------------------------
    @staticmethod
    def manip_packet(pkt: Packet, conn: Conn, manip: str, direction: int) -> int:
        """nf_nat_packet: rewrite the header ``manip`` touches if the connection has that binding."""
        bit = IPS_SRC_NAT if manip == "SRC" else IPS_DST_NAT
        if direction == REPLY:
            bit ^= IPS_NAT_MASK
        if not conn.status & bit:
            return NF_ACCEPT
        # The target tuples only change when a binding is made: remember them on the connection,
        # for the original direction and for replies.
        if conn.status & IPS_CONFIRMED:
            target = _targets(conn)[1 + direction]
        else:
            # A connection's first packet: not worth remembering (most flows' only packet, in bulk). The
            # target is the other direction's tuple inverted: its fields read crosswise, with no tuple made.
            other = conn.orig if direction == REPLY else conn.reply
            if other[1] in PORT_PROTOS:
                if manip == "SRC":
                    pkt.src, pkt.sport = other[3], other[5]
                else:
                    pkt.dst, pkt.dport = other[2], other[4]
                return NF_ACCEPT
            target = other.inverse()
        if target[1] in PORT_PROTOS:
            if manip == "SRC":
                pkt.src, pkt.sport = target[2], target[4]
            else:
                pkt.dst, pkt.dport = target[3], target[5]
        else:
            _rewrite(pkt, target, manip)
        return NF_ACCEPT

    def _related(self, pkt: Packet, conn: Conn, manip: str) -> int:
        """nf_nat_icmp_reply_translation: the quoted header is un-NATed and the outer one follows it."""
        inner = pkt.inner
        direction = pkt.ctdir
        bit = IPS_SRC_NAT if manip == "SRC" else IPS_DST_NAT
        if direction == REPLY:
            bit ^= IPS_NAT_MASK
        if not conn.status & bit:
            return NF_ACCEPT
        if inner is not None:
            # The quoted packet travelled the other way: the opposite field, from the other tuple.
            _rewrite(inner, conn.orig if direction == REPLY else conn.reply, "DST" if manip == "SRC" else "SRC")
        target = (conn.orig if direction == REPLY else conn.reply).inverse()
        if manip == "SRC":
            pkt.src = target.src
        else:
            pkt.dst = target.dst
        return NF_ACCEPT


def one_destination(rng: NatRange) -> tuple[int, int] | None:
    """(address, port) when the range is one address and one port, with no random or offset port
    choice; else None. Read field by field: this is asked for every DNAT binding."""
    addr, port = rng.min_addr, rng.min_port
    if addr is None or port is None or port != rng.max_port or rng.max_addr not in (None, addr) \
            or rng.base_port is not None or rng.random or rng.random_fully:
        return None
    return addr, port


def _targets(conn: Conn) -> tuple[Tuple, Tuple, Tuple]:
    """The connection's (reply tuple, tuple an original packet leaves with, tuple a reply leaves
    with), remembered on it: they only change when a binding is made."""
    cached = conn.nat_targets
    if cached is None or cached[0] is not conn.reply:
        cached = conn.nat_targets = (conn.reply, conn.reply.inverse(), conn.orig.inverse())
    return cached


def _rewrite(pkt: Packet, target: Tuple, manip: str) -> None:
    if pkt.proto in (ICMP, ICMPV6):
        pkt.icmp_id = target.sport              # icmp_manip_pkt: the id, for either manip
    if manip == "SRC":
        pkt.src = target.src
        if target.has_ports:
            pkt.sport = target.sport
    else:
        pkt.dst = target.dst
        if target.has_ports:
            pkt.dport = target.dport


def _in_range(t: Tuple, rng: NatRange) -> bool:
    """nf_in_range: the source address (when mapping addresses) and source port or id are in the range."""
    if rng.map_ips and not (rng.min_addr or 0) <= t.src <= _max_addr(rng):
        return False
    return not rng.proto_specified or _port_in_range(t, rng, "SRC")


def _port_in_range(t: Tuple, rng: NatRange, manip: str) -> bool:
    """l4proto_in_range: protocols without ports are always in range."""
    if t.proto in (ICMP, ICMPV6):
        key = t.sport
    elif t.has_ports:
        key = t.sport if manip == "SRC" else t.dport
    else:
        return True
    return (rng.min_port or 0) <= key <= (rng.max_port or 0)


def _max_addr(rng: NatRange) -> int:
    return rng.max_addr if rng.max_addr is not None else rng.min_addr or 0


_M32 = 0xFFFFFFFF


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def jhash2(words: list[int], initval: int) -> int:
    """The kernel's jhash2 (Bob Jenkins' lookup3 over 32-bit words), used to spread NAT addresses."""
    n = len(words)
    a = b = c = (0xDEADBEEF + (n << 2) + initval) & _M32
    i = 0
    while n > 3:
        a, b, c = (a + words[i]) & _M32, (b + words[i + 1]) & _M32, (c + words[i + 2]) & _M32
        a = ((a - c) & _M32) ^ _rol(c, 4)
        c = (c + b) & _M32
        b = ((b - a) & _M32) ^ _rol(a, 6)
        a = (a + c) & _M32
        c = ((c - b) & _M32) ^ _rol(b, 8)
        b = (b + a) & _M32
        a = ((a - c) & _M32) ^ _rol(c, 16)
        c = (c + b) & _M32
        b = ((b - a) & _M32) ^ _rol(a, 19)
        a = (a + c) & _M32
        c = ((c - b) & _M32) ^ _rol(b, 4)
        b = (b + a) & _M32
        n -= 3
        i += 3
    if n == 0:
        return c
    if n == 3:
        c = (c + words[i + 2]) & _M32
    if n >= 2:
        b = (b + words[i + 1]) & _M32
    a = (a + words[i]) & _M32
    c = ((c ^ b) - _rol(b, 14)) & _M32
    a = ((a ^ c) - _rol(c, 11)) & _M32
    b = ((b ^ a) - _rol(a, 25)) & _M32
    c = ((c ^ b) - _rol(b, 16)) & _M32
    a = ((a ^ c) - _rol(c, 4)) & _M32
    b = ((b ^ a) - _rol(a, 14)) & _M32
    c = ((c ^ b) - _rol(b, 24)) & _M32
    return c


def jhash(data: bytes, initval: int) -> int:
    """The kernel's byte-wise jhash (nft's ``jhash`` expression): little-endian words, then the tail
    bytes into a, b and c as __get_unaligned_cpu32 would load them. For whole words it is jhash2."""
    words = [int.from_bytes(data[i:i + 4].ljust(4, b"\0"), "little") for i in range(0, len(data), 4)]
    if len(data) % 4 == 0:
        return jhash2(words, initval)
    # jhash2 seeds with 4 bytes per word; jhash with the byte count: correct the seed for the tail.
    return jhash2(words, (initval + len(data) - 4 * len(words)) & _M32)


def _chunks(addr: int, family: int) -> list[int]:
    """An address as the four 32-bit words of union nf_inet_addr, most significant first (IPv4: one)."""
    if family == 4:
        return [addr, 0, 0, 0]
    return [(addr >> (96 - 32 * i)) & _M32 for i in range(4)]


def _word(chunk: int) -> int:
    """A big-endian 32-bit word as a little-endian CPU loads it (what jhash2 and the XORs see)."""
    return int.from_bytes(chunk.to_bytes(4, "big"), "little")


def _best_ips(t: Tuple, rng: NatRange, manip: str) -> Tuple:
    """find_best_ips_proto: the same address the kernel picks from a range, by jhash2 of the source
    address seeded with the destination (only the source with --persistent)."""
    if not rng.map_ips:
        return t
    lo, hi = rng.min_addr or 0, _max_addr(rng)
    if lo == hi:
        return t.with_src(lo, t.sport) if manip == "SRC" else t.with_dst(lo, t.dport)
    last = 0 if t.family == 4 else 3
    src, dst = _chunks(t.src, t.family), _chunks(t.dst, t.family)
    var = src if manip == "SRC" else dst
    j = jhash2([_word(w) for w in src], 0 if rng.persistent else _word(dst[last]))
    lo_c, hi_c = _chunks(lo, t.family), _chunks(hi, t.family)
    full = False
    for i in range(last + 1):
        if not full:
            base, dist = lo_c[i], (hi_c[i] - lo_c[i] + 1) & _M32
        else:
            base, dist = 0, _M32
        var[i] = (base + ((j * dist) >> 32)) & _M32
        if var[i] != hi_c[i]:
            full = True
        if not rng.persistent:
            j ^= _word(dst[i])
    addr = var[0] if t.family == 4 else (var[0] << 96) | (var[1] << 64) | (var[2] << 32) | var[3]
    return t.with_src(addr, t.sport) if manip == "SRC" else t.with_dst(addr, t.dport)


def _hp(addr: int, port: int, t: Tuple) -> str:
    a = format_addr(addr, t.family)
    if not t.has_ports:
        return a
    return f"[{a}]:{port}" if t.family == 6 else f"{a}:{port}"


def loopback_source_out(node: Any, pkt: Packet, route: Any = None) -> bool:
    """Whether routing sends a packet with a loopback source out of a device that is not loopback,
    which Linux refuses (__mkroute_output: EINVAL) unless route_localnet is set for that device."""
    if pkt.family != 4 or (pkt.src >> 24) != 127:
        return False
    route = route or node.route(pkt.family, pkt.dst)
    if route.type != "unicast" or route.dev == "lo":
        return False
    return not (node.sysctls.get("net.ipv4.conf.all.route_localnet", "0") == "1" or
                node.sysctls.get(f"net.ipv4.conf.{route.dev}.route_localnet", "0") == "1")
