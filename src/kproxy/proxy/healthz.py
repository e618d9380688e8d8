"""kube-proxy's HTTP servers, with upstream's semantics and bodies.

* ``/healthz`` and ``/livez`` (default 0.0.0.0:10256): healthy while starting up or when every queued
  change was synced within the health timeout (2 x syncPeriod, as kube-proxy sets it). ``/healthz``
  is also 503 while this Node is being deleted (deletionTimestamp, or the cluster autoscaler's
  ToBeDeletedByClusterAutoscaler taint), so load balancers drain it; ``/livez`` ignores the Node.
* ``/metrics`` (default 127.0.0.1:10249).
* One server per ``externalTrafficPolicy: Local`` Service on its healthCheckNodePort: 200 with the
  count of local ready endpoints, 503 with none (or while the proxier is unhealthy), bound to every
  node address of nodePortAddresses (all addresses when that is unset), as upstream binds them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kproxy.proxy.serviceports import needs_health_check

log = logging.getLogger("kproxy.proxy")


def go_time(t: float | None) -> str:
    """A time as Go's time.Time String() prints it in UTC (the zero time when unset)."""
    if t is None:
        return "0001-01-01 00:00:00 +0000 UTC"
    dt = datetime.fromtimestamp(t, UTC)
    frac = f"{dt.microsecond:06d}000".rstrip("0")
    return dt.strftime("%Y-%m-%d %H:%M:%S") + (f".{frac}" if frac else "") + " +0000 UTC"


class HealthState:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.last_updated: float | None = None
        self.oldest_pending: float | None = None
        self.node_eligible = True          # until a Node event says otherwise
        self.lock = threading.Lock()

    def queued(self, now: float) -> None:
        with self.lock:
            if self.oldest_pending is None:
                self.oldest_pending = now

    def updated(self, now: float) -> None:
        with self.lock:
            self.last_updated = now
            self.oldest_pending = None

    def healthy(self, now: float) -> bool:
        """The proxier's own health (upstream's IsHealthy): the Node's state is not part of it."""
        with self.lock:
            return self.oldest_pending is None or now - self.oldest_pending < self.timeout

    def body(self, now: float, with_node: bool = True) -> dict[str, Any]:
        healthy = self.healthy(now) and (self.node_eligible or not with_node)
        out: dict[str, Any] = {"lastUpdated": go_time(now if healthy else self.last_updated),
                               "currentTime": go_time(now)}
        if with_node:
            out["nodeEligible"] = self.node_eligible
        return out


def parse_bind(addr: str, default_port: int) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return (host or "0.0.0.0").strip("[]"), int(port or default_port)


class _Handler(BaseHTTPRequestHandler):
    def send(self, code: int, ctype: str, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


def _start(addr: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    srv = ThreadingHTTPServer(addr, handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True, name=f"http {addr}").start()
    return srv


def serve(health: HealthState, metrics: Any, healthz_addr: str, metrics_addr: str,
          clock: Callable[[], float] = time.time) -> list[ThreadingHTTPServer]:
    """Start the healthz and metrics servers (an empty address: not that one) in background threads;
    return them (call .shutdown())."""

    class Healthz(_Handler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's hook name
            now = clock()
            path = self.path.split("?")[0]
            if path in ("/healthz", "/livez"):
                with_node = path == "/healthz"
                ok = health.healthy(now) and (health.node_eligible or not with_node)
                if metrics is not None:
                    metrics.health_checked(path[1:], 200 if ok else 503)
                b = health.body(now, with_node)
                text = f'{{"lastUpdated": {json.dumps(b["lastUpdated"])},"currentTime": {json.dumps(b["currentTime"])}'
                text += f', "nodeEligible": {json.dumps(b["nodeEligible"])}}}' if with_node else "}"
                self.send(200 if ok else 503, "application/json", text.encode())
            else:
                self.send(404, "text/plain; charset=utf-8", b"404 page not found\n")

    class Metrics(_Handler):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            if path == "/metrics" and metrics is not None:
                self.send(200, "text/plain; version=0.0.4; charset=utf-8", metrics.text())
            elif path == "/healthz":
                self.send(200, "text/plain; charset=utf-8", b"ok")
            else:
                self.send(404, "text/plain; charset=utf-8", b"404 page not found\n")

    servers = []
    for text, port, handler in ((healthz_addr, 10256, Healthz), (metrics_addr, 10249, Metrics)):
        if not text:                       # an empty bind address turns that server off
            continue
        try:
            servers.append(_start(parse_bind(text, port), handler))
        except OSError:
            for s in servers:
                s.shutdown()
                s.server_close()
            raise
    return servers


def service_health_body(key: str, count: int, healthy: bool) -> bytes:
    """Upstream's body for a Service health check (tab-indented JSON)."""
    ns, _, name = key.partition("/")
    return (f'{{\n\t"service": {{\n\t\t"namespace": {json.dumps(ns)},\n\t\t"name": {json.dumps(name)}\n\t}},\n'
            f'\t"localEndpoints": {count},\n\t"serviceProxyHealthy": {json.dumps(healthy)}\n}}').encode()


class ServiceHealthServers:
    """The healthCheckNodePort servers of the ``externalTrafficPolicy: Local`` Services."""

    def __init__(self, addresses: list[str], health: HealthState | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.addresses = addresses or ["0.0.0.0"]       # where nodePortAddresses puts them; all when unset
        self.health = health
        self.clock = clock
        self.ports: dict[str, int] = {}                 # Service key -> its healthCheckNodePort
        self.counts: dict[str, int] = {}                # Service key -> local ready endpoints
        self.servers: dict[str, list[ThreadingHTTPServer]] = {}
        self.lock = threading.Lock()

    def sync(self, objs: Any, hostname: str, keys: Iterable[str] | None) -> None:
        """Open, close and update the servers of ``keys`` (None: every Service) from the objects."""
        for key in (set(objs.services) | set(self.ports)) if keys is None else keys:
            svc = objs.services.get(key)
            port = svc.health_check_node_port if svc is not None and needs_health_check(svc) else 0
            if self.ports.get(key) != port:
                self._close(key)
                if port:
                    self._open(key, port)
            if port:
                ips = {a for es in objs.slices_for(key) for e in es.endpoints
                       if e.ready and e.node_name == hostname for a in e.addresses}
                with self.lock:
                    self.counts[key] = len(ips)

    def _open(self, key: str, port: int) -> None:
        servers = self

        class Check(_Handler):
            def do_GET(self) -> None:  # noqa: N802
                with servers.lock:
                    count = servers.counts.get(key, 0)
                healthy = servers.health is None or servers.health.healthy(servers.clock())
                self.send(200 if count and healthy else 503, "application/json",
                          service_health_body(key, count, healthy))

        started: list[ThreadingHTTPServer] = []
        try:
            for ip in self.addresses:
                started.append(_start((ip, port), Check))
        except OSError as exc:
            log.error("failed to start healthcheck %s on port %d: %s", key, port, exc)
            for s in started:
                s.shutdown()
                s.server_close()
            return
        self.ports[key] = port
        self.servers[key] = started

    def _close(self, key: str) -> None:
        for s in self.servers.pop(key, []):
            s.shutdown()
            s.server_close()
        self.ports.pop(key, None)
        with self.lock:
            self.counts.pop(key, None)

    def close(self) -> None:
        for key in list(self.servers):
            self._close(key)
