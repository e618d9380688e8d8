"""The emulated node: interfaces, addresses, routes and sysctls, and the subsystems hooked into it.

A node is what one network namespace is to the kernel. Its description (interfaces, routes,
sysctls) loads from YAML or JSON; its full state (plus rules, conntrack, sets, IPVS) persists to a
JSON file so that CLI calls compose like commands on a real host.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsIndex

from kproxy.netfilter import path as _path
from kproxy.netfilter.hooks import HookRegistry
from kproxy.packet import Packet, format_addr
from kproxy.versioned import Epoch, Sysctls

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.ipset.registry import IpsetRegistry
    from kproxy.iptables.state import IptablesState
    from kproxy.ipvs.ipvs import Ipvs
    from kproxy.netfilter.conntrack import Conntrack
    from kproxy.netfilter.nat import Nat
    from kproxy.netfilter.path import Result

DEFAULT_NODE_FILE = "kproxy-node.json"
FLOW_ROUTE_CACHE = 65536      # destinations (and blocks) whose routing decision is remembered


class NodeError(ValueError):
    """A node description that cannot be loaded: the message names the field."""


@dataclass
class Address:
    family: int
    addr: int
    prefixlen: int

    @property
    def network(self) -> int:
        bits = 32 if self.family == 4 else 128
        mask = ((1 << bits) - 1) ^ ((1 << (bits - self.prefixlen)) - 1)
        return self.addr & mask

    @property
    def broadcast(self) -> int | None:
        if self.family != 4 or self.prefixlen >= 31:
            return None
        return self.network | ((1 << (32 - self.prefixlen)) - 1)

    def __str__(self) -> str:
        return f"{format_addr(self.addr, self.family)}/{self.prefixlen}"

    @classmethod
    def parse(cls, text: str) -> Address:
        iface = ipaddress.ip_interface(text)
        return cls(iface.version, int(iface.ip), iface.network.prefixlen)


@dataclass
class Interface:
    name: str
    addresses: list[Address] = field(default_factory=list)
    mac: str = ""
    up: bool = True
    mtu: int = 1500

    def primary(self, family: int = 4) -> Address | None:
        for a in self.addresses:
            if a.family == family:
                return a
        return None


def _selectable(iface: Interface, family: int) -> list[Address]:
    """A device's primary addresses of universe scope, in order (the first of each subnet; no loopback)."""
    out: list[Address] = []
    for a in iface.addresses:
        if a.family != family or _host_scope(a):
            continue
        if any(b.prefixlen == a.prefixlen and b.network == a.network for b in out):
            continue        # IFA_F_SECONDARY: a second address in a subnet already present
        out.append(a)
    return out


def _host_scope(a: Address) -> bool:
    return a.addr >> 24 == 127 if a.family == 4 else a.addr == 1


@dataclass
class Route:
    """A route in the main table; ``type`` is unicast, local, blackhole, unreachable or prohibit."""

    family: int
    dst: int
    prefixlen: int
    dev: str = ""
    via: int | None = None
    src: int | None = None
    metric: int = 0
    type: str = "unicast"

    def contains(self, addr: int) -> bool:
        bits = 32 if self.family == 4 else 128
        return (addr >> (bits - self.prefixlen)) == (self.dst >> (bits - self.prefixlen)) if self.prefixlen else True

    def __str__(self) -> str:
        dst = "default" if self.prefixlen == 0 else f"{format_addr(self.dst, self.family)}/{self.prefixlen}"
        text = dst if self.type == "unicast" else f"{self.type} {dst}"
        if self.via is not None:
            text += f" via {format_addr(self.via, self.family)}"
        if self.dev:
            text += f" dev {self.dev}"
        if self.src is not None:
            text += f" src {format_addr(self.src, self.family)}"
        if self.metric:
            text += f" metric {self.metric}"
        return text


@dataclass
class RouteResult:
    """The routing decision: ``local`` delivery, ``unicast`` out of ``dev``, or a failure type."""

    type: str
    dev: str = ""
    gateway: int | None = None
    prefsrc: int | None = None
    gateway_text: str = ""


DEFAULT_SYSCTLS: dict[str, str] = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.route_localnet": "0",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.netfilter.nf_conntrack_max": "262144",
    "net.netfilter.nf_conntrack_tcp_be_liberal": "0",
    "net.netfilter.nf_conntrack_tcp_loose": "1",
    "net.netfilter.nf_conntrack_acct": "0",
}


class RouteList(list[Route]):
    """The main routing table; every change bumps ``version`` so cached routing decisions are dropped."""

    version = 0

    def _bump(self) -> None:
        self.version += 1
        Epoch.bump()

    def append(self, item: Route) -> None:
        super().append(item)
        self._bump()

    def extend(self, items: Iterable[Route]) -> None:
        super().extend(items)
        self._bump()

    def insert(self, i: SupportsIndex, item: Route) -> None:
        super().insert(i, item)
        self._bump()

    def remove(self, item: Route) -> None:
        super().remove(item)
        self._bump()

    def pop(self, i: SupportsIndex = -1) -> Route:
        self._bump()
        return super().pop(i)

    def clear(self) -> None:
        super().clear()
        self._bump()

    def __setitem__(self, i: Any, v: Any) -> None:
        super().__setitem__(i, v)
        self._bump()

    def __delitem__(self, i: Any) -> None:
        super().__delitem__(i)
        self._bump()


class Node:
    """One emulated host (a network namespace): its devices, routing, and netfilter state.

    It is what ``kproxy.netfilter.netns.NetNamespace`` names, plus the front ends' state."""

    conntrack: Conntrack
    nat: Nat
    iptables: dict[int, IptablesState]
    ipsets: IpsetRegistry
    ipvs: Ipvs

    def __init__(self, name: str = "node") -> None:
        self.name = name
        self.interfaces: dict[str, Interface] = {}
        self.routes: RouteList = RouteList()
        self._result_cache: dict[int, tuple[Route, RouteResult]] = {}
        # Per family: (decisions by block, the block's shift, decisions by destination); see route_for_flow.
        self._flow: dict[int, tuple[dict[int, RouteResult], int, dict[int, RouteResult]]] = {}
        self._flow_routes_version: tuple[int, int, int] | None = None
        self._iface_version = 0
        self.sysctls: dict[str, str] = Sysctls(DEFAULT_SYSCTLS)
        self.hooks = HookRegistry()
        self._local: dict[int, set[int]] = {4: set(), 6: set()}
        self._broadcast: dict[int, set[int]] = {4: set(), 6: set()}
        # conntrack, nat, iptables (per family), ipsets and ipvs are wired by kproxy.subsystems.attach.
        self.nftables: Any = None  # kproxy.nftables.model.Ruleset, created by the first ``kproxy nft``
        self.subsystems: dict[str, Any] = {}
        self.clock: float | None = None  # fixed time for reproducible runs; None = wall clock
        self.log_lines: list[str] = []
        self.origin: dict[str, Any] = {}   # where a captured node came from (tools, files, iptables variant)
        self.add_interface(Interface("lo", [Address.parse("127.0.0.1/8"), Address.parse("::1/128")]))
        from kproxy.subsystems import attach

        attach(self)
        from kproxy.flowcache import FlowCache

        self.flows: FlowCache | None = FlowCache(self)

    # ---- time -------------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock if self.clock is not None else time.time()

    # ---- devices and addresses --------------------------------------------------------------
    def add_interface(self, iface: Interface) -> Interface:
        self.interfaces[iface.name] = iface
        self._reindex()
        return iface

    def _reindex(self) -> None:
        self._iface_version = getattr(self, "_iface_version", 0) + 1
        Epoch.bump()
        self._local = {4: set(), 6: set()}
        self._broadcast = {4: set(), 6: set()}
        for iface in self.interfaces.values():
            for a in iface.addresses:
                self._local[a.family].add(a.addr)
                b = a.broadcast
                if b is not None:
                    self._broadcast[4].add(b)
                    self._broadcast[4].add(a.network)
        self._broadcast[4].add(0xFFFFFFFF)

    def is_local(self, family: int, addr: int) -> bool:
        """True when ``addr`` is one of this node's addresses (or loopback range), as the local table says."""
        if addr in self._local[family]:
            return True
        if family == 4:
            return (addr >> 24) == 127
        return False

    def addr_type(self, family: int, addr: int, dev: str | None = None) -> str:
        """The route type of ``addr`` as ``addrtype`` sees it: LOCAL, BROADCAST, MULTICAST, UNICAST, ...

        With ``dev``, only routes through that device count (``--limit-iface-in/out``).
        """
        if family == 4:
            if addr == 0:
                return "UNSPEC"
            if (addr >> 28) == 0xE:
                return "MULTICAST"
            if dev is not None:
                iface = self.interfaces.get(dev)
                if iface is None:
                    return "UNICAST"
                if any(a.addr == addr for a in iface.addresses) or (dev == "lo" and (addr >> 24) == 127):
                    return "LOCAL"
                if any(a.broadcast == addr for a in iface.addresses) or addr == 0xFFFFFFFF:
                    return "BROADCAST"
                return "UNICAST"
            if self.is_local(4, addr):
                return "LOCAL"
            if addr in self._broadcast[4]:
                return "BROADCAST"
        else:
            if addr == 0:
                return "UNSPEC"
            if (addr >> 120) == 0xFF:
                return "MULTICAST"
            if self.is_local(6, addr) and (dev is None or any(a.addr == addr for a in self.interfaces.get(dev, Interface("")).addresses)):
                return "LOCAL"
        res = self.route(family, addr)
        if res.type in ("blackhole", "unreachable", "prohibit"):
            return res.type.upper()
        return "UNICAST"

    def primary_address(self, dev: str, family: int = 4) -> int | None:
        """The address MASQUERADE/REDIRECT pick on ``dev`` (its first address of the family)."""
        iface = self.interfaces.get(dev)
        if iface is None:
            return None
        a = iface.primary(family)
        return a.addr if a else None

    def source_address_for(self, family: int, dev: str, dst: int | None) -> int | None:
        """inet_select_addr: a primary address of ``dev`` on the destination's subnet, else its first
        one, else the first primary address of any device (loopback first). Host-scope addresses
        (127.0.0.0/8, ::1) never qualify, so traffic leaving through lo borrows another device's."""
        iface = self.interfaces.get(dev)
        own = _selectable(iface, family) if iface is not None else []
        for a in own:
            if dst is None or Route(family, a.network, a.prefixlen).contains(dst):
                return a.addr
        if own:
            return own[0].addr
        for other in self.interfaces.values():
            for a in _selectable(other, family):
                return a.addr
        return None

    # ---- routing ----------------------------------------------------------------------------
    def connected_routes(self) -> list[Route]:
        out = []
        for iface in self.interfaces.values():
            if not iface.up or iface.name == "lo":
                continue
            for a in iface.addresses:
                out.append(Route(a.family, a.network, a.prefixlen, dev=iface.name, src=a.addr, type="unicast"))
        return out

    def route(self, family: int, dst: int, src: int | None = None, oif: str | None = None) -> RouteResult:
        """Longest-prefix match: the local table first, then the main table (connected + configured)."""
        return self._route(family, dst, oif)

    def routing_version(self) -> tuple[int, int, int]:
        """Changes whenever a routing decision could change (routes, interfaces, addresses)."""
        return (self.routes.version, self._iface_version, len(self.interfaces))

    def route_for_flow(self, pkt: Packet) -> RouteResult:
        """``route`` for a packet, remembered (as the kernel's dst cache remembers a flow's route) until the
        routes, devices or addresses change: per block of the table's longest prefix when every address of
        the block takes the same decision, else per destination."""
        version = (self.routes.version, self._iface_version, len(self.interfaces))   # routing_version(), per packet
        if version != self._flow_routes_version:
            self._flow_reset(version)
        blocks, shift, dests = self._flow[pkt.family]
        dst = pkt.dst
        res = blocks.get(dst >> shift)
        if res is None:
            res = dests.get(dst)
            if res is None:
                res = self._flow_route(pkt.family, dst)
        return res

    def _flow_reset(self, version: tuple[int, int, int]) -> None:
        """Forget every remembered decision; a block is the addresses that agree on the bits of the
        longest prefix the main table has."""
        fib = self._fib()
        self._flow = {fam: ({}, (32 if fam == 4 else 128) - (fib[fam][0][0].bit_count() if fib[fam] else 0), {})
                      for fam in (4, 6)}
        self._flow_routes_version = version

    def _flow_route(self, family: int, dst: int) -> RouteResult:
        """A destination's first routing decision, remembered. No route is longer than the table's longest
        prefix, so every non-local address of a block of that length matches the same route: the decision
        is kept for the whole block when it holds no local address (the common case: one entry for the
        thousands of endpoints of a pod subnet), else for this destination alone, as it is when the
        decision chose a source address for that destination."""
        blocks, shift, dests = self._flow[family]
        if len(dests) >= FLOW_ROUTE_CACHE:
            dests.clear()
        if self.is_local(family, dst):
            res = dests[dst] = self._route(family, dst)
            return res
        res, shared = self._decide(family, dst)
        if not shared:
            dests[dst] = res
        elif self._block_clean(family, dst >> shift, shift):
            if len(blocks) >= FLOW_ROUTE_CACHE:
                blocks.clear()
            blocks[dst >> shift] = res
        else:
            dests[dst] = res
        return res

    def _block_clean(self, family: int, key: int, shift: int) -> bool:
        """No address of the block ``key`` is local (is_local: the node's addresses and 127.0.0.0/8)."""
        if any(a >> shift == key for a in self._local[family]):
            return False
        if family == 4:
            lo, hi = key << shift, ((key + 1) << shift) - 1
            return hi < 0x7F000000 or lo > 0x7FFFFFFF
        return True

    def _fib(self) -> dict[int, list[tuple[int, dict[int, Route]]]]:
        """The main table per family: (mask, {network: route}) by prefix length, longest first.

        Longest-prefix match is then one dict lookup per distinct prefix length, however many
        routes there are (a node with thousands of pod or Service routes).
        """
        key = self.routing_version()
        if getattr(self, "_fib_key", None) != key:
            by_len: dict[tuple[int, int], dict[int, Route]] = {}
            for r in self.connected_routes() + list(self.routes):
                bits = 32 if r.family == 4 else 128
                mask = ((1 << bits) - 1) ^ ((1 << (bits - r.prefixlen)) - 1)
                table = by_len.setdefault((r.family, r.prefixlen), {})
                net = r.dst & mask
                if net not in table or r.metric < table[net].metric:
                    table[net] = r
            fib: dict[int, list[tuple[int, dict[int, Route]]]] = {4: [], 6: []}
            for (fam, plen), table in sorted(by_len.items(), key=lambda kv: -kv[0][1]):
                bits = 32 if fam == 4 else 128
                fib[fam].append((((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1), table))
            self._fib_cache = fib
            self._fib_key = key
            self._result_cache = {}
        return self._fib_cache

    def _route(self, family: int, dst: int, oif: str | None = None) -> RouteResult:
        """Longest-prefix match: the local table first, then the main table (connected + configured)."""
        if self.is_local(family, dst):
            return RouteResult("local", dev="lo", prefsrc=dst)
        return self._decide(family, dst, oif)[0]

    def _decide(self, family: int, dst: int, oif: str | None = None) -> tuple[RouteResult, bool]:
        """The main table's decision for a non-local ``dst``, and whether it is the matched route's alone
        (False: the source address was chosen for this destination)."""
        best: Route | None = None
        for mask, table in self._fib()[family]:
            r = table.get(dst & mask)
            if r is not None and not (oif and r.dev and r.dev != oif):
                best = r
                break
        if best is None:
            return RouteResult("unreachable"), True
        if best.type != "unicast":
            return RouteResult(best.type, dev=best.dev), True
        # The decision depends on the route alone unless the source address has to be chosen among
        # several on the device: then it is computed for this destination.
        hit = self._result_cache.get(id(best))
        if hit is not None and hit[0] is best:
            return hit[1], True
        prefsrc = best.src if best.src is not None else self.source_address_for(family, best.dev, dst)
        gw_text = format_addr(best.via, family) if best.via is not None else ""
        res = RouteResult("unicast", dev=best.dev, gateway=best.via, prefsrc=prefsrc, gateway_text=gw_text)
        iface = self.interfaces.get(best.dev)
        if best.src is not None or iface is None or sum(1 for a in iface.addresses if a.family == family) <= 1:
            self._result_cache[id(best)] = (best, res)
            return res, True
        return res, False

    @property
    def ip_forward(self) -> bool:
        return self.sysctls.get("net.ipv4.ip_forward", "0") == "1"

    # ---- the library API: rules in, packets through ---------------------------------------
    def receive(self, pkt: Packet, iif: str, trace: bool = False) -> Result:
        """Inject ``pkt`` as if it arrived on ``iif``; returns a ``path.Result`` (with a trace if asked)."""
        if trace:
            from kproxy.netfilter.trace import Trace

            return _path.receive(self, pkt, iif, Trace())
        flows = self.flows          # path.receive, a call less for a replayed packet
        if flows is not None and flows.enabled and iif in self.interfaces:
            res = flows.receive(pkt, iif)
            if res is not None:
                return res
        return _path.receive_path(self, pkt, iif, None)

    def send(self, pkt: Packet, trace: bool = False) -> Result:
        """Send ``pkt`` from a local process (the OUTPUT path); returns a ``path.Result``."""
        from kproxy.netfilter.trace import Trace

        return _path.output(self, pkt, Trace() if trace else None)

    def iptables_restore(self, text: str, family: int = 4, noflush: bool = False, counters: bool = False,
                         prepared: Any = None, verify_prepared: bool = False) -> None:
        """Load ``iptables-restore`` input atomically (raises RestoreError and changes nothing on error).

        ``prepared`` gives rules already built for runs of ``-A`` lines; see ``kproxy.iptables.restore.restore``."""
        from kproxy.iptables.restore import restore

        restore(text, self.iptables[family], noflush=noflush, counters=counters, node=self, prepared=prepared,
                verify_prepared=verify_prepared)

    def iptables_save(self, family: int = 4, counters: bool = False, tables: list[str] | None = None) -> str:
        from kproxy.iptables.save import save

        return save(self.iptables[family], tables=tables, counters=counters)

    def iptables_cmd(self, argv: list[str], family: int = 4) -> tuple[int, str, str]:
        """Run one ``iptables`` command line (without the program name): (exit code, stdout, stderr)."""
        from kproxy.iptables.commands import run_iptables

        return run_iptables(argv, self.iptables[family], family, node=self)

    # ---- description ------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "interfaces": [
                {"name": i.name, "addresses": [str(a) for a in i.addresses], "mac": i.mac, "up": i.up, "mtu": i.mtu}
                for i in self.interfaces.values()
            ],
            "routes": [str(r) for r in self.routes],
            "sysctls": dict(self.sysctls),
            **({"iptables": "legacy"} if self.iptables_variant() == "legacy" else {}),
            **({"origin": self.origin} if self.origin else {}),
        }

    def iptables_variant(self) -> str:
        """``nft`` (iptables-nft, whose tables nft lists) or ``legacy`` (x_tables, apart from nf_tables)."""
        from kproxy.nftables.xtlayout import node_layout

        return node_layout(self).variant

    @classmethod
    def from_description(cls, desc: dict[str, Any], source: str = "<node>") -> Node:
        """Build a node from ``{name, interfaces: [{name, addresses, mac}], routes: [...], sysctls, iptables}``
        (``iptables: legacy`` for a node whose iptables is iptables-legacy)."""
        if not isinstance(desc, dict):
            raise NodeError(f"{source}: a node description must be a mapping")
        node = cls(str(desc.get("name", "node")))
        for i, item in enumerate(_listed(desc.get("interfaces"), f"{source}: interfaces")):
            where = f"{source}: interfaces[{i}]"
            if not isinstance(item, dict) or "name" not in item:
                raise NodeError(f"{where}: needs a name")
            try:
                addrs = [Address.parse(str(a)) for a in _listed(item.get("addresses"), f"{where}.addresses")]
            except ValueError as exc:
                raise NodeError(f"{where}.addresses: {exc}") from None
            try:
                mtu = int(item.get("mtu", 1500))
            except (ValueError, TypeError):
                raise NodeError(f"{where}.mtu: not a number") from None
            if item["name"] == "lo":
                node.interfaces["lo"].addresses = addrs or node.interfaces["lo"].addresses
                continue
            node.add_interface(Interface(str(item["name"]), addrs, str(item.get("mac", "")),
                                         bool(item.get("up", True)), mtu))
        for i, text in enumerate(_listed(desc.get("routes"), f"{source}: routes")):
            try:
                node.routes.append(parse_route(str(text)))
            except ValueError as exc:
                raise NodeError(f"{source}: routes[{i}]: {exc}") from None
        sysctls = desc.get("sysctls") or {}
        if not isinstance(sysctls, dict):
            raise NodeError(f"{source}: sysctls: must be a mapping")
        for k, v in sysctls.items():
            node.sysctls[str(k)] = str(v)
        variant = desc.get("iptables", "nft")
        if variant not in ("nft", "legacy"):
            raise NodeError(f"{source}: iptables: {variant!r} is neither nft nor legacy")
        from kproxy.nftables.xtlayout import node_layout

        node_layout(node).variant = variant     # legacy: nft lists none of the iptables tables
        origin = desc.get("origin")
        node.origin = dict(origin) if isinstance(origin, dict) else {}
        node._reindex()
        for r in node.routes:
            if r.dev and r.dev not in node.interfaces:
                raise NodeError(f"{source}: route \"{r}\": no interface {r.dev}")
        return node

    @classmethod
    def default(cls) -> Node:
        """lo, and eth0 with 192.168.1.10/24 and a default route via 192.168.1.1."""
        return cls.from_description({
            "name": "node",
            "interfaces": [{"name": "eth0", "addresses": ["192.168.1.10/24"], "mac": "52:54:00:12:34:56"}],
            "routes": ["default via 192.168.1.1 dev eth0"],
        })

    @classmethod
    def load_description(cls, path: str | os.PathLike[str]) -> Node:
        import yaml  # (only here: every command imports this module)

        text = Path(path).read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            raise NodeError(f"{where}: {getattr(exc, 'problem', exc)}") from None
        return cls.from_description(data, str(path))


def _listed(value: Any, where: str) -> list[Any]:
    """A description's list (absent: empty); anything else is the description's error, not a crash."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise NodeError(f"{where}: must be a list")
    return value


def parse_route(text: str) -> Route:
    """``default via 192.168.1.1 dev eth0``, ``10.244.1.0/24 dev cbr0 src 10.244.1.1``, ``blackhole 10.0.0.0/8``."""
    words = text.split()
    rtype = "unicast"
    if words and words[0] in ("blackhole", "unreachable", "prohibit", "local", "unicast"):
        rtype = words.pop(0)
    if not words:
        raise ValueError("no destination")
    dst = words.pop(0)
    if dst == "default":
        net = ipaddress.ip_network("0.0.0.0/0")
    else:
        net = ipaddress.ip_network(dst, strict=False)
    r = Route(net.version, int(net.network_address), net.prefixlen, type=rtype)
    while words:
        key = words.pop(0)
        if not words:
            raise ValueError(f"\"{key}\" needs a value")
        val = words.pop(0)
        if key == "via":
            r.via = int(ipaddress.ip_address(val))
        elif key == "dev":
            r.dev = val
        elif key == "src":
            r.src = int(ipaddress.ip_address(val))
        elif key == "metric":
            r.metric = int(val)
        else:
            raise ValueError(f"unknown route keyword \"{key}\"")
    return r


def node_file(path: str | None = None) -> Path:
    """Where the CLI keeps node state: ``--node``, else ``$KPROXY_NODE``, else ./kproxy-node.json."""
    return Path(path or os.environ.get("KPROXY_NODE") or DEFAULT_NODE_FILE)


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=False)
