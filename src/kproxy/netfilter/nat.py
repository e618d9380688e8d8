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
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kproxy.netfilter.conntrack import (
    IPS_DST_NAT,
    IPS_DST_NAT_DONE,
    IPS_NAT_MASK,
    IPS_SRC_NAT,
    IPS_SRC_NAT_DONE,
    REPLY,
    Conn,
    Tuple,
)
from kproxy.netfilter.hooks import OUTPUT, PREROUTING, PRI_NAT_DST, PRI_NAT_SRC, HookState
from kproxy.packet import ICMP, ICMPV6, NF_ACCEPT, NF_DROP, Packet, format_addr

Lookup = Callable[[Packet, HookState], int]
MAX_ATTEMPTS = 128


@dataclass(frozen=True, slots=True)
class NatRange:
    """struct nf_nat_range2: an address range and/or a port range, with the mapping flags."""

    min_addr: int | None = None
    max_addr: int | None = None
    min_port: int | None = None
    max_port: int | None = None
    random: bool = False
    random_fully: bool = False
    persistent: bool = False

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

    def __init__(self, node: Any) -> None:
        self.node = node
        self._lookups: dict[tuple[int, str], list[tuple[int, int, str, Lookup]]] = {}
        self._seq = 0
        self.rng = random.Random(0)

    def register_lookup(self, family: int, hook: str, priority: int, name: str, fn: Lookup) -> None:
        key = (family, hook)
        if key not in self._lookups:
            self._lookups[key] = []
            prio = PRI_NAT_DST if manip_of(hook) == "DST" else PRI_NAT_SRC
            self.node.hooks.register(family, hook, prio, f"nat:{hook}", self._hook_fn(family, hook))
        self._seq += 1
        bisect.insort(self._lookups[key], (priority, self._seq, name, fn), key=lambda e: (e[0], e[1]))

    def unregister_lookup(self, family: int, hook: str, name: str) -> None:
        entries = self._lookups.get((family, hook), [])
        entries[:] = [e for e in entries if e[2] != name]

    def _hook_fn(self, family: int, hook: str) -> Callable[[Packet, HookState], int]:
        manip = manip_of(hook)
        key = (family, hook)

        def nat_hook(pkt: Packet, state: HookState) -> int:
            conn = pkt.ct
            if conn is None or pkt.ctstate in ("INVALID", "UNTRACKED"):
                return NF_ACCEPT
            if pkt.ctstate == "RELATED":
                return self._related(pkt, conn, manip)
            if not conn.nat_done(manip) and pkt.ctdir == 0 and not conn.confirmed:
                for _, _, _, fn in self._lookups.get(key, ()):
                    verdict = fn(pkt, state)
                    if verdict != NF_ACCEPT:
                        return verdict
                    if conn.nat_done(manip):
                        break
                if not conn.nat_done(manip):
                    self.setup(pkt, NatRange(), manip, state, null=True)
            return self.manip_packet(pkt, conn, manip, pkt.ctdir)

        return nat_hook

    # ---- binding ----------------------------------------------------------------------------
    def setup(self, pkt: Packet, rng: NatRange, manip: str, state: HookState | None = None,
              null: bool = False) -> int:
        """nf_nat_setup_info: choose the connection's new tuple for ``manip`` and record the binding."""
        conn = pkt.ct
        if conn is None:
            return NF_ACCEPT
        if conn.nat_done(manip):
            return NF_ACCEPT
        curr = conn.orig if not conn.status & IPS_NAT_MASK else conn.reply.inverse()
        new = self._unique_tuple(curr, rng, manip, conn)
        if new is None:
            return NF_DROP
        if new != curr:
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

    def _unique_tuple(self, orig: Tuple, rng: NatRange, manip: str, conn: Conn) -> Tuple | None:
        """get_unique_tuple: pick the address, then keep or search the port so the reply tuple is free."""
        tup = orig
        if rng.map_ips:
            addr = self._pick_addr(orig, rng, manip)
            tup = orig.with_src(addr, orig.sport) if manip == "SRC" else orig.with_dst(addr, orig.dport)
        key_port = tup.sport if manip == "SRC" else tup.dport
        in_range = not rng.proto_specified or (rng.min_port or 0) <= key_port <= (rng.max_port or 0)
        if not rng.random and not rng.random_fully and in_range and not self._used(tup, conn):
            return tup
        if not tup.has_ports and tup.proto not in (ICMP, ICMPV6):
            return tup
        return self._search_port(tup, rng, manip, conn)

    def _pick_addr(self, t: Tuple, rng: NatRange, manip: str) -> int:
        lo, hi = rng.min_addr or 0, rng.max_addr if rng.max_addr is not None else rng.min_addr or 0
        if lo == hi:
            return lo
        # find_best_ips_proto: a hash of the addresses the mapping keeps, scaled into the range.
        other = t.dst if manip == "SRC" else t.src
        seed = f"{t.src if manip == 'SRC' else t.dst}|{0 if rng.persistent else other}".encode()
        return lo + zlib.crc32(seed) % (hi - lo + 1)

    def _search_port(self, t: Tuple, rng: NatRange, manip: str, conn: Conn) -> Tuple | None:
        """nf_nat_l4proto_unique_tuple: walk the port range from an offset until the tuple is unused."""
        port = t.sport if manip == "SRC" else t.dport
        if rng.proto_specified:
            lo, hi = rng.min_port or 0, rng.max_port or 0
        elif manip == "DST":
            return t            # DNAT without a port range never moves the port
        elif t.proto in (ICMP, ICMPV6):
            lo, hi = 0, 65535
        elif port < 1024:
            lo, hi = (1, 511) if port < 512 else (600, 1023)
        else:
            lo, hi = 1024, 65535
        size = hi - lo + 1
        if rng.random_fully:
            off = self.rng.randrange(65536)
        elif rng.random:
            off = zlib.crc32(f"{t.src}|{t.dst}|{t.dport}".encode()) & 0xFFFF
        else:
            off = 0
        attempts = min(size, MAX_ATTEMPTS)
        while True:
            for _ in range(attempts):
                p = lo + off % size
                cand = t.with_src(t.src, p) if manip == "SRC" else t.with_dst(t.dst, p)
                if not self._used(cand, conn):
                    return cand
                off += 1
            if attempts >= size or attempts < 16:
                return None
            attempts //= 2
            off = self.rng.randrange(65536)

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
        # The target tuple only changes when a binding is made: remember it on the connection.
        cached = conn.nat_targets
        key = (direction, conn.reply)
        if cached is None or cached[0] != key:
            cached = conn.nat_targets = (key, (conn.orig if direction == REPLY else conn.reply).inverse())
        _rewrite(pkt, cached[1], manip)
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


def _rewrite(pkt: Packet, target: Tuple, manip: str) -> None:
    if manip == "SRC":
        pkt.src = target.src
        if pkt.proto in (ICMP, ICMPV6):
            pkt.icmp_id = target.sport
        elif target.has_ports:
            pkt.sport = target.sport
    else:
        pkt.dst = target.dst
        if target.has_ports:
            pkt.dport = target.dport


def _hp(addr: int, port: int, t: Tuple) -> str:
    a = format_addr(addr, t.family)
    if not t.has_ports:
        return a
    return f"[{a}]:{port}" if t.family == 6 else f"{a}:{port}"
