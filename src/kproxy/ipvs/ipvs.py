"""IPVS: virtual services, real servers, the connection table, and its place in the packet path.

Hooked where the kernel hooks it (ip_vs_core.c): new connections to a virtual service are
scheduled at LOCAL_IN (priority 99, after the filter table, so INPUT rules see the virtual IP),
and those of local processes at LOCAL_OUT (-98, after the nat table, before filter); a masqueraded
packet is rewritten and re-sent through LOCAL_OUT and POSTROUTING (the hook steals it), and replies
from the real server are rewritten back in FORWARD (priority 100), or at LOCAL_IN (98) when the
client is local. The conntrack entry's reply tuple is altered to the real server, as with
net.ipv4.vs.conntrack=1.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kproxy.ipvs.schedulers import SCHEDULERS, Scheduler
from kproxy.netfilter.conntrack import Tuple
from kproxy.netfilter.hooks import (
    FORWARD,
    INPUT,
    OUTPUT,
    PRI_IPVS_FORWARD_REPLY,
    PRI_IPVS_LOCAL_IN,
    PRI_IPVS_LOCAL_OUT,
    PRI_IPVS_REPLY_LOCAL_IN,
    HookState,
)
from kproxy.netfilter.path import reinject_local_out
from kproxy.packet import NF_ACCEPT, NF_DROP, NF_STOLEN, TCP, UDP, Packet, format_addr
from kproxy.versioned import Epoch

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node

PROTOS = {"tcp": TCP, "udp": UDP, "sctp": 132}
PROTO_NAMES = {TCP: "TCP", UDP: "UDP", 132: "SCTP"}
FWD = {"masq": "Masq", "droute": "Route", "tunnel": "Tunnel", "local": "Local"}
TCP_TIMEOUTS = {"NONE": 2, "ESTABLISHED": 900, "SYN_SENT": 120, "SYN_RECV": 60, "FIN_WAIT": 120, "TIME_WAIT": 120,
                "CLOSE": 10, "CLOSE_WAIT": 60, "LAST_ACK": 30, "LISTEN": 120, "SYNACK": 120}
UDP_TIMEOUT = 300
TABLE_SIZE = 4096


class RateEstimator:
    """ip_vs_est: every 2 s, an average of the per-second rates with weight 1/4 (fixed point as the kernel).

    Counters are sampled when asked (listing), so changes since the last sample count in the first
    2-s interval that elapsed and later intervals see none, where the kernel samples on a timer.
    """

    KEYS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
    SETTLE = 256

    def __init__(self, now: float = 0.0) -> None:
        self.last = dict.fromkeys(self.KEYS, 0)
        self.avg = dict.fromkeys(self.KEYS, 0)
        self.stamp = now

    def sample(self, stats: dict[str, int], now: float) -> None:
        intervals = int((now - self.stamp) // 2.0)
        if intervals > self.SETTLE:
            # Intervals after the first see no change: the averages only decay, reaching 0 well within
            # SETTLE steps, so the rest are skipped (a node's clock may be years past the last sample).
            self.stamp += 2.0 * (intervals - self.SETTLE)
        while now - self.stamp >= 2.0:
            self.stamp += 2.0
            for k in self.KEYS:
                shift = 4 if k.endswith("bytes") else 9
                rate = (stats[k] - self.last[k]) << shift
                self.last[k] = stats[k]
                self.avg[k] += (rate - self.avg[k]) >> 2

    def rates(self) -> tuple[int, int, int, int, int]:
        a = self.avg
        return ((a["conns"] + 0x1FF) >> 10, (a["inpkts"] + 0x1FF) >> 10, (a["outpkts"] + 0x1FF) >> 10,
                (a["inbytes"] + 0xF) >> 5, (a["outbytes"] + 0xF) >> 5)


# The in-counters of replayed packets not yet added to their real servers' and services' counters, as
# [real server's counters, service's counters, packets, bytes]: a replay (kproxy.flowcache)
# then touches only its own flow's memory; reading ``stats`` adds them.
PENDING: list[list[Any]] = []


def flush_pending() -> None:
    for acc in PENDING:
        dest, svc, n, size = acc
        dest["inpkts"] += n
        dest["inbytes"] += size
        svc["inpkts"] += n
        svc["inbytes"] += size
        acc[2] = acc[3] = 0
    PENDING.clear()


class IpvsError(ValueError):
    """The ipvsadm error text for a refused operation."""


@dataclass(eq=False, slots=True)
class Dest:
    addr: int
    port: int
    family: int = 4
    weight: int = 1
    fwd: str = "masq"
    u_threshold: int = 0
    l_threshold: int = 0
    activeconns: int = 0
    inactconns: int = 0
    persistconns: int = 0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("conns", "inpkts", "outpkts",
                                                                              "inbytes", "outbytes"), 0))
    overloaded: bool = False
    available: bool = True        # IP_VS_DEST_F_AVAILABLE: cleared when the destination is deleted
    estimator: RateEstimator = field(default_factory=RateEstimator)

    @property
    def stats(self) -> dict[str, int]:
        """The counters, with the packets replays counted since they were last read (``PENDING``)."""
        if PENDING:
            flush_pending()
        return self.counters

    def update_overload(self) -> None:
        """IP_VS_DEST_F_OVERLOAD: set at the upper threshold, cleared below the lower one (3/4 upper by default)."""
        conns = self.activeconns + self.inactconns
        if self.u_threshold and conns >= self.u_threshold:
            self.overloaded = True
        elif self.overloaded:
            low = self.l_threshold or (self.u_threshold * 3 // 4)
            if conns < low or not self.u_threshold:
                self.overloaded = False

    def text(self) -> str:
        a = format_addr(self.addr, self.family)
        return f"[{a}]:{self.port}" if self.family == 6 else f"{a}:{self.port}"


@dataclass(eq=False, slots=True)
class VirtualService:
    proto: int            # 0 for a firewall-mark service
    addr: int
    port: int
    fwmark: int = 0
    family: int = 4
    scheduler_name: str = "wlc"
    persistent: int | None = None
    netmask: int = 0xFFFFFFFF
    flags: set[str] = field(default_factory=set)
    dests: list[Dest] = field(default_factory=list)
    scheduler: Scheduler | None = None
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("conns", "inpkts", "outpkts",
                                                                              "inbytes", "outbytes"), 0))
    estimator: RateEstimator = field(default_factory=RateEstimator)

    def __post_init__(self) -> None:
        self.set_scheduler(self.scheduler_name)

    @property
    def stats(self) -> dict[str, int]:
        """The counters, as ``Dest.stats``."""
        if PENDING:
            flush_pending()
        return self.counters

    def set_scheduler(self, name: str) -> None:
        if name not in SCHEDULERS:
            raise IpvsError("Scheduler not found")
        self.scheduler_name = name
        self.scheduler = SCHEDULERS[name](self)

    def key(self) -> tuple[int, int, int, int]:
        return (self.fwmark, self.proto, self.addr, self.port) if not self.fwmark else (self.fwmark, 0, 0, 0)

    def find(self, addr: int, port: int) -> Dest | None:
        return next((d for d in self.dests if d.addr == addr and d.port == port), None)

    def text(self) -> str:
        if self.fwmark:
            return f"FWM  {self.fwmark}"
        a = format_addr(self.addr, self.family)
        a = f"[{a}]" if self.family == 6 else a
        return f"{PROTO_NAMES[self.proto]:<4} {a}:{self.port}"


@dataclass(eq=False, slots=True)
class IpvsConn:
    proto: int
    caddr: int
    cport: int
    vaddr: int
    vport: int
    dest: Dest
    svc: VirtualService
    state: str
    expires: float
    template: bool = False

    @property
    def active(self) -> bool:
        return self.proto == TCP and self.state == "ESTABLISHED"


class Ipvs:
    """The IPVS state of one node."""

    def __init__(self) -> None:
        self.services: dict[tuple[int, int, int, int], VirtualService] = {}
        self.conns_in: dict[tuple[int, int, int, int, int], IpvsConn] = {}
        self.conns_out: dict[tuple[int, int, int, int, int], IpvsConn] = {}
        self.conn_changes = 0     # connections added or removed (see Conntrack.changes)
        self.templates: dict[tuple[int, int, int], IpvsConn] = {}
        self.timeouts = {"tcp": 900, "tcpfin": 120, "udp": 300}
        self.node: Node | None = None
        self.version = 0          # bumped when services come or go (what a flow's replay depends on)

    # ---- configuration --------------------------------------------------------------------------
    def changed(self) -> None:
        """Services came or went, or a real server went or changed how it forwards: what a replayed
        flow relied on may no longer hold."""
        self.version += 1
        Epoch.bump()

    def add_service(self, svc: VirtualService) -> None:
        if svc.key() in self.services:
            raise IpvsError("Service already exists")
        self.services[svc.key()] = svc
        self.changed()
        self._sync_hooks(svc.family)

    def get_service(self, key: tuple[int, int, int, int]) -> VirtualService:
        svc = self.services.get(key)
        if svc is None:
            raise IpvsError("No such service")
        return svc

    def del_service(self, key: tuple[int, int, int, int]) -> None:
        svc = self.get_service(key)
        del self.services[key]
        self.changed()
        self._sync_hooks(svc.family)

    def clear(self) -> None:
        self.services.clear()
        self.changed()
        self._sync_hooks()

    def add_dest(self, svc: VirtualService, dest: Dest) -> None:
        if svc.find(dest.addr, dest.port):
            raise IpvsError("Destination already exists")
        svc.dests.append(dest)
        assert svc.scheduler is not None
        svc.scheduler.update()

    def add_dests(self, svc: VirtualService, dests: list[Dest]) -> None:
        """Several ``add_dest`` at once (a proxier's sync adds thousands): all or none, one scheduler update."""
        have = {(d.addr, d.port) for d in svc.dests}
        for d in dests:
            if (d.addr, d.port) in have:
                raise IpvsError("Destination already exists")
            have.add((d.addr, d.port))
        svc.dests.extend(dests)
        assert svc.scheduler is not None
        svc.scheduler.update()

    def del_dest(self, svc: VirtualService, addr: int, port: int) -> None:
        d = svc.find(addr, port)
        if d is None:
            raise IpvsError("No such destination")
        svc.dests.remove(d)
        d.available = False
        self.changed()
        assert svc.scheduler is not None
        svc.scheduler.update()

    # ---- the packet path ------------------------------------------------------------------------
    def attach(self, node: Node) -> None:
        self.node = node
        self._hooked: set[int] = set()
        self._sync_hooks()

    def _sync_hooks(self, changed: int | None = None) -> None:
        """Hooked into a family only while it has virtual services, as ip_vs_add_service registers
        the hooks with the family's first service and the last one's removal unregisters them.
        ``changed``: only that family's services changed (one added or removed)."""
        if self.node is None:
            return
        hooks = self.node.hooks
        for fam in (4, 6) if changed is None else (changed,):
            want = any(s.family == fam for s in self.services.values())
            if want and fam not in self._hooked:
                hooks.register(fam, INPUT, PRI_IPVS_LOCAL_IN, "ipvs:request", self.local_in)
                hooks.register(fam, OUTPUT, PRI_IPVS_LOCAL_OUT, "ipvs:local-request", self.local_out)
                hooks.register(fam, FORWARD, PRI_IPVS_FORWARD_REPLY, "ipvs:reply", self.forward_reply)
                hooks.register(fam, INPUT, PRI_IPVS_REPLY_LOCAL_IN, "ipvs:local-reply", self.forward_reply)
                self._hooked.add(fam)
            elif not want and fam in self._hooked:
                hooks.unregister(fam, INPUT, "ipvs:request")
                hooks.unregister(fam, OUTPUT, "ipvs:local-request")
                hooks.unregister(fam, FORWARD, "ipvs:reply")
                hooks.unregister(fam, INPUT, "ipvs:local-reply")
                self._hooked.discard(fam)

    def _service_for(self, pkt: Packet) -> VirtualService | None:
        if pkt.mark and (pkt.mark, 0, 0, 0) in self.services:
            return self.services[(pkt.mark, 0, 0, 0)]
        return self.services.get((0, pkt.proto, pkt.dst, pkt.dport))

    def _expire(self, now: float) -> None:
        for c in list(self.conns_in.values()):
            if c.expires <= now:
                self._drop_conn(c)

    def _drop_conn(self, c: IpvsConn) -> None:
        self.conn_changes += 1
        self.conns_in.pop((c.proto, c.caddr, c.cport, c.vaddr, c.vport), None)
        self.conns_out.pop((c.proto, c.dest.addr, c.dest.port, c.caddr, c.cport), None)
        if c.active:
            c.dest.activeconns -= 1
        else:
            c.dest.inactconns -= 1
        c.dest.update_overload()

    def _set_state(self, c: IpvsConn, pkt: Packet, now: float) -> None:
        """The connection's state after ``pkt`` and its new expiry; the active/inactive counts of its
        destination follow a change (most packets of a connection change nothing but the expiry)."""
        old = c.state
        if pkt.proto == TCP:
            f = pkt.tcp_flags
            if f & 0x17 == 0x10 and old == "ESTABLISHED":      # an ACK of an established connection
                c.expires = now + self.timeouts["tcp"]
                return
            if f & 0x04:
                new = "CLOSE"
            elif f & 0x01:
                new = "FIN_WAIT"
            elif f & 0x02 and not f & 0x10:
                new = "SYN_RECV"
            elif f & 0x10:
                new = "ESTABLISHED"
            else:
                new = old
            if new == "ESTABLISHED":
                c.expires = now + self.timeouts["tcp"]
            elif new == "FIN_WAIT":
                c.expires = now + self.timeouts["tcpfin"]
            else:
                c.expires = now + TCP_TIMEOUTS.get(new, 60)
        else:
            new = "UDP"
            c.expires = now + self.timeouts["udp"]
        if new != old:
            was_active = c.active
            c.state = new
            if was_active != c.active:
                c.dest.activeconns += 1 if c.active else -1
                c.dest.inactconns += -1 if c.active else 1

    def local_in(self, pkt: Packet, state: HookState) -> int:
        """ip_vs_remote_request4: schedule (or find) the connection, rewrite, send it on."""
        if not self.services or pkt.proto not in (TCP, UDP, 132):
            return NF_ACCEPT
        now = state.now
        key = (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        c = self.conns_in.get(key)
        if state.trace is not None:
            state.trace.note_lookup(self.conns_in, key, c)
        if c is not None and c.expires <= now:
            self._drop_conn(c)            # expired: the next packet starts over (entries expire lazily)
            c = None
        if c is not None and not c.dest.available:
            # ip_vs_in: the connection's destination is gone: the packet is dropped silently, and with
            # net.ipv4.vs.expire_nodest_conn the connection expires now (the next packet is scheduled).
            if state.node.sysctls.get("net.ipv4.vs.expire_nodest_conn", "0") == "1":
                self._drop_conn(c)
            return NF_DROP
        if c is None:
            svc = self._service_for(pkt)
            if svc is None:
                return NF_ACCEPT
            if pkt.proto == TCP and not pkt.tcp_flags & 0x02:
                return NF_ACCEPT          # only a SYN starts a TCP connection
            dest = self._pick(svc, pkt, now)
            if dest is None:
                # ip_vs_leave: the client is told at once (ICMP port unreachable), the packet is dropped.
                if state.trace is not None:
                    state.trace.add("ipvs", hook=state.hook, text=f"IPVS: {svc.text()}: no destination available")
                state.rejected_with = "icmp-port-unreachable"
                return NF_DROP
            c = IpvsConn(pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport, dest, svc, "NONE", now)
            dest.inactconns += 1
            dest.counters["conns"] += 1
            svc.counters["conns"] += 1
            self.conns_in[key] = c
            self.conns_out[(pkt.proto, dest.addr, dest.port, pkt.src, pkt.sport)] = c
            self.conn_changes += 1
            dest.update_overload()
            if state.trace is not None:
                state.trace.add("ipvs", hook=state.hook, text=f"IPVS: {svc.text().replace('  ', ' ')} -> "
                                f"{dest.text()} ({svc.scheduler_name}, {FWD[dest.fwd]})")
        self.count_in(c, pkt, now)
        dest = c.dest
        fwd = dest.fwd
        if fwd == "local":
            return NF_ACCEPT
        if fwd == "masq":
            ct = pkt.ct
            if ct is not None and ct.reply.src != dest.addr:
                ct.reply = Tuple(pkt.family, pkt.proto, dest.addr, pkt.src, dest.port, pkt.sport)
            pkt.dst, pkt.dport = dest.addr, dest.port
        # Masquerading re-routes by the rewritten destination; direct routing and tunnelling send the
        # unchanged packet towards the real server (its MAC, or inside an IPIP header).
        meta = pkt.meta
        meta["ipvs_conn"] = c          # skb->ipvs_property, and the connection xt_ipvs looks up
        meta["reinjected"] = reinject_local_out(state.node, pkt, state.trace, None if fwd == "masq" else dest.addr)
        meta["stolen_by"] = "IPVS"
        return NF_STOLEN

    def count_in(self, c: IpvsConn, pkt: Packet, now: float, pending: list[Any] | None = None) -> None:
        """A packet of the client's: the connection's state and expiry, and the in-counters of its real
        server and service, or, for a replay, its ``PENDING`` entry (added when they are read)."""
        self._set_state(c, pkt, now)
        length = pkt.length
        if pending is not None:
            if not pending[2]:
                PENDING.append(pending)
            pending[2] += 1
            pending[3] += length
            return
        dest, svc = c.dest.counters, c.svc.counters
        dest["inpkts"] += 1
        dest["inbytes"] += length
        svc["inpkts"] += 1
        svc["inbytes"] += length

    def replay_in(self, c: IpvsConn, pkt: Packet, now: float, pending: list[Any]) -> None:
        """``count_in`` with a ``PENDING`` entry (a replay), an established connection's ACK taken
        without further calls."""
        if pkt.proto == TCP and pkt.tcp_flags & 0x17 == 0x10 and c.state == "ESTABLISHED":
            c.expires = now + self.timeouts["tcp"]
        else:
            self._set_state(c, pkt, now)
        if not pending[2]:
            PENDING.append(pending)
        pending[2] += 1
        pending[3] += pkt.length

    def count_out(self, c: IpvsConn, pkt: Packet, now: float) -> None:
        """A real server's answer: a FIN or RST moves the connection's state; the out-counters."""
        if pkt.proto == TCP and pkt.tcp_flags & 0x05:
            self._set_state(c, pkt, now)
        counters = c.dest.counters
        counters["outpkts"] += 1
        counters["outbytes"] += pkt.length

    def local_out(self, pkt: Packet, state: HookState) -> int:
        """ip_vs_local_request4: a local process's connection to a virtual service, scheduled before
        the filter table's OUTPUT rules (a packet IPVS already sent on is not taken again)."""
        if "ipvs_conn" in pkt.meta:
            return NF_ACCEPT
        return self.local_in(pkt, state)

    def _pick(self, svc: VirtualService, pkt: Packet, now: float) -> Dest | None:
        if svc.persistent:
            tkey = (id(svc), pkt.src & svc.netmask, 0)
            t = self.templates.get(tkey)
            if t is not None and t.expires > now and t.dest in svc.dests and t.dest.weight > 0:
                t.expires = now + svc.persistent
                return t.dest
        assert svc.scheduler is not None
        dest = svc.scheduler.schedule(pkt)
        if dest is not None and svc.persistent:
            self.templates[(id(svc), pkt.src & svc.netmask, 0)] = IpvsConn(
                pkt.proto, pkt.src & svc.netmask, 0, pkt.dst, pkt.dport, dest, svc, "NONE", now + svc.persistent, True)
        return dest

    def forward_reply(self, pkt: Packet, state: HookState) -> int:
        """ip_vs_reply4: a real server's answer leaves with the virtual service's address."""
        if not self.conns_out:
            return NF_ACCEPT
        key = (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        c = self.conns_out.get(key)
        if state.trace is not None:
            state.trace.note_lookup(self.conns_out, key, c)
        if c is None or c.dest.fwd != "masq":
            return NF_ACCEPT
        self.count_out(c, pkt, state.now)
        pkt.src, pkt.sport = c.vaddr, c.vport
        if state.trace is not None and not state.trace.quiet:
            state.trace.add("ipvs", hook=state.hook, text=f"IPVS: reply from {c.dest.text()} as "
                            f"{format_addr(c.vaddr, pkt.family)}:{c.vport}")
        return NF_ACCEPT

    def connections(self, now: float) -> list[IpvsConn]:
        self._expire(now)
        return list(self.conns_in.values())

    # ---- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Everything the node's IPVS holds: services, destinations, their counters and rate estimators,
        the schedulers' positions, and the connection and persistence-template tables."""
        services = list(self.services.values())
        where = {id(d): (i, j) for i, s in enumerate(services) for j, d in enumerate(s.dests)}
        return {"services": [_service_json(s) for s in services],
                "timeouts": self.timeouts,
                "conns": [_conn_json(c, where) for c in self.conns_in.values() if id(c.dest) in where],
                "templates": [_conn_json(c, where) for c in self.templates.values() if id(c.dest) in where]}

    def from_json(self, data: dict[str, Any]) -> None:
        self.services.clear()
        self.conn_changes += 1
        self.conns_in.clear()
        self.conns_out.clear()
        self.templates.clear()
        services = [_service_from_json(s) for s in data.get("services", [])]
        for svc in services:
            self.services[svc.key()] = svc
        self.changed()
        self.timeouts.update(data.get("timeouts", {}))
        for item in data.get("conns", []):
            c = _conn_from_json(item, services)
            self.conns_in[(c.proto, c.caddr, c.cport, c.vaddr, c.vport)] = c
            self.conns_out[(c.proto, c.dest.addr, c.dest.port, c.caddr, c.cport)] = c
        for item in data.get("templates", []):
            c = _conn_from_json(item, services, template=True)
            self.templates[(id(c.svc), c.caddr, 0)] = c
        self._sync_hooks()


STAT_KEYS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
SCHED_INTS = ("last", "cw", "cl")      # round-robin positions: where the next pick starts


def _estimator_json(e: RateEstimator) -> list[Any]:
    return [[e.last[k] for k in STAT_KEYS], [e.avg[k] for k in STAT_KEYS], e.stamp]


def _estimator_from_json(data: list[Any] | None) -> RateEstimator:
    e = RateEstimator()
    if data:
        e.last, e.avg, e.stamp = dict(zip(STAT_KEYS, data[0])), dict(zip(STAT_KEYS, data[1])), float(data[2])
    return e


def _service_json(s: VirtualService) -> dict[str, Any]:
    index = {id(d): j for j, d in enumerate(s.dests)}
    sched = {k: getattr(s.scheduler, k) for k in SCHED_INTS if isinstance(getattr(s.scheduler, k, None), int)}
    table = getattr(s.scheduler, "table", None)
    if isinstance(table, dict):                                        # lblc: destination address -> server
        sched["table"] = [[a, index[id(d)]] for a, d in table.items() if id(d) in index]
    sets = getattr(s.scheduler, "sets", None)
    if isinstance(sets, dict):                                         # lblcr: destination address -> servers
        sched["sets"] = [[a, [index[id(d)] for d in ds if id(d) in index]] for a, ds in sets.items()]
    rng = getattr(s.scheduler, "rng", None)
    if rng is not None:                                                # twos: its random stream goes on
        sched["rng"] = rng.getstate()
    return {"proto": s.proto, "addr": s.addr, "port": s.port, "fwmark": s.fwmark, "family": s.family,
            "scheduler": s.scheduler_name, "persistent": s.persistent, "netmask": s.netmask,
            "flags": sorted(s.flags), "stats": s.stats, "est": _estimator_json(s.estimator), "sched": sched,
            "dests": [{"addr": d.addr, "port": d.port, "weight": d.weight, "fwd": d.fwd, "u": d.u_threshold,
                       "l": d.l_threshold, "active": d.activeconns, "inact": d.inactconns,
                       "persist": d.persistconns, "overloaded": d.overloaded, "stats": d.stats,
                       "est": _estimator_json(d.estimator)} for d in s.dests]}


def _service_from_json(s: dict[str, Any]) -> VirtualService:
    svc = VirtualService(s["proto"], s["addr"], s["port"], s["fwmark"], s["family"], s["scheduler"],
                         s["persistent"], s["netmask"], set(s["flags"]))
    svc.stats.update(s.get("stats") or {})
    svc.estimator = _estimator_from_json(s.get("est"))
    for d in s["dests"]:
        dest = Dest(d["addr"], d["port"], s["family"], d["weight"], d["fwd"], d["u"], d["l"],
                    d.get("active", 0), d.get("inact", 0), d.get("persist", 0))
        dest.overloaded = bool(d.get("overloaded", False))
        dest.stats.update(d.get("stats") or {})
        dest.estimator = _estimator_from_json(d.get("est"))
        svc.dests.append(dest)
    sched = svc.scheduler
    assert sched is not None
    sched.update()
    saved = s.get("sched") or {}
    for k in SCHED_INTS:
        if k in saved:
            setattr(sched, k, int(saved[k]))
    if "table" in saved:
        sched.table = {a: svc.dests[j] for a, j in saved["table"]}  # type: ignore[attr-defined]
    if "sets" in saved:
        sched.sets = {a: [svc.dests[j] for j in js] for a, js in saved["sets"]}  # type: ignore[attr-defined]
    if "rng" in saved:
        state = saved["rng"]
        sched.rng.setstate((state[0], tuple(state[1]), state[2]))  # type: ignore[attr-defined]
    return svc


def _conn_json(c: IpvsConn, where: dict[int, tuple[int, int]]) -> list[Any]:
    i, j = where[id(c.dest)]
    return [c.proto, c.caddr, c.cport, c.vaddr, c.vport, i, j, c.state, c.expires]


def _conn_from_json(item: list[Any], services: list[VirtualService], template: bool = False) -> IpvsConn:
    proto, caddr, cport, vaddr, vport, i, j, state, expires = item
    svc = services[i]
    return IpvsConn(proto, caddr, cport, vaddr, vport, svc.dests[j], svc, state, float(expires), template)


def parse_hostport(text: str) -> tuple[int, int, int]:
    """``10.0.0.1:80`` or ``[fd00::1]:80`` (port optional) into (family, address, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "0"
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, "0"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise IpvsError("Illegal virtual server address") from None
    if not port.isdigit() or int(port) > 65535:
        raise IpvsError("Illegal port number")
    return ip.version, int(ip), int(port)
