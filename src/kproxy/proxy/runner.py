"""The sync loop: load objects, sync, watch the manifests, honour minSyncPeriod and syncPeriod.

Changes are noticed by polling the manifest files' names, sizes and mtimes. A change schedules a
sync no sooner than minSyncPeriod after the previous one; without changes a sync still runs every
syncPeriod, and a full one at least every hour (upstream's FullSyncPeriod) or after any failure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kproxy.k8s.manifests import ManifestError, Objects, fingerprint, load
from kproxy.proxy.proxier import Proxier, SyncResult

FULL_SYNC_PERIOD = 3600.0
POLL = 0.1
log = logging.getLogger("kproxy.proxy")


class ProxyRunner:
    def __init__(self, proxier: Proxier, manifests: str, health: Any = None,
                 after_sync: Callable[[SyncResult], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.proxier = proxier
        self.manifests = manifests
        self.health = health
        self.after_sync = after_sync
        self.clock = clock
        self.objects = Objects()
        self.last_sync = -1e18
        self.last_full = -1e18
        self.syncs = 0
        self._seen: tuple[Any, ...] | None = None

    def load(self) -> Objects:
        """Reload the manifests; after the first sync, mark only the Services that differ as changed."""
        objs = load(self.manifests)
        for w in objs.warnings:
            log.warning("skipping invalid object: %s", w)
        if self.syncs:
            objs.dirty = objs.changes_since(self.objects)
        self.objects = objs
        return objs

    def sync_once(self) -> SyncResult:
        """Reload the objects and sync. Manifests that cannot be read or parsed fail the sync and
        leave the rules as they are (syncing a half-read cluster would delete Services)."""
        self._seen = fingerprint(self.manifests)
        now = self.clock()
        try:
            self.load()
        except ManifestError as exc:
            log.error("cannot read manifests, the rules stay as they are: %s", exc)
            result = SyncResult(False, "", 0, 0.0, error=f"cannot read manifests: {exc}")
            if self.after_sync is not None:
                self.after_sync(result)
            return result
        full = now - self.last_full > FULL_SYNC_PERIOD
        result = self.proxier.sync(self.objects, force_full=full)
        self.syncs += 1
        self.last_sync = now
        if result.full and not result.error:
            self.last_full = now
        if result.error:
            log.error("sync failed (a full sync follows): %s", result.error.splitlines()[0] if result.error else "")
        elif self.health is not None:
            self.health.updated(time.time())
        if self.after_sync is not None:
            self.after_sync(result)
        return result

    def loop(self, stop: threading.Event) -> None:
        cfg = self.proxier.cfg
        self.sync_once()
        pending = False
        while not stop.wait(POLL):
            fp = fingerprint(self.manifests)
            if fp != self._seen:
                self._seen = fp
                if not pending and self.health is not None:
                    self.health.queued(time.time())
                pending = True
            now = self.clock()
            due = pending and now - self.last_sync >= cfg.min_sync_period
            periodic = now - self.last_sync >= cfg.sync_period
            if due or periodic or self.proxier.need_full and now - self.last_sync >= cfg.min_sync_period:
                pending = False
                self.sync_once()
