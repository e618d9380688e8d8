"""/healthz and /metrics over HTTP, with upstream's health semantics.

Healthy while starting up or when every queued change was synced within the health timeout
(2 x syncPeriod, as kube-proxy sets it); otherwise 503. The JSON body carries ``lastUpdated`` and
``currentTime`` like upstream's ProxierHealthServer.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _ts(t: float | None) -> str:
    if t is None:
        return ""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f %z UTC")


class HealthState:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.last_updated: float | None = None
        self.oldest_pending: float | None = None
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
        with self.lock:
            return self.oldest_pending is None or now - self.oldest_pending < self.timeout

    def body(self, now: float) -> dict[str, Any]:
        return {"lastUpdated": _ts(self.last_updated), "currentTime": _ts(now), "nodeEligible": True}


def parse_bind(addr: str, default_port: int) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return (host or "127.0.0.1").strip("[]"), int(port or default_port)


def serve(health: HealthState, metrics: Any, healthz_addr: str, metrics_addr: str, clock: Any) -> list[Any]:
    """Start the healthz and metrics servers in background threads; return them (call .shutdown())."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's hook name
            now = clock()
            if self.path.startswith("/healthz") or self.path.startswith("/livez"):
                ok = health.healthy(now)
                body = json.dumps(health.body(now)).encode()
                self._send(200 if ok else 503, "application/json", body)
            elif self.path.startswith("/metrics") and metrics is not None:
                self._send(200, "text/plain; version=0.0.4; charset=utf-8", metrics.text())
            else:
                self._send(404, "text/plain", b"404 page not found\n")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    servers = []
    seen: set[tuple[str, int]] = set()
    for addr, port in (parse_bind(healthz_addr, 10256), parse_bind(metrics_addr, 10249)):
        if port and (addr, port) in seen:        # port 0: each bind gets its own free port
            continue
        seen.add((addr, port))
        srv = ThreadingHTTPServer((addr, port), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    return servers
