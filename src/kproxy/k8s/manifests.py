"""Objects from manifest files: single objects, ``List`` documents and multi-document YAML.

``kubectl get svc,endpointslices,nodes,servicecidrs -A -o yaml`` output loads as is. A YAML syntax error stops
the load with ``file:line:col``; an invalid object is reported (namespace/name and field) and
skipped, so the others still load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kproxy.k8s.objects import EndpointSlice, Node, ObjectError, Service, ServiceCIDR
from kproxy.yamlfile import load_yaml


class ManifestError(ValueError):
    """A manifest file that cannot be read or parsed at all."""


@dataclass
class Objects:
    """The objects a proxier works from, indexed by Service, with the Services changed since the last sync.

    ``dirty`` holds the keys (``ns/name``) of Services whose spec or EndpointSlices changed since a
    proxier last took them (``None``: unknown, treat everything as changed), like the change
    trackers upstream kube-proxy feeds from its informers.
    """

    services: dict[str, Service] = field(default_factory=dict)
    slices: dict[str, EndpointSlice] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # ServiceCIDRs by name; None when the source carries none at all (then a proxier keeps the ranges
    # it was configured with), {} when it does and there are none.
    service_cidrs: dict[str, ServiceCIDR] | None = None
    dirty: set[str] | None = None
    # Service key -> when its endpoints changed upstream (EndpointSlice trigger-time annotations), for
    # the network programming latency: taken by the sync that programs them.
    trigger_times: dict[str, list[float]] = field(default_factory=dict)
    _by_service: dict[str, dict[str, EndpointSlice]] = field(default_factory=dict, repr=False)
    _origin: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)   # (kind, key) -> where loaded

    def service_cidr_ranges(self) -> list[str] | None:
        """Every range of every ServiceCIDR, each once, in name order (what upstream's ServiceCIDRConfig
        hands its proxiers); None when the source carries no ServiceCIDRs."""
        if self.service_cidrs is None:
            return None
        out: list[str] = []
        for name in sorted(self.service_cidrs):
            out += [c for c in self.service_cidrs[name].cidrs if c not in out]
        return out

    def update_service_cidr(self, sc: ServiceCIDR) -> bool:
        """Store a ServiceCIDR; True if that changed the ranges."""
        before = self.service_cidr_ranges()
        if self.service_cidrs is None:
            self.service_cidrs = {}
        self.service_cidrs[sc.name] = sc
        return self.service_cidr_ranges() != before

    def delete_service_cidr(self, name: str) -> bool:
        before = self.service_cidr_ranges()
        if self.service_cidrs is not None:
            self.service_cidrs.pop(name, None)
        return self.service_cidr_ranges() != before

    def slices_for(self, service_key: str) -> list[EndpointSlice]:
        return list(self._by_service.get(service_key, {}).values())

    def _mark(self, service_key: str) -> None:
        if self.dirty is not None:
            self.dirty.add(service_key)

    def update_service(self, svc: Service) -> None:
        self.services[svc.key] = svc
        self._mark(svc.key)

    def delete_service(self, key: str) -> None:
        self.services.pop(key, None)
        self._mark(key)

    def update_slice(self, es: EndpointSlice) -> None:
        old = self.slices.get(es.key)
        if old is not None:
            self._by_service.get(f"{old.namespace}/{old.service}", {}).pop(es.key, None)
            self._mark(f"{old.namespace}/{old.service}")
        self.slices[es.key] = es
        self._by_service.setdefault(f"{es.namespace}/{es.service}", {})[es.key] = es
        self._mark(f"{es.namespace}/{es.service}")

    def delete_slice(self, key: str) -> None:
        old = self.slices.pop(key, None)
        if old is not None:
            self._by_service.get(f"{old.namespace}/{old.service}", {}).pop(key, None)
            self._mark(f"{old.namespace}/{old.service}")

    def changes_since(self, old: Objects) -> set[str]:
        """Service keys whose Service or EndpointSlices differ between ``old`` and this snapshot."""
        keys = set(self.services) | set(old.services) | set(self._by_service) | set(old._by_service)
        return {k for k in keys if self.services.get(k) != old.services.get(k)
                or self._by_service.get(k, {}) != old._by_service.get(k, {})}

    def add(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            self.warnings.append(f"{where}: not an object")
            return
        kind = obj.get("kind")
        try:
            if kind == "List" or (isinstance(kind, str) and kind.endswith("List") and "items" in obj):
                for i, item in enumerate(obj.get("items") or []):
                    self.add(item, f"{where}: items[{i}]")
            elif kind == "Service":
                svc = Service.from_dict(obj)
                if self._first(("Service", svc.key), where):
                    self.update_service(svc)
            elif kind == "EndpointSlice":
                es = EndpointSlice.from_dict(obj)
                if self._first(("EndpointSlice", es.key), where):
                    self.update_slice(es)
            elif kind == "Node":
                node = Node.from_dict(obj)
                if self._first(("Node", node.name), where):
                    self.nodes[node.name] = node
            elif kind == "ServiceCIDR":
                sc = ServiceCIDR.from_dict(obj)
                if self._first(("ServiceCIDR", sc.name), where):
                    self.update_service_cidr(sc)
        except (ObjectError, AttributeError, TypeError, ValueError) as exc:    # malformed: skipped, as the API would
            self.warnings.append(f"{where}: {exc}")

    def _first(self, ident: tuple[str, str], where: str) -> bool:
        """True the first time an object is loaded; a second copy is reported and skipped."""
        first = self._origin.setdefault(ident, where)
        if first != where:
            self.warnings.append(f"{where}: {ident[0]} {ident[1]}: duplicate of the one in {first}; skipped")
            return False
        return True


def manifest_files(path: str | os.PathLike[str]) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml", ".json") and f.is_file())
    if not p.exists():
        raise ManifestError(f"{p}: no such file or directory")
    return [p]


def load(path: str | os.PathLike[str], objects: Objects | None = None) -> Objects:
    """Load every object under ``path`` (a file or a directory of .yaml/.yml/.json files)."""
    out = objects or Objects()
    for f in manifest_files(path):
        add_documents(out, f, load_yaml(f, ManifestError, all_documents=True))
    return out


def add_documents(out: Objects, source: Path, docs: list[Any]) -> None:
    """The objects of one file's parsed documents, each named by file (and document number) in warnings."""
    for i, doc in enumerate(docs):
        if doc is not None:
            out.add(doc, f"{source}" + (f" (document {i + 1})" if len(docs) > 1 else ""))


def fingerprint(path: str | os.PathLike[str]) -> tuple[tuple[str, float, int], ...]:
    """What changes when a manifest changes (names, mtimes, sizes): the watcher polls this."""
    try:
        return tuple((str(f), f.stat().st_mtime, f.stat().st_size) for f in manifest_files(path))
    except (ManifestError, OSError):
        return ()
