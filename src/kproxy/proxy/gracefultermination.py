"""Graceful termination of IPVS real servers (upstream's GracefulTerminationManager).

A real server that leaves a virtual server is not deleted while it still has connections: its
weight goes to 0 (no new connections are scheduled to it) and it waits in a list; each check
deletes the waiting ones whose connections are gone. UDP and SCTP servers are deleted at once
(expire_nodest_conn drops their flows on the next packet). A server that comes back before it
is deleted is deleted and added again, fresh.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from kproxy.proxy.virtualserver import RealServer, VirtualServer

log = logging.getLogger("kproxy.proxy")


def needs_graceful_termination(protocol: str) -> bool:
    return protocol.upper() not in ("UDP", "SCTP")


def unique_name(vs: VirtualServer, rs: RealServer) -> str:
    """``10.0.0.1:80/TCP/10.244.0.5:8080``, as upstream names a waiting real server."""
    return f"{vs}/{rs}"


class GracefulTermination:
    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.pending: dict[str, tuple[VirtualServer, RealServer]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.pending

    def _try_delete(self, vs: VirtualServer, rs: RealServer) -> bool:
        """Delete ``rs`` if it may go now; True when it is gone (or cannot be found any more)."""
        try:
            current = self.backend.ipvs_real_servers(vs, fresh=True)
        except Exception:  # noqa: BLE001 - the virtual server itself is gone: nothing left to wait for
            return True
        for cur in current:
            if cur.address == rs.address and cur.port == rs.port:
                if needs_graceful_termination(vs.protocol) and cur.active_conn + cur.inactive_conn:
                    return False
                self.backend.ipvs_delete_real_server(vs, rs)
                return True
        return True

    def delete(self, vs: VirtualServer, rs: RealServer) -> bool:
        """Remove ``rs`` from ``vs`` now, or set its weight to 0 and wait. True when deleted now."""
        if self._try_delete(vs, rs):
            return True
        self.backend.ipvs_update_real_server(vs, replace(rs, weight=0))
        self.pending[unique_name(vs, rs)] = (vs, rs)
        return False

    def take_back(self, name: str) -> None:
        """A waiting server is wanted again: delete it now (the sync adds it back with its weight)."""
        vs, rs = self.pending.pop(name)
        self.backend.ipvs_delete_real_server(vs, rs)

    def check(self) -> list[tuple[VirtualServer, RealServer]]:
        """Delete the waiting servers whose connections are gone; returns them."""
        done = []
        for name, (vs, rs) in list(self.pending.items()):
            try:
                gone = self._try_delete(vs, rs)
            except Exception as exc:  # noqa: BLE001 - upstream drops it from the list on an error too
                log.error("graceful termination of %s failed: %s", name, exc)
                gone = True
            if gone:
                del self.pending[name]
                done.append((vs, rs))
        return done
