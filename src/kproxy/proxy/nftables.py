"""The nftables proxier: Services and EndpointSlices into upstream kube-proxy's ``kube-proxy`` nft table.

Upstream's nftables mode (``pkg/proxy/nftables``) dispatches with verdict maps instead of chain walks:
``service-ips`` (cluster, external and load-balancer IP . protocol . port) and ``service-nodeports``
send a packet straight to the service port's chain; ``no-endpoint-services`` / ``no-endpoint-nodeports``
drop or reject what has no endpoints; ``firewall-ips`` applies loadBalancerSourceRanges;
``cluster-ips`` rejects unknown ports of cluster IPs. Per service port there are ``service-``,
``local-``, ``external-`` and ``firewall-`` chains, and one ``endpoint-`` chain (and, with ClientIP
affinity, one ``affinity-`` set) per endpoint, named by upstream's hash.

Each sync is one nft transaction (``kproxy.nftables.transaction.Tx``: operations that print as
knftables' text form, and that the emulated node applies without printing). The first (and any after a failure)
creates the table and flushes everything it owns; later ones touch only the changed Services:
their chains are flushed and rewritten, their map elements added or deleted, chains no longer
used flushed and deleted a second later (upstream's grace period for kernels that notice a dropped
map reference late), affinity sets no longer used deleted at once.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any

from kproxy.k8s.manifests import Objects
from kproxy.nftables.journal import JournalDict
from kproxy.nftables.transaction import ADD_FLUSH, DNAT, GO, JUMP, MASQ, NUMGEN, RULES, Op, Tx
from kproxy.proxy.changes import ChangeTracker
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.localdetect import LocalDetector
from kproxy.proxy.proxier import SyncResult, gc_paused, primary_node_ip
from kproxy.proxy.serviceports import EndpointInfo, ServicePortInfo, categorize, hash8

TABLE = "kube-proxy"
NAME_LENGTH_MAX = 256               # knftables.NameLengthMax
CHAIN_BASE_LENGTH_MAX = NAME_LENGTH_MAX - 16
STALE_CHAIN_GRACE = 1.0             # seconds a flushed chain waits before it is deleted

SERVICES = "services"
MARK_MASQ = "mark-for-masquerade"
MASQUERADING = "masquerading"
REJECT_CHAIN = "reject-chain"
FIREWALL_CHECK = "firewall-check"
CLUSTER_IPS_CHECK = "cluster-ips-check"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"

CLUSTER_IPS = "cluster-ips"
NODEPORT_IPS = "nodeport-ips"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"
# The sets and maps whose elements the proxier keeps (kind, name), in the order upstream resets them.
CONTAINERS = (("set", CLUSTER_IPS), ("map", SERVICE_IPS), ("map", FIREWALL_IPS), ("map", NO_ENDPOINT_SERVICES),
              ("map", NO_ENDPOINT_NODEPORTS), ("map", SERVICE_NODEPORTS))
KIND = dict((name, kind) for kind, name in CONTAINERS)

# (name, type, hook, priority): filtering sees destinations before DNAT, except input/forward/output.
BASE_CHAINS = (
    ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
    ("filter-output-pre-dnat", "filter", "output", -110),
    ("filter-input", "filter", "input", 0),
    ("filter-forward", "filter", "forward", 0),
    ("filter-output", "filter", "output", 0),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
)
# (chain jumped to, base chain, match before the jump), in upstream's order.
JUMPS = (
    (NODEPORT_ENDPOINTS_CHECK, "filter-input", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-input", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-forward", "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, "filter-output", "ct state new"),
    (FIREWALL_CHECK, "filter-prerouting-pre-dnat", "ct state new"),
    (FIREWALL_CHECK, "filter-output-pre-dnat", "ct state new"),
    (SERVICES, "nat-output", ""),
    (SERVICES, "nat-prerouting", ""),
    (MASQUERADING, "nat-postrouting", ""),
    (CLUSTER_IPS_CHECK, "filter-forward", "ct state new"),
    (CLUSTER_IPS_CHECK, "filter-output", "ct state new"),
)


def hash_and_truncate(name: str) -> str:
    """Upstream's chain-name base: 8 base32 characters of sha256(name), a dash, the name (cut to fit)."""
    out = f"{hash8(name)}-{name}"
    if len(out) > CHAIN_BASE_LENGTH_MAX:
        out = out[:CHAIN_BASE_LENGTH_MAX - 3] + "..."
    return out


def port_base(info: ServicePortInfo) -> str:
    return hash_and_truncate(f"{info.namespace}/{info.name}/{info.protocol}/{info.port_name}")


def endpoint_base(info: ServicePortInfo, ep: EndpointInfo) -> str:
    ip = ep.ip.replace(":", ".")
    return hash_and_truncate(f"{info.namespace}/{info.name}/{info.protocol}/{info.port_name}__{ip}/{ep.port}")


def is_service_chain(name: str) -> bool:
    """Per-service chains always hold a '/', the fixed chains never do."""
    return "/" in name


def is_affinity_set(name: str) -> bool:
    return name.startswith("affinity-")


ElementKey = tuple[str, str]                      # (set or map, key text)
ElementValue = tuple[str, str | None]             # (value text, "" for sets; comment)


@dataclass
class PortRules:
    """What one service port contributes: chains it owns, map elements, and its rules and sets."""

    chains: list[str] = field(default_factory=list)
    elements: dict[ElementKey, ElementValue] = field(default_factory=dict)
    body: list[Op] = field(default_factory=list)        # "add set ..." / "add rule ..." operations
    affinity_sets: list[str] = field(default_factory=list)
    no_local_internal: int = 0
    no_local_external: int = 0

    def chain(self, name: str) -> None:
        if name not in self.chains:
            self.chains.append(name)

    def elem(self, container: str, key: str, value: str = "", comment: str | None = None) -> None:
        self.elements[(container, key)] = (value, comment)


@dataclass
class ServiceRules:
    """All ports of one Service, merged: the unit a partial sync rewrites."""

    ports: list[PortRules]
    chains: set[str]
    elements: dict[ElementKey, ElementValue]
    affinity_sets: set[str]
    chain_rules: dict[str, list[Op]]            # chain -> its rules

    @classmethod
    def of(cls, ports: list[PortRules]) -> ServiceRules:
        elements: dict[ElementKey, ElementValue] = {}
        chain_rules: dict[str, list[Op]] = {}
        for p in ports:
            elements.update(p.elements)
            for op in p.body:
                if op[1] == "rule" or op[1] == RULES:
                    chain_rules.setdefault(op[2], []).append(op)
        return cls(ports, {c for p in ports for c in p.chains}, elements,
                   {s for p in ports for s in p.affinity_sets}, chain_rules)

    @property
    def tally(self) -> tuple[int, int, int, int]:
        """(rules, chains, ports without local internal endpoints, ... external), for the totals."""
        return (sum(len(v) + sum(1 for op in v if op[1] == RULES) for v in self.chain_rules.values()), len(self.chains),
                sum(p.no_local_internal for p in self.ports), sum(p.no_local_external for p in self.ports))

    def unchanged_endpoint_chains(self, old: ServiceRules | None) -> set[str]:
        """Endpoint chains this Service had before with the same rules: a partial sync leaves them be
        (upstream rewrites every chain of a changed Service; the table is the same either way)."""
        if old is None:
            return set()
        return {c for c in self.chains & old.chains
                if c.startswith("endpoint-") and self.chain_rules.get(c) == old.chain_rules.get(c)}


class NodePortAddresses:
    """Upstream's NodePortAddresses for one family: every local address (no CIDR of the family, or a
    zero CIDR), or the node's addresses within the CIDRs ("primary": the node IP)."""

    def __init__(self, specs: list[str], family: int) -> None:
        self.primary = "primary" in specs
        self.cidrs = [n for n in (ipaddress.ip_network(s.strip(), strict=False) for s in specs
                                  if s.strip() and s != "primary") if n.version == family]
        self.match_all = any(n.prefixlen == 0 for n in self.cidrs) or (not self.cidrs and not self.primary)

    def node_ips(self, ips: list[str], node_ip: str) -> list[str]:
        out = []
        for text in ips:
            ip = ipaddress.ip_address(text)
            if (any(ip in n for n in self.cidrs) or (self.primary and text == node_ip)) and text not in out:
                out.append(text)
        return out


class NftablesProxier:
    """Upstream's nftables proxier for one IP family over an nft backend (``kproxy.backends.nft``)."""

    def __init__(self, cfg: ProxyConfig, backend: Any, node_ips: list[str] | None = None, family: int = 4,
                 zone: str = "", pod_cidr: str = "", metrics: Any = None, conntrack: Any = None,
                 service_cidrs: list[str] | None = None, node_ip: str = "", clock: Any = time.monotonic) -> None:
        self.cfg = cfg
        self.backend = _nft_backend(backend, family)
        self.family = family
        self.node_ips = node_ips or []
        self.node_ip = node_ip or primary_node_ip(self.node_ips, family)
        self.zone = zone
        self.detector = LocalDetector(cfg, family, pod_cidr)
        self.metrics = metrics
        self.conntrack = conntrack
        self.clock = clock
        self.service_cidrs = self._of_family(service_cidrs or [])
        self.need_full = True
        self.tracker = ChangeTracker(cfg, family, sep_chains=False)
        self.fam = "ip" if family == 4 else "ip6"
        self.ipx = self.fam
        self.addr_type = "ipv4_addr" if family == 4 else "ipv6_addr"
        self.no_localhost = "ip daddr != 127.0.0.0/8" if family == 4 else "ip6 daddr != ::1"
        self.mark = f"{1 << cfg.masquerade_bit:#08x}"
        # The pod CIDR of a ClusterCIDR detector (IPv4): the masquerade rule then has the
        # transaction's MASQ shape, made without its text on the emulated node.
        words = self.detector.if_not_local_nft if self.detector.implemented else []
        self.masq_cidr = words[3] if family == 4 and words[:3] == ["ip", "saddr", "!="] and len(words) == 4 else ""
        self.nodeport_addresses = NodePortAddresses(cfg.node_port_addresses, family)
        self._services: dict[str, ServiceRules] = {}
        # What the table holds, as of the last successful sync: element -> (value, comment, Service).
        # Map and set elements as last programmed, with the Service that wrote each; a sync changes it in
        # place under a journal (a copy per sync cost what the cluster holds) and undoes it on failure.
        self._elements: JournalDict = JournalDict()
        self.stale_chains: dict[str, float] = {}
        self._flushed = False        # base chains re-created once per run (their properties may change)
        self.last_sync_time: float | None = None
        self.counts: dict[str, int] = {}
        self._tally = [0, 0, 0, 0]      # rules, chains, no local internal / external endpoints: all Services

    # ---- operations (``kproxy.nftables.transaction``) ------------------------------------------
    @staticmethod
    def _op(verb: str, kind: str, name: str, rest: str = "") -> Op:
        return (verb, kind, name, rest)

    @staticmethod
    def _rule(chain: str, rule: str | tuple[Any, ...], comment: str | None = None) -> Op:
        """A rule: its text, or (IPv4) one of the transaction's rule shapes."""
        return ("add", "rule", chain, (rule, comment))

    @staticmethod
    def _element(verb: str, container: str, key: str, value: str = "", comment: str | None = None) -> Op:
        return (verb, "element", container, (key, value, comment))

    # ---- the fixed part of the table -----------------------------------------------------------
    def setup(self) -> list[Op]:
        """The table, base chains, jumps and fixed chains, sets and maps; containers flushed."""
        out = [self._op("add", "table", "", ' { comment "rules for kube-proxy" ; }')]
        if not self._flushed:
            for name, *_ in BASE_CHAINS:
                out += [self._op("add", "chain", name), self._op("delete", "chain", name)]
        for name, ctype, hook, prio in BASE_CHAINS:
            out += [self._op("add", "chain", name, f" {{ type {ctype} hook {hook} priority {prio} ; }}"),
                    self._op("flush", "chain", name)]
        created: list[str] = []

        def ensure(chain: str) -> None:
            if chain not in created:
                created.append(chain)
                out.append(self._op(ADD_FLUSH, "chain", chain))

        for dst, src, extra in JUMPS:
            ensure(dst)
            out.append(self._rule(src, f"{extra} jump {dst}".strip()))
        for chain in (SERVICES, CLUSTER_IPS_CHECK, MASQUERADING, MARK_MASQ):
            ensure(chain)
        m, x = self.mark, self.ipx
        out += [self._rule(MARK_MASQ, f"mark set mark or {m}"),
                self._rule(MASQUERADING, f"mark and {m} == 0 return"),
                self._rule(MASQUERADING, f"mark set mark xor {m}"),
                self._rule(MASQUERADING, "masquerade fully-random"),
                self._op("add", "set", CLUSTER_IPS, f' {{ type {self.addr_type} ; comment "Active ClusterIPs" ; }}'),
                self._rule(CLUSTER_IPS_CHECK, f"{x} daddr @{CLUSTER_IPS} reject",
                           "Reject traffic to invalid ports of ClusterIPs")]
        if self.service_cidrs:
            out.append(self._rule(CLUSTER_IPS_CHECK, f"{x} daddr {{ {','.join(self.service_cidrs)} }} drop",
                                  "Drop traffic to unallocated ClusterIPs"))
        out.append(self._op("add", "set", NODEPORT_IPS,
                            f' {{ type {self.addr_type} ; comment "IPs that accept NodePort traffic" ; }}'))
        npa = self.nodeport_addresses
        if npa.match_all:
            out.append(self._op("delete", "set", NODEPORT_IPS))
        else:
            out.append(self._op("flush", "set", NODEPORT_IPS))
            for ip in npa.node_ips(self.node_ips, self.node_ip):
                if not ipaddress.ip_address(ip).is_loopback:    # localhost NodePorts are not supported
                    out.append(self._element("add", NODEPORT_IPS, ip))
        triple = f"{self.addr_type} . inet_proto . inet_service : verdict"
        out += [self._op("add", "map", NO_ENDPOINT_SERVICES, f" {{ type {triple} ; comment \"vmap to drop or "
                                                               "reject packets to services with no endpoints\" ; }"),
                self._op("add", "map", NO_ENDPOINT_NODEPORTS, " { type inet_proto . inet_service : verdict ; "
                         "comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }"),
                self._op("add", "chain", REJECT_CHAIN,
                         ' { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }'),
                self._op("flush", "chain", REJECT_CHAIN),
                self._rule(REJECT_CHAIN, "reject"),
                self._rule(SERVICE_ENDPOINTS_CHECK, f"{x} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}")]
        local = self.no_localhost if npa.match_all else f"{x} daddr @{NODEPORT_IPS}"
        out += [self._rule(NODEPORT_ENDPOINTS_CHECK, f"{local} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"),
                self._op("add", "map", FIREWALL_IPS, f" {{ type {triple} ; comment \"destinations that are subject "
                                                      "to LoadBalancerSourceRanges\" ; }"),
                self._rule(FIREWALL_CHECK, f"{x} daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}"),
                self._op("add", "map", SERVICE_IPS,
                         f' {{ type {triple} ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}'),
                self._op("add", "map", SERVICE_NODEPORTS,
                         ' { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }'),
                self._rule(SERVICES, f"{x} daddr . meta l4proto . th dport vmap @{SERVICE_IPS}")]
        if npa.match_all:
            out.append(self._rule(SERVICES, f"fib daddr type local {self.no_localhost} meta l4proto . th dport "
                                            f"vmap @{SERVICE_NODEPORTS}"))
        else:
            out.append(self._rule(SERVICES, f"{x} daddr @{NODEPORT_IPS} meta l4proto . th dport "
                                            f"vmap @{SERVICE_NODEPORTS}"))
        out += [self._op("flush", kind, name) for kind, name in CONTAINERS]
        return out

    # ---- per service port ------------------------------------------------------------------
    def port_rules(self, info: ServicePortInfo, eps: list[EndpointInfo]) -> PortRules:
        """Upstream's per-service-port part of syncProxyRules: chains, elements, rules."""
        out = PortRules()
        proto, name, x = info.protocol, info.name_string, self.ipx
        base = port_base(info)
        cat = categorize(info, eps, self.zone)
        has_endpoints = cat.has_any
        ep_chain = {ep.text: "endpoint-" + endpoint_base(info, ep) for ep in cat.reachable}
        affinity = info.affinity_client_ip
        out.chains.extend(ep_chain.values())       # one per endpoint (the names differ as the endpoints do)
        if affinity:
            out.affinity_sets += ["affinity-" + c[len("endpoint-"):] for c in ep_chain.values()]
        cluster_chain, local_chain = "service-" + base, "local-" + base
        uses_cluster = bool(cat.cluster) and info.uses_cluster_endpoints
        if uses_cluster:
            out.chain(cluster_chain)
        uses_local = bool(cat.local) and info.uses_local_endpoints
        if uses_local:
            out.chain(local_chain)
        internal_chain, has_internal = cluster_chain, has_endpoints
        if info.internal_local:
            internal_chain, has_internal = local_chain, bool(cat.local) and has_endpoints
        external_policy_chain, has_external = cluster_chain, has_endpoints
        if info.external_policy_local:
            external_policy_chain, has_external = local_chain, bool(cat.local) and has_endpoints
        ext_chain = "external-" + base
        uses_ext = has_endpoints and info.externally_accessible
        if uses_ext:
            out.chain(ext_chain)
        if not has_endpoints:
            int_verdict = ext_verdict = f"goto {REJECT_CHAIN}"
        else:
            int_verdict = ext_verdict = ""
            if not has_internal:
                int_verdict, out.no_local_internal = "drop", 1
            if not has_external:
                ext_verdict, out.no_local_external = "drop", 1
        port = str(info.port)

        out.elem(CLUSTER_IPS, info.cluster_ip)
        if has_internal:
            out.elem(SERVICE_IPS, f"{info.cluster_ip} . {proto} . {port}", f"goto {internal_chain}")
        else:
            out.elem(NO_ENDPOINT_SERVICES, f"{info.cluster_ip} . {proto} . {port}", int_verdict, name)
        for eip in info.external_ips:
            if has_endpoints:
                out.elem(SERVICE_IPS, f"{eip} . {proto} . {port}", f"goto {ext_chain}")
            if not has_external:
                out.elem(NO_ENDPOINT_SERVICES, f"{eip} . {proto} . {port}", ext_verdict, name)
        uses_fw = bool(info.lb_vips) and bool(info.lb_source_ranges)
        fw_chain = "firewall-" + base
        if uses_fw:
            out.chain(fw_chain)
        for lbip in info.lb_vips:
            if has_endpoints:
                out.elem(SERVICE_IPS, f"{lbip} . {proto} . {port}", f"goto {ext_chain}")
            if uses_fw:
                out.elem(FIREWALL_IPS, f"{lbip} . {proto} . {port}", f"goto {fw_chain}")
        if not has_external:
            for lbip in info.lb_vips:
                out.elem(NO_ENDPOINT_SERVICES, f"{lbip} . {proto} . {port}", ext_verdict, name)
        if info.node_port:
            if has_endpoints:
                out.elem(SERVICE_NODEPORTS, f"{proto} . {info.node_port}", f"goto {ext_chain}")
            if not has_external:
                out.elem(NO_ENDPOINT_NODEPORTS, f"{proto} . {info.node_port}", ext_verdict, name)

        body = out.body
        if has_internal:
            if self.cfg.masquerade_all:
                body.append(self._rule(internal_chain, f"{x} daddr {info.cluster_ip} jump {MARK_MASQ}"))
            elif self.masq_cidr:
                body.append(self._rule(internal_chain, (MASQ, info.cluster_ip, self.masq_cidr, "jump", MARK_MASQ)))
            elif self.detector.implemented:
                body.append(self._rule(internal_chain, f"{x} daddr {info.cluster_ip} "
                                                       f"{' '.join(self.detector.if_not_local_nft)} jump {MARK_MASQ}"))
        if uses_ext:
            if not info.external_policy_local:
                body.append(self._rule(ext_chain, (GO, "jump", MARK_MASQ)))
            else:
                if self.detector.implemented:
                    body.append(self._rule(ext_chain, f"{' '.join(self.detector.if_local_nft)} goto {cluster_chain}",
                                           "short-circuit pod traffic"))
                body.append(self._rule(ext_chain, f"fib saddr type local jump {MARK_MASQ}", "masquerade local traffic"))
                body.append(self._rule(ext_chain, f"fib saddr type local goto {cluster_chain}",
                                       "short-circuit local traffic"))
            if has_external:
                body.append(self._rule(ext_chain, (GO, "goto", external_policy_chain)))
        if uses_fw:
            sources = [str(ipaddress.ip_network(c.strip(), strict=False)) for c in info.lb_source_ranges]
            if self.node_ip and any(ipaddress.ip_address(self.node_ip) in ipaddress.ip_network(s) for s in sources):
                sources += list(info.lb_vips)
            body.append(self._rule(fw_chain, f"{x} saddr != {{ {' , '.join(sources)} }} drop"))
        if affinity:
            for aff in out.affinity_sets:
                body.append(self._op("add", "set", aff, f" {{ type {self.addr_type} ; flags dynamic,timeout ; "
                                                        f"timeout {info.affinity_timeout}s ; }}"))
        if uses_cluster:
            self._to_endpoints(body, cluster_chain, cat.cluster, ep_chain, affinity)
        if uses_local:
            self._to_endpoints(body, local_chain, cat.local, ep_chain, affinity)
        if self.family == 4 and not affinity:
            # the endpoint chains' two rules, one operation each (``kproxy.nftables.transaction``)
            body += [("add", RULES, ep_chain[ep.text], ((JUMP, "saddr", ep.ip, "jump", MARK_MASQ),
                                                        (DNAT, proto, ep.ip, ep.port))) for ep in cat.reachable]
            return out
        for ep in cat.reachable:
            chain = ep_chain[ep.text]
            body.append(self._rule(chain, f"{x} saddr {ep.ip} jump {MARK_MASQ}"))
            if affinity:
                body.append(self._rule(chain, f"update @affinity-{chain[len('endpoint-'):]} {{ {x} saddr }}"))
            body.append(self._rule(chain, f"meta l4proto {proto} dnat to {ep.text}"))
        return out

    def _to_endpoints(self, body: list[Op], chain: str, eps: list[EndpointInfo], ep_chain: dict[str, str],
                      affinity: bool) -> None:
        if affinity:
            for ep in eps:
                target = ep_chain[ep.text]
                body.append(self._rule(chain, f"{self.ipx} saddr @affinity-{target[len('endpoint-'):]} goto {target}"))
        targets = tuple(ep_chain[ep.text] for ep in eps)
        if self.family == 4:
            body.append(self._rule(chain, (NUMGEN, targets)))
        else:
            vmap = " , ".join(f"{i} : goto {t}" for i, t in enumerate(targets))
            body.append(self._rule(chain, f"numgen random mod {len(eps)} vmap {{ {vmap} }}"))

    # ---- the sync ---------------------------------------------------------------------------
    def _of_family(self, cidrs: list[str]) -> list[str]:
        return [c for c in cidrs if ipaddress.ip_network(c, strict=False).version == self.family]

    def service_cidrs_changed(self, cidrs: list[str]) -> None:
        """Upstream's OnServiceCIDRsChanged: this family's ranges for the cluster-ips-check drop rule.
        The rule belongs to the table's fixed part, so a change makes the next sync a full one."""
        mine = self._of_family(cidrs)
        if mine != self.service_cidrs:
            self.service_cidrs = mine
            self.need_full = True

    def sync(self, objs: Objects, force_full: bool = False) -> SyncResult:
        """One sync: delete chains stale long enough, then one transaction with what changed."""
        ranges = objs.service_cidr_ranges()
        if ranges is not None:
            self.service_cidrs_changed(ranges)
        with gc_paused(full=self.need_full or force_full):
            return self._sync(objs, force_full)

    def _add_tally(self, svc: ServiceRules | None, sign: int) -> None:
        if svc is not None:
            self._tally = [a + sign * b for a, b in zip(self._tally, svc.tally, strict=True)]

    def _due_stale_chains(self, now: float) -> list[Op]:
        """The ``delete chain`` operations of the chains stale long enough (taken off ``stale_chains``)."""
        due = sorted(c for c, since in self.stale_chains.items() if since < now - STALE_CHAIN_GRACE)
        for c in due:
            del self.stale_chains[c]
        return [self._op("delete", "chain", c) for c in due]

    def _delete_stale_chains(self, deletes: list[Op]) -> bool:
        """Upstream's own transaction for the stale chains: a failure is counted, never the sync's."""
        try:
            self._run(Tx(self.fam, TABLE, deletes))
            return True
        except Exception:  # noqa: BLE001 - upstream logs it and retries later; the chains come back as stale
            if self.metrics is not None:
                self.metrics.nftables_cleanup_failed()
            return False

    def _apply(self, deletes: list[Op], tx: Tx, full: bool) -> bool:
        """The stale chains' deletion, then the sync's transaction. Both in one transaction when both
        are there: on a kernel each ``nft -f`` first reads every chain of the table (nft 1.0.6's
        cache: ~0.3 s at 10,000 Services), and a one-endpoint change makes a stale chain that the
        next sync deletes. If that transaction fails (nothing changed), they go as upstream sends
        them: the deletion alone, its failure only counted, then the sync's text alone. False if the
        stale chains are still there."""
        if deletes and tx.ops:
            try:
                self._run(Tx(self.fam, TABLE, deletes + tx.ops))
                return True
            except Exception:  # noqa: BLE001 - told apart below, each on its own
                pass
        deleted = self._delete_stale_chains(deletes) if deletes else True
        if deletes and full and tx.ops:
            self.backend.names("chains")          # as they are now: a kernel backend shapes a full sync by them
        if tx.ops:
            self._run(tx)
        return deleted

    def _sync(self, objs: Objects, force_full: bool) -> SyncResult:
        t0 = time.perf_counter()
        now = self.clock()
        full = self.need_full or force_full
        deletes = self._due_stale_chains(now)
        changes = self.tracker.update(objs, full)
        replaced = {key: self._services.get(key) for key in changes.recomputed}
        for key, ports in changes.recomputed.items():
            if ports:
                self._services[key] = ServiceRules.of([self.port_rules(info, eps) for info, eps in
                                                       sorted(ports.values(), key=lambda p: p[0].name_string)])
            else:
                self._services.pop(key, None)
        lines: list[Op] = self.setup() if full else []
        elements = JournalDict() if full else self._elements
        elements.begin()
        if full:
            rewrite = sorted(self._services)
        else:
            rewrite = sorted(k for k in changes.changed if k in self._services)
        deletions: list[Op] = []
        for key in rewrite:
            self._write_service(lines, key, self._services[key], elements, None if full else replaced.get(key))
        stale_now: list[str] = []
        dead_sets: list[str] = []
        going = {op[2] for op in deletes}       # deleted by this transaction first: not stale again
        if full:
            active = {c for s in self._services.values() for c in s.chains}
            sets = {a for s in self._services.values() for a in s.affinity_sets}
            existing_chains, existing_sets = self.backend.names("chains"), self.backend.names("sets")
            stale_now = sorted(c for c in existing_chains if is_service_chain(c) and c not in active and c not in going)
            dead_sets = sorted(s for s in existing_sets if is_affinity_set(s) and s not in sets)
        else:
            for key in changes.changed:
                old, new = replaced.get(key), self._services.get(key)
                old_chains = old.chains if old else set()
                new_chains = new.chains if new else set()
                stale_now += sorted(old_chains - new_chains)
                dead_sets += sorted((old.affinity_sets if old else set()) - (new.affinity_sets if new else set()))
                for ekey in sorted((old.elements if old else {}).keys() - (new.elements if new else {}).keys()):
                    held = elements.get(ekey)
                    if held is not None and held[2] == key:
                        del elements[ekey]
                        deletions.append(self._element("delete", ekey[0], ekey[1]))
        for c in stale_now:
            lines.append(self._op("flush", "chain", c))
        for s in dead_sets:
            lines.append(self._op("delete", "set", s))
        lines += deletions
        tx = Tx(self.fam, TABLE, lines)
        result = SyncResult(full, tx.text, tx.lines, 0.0, changed_services=set(changes.changed))
        try:
            deleted = self._apply(deletes, tx, full)
        except Exception as exc:  # the backend's error: the rules stay as they were; a full sync follows
            result.error = str(exc)
            elements.rollback()
            self.need_full = True
            self.stale_chains.clear()
            self.tracker.rollback()
            for key, svc in replaced.items():
                if svc is None:
                    self._services.pop(key, None)
                else:
                    self._services[key] = svc
            result.duration = time.perf_counter() - t0
            if self.metrics is not None:
                self.metrics.nftables_sync_failed()
            return result
        self._flushed = True
        self.need_full = False
        self.tracker.commit()
        elements.end()
        self._elements = elements
        active_now = {c for key in rewrite for c in self._services[key].chains}
        for c in active_now:
            self.stale_chains.pop(c, None)
        for c in stale_now:
            self.stale_chains[c] = now
        if full and not deleted:            # a full sync would have found them again, as upstream's does
            for c in going:
                self.stale_chains[c] = now
        self.last_sync_time = time.time()
        if self.conntrack is not None and (changes.before.ports or changes.after.ports):
            self.conntrack.clean_stale(changes.before, changes.after, self)
        for key, svc in replaced.items():
            self._add_tally(svc, -1)
            self._add_tally(self._services.get(key), 1)
        rules, chains, no_local_internal, no_local_external = self._tally
        self.counts = {"rules": rules, "chains": chains, "elements": len(elements)}
        result.rules = dict(self.counts)
        result.duration = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.synced(result, {"internal": no_local_internal, "external": no_local_external}, self.family)
            self.metrics.nftables_synced(self.counts, len(self.stale_chains))
        return result

    def _run(self, tx: Tx) -> None:
        """One transaction: as it is to a backend that takes ``Tx`` (the emulated node), else its text."""
        self.backend.run(tx if getattr(self.backend, "takes_transactions", False) else tx.text())

    def _write_service(self, lines: list[Op], key: str, svc: ServiceRules,
                       elements: dict[ElementKey, tuple[str, str | None, str]], old: ServiceRules | None) -> None:
        """One Service's chains (created and flushed), its elements as they differ, then its rules;
        endpoint chains and affinity sets it already had unchanged are left as they are."""
        keep = svc.unchanged_endpoint_chains(old)
        keep_sets = svc.affinity_sets & old.affinity_sets if old is not None else set()
        for p in svc.ports:
            lines += [(ADD_FLUSH, "chain", c, "") for c in p.chains if c not in keep]
        for (container, k), (value, comment) in svc.elements.items():
            held = elements.get((container, k))
            if held is not None and held[0] == value:
                elements[(container, k)] = (value, held[1], key)
                continue
            if held is not None:
                lines.append(self._element("delete", container, k))
            lines.append(self._element("add", container, k, value, comment))
            elements[(container, k)] = (value, comment, key)
        for p in svc.ports:
            if not keep and not keep_sets:
                lines.extend(p.body)
                continue
            for op in p.body:
                name = op[2]
                if not (name in keep and (op[1] == "rule" or op[1] == RULES) or name in keep_sets and op[1] == "set"):
                    lines.append(op)


def _nft_backend(backend: Any, family: int) -> Any:
    """The nft side of a proxier backend: the backend itself when it runs nft transactions, else the
    nft backend of the same node or kernel (``kproxy.backends.nft``)."""
    if backend is None or hasattr(backend, "run"):
        return backend
    from kproxy.backends.nft import nft_backend_for

    return nft_backend_for(backend, family)
