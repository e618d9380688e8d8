"""The node contract: what the packet path, conntrack, NAT and the rule extensions use of a node.

The kernel's equivalent is ``struct net`` plus the FIB and device lookups netfilter calls. Naming
it lets ``kproxy.netfilter`` and every front end depend on this small surface instead of on the
emulated ``Node`` (or ``Any``): a front end may rely on what is here and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.flowcache import FlowCache
    from kproxy.netfilter.conntrack import Conntrack
    from kproxy.netfilter.hooks import HookRegistry
    from kproxy.netfilter.nat import Nat
    from kproxy.node import Interface, RouteResult
    from kproxy.packet import Packet


class NetNamespace(Protocol):
    """One network namespace as netfilter sees it."""

    @property
    def name(self) -> str: ...

    @property
    def hooks(self) -> HookRegistry:
        """The hook functions registered per family and hook, in priority order."""

    @property
    def conntrack(self) -> Conntrack: ...

    @property
    def flows(self) -> FlowCache | None:
        """The flow cache established packets are replayed from, if the namespace has one."""

    @property
    def nat(self) -> Nat: ...

    @property
    def sysctls(self) -> Mapping[str, str]:
        """``net.*`` settings by their dotted names (``net.ipv4.ip_forward``)."""

    @property
    def interfaces(self) -> Mapping[str, Interface]: ...

    @property
    def subsystems(self) -> dict[str, Any]:
        """Per-namespace state of extensions that outlives one rule (``recent`` lists, the RNG)."""

    @property
    def log_lines(self) -> list[str]:
        """The kernel log (LOG target, conntrack warnings)."""

    @property
    def clock(self) -> float | None:
        """A fixed time for reproducible runs, or None for the wall clock."""

    @property
    def ip_forward(self) -> bool: ...

    def now(self) -> float: ...

    def is_local(self, family: int, addr: int) -> bool:
        """Whether ``addr`` is one of the namespace's own addresses (the local routing table)."""

    def addr_type(self, family: int, addr: int, dev: str | None = None) -> str:
        """The address's route type as ``addrtype`` and ``fib ... type`` see it (LOCAL, UNICAST, ...)."""

    def route(self, family: int, dst: int, src: int | None = None, oif: str | None = None) -> RouteResult: ...

    def route_for_flow(self, pkt: Packet) -> RouteResult:
        """``route`` for a packet's destination, remembered until routing changes."""

    def primary_address(self, dev: str, family: int = 4) -> int | None:
        """The address MASQUERADE and REDIRECT use on ``dev``."""

    def source_address_for(self, family: int, dev: str, dst: int | None) -> int | None:
        """The source address the kernel picks to reach ``dst`` through ``dev`` (inet_select_addr)."""
