"""One family's iptables tables as the kernel holds them, replaced atomically per commit.

Every change (a restore's COMMIT, one ``iptables -A``) builds new ``Table`` objects and swaps
them in with ``commit``; the generation number tells the evaluator to recompile. Until a
table is first used it does not exist, as with iptables-nft, so ``iptables-save`` of a fresh
node prints nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from kproxy.iptables.model import Table
from kproxy.layered import cow_copy, settle
from kproxy.versioned import Epoch

# Told after every commit with each changed table's committed version before (None: new) and after.
CommitListener = Callable[[dict[str, tuple[Table | None, Table]]], None]


class IptablesState:
    """The tables of one family (4 for iptables, 6 for ip6tables)."""

    def __init__(self, family: int = 4) -> None:
        self.family = family
        self.tables: dict[str, Table] = {}
        self.generation = 0
        self.listeners: list[CommitListener] = []   # the engine: hooks, conntrack and set references
        # What the next commit does in iptables-nft's terms, (table, verb, chain) events, for the
        # listener that keeps which chains exist in nf_tables (kproxy.nftables.xtlayout); cleared by commit.
        self.note: list[tuple[str, str, str]] | None = None

    def get(self, name: str) -> Table:
        """The committed table ``name``, or a fresh one with its built-in chains (not yet committed)."""
        t = self.tables.get(name)
        return t if t is not None else Table.new(name, self.family)

    def working_copy(self, name: str) -> Table:
        """A deep copy of table ``name`` to edit; nothing changes until ``commit``."""
        t = self.tables.get(name)
        if t is None:
            return Table.new(name, self.family)
        return copy_table(t)

    def commit(self, tables: dict[str, Table]) -> None:
        """Swap in new versions of the given tables at once."""
        changes = {}
        for name, t in tables.items():
            # Counted incrementally from the base for copy-on-write copies; kept for the next commit.
            t.jump_counts()
            t.use_counts()
            t.owned, t.deleted, t.base = None, set(), None
            settle(t.chains)        # the next working copy then costs what it changes
            settle(t.refs)
            changes[name] = (self.tables.get(name), t)
        self.tables.update(tables)
        self.generation += 1
        Epoch.bump()
        for listener in self.listeners:
            listener(changes)
        self.note = None


    def drop(self, name: str) -> None:
        """Remove table ``name`` altogether (iptables-nft's table deleted from nf_tables): its users are
        told it became empty, then it is gone, as before its first use."""
        if name not in self.tables:
            return
        self.commit({name: Table.new(name, self.family)})
        del self.tables[name]
        self.generation += 1


def copy_table(t: Table) -> Table:
    """A copy-on-write copy: chains are shared until ``Table.writable`` clones the ones a change touches.

    Commands never mutate a shared chain or rule in place, so a failed change leaves the committed
    table untouched, and a partial sync of a huge table costs what it changes, not the table's size.
    """
    return Table(t.name, t.family, cow_copy(t.chains), owned=set(), base=t)
