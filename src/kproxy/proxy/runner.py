"""The sync loop: take objects from a source, sync, wait for changes, honour minSyncPeriod and syncPeriod.

The source is manifest files (polled) or the API server (watched), see ``kproxy.k8s.source``. A
change schedules a sync no sooner than minSyncPeriod after the previous one; without changes a sync
still runs every syncPeriod, and a full one at least every hour (upstream's FullSyncPeriod) or after
any failure. After a sync the network programming latency of the endpoint changes it carried is
observed, and the per-Service health check servers learn their local endpoint counts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kproxy.k8s.manifests import Objects
from kproxy.k8s.source import ManifestSource, Source, SourceError
from kproxy.progress import busy
from kproxy.proxy.proxier import Proxier, SyncResult

FULL_SYNC_PERIOD = 3600.0
POLL = 0.1
log = logging.getLogger("kproxy.proxy")


class ProxyRunner:
    def __init__(self, proxier: Proxier, source: Source | str, health: Any = None,
                 after_sync: Callable[[SyncResult], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, metrics: Any = None,
                 service_health: Any = None) -> None:
        self.proxier = proxier
        self.source: Source = ManifestSource(source) if isinstance(source, str) else source
        self.health = health
        self.after_sync = after_sync
        self.clock = clock
        self.metrics = metrics
        self.service_health = service_health
        self.objects = Objects()
        self.last_sync = -1e18
        self.last_full = -1e18
        self.syncs = 0
        self.restart_reason = ""        # set when the loop stopped because kube-proxy must restart
        self._pod_cidrs: list[str] | None = None
        self._started = False

    def _take(self) -> Objects:
        self.objects = self.source.current() if self._started else self.source.initial()
        self._started = True
        for w in self.objects.warnings:
            log.warning("skipping invalid object: %s", w)
        self.objects.warnings = []
        return self.objects

    def sync_once(self) -> SyncResult:
        """Take the objects and sync. Objects that cannot be had (unreadable manifests) fail the sync
        and leave the rules as they are (syncing a half-read cluster would delete Services)."""
        now = self.clock()
        try:
            objs = self._take()
        except SourceError as exc:
            log.error("the rules stay as they are: %s", exc)
            return self._report(SyncResult(False, "", 0, 0.0, error=str(exc)))
        full = now - self.last_full > FULL_SYNC_PERIOD
        triggers, objs.trigger_times = objs.trigger_times, {}
        with busy("kube-proxy: syncing the rules"):
            result = self.proxier.sync(objs, force_full=full)
        self.syncs += 1
        self.last_sync = now
        if result.error:
            for key, times in triggers.items():         # observed when a later sync programs them
                objs.trigger_times.setdefault(key, []).extend(times)
            log.error("sync failed (a full sync follows): %s", result.error.splitlines()[0])
            return self._report(result)
        if result.full:
            self.last_full = now
        if self.metrics is not None:
            wall = time.time()
            for times in triggers.values():
                for t in times:
                    self.metrics.network_programmed(wall - t)
        if self.service_health is not None:
            self.service_health.sync(objs, self.proxier.cfg.hostname,
                                     None if result.full else result.changed_services)
        if self.health is not None:
            self.health.updated(time.time())
        return self._report(result)

    def _report(self, result: SyncResult) -> SyncResult:
        if self.after_sync is not None:
            self.after_sync(result)
        return result

    def _node_changed(self) -> None:
        """This Node's state decides whether /healthz calls the node eligible (upstream: not while
        it is being deleted). With detectLocalMode NodeCIDR the local range was fixed at start: a
        changed podCIDR needs a restart, so the loop ends (upstream exits for its DaemonSet to
        restart it)."""
        cfg = self.proxier.cfg
        node = self.objects.nodes.get(cfg.hostname)
        if self.health is not None:
            self.health.node_eligible = node is None or not node.deleting
        if cfg.detect_local_mode == "NodeCIDR" and node is not None and node.pod_cidrs:
            if self._pod_cidrs is None:
                self._pod_cidrs = list(node.pod_cidrs)
            elif node.pod_cidrs != self._pod_cidrs:
                self.restart_reason = (f"Node {cfg.hostname}: podCIDRs changed from {','.join(self._pod_cidrs)} "
                                       f"to {','.join(node.pod_cidrs)} with detectLocalMode NodeCIDR; restart needed")
                log.error("%s", self.restart_reason)

    def loop(self, stop: threading.Event) -> None:
        cfg = self.proxier.cfg
        self.sync_once()
        self._node_changed()
        pending = False
        while not stop.is_set() and not self.restart_reason:
            now = self.clock()
            if pending:
                wait = cfg.min_sync_period - (now - self.last_sync)
            else:
                wait = cfg.sync_period - (now - self.last_sync)
            if self.source.changes(max(0.0, min(POLL, wait))):
                if not pending:
                    if self.health is not None:
                        self.health.queued(time.time())
                    if self.metrics is not None:
                        self.metrics.queued()
                pending = True
                self._node_changed()
            if stop.is_set() or self.restart_reason:
                break
            now = self.clock()
            due = pending and now - self.last_sync >= cfg.min_sync_period
            periodic = now - self.last_sync >= cfg.sync_period
            if due or periodic or self.proxier.need_full and now - self.last_sync >= cfg.min_sync_period:
                pending = False
                self.sync_once()
