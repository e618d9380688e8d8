"""The IPVS proxier: Services and EndpointSlices into upstream kube-proxy's IPVS mode.

As upstream's ``pkg/proxy/ipvs``: every ClusterIP, external IP and load-balancer IP is bound to the
``kube-ipvs0`` dummy device (so the node accepts it as local) and gets one IPVS virtual server per
service port, as does each node address for a NodePort; real servers are the endpoints, weight 1,
masquerading. The iptables part is small and fixed: a few chains that match upstream's ipsets
(KUBE-CLUSTER-IP, KUBE-LOOP-BACK, KUBE-NODE-PORT-TCP, ...) for masquerading and filtering, so its
size does not grow with the number of Services; the sets do.

A partial sync recomputes only the Services that changed and touches only their virtual servers,
real servers, set members and addresses; the iptables rules are restored only when they changed
(they depend on which sets are empty, and on load balancers closed to the node). Removed real
servers are terminated gracefully (``kproxy.proxy.gracefultermination``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kproxy.k8s.manifests import Objects
from kproxy.proxy.changes import ChangeTracker
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.gracefultermination import GracefulTermination, unique_name
from kproxy.proxy.localdetect import LocalDetector
from kproxy.proxy.proxier import ModeUnavailable, SyncResult, gc_paused
from kproxy.proxy.serviceports import EndpointInfo, ServicePortInfo, categorize
from kproxy.proxy.virtualserver import RealServer, VirtualServer

log = logging.getLogger("kproxy.proxy")

DUMMY_DEVICE = "kube-ipvs0"
DEFAULT_SCHEDULER = "rr"

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_SOURCE_RANGES_FIREWALL = "KUBE-SOURCE-RANGES-FIREWALL"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_NODE_PORT = "KUBE-NODE-PORT"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_LOAD_BALANCER = "KUBE-LOAD-BALANCER"
KUBE_IPVS_FILTER = "KUBE-IPVS-FILTER"
KUBE_IPVS_OUT_FILTER = "KUBE-IPVS-OUT-FILTER"

# The chains, in upstream's order (iptablesChains), and the jumps to them (iptablesJumpChain),
# each ensured with a prepend, in this order.
CHAINS = [("nat", KUBE_SERVICES), ("nat", KUBE_POSTROUTING), ("nat", KUBE_NODE_PORT), ("nat", KUBE_LOAD_BALANCER),
          ("nat", KUBE_MARK_MASQ), ("filter", KUBE_FORWARD), ("filter", KUBE_NODE_PORT),
          ("filter", KUBE_PROXY_FIREWALL), ("filter", KUBE_SOURCE_RANGES_FIREWALL), ("filter", KUBE_IPVS_FILTER),
          ("filter", KUBE_IPVS_OUT_FILTER)]
JUMPS = [("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
         ("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
         ("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
         ("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
         ("filter", "INPUT", KUBE_NODE_PORT, "kubernetes health check rules"),
         ("filter", "INPUT", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
         ("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
         ("filter", "INPUT", KUBE_IPVS_FILTER, "kubernetes ipvs access filter"),
         ("filter", "OUTPUT", KUBE_IPVS_OUT_FILTER, "kubernetes ipvs access filter")]

LOOP_BACK = "KUBE-LOOP-BACK"
CLUSTER_IP = "KUBE-CLUSTER-IP"
EXTERNAL_IP = "KUBE-EXTERNAL-IP"
EXTERNAL_IP_LOCAL = "KUBE-EXTERNAL-IP-LOCAL"
LOAD_BALANCER = "KUBE-LOAD-BALANCER"
LOAD_BALANCER_FW = "KUBE-LOAD-BALANCER-FW"
LOAD_BALANCER_LOCAL = "KUBE-LOAD-BALANCER-LOCAL"
LOAD_BALANCER_SOURCE_IP = "KUBE-LOAD-BALANCER-SOURCE-IP"
LOAD_BALANCER_SOURCE_CIDR = "KUBE-LOAD-BALANCER-SOURCE-CIDR"
NODE_PORT_TCP = "KUBE-NODE-PORT-TCP"
NODE_PORT_LOCAL_TCP = "KUBE-NODE-PORT-LOCAL-TCP"
NODE_PORT_UDP = "KUBE-NODE-PORT-UDP"
NODE_PORT_LOCAL_UDP = "KUBE-NODE-PORT-LOCAL-UDP"
NODE_PORT_SCTP = "KUBE-NODE-PORT-SCTP-HASH"
NODE_PORT_LOCAL_SCTP = "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
HEALTH_CHECK_NODE_PORT = "KUBE-HEALTH-CHECK-NODE-PORT"
IPVS_IPS = "KUBE-IPVS-IPS"

# Upstream's ipsets (ipsetInfo): name, type, and the comment of the rules that match it.
IPSETS: list[tuple[str, str, str]] = [
    (LOOP_BACK, "hash:ip,port,ip", "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    (CLUSTER_IP, "hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose"),
    (EXTERNAL_IP, "hash:ip,port", "Kubernetes service external ip + port for masquerade and filter purpose"),
    (EXTERNAL_IP_LOCAL, "hash:ip,port", "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    (LOAD_BALANCER, "hash:ip,port", "Kubernetes service lb portal"),
    (LOAD_BALANCER_FW, "hash:ip,port",
     "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    (LOAD_BALANCER_LOCAL, "hash:ip,port",
     "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    (LOAD_BALANCER_SOURCE_IP, "hash:ip,port,ip",
     "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
    (LOAD_BALANCER_SOURCE_CIDR, "hash:ip,port,net",
     "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"),
    (NODE_PORT_TCP, "bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"),
    (NODE_PORT_LOCAL_TCP, "bitmap:port", "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    (NODE_PORT_UDP, "bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"),
    (NODE_PORT_LOCAL_UDP, "bitmap:port", "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    (NODE_PORT_SCTP, "hash:ip,port", "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"),
    (NODE_PORT_LOCAL_SCTP, "hash:ip,port",
     "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"),
    (HEALTH_CHECK_NODE_PORT, "bitmap:port", "Kubernetes health check node port"),
    (IPVS_IPS, "hash:ip", "Addresses on the ipvs interface"),
]
IPSET_TYPES = {name: typ for name, typ, _ in IPSETS}
IPSET_COMMENTS = {name: comment for name, _, comment in IPSETS}

# Sets matched by one rule each (ipsetWithIptablesChain): set, table, chain, target, match, protocol.
# The -LOCAL node-port sets come before the others: their RETURN must win.
SET_RULES = [
    (LOOP_BACK, "nat", KUBE_POSTROUTING, "MASQUERADE", "dst,dst,src", ""),
    (LOAD_BALANCER, "nat", KUBE_SERVICES, KUBE_LOAD_BALANCER, "dst,dst", ""),
    (LOAD_BALANCER_LOCAL, "nat", KUBE_LOAD_BALANCER, "RETURN", "dst,dst", ""),
    (NODE_PORT_LOCAL_TCP, "nat", KUBE_NODE_PORT, "RETURN", "dst", "tcp"),
    (NODE_PORT_TCP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "tcp"),
    (NODE_PORT_LOCAL_UDP, "nat", KUBE_NODE_PORT, "RETURN", "dst", "udp"),
    (NODE_PORT_UDP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "udp"),
    (NODE_PORT_LOCAL_SCTP, "nat", KUBE_NODE_PORT, "RETURN", "dst,dst", "sctp"),
    (NODE_PORT_SCTP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst,dst", "sctp"),
    (LOAD_BALANCER_FW, "filter", KUBE_PROXY_FIREWALL, KUBE_SOURCE_RANGES_FIREWALL, "dst,dst", ""),
    (LOAD_BALANCER_SOURCE_CIDR, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", ""),
    (LOAD_BALANCER_SOURCE_IP, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", ""),
]

# Connection reuse (conn_reuse_mode) needs no change from this kernel version on (kubernetes#93297).
CONN_REUSE_FIXED = (5, 9)
CONN_REUSE_MIN = (4, 1)


def set_name(name: str, family: int) -> str:
    """IPv6 sets are ``KUBE-6-...``, cut to ipset's 31 characters (upstream's NewIPSet)."""
    if family == 6 and name.startswith("KUBE-"):
        name = ("KUBE-6-" + name[5:])[:31]
    return name


def _kernel_version() -> tuple[int, int]:
    parts = os.uname().release.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


Dests = tuple[tuple[str, str, int], ...]     # real servers: (ip:port, ip, port), sorted by ip:port


@dataclass
class Wanted:
    """What one service port asks of the dataplane."""

    servers: list[tuple[VirtualServer, bool, Dests]] = field(default_factory=list)  # vs, bind, real servers
    entries: list[tuple[str, str]] = field(default_factory=list)             # (set, member)
    closed_to_node: list[tuple[str, str, int]] = field(default_factory=list)  # LB (ip, proto, port)
    no_local_internal: bool = False
    no_local_external: bool = False


class IpvsProxier:
    """Upstream's IPVS proxier over a backend that has IPVS (the emulated node)."""

    def __init__(self, cfg: ProxyConfig, backend: Any, node_ips: list[str] | None = None, family: int = 4,
                 zone: str = "", pod_cidr: str = "", metrics: Any = None, conntrack: Any = None) -> None:
        why = backend.ipvs_unavailable() if hasattr(backend, "ipvs_unavailable") else \
            "this backend cannot program IPVS"
        if why:
            raise ModeUnavailable(f"proxy mode 'ipvs': {why}")
        self.cfg = cfg
        self.backend = backend
        self.family = family
        self.node_ips = [ip for ip in (node_ips or []) if ipaddress.ip_address(ip).version == family]
        self.zone = zone
        self.detector = LocalDetector(cfg, family, pod_cidr)
        self.metrics = metrics
        self.conntrack = conntrack
        self.scheduler = cfg.ipvs_scheduler or DEFAULT_SCHEDULER
        self.mark = f"0x{1 << cfg.masquerade_bit:06x}"        # Go's %#08x: 0x004000
        self.exclude = [ipaddress.ip_network(c, strict=False) for c in cfg.ipvs_exclude_cidrs
                        if ipaddress.ip_network(c, strict=False).version == family]
        self.sets = {name: set_name(name, family) for name, _, _ in IPSETS}
        self.tracker = ChangeTracker(cfg, family)
        self.graceful = GracefulTermination(backend)
        self.need_full = True
        self.initial_sync = True
        self.last_sync_time: float | None = None
        self._wanted: dict[str, list[Wanted]] = {}
        self._entries: dict[str, Counter[str]] = {name: Counter() for name in self.sets}
        self._applied_entries: dict[str, set[str]] = {name: set() for name in self.sets}
        self._servers: dict[tuple[str, int, str], dict[str, tuple[VirtualServer, Dests]]] = {}
        self._applied: dict[tuple[str, int, str], tuple[VirtualServer, dict[str, int]]] = {}
        self._binds: Counter[str] = Counter()
        self._touched_members: set[tuple[str, str]] = set()
        self._closed: Counter[tuple[str, str, int]] = Counter()
        self._node_port_ips: list[str] | None = None
        self._node_addresses: set[str] = set()
        self.last_rules = ""
        self.set_sysctls()

    # ---- start: sysctls and IPVS timeouts (upstream's NewProxier) -------------------------------
    def set_sysctls(self) -> None:
        b = self.backend
        b.set_sysctl("net/ipv4/vs/conntrack", 1)
        version = _kernel_version()
        if CONN_REUSE_MIN <= version < CONN_REUSE_FIXED:
            b.set_sysctl("net/ipv4/vs/conn_reuse_mode", 0)
        b.set_sysctl("net/ipv4/vs/expire_nodest_conn", 1)
        b.set_sysctl("net/ipv4/vs/expire_quiescent_template", 1)
        b.set_sysctl("net/ipv4/ip_forward", 1)
        if self.cfg.ipvs_strict_arp:
            b.set_sysctl("net/ipv4/conf/all/arp_ignore", 1)
            b.set_sysctl("net/ipv4/conf/all/arp_announce", 2)
        c = self.cfg
        if c.ipvs_tcp_timeout > 0 or c.ipvs_tcp_fin_timeout > 0 or c.ipvs_udp_timeout > 0:
            b.ipvs_set_timeouts(int(c.ipvs_tcp_timeout), int(c.ipvs_tcp_fin_timeout), int(c.ipvs_udp_timeout))

    # ---- per service port ------------------------------------------------------------------------
    def _server(self, info: ServicePortInfo, address: str, port: int) -> VirtualServer:
        flags: set[str] = set()
        timeout = 0
        if info.affinity_client_ip:
            flags.add("persistent")
            timeout = info.affinity_timeout
        if self.scheduler == "mh":
            flags.add("mh-port")
        return VirtualServer(address, info.protocol.upper(), port, self.scheduler, frozenset(flags), timeout)

    def wanted(self, info: ServicePortInfo, eps: list[EndpointInfo], node_ips: list[str],
               node_addresses: set[str]) -> Wanted:
        """Upstream's per-service-port part of syncProxyRules: set members, virtual servers, real servers."""
        out = Wanted()
        proto = info.protocol
        add = out.entries.append
        for ep in eps:
            if ep.is_local:
                add((LOOP_BACK, f"{ep.ip},{proto}:{ep.port},{ep.ip}"))
        add((CLUSTER_IP, f"{info.cluster_ip},{proto}:{info.port}"))
        cat = categorize(info, eps, self.zone)

        def dests(only_local: bool) -> Dests:
            if only_local:
                if cat.local:
                    chosen = cat.local
                else:
                    chosen = cat.cluster
                    if cat.has_any and info.internal_local:
                        out.no_local_internal = True
                    if cat.has_any and info.external_policy_local:
                        out.no_local_external = True
            else:
                chosen = cat.cluster
            # The categorized lists are sorted by ip:port and hold each endpoint once.
            return tuple([(e.text, e.ip, e.port) for e in chosen])

        out.servers.append((self._server(info, info.cluster_ip, info.port), True, dests(info.internal_local)))
        external = dests(info.external_policy_local) if info.externally_accessible else ()
        for eip in info.external_ips:
            add((EXTERNAL_IP_LOCAL if info.external_policy_local else EXTERNAL_IP, f"{eip},{proto}:{info.port}"))
            out.servers.append((self._server(info, eip, info.port), eip not in node_addresses, external))
        for lbip in info.lb_vips:
            entry = f"{lbip},{proto}:{info.port}"
            add((LOAD_BALANCER, entry))
            if info.external_policy_local:
                add((LOAD_BALANCER_LOCAL, entry))
            if info.lb_source_ranges:
                add((LOAD_BALANCER_FW, entry))
                allow_from_node = False
                primary = ipaddress.ip_address(self.node_ips[0]) if self.node_ips else None
                for cidr in info.lb_source_ranges:
                    net = ipaddress.ip_network(cidr, strict=False)
                    add((LOAD_BALANCER_SOURCE_CIDR, f"{entry},{net}"))
                    if primary is not None and primary.version == net.version and primary in net:
                        allow_from_node = True
                if allow_from_node:
                    add((LOAD_BALANCER_SOURCE_IP, f"{entry},{lbip}"))
                else:
                    out.closed_to_node.append((lbip, proto, info.port))
            out.servers.append((self._server(info, lbip, info.port), lbip not in node_addresses, external))
        if info.node_port:
            if not node_ips:
                return out          # upstream skips the rest of the port (health check too)
            np = info.node_port
            if proto == "sctp":
                members = [f"{ip},sctp:{np}" for ip in node_ips]
                add_to = [NODE_PORT_SCTP] + ([NODE_PORT_LOCAL_SCTP] if info.external_policy_local else [])
            else:
                members = [str(np)]
                tcp = proto == "tcp"
                add_to = [NODE_PORT_TCP if tcp else NODE_PORT_UDP]
                if info.external_policy_local:
                    add_to.append(NODE_PORT_LOCAL_TCP if tcp else NODE_PORT_LOCAL_UDP)
            for name in add_to:
                for m in members:
                    add((name, m))
            for ip in node_ips:
                out.servers.append((self._server(info, ip, np), False, external))
        if info.health_check_node_port:
            add((HEALTH_CHECK_NODE_PORT, str(info.health_check_node_port)))
        return out

    # ---- the iptables part (writeIptablesRules) --------------------------------------------------
    def _nonempty(self, name: str) -> bool:
        return bool(self._entries[name]) if name != IPVS_IPS else bool(self._binds)

    def iptables_rules(self) -> str:
        """The restore input: upstream's chains and rules for the sets as they are now."""
        nat: list[str] = [f":{c} - [0:0]" for t, c in CHAINS if t == "nat"]
        flt: list[str] = [f":{c} - [0:0]" for t, c in CHAINS if t == "filter"]
        s = self.sets
        lo = "127.0.0.0/8" if self.family == 4 else "::1/128"
        nat.append(f"-A {KUBE_SERVICES} -s {lo} -j RETURN")

        def comment(name: str) -> str:
            return f'-m comment --comment "{IPSET_COMMENTS[name]}"'

        for name, table, chain, target, match, proto in SET_RULES:
            if not self._nonempty(name):
                continue
            p = f"-p {proto} " if proto else ""
            (nat if table == "nat" else flt).append(
                f"-A {chain} {p}{comment(name)} -m set --match-set {s[name]} {match} -j {target}")
        if self._nonempty(CLUSTER_IP):
            head = f"-A {KUBE_SERVICES} {comment(CLUSTER_IP)} -m set --match-set {s[CLUSTER_IP]}"
            if self.cfg.masquerade_all:
                nat.append(f"{head} dst,dst -j {KUBE_MARK_MASQ}")
            elif self.detector.implemented:
                nat.append(f"{head} dst,dst {' '.join(self.detector.if_not_local)} -j {KUBE_MARK_MASQ}")
            else:
                nat.append(f"{head} src,dst -j {KUBE_MARK_MASQ}")

        def external_ip_rules(head: str) -> None:
            nat.append(f"{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT")
            nat.append(f"{head} -m addrtype --dst-type LOCAL -j ACCEPT")

        if self._nonempty(EXTERNAL_IP):
            head = f"-A {KUBE_SERVICES} {comment(EXTERNAL_IP)} -m set --match-set {s[EXTERNAL_IP]} dst,dst"
            nat.append(f"{head} -j {KUBE_MARK_MASQ}")
            external_ip_rules(head)
        if self._nonempty(EXTERNAL_IP_LOCAL):
            external_ip_rules(f"-A {KUBE_SERVICES} {comment(EXTERNAL_IP_LOCAL)} -m set --match-set "
                              f"{s[EXTERNAL_IP_LOCAL]} dst,dst")
        nat.append(f"-A {KUBE_SERVICES} -m addrtype --dst-type LOCAL -j {KUBE_NODE_PORT}")
        nat.append(f"-A {KUBE_LOAD_BALANCER} -j {KUBE_MARK_MASQ}")
        flt.append(f"-A {KUBE_SOURCE_RANGES_FIREWALL} -j DROP")
        for ip, proto, port in sorted(self._closed):
            flt.append(f"-A {KUBE_IPVS_OUT_FILTER} -s {ip} -m ipvs --vaddr {ip} --vproto {proto} --vport {port} -j DROP")
        for name in (CLUSTER_IP, LOAD_BALANCER):
            if self._nonempty(name):
                nat.append(f"-A {KUBE_SERVICES} -m set --match-set {s[name]} dst,dst -j ACCEPT")
        m = self.mark
        flt.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" -m mark --mark {m}/{m} '
                   "-j ACCEPT")
        flt.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
                   "--ctstate RELATED,ESTABLISHED -j ACCEPT")
        flt.append(f"-A {KUBE_NODE_PORT} {comment(HEALTH_CHECK_NODE_PORT)} -m set --match-set "
                   f"{s[HEALTH_CHECK_NODE_PORT]} dst -j ACCEPT")
        for name, match in ((LOAD_BALANCER, "dst,dst"), (CLUSTER_IP, "dst,dst"), (EXTERNAL_IP, "dst,dst"),
                            (EXTERNAL_IP_LOCAL, "dst,dst"), (HEALTH_CHECK_NODE_PORT, "dst")):
            flt.append(f"-A {KUBE_IPVS_FILTER} -m set --match-set {s[name]} {match} -j RETURN")
        flt.append(f"-A {KUBE_IPVS_FILTER} -m conntrack --ctstate NEW -m set --match-set {s[IPVS_IPS]} dst -j REJECT")
        nat.append(f"-A {KUBE_POSTROUTING} -m mark ! --mark {m}/{m} -j RETURN")
        nat.append(f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {m}")
        random_fully = " --random-fully" if self.backend.has_random_fully() else ""
        nat.append(f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" '
                   f"-j MASQUERADE{random_fully}")
        nat.append(f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {m}")
        return "\n".join(["*nat", *nat, "COMMIT", "*filter", *flt, "COMMIT"]) + "\n"

    # ---- sync --------------------------------------------------------------------------------------
    def sync(self, objs: Objects, force_full: bool = False) -> SyncResult:
        """One sync: what changed (everything on a full sync); a failure schedules a full sync."""
        with gc_paused(full=self.need_full or force_full):
            return self._sync(objs, force_full)

    def _node_port_addresses(self, node_addresses: set[str]) -> list[str]:
        """Where NodePorts listen: every node address, or those in nodePortAddresses (no loopback)."""
        addrs = self.cfg.node_port_addresses
        if not addrs:
            return sorted(node_addresses)
        if addrs == ["primary"]:
            return self.node_ips[:1]
        nets = [ipaddress.ip_network(a, strict=False) for a in addrs]
        out = []
        for ip in sorted(self.backend.local_addresses("")):
            addr = ipaddress.ip_address(ip)
            if not addr.is_loopback and any(addr.version == n.version and addr in n for n in nets):
                out.append(ip)
        return out

    def _sync(self, objs: Objects, force_full: bool) -> SyncResult:
        t0 = time.perf_counter()
        b = self.backend
        full = self.need_full or force_full
        try:
            self.check_graceful()
            # NodePort virtual servers and external-IP bindings depend on the node's own addresses:
            # when they change, every Service is recomputed.
            node_addresses = b.local_addresses(DUMMY_DEVICE)
            node_ips = self._node_port_addresses(node_addresses)
            if node_ips != self._node_port_ips or node_addresses != self._node_addresses:
                full = True
                self._node_port_ips, self._node_addresses = node_ips, node_addresses
            if full:
                self._prepare_full()
            changes = self.tracker.update(objs, full)
            touched = self._recompute(changes.recomputed, full, node_ips, node_addresses)
            self._apply_sets(full)
            rules = self.iptables_rules()
            text = rules if full or rules != self.last_rules else ""
            if text:
                b.restore(text, noflush=True, counters=True)
                self.last_rules = rules
            self._apply_servers(touched, full)
        except Exception as exc:  # the backend's error: do a full sync next time
            self.need_full = True
            self.tracker.rollback()
            log.error("ipvs sync failed: %s", exc)
            if self.metrics is not None:
                self.metrics.restore_failed(partial=not full, family=self.family)
            return SyncResult(full, "", 0, time.perf_counter() - t0, error=str(exc))
        self.tracker.commit()
        self.need_full = False
        self.initial_sync = False
        self.last_sync_time = time.time()
        if self.conntrack is not None and (changes.before.ports or changes.after.ports):
            self.conntrack.clean_stale(changes.before, changes.after, self)
        nat = sum(1 for line in rules.split("*filter")[0].splitlines() if line.startswith("-A"))
        flt = sum(1 for line in rules.split("*filter")[1].splitlines() if line.startswith("-A"))
        result = SyncResult(full, text, text.count("\n"), time.perf_counter() - t0, {"nat": nat, "filter": flt},
                            changed_services=changes.changed)
        if self.metrics is not None:
            no_local = {"internal": len({k for k, ws in self._wanted.items() if any(w.no_local_internal for w in ws)}),
                        "external": len({k for k, ws in self._wanted.items() if any(w.no_local_external for w in ws)})}
            self.metrics.synced(result, no_local, self.family)
        return result

    def _prepare_full(self) -> None:
        """Chains, jumps, the dummy device and the sets exist; what the dataplane holds is read back."""
        b = self.backend
        for table, chain in CHAINS:
            b.ensure_chain(table, chain)
        for table, src, chain, comment in JUMPS:
            b.ensure_rule(table, src, ["-m", "comment", "--comment", comment, "-j", chain])
        b.ensure_dummy_device(DUMMY_DEVICE)
        lines = []
        for name, typ, _ in IPSETS:
            real = self.sets[name]
            if typ == "bitmap:port":
                lines.append(f"create {real} {typ} range 0-65535")
            else:
                fam = "inet" if self.family == 4 else "inet6"
                lines.append(f"create {real} {typ} family {fam} hashsize 1024 maxelem 65536")
        b.ipset_restore("\n".join(lines) + "\n")
        self._applied_entries = {name: b.ipset_entries(real) for name, real in self.sets.items()}
        self._applied = {}
        for vs in b.ipvs_services():
            self._applied[vs.key] = (vs, {str(rs): rs.weight for rs in b.ipvs_real_servers(vs)})
        self._bound = b.device_addresses(DUMMY_DEVICE)

    def _recompute(self, recomputed: dict[str, Any], full: bool, node_ips: list[str],
                   node_addresses: set[str]) -> set[tuple[str, int, str]]:
        """Replace the contributions of the recomputed Services; returns the virtual servers they touched."""
        touched: set[tuple[str, int, str]] = set()
        if full:
            self._wanted = {}
            self._entries = {name: Counter() for name in self.sets}
            self._servers, self._binds, self._closed = {}, Counter(), Counter()
        for key, ports in recomputed.items():
            for w in self._wanted.pop(key, ()):
                self._count(key, w, -1, touched)
            new = [self.wanted(info, eps, node_ips, node_addresses) for info, eps in ports.values()]
            if new:
                self._wanted[key] = new
            for w in new:
                self._count(key, w, 1, touched)
        return touched

    def _count(self, owner: str, w: Wanted, sign: int, touched: set[tuple[str, int, str]]) -> None:
        entries, touched_members = self._entries, self._touched_members
        for name, member in w.entries:
            c = entries[name]
            c[member] += sign
            if c[member] <= 0:
                del c[member]
            touched_members.add((name, member))
        for ip in w.closed_to_node:
            self._closed[ip] += sign
            if self._closed[ip] <= 0:
                del self._closed[ip]
        for vs, bind, dests in w.servers:
            touched.add(vs.key)
            owners = self._servers.setdefault(vs.key, {})
            if sign > 0:
                owners[owner] = (vs, dests)
            else:
                owners.pop(owner, None)
                if not owners:
                    del self._servers[vs.key]
            if bind:
                self._binds[vs.address] += sign
                if self._binds[vs.address] <= 0:
                    del self._binds[vs.address]
                touched_members.add((IPVS_IPS, vs.address))

    def _apply_sets(self, full: bool) -> None:
        """Set members: add what is wanted and missing, delete what is there and not wanted (on a
        partial sync, only among the members the recomputed Services touched)."""
        lines = []
        if full:
            for name, real in self.sets.items():
                want = set(self._binds) if name == IPVS_IPS else set(self._entries[name])
                have = self._applied_entries[name]
                lines += [f"del {real} {m}" for m in sorted(have - want)]
                lines += [f"add {real} {m}" for m in sorted(want - have)]
                self._applied_entries[name] = want
        else:
            for name, member in sorted(self._touched_members):
                wanted = member in (self._binds if name == IPVS_IPS else self._entries[name])
                have = self._applied_entries[name]
                if wanted and member not in have:
                    lines.append(f"add {self.sets[name]} {member}")
                    have.add(member)
                elif not wanted and member in have:
                    lines.append(f"del {self.sets[name]} {member}")
                    have.discard(member)
        self._touched_members = set()
        if lines:
            self.backend.ipset_restore("\n".join(lines) + "\n")

    def _apply_servers(self, touched: set[tuple[str, int, str]], full: bool) -> None:
        """Virtual servers and their real servers for ``touched`` (all of them on a full sync), the
        addresses of the dummy device, and the removal of virtual servers nobody wants any more."""
        b = self.backend
        keys = set(self._servers) | set(self._applied) if full else touched
        bound = self._bound
        to_bind = []
        for key in sorted(keys):
            owners = self._servers.get(key)
            if not owners:
                continue
            vs, dests = next(iter(owners.values()))
            applied = self._applied.get(key)
            if applied is None:
                b.ipvs_add_service(vs)
                applied = self._applied[key] = (vs, {})
            elif applied[0] != vs:
                b.ipvs_update_service(vs)
                applied = self._applied[key] = (vs, applied[1])
            self._sync_real_servers(vs, dests, applied[1])
            if vs.address in self._binds and vs.address not in bound:
                to_bind.append(vs.address)
                bound.add(vs.address)
        unbind = sorted(a for a in bound if a not in self._binds) if full else \
            sorted(a for a in {k[0] for k in touched} if a in bound and a not in self._binds)
        if to_bind or unbind:
            b.bind_addresses(DUMMY_DEVICE, to_bind, unbind)
            bound.difference_update(unbind)
        for key in sorted(keys):
            if key in self._servers or key not in self._applied:
                continue
            vs = self._applied[key][0]
            addr = ipaddress.ip_address(vs.address)
            if addr.version != self.family or any(addr in n for n in self.exclude):
                continue
            b.ipvs_delete_service(vs)
            del self._applied[key]

    def _sync_real_servers(self, vs: VirtualServer, dests: Dests, current: dict[str, int]) -> None:
        """Upstream's syncEndpoint for one virtual server: ``current`` (ip:port -> weight) is kept up to date."""
        b = self.backend
        new = []
        for text, ip, port in dests:
            rs = RealServer(ip, port)
            if text in current:
                if self.initial_sync and current[text] != 1:
                    b.ipvs_update_real_server(vs, rs)
                    current[text] = 1
                name = unique_name(vs, rs)
                if name not in self.graceful:
                    continue
                self.graceful.take_back(name)
            new.append(rs)
            current[text] = 1
        if new:
            b.ipvs_add_real_servers(vs, new)
        wanted = {d[0] for d in dests}
        for text in [t for t in current if t not in wanted]:
            rs = _real_server(text)
            if unique_name(vs, rs) in self.graceful:
                continue
            if self.graceful.delete(vs, rs):
                del current[text]
            else:
                current[text] = 0

    def check_graceful(self) -> list[str]:
        """Delete the terminating real servers whose connections are gone (upstream does it every minute)."""
        done = self.graceful.check()
        for vs, rs in done:
            applied = self._applied.get(vs.key)
            if applied is not None:
                applied[1].pop(str(rs), None)
        return [unique_name(vs, rs) for vs, rs in done]


def _real_server(text: str) -> RealServer:
    host, _, port = text.rpartition(":")
    return RealServer(host.strip("[]"), int(port))



def cleanup_leftovers(backend: Any) -> dict[str, int]:
    """What upstream's IPVS-mode CleanupLeftovers removes, limited to what this mode made: the virtual
    servers of addresses on kube-ipvs0 and of the node ports in its node-port sets, the kube-ipvs0
    device, then (after the caller removed the iptables rules that reference them) its ipsets.
    Upstream flushes every virtual server; a user's own IPVS services are left alone here.

    Returns how many virtual servers, devices and ipsets went. ``backend`` must have removed its
    KUBE-* iptables chains first: the kernel refuses to destroy a set a rule still uses."""
    gone = {"virtual_servers": 0, "devices": 0, "ipsets": 0}
    names = set(backend.ipset_names())
    if not backend.ipvs_unavailable():
        ours = backend.device_addresses(DUMMY_DEVICE)
        ports: dict[str, set[int]] = {}
        for proto, sets in (("TCP", (NODE_PORT_TCP, NODE_PORT_LOCAL_TCP)), ("UDP", (NODE_PORT_UDP, NODE_PORT_LOCAL_UDP)),
                            ("SCTP", (NODE_PORT_SCTP, NODE_PORT_LOCAL_SCTP))):
            for name in sets:
                for member in backend.ipset_entries(set_name(name, backend.family)):
                    port = member.rsplit(":", 1)[-1].split(",")[-1]
                    if port.isdigit():
                        ports.setdefault(proto, set()).add(int(port))
        for vs in backend.ipvs_services():
            if vs.address in ours or vs.port in ports.get(vs.protocol.upper(), ()):
                backend.ipvs_delete_service(vs)
                gone["virtual_servers"] += 1
    if backend.delete_device(DUMMY_DEVICE):
        gone["devices"] += 1
    for name, _, _ in IPSETS:
        name = set_name(name, backend.family)
        if name in names and backend.ipset_destroy(name):
            gone["ipsets"] += 1
    return gone
