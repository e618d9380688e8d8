"""The iptables proxier: Services and EndpointSlices into upstream kube-proxy's exact iptables rules.

The rules, comments, chain names and their layout follow upstream's ``syncProxyRules``: KUBE-SERVICES
captures cluster IPs, external IPs and load-balancer IPs, KUBE-NODEPORTS node ports; per service port
KUBE-SVC (Cluster policy), KUBE-SVL (Local policy), KUBE-EXT (external traffic), KUBE-FW (source
ranges) and one KUBE-SEP per endpoint; the filter table rejects or drops what has no endpoints.

Syncs are applied with ``iptables-restore --noflush``. A partial sync writes the per-service chains
only for Services whose spec or endpoints changed, and a top-level chain only when its content
changed, so a one-endpoint change costs the same at 10 Services as at 10,000. Any failure makes
the next sync a full one.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from kproxy.iptables.restore import Prepared
from kproxy.k8s.manifests import Objects
from kproxy.layered import share
from kproxy.proxy.changes import Changes, ChangeTracker
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.localdetect import LocalDetector
from kproxy.proxy.metrics import CT_STATE_INVALID_DROPPED, LOCALHOST_NODEPORT_ACCEPTED
from kproxy.proxy.prepared import DNAT_TO, JUMP_TO, MASQ_FROM, PORTAL, RuleBuilder, Spec
from kproxy.proxy.proxier import SyncResult, gc_paused, primary_node_ip
from kproxy.proxy.serviceports import EndpointInfo, ServicePortInfo, categorize

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_PROXY_CANARY = "KUBE-PROXY-CANARY"
FILTER_TOP = (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL)
NAT_TOP = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")

# (table, chain, from built-in chain, comment, extra args): ensured with -I (prepend), in this order.
JUMPS = [
    ("filter", KUBE_EXTERNAL_SERVICES, "INPUT", "kubernetes externally-visible service portals",
     ["-m", "conntrack", "--ctstate", "NEW"]),
    ("filter", KUBE_EXTERNAL_SERVICES, "FORWARD", "kubernetes externally-visible service portals",
     ["-m", "conntrack", "--ctstate", "NEW"]),
    ("filter", KUBE_NODEPORTS, "INPUT", "kubernetes health check service ports", []),
    ("filter", KUBE_SERVICES, "FORWARD", "kubernetes service portals", ["-m", "conntrack", "--ctstate", "NEW"]),
    ("filter", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", ["-m", "conntrack", "--ctstate", "NEW"]),
    ("filter", KUBE_FORWARD, "FORWARD", "kubernetes forwarding rules", []),
    ("filter", KUBE_PROXY_FIREWALL, "INPUT", "kubernetes load balancer firewall", ["-m", "conntrack", "--ctstate", "NEW"]),
    ("filter", KUBE_PROXY_FIREWALL, "OUTPUT", "kubernetes load balancer firewall", ["-m", "conntrack", "--ctstate", "NEW"]),
    ("filter", KUBE_PROXY_FIREWALL, "FORWARD", "kubernetes load balancer firewall", ["-m", "conntrack", "--ctstate", "NEW"]),
    ("nat", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", []),
    ("nat", KUBE_SERVICES, "PREROUTING", "kubernetes service portals", []),
    ("nat", KUBE_POSTROUTING, "POSTROUTING", "kubernetes postrouting rules", []),
]
# Kubelet's own firewall chain, which upstream ensures too (and never deletes): prepended after the
# jumps above, so on a fresh node it is the first rule of INPUT and OUTPUT.
KUBELET_JUMPS = [("filter", KUBE_FIREWALL, "INPUT"), ("filter", KUBE_FIREWALL, "OUTPUT")]
NFACCT_COUNTERS = (CT_STATE_INVALID_DROPPED, LOCALHOST_NODEPORT_ACCEPTED)
# Upstream's largeClusterEndpointsThreshold: above this many endpoints (all service ports, this family)
# the endpoint rules lose their comments and stale chains are deleted at most once per sync period.
LARGE_CLUSTER_ENDPOINTS = 1000


def _prepare(prepared: Prepared, builder: RuleBuilder, lineno: int, specs: list[Spec | None]) -> None:
    """Build the rules of ``specs`` (whose first line is ``lineno``), one run per chain of consecutive lines."""
    run: list[Any] | None = None
    chain = None
    for k, spec in enumerate(specs):
        if spec is None:
            run = None
            continue
        if run is None or spec[1] != chain:
            chain = spec[1]
            run = []
            prepared[lineno + k] = (chain, run)
        run.append(builder.build(spec))


def _by_chain(ep: EndpointInfo) -> str:
    return ep.chain


def is_service_chain(name: str) -> bool:
    return name.startswith(SERVICE_CHAIN_PREFIXES)


def q(text: str) -> str:
    """A comment argument as upstream writes it into the restore input: always double-quoted."""
    return f'"{text}"'


@dataclass
class ServiceRules:
    """What one service port contributes: rules in top-level chains, and its own nat chains."""

    top: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    chains: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    # Per rule of ``rules``: the few values its text was made from, for the most common shapes
    # (see ``kproxy.proxy.prepared``), or None.
    specs: list[Spec | None] = field(default_factory=list)
    top_specs: dict[str, Spec] = field(default_factory=dict)    # the same for lines of ``top``
    no_local_internal: int = 0
    no_local_external: int = 0

    def add_top(self, table: str, chain: str, *args: str, spec: Spec | None = None) -> None:
        line = " ".join(["-A", chain, *args])
        self.top.setdefault((table, chain), []).append(line)
        if spec is not None:
            self.top_specs[line] = spec

    def add(self, chain: str, *args: str, spec: Spec | None = None) -> None:
        self.rules.append(" ".join(["-A", chain, *args]))
        self.specs.append(spec)


@dataclass
class Aggregate:
    """All Services' rules gathered for a sync. Cached between syncs: a partial sync builds a new one
    from a copy, so what an earlier sync handed out is never changed."""

    top: dict[tuple[str, str], list[str]]
    chains: MutableMapping[str, list[str]]
    no_local: dict[str, int]
    nat_count: int

    def tally(self, key: str, sr: ServiceRules, sign: int = 1) -> None:
        """Count one service port's rules in (``sign`` 1, its chains too) or out (-1)."""
        self.no_local["internal"] += sign * sr.no_local_internal
        self.no_local["external"] += sign * sr.no_local_external
        self.nat_count += sign * len(sr.rules)
        if sign > 0:
            self.chains.setdefault(key, []).extend(sr.chains)


def _same_top(old: list[tuple[tuple[str, str], ServiceRules]] | None,
              new: list[tuple[tuple[str, str], ServiceRules]] | None) -> bool:
    """Whether a Service's ports contribute the same rules to the top-level chains as before."""
    if not old or not new or len(old) != len(new):
        return False
    return all(ko == kn and so.top == sn.top for (ko, so), (kn, sn) in zip(old, new, strict=True))


class IptablesProxier:
    """Upstream's iptables proxier over a backend (emulated node or real kernel)."""

    def __init__(self, cfg: ProxyConfig, backend: Any, node_ips: list[str] | None = None, family: int = 4,
                 zone: str = "", pod_cidr: str = "", metrics: Any = None, conntrack: Any = None,
                 node_ip: str = "") -> None:
        self.cfg = cfg
        self.backend = backend
        self.family = family
        self.node_ips = node_ips or []
        self.node_ip = node_ip or primary_node_ip(self.node_ips, family)
        self.zone = zone
        self.detector = LocalDetector(cfg, family, pod_cidr)
        self.metrics = metrics
        self.conntrack = conntrack
        self.mark = cfg.masquerade_mark
        self.need_full = True
        self.tracker = ChangeTracker(cfg, family)
        self.last_top: dict[tuple[str, str], list[str]] = {}
        self.last_service_chains: MutableMapping[str, list[str]] = {}
        self._rules: dict[str, list[tuple[tuple[str, str], ServiceRules]]] = {}
        self._order: list[tuple[tuple[str, str], str, int]] | None = None
        self._agg: Aggregate | None = None
        self._recomputed: set[str] = set()     # Services whose rules the last refresh rebuilt
        # Upstream's large-cluster mode: the endpoint count per Service (kept as Services change) decides it
        # for the rules a sync builds; in it, stale chains wait for the next cleanup (once per sync period).
        self._endpoints: dict[str, int] = {}
        self._total_endpoints = 0
        self.large_cluster = False
        self.clock = time.monotonic
        self.last_cleanup = float("-inf")
        self._pending_stale: set[str] = set()
        self.last_sync_time: float | None = None
        # Upstream turns localhost node ports off unless --nodeport-addresses covers 127.0.0.1.
        self.localhost_node_ports = family == 4 and cfg.localhost_node_ports and _covers_ipv4_loopback(
            cfg.node_port_addresses)
        if self.localhost_node_ports:
            # Upstream's NewProxier: localhost NodePorts need route_localnet (a DNATed packet from 127.0.0.1
            # must be routed off the node), which it sets before anything else.
            set_sysctl = getattr(backend, "set_sysctl", None)
            if set_sysctl is not None:
                set_sysctl("net/ipv4/conf/all/route_localnet", 1)
        self.random_fully = True                # what the node's iptables supports, probed at the first full sync
        self.nfacct: dict[str, bool] = dict.fromkeys(NFACCT_COUNTERS, False)   # counters present on the node
        self._nfacct_exported = False

    # ---- per service port --------------------------------------------------------------------
    def service_rules(self, info: ServicePortInfo, eps: list[EndpointInfo]) -> ServiceRules:
        out = ServiceRules()
        proto = info.protocol
        name = info.name_string
        cat = categorize(info, eps, self.zone)
        has_endpoints = cat.has_any
        svc_chain, svl_chain = info.svc_chain, info.svl_chain
        uses_cluster = bool(cat.cluster) and info.uses_cluster_endpoints
        uses_local = bool(cat.local) and info.uses_local_endpoints
        internal_chain = svc_chain
        has_internal = has_endpoints
        if info.internal_local:
            internal_chain = svl_chain
            has_internal = bool(cat.local)
        external_policy_chain = svc_chain
        has_external = has_endpoints
        if info.external_policy_local:
            external_policy_chain = svl_chain
            has_external = bool(cat.local)
        ext_chain = info.ext_chain
        uses_ext = has_endpoints and info.externally_accessible
        lb_chain = ext_chain
        uses_fw = has_endpoints and bool(info.lb_vips) and bool(info.lb_source_ranges)
        if uses_fw:
            lb_chain = info.fw_chain
        int_target = ext_target = int_comment = ext_comment = ""
        if not has_endpoints:
            int_target = ext_target = "REJECT"
            int_comment = ext_comment = q(f"{name} has no endpoints")
        else:
            if not has_internal:
                int_target, int_comment = "DROP", q(f"{name} has no local endpoints")
                out.no_local_internal = 1
            if not has_external:
                ext_target, ext_comment = "DROP", q(f"{name} has no local endpoints")
                out.no_local_external = 1
        match = ["-m", proto, "-p", proto]
        port = str(info.port)

        if has_internal:
            out.add_top("nat", KUBE_SERVICES, "-m", "comment", "--comment", q(f"{name} cluster IP"), *match,
                        "-d", info.cluster_ip, "--dport", port, "-j", internal_chain,
                        spec=(PORTAL, KUBE_SERVICES, f"{name} cluster IP", proto, info.cluster_ip, port, None,
                              internal_chain))
        else:
            out.add_top("filter", KUBE_SERVICES, "-m", "comment", "--comment", int_comment, *match,
                        "-d", info.cluster_ip, "--dport", port, "-j", int_target)
        for eip in info.external_ips:
            if has_endpoints:
                out.add_top("nat", KUBE_SERVICES, "-m", "comment", "--comment", q(f"{name} external IP"), *match,
                            "-d", eip, "--dport", port, "-j", ext_chain)
            if not has_external:
                out.add_top("filter", KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment", ext_comment, *match,
                            "-d", eip, "--dport", port, "-j", ext_target)
        for lbip in info.lb_vips:
            if has_endpoints:
                out.add_top("nat", KUBE_SERVICES, "-m", "comment", "--comment", q(f"{name} loadbalancer IP"), *match,
                            "-d", lbip, "--dport", port, "-j", lb_chain)
            if uses_fw:
                out.add_top("filter", KUBE_PROXY_FIREWALL, "-m", "comment", "--comment",
                            q(f"{name} traffic not accepted by {info.fw_chain}"), *match, "-d", lbip,
                            "--dport", port, "-j", "DROP")
        if not has_external:
            for lbip in info.lb_vips:
                out.add_top("filter", KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment", ext_comment, *match,
                            "-d", lbip, "--dport", port, "-j", ext_target)
        if info.node_port:
            if has_endpoints:
                if self.localhost_node_ports and self.nfacct[LOCALHOST_NODEPORT_ACCEPTED]:
                    out.add_top("nat", KUBE_NODEPORTS, "-m", "comment", "--comment", name, *match,
                                "-d", "127.0.0.0/8", "--dport", str(info.node_port),
                                "-m", "nfacct", "--nfacct-name", LOCALHOST_NODEPORT_ACCEPTED, "-j", ext_chain)
                out.add_top("nat", KUBE_NODEPORTS, "-m", "comment", "--comment", name, *match,
                            "--dport", str(info.node_port), "-j", ext_chain)
            if not has_external:
                out.add_top("filter", KUBE_EXTERNAL_SERVICES, "-m", "comment", "--comment", ext_comment,
                            "-m", "addrtype", "--dst-type", "LOCAL", *match, "--dport", str(info.node_port),
                            "-j", ext_target)
        if info.health_check_node_port:
            out.add_top("filter", KUBE_NODEPORTS, "-m", "comment", "--comment", q(f"{name} health check node port"),
                        "-m", "tcp", "-p", "tcp", "--dport", str(info.health_check_node_port), "-j", "ACCEPT")

        # The service's own nat chains.
        if has_internal:
            args = ["-m", "comment", "--comment", q(f"{name} cluster IP"), *match, "-d", info.cluster_ip,
                    "--dport", port]
            not_local = [] if self.cfg.masquerade_all else self.detector.if_not_local
            if self.cfg.masquerade_all or self.detector.implemented:
                source = not_local[2] if not_local[:2] == ["!", "-s"] else None
                spec = (PORTAL, internal_chain, f"{name} cluster IP", proto, info.cluster_ip, port, source,
                        KUBE_MARK_MASQ) if source is not None or not not_local else None
                out.add(internal_chain, *args, *not_local, "-j", KUBE_MARK_MASQ, spec=spec)
        if uses_ext:
            out.chains.append(ext_chain)
            if not info.external_policy_local:
                out.add(ext_chain, "-m", "comment", "--comment", q(f"masquerade traffic for {name} external destinations"),
                        "-j", KUBE_MARK_MASQ)
            else:
                if self.detector.implemented:
                    out.add(ext_chain, "-m", "comment", "--comment", q(f"pod traffic for {name} external destinations"),
                            *self.detector.if_local, "-j", svc_chain)
                out.add(ext_chain, "-m", "comment", "--comment",
                        q(f"masquerade LOCAL traffic for {name} external destinations"),
                        "-m", "addrtype", "--src-type", "LOCAL", "-j", KUBE_MARK_MASQ)
                out.add(ext_chain, "-m", "comment", "--comment",
                        q(f"route LOCAL traffic for {name} external destinations"),
                        "-m", "addrtype", "--src-type", "LOCAL", "-j", svc_chain)
            if has_external:
                out.add(ext_chain, "-j", external_policy_chain)
        if uses_fw:
            fw = info.fw_chain
            out.chains.append(fw)
            args = ["-m", "comment", "--comment", q(f"{name} loadbalancer IP")]
            # Traffic from the load-balancer IPs themselves is let in when a range holds the node's primary
            # address (upstream's allowFromNode: a VIP-like balancer loops the node's own requests back).
            allow_from_node = False
            node_ip = ipaddress.ip_address(self.node_ip) if self.node_ip else None
            for cidr in info.lb_source_ranges:
                out.add(fw, *args, "-s", cidr, "-j", ext_chain)
                if node_ip is not None and node_ip in ipaddress.ip_network(cidr):
                    allow_from_node = True
            if allow_from_node:
                for lbip in info.lb_vips:
                    out.add(fw, *args, "-s", lbip, "-j", ext_chain)
            out.add(fw, "-m", "comment", "--comment", q(f"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"))
        if uses_cluster:
            out.chains.append(svc_chain)
            self._to_endpoints(out, name, info, svc_chain, cat.cluster)
        if uses_local:
            out.chains.append(svl_chain)
            self._to_endpoints(out, name, info, svl_chain, cat.local)
        # One KUBE-SEP chain per endpoint: the hottest loop of a full sync, so its lines are written
        # directly (the same text ``add`` would join).
        rules, specs = out.rules, out.specs
        # In a large cluster the endpoint rules go without their comments (upstream's appendServiceCommentLocked).
        tag, comment = ("", None) if self.large_cluster else (f" -m comment --comment {name}", name)
        for ep in sorted(cat.reachable, key=_by_chain):
            sep = ep.chain
            out.chains.append(sep)
            rules.append(f"-A {sep}{tag} -s {ep.ip} -j {KUBE_MARK_MASQ}")
            specs.append((MASQ_FROM, sep, comment, ep.ip))
            if info.affinity_client_ip:
                rules.append(f"-A {sep}{tag} -m recent --name {sep} --set -m {proto} -p {proto} -j DNAT "
                             f"--to-destination {ep.text}")
                specs.append(None)
            else:
                rules.append(f"-A {sep}{tag} -m {proto} -p {proto} -j DNAT --to-destination {ep.text}")
                specs.append((DNAT_TO, sep, comment, proto, ep.ip, ep.port))
        return out

    def _to_endpoints(self, out: ServiceRules, name: str, info: ServicePortInfo, chain: str,
                      eps: list[EndpointInfo]) -> None:
        large = self.large_cluster
        if info.affinity_client_ip:
            for ep in eps:
                note = [] if large else ["-m", "comment", "--comment", q(f"{name} -> {ep.text}")]
                out.add(chain, *note, "-m", "recent", "--name", ep.chain, "--rcheck", "--seconds",
                        str(info.affinity_timeout), "--reap", "-j", ep.chain)
        n = len(eps)
        rules, specs = out.rules, out.specs
        for i, ep in enumerate(eps):
            comment = None if large else f"{name} -> {ep.text}"
            tag = "" if comment is None else f' -m comment --comment "{comment}"'
            if i < n - 1:
                p = f"{1.0 / (n - i):0.10f}"
                rules.append(f"-A {chain}{tag} -m statistic --mode random --probability {p} -j {ep.chain}")
            else:
                p = None
                rules.append(f"-A {chain}{tag} -j {ep.chain}")
            specs.append((JUMP_TO, chain, comment, p, ep.chain))

    # ---- the whole ruleset ------------------------------------------------------------------
    def fixed_rules(self) -> dict[tuple[str, str], list[str]]:
        """The rules every sync writes regardless of Services (postrouting, mark, forward, nodeports jump)."""
        m = self.mark
        top: dict[tuple[str, str], list[str]] = {}

        def add(table: str, chain: str, *args: str) -> None:
            top.setdefault((table, chain), []).append(" ".join(["-A", chain, *args]))

        add("nat", KUBE_POSTROUTING, "-m", "mark", "!", "--mark", f"{m}/{m}", "-j", "RETURN")
        add("nat", KUBE_POSTROUTING, "-j", "MARK", "--xor-mark", m)
        masq = ["-j", "MASQUERADE", "--random-fully"] if self.random_fully else ["-j", "MASQUERADE"]
        add("nat", KUBE_POSTROUTING, "-m", "comment", "--comment", q("kubernetes service traffic requiring SNAT"),
            *masq)
        add("nat", KUBE_MARK_MASQ, "-j", "MARK", "--or-mark", m)
        if self.localhost_node_ports:
            add("filter", KUBE_FIREWALL, "-m", "comment", "--comment", q("block incoming localnet connections"),
                "-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate",
                "RELATED,ESTABLISHED,DNAT", "-j", "DROP")
        if not self.cfg.conntrack_tcp_be_liberal:
            count = ["-m", "nfacct", "--nfacct-name", CT_STATE_INVALID_DROPPED] \
                if self.nfacct[CT_STATE_INVALID_DROPPED] else []
            add("filter", KUBE_FORWARD, "-m", "conntrack", "--ctstate", "INVALID", *count, "-j", "DROP")
        add("filter", KUBE_FORWARD, "-m", "comment", "--comment", q("kubernetes forwarding rules"),
            "-m", "mark", "--mark", f"{m}/{m}", "-j", "ACCEPT")
        add("filter", KUBE_FORWARD, "-m", "comment", "--comment", q("kubernetes forwarding conntrack rule"),
            "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
        return top

    def nodeport_jumps(self) -> list[str]:
        comment = q("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
        addrs = self.cfg.node_port_addresses
        if not addrs:
            dest = ["-m", "addrtype", "--dst-type", "LOCAL"]
            if self.family == 6:
                dest += ["!", "-d", "::1/128"]
            elif not self.localhost_node_ports:
                dest += ["!", "-d", "127.0.0.0/8"]
            return [" ".join(["-A", KUBE_SERVICES, "-m", "comment", "--comment", comment, *dest, "-j", KUBE_NODEPORTS])]
        out = []
        nets = [ipaddress.ip_network(a, strict=False) for a in addrs if a != "primary"]
        for ip in self.node_ips:
            addr = ipaddress.ip_address(ip)
            if addr.version != self.family or not (any(addr in n for n in nets) or "primary" in addrs):
                continue
            if addr.is_loopback and not self.localhost_node_ports:
                continue
            out.append(" ".join(["-A", KUBE_SERVICES, "-m", "comment", "--comment", comment, "-d", ip,
                                 "-j", KUBE_NODEPORTS]))
        return out

    def _refresh(self, objs: Objects, full: bool) -> tuple[Changes, dict[str, list[tuple[tuple[str, str], ServiceRules]] | None]]:
        """Rebuild the rules of the Services the tracker recomputed; also return what they replaced."""
        changes = self.tracker.update(objs, full)
        if changes.ports_set_changed:
            self._order = None
        self._recomputed = set(changes.recomputed)
        replaced = {key: self._rules.get(key) for key in changes.recomputed}
        counts = self._endpoints
        for key, ports in changes.recomputed.items():
            self._total_endpoints -= counts.pop(key, 0)
            if ports:
                counts[key] = sum(len(eps) for _, eps in ports.values())
                self._total_endpoints += counts[key]
        self.large_cluster = self._total_endpoints > LARGE_CLUSTER_ENDPOINTS
        for key, ports in changes.recomputed.items():
            if ports:
                self._rules[key] = [((info.name_string, info.protocol), self.service_rules(info, eps))
                                    for info, eps in ports.values()]
            else:
                self._rules.pop(key, None)
        return changes, replaced

    def sync(self, objs: Objects, force_full: bool = False) -> SyncResult:
        """One sync: compute the rules, write what changed, apply; a failure schedules a full sync."""
        with gc_paused(full=self.need_full or force_full):
            return self._sync(objs, force_full)

    def _sync(self, objs: Objects, force_full: bool) -> SyncResult:
        t0 = time.perf_counter()
        full = self.need_full or force_full
        if full:            # a full sync rebuilds every Service's rules: with what the node has now
            self._probe_node()
        changes, replaced = self._refresh(objs, full)
        old_rules = {key: rules for key, rules in replaced.items() if rules is not None}
        changed, before, after = changes.changed, changes.before, changes.after

        top: dict[tuple[str, str], list[str]] = {(t, c): [] for t, c in
                                                  [("filter", c) for c in FILTER_TOP] + [("nat", c) for c in NAT_TOP]}
        if self.localhost_node_ports:
            top[("filter", KUBE_FIREWALL)] = []
        for key, rules in self.fixed_rules().items():
            top[key].extend(rules)
        agg = self._aggregate(full, self._recomputed, old_rules)
        for tc, rules in agg.top.items():
            top[tc].extend(rules)
        service_chains, no_local, nat_count = agg.chains, agg.no_local, agg.nat_count
        top[("nat", KUBE_SERVICES)].extend(self.nodeport_jumps())

        text, prepared = self._render(full, top, service_chains, changed)
        filter_count = sum(len(v) for (t, _), v in top.items() if t == "filter")
        nat_count += sum(len(v) for (t, _), v in top.items() if t == "nat")
        result = SyncResult(full, text, text.count("\n"), 0.0, {"nat": nat_count, "filter": filter_count},
                            changed_services=changed)
        try:
            if full:
                self._ensure_jumps()
            if text and prepared:
                self.backend.restore(text, noflush=True, counters=False, prepared=prepared)
            elif text:
                self.backend.restore(text, noflush=True, counters=False)
        except Exception as exc:  # the backend's error: count it, and do a full sync next time
            result.error = str(exc)
            self.need_full = True
            self.tracker.rollback()
            for svc_key, svc_rules in replaced.items():      # undo what this sync rebuilt
                if svc_rules is None:
                    self._rules.pop(svc_key, None)
                else:
                    self._rules[svc_key] = svc_rules
            self._endpoints.clear()      # a full sync comes next: it counts every Service again
            self._total_endpoints = 0
            self._order = None
            self._agg = None
            result.duration = time.perf_counter() - t0
            if self.metrics is not None:
                self.metrics.restore_failed(partial=not full, family=self.family)
            return result
        self.need_full = False
        self.tracker.commit()
        self.last_top = top
        self.last_service_chains = service_chains
        self.last_sync_time = time.time()
        if self.conntrack is not None and (before.ports or after.ports):
            self.conntrack.clean_stale(before, after, self)
        result.duration = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.synced(result, no_local, self.family)
            self.metrics.iptables_written(_written_rules(text), self.family)
        return result

    def _aggregate(self, full: bool, recomputed: set[str],
                   old_rules: dict[str, list[tuple[tuple[str, str], ServiceRules]]]) -> Aggregate:
        """Every Service's contribution to the top-level chains, its own chains and the counts, in
        Service order. A partial sync whose changed Services contribute the same top-level rules
        as before (an endpoint change) updates only their entries: O(changed), not O(Services)."""
        agg = self._agg
        if agg is not None and not full and self._order is not None and \
                all(_same_top(old_rules.get(k), self._rules.get(k)) for k in recomputed):
            new = Aggregate(agg.top, share(agg.chains), dict(agg.no_local), agg.nat_count)
            for key in recomputed:
                for _, sr in old_rules.get(key, ()):
                    new.tally(key, sr, -1)
                new.chains.pop(key, None)
                for _, sr in sorted(self._rules.get(key, ()), key=lambda e: e[0]):
                    new.tally(key, sr)
            self._agg = new
            return new
        if self._order is None:
            self._order = sorted((sk, svc_key, i) for svc_key, lst in self._rules.items()
                                 for i, (sk, _) in enumerate(lst))
        new = Aggregate({}, {}, {"internal": 0, "external": 0}, 0)
        top = new.top
        rules_by_svc = self._rules
        for _, svc_key, i in self._order:
            sr = rules_by_svc[svc_key][i][1]
            for tc, rules in sr.top.items():
                if tc in top:
                    top[tc].extend(rules)
                else:
                    top[tc] = list(rules)
            new.tally(svc_key, sr)
        self._agg = new
        return new

    def _render(self, full: bool, top: dict[tuple[str, str], list[str]], service_chains: MutableMapping[str, list[str]],
                changed: set[str]) -> tuple[str, Prepared | None]:
        """The restore input, and (for a backend that takes them) the rules already built for its lines."""
        out: list[str] = []
        builder = RuleBuilder(self.family) if getattr(type(self.backend), "takes_prepared_rules", False) else None
        prepared: Prepared = {}
        for table in ("filter", "nat"):
            chains: list[str] = []
            rules: list[str] = []
            built: list[tuple[int, list[Spec | None]]] = []
            for (t, chain), lines in top.items():
                if t != table:
                    continue
                if full or self.last_top.get((t, chain)) != lines:
                    chains.append(f":{chain} - [0:0]")
                    if builder is not None and (t, chain) == ("nat", KUBE_SERVICES):
                        index = {line: spec for lst in self._rules.values() for _, sr in lst
                                 for line, spec in sr.top_specs.items()}
                        built.append((len(rules), [index.get(line) for line in lines]))
                    rules.extend(lines)
            if table == "nat":
                # a partial sync writes the changed Services' chains only, without sorting them all
                for svc in sorted(service_chains if full else changed & service_chains.keys()):
                    chains.extend(f":{c} - [0:0]" for c in service_chains[svc])
                    for _, sr in sorted(self._rules[svc], key=lambda e: e[0]):
                        if builder is not None:
                            built.append((len(rules), sr.specs))
                        rules.extend(sr.rules)
                if full:
                    active = {c for cs in service_chains.values() for c in cs}
                    stale = {c for cs in self.last_service_chains.values() for c in cs} - active
                    stale |= self._existing_service_chains() - active
                else:
                    # Chain names hash the service's name, so a chain never moves between Services.
                    stale = {c for svc in changed for c in self.last_service_chains.get(svc, ())} - \
                        {c for svc in changed for c in service_chains.get(svc, ())}
                stale = self._cleanup(stale, service_chains)
                for c in sorted(stale):
                    chains.append(f":{c} - [0:0]")
                    rules.append(f"-X {c}")
            if chains or rules:
                out.append(f"*{table}")
                out.extend(chains)
                if builder is not None:
                    first = len(out) + 1          # the line number of rules[0]
                    for at, specs in built:
                        _prepare(prepared, builder, first + at, specs)
                out.extend(rules)
                out.append("COMMIT")
        return ("\n".join(out) + "\n" if out else ""), (prepared if builder is not None else None)

    def _cleanup(self, stale: set[str], service_chains: MutableMapping[str, list[str]]) -> set[str]:
        """The stale chains to delete now. Upstream deletes them on every sync, but in a large cluster at
        most once per sync period; until then they wait here (unreferenced, so harmless)."""
        now = self.clock()
        if self.large_cluster and now - self.last_cleanup <= self.cfg.sync_period:
            self._pending_stale |= stale
            return set()
        if self._pending_stale:
            active = {c for cs in service_chains.values() for c in cs}
            stale = stale | (self._pending_stale - active)
            self._pending_stale = set()
        self.last_cleanup = now
        return stale

    def _existing_service_chains(self) -> set[str]:
        lister = getattr(self.backend, "chain_names", None)
        try:
            if lister is not None:       # the emulated node lists them without printing the whole table
                names = lister("nat")
            else:
                names = [line[1:].split()[0] for line in self.backend.save("nat").splitlines() if line.startswith(":")]
        except Exception:  # noqa: BLE001 - a missing table just means nothing to clean
            return set()
        return {name for name in names if is_service_chain(name)}

    def _ensure_jumps(self) -> None:
        for table in ("mangle", "nat", "filter"):
            self.backend.ensure_chain(table, KUBE_PROXY_CANARY)
        for table, chain, src, comment, extra in JUMPS:
            self.backend.ensure_chain(table, chain)
            self.backend.ensure_rule(table, src, [*extra, "-m", "comment", "--comment", comment, "-j", chain])
        for table, chain, src in KUBELET_JUMPS:
            self.backend.ensure_chain(table, chain)
            self.backend.ensure_rule(table, src, ["-j", chain])

    def _probe_node(self) -> None:
        """Ask the node (once per full sync, as upstream) for ``--random-fully`` and its nfacct
        counters, creating those."""
        self.random_fully = self.backend.has_random_fully()
        for name in self.nfacct:
            self.nfacct[name] = self.backend.nfacct_ensure(name)
        if self.metrics is not None and not self._nfacct_exported and any(self.nfacct.values()):
            self.metrics.count_nfacct(self._nfacct_packets)
            self._nfacct_exported = True

    def _nfacct_packets(self, name: str) -> int | None:
        return self.backend.nfacct_packets(name) if self.nfacct.get(name) else None


def _covers_ipv4_loopback(addresses: list[str]) -> bool:
    """Upstream's NodePortAddresses.ContainsIPv4Loopback: no addresses (all), or a CIDR holding 127.0.0.1."""
    if not addresses:
        return True
    loopback = ipaddress.ip_address("127.0.0.1")
    return any(a != "primary" and loopback in ipaddress.ip_network(a, strict=False) for a in addresses
               if ":" not in a)


def _written_rules(text: str) -> dict[str, int]:
    """The ``-A`` lines of each table in a restore input (what upstream counts as the rules it wrote)."""
    counts = {"filter": 0, "nat": 0}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A ") and table in counts:
            counts[table] += 1
    return counts
