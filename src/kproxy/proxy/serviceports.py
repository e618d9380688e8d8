"""Service ports and their endpoints as kube-proxy sees them, and which of them changed since the last sync.

One ``ServicePortInfo`` per (Service, port, IP family) with upstream's chain names (a base32 of
sha256 of ``ns/name:port`` + protocol); endpoints come from the EndpointSlices labelled with the
Service's name, matched by port name and protocol, deduplicated and sorted as upstream sorts them.
``categorize`` is upstream's CategorizeEndpoints: ready endpoints, terminating fallback, topology
hints, and the Local policy's node-local subset.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kproxy.k8s.manifests import Objects

ZONE_LABEL = "topology.kubernetes.io/zone"


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_B32_PAIRS = [a + b for a in _B32 for b in _B32]     # 10 bits at a time, as base64.b32encode does


def _hash16(text: str) -> str:
    """The first 16 base32 characters of sha256(text), as upstream names its chains: the digest's
    first 80 bits, 10 at a time (a full sync names a chain for every endpoint, so this is hot)."""
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    t = _B32_PAIRS
    return (t[n >> 70] + t[n >> 60 & 1023] + t[n >> 50 & 1023] + t[n >> 40 & 1023]
            + t[n >> 30 & 1023] + t[n >> 20 & 1023] + t[n >> 10 & 1023] + t[n & 1023])


def hash8(text: str) -> str:
    """The first 8 base32 characters of sha256(text) (the nftables mode's chain names; base64's
    b32encode is pure Python and cost 0.2 s over a 10,000-Service sync)."""
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:5], "big")
    t = _B32_PAIRS
    return t[n >> 30] + t[n >> 20 & 1023] + t[n >> 10 & 1023] + t[n & 1023]


def port_proto_hash(name: str, protocol: str) -> str:
    return _hash16(name + protocol)


def endpoint_chain(name: str, protocol: str, endpoint: str) -> str:
    return "KUBE-SEP-" + _hash16(name + protocol + endpoint)


class EndpointInfo(NamedTuple):
    """One endpoint of a service port (a named tuple: a full sync makes one per endpoint, and a
    tuple is built several times faster than a frozen dataclass)."""

    ip: str
    port: int
    ready: bool
    serving: bool
    terminating: bool
    is_local: bool
    zone_hints: tuple[str, ...] | None
    chain: str
    text: str         # ip:port ([ip]:port for IPv6), as rules and comments print it


@dataclass(frozen=True)
class ServicePortInfo:
    namespace: str
    name: str
    port_name: str
    protocol: str                 # lower case, as used in rules
    cluster_ip: str
    port: int
    node_port: int
    external_ips: tuple[str, ...]
    lb_vips: tuple[str, ...]
    lb_source_ranges: tuple[str, ...]
    affinity_client_ip: bool
    affinity_timeout: int
    external_local: bool
    internal_local: bool
    health_check_node_port: int
    target_port: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    # Computed once per service port (the instance keeps them; they are not fields, so they take no
    # part in comparisons): a full sync asks for them once per endpoint.
    @functools.cached_property
    def name_string(self) -> str:
        return f"{self.namespace}/{self.name}" + (f":{self.port_name}" if self.port_name else "")

    @functools.cached_property
    def _hash(self) -> str:
        return port_proto_hash(self.name_string, self.protocol)

    def _chain(self, prefix: str) -> str:
        return prefix + self._hash

    @property
    def svc_chain(self) -> str:
        return self._chain("KUBE-SVC-")

    @property
    def svl_chain(self) -> str:
        return self._chain("KUBE-SVL-")

    @property
    def ext_chain(self) -> str:
        return self._chain("KUBE-EXT-")

    @property
    def fw_chain(self) -> str:
        return self._chain("KUBE-FW-")

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.lb_vips or self.external_ips)

    @property
    def external_policy_local(self) -> bool:
        return self.externally_accessible and self.external_local

    @property
    def uses_cluster_endpoints(self) -> bool:
        """Upstream's UsesClusterEndpoints: the Cluster internal policy, or any external destination, since
        even with the Local external policy pod and node traffic short-circuits to all endpoints."""
        return not self.internal_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_local or self.external_policy_local


@dataclass
class Snapshot:
    """All service ports of one IP family and their endpoints, at one moment."""

    ports: dict[tuple[str, str, str], ServicePortInfo] = field(default_factory=dict)
    endpoints: dict[tuple[str, str, str], list[EndpointInfo]] = field(default_factory=dict)

    def by_service(self) -> dict[str, list[tuple[str, str, str]]]:
        out: dict[str, list[tuple[str, str, str]]] = {}
        for key in self.ports:
            out.setdefault(f"{key[0]}", []).append(key)
        return out

    def fingerprint(self, service: str) -> tuple[object, ...]:
        keys = sorted(k for k in self.ports if k[0] == service)
        return tuple((self.ports[k], tuple(self.endpoints.get(k, ()))) for k in keys)


def needs_health_check(svc: Any) -> bool:
    """Upstream's NeedsHealthCheck: a health check node port serves LoadBalancer Services with the Local
    external traffic policy only."""
    return bool(svc.type == "LoadBalancer" and svc.external_traffic_policy == "Local")


def _family_of(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def snapshot(objs: Objects, hostname: str, family: int = 4) -> Snapshot:
    """The service ports and endpoints of ``family`` that kube-proxy on ``hostname`` would program."""
    snap = Snapshot()
    for svc in objs.services.values():
        for key, (info, eps) in service_ports(svc, objs.slices_for(svc.key), hostname, family).items():
            snap.ports[key] = info
            snap.endpoints[key] = eps
    return snap


def service_ports(svc: Any, slices: list[Any], hostname: str, family: int = 4,
                  sep_chains: bool = True) -> dict[tuple[str, str, str], tuple[ServicePortInfo, list[EndpointInfo]]]:
    """One Service's ports of ``family`` with their endpoints (empty for ExternalName and headless);
    ``sep_chains``: name each endpoint's iptables chain (KUBE-SEP-...; other modes leave it empty)."""
    out: dict[tuple[str, str, str], tuple[ServicePortInfo, list[EndpointInfo]]] = {}
    if svc.type == "ExternalName" or svc.headless:
        return out
    ips = [ip for ip in svc.cluster_ips if _family_of(ip) == family]
    if not ips:
        return out
    want = "IPv4" if family == 4 else "IPv6"
    slices = [es for es in slices if es.address_type == want]
    for p in svc.ports:
        info = ServicePortInfo(
            svc.namespace, svc.name, p.name, p.protocol.lower(), ips[0], p.port,
            p.node_port if svc.type in ("NodePort", "LoadBalancer") else 0,
            tuple(ip for ip in svc.external_ips if _family_of(ip) == family),
            tuple(ip for ip in svc.lb_ingress if _family_of(ip) == family and ip not in svc.lb_ingress_proxy)
            if svc.type == "LoadBalancer" else (),
            tuple(c for c in svc.lb_source_ranges if ipaddress.ip_network(c).version == family)
            if svc.type == "LoadBalancer" else (),
            svc.session_affinity == "ClientIP", svc.affinity_timeout,
            svc.external_traffic_policy == "Local", svc.internal_traffic_policy == "Local",
            svc.health_check_node_port if needs_health_check(svc) else 0, str(p.target_port))
        out[(svc.key, p.name, p.protocol)] = (info, _endpoints(info, slices, hostname, sep_chains))
    return out


def _endpoints(info: ServicePortInfo, slices: list, hostname: str, sep_chains: bool = True) -> list[EndpointInfo]:
    seen: dict[str, EndpointInfo] = {}
    for es in sorted(slices, key=lambda s: s.name):
        for ep_port in es.ports:
            if ep_port.name != info.port_name or ep_port.protocol.lower() != info.protocol:
                continue
            port = ep_port.port
            for ep in es.endpoints:
                for ip in ep.addresses[:1]:
                    text = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
                    if text in seen:
                        continue
                    seen[text] = EndpointInfo(ip, port, ep.ready, ep.serving, ep.terminating,
                                              ep.node_name == hostname,
                                              tuple(ep.hint_zones) if ep.hint_zones is not None else None,
                                              endpoint_chain(info.name_string, info.protocol, text)
                                              if sep_chains else "", text)
    return [seen[k] for k in sorted(seen)]


@dataclass
class Categorized:
    cluster: list[EndpointInfo]
    local: list[EndpointInfo]
    reachable: list[EndpointInfo]
    has_any: bool


def categorize(info: ServicePortInfo, endpoints: list[EndpointInfo], zone: str = "") -> Categorized:
    """Which endpoints Cluster and Local policies use (upstream's CategorizeEndpoints)."""
    cluster: list[EndpointInfo] = []
    local: list[EndpointInfo] = []
    has_any = False
    if info.uses_cluster_endpoints:
        topo = bool(zone) and bool(endpoints) and all(e.zone_hints is not None for e in endpoints if e.ready) and \
            any(zone in (e.zone_hints or ()) for e in endpoints if e.ready)
        cluster = [e for e in endpoints if e.ready and (not topo or zone in (e.zone_hints or ()))]
        if not cluster:
            cluster = [e for e in endpoints if e.serving and e.terminating]
        has_any = bool(cluster)
    if not info.uses_local_endpoints:
        return Categorized(cluster, [], cluster, has_any)
    local_ready = any(e.ready and e.is_local for e in endpoints)
    local_st = any(e.serving and e.terminating and e.is_local and not e.ready for e in endpoints)
    has_any = has_any or any(e.ready or (e.serving and e.terminating) for e in endpoints)
    if local_ready:
        local = [e for e in endpoints if e.is_local and e.ready]
    elif local_st:
        local = [e for e in endpoints if e.is_local and e.serving and e.terminating]
    if not info.uses_cluster_endpoints:
        return Categorized([], local, local, has_any)
    if not local:
        return Categorized(cluster, local, cluster, has_any)
    merged = {e.text: e for e in cluster}
    merged.update({e.text: e for e in local})
    return Categorized(cluster, local, [merged[k] for k in sorted(merged)], has_any)
