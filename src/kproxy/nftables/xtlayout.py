"""Which of iptables' tables and chains exist in nf_tables, and in what order, as iptables-nft 1.8.9 makes them.

The iptables model holds every built-in chain of a table from its first use, as the kernel's
x_tables does. iptables-nft creates less and in another order, and ``nft list ruleset`` shows that:
a built-in chain exists once a rule is added to it (-A/-I/-R), its policy is set (-P), or a restore
declares it (``:INPUT ACCEPT``); ``-X`` without a chain deletes the user chains and every built-in chain
that is empty with policy ACCEPT; -F, -Z and -L create nothing. A restore without --noflush deletes each
table it names and builds it again, so that table moves to the end of the kernel's list and its chains
are created in the order the input declares or first uses them. Tables and chains are listed in
creation order.

Each command and restore tells its state what it did (``IptablesState.note``) before committing; the
listener here replays that onto the layout, then reconciles it with the committed tables (a chain
the note did not explain is appended, a chain that no longer exists is dropped). A node file keeps the
layout; older files without one get the reconciled guess (built-in chains first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kproxy.netfilter.hooks import TABLE_HOOKS
from kproxy.store.chains import StoredChain

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Chain, Table
    from kproxy.iptables.state import IptablesState
    from kproxy.node import Node

Key = tuple[int, str]          # (family, table name)
RULE_VERBS = ("A", "I", "R", "P")


@dataclass
class XtLayout:
    """The iptables-nft tables in kernel order, each with its chains in creation order."""

    tables: list[Key] = field(default_factory=list)
    chains: dict[Key, dict[str, None]] = field(default_factory=dict)    # ordered sets of chain names
    variant: str = "nft"        # "legacy": iptables-legacy keeps its tables out of nf_tables
    handles: dict[Key, int] = field(default_factory=dict)
    next_handle: int = 1        # the namespace's table handle counter (nft's own tables aside)

    def ensure(self, key: Key) -> dict[str, None]:
        if key not in self.chains:
            self.chains[key] = {}
            self.tables.append(key)
            self.handles[key] = self.next_handle
            self.next_handle += 1
        return self.chains[key]

    def drop(self, key: Key) -> None:
        if key in self.chains:
            del self.chains[key]
            del self.handles[key]
            self.tables.remove(key)

    def create(self, key: Key, chain: str) -> None:
        self.ensure(key).setdefault(chain, None)

    def replay(self, family: int, events: list[tuple[str, str, str]], tables: dict[str, Table]) -> None:
        """Apply one commit's events: (table, verb, chain) with verbs ``*`` (a flushing restore's
        table line), ``:`` (a chain line), N, X, E (chain is ``old\\0new``) and the rule verbs."""
        for tname, verb, chain in events:
            key = (family, tname)
            if verb == "*":
                self.drop(key)
            elif verb in (":", "N") or (verb in RULE_VERBS and chain in TABLE_HOOKS.get(tname, ())):
                self.create(key, chain)
            elif verb == "X":
                self._delete(key, chain, tables.get(tname))
            elif verb == "E" and key in self.chains:
                old, new = chain.split("\0", 1)
                self.chains[key] = {new if n == old else n: None for n in self.chains[key]}

    def _delete(self, key: Key, chain: str, table: Table | None) -> None:
        names = self.chains.get(key)
        if names is None:
            return
        if chain:
            names.pop(chain, None)
            return
        hooks = TABLE_HOOKS.get(key[1], ())
        keep: dict[str, None] = {}
        for n in names:
            c = table.chains.get(n) if table is not None else None
            if n in hooks and c is not None and (c.policy != "ACCEPT" or has_rules(c)):
                keep[n] = None
        self.chains[key] = keep

    def reconcile(self, family: int, tables: dict[str, Table]) -> None:
        """Drop chains the tables no longer have; append those no event explained (user chains, and
        built-in chains with rules or a DROP policy). When the counts show the events explained every
        user chain, only the few built-in chains are looked at, so a commit costs what it changed."""
        for tname, t in tables.items():
            key = (family, tname)
            hooks = [h for h in TABLE_HOOKS.get(tname, ()) if h in t.chains]
            names = self.chains.get(key)
            unused = [h for h in hooks if names is None or h not in names]
            used = [h for h in unused if t.chains[h].policy != "ACCEPT" or has_rules(t.chains[h])]
            if names is not None and len(names) + len(unused) == len(t.chains):
                names.update(dict.fromkeys(used))
                continue
            have = {n: None for n in (names or {}) if n in t.chains}
            for n, c in t.chains.items():
                if n not in have and (n not in hooks or c.policy != "ACCEPT" or has_rules(c)):
                    have[n] = None
            if names is not None:
                self.chains[key] = have
            elif have:
                self.ensure(key).update(have)

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "next_handle": self.next_handle,
                "tables": [[fam, name, self.handles[(fam, name)], list(self.chains[(fam, name)])]
                           for fam, name in self.tables]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> XtLayout:
        lay = cls(variant=str(data.get("variant", "nft")))
        for fam, name, handle, chains in data.get("tables", []):
            lay.ensure((int(fam), str(name))).update(dict.fromkeys(str(c) for c in chains))
            lay.handles[(int(fam), str(name))] = int(handle)
        lay.next_handle = int(data.get("next_handle", lay.next_handle))
        return lay


def has_rules(c: Chain) -> bool:
    """Whether a chain has rules, without parsing those of a chain the node file has not read yet."""
    lines = c.saved_lines(False) if isinstance(c, StoredChain) else None
    return bool(c.rules) if lines is None else bool(lines)


def node_layout(node: Node) -> XtLayout:
    """The node's layout, created (and wired to its iptables states) on first use."""
    lay = node.subsystems.get("xt_layout")
    if lay is None:
        lay = XtLayout()
        node.subsystems["xt_layout"] = lay
        for state in node.iptables.values():
            lay.reconcile(state.family, state.tables)
            _listen(lay, state)
    assert isinstance(lay, XtLayout)
    return lay


def _listen(lay: XtLayout, state: IptablesState) -> None:
    def changed(changes: dict[str, tuple[Table | None, Table]]) -> None:
        if state.note:
            lay.replay(state.family, state.note, state.tables)
        lay.reconcile(state.family, {name: new for name, (_, new) in changes.items()})

    state.listeners.append(changed)


def load_layout(node: Node, data: dict[str, Any] | None) -> None:
    """Put back a layout a node file kept (after its tables were loaded, which replays nothing useful)."""
    lay = node_layout(node)
    if data is None:
        return
    saved = XtLayout.from_json(data)
    lay.tables, lay.chains, lay.variant = saved.tables, saved.chains, saved.variant
    lay.handles, lay.next_handle = saved.handles, saved.next_handle
    for state in node.iptables.values():
        lay.reconcile(state.family, state.tables)
