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
class Handles:
    """One iptables-nft table's nf_tables handles, as the kernel hands them out: one counter per table
    for its chains and rules alike; a replaced rule keeps its handle; a deleted one's is not reused."""

    next: int = 1
    chains: dict[str, int] = field(default_factory=dict)
    rules: dict[str, list[int]] = field(default_factory=dict)     # per chain, in rule order

    def take(self) -> int:
        self.next += 1
        return self.next - 1

    def to_json(self) -> list[Any]:
        """Rule handles as runs (first, count): a loaded table's are consecutive, so the node file keeps
        about one pair per chain, as it keeps one name per chain."""
        return [self.next, self.chains, {n: _runs(r) for n, r in self.rules.items()}]

    @classmethod
    def from_json(cls, data: list[Any]) -> Handles:
        return cls(int(data[0]), {str(k): int(v) for k, v in data[1].items()},
                   {str(k): [int(v[i]) + j for i in range(0, len(v), 2) for j in range(int(v[i + 1]))]
                    for k, v in data[2].items()})


def _runs(handles: list[int]) -> list[int]:
    out: list[int] = []
    for x in handles:
        if out and out[-2] + out[-1] == x:
            out[-1] += 1
        else:
            out += [x, 1]
    return out


@dataclass
class XtLayout:
    """The iptables-nft tables in kernel order, each with its chains in creation order."""

    tables: list[Key] = field(default_factory=list)
    chains: dict[Key, dict[str, None]] = field(default_factory=dict)    # ordered sets of chain names
    variant: str = "nft"        # "legacy": iptables-legacy keeps its tables out of nf_tables
    handles: dict[Key, int] = field(default_factory=dict)
    next_handle: int = 1        # the namespace's table handle counter (nft's own tables aside)
    ids: dict[Key, Handles] = field(default_factory=dict)     # chain and rule handles, per table

    def ensure(self, key: Key) -> dict[str, None]:
        if key not in self.chains:
            self.chains[key] = {}
            self.tables.append(key)
            self.handles[key] = self.next_handle
            self.next_handle += 1
            self.ids[key] = Handles()
        return self.chains[key]

    def drop(self, key: Key) -> None:
        if key in self.chains:
            del self.chains[key]
            del self.handles[key]
            self.ids.pop(key, None)
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
                h = self.ids.get(key)
                if h is not None and old in h.chains:
                    h.chains[new] = h.chains.pop(old)
                    h.rules[new] = h.rules.pop(old, [])

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

    def number(self, family: int, changes: dict[str, tuple[Table | None, Table]],
               events: list[tuple[str, str, str]]) -> None:
        """Give the chains and rules a commit made their handles, in the order the kernel took them:
        new chains first, then new rules in the order of the commands (``-A`` the first new rule of its
        chain, ``-I`` the last, ``-R`` the replaced rule's own handle), then any rule no command explains.
        Only the chains the commands named are looked at, unless one named none (``-F``, ``-X`` alone)."""
        recreated: set[str] = set()
        was: dict[str, str] = {}
        by_table: dict[str, list[tuple[str, str]]] = {}  # each table's events (a restore has one per rule)
        for t, verb, chain in events:
            if verb == "*":
                recreated.add(t)
            elif verb == "E":
                before, _, after = chain.partition("\0")
                was[after] = before
            by_table.setdefault(t, []).append((verb, chain))
        for tname, (old, new) in changes.items():
            key = (family, tname)
            h = self.ids.get(key)
            mine = by_table.get(tname, [])
            touched = {chain for verb, chain in mine if verb[0] != "*" and "\0" not in chain}
            touched |= {chain.split("\0")[-1] for verb, chain in mine if verb[0] != "*" and "\0" in chain}
            touched |= {""} if tname in recreated else set()
            if h is None or key not in self.chains or not touched:
                continue        # a table loaded from the node file, not changed by a command
            base = None if old is None or tname in recreated else old
            if base is not None and not h.chains and any(has_rules(c) for c in base.chains.values()):
                self.ids[key] = h = fresh_handles(base, [n for n in self.chains[key] if n in base.chains])
            if "" in touched or base is None:
                touched = set(self.chains[key]) | set(h.chains)
            touched |= {was[n] for n in touched if n in was}
            layout = self.chains[key]
            for n in [n for n in h.chains if n in touched and (n not in layout or n not in new.chains)]:
                del h.chains[n]
                h.rules.pop(n, None)
            names = [n for n in layout if n in new.chains] if len(touched) > len(layout) // 2 else \
                sorted((n for n in touched if n in layout and n in new.chains), key=list(layout).index)
            for n in names:
                if n not in h.chains:
                    h.chains[n] = h.take()
            pending = {n: p for n in names if (p := _renumber(h, n, base, new, was.get(n, n))) is not None}
            for verb, chain in mine:
                todo = pending.get(chain)
                if verb in ("A", "I", "R") and todo:
                    i = todo.pop(-1 if verb == "I" else 0)
                    h.rules[chain][i] = h.take() if h.rules[chain][i] < 0 else h.rules[chain][i]
            for n, todo in pending.items():
                for i in todo:
                    h.rules[n][i] = h.take() if h.rules[n][i] < 0 else h.rules[n][i]

    def rule_handles(self, key: Key, table: Table) -> dict[str, tuple[int, list[int]]] | None:
        """Each chain's handle and its rules' handles, when kept for the whole table; else None."""
        h = self.ids.get(key)
        if h is None or not h.chains:
            return None
        out = {}
        for n, handle in h.chains.items():
            c = table.chains.get(n)
            rules = h.rules.get(n, [])
            if c is None or (len(rules) != len(c.rules) if rules or has_rules(c) else False):
                return None
            out[n] = (handle, rules)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "next_handle": self.next_handle,
                "tables": [[fam, name, self.handles[(fam, name)], list(self.chains[(fam, name)])]
                           for fam, name in self.tables],
                "ids": [[fam, name, self.ids[(fam, name)].to_json()] for fam, name in self.tables
                        if (fam, name) in self.ids]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> XtLayout:
        lay = cls(variant=str(data.get("variant", "nft")))
        for fam, name, handle, chains in data.get("tables", []):
            lay.ensure((int(fam), str(name))).update(dict.fromkeys(str(c) for c in chains))
            lay.handles[(int(fam), str(name))] = int(handle)
        lay.next_handle = int(data.get("next_handle", lay.next_handle))
        lay.ids = {k: Handles() for k in lay.chains}        # an older file: no handles kept
        for fam, name, ids in data.get("ids", []):
            lay.ids[(int(fam), str(name))] = Handles.from_json(ids)
        return lay


def fresh_handles(table: Table, names: list[str]) -> Handles:
    """The handles a fresh load of the table hands out (chains in order, then their rules chain by
    chain): the guess for a table whose history was not kept."""
    h = Handles()
    for n in names:
        h.chains[n] = h.take()
    for n in names:
        h.rules[n] = [h.take() for _ in table.chains[n].rules]
    return h


def _renumber(h: Handles, name: str, old: Table | None, new: Table, old_name: str) -> list[int] | None:
    """Carry chain ``name``'s rule handles from ``old`` to ``new`` (rules are kept as objects by a commit);
    the positions still to number (a replaced rule's position holds its old handle), or None when the
    chain did not change. ``old_name``: what the chain was called before the commit (``-E``)."""
    nc = new.chains[name]
    oc = old.chains.get(old_name) if old is not None else None
    if oc is nc and name in h.rules:
        return None
    before = list(oc.rules) if oc is not None else []
    if not before:  # a new (or emptied) chain: every rule is new, in order (a restore's 10,000 chains)
        h.rules[name] = [-1] * len(nc.rules)
        return list(range(len(nc.rules)))
    known = h.rules.get(name, [])
    if len(known) != len(before):
        known = [-1] * len(before)
    by_id = {id(r): x for r, x in zip(before, known, strict=True)}
    now = {id(r) for r in nc.rules}
    out, todo = [], []
    for i, r in enumerate(nc.rules):
        x = by_id.get(id(r))
        if x is None:
            replaced = i < len(before) and id(before[i]) not in now
            x = known[i] if replaced else -1
            todo.append(i)
        out.append(x)
    h.rules[name] = out
    return todo


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
        events = state.note or []
        if events:
            lay.replay(state.family, events, state.tables)
        lay.reconcile(state.family, {name: new for name, (_, new) in changes.items()})
        if lay.variant == "nft":
            lay.number(state.family, changes, events)

    state.listeners.append(changed)


def load_layout(node: Node, data: dict[str, Any] | None) -> None:
    """Put back a layout a node file kept (after its tables were loaded, which replays nothing useful)."""
    lay = node_layout(node)
    if data is None:
        return
    saved = XtLayout.from_json(data)
    lay.tables, lay.chains, lay.variant = saved.tables, saved.chains, saved.variant
    lay.handles, lay.next_handle, lay.ids = saved.handles, saved.next_handle, saved.ids
    for state in node.iptables.values():
        lay.reconcile(state.family, state.tables)
