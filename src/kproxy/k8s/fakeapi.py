"""A local stand-in for the Kubernetes API server: the list and watch protocol for Services,
EndpointSlices, Nodes and ServiceCIDRs, on 127.0.0.1, for tests, benchmarks and the lab.

What a client sees is what a real API server sends: lists carry ``metadata.resourceVersion`` and
items without kind (a list's resourceVersion means "not older than": the current state, or 504 for
one the server has not reached); ``?watch=true`` answers with a chunked stream of JSON events (ADDED, MODIFIED,
DELETED, BOOKMARK when ``allowWatchBookmarks``), replaying the changes after the given
resourceVersion (all current objects as ADDED for "" or "0"); a resourceVersion older than the
retained history gets an ERROR event carrying a 410 ``Expired`` Status; ``timeoutSeconds`` ends the
stream. Label selectors (``k``, ``!k``, ``k=v``, ``k!=v``) and ``metadata.name``/``metadata.namespace``
field selectors filter, an object leaving a selector is seen as DELETED. Tests can drop every open
watch connection, forget history (``compact``) or fail the next requests with a Status.
"""

from __future__ import annotations

import copy
import json
import socket
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Resource:
    name: str           # plural, as in the path
    prefix: str         # /api/v1 or /apis/<group>/<version>
    kind: str
    api_version: str
    namespaced: bool


RESOURCES = {r.name: r for r in (
    Resource("services", "/api/v1", "Service", "v1", True),
    Resource("endpointslices", "/apis/discovery.k8s.io/v1", "EndpointSlice", "discovery.k8s.io/v1", True),
    Resource("nodes", "/api/v1", "Node", "v1", False),
    Resource("servicecidrs", "/apis/networking.k8s.io/v1", "ServiceCIDR", "networking.k8s.io/v1", False),
)}


@dataclass
class Event:
    rv: int
    resource: str
    type: str               # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _labels_match(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _fields_match(selector: str, obj: dict[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        neg = "!=" in term
        k, v = term.split("!=" if neg else "=", 1)
        field = k.strip().removeprefix("metadata.")
        if (str(meta.get(field, "")) == v.lstrip("=").strip()) == neg:
            return False
    return True


class _Query:
    def __init__(self, resource: Resource, namespace: str, query: dict[str, list[str]]) -> None:
        self.resource = resource
        self.namespace = namespace
        self.q = {k: v[-1] for k, v in query.items()}

    def get(self, key: str, default: str = "") -> str:
        return self.q.get(key, default)

    def matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        return _labels_match(self.get("labelSelector"), meta.get("labels") or {}) and \
            _fields_match(self.get("fieldSelector"), obj)


class FakeAPIServer:
    """Start with ``start()``, stop with ``stop()``; ``url`` is where a kubeconfig's server points."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, history: int = 10000,
                 bookmark_interval: float = 1.0) -> None:
        self.host, self.port = host, port
        self.history: deque[Event] = deque(maxlen=history)
        self.bookmark_interval = bookmark_interval
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {r: {} for r in RESOURCES}
        self.rv = 1
        self.oldest = 1                          # watches from below this resourceVersion get 410
        self.cond = threading.Condition()
        self.requests: list[tuple[str, dict[str, str]]] = []    # (path, query) of every request
        self._fail: list[tuple[int, str]] = []
        self._watch_socks: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._closing = False

    # -- the cluster's side -------------------------------------------------------------------

    def put(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (as an apply would); returns it as stored."""
        obj = copy.deepcopy(obj)
        res = RESOURCES[resource]
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            meta.setdefault("namespace", "default")
        key = (meta.get("namespace", ""), meta["name"])
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        with self.cond:
            old = self.objects[resource].get(key)
            self.rv += 1
            if old is not None:
                meta["uid"] = old["metadata"]["uid"]
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            else:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta["resourceVersion"] = str(self.rv)
            self.objects[resource][key] = obj
            self._record(Event(self.rv, resource, "MODIFIED" if old is not None else "ADDED", obj, old))
        return obj

    def load(self, objects: dict[str, list[dict[str, Any]]]) -> FakeAPIServer:
        """Put every object of ``{resource: [object, ...]}`` (a recorded cluster)."""
        for resource, objs in objects.items():
            for o in objs:
                self.put(resource, o)
        return self

    def delete(self, resource: str, namespace: str, name: str) -> bool:
        with self.cond:
            old = self.objects[resource].pop((namespace if RESOURCES[resource].namespaced else "", name), None)
            if old is None:
                return False
            self.rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._record(Event(self.rv, resource, "DELETED", gone, old))
        return True

    def _record(self, event: Event) -> None:
        if len(self.history) == self.history.maxlen:
            self.oldest = self.history[0].rv + 1
        self.history.append(event)
        self.cond.notify_all()

    def compact(self) -> None:
        """Forget the history (as etcd compaction does): older resourceVersions now get 410 Gone."""
        with self.cond:
            self.history.clear()
            self.oldest = self.rv + 1

    def drop_watches(self) -> int:
        """Cut every open watch connection mid-stream, as a restarting API server or a broken network
        would; returns how many were cut."""
        with self.cond:
            socks = list(self._watch_socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(socks)

    def fail_next(self, count: int, code: int = 500, reason: str = "InternalError") -> None:
        """Answer the next ``count`` requests with an error Status."""
        with self.cond:
            self._fail.extend([(code, reason)] * count)

    def watchers(self) -> int:
        with self.cond:
            return len(self._watch_socks)

    # -- serving ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def kubeconfig(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "users": [{"name": "fake", "user": {"token": "fake-token"}}]}

    def start(self) -> FakeAPIServer:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"        # keep-alive, and chunked watch streams

            def do_GET(self) -> None:  # noqa: N802 - http.server's hook name
                api._get(self)

            def log_message(self, format: str, *args: object) -> None:
                return None

        class Server(ThreadingHTTPServer):
            request_queue_size = 128             # many clients connect at once (the lab's nodes)

            def handle_error(self, request: Any, client_address: Any) -> None:
                if not isinstance(sys.exc_info()[1], OSError):     # a client gone is no error of ours
                    super().handle_error(request, client_address)

        self._server = Server((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fakeapi").start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        with self.cond:
            self._closing = True
            self.cond.notify_all()
        self.drop_watches()
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def __enter__(self) -> FakeAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _route(self, path: str) -> tuple[Resource, str] | None:
        for res in RESOURCES.values():
            if path == f"{res.prefix}/{res.name}":
                return res, ""
            head = f"{res.prefix}/namespaces/"
            if res.namespaced and path.startswith(head) and path.endswith(f"/{res.name}"):
                ns = path[len(head):-len(res.name) - 1]
                if ns and "/" not in ns:
                    return res, ns
        return None

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        route = self._route(url.path)
        q = parse_qs(url.query)
        with self.cond:
            self.requests.append((url.path, {k: v[-1] for k, v in q.items()}))
            fail = self._fail.pop(0) if self._fail else None
        if fail is not None:
            return self._send_json(h, fail[0], status(fail[0], fail[1], "injected failure"))
        if route is None:
            return self._send_json(h, 404, status(404, "NotFound", "the server could not find the requested "
                                                  "resource"))
        query = _Query(route[0], route[1], q)
        if query.get("watch") in ("true", "1"):
            return self._watch(h, query)
        self._list(h, query)

    def _send_json(self, h: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _list(self, h: BaseHTTPRequestHandler, q: _Query) -> None:
        res = q.resource
        asked = q.get("resourceVersion")
        with self.cond:                    # stored objects are replaced, never changed: a snapshot suffices
            items = [o for o in self.objects[res.name].values() if q.matches(o)]
            rv = self.rv
        if asked.isdigit() and int(asked) > rv:      # "not older than" a version the server has not reached
            return self._send_json(h, 504, status(504, "Timeout", f"Too large resource version: {asked}, "
                                                  f"current: {rv}"))
        self._send_json(h, 200, {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                                 "metadata": {"resourceVersion": str(rv)}, "items": items})

    def _watch(self, h: BaseHTTPRequestHandler, q: _Query) -> None:
        res = q.resource
        rv_text = q.get("resourceVersion")
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(q.get("timeoutSeconds") or 1800)
        end = time.monotonic() + timeout
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        sock = h.connection
        with self.cond:
            self._watch_socks.add(sock)
        try:
            self._stream(h, q, res, rv_text, bookmarks, end)
        except OSError:
            h.close_connection = True          # dropped: the client sees a truncated stream
        finally:
            with self.cond:
                self._watch_socks.discard(sock)

    def _stream(self, h: BaseHTTPRequestHandler, q: _Query, res: Resource, rv_text: str, bookmarks: bool,
                end: float) -> None:
        def chunk(event: dict[str, Any]) -> None:
            data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        with self.cond:
            if rv_text in ("", "0"):
                start = self.rv
                initial = [o for o in self.objects[res.name].values() if q.matches(o)]
            else:
                try:
                    start = int(rv_text)
                except ValueError:
                    start = -1
                initial = []
                if start < self.oldest - 1:
                    expired = status(410, "Expired", f"too old resource version: {rv_text} ({self.oldest - 1})")
                    start = -1
        if start < 0:
            if not rv_text.isdigit():
                chunk({"type": "ERROR", "object": status(400, "BadRequest",
                                                         f"invalid resource version: {rv_text}")})
            else:
                chunk({"type": "ERROR", "object": expired})
            h.wfile.write(b"0\r\n\r\n")
            return
        for o in initial:
            chunk({"type": "ADDED", "object": self._typed(res, o)})
        sent = start
        next_bookmark = time.monotonic() + self.bookmark_interval
        while True:
            with self.cond:
                pending = self._after(sent, res.name)
                if not pending:
                    now = time.monotonic()
                    if self._closing or now >= end:
                        break
                    self.cond.wait(min(end, next_bookmark if bookmarks else end) - now)
                    pending = self._after(sent, res.name)
                current = self.rv
            for e in pending:
                kind = self._seen_as(q, e)
                if kind:
                    chunk({"type": kind, "object": self._typed(res, e.obj)})
                sent = e.rv
            if bookmarks and time.monotonic() >= next_bookmark:
                sent = max(sent, current)
                chunk({"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version,
                                                      "metadata": {"resourceVersion": str(sent),
                                                                   "creationTimestamp": None}}})
                next_bookmark = time.monotonic() + self.bookmark_interval
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    def _after(self, rv: int, resource: str) -> list[Event]:
        """The retained events of ``resource`` after ``rv``, oldest first (walks back from the newest:
        a watch that keeps up looks at only the new ones)."""
        out = []
        for e in reversed(self.history):
            if e.rv <= rv:
                break
            if e.resource == resource:
                out.append(e)
        out.reverse()
        return out

    @staticmethod
    def _seen_as(q: _Query, e: Event) -> str:
        """How a watch with selectors sees an event: an object leaving the selection is DELETED."""
        now, before = q.matches(e.obj), q.matches(e.old)
        if e.type == "DELETED":
            return "DELETED" if before else ""
        if now and before:
            return "MODIFIED"
        if now:
            return "ADDED"
        return "DELETED" if before else ""

    @staticmethod
    def _typed(res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        return {"kind": res.kind, "apiVersion": res.api_version, **obj}
