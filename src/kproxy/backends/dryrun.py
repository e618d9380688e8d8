"""Dry run: a backend that reads the real node, works out what each write would change, and applies nothing.

This is how kproxy runs beside kube-proxy on a real node: every sync is computed as usual, then its
restore input is applied to a scratch copy of the node's kube-proxy chains (``KUBE-*``, read with
``iptables-save``, or chain by chain for a partial sync), and the difference between the node's
chains and the scratch is printed as unified diffs of ``iptables-save`` lines, one per chain that
differs. When kproxy and kube-proxy agree nothing is printed. Jumps kproxy would add to built-in
chains are checked with ``iptables -C`` (which only reads).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

from kproxy.backends import Backend, BackendError

OWNED = "KUBE-"
FEW_CHAINS = 200        # an input naming fewer chains is compared chain by chain (iptables -S CHAIN)
_NFACCT = re.compile(r"--nfacct-name\s+(\S+)")
_NAMED = re.compile(r"^(?::|-[AIDXRF] )(\S+)")


def owned_restore_input(save_text: str, prefix: str = OWNED) -> str:
    """The ``prefix`` chains of an ``iptables-save`` text, and only them, as a restore input."""
    out: list[str] = []
    for line in save_text.splitlines():
        if line.startswith(("*", "COMMIT")):
            out.append(line)
        elif line.startswith(":") and line[1:].startswith(prefix):
            out.append(line.split(" ", 1)[0] + " - [0:0]")
        elif line.startswith("-A ") and line.split(" ", 2)[1].startswith(prefix):
            out.append(line)
    return "\n".join(out) + "\n"


def named_chains(text: str) -> dict[str, set[str]]:
    """The chains each table's section of a restore input declares or changes."""
    out: dict[str, set[str]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            out.setdefault(table, set())
        elif (m := _NAMED.match(line)) and table:
            out[table].add(m.group(1))
    return out


class DryRunBackend:
    """Wraps a backend (kernel or emulated): reads go to it, writes become printed differences."""

    def __init__(self, real: Backend, out: Callable[[str], None]) -> None:
        self.real = real
        self.family = real.family
        self.out = out
        self.changes = 0          # diff lines and would-be commands reported so far

    def _report(self, text: str) -> None:
        if text:
            self.changes += text.count("\n") + 1
            self.out(text)

    def _scratch(self, named: dict[str, set[str]]) -> tuple[Any, str]:
        """A scratch node holding the real node's kube-proxy chains of the tables in ``named`` (every
        chain, but only the named ones with their rules when they are few), and their save text."""
        from kproxy.netfilter.nfacct import objects_of
        from kproxy.node import Node

        node = Node.default()
        text = "".join(owned_restore_input(self.real.save(t)) if len(chains) >= FEW_CHAINS
                       else self._few_chains_input(t, chains) for t, chains in named.items())
        for name in _NFACCT.findall(text):
            objects_of(node).ensure(name.strip('"'))
        node.iptables_restore(text, self.family)
        return node, node.iptables_save(self.family, tables=list(named))

    def _few_chains_input(self, table: str, chains: set[str]) -> str:
        """Every kube-proxy chain of ``table`` (declared), with the rules of ``chains`` only: a partial
        sync reads a handful of chains instead of the whole table."""
        owned = [n for n in self.chain_names(table) if n.startswith(OWNED)]
        lines = [f"*{table}", *(f":{n} - [0:0]" for n in owned)]
        for chain in sorted(chains.intersection(owned)):
            lines += [ln for ln in self.real.chain_rules(table, chain) if ln.startswith("-A ")]
        return "\n".join([*lines, "COMMIT"]) + "\n"

    def restore(self, text: str, noflush: bool = True, counters: bool = False, prepared: Any = None) -> None:
        """Print how ``text`` would change the node's kube-proxy chains; change nothing."""
        from kproxy.iptables.restore import RestoreError
        from kproxy.netfilter.nfacct import objects_of

        named = named_chains(text)
        tables = list(named)
        node, before = self._scratch(named)
        for name in _NFACCT.findall(text):
            objects_of(node).ensure(name.strip('"'))
        try:
            node.iptables_restore(text, self.family, noflush=noflush)
        except RestoreError as exc:
            raise BackendError(str(exc)) from None
        after = node.iptables_save(self.family, tables=tables)
        self._report(chain_diff(before, after))

    def save(self, table: str) -> str:
        return self.real.save(table)

    def chain_names(self, table: str) -> list[str]:
        lister = getattr(self.real, "chain_names", None)
        if lister is not None:
            return list(lister(table))
        return [line[1:].split()[0] for line in self.real.save(table).splitlines() if line.startswith(":")]

    def chain_rules(self, table: str, chain: str) -> list[str]:
        return self.real.chain_rules(table, chain)

    def ensure_chain(self, table: str, chain: str) -> bool:
        if chain in self.chain_names(table):
            return True
        self._report(f"# would create chain {chain} in table {table}")
        return False

    def ensure_rule(self, table: str, chain: str, args: list[str], prepend: bool = True) -> bool:
        if self.real.check_rule(table, chain, args):
            return True
        self._report(f"# would run: iptables -t {table} {'-I' if prepend else '-A'} {chain} {' '.join(args)}")
        return False

    def check_rule(self, table: str, chain: str, args: list[str]) -> bool:
        return self.real.check_rule(table, chain, args)

    def delete_rule(self, table: str, chain: str, args: list[str]) -> bool:
        self._report(f"# would run: iptables -t {table} -D {chain} {' '.join(args)}")
        return True

    def delete_chain(self, table: str, chain: str) -> bool:
        self._report(f"# would delete chain {chain} in table {table}")
        return True

    def has_random_fully(self) -> bool:
        return self.real.has_random_fully()

    def nfacct_ensure(self, name: str) -> bool:
        """Whether the counter exists already (kube-proxy made it); a dry run creates none."""
        return self.real.nfacct_packets(name) is not None

    def nfacct_packets(self, name: str) -> int | None:
        return self.real.nfacct_packets(name)


def _by_chain(save_text: str) -> dict[tuple[str, str], list[str]]:
    """An ``iptables-save`` text's lines by (table, chain): the chain's declaration, then its rules."""
    out: dict[tuple[str, str], list[str]] = {}
    table = ""
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            out.setdefault((table, line[1:].split()[0]), []).insert(0, line)
        elif line.startswith("-A "):
            out.setdefault((table, line.split(" ", 2)[1]), []).append(line)
    return out


def chain_diff(before: str, after: str) -> str:
    """A unified diff per chain that differs (linear in the tables' size, unlike one diff of both)."""
    old, new = _by_chain(before), _by_chain(after)
    hunks: list[str] = []
    for table, chain in sorted(old.keys() | new.keys()):
        a, b = old.get((table, chain), []), new.get((table, chain), [])
        if a != b:
            hunks.extend(difflib.unified_diff(a, b, f"node {table} {chain}", f"kproxy {table} {chain}",
                                              lineterm="", n=0))
    return "\n".join(hunks)
