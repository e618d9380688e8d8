"""IPVS virtual servers and real servers as the IPVS proxier and its backends exchange them.

Upstream's ``utilipvs.VirtualServer`` and ``RealServer``: addresses are text, protocols upper case,
and ``key`` (address, port, protocol) names a virtual server whatever its scheduler or flags, so a
changed scheduler or affinity timeout is an edit of the same service, never a new one.
"""

from __future__ import annotations

from dataclasses import dataclass


def host_port(address: str, port: int) -> str:
    """``net.JoinHostPort``: ``10.0.0.1:80``, ``[fd00::1]:80``."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class VirtualServer:
    address: str
    protocol: str              # TCP, UDP or SCTP
    port: int
    scheduler: str = "rr"
    flags: frozenset[str] = frozenset()     # "persistent", "mh-port"
    timeout: int = 0           # persistence timeout (ClientIP affinity), seconds

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.address, self.port, self.protocol)

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    def __str__(self) -> str:
        return f"{host_port(self.address, self.port)}/{self.protocol}"


@dataclass
class RealServer:
    address: str
    port: int
    weight: int = 1
    active_conn: int = 0
    inactive_conn: int = 0

    def __str__(self) -> str:
        return host_port(self.address, self.port)
