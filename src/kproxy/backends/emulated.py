"""The emulated node as a proxier backend: the same calls as the kernel backend, without root."""

from __future__ import annotations

import os
from typing import Any

from kproxy.backends import BackendError


class EmulatedBackend:
    # The proxier may hand over, with the restore input, the rules it already built for some of its
    # lines (``kproxy.proxy.prepared``); the emulated restore applies them instead of parsing those lines.
    takes_prepared_rules = True

    def __init__(self, node: Any, family: int = 4, verify_prepared: bool = False) -> None:
        self.node = node
        self.family = family
        # KPROXY_VERIFY_PREPARED=1 parses every prepared line too and fails a sync whose rules differ.
        self.verify_prepared = verify_prepared or os.environ.get("KPROXY_VERIFY_PREPARED") == "1"

    def _cmd(self, argv: list[str]) -> tuple[int, str, str]:
        return self.node.iptables_cmd(argv, self.family)

    def restore(self, text: str, noflush: bool = True, counters: bool = False,
                prepared: Any = None) -> None:
        from kproxy.iptables.restore import RestoreError

        extra: dict[str, Any] = {"prepared": prepared, "verify_prepared": self.verify_prepared} if prepared else {}
        try:
            self.node.iptables_restore(text, self.family, noflush=noflush, counters=counters, **extra)
        except RestoreError as exc:
            raise BackendError(str(exc)) from None

    def save(self, table: str) -> str:
        return self.node.iptables_save(self.family, tables=[table])

    def chain_names(self, table: str) -> list[str]:
        """The chains of ``table`` (what ``save`` would declare), without printing its rules."""
        t = self.node.iptables[self.family].tables.get(table)
        return list(t.chains) if t is not None else []

    def ensure_chain(self, table: str, chain: str) -> bool:
        """True when the chain already existed."""
        state = self.node.iptables[self.family]
        t = state.tables.get(table)
        if t is not None and chain in t.chains:
            return True
        rc, _, err = self._cmd(["-t", table, "-N", chain])
        if rc != 0:
            raise BackendError(err.strip())
        return False

    def ensure_rule(self, table: str, chain: str, args: list[str], prepend: bool = True) -> bool:
        """True when the rule already existed; else it is inserted first (or appended)."""
        rc, _, _ = self._cmd(["-t", table, "-C", chain, *args])
        if rc == 0:
            return True
        rc, _, err = self._cmd(["-t", table, "-I" if prepend else "-A", chain, *args])
        if rc != 0:
            raise BackendError(err.strip())
        return False

    def delete_rule(self, table: str, chain: str, args: list[str]) -> bool:
        rc, _, _ = self._cmd(["-t", table, "-D", chain, *args])
        return rc == 0

    def save_all(self) -> str:
        return self.node.iptables_save(self.family)

    def cleanup(self, prefix: str = "KUBE-") -> int:
        """Remove kproxy's chains and jump rules, nothing else; returns how many lines that took."""
        from kproxy.backends.kernel import owned_cleanup_input

        text = owned_cleanup_input(self.save_all(), prefix)
        if text:
            self.restore(text, noflush=True)
        return text.count("\n")

    def delete_chain(self, table: str, chain: str) -> bool:
        self._cmd(["-t", table, "-F", chain])
        rc, _, _ = self._cmd(["-t", table, "-X", chain])
        return rc == 0
