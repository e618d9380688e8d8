"""Where a proxier's rules go: the emulated node (default) or the kernel of the current network namespace.

Both backends offer the few operations upstream kube-proxy uses (``pkg/util/iptables``): a
restore transaction, making sure a chain and a jump rule exist, deleting a rule, saving a table,
and removing everything kproxy made. Errors raise ``BackendError`` and leave the rules as they were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node


class BackendError(RuntimeError):
    """A failed transaction; the message is the tool's error text."""


class Backend(Protocol):
    family: int

    def restore(self, text: str, noflush: bool = True, counters: bool = False) -> None: ...

    def save(self, table: str) -> str: ...

    def ensure_chain(self, table: str, chain: str) -> bool: ...

    def check_rule(self, table: str, chain: str, args: list[str]) -> bool: ...

    def chain_rules(self, table: str, chain: str) -> list[str]: ...

    def ensure_rule(self, table: str, chain: str, args: list[str], prepend: bool = True) -> bool: ...

    def delete_rule(self, table: str, chain: str, args: list[str]) -> bool: ...

    def delete_chain(self, table: str, chain: str) -> bool: ...

    def has_random_fully(self) -> bool: ...

    def nfacct_ensure(self, name: str) -> bool: ...

    def nfacct_packets(self, name: str) -> int | None: ...


def get_backend(name: str, node: Node | None = None, family: int = 4, legacy: bool = False) -> Backend:
    """``emulated`` (needs ``node``) or ``kernel`` (iptables-nft, or legacy)."""
    if name == "emulated":
        from kproxy.backends.emulated import EmulatedBackend

        if node is None:
            raise ValueError("the emulated backend needs a node")
        return EmulatedBackend(node, family)
    if name == "kernel":
        from kproxy.backends.kernel import KernelBackend

        return KernelBackend(family, legacy=legacy)
    raise ValueError(f"unknown backend {name!r} (emulated or kernel)")
