"""Where the proxier's objects come from: manifest files or the API server, behind one interface.

The sync loop asks a ``Source`` for its first complete view (``initial``), waits on it for changes
(``changes``) and takes the objects to sync (``current``), whose ``dirty`` set names the Services
changed since the previous sync. Manifests are re-read on change; the API source applies watch
events as they arrive.
"""

from __future__ import annotations

import time
from typing import Protocol

from kproxy.k8s.manifests import ManifestError, Objects, fingerprint, load


class SourceError(RuntimeError):
    """The objects cannot be had right now (unreadable manifests): the sync fails, the rules stay."""


class Source(Protocol):
    def initial(self) -> Objects:
        """The first complete view of the objects (blocks until there is one; SourceError if not)."""
        ...

    def changes(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change; True if something changed."""
        ...

    def current(self) -> Objects:
        """The objects to sync now, ``dirty`` naming the Services changed since the last call."""
        ...

    def close(self) -> None:
        ...


class ManifestSource:
    """Manifest files (a file or a directory), polled for changes in names, sizes and mtimes."""

    POLL = 0.1

    def __init__(self, path: str) -> None:
        self.path = path
        self.objects: Objects | None = None
        self._seen: tuple[object, ...] | None = None

    def initial(self) -> Objects:
        return self.current()

    def current(self) -> Objects:
        """Reload the manifests; after the first load, only the Services that differ are dirty."""
        self._seen = fingerprint(self.path)
        try:
            objs = load(self.path)
        except ManifestError as exc:
            raise SourceError(f"cannot read manifests: {exc}") from None
        if self.objects is not None:
            objs.dirty = objs.changes_since(self.objects)
            if objs.service_cidrs is None and self.objects.service_cidrs is not None:
                objs.service_cidrs = {}          # the last ServiceCIDR left the manifests: none now
        self.objects = objs
        return objs

    def changes(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while True:
            fp = fingerprint(self.path)
            if fp != self._seen:
                self._seen = fp
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self.POLL, left))

    def close(self) -> None:
        return None
