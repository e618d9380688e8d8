"""What changed since the last sync: Services and their endpoints, as every proxier mode needs it.

Upstream's ServiceChangeTracker and EndpointsChangeTracker keep, per Service, the service ports and
endpoints the proxier last programmed and hand each sync only what changed, with before and after
views (for stale-conntrack cleanup and metrics). Here one tracker does both, per IP family: a
Service is recomputed when the objects mark it dirty (or on a full sync), and counts as changed when
its ports or endpoints differ from what the last successful sync programmed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kproxy.k8s.manifests import Objects
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.serviceports import EndpointInfo, ServicePortInfo, Snapshot, service_ports

PortKey = tuple[str, str, str]
ServicePorts = dict[PortKey, tuple[ServicePortInfo, list[EndpointInfo]]]


@dataclass
class Changes:
    """One sync's view of the Services: which were recomputed, which really changed, and how."""

    recomputed: dict[str, ServicePorts] = field(default_factory=dict)   # key -> its ports now ({} = gone)
    changed: set[str] = field(default_factory=set)
    before: Snapshot = field(default_factory=Snapshot)
    after: Snapshot = field(default_factory=Snapshot)
    ports_set_changed: bool = False     # some Service gained or lost a service port (order may move)


class ChangeTracker:
    """The service ports and endpoints of one family as last programmed, and what differs from them."""

    def __init__(self, cfg: ProxyConfig, family: int = 4, sep_chains: bool = True) -> None:
        self.cfg = cfg          # read at each update: the node's name (hostnameOverride) decides local endpoints
        self.family = family
        self.sep_chains = sep_chains  # endpoints name their iptables chains (a hash each: iptables mode only)
        self.ports: dict[str, ServicePorts] = {}
        self._fingerprints: dict[str, tuple[object, ...]] = {}
        # What the current update replaced, per Service (None: it had nothing), until commit or
        # rollback: undoing a failed sync costs what the sync changed, not what the cluster holds.
        self._undo: dict[str, tuple[ServicePorts | None, tuple[object, ...] | None]] = {}

    def update(self, objs: Objects, full: bool) -> Changes:
        """Recompute the Services the objects marked dirty (all of them on a full sync).

        The previous state is kept until ``commit`` or ``rollback``: a failed sync must be retried
        against what the dataplane really holds."""
        self._undo = {}
        dirty = None if full or objs.dirty is None else set(objs.dirty)
        keys = set(objs.services) | set(self.ports) if dirty is None else dirty
        out = Changes()
        for key in keys:
            svc = objs.services.get(key)
            ports = service_ports(svc, objs.slices_for(key), self.cfg.hostname, self.family, self.sep_chains) \
                if svc else {}
            fp = tuple((k, info, tuple(eps)) for k, (info, eps) in sorted(ports.items()))
            old = self.ports.get(key)
            same = self._fingerprints.get(key) == fp
            if same and not full and key in self.ports:
                continue
            if not same:
                out.changed.add(key)
                for k, (info, eps) in (old or {}).items():
                    out.before.ports[k], out.before.endpoints[k] = info, eps
                for k, (info, eps) in ports.items():
                    out.after.ports[k], out.after.endpoints[k] = info, eps
            if set(ports) != set(old or {}):
                out.ports_set_changed = True
            out.recomputed[key] = ports
            self._undo[key] = (old, self._fingerprints.get(key))
            if ports:
                self.ports[key] = ports
                self._fingerprints[key] = fp
            else:
                self.ports.pop(key, None)
                self._fingerprints.pop(key, None)
        if objs.dirty is not None:
            objs.dirty.clear()
        return out

    def commit(self) -> None:
        """The sync that used the last ``update`` succeeded."""
        self._undo = {}

    def rollback(self) -> None:
        """The sync that used the last ``update`` failed: forget what it recomputed."""
        for key, (ports, fp) in self._undo.items():
            if ports is None:
                self.ports.pop(key, None)
            else:
                self.ports[key] = ports
            if fp is None:
                self._fingerprints.pop(key, None)
            else:
                self._fingerprints[key] = fp
        self._undo = {}
