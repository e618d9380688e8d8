"""Objects from the API server, listed and watched as client-go's informers do.

One reflector thread per resource (Services, EndpointSlices, this Node, ServiceCIDRs): list (resourceVersion "0"
at first, so the watch cache may answer; later the last one seen, or "" after it expired), remember
the list's resourceVersion, watch from it with ``allowWatchBookmarks`` and a random 5-10 minute
``timeoutSeconds``; a stream that ends, or a connection dropped mid-stream, is watched again from
the last resourceVersion seen (events and bookmarks advance it), after a short wait for the latter;
``410 Gone`` (expired) relists; any other error waits an exponential backoff (0.8 s doubling to
30 s, with jitter, reset by a good list) and relists.
Every resync period the reflector's store (what was listed and watched) is replayed, as an
informer's resync does; it changes nothing unless the objects and the store drifted apart. Events go through a queue to the sync loop's thread, which
applies them to ``Objects``: only Services whose spec or EndpointSlices really changed become dirty.

Transport, authentication and configuration are the official ``kubernetes`` client's; the JSON is
read as is (``_preload_content=False``), not through its model classes: kproxy's objects parse from
the JSON form, and the models cost five times the JSON decoding (0.68 s against 0.14 s for a list of
10,000 Services, measured here).
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kproxy.k8s.manifests import Objects
from kproxy.k8s.objects import EndpointSlice, Node, ObjectError, Service, ServiceCIDR
from kproxy.k8s.source import SourceError

log = logging.getLogger("kproxy.k8s")

# What kube-proxy watches: not Services another proxy implements, not headless ones.
PROXY_LABEL_SELECTOR = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
BACKOFF_INITIAL, BACKOFF_MAX = 0.8, 30.0
WATCH_TIMEOUT = (300, 600)


class ApiSetupError(ValueError):
    """No usable client configuration (kubeconfig unreadable, not in a cluster, ...)."""


def api_client(kubeconfig: str = "", master: str = "") -> Any:
    """An ApiClient configured as kube-proxy configures its client: from ``kubeconfig`` with ``master``
    overriding its server, from ``master`` alone, or (neither given) from the Pod's service account."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    conf = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=conf, persist_config=False)
        elif not master:
            log.warning("neither --kubeconfig nor --master was specified; using the in-cluster configuration")
            config.load_incluster_config(client_configuration=conf)
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        where = kubeconfig or "in-cluster configuration"
        raise ApiSetupError(f"{where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if master:
        conf.host = master.rstrip("/")
    return client.ApiClient(conf)


def _rfc3339(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Reflector:
    """Keeps one resource's objects mirrored: list, then watch; events go to ``out``."""

    def __init__(self, kind: str, list_fn: Callable[..., Any], out: queue.Queue[tuple[str, str, Any]],
                 stop: threading.Event, resync: float = 0.0, label_selector: str = "",
                 field_selector: str = "", backoff: tuple[float, float] = (BACKOFF_INITIAL, BACKOFF_MAX),
                 watch_timeout: tuple[int, int] = WATCH_TIMEOUT) -> None:
        self.kind = kind
        self.list_fn = list_fn
        self.out = out
        self.stop = stop
        self.resync = resync
        self.selectors = {k: v for k, v in (("label_selector", label_selector),
                                            ("field_selector", field_selector)) if v}
        self.backoff = backoff
        self.watch_timeout = watch_timeout
        self.store: dict[str, dict[str, Any]] = {}
        self.rv = ""
        self.rv_unavailable = False          # the last resourceVersion expired: relist with a consistent read
        self.synced = threading.Event()
        self.lists = 0
        self.errors = 0
        self._resp: Any = None
        self.lock = threading.Lock()         # the store, between the watch and the resync threads
        self.thread = threading.Thread(target=self.run, daemon=True, name=f"reflector {kind}")

    def start(self) -> Reflector:
        self.thread.start()
        if self.resync > 0:
            threading.Thread(target=self._resync_loop, daemon=True, name=f"resync {self.kind}").start()
        return self

    def _resync_loop(self) -> None:
        """Replay the store every resync period, as an informer's resync does (independent of the
        watch, which may stay open for minutes)."""
        while not self.stop.wait(self.resync):
            if self.synced.is_set():
                with self.lock:          # in order with the watch's events: never a stale copy after a new one
                    for obj in self.store.values():
                        self.out.put((self.kind, "RESYNC", obj))

    def close(self) -> None:
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()
            except Exception:  # noqa: BLE001 - the stream may be gone already; we are stopping anyway
                pass

    def run(self) -> None:
        delay = self.backoff[0]
        while not self.stop.is_set():
            try:
                self._list()
                delay = self.backoff[0]
                self._watch()                     # returns when the list is too old: relist now
            except Exception as exc:  # noqa: BLE001 - any failure of the API or the network: back off
                if self.stop.is_set():
                    return
                self.errors += 1
                log.warning("%s: %s; retrying in %.1fs", self.kind, _describe(exc), delay)
                self.stop.wait(delay * (1 + 0.2 * random.random()))
                delay = min(delay * 2, self.backoff[1])

    def relist_resource_version(self) -> str:
        """What a list asks for, as client-go's reflector: "0" first (the API server's watch cache
        may answer), then the last resourceVersion seen, and "" (a consistent read from etcd) once
        that one has expired."""
        if self.rv_unavailable:
            return ""
        return self.rv or "0"

    def _list(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.list_fn(resource_version=self.relist_resource_version(), _preload_content=False,
                                **self.selectors)
        except ApiException as exc:
            if exc.status == 410:
                self.rv_unavailable = True
            raise
        try:
            body = json.loads(resp.data)
        finally:
            resp.release_conn()
        self.lists += 1
        self.rv_unavailable = False
        items = {_key(o): o for o in body.get("items") or []}
        with self.lock:
            for key in set(self.store) - set(items):
                self.out.put((self.kind, "DELETED", self.store.pop(key)))
            for key, obj in items.items():
                old = self.store.get(key)
                if old is None or old.get("metadata", {}).get("resourceVersion") != \
                        obj["metadata"].get("resourceVersion"):
                    self.store[key] = obj
                    self.out.put((self.kind, "MODIFIED" if old is not None else "ADDED", obj))
        self.rv = str((body.get("metadata") or {}).get("resourceVersion") or "")
        self.synced.set()
        self.out.put((self.kind, "SYNCED", None))

    def _watch(self) -> None:
        from kubernetes.watch.watch import iter_resp_lines
        from urllib3.exceptions import ProtocolError, ReadTimeoutError

        while not self.stop.is_set():
            timeout = random.randint(*self.watch_timeout)
            resp = self.list_fn(watch=True, resource_version=self.rv, allow_watch_bookmarks=True,
                                timeout_seconds=timeout, _preload_content=False,
                                _request_timeout=(10, timeout + 30), **self.selectors)
            self._resp = resp
            try:
                for line in iter_resp_lines(resp):
                    if line and self._event(json.loads(line)):
                        return
            except (ProtocolError, ReadTimeoutError, OSError) as exc:
                if self.stop.is_set():
                    return
                self.errors += 1
                log.info("%s: watch dropped (%s); resuming from %s", self.kind, _describe(exc), self.rv)
                self.stop.wait(self.backoff[0] * (1 + 0.2 * random.random()))
            finally:
                self._resp = None
                resp.release_conn()

    def _event(self, ev: dict[str, Any]) -> bool:
        """Apply one watch event; True when the watch must end and the resource be listed again."""
        typ, obj = ev.get("type"), ev.get("object") or {}
        if typ == "ERROR":
            if obj.get("code") == 410:
                log.info("%s: watch expired (%s); relisting", self.kind, obj.get("message", "410 Gone"))
                self.rv_unavailable = True
                return True
            raise WatchError(f"watch error {obj.get('code')}: {obj.get('message')}")
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if typ in ("ADDED", "MODIFIED", "DELETED"):
            with self.lock:
                if typ == "DELETED":
                    self.store.pop(_key(obj), None)
                else:
                    self.store[_key(obj)] = obj
                self.out.put((self.kind, str(typ), obj))
        if rv:
            self.rv = rv
        return False


class WatchError(RuntimeError):
    """The API server ended a watch with an error other than 410 Gone."""


def _key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status is not None:
        return f"API error {status} {reason or ''}".strip()
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


class ApiSource:
    """Services, EndpointSlices, this Node and the ServiceCIDRs from the API server, as a ``Source`` of
    the sync loop. The first sync waits for the first three only (upstream's proxier is ready once
    Services and EndpointSlices are): a cluster without the ServiceCIDR API still gets its rules."""

    def __init__(self, client: Any, node_name: str, stop: threading.Event | None = None,
                 resync: float = 900.0, **reflector_options: Any) -> None:
        from kubernetes import client as k8s

        self.node_name = node_name
        self.stop = stop or threading.Event()
        self.events: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self.objects = Objects()
        self.started = time.time()          # trigger times from before this are not our latency
        core, discovery, networking = k8s.CoreV1Api(client), k8s.DiscoveryV1Api(client), k8s.NetworkingV1Api(client)
        self.reflectors = [
            Reflector("Service", core.list_service_for_all_namespaces, self.events, self.stop, resync,
                      label_selector=PROXY_LABEL_SELECTOR, **reflector_options),
            Reflector("EndpointSlice", discovery.list_endpoint_slice_for_all_namespaces, self.events, self.stop,
                      resync, label_selector=PROXY_LABEL_SELECTOR, **reflector_options),
            Reflector("Node", core.list_node, self.events, self.stop, resync,
                      field_selector=f"metadata.name={node_name}", **reflector_options),
        ]
        self.service_cidrs = Reflector("ServiceCIDR", networking.list_service_cidr, self.events, self.stop, resync,
                                       **reflector_options)
        self._started = False

    def initial(self, timeout: float | None = None) -> Objects:
        """Start watching; return once every resource was listed (upstream waits for its informers'
        caches to sync before the first sync). SourceError when stopped or timed out first."""
        if not self._started:
            self._started = True
            for r in (*self.reflectors, self.service_cidrs):
                r.start()
        end = None if timeout is None else time.monotonic() + timeout
        for r in self.reflectors:
            while not r.synced.wait(0.1):
                if self.stop.is_set() or (end is not None and time.monotonic() > end):
                    raise SourceError(f"the {r.kind} cache did not sync: API server unreachable")
        self._apply_pending()
        if self.objects.dirty is None:
            self.objects.dirty = set()     # from now on changes are tracked (the first sync is full anyway)
        return self.objects

    def current(self) -> Objects:
        self._apply_pending()
        return self.objects

    def changes(self, timeout: float) -> bool:
        try:
            first = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return False
        changed = self._apply(*first)
        return self._apply_pending() or changed

    def close(self) -> None:
        self.stop.set()
        for r in (*self.reflectors, self.service_cidrs):
            r.close()

    def _apply_pending(self) -> bool:
        changed = False
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return changed
            changed = self._apply(*item) or changed

    def _apply(self, kind: str, typ: str, obj: Any) -> bool:
        """Apply one event to the objects; True if it changed them."""
        if typ == "SYNCED":
            return False
        objs = self.objects
        try:
            if kind == "Service":
                return self._service(typ, obj)
            if kind == "EndpointSlice":
                return self._slice(typ, obj)
            if kind == "Node":
                node = Node.from_dict(obj)
                if typ == "DELETED":
                    node.deleting = True       # a Node gone from the API is no place for new traffic
                changed = objs.nodes.get(node.name) != node
                objs.nodes[node.name] = node
                return changed
            if kind == "ServiceCIDR":
                return self._service_cidr(typ, obj)
        except ObjectError as exc:
            log.warning("skipping invalid object: %s", exc)
            self._drop(kind, obj)
            return True
        return False

    def _service(self, typ: str, obj: dict[str, Any]) -> bool:
        key = _key(obj)
        if typ == "DELETED":
            if key not in self.objects.services:
                return False
            self.objects.delete_service(key)
            return True
        svc = Service.from_dict(obj)
        if self.objects.services.get(key) == svc:
            return False
        self.objects.update_service(svc)
        return True

    def _service_cidr(self, typ: str, obj: dict[str, Any]) -> bool:
        """True when the ranges changed (a relabelled ServiceCIDR changes no rule)."""
        if self.objects.service_cidrs is None:
            self.objects.service_cidrs = {}      # watched: from now on "no ServiceCIDRs" means none
        if typ == "DELETED":
            return self.objects.delete_service_cidr(str((obj.get("metadata") or {}).get("name") or ""))
        return self.objects.update_service_cidr(ServiceCIDR.from_dict(obj))

    def _slice(self, typ: str, obj: dict[str, Any]) -> bool:
        key = _key(obj)
        if typ == "DELETED":
            old = self.objects.slices.get(key)
            if old is None:
                return False
            self._trigger(obj, f"{old.namespace}/{old.service}")
            self.objects.delete_slice(key)
            return True
        es = EndpointSlice.from_dict(obj)
        if self.objects.slices.get(key) == es:
            return False
        self._trigger(obj, f"{es.namespace}/{es.service}")
        self.objects.update_slice(es)
        return True

    def _trigger(self, obj: dict[str, Any], service_key: str) -> None:
        text = ((obj.get("metadata") or {}).get("annotations") or {}).get(TRIGGER_TIME)
        t = _rfc3339(str(text)) if text else None
        if t is not None and t >= self.started:
            self.objects.trigger_times.setdefault(service_key, []).append(t)

    def _drop(self, kind: str, obj: dict[str, Any]) -> None:
        """An object that no longer parses is treated as gone, as an invalid manifest object is skipped."""
        key = _key(obj)
        if kind == "Service" and key in self.objects.services:
            self.objects.delete_service(key)
        elif kind == "EndpointSlice" and key in self.objects.slices:
            self.objects.delete_slice(key)
        elif kind == "ServiceCIDR":
            self.objects.delete_service_cidr(key.lstrip("/"))
