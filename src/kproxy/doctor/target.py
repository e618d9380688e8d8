"""What the user asked about (``ns/name[:port]`` or ``address:port``) and the world doctor looks at.

A ``Case`` gathers the node, the objects, the proxy configuration and the Service ports in question,
computed once (as kube-proxy on this node computes them) and read by every check.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from kproxy.k8s.manifests import ManifestError, Objects, add_documents, manifest_files
from kproxy.k8s.objects import Service
from kproxy.node import Node
from kproxy.packet import format_addr
from kproxy.proxy.serviceports import EndpointInfo, ServicePortInfo, service_ports
from kproxy.yamlfile import load_yaml


class TargetError(ValueError):
    """A target doctor cannot even parse (one line, naming the argument)."""


@dataclass
class Pod:
    namespace: str
    name: str
    labels: dict[str, str]
    ip: str
    node_name: str
    phase: str
    ready: bool | None          # the Ready condition; None when the manifest does not say

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Case:
    """The node and objects one doctor run works from, and the Service ports it is about."""

    node: Node
    objs: Objects
    cfg: Any                               # kproxy.proxy.config.ProxyConfig
    hostname: str
    target: str
    service: Service | None = None
    ports: list[tuple[ServicePortInfo, list[EndpointInfo]]] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    pods_known: bool = False               # the manifests hold Pod objects at all
    problem: str = ""                      # why no Service matched the target
    cfg_given: bool = False                # the configuration came from a file (its mode is a claim)

    def node_ips(self) -> list[str]:
        return [format_addr(a.addr, a.family) for i in self.node.interfaces.values() for a in i.addresses
                if a.family == 4 and i.name != "lo" and not i.name.startswith("kube-ipvs")]


def load_objects(manifests: str) -> tuple[Objects, list[Pod]]:
    """The objects kube-proxy reads and the Pod objects (doctor matches selectors against them), from one
    parse of the manifests."""
    objs = Objects()
    pods: list[Pod] = []
    for f in manifest_files(manifests):
        docs = load_yaml(f, ManifestError, all_documents=True)
        add_documents(objs, f, docs)
        for doc in docs:
            _pods(doc, pods)
    return objs, pods


def _pods(obj: Any, out: list[Pod]) -> None:
    if not isinstance(obj, dict):
        return
    kind = obj.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(obj.get("items"), list):
        for item in obj["items"]:
            _pods(item, out)
        return
    if kind != "Pod":
        return
    meta, spec, status = (_mapping(obj.get(k)) for k in ("metadata", "spec", "status"))
    conditions = status.get("conditions")
    conds = {c.get("type"): c.get("status") for c in conditions if isinstance(c, dict)} \
        if isinstance(conditions, list) else {}
    ready = None if "Ready" not in conds else conds["Ready"] == "True"
    out.append(Pod(str(meta.get("namespace") or "default"), str(meta.get("name") or "?"),
                   {str(k): str(v) for k, v in _mapping(meta.get("labels")).items()},
                   str(status.get("podIP") or ""), str(spec.get("nodeName") or ""),
                   str(status.get("phase") or ""), ready))


def _mapping(value: Any) -> dict[Any, Any]:
    """A manifest field that should be a mapping; {} for any other shape (a bad object is skipped, not a crash)."""
    return value if isinstance(value, dict) else {}


def _split_port(text: str) -> tuple[str, str]:
    """``host:port`` (``[v6]:port``), ``ns/name:port`` or a bare name."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest.lstrip(":")
    if text.count(":") > 1:
        return text, ""
    host, _, port = text.partition(":")
    return host, port


def _is_addr(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def resolve(case: Case) -> None:
    """Fill ``case.service`` and ``case.ports`` from ``case.target``; ``case.problem`` when none matches."""
    host, port = _split_port(case.target)
    if not host:
        raise TargetError(f"SERVICE: {case.target!r}: give namespace/name[:port] or address:port")
    if _is_addr(host):
        if not port.isdigit():
            raise TargetError(f"SERVICE: {case.target!r}: an address needs a port number (address:port)")
        _by_address(case, host, int(port))
        return
    key = host if "/" in host else f"default/{host}"
    svc = case.objs.services.get(key)
    if svc is None:
        case.problem = f"no Service {key} in the objects"
        return
    case.service = svc
    ports = _ports_of(case, svc)
    if port:
        ports = [(i, e) for i, e in ports if port in (i.port_name, str(i.port))]
        if not ports:
            names = ", ".join(p.name or str(p.port) for p in svc.ports) or "none"
            case.problem = f"Service {key} has no port {port!r} (its ports: {names})"
    case.ports = ports


def _ports_of(case: Case, svc: Service) -> list[tuple[ServicePortInfo, list[EndpointInfo]]]:
    return list(service_ports(svc, case.objs.slices_for(svc.key), case.hostname).values())


def _by_address(case: Case, addr: str, port: int) -> None:
    local = addr in case.node_ips()
    for svc in case.objs.services.values():
        for info, eps in _ports_of(case, svc):
            vips = (info.cluster_ip, *info.external_ips, *info.lb_vips)
            if (addr in vips and info.port == port) or (local and info.node_port == port):
                case.service = svc
                case.ports.append((info, eps))
    if case.service is None:
        case.problem = f"no Service has {addr}:{port} as its cluster IP, external IP, load-balancer IP" + \
            (" or node port" if local else " (and it is not an address of this node, so no node port)")
