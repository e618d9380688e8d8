"""The Kubernetes objects kube-proxy reads: Service, EndpointSlice (discovery.k8s.io/v1), Node and
ServiceCIDR (networking.k8s.io/v1).

Parsing validates the fields kube-proxy relies on and raises ``ObjectError`` naming the object
(``namespace/name``) and the field, so one bad object can be reported and skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kproxy.k8s.sloppyip import canonical_cidr, canonical_ip, parse_cidr

PROTOCOLS = ("TCP", "UDP", "SCTP")
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"


class ObjectError(ValueError):
    """A Kubernetes object kproxy cannot use: ``ns/name: field: reason``."""


# Object names as the API server validates them (apimachinery's IsDNS1035Label / IsDNS1123Label /
# IsDNS1123Subdomain): kube-proxy never sees others, and they end up in chain comments.
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_RULES = {
    "dns1035": (_DNS1035, 63, "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start "
                "with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
                "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"),
    "dns1123label": (_DNS1123_LABEL, 63, "a lowercase RFC 1123 label must consist of lower case alphanumeric "
                     "characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  "
                     "or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"),
    "dns1123subdomain": (_DNS1123_SUBDOMAIN, 253, "a lowercase RFC 1123 subdomain must consist of lower case "
                         "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character "
                         "(e.g. 'example.com', regex used for validation is "
                         "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"),
}


def _meta_names(obj: dict[str, Any], kind: str, rule: str, namespaced: bool = True) -> tuple[str, str]:
    """``(namespace, name)`` of an object, checked as the API server checks them; ObjectError otherwise."""
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ObjectError(f"{kind} ?: metadata: must be a mapping")
    ns = str(meta.get("namespace") or "default") if namespaced else ""
    name = meta.get("name")
    label = f"{kind} {ns}/" if namespaced else f"{kind} "
    if not name:
        raise ObjectError(f"{label}?: metadata.name: required")
    name = str(name)
    for field_name, value, which in (("metadata.namespace", ns, "dns1123label"), ("metadata.name", name, rule)):
        if field_name == "metadata.namespace" and not namespaced:
            continue
        pattern, limit, why = _NAME_RULES[which]
        quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(value) > limit:
            raise ObjectError(f"{label}{quoted}: {field_name}: Invalid value: {quoted}: must be no more than "
                              f"{limit} characters")
        if not pattern.fullmatch(value):
            raise ObjectError(f"{label}{quoted}: {field_name}: Invalid value: {quoted}: {why}")
    return ns, name


def _req(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d or d[key] in (None, ""):
        raise ObjectError(f"{where}: {key}: required")
    return d[key]


def _ip(value: Any, where: str) -> str:
    """An address written canonically; leading zeros are read as upstream reads them (``ParseIPSloppy``)."""
    try:
        return canonical_ip(str(value))
    except ValueError:
        raise ObjectError(f"{where}: invalid IP address {value!r}") from None


def _cidr(value: Any, where: str) -> str:
    try:
        return canonical_cidr(str(value).strip())
    except ValueError:
        raise ObjectError(f"{where}: invalid CIDR {value!r}") from None


def _port(value: Any, where: str, allow_zero: bool = False) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ObjectError(f"{where}: must be a port number, not {value!r}") from None
    if not (0 if allow_zero else 1) <= n <= 65535:
        raise ObjectError(f"{where}: {n} is out of range")
    return n


@dataclass
class ServicePort:
    name: str
    port: int
    protocol: str = "TCP"
    target_port: int | str = 0
    node_port: int = 0


@dataclass
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ips: list[str] = field(default_factory=list)
    ports: list[ServicePort] = field(default_factory=list)
    external_ips: list[str] = field(default_factory=list)
    lb_ingress: list[str] = field(default_factory=list)
    # Ingress IPs with ipMode "Proxy": the load balancer proxies to the node, so kube-proxy leaves them alone.
    lb_ingress_proxy: list[str] = field(default_factory=list)
    lb_source_ranges: list[str] = field(default_factory=list)
    session_affinity: str = "None"
    affinity_timeout: int = 10800
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    health_check_node_port: int = 0
    ip_families: list[str] = field(default_factory=list)
    selector: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        return not self.cluster_ips or self.cluster_ips[0] == "None"

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Service:
        ns, name = _meta_names(obj, "Service", "dns1035")
        where = f"Service {ns}/{name}"
        spec = obj.get("spec") or {}
        if not isinstance(spec, dict):
            raise ObjectError(f"{where}: spec: must be a mapping")
        svc = cls(ns, name, str(spec.get("type") or "ClusterIP"))
        if svc.type not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            raise ObjectError(f"{where}: spec.type: unsupported value {svc.type!r}")
        ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
        svc.cluster_ips = [ip if ip == "None" else _ip(ip, f"{where}: spec.clusterIPs") for ip in ips]
        for i, p in enumerate(spec.get("ports") or []):
            pw = f"{where}: spec.ports[{i}]"
            if not isinstance(p, dict):
                raise ObjectError(f"{pw}: must be a mapping")
            proto = str(p.get("protocol") or "TCP")
            if proto not in PROTOCOLS:
                raise ObjectError(f"{pw}.protocol: unsupported value {proto!r}")
            svc.ports.append(ServicePort(str(p.get("name") or ""), _port(_req(p, "port", pw), f"{pw}.port"), proto,
                                         p.get("targetPort") or p["port"],
                                         _port(p.get("nodePort") or 0, f"{pw}.nodePort", allow_zero=True)))
        svc.external_ips = [_ip(ip, f"{where}: spec.externalIPs") for ip in spec.get("externalIPs") or []]
        status = (obj.get("status") or {}).get("loadBalancer") or {}
        svc.lb_ingress = [_ip(i["ip"], f"{where}: status.loadBalancer.ingress") for i in status.get("ingress") or []
                          if isinstance(i, dict) and i.get("ip")]
        svc.lb_ingress_proxy = [ip for ip, i in zip(svc.lb_ingress, (i for i in status.get("ingress") or []
                                                                     if isinstance(i, dict) and i.get("ip")),
                                                    strict=True) if i.get("ipMode") == "Proxy"]
        svc.lb_source_ranges = [_cidr(c, f"{where}: spec.loadBalancerSourceRanges")
                                for c in spec.get("loadBalancerSourceRanges") or []]
        svc.session_affinity = str(spec.get("sessionAffinity") or "None")
        if svc.session_affinity not in ("None", "ClientIP"):
            raise ObjectError(f"{where}: spec.sessionAffinity: unsupported value {svc.session_affinity!r}")
        cfg = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {})
        svc.affinity_timeout = int(cfg.get("timeoutSeconds") or 10800)
        svc.external_traffic_policy = str(spec.get("externalTrafficPolicy") or "Cluster")
        svc.internal_traffic_policy = str(spec.get("internalTrafficPolicy") or "Cluster")
        for key, val in (("externalTrafficPolicy", svc.external_traffic_policy),
                         ("internalTrafficPolicy", svc.internal_traffic_policy)):
            if val not in ("Cluster", "Local"):
                raise ObjectError(f"{where}: spec.{key}: unsupported value {val!r}")
        svc.health_check_node_port = _port(spec.get("healthCheckNodePort") or 0, f"{where}: spec.healthCheckNodePort",
                                           allow_zero=True)
        svc.ip_families = [str(f) for f in spec.get("ipFamilies") or []]
        svc.selector = {str(k): str(v) for k, v in (spec.get("selector") or {}).items()}
        return svc


@dataclass
class Endpoint:
    addresses: list[str]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    zone: str = ""
    hint_zones: list[str] | None = None


@dataclass
class EndpointPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass
class EndpointSlice:
    namespace: str
    name: str
    service: str
    address_type: str = "IPv4"
    endpoints: list[Endpoint] = field(default_factory=list)
    ports: list[EndpointPort] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> EndpointSlice:
        ns, name = _meta_names(obj, "EndpointSlice", "dns1123subdomain")
        where = f"EndpointSlice {ns}/{name}"
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        service = labels.get("kubernetes.io/service-name")
        if not service:
            raise ObjectError(f"{where}: metadata.labels: kubernetes.io/service-name: required")
        addr_type = str(obj.get("addressType") or "IPv4")
        if addr_type not in ("IPv4", "IPv6", "FQDN"):
            raise ObjectError(f"{where}: addressType: unsupported value {addr_type!r}")
        es = cls(ns, name, str(service), addr_type)
        for i, e in enumerate(obj.get("endpoints") or []):
            ew = f"{where}: endpoints[{i}]"
            if not isinstance(e, dict):
                raise ObjectError(f"{ew}: must be a mapping")
            addrs = e.get("addresses") or []
            if addr_type != "FQDN":
                addrs = [_ip(a, f"{ew}.addresses") for a in addrs]
                for j, a in enumerate(addrs):
                    # the API server's validation: every address of the slice's own family
                    if (":" in a) != (addr_type == "IPv6"):
                        raise ObjectError(f"{ew}.addresses[{j}]: invalid value {a!r}: must be a valid "
                                          f"{addr_type} address")
            cond = e.get("conditions") or {}
            ready = cond.get("ready")
            serving = cond.get("serving")
            hints = e.get("hints") or {}
            zones = [str(z.get("name")) for z in hints.get("forZones") or []] if hints.get("forZones") else None
            es.endpoints.append(Endpoint(list(addrs), ready is None or bool(ready),
                                         serving is None or bool(serving), bool(cond.get("terminating")),
                                         str(e.get("nodeName") or ""), str(e.get("zone") or ""), zones))
        for i, p in enumerate(obj.get("ports") or []):
            pw = f"{where}: ports[{i}]"
            if not isinstance(p, dict) or p.get("port") is None:
                raise ObjectError(f"{pw}.port: required")
            es.ports.append(EndpointPort(str(p.get("name") or ""), _port(p["port"], f"{pw}.port"),
                                         str(p.get("protocol") or "TCP")))
        return es


@dataclass
class Node:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    addresses: list[str] = field(default_factory=list)
    pod_cidrs: list[str] = field(default_factory=list)
    deleting: bool = False       # deletionTimestamp set, or tainted for removal by the cluster autoscaler

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Node:
        _, name = _meta_names(obj, "Node", "dns1123subdomain", namespaced=False)
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        addrs = [str(a.get("address")) for a in (obj.get("status") or {}).get("addresses") or []
                 if isinstance(a, dict) and a.get("type") in ("InternalIP", "ExternalIP")]
        cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        taints = [t for t in spec.get("taints") or [] if isinstance(t, dict)]
        deleting = bool(meta.get("deletionTimestamp")) or any(t.get("key") == TO_BE_DELETED_TAINT for t in taints)
        return cls(name, {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}, addrs,
                   [_cidr(c, f"Node {name}: spec.podCIDRs") for c in cidrs], deleting)


@dataclass
class ServiceCIDR:
    """A networking.k8s.io/v1 ServiceCIDR: ranges the API server allocates ClusterIPs from.

    kube-proxy's nftables mode drops traffic to addresses in these ranges that no Service holds,
    so a ClusterIP that was never allocated does not leak out of the node towards the default route.
    """

    name: str
    cidrs: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ServiceCIDR:
        _, name = _meta_names(obj, "ServiceCIDR", "dns1123subdomain", namespaced=False)
        where = f"ServiceCIDR {name}"
        spec = obj.get("spec") or {}
        if not isinstance(spec, dict):
            raise ObjectError(f"{where}: spec: must be a mapping")
        raw = spec.get("cidrs") or []
        if not isinstance(raw, list) or not raw:
            raise ObjectError(f"{where}: spec.cidrs: Required value: at least one CIDR required")
        if len(raw) > 2:
            raise ObjectError(f"{where}: spec.cidrs: Too many: {len(raw)}: must have at most 2 items")
        cidrs = [_strict_cidr(c, f"{where}: spec.cidrs[{i}]") for i, c in enumerate(raw)]
        if len(cidrs) == 2 and parse_cidr(cidrs[0]).version == parse_cidr(cidrs[1]).version:
            raise ObjectError(f"{where}: spec.cidrs[1]: Invalid value: {cidrs[1]!r}: may specify no more than one "
                              f"CIDR for each IP family")
        return cls(name, cidrs)


def _strict_cidr(value: Any, where: str) -> str:
    """A CIDR as the API server accepts it for a ServiceCIDR: the network address, written canonically."""
    text = str(value)
    canonical = _cidr(text, where)
    if canonical != text:
        raise ObjectError(f"{where}: Invalid value: {text!r}: must be in canonical form ({canonical!r})")
    return canonical
