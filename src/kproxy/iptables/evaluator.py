"""The iptables evaluator: committed tables compiled into the engine's executable form.

Semantics are ``ipt_do_table``'s: rules in order, first match decides, user chains called with a
return stack (``-j``) or tail-called (``-g``), RETURN or falling off a user chain pops the stack,
falling off a built-in chain applies its policy, ACCEPT ends only this table at this hook, DROP ends
the packet. Counters are kept on the model as the kernel keeps them.

Speed: each chain is compiled once per commit, on first use, into a Python function
(``kproxy.iptables.compiler``); a chain with many rules gets an index on an exact-match field
(destination address or destination port) that maps a key to the positions of the rules that can
match it, merged in order with the rules that do not constrain that field, so first-match order is
kept and a kube-proxy KUBE-SERVICES chain costs the same at 10,000 Services as at 100.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kproxy.iptables.compiler import (
    MAX_INLINE_RULES,
    ChainFn,
    ChainRef,
    Ref,
    inline_chain,
    looped_chain,
    rebind,
    rule_step,
)
from kproxy.iptables.extension import XT_RETURN, RuleContext
from kproxy.iptables.model import CONNTRACK_USE, Chain, Rule, Table
from kproxy.netfilter.hooks import TABLE_HOOKS, HookState, table_priority
from kproxy.packet import NF_ACCEPT, NF_DROP, Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node

# A chain is indexed when it has at least this many rules and few enough unindexable ones.
INDEX_MIN_RULES = 8
INDEX_MAX_WILDCARDS = 64


def rule_key(rule: Rule, field: str) -> Any:
    """The exact value ``rule`` requires for ``field`` (``dst`` or ``dport``), or None."""
    if field == "dst":
        d = rule.dst
        if d is not None and not rule.dst_inv and d.prefixlen == d.bits:
            return d.addr
        return None
    for m in rule.matches:
        key = m.index_key()
        if key is not None and key[0] == field:
            return key[1]
    return None


class CompiledChain:
    """A chain's rules as one function (see ``kproxy.iptables.compiler``), with an exact-match
    index when the chain is long enough to want one."""

    __slots__ = ("chain", "rules", "builtin", "field", "buckets", "wildcards", "steps", "fn", "ref")

    def __init__(self, chain: Chain, ref: Ref) -> None:
        self.chain = chain
        self.ref = ref
        self.rules = chain.rules
        self.builtin = chain.policy is not None
        self.field: str | None = None
        self.buckets: dict[Any, list[int]] = {}
        self.wildcards: list[int] = list(range(len(chain.rules)))
        self.steps: list[Any] = []
        if len(chain.rules) >= INDEX_MIN_RULES:
            self._build_index()
        if self.field is None and len(chain.rules) <= MAX_INLINE_RULES:
            self.fn: ChainFn = inline_chain(chain.rules, chain.name, self.builtin, ref)
        else:
            self.steps = [None] * len(chain.rules)        # each rule compiled the first time it is reached
            self.fn = looped_chain(chain.name, self.builtin, self.field, self.buckets, self.wildcards, self.steps,
                                   self._step)

    def _build_index(self) -> None:
        best: tuple[int, str, list[Any]] | None = None
        for field in ("dst", "dport"):
            keys = [rule_key(r, field) for r in self.rules]
            wild = sum(1 for k in keys if k is None)
            if wild <= INDEX_MAX_WILDCARDS and wild < len(keys) // 2 and (best is None or wild < best[0]):
                best = (wild, field, keys)
        if best is None:
            return
        _, field, keys = best
        wildcards = [i for i, k in enumerate(keys) if k is None]
        keyed: dict[Any, list[int]] = {}
        for i, k in enumerate(keys):
            if k is not None:
                keyed.setdefault(k, []).append(i)
        self.buckets = {k: sorted(v + wildcards) for k, v in keyed.items()} if wildcards else keyed
        self.wildcards = wildcards
        self.field = field

    def _step(self, i: int) -> Any:
        step = self.steps[i] = rule_step(self.rules[i], i, self.chain.name, self.ref)
        return step

    def rebind(self, ref: Ref) -> None:
        """Jump into another table's chains from now on (see ``compiler.rebind``)."""
        self.ref = ref
        self.fn = rebind(self.fn, ref)
        steps = self.steps
        for i, step in enumerate(steps):
            if step is not None:
                steps[i] = rebind(step, ref)

    def compile_all(self) -> int:
        """Compile every rule's step now; returns how many were compiled."""
        n = 0
        for i, step in enumerate(self.steps):
            if step is None:
                self._step(i)
                n += 1
        return n


class CompiledTable:
    """All chains of one committed table, each compiled on first use; unchanged chains are reused."""

    def __init__(self, table: Table, previous: CompiledTable | None = None) -> None:
        self.table = table
        self.compiled: dict[str, CompiledChain] = {}
        self.refs: dict[str, ChainRef] = {}
        self.chains: _LazyChains = _LazyChains(self, previous.compiled if previous is not None else {})

    def ref(self, name: str) -> ChainRef:
        """This table's ChainRef for ``name``: its first call compiles the chain."""
        r = self.refs.get(name)
        if r is None:
            chains = self.chains
            r = self.refs[name] = ChainRef(name, lambda p, c: chains[name](p, c))
        return r


class _LazyChains(dict[str, Any]):
    """name -> chain function, compiling a chain the first time a packet reaches it (through its
    ChainRef or as a built-in chain); a chain whose rules are the very ones of the previous commit
    keeps its code, rebound to this table's ChainRefs."""

    def __init__(self, owner: CompiledTable, old: dict[str, CompiledChain]) -> None:
        super().__init__()
        self.owner = owner
        self.old = old

    def __missing__(self, name: str) -> ChainFn:
        owner = self.owner
        c = owner.table.chains[name]
        cc = self.old.get(name)
        if cc is None or len(cc.rules) != len(c.rules) or cc.builtin != (c.policy is not None) or \
                not all(a is b for a, b in zip(cc.rules, c.rules)):
            cc = CompiledChain(c, owner.ref)
        else:
            cc.rebind(owner.ref)
        cc.chain, cc.rules = c, c.rules
        owner.compiled[name] = cc
        self[name] = owner.ref(name).fn = cc.fn
        return cc.fn

    def get(self, name: str, default: Any = None) -> Any:
        if name in self.owner.table.chains:
            return self[name]
        return default


def table_runner(engine: IptablesEngine, table: str) -> Callable[[Packet, HookState], int]:
    """The hook function of one table: its built-in chain for the hook, as ``ipt_do_table`` runs it."""
    state, family, cache = engine.state, engine.family, engine._compiled

    def run(pkt: Packet, hook_state: HookState) -> int:
        # engine.compiled(table), with its cache check inlined: this runs for every table at every
        # hook a packet passes, and the call alone was a few per cent of a new connection.
        hit = cache.get(table)
        compiled: CompiledTable | None
        if hit is not None and hit[0] == state.generation and hit[1] is state.tables.get(table):
            compiled = hit[2]
        else:
            compiled = engine.compiled(table)
            if compiled is None:
                return NF_ACCEPT
        # A RETURN from the built-in chain, or falling off it (or off a chain it reached by -g),
        # applies the built-in chain's policy.
        hook = hook_state.hook
        chains = compiled.chains
        fn = dict.get(chains, hook) or chains.get(hook)
        if fn is None:
            return NF_ACCEPT
        if hook_state.trace is not None and not hook_state.trace.quiet:
            hook_state.trace.add("chain", hook=hook, table=table, chain=hook)
        verdict = fn(pkt, RuleContext(hook_state, table, hook, family))
        if verdict == XT_RETURN:
            return apply_policy(compiled.table.chains[hook], pkt, hook_state, table)
        return verdict

    return run


def apply_policy(chain: Chain, pkt: Packet, state: HookState, table: str) -> int:
    chain.packets += 1
    chain.bytes += pkt.length
    trace = state.trace
    if trace is not None:
        if trace.counted is not None:
            trace.counted.append((table, chain))
        else:
            trace.add("policy", hook=state.hook, table=table, chain=chain.name, verdict=chain.policy or "ACCEPT")
    return NF_DROP if chain.policy == "DROP" else NF_ACCEPT


class IptablesEngine:
    """One family's iptables tables hooked into a node, recompiled whenever a commit changes them."""

    def __init__(self, node: Node, state: Any, family: int = 4) -> None:
        self.node = node
        self.state = state
        self.family = family
        self._compiled: dict[str, tuple[int, Table, CompiledTable]] = {}
        self.runners = {name: table_runner(self, name) for name in TABLE_HOOKS}

    def compiled(self, table: str) -> CompiledTable | None:
        t = self.state.tables.get(table)
        if t is None:
            return None
        gen = self.state.generation
        hit = self._compiled.get(table)
        if hit is not None and hit[0] == gen and hit[1] is t:
            return hit[2]
        ct = CompiledTable(t, hit[2] if hit is not None else None)
        self._compiled[table] = (gen, t, ct)
        return ct

    def precompile(self) -> int:
        """Compile every chain and rule of every table now (they otherwise compile on first use);
        returns how many chains and indexed rules were compiled.

        The cyclic GC is paused meanwhile: a bulk build of long-lived objects only makes it rescan
        the growing heap (four times the work at 100,000 rules)."""
        n = 0
        paused = gc.isenabled()
        gc.disable()
        try:
            for name in list(self.state.tables):
                ct = self.compiled(name)
                if ct is None:
                    continue
                for chain_name in ct.table.chains:
                    if chain_name not in ct.chains:
                        ct.chains[chain_name]
                        n += 1
                    n += ct.compiled[chain_name].compile_all()
        finally:
            if paused:
                gc.enable()
        return n

    def register(self) -> None:
        """Hook in, at their kernel priorities, the tables that exist; follow every commit.

        A table is registered on its hooks only once it exists (as iptables-nft creates base chains
        only when a table is used), so a packet pays nothing for tables nobody configured.
        """
        self._registered: set[str] = set()
        self.state.listeners.append(self.committed)
        self.committed({name: (None, t) for name, t in self.state.tables.items()})

    def committed(self, changes: dict[str, tuple[Table | None, Table]]) -> None:
        """After a commit: hook in new tables, and take or release the conntrack and set references
        the changed tables' rules hold (as each rule's checkentry/destroy does in the kernel)."""
        for name in TABLE_HOOKS:
            if name in self.state.tables and name not in self._registered:
                self._hook_in(name)
                self._registered.add(name)
        delta: dict[str, int] = {}
        for old, new in changes.values():
            for key, n in new.use_counts().items():
                delta[key] = delta.get(key, 0) + n
            for key, n in (old.use_counts() if old is not None else {}).items():
                delta[key] = delta.get(key, 0) - n
        for key, n in delta.items():
            if n:
                self._hold(key, n)

    def _hold(self, key: str, n: int) -> None:
        if key == CONNTRACK_USE:
            if n > 0:
                self.node.conntrack.netns_get(self.family, n)
            else:
                self.node.conntrack.netns_put(self.family, -n)
        elif key.startswith("set:") and self.node.ipsets is not None:
            self.node.ipsets.hold(key[4:], n)

    def _hook_in(self, name: str) -> None:
        opname = f"iptables{'' if self.family == 4 else '6'}:{name}"
        for hook in TABLE_HOOKS[name]:
            prio = table_priority(name, hook)
            if name == "nat":
                self.node.nat.register_lookup(self.family, hook, prio, opname, self.runners[name])
            else:
                self.node.hooks.register(self.family, hook, prio, opname, self.runners[name])
