"""IPVS schedulers, each following its kernel module (net/netfilter/ipvs/ip_vs_*.c).

A scheduler picks a destination for a new connection from the service's destinations in their
list order. "Available" means weight > 0 and not overloaded (upper threshold reached), as each
module checks. Connection counts use ip_vs_dest_conn_overhead: active * 256 + inactive.
"""

from __future__ import annotations

from math import gcd
from typing import Any

GOLDEN_RATIO_32 = 0x61C88647
TAB_BITS = 8
TAB_SIZE = 1 << TAB_BITS


def available(d: Any) -> bool:
    return d.weight > 0 and not d.overloaded


def overhead(d: Any) -> int:
    """ip_vs_dest_conn_overhead."""
    return (d.activeconns << 8) + d.inactconns


class Scheduler:
    name = ""

    def __init__(self, svc: Any) -> None:
        self.svc = svc
        self.update()

    def update(self) -> None:
        """Called when destinations are added, edited or removed."""

    def schedule(self, pkt: Any) -> Any:
        raise NotImplementedError


class RoundRobin(Scheduler):
    """ip_vs_rr: the next available destination after the last one chosen."""

    name = "rr"

    def update(self) -> None:
        self.last = -1

    def schedule(self, pkt: Any) -> Any:
        dests = self.svc.dests
        n = len(dests)
        for step in range(1, n + 1):
            i = (self.last + step) % n
            if available(dests[i]):
                self.last = i
                return dests[i]
        return None


class WeightedRoundRobin(Scheduler):
    """ip_vs_wrr: walk the list from the last choice; each pass lowers the current weight by the weights' gcd."""

    name = "wrr"

    def update(self) -> None:
        weights = [d.weight for d in self.svc.dests if d.weight > 0]
        self.di = 0
        for w in weights:
            self.di = gcd(self.di, w)
        self.di = self.di or 1
        self.mw = max((d.weight for d in self.svc.dests), default=0) - (self.di - 1)
        cw = getattr(self, "cw", 0)
        if cw > self.mw or not cw:
            self.cw = self.mw
        elif self.di > 1:
            self.cw = (cw // self.di) * self.di + 1
        self.cl = -1           # the list head

    def schedule(self, pkt: Any) -> Any:
        dests = self.svc.dests
        if self.mw <= 0:
            return None
        pos = last = self.cl
        stop: int | None = None
        last_pass = restarted = False
        while True:
            for j in range(pos + 1, len(dests)):
                d = dests[j]
                if not d.overloaded and d.weight >= self.cw:
                    self.cl = j
                    return d
                if stop is not None and j == stop:
                    return None
            pos = -1
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                if last_pass or last == -1:
                    return None
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last != -1:
                stop = last


class LeastConnection(Scheduler):
    """ip_vs_lc: the smallest overhead; the first one wins ties."""

    name = "lc"

    def schedule(self, pkt: Any) -> Any:
        least, loh = None, 0
        for d in self.svc.dests:
            if not available(d):
                continue
            doh = overhead(d)
            if least is None or doh < loh:
                least, loh = d, doh
        return least


class WeightedLeastConnection(Scheduler):
    """ip_vs_wlc: the smallest overhead per weight (compared by cross-multiplying)."""

    name = "wlc"

    def cost(self, d: Any) -> int:
        return overhead(d)

    def schedule(self, pkt: Any) -> Any:
        least, loh = None, 0
        for d in self.svc.dests:
            if not available(d):
                continue
            doh = self.cost(d)
            if least is None or loh * d.weight > doh * least.weight:
                least, loh = d, doh
        return least


class ShortestExpectedDelay(WeightedLeastConnection):
    """ip_vs_sed: overhead = active connections + 1."""

    name = "sed"

    def cost(self, d: Any) -> int:
        return d.activeconns + 1


class NeverQueue(ShortestExpectedDelay):
    """ip_vs_nq: an idle destination at once, else the shortest expected delay."""

    name = "nq"

    def schedule(self, pkt: Any) -> Any:
        for d in self.svc.dests:
            if available(d) and d.activeconns == 0:
                return d
        return super().schedule(pkt)


class WeightedFailover(Scheduler):
    """ip_vs_fo: the available destination with the highest weight (the first among equals)."""

    name = "fo"

    def schedule(self, pkt: Any) -> Any:
        best = None
        for d in self.svc.dests:
            if available(d) and (best is None or d.weight > best.weight):
                best = d
        return best


class WeightedOverflow(Scheduler):
    """ip_vs_ovf: the highest-weight destination whose active connections are below its weight."""

    name = "ovf"

    def schedule(self, pkt: Any) -> Any:
        best = None
        for d in self.svc.dests:
            if available(d) and d.activeconns < d.weight and (best is None or d.weight > best.weight):
                best = d
        return best


def hash_32(value: int, bits: int = TAB_BITS) -> int:
    return ((value * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> (32 - bits)


class SourceHashing(Scheduler):
    """ip_vs_sh: 256 buckets filled round robin, each destination taking ``weight`` consecutive buckets."""

    name = "sh"
    FLAG_FALLBACK, FLAG_PORT = "sh-fallback", "sh-port"

    def update(self) -> None:
        dests = self.svc.dests
        self.buckets: list[Any] = [None] * TAB_SIZE
        if not dests:
            return
        p, count = 0, 0
        for i in range(TAB_SIZE):
            d = dests[p % len(dests)]
            self.buckets[i] = d
            count += 1
            if count >= max(d.weight, 1) or d.weight <= 0:
                p += 1
                count = 0

    def key_addr(self, pkt: Any) -> int:
        return pkt.src

    def key_port(self, pkt: Any) -> int:
        return pkt.sport

    def hashkey(self, pkt: Any, offset: int = 0) -> int:
        addr = self.key_addr(pkt)
        if pkt.family == 6:
            addr = (addr >> 96) ^ (addr >> 64) ^ (addr >> 32) ^ addr
        port = self.key_port(pkt) if self.FLAG_PORT in self.svc.flags else 0
        return (offset + hash_32((port + (addr & 0xFFFFFFFF)) & 0xFFFFFFFF)) & (TAB_SIZE - 1)

    def schedule(self, pkt: Any) -> Any:
        if self.FLAG_FALLBACK in self.svc.flags:
            for offset in range(TAB_SIZE):
                d = self.buckets[self.hashkey(pkt, offset)]
                if d is not None and available(d):
                    return d
            return None
        d = self.buckets[self.hashkey(pkt)]
        return d if d is not None and available(d) else None


class DestinationHashing(Scheduler):
    """ip_vs_dh: buckets filled round robin over the destinations, keyed by the destination address."""

    name = "dh"

    def update(self) -> None:
        dests = self.svc.dests
        self.buckets = [dests[i % len(dests)] if dests else None for i in range(TAB_SIZE)]

    def schedule(self, pkt: Any) -> Any:
        addr = pkt.dst & 0xFFFFFFFF
        d = self.buckets[(addr * 2654435761) & (TAB_SIZE - 1)]
        return d if d is not None and available(d) else None


def _wlc_pick(dests: list[Any]) -> Any:
    """The weighted least-connection choice the locality schedulers fall back on."""
    least, loh = None, 0
    for d in dests:
        if not available(d):
            continue
        doh = overhead(d)
        if least is None or loh * d.weight > doh * least.weight:
            least, loh = d, doh
    return least


def _is_overloaded(d: Any, dests: list[Any]) -> bool:
    """lblc/lblcr: busier than its weight while some other server is under half of its own."""
    return d.activeconns > d.weight and any(o.activeconns * 2 < o.weight for o in dests)


class LocalityLeastConnection(Scheduler):
    """ip_vs_lblc: the server last used for this destination address, unless it is gone or overloaded."""

    name = "lblc"

    def update(self) -> None:
        self.table: dict[int, Any] = {}

    def schedule(self, pkt: Any) -> Any:
        dests = self.svc.dests
        d = self.table.get(pkt.dst)
        if d is not None and d in dests and d.weight > 0 and not d.overloaded and not _is_overloaded(d, dests):
            return d
        d = _wlc_pick(dests)
        if d is not None:
            self.table[pkt.dst] = d
        return d


class LocalityLeastConnectionReplicated(Scheduler):
    """ip_vs_lblcr: a set of servers per destination address; the least loaded of the set, grown when overloaded."""

    name = "lblcr"

    def update(self) -> None:
        self.sets: dict[int, list[Any]] = {}

    def schedule(self, pkt: Any) -> Any:
        dests = self.svc.dests
        members = [d for d in self.sets.get(pkt.dst, []) if d in dests]
        d = _wlc_pick(members) if members else None
        if d is None or _is_overloaded(d, dests):
            d = _wlc_pick(dests)
            if d is None:
                return None
            if d not in members:
                members.append(d)
        self.sets[pkt.dst] = members
        return d


class MaglevHashing(Scheduler):
    """ip_vs_mh: a Maglev lookup table of M = 4093 entries, filled by each server's (offset, skip) permutation
    in turns proportional to its weight. The kernel keys its hashes with random siphash keys chosen at boot,
    so its exact table cannot be reproduced; here the keys are fixed, and the algorithm is the kernel's."""

    name = "mh"
    M = 4093

    @staticmethod
    def _hash(value: bytes, key: bytes) -> int:
        import hashlib

        return int.from_bytes(hashlib.blake2b(value, digest_size=8, key=key).digest(), "big")

    def update(self) -> None:
        dests = [d for d in self.svc.dests if d.weight > 0]
        self.table: list[Any] = [None] * self.M
        if not dests:
            return
        g = 0
        for d in dests:
            g = gcd(g, d.weight)
        perm = []
        for d in dests:
            ident = f"{d.addr}:{d.port}".encode()
            offset = self._hash(ident, b"mh-offset") % self.M
            skip = self._hash(ident, b"mh-skip") % (self.M - 1) + 1
            perm.append([offset, skip, 0, d.weight // g])
        filled, turns = 0, [0] * len(dests)
        while filled < self.M:
            for i, (offset, skip, nxt, turn) in enumerate(perm):
                turns[i] += 1
                if turns[i] > turn:
                    continue
                while True:
                    c = (offset + nxt * skip) % self.M
                    nxt += 1
                    if self.table[c] is None:
                        break
                perm[i][2] = nxt
                self.table[c] = dests[i]
                filled += 1
                if filled == self.M:
                    break
            if all(t >= p[3] for t, p in zip(turns, perm)):
                turns = [0] * len(dests)

    def schedule(self, pkt: Any) -> Any:
        port = pkt.sport if "mh-port" in self.svc.flags else 0
        d = self.table[self._hash(f"{pkt.src}:{port}".encode(), b"mh-lookup") % self.M]
        if d is not None and available(d):
            return d
        if "mh-fallback" in self.svc.flags:
            for offset in range(1, self.M):
                d = self.table[(self._hash(f"{pkt.src}:{port}".encode(), b"mh-lookup") + offset) % self.M]
                if d is not None and available(d):
                    return d
        return None


class TwoRandomChoices(Scheduler):
    """ip_vs_twos: two servers drawn at random in proportion to weight; the less loaded per weight wins."""

    name = "twos"

    def update(self) -> None:
        import random

        self.rng = getattr(self, "rng", None) or random.Random(0)

    def schedule(self, pkt: Any) -> Any:
        dests = [d for d in self.svc.dests if available(d)]
        total = sum(d.weight for d in dests)
        if not total:
            return None

        def draw() -> Any:
            r = self.rng.randrange(total)
            for d in dests:
                if r < d.weight:
                    return d
                r -= d.weight
            return dests[-1]

        c1, c2 = draw(), draw()
        if c2.weight * overhead(c1) > c1.weight * overhead(c2):
            c1 = c2
        return c1


SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (RoundRobin, WeightedRoundRobin, LeastConnection, WeightedLeastConnection,
                              ShortestExpectedDelay, NeverQueue, WeightedFailover, WeightedOverflow, SourceHashing,
                              DestinationHashing, LocalityLeastConnection, LocalityLeastConnectionReplicated,
                              MaglevHashing, TwoRandomChoices)
}
