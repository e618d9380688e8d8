"""The lab's API server: one FakeAPIServer process that every node's kproxy watches (``source: api``).

The lab keeps writing its objects to ``manifests.yaml`` (on ``up``, ``scale`` and pod replacement);
this process serves them through the list/watch protocol and follows the file, turning each rewrite
into the ADDED, MODIFIED and DELETED events an API server would send, so the kernel lab's traffic
scenarios also pass through kproxy's watch path. Run as
``python -m kproxy.lab.apiserver --manifests FILE --host ADDR --port N``; it prints ``serving URL``
once it listens and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from kproxy.k8s.fakeapi import RESOURCES, FakeAPIServer

BY_KIND = {r.kind: r.name for r in RESOURCES.values()}
Key = tuple[str, str, str]          # resource, namespace, name


def keyed(docs: Any) -> dict[Key, dict[str, Any]]:
    """The Services, EndpointSlices and Nodes of ``docs`` (``List`` documents or single objects) by key."""
    out: dict[Key, dict[str, Any]] = {}
    for doc in docs:
        for obj in (doc.get("items") or []) if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]:
            resource = BY_KIND.get(obj.get("kind", "")) if isinstance(obj, dict) else None
            if resource is None:
                continue
            meta = obj.get("metadata") or {}
            namespace = str(meta.get("namespace", "default")) if RESOURCES[resource].namespaced else ""
            out[(resource, namespace, str(meta["name"]))] = obj
    return out


class Publisher:
    """Keeps the server's objects equal to a given set: puts what is new or changed, deletes what went
    (the events an API server sends when a cluster's objects change)."""

    def __init__(self, api: FakeAPIServer) -> None:
        self.api = api
        self.seen: dict[Key, dict[str, Any]] = {}

    def publish(self, current: dict[Key, dict[str, Any]]) -> int:
        """Make the server hold ``current``; returns how many objects changed."""
        changed = 0
        for key, obj in current.items():
            if self.seen.get(key) != obj:
                self.api.put(key[0], obj)
                changed += 1
        for key in self.seen.keys() - current.keys():
            self.api.delete(*key)
            changed += 1
        self.seen = current
        return changed


class ManifestFollower(Publisher):
    """Publishes a manifest file's objects each time the file changes."""

    def __init__(self, api: FakeAPIServer, path: Path) -> None:
        super().__init__(api)
        self.path = path
        self.stamp: tuple[int, int] | None = None

    def poll(self) -> int:
        """Apply the file if it changed since the last look; returns how many objects changed."""
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self.stamp:
            return 0
        self.stamp = stamp
        return self.publish(keyed(yaml.safe_load_all(self.path.read_text())))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kproxy.lab.apiserver")
    ap.add_argument("--manifests", required=True, type=Path)
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=6443)
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between looks at the file")
    args = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    api = FakeAPIServer(args.host, args.port).start()
    follower = ManifestFollower(api, args.manifests)
    follower.poll()
    print(f"serving {api.url}", flush=True)
    try:
        while not stop.wait(args.interval):
            try:
                follower.poll()
            except (OSError, yaml.YAMLError) as exc:     # a file being replaced: look again next time
                print(f"cannot read {args.manifests}: {exc}", file=sys.stderr, flush=True)
    finally:
        api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
