"""The iptables evaluator: committed tables compiled into the engine's executable form.

Semantics are ``ipt_do_table``'s: rules in order, first match decides, user chains called with a
return stack (``-j``) or tail-called (``-g``), RETURN or falling off a user chain pops the stack,
falling off a built-in chain applies its policy, ACCEPT ends only this table at this hook, DROP ends
the packet. Counters are kept on the model as the kernel keeps them.

Speed: each chain is compiled once per commit. Rules become closures; a chain with many rules
gets an index on an exact-match field (destination address or destination port) that maps a key to
the positions of the rules that can match it, merged in order with the rules that do not constrain
that field, so first-match order is kept and a kube-proxy KUBE-SERVICES chain costs the same at
10,000 Services as at 100.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kproxy.iptables.extension import XT_CONTINUE, XT_RETURN, RuleContext
from kproxy.iptables.model import Chain, Rule, Table
from kproxy.netfilter.hooks import TABLE_HOOKS, HookState, table_priority
from kproxy.packet import NF_ACCEPT, NF_DROP, NF_QUEUE, Packet

RuleTest = Callable[[Packet, RuleContext], bool]

# A chain is indexed when it has at least this many rules and few enough unindexable ones.
INDEX_MIN_RULES = 8
INDEX_MAX_WILDCARDS = 64


def iface_matcher(name: str) -> Callable[[str], bool]:
    """Interface names compare as fixed-width strings; a trailing ``+`` makes the rest a prefix."""
    if name.endswith("+"):
        prefix = name[:-1]
        return lambda dev: dev.startswith(prefix)
    return lambda dev: dev == name


def compile_rule(rule: Rule) -> RuleTest:
    """A closure testing the rule's ip header part and then its matches, cheapest checks first."""
    checks: list[RuleTest] = []
    if rule.proto:
        proto, inv = rule.proto, rule.proto_inv
        checks.append(lambda p, c: (p.proto == proto) != inv)
    if rule.dst is not None:
        dnet, dmask, dinv = rule.dst.addr, rule.dst.mask, rule.dst_inv
        checks.append(lambda p, c: ((p.dst & dmask) == dnet) != dinv)
    if rule.src is not None:
        snet, smask, sinv = rule.src.addr, rule.src.mask, rule.src_inv
        checks.append(lambda p, c: ((p.src & smask) == snet) != sinv)
    if rule.iif is not None:
        im, iinv = iface_matcher(rule.iif), rule.iif_inv
        checks.append(lambda p, c: im(c.state.in_dev) != iinv)
    if rule.oif is not None:
        om, oinv = iface_matcher(rule.oif), rule.oif_inv
        checks.append(lambda p, c: om(c.state.out_dev) != oinv)
    if rule.fragment is not None:
        want = rule.fragment
        # We model unfragmented packets only: -f never matches, ! -f always does.
        checks.append(lambda p, c: not want)
    for m in rule.matches:
        if not m.redundant(rule):
            checks.append(m.matches)
    if not checks:
        return lambda p, c: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        a, b = checks
        return lambda p, c: a(p, c) and b(p, c)
    if len(checks) == 3:
        a, b, d = checks
        return lambda p, c: a(p, c) and b(p, c) and d(p, c)
    return lambda p, c: all(t(p, c) for t in checks)


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
    """A chain's rules as closures plus an optional exact-match index."""

    __slots__ = ("chain", "rules", "tests", "all_positions", "field", "buckets", "wildcards")

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.rules = chain.rules
        self.tests: list[RuleTest | None] = [None] * len(chain.rules)   # compiled on first use
        self.all_positions = list(range(len(chain.rules)))
        self.field: str | None = None
        self.buckets: dict[Any, list[int]] = {}
        self.wildcards: list[int] = self.all_positions
        if len(chain.rules) >= INDEX_MIN_RULES:
            self._build_index()

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

    def positions(self, pkt: Packet) -> list[int]:
        field = self.field
        if field is None:
            return self.all_positions
        key = pkt.dst if field == "dst" else pkt.dport
        return self.buckets.get(key, self.wildcards)


class CompiledTable:
    """All chains of one committed table, each compiled on first use; unchanged chains are reused."""

    def __init__(self, table: Table, previous: CompiledTable | None = None) -> None:
        self.table = table
        self.chains: _LazyChains = _LazyChains(table, previous.chains if previous is not None else None)


class _LazyChains(dict):  # type: ignore[type-arg]
    """name -> CompiledChain, compiling a chain the first time a packet reaches it."""

    def __init__(self, table: Table, old: _LazyChains | None) -> None:
        super().__init__()
        self.table = table
        self.old = old

    def __missing__(self, name: str) -> CompiledChain:
        c = self.table.chains[name]
        cc = dict.get(self.old, name) if self.old is not None else None
        if cc is not None and len(cc.rules) == len(c.rules) and all(a is b for a, b in zip(cc.rules, c.rules)):
            cc.chain, cc.rules = c, c.rules
        else:
            cc = CompiledChain(c)
        self[name] = cc
        return cc

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        if name in self.table.chains:
            return self[name]
        return default


class TableRunner:
    """Runs one table's built-in chain for a hook, following ``ipt_do_table``."""

    def __init__(self, engine: IptablesEngine, table: str) -> None:
        self.engine = engine
        self.table = table

    def __call__(self, pkt: Packet, state: HookState) -> int:
        compiled = self.engine.compiled(self.table)
        if compiled is None:
            return NF_ACCEPT
        return run_chain(compiled, state.hook, pkt, state, self.engine.family)


def run_chain(ct: CompiledTable, hook: str, pkt: Packet, state: HookState, family: int) -> int:
    """Traverse from built-in chain ``hook``; return NF_ACCEPT, NF_DROP or NF_QUEUE."""
    tname = ct.table.name
    chains = ct.chains
    cc = chains.get(hook)
    if cc is None:
        return NF_ACCEPT
    trace = state.trace
    base = cc.chain          # falling off (or RETURN from) a chain reached by -g applies the built-in's policy
    ctx = RuleContext(state, tname, hook, family)
    stack: list[tuple[CompiledChain, list[int], int]] = []
    positions = cc.positions(pkt)
    pos = 0
    length = pkt.length
    if trace is not None:
        trace.add("chain", hook=state.hook, table=tname, chain=hook)
    while True:
        if pos >= len(positions):
            # Fell off the end: user chains return, built-in chains apply the policy.
            if stack:
                if trace is not None:
                    trace.add("return", hook=state.hook, table=tname, chain=cc.chain.name,
                              text="end of chain")
                cc, positions, pos = stack.pop()
                ctx.chain = cc.chain.name
                continue
            return apply_policy(base, pkt, state, tname)
        i = positions[pos]
        pos += 1
        test = cc.tests[i]
        if test is None:
            test = cc.tests[i] = compile_rule(cc.rules[i])
        if not test(pkt, ctx):
            continue
        rule = cc.rules[i]
        rule.packets += 1
        rule.bytes += length
        jump = rule.jump
        if jump is not None:
            if trace is not None:
                _trace_rule(trace, state, tname, cc.chain.name, i, rule, jump)
            if jump == "ACCEPT":
                return NF_ACCEPT
            if jump == "DROP":
                return NF_DROP
            if jump == "RETURN":
                if stack:
                    cc, positions, pos = stack.pop()
                    ctx.chain = cc.chain.name
                    continue
                return apply_policy(base, pkt, state, tname)
            if jump == "QUEUE":
                return NF_QUEUE
            nxt = chains[jump]
            if not rule.goto:
                stack.append((cc, positions, pos))
            cc = nxt
            ctx.chain = jump
            positions = cc.positions(pkt)
            pos = 0
            continue
        target = rule.target
        if target is None:
            if trace is not None:
                _trace_rule(trace, state, tname, cc.chain.name, i, rule, "")
            continue
        if trace is not None:
            event = _trace_rule(trace, state, tname, cc.chain.name, i, rule, "")
            verdict = target.execute(pkt, ctx)
            event.verdict = _verdict_name(verdict) if not state.rejected_with else f"REJECT ({state.rejected_with})"
        else:
            verdict = target.execute(pkt, ctx)
        if verdict == XT_CONTINUE:
            continue
        if verdict == XT_RETURN:
            if stack:
                cc, positions, pos = stack.pop()
                ctx.chain = cc.chain.name
                continue
            return apply_policy(base, pkt, state, tname)
        return verdict


def apply_policy(chain: Chain, pkt: Packet, state: HookState, table: str) -> int:
    chain.packets += 1
    chain.bytes += pkt.length
    if state.trace is not None:
        state.trace.add("policy", hook=state.hook, table=table, chain=chain.name, verdict=chain.policy or "ACCEPT")
    return NF_DROP if chain.policy == "DROP" else NF_ACCEPT


def _verdict_name(v: int) -> str:
    return {NF_ACCEPT: "ACCEPT", NF_DROP: "DROP", XT_CONTINUE: "continue", XT_RETURN: "RETURN",
            NF_QUEUE: "QUEUE"}.get(v, str(v))


def _trace_rule(trace: Any, state: HookState, table: str, chain: str, i: int, rule: Rule, verdict: str) -> Any:
    from kproxy.iptables.save import format_rule

    return trace.add("rule", hook=state.hook, table=table, chain=chain, rule=i + 1,
              text=format_rule(chain, rule), verdict=verdict)


class IptablesEngine:
    """One family's iptables tables hooked into a node, recompiled whenever a commit changes them."""

    def __init__(self, node: Any, state: Any, family: int = 4) -> None:
        self.node = node
        self.state = state
        self.family = family
        self._compiled: dict[str, tuple[int, Table, CompiledTable]] = {}
        self.runners = {name: TableRunner(self, name) for name in TABLE_HOOKS}

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
        """Compile every chain and rule of every table now (they otherwise compile on first use)."""
        n = 0
        for name in list(self.state.tables):
            ct = self.compiled(name)
            if ct is None:
                continue
            for chain_name in ct.table.chains:
                cc = ct.chains[chain_name]
                for i, test in enumerate(cc.tests):
                    if test is None:
                        cc.tests[i] = compile_rule(cc.rules[i])
                        n += 1
        return n

    def register(self) -> None:
        """Hook in, at their kernel priorities, the tables that exist; follow every commit.

        A table is registered on its hooks only once it exists (as iptables-nft creates base chains
        only when a table is used), so a packet pays nothing for tables nobody configured.
        """
        self._registered: set[str] = set()
        self.state.listeners.append(self.sync_registration)
        self.sync_registration()

    def sync_registration(self) -> None:
        for name in TABLE_HOOKS:
            if name in self.state.tables and name not in self._registered:
                self._hook_in(name)
                self._registered.add(name)

    def _hook_in(self, name: str) -> None:
        opname = f"iptables{'' if self.family == 4 else '6'}:{name}"
        for hook in TABLE_HOOKS[name]:
            prio = table_priority(name, hook)
            if name == "nat":
                self.node.nat.register_lookup(self.family, hook, prio, opname, self.runners[name])
            else:
                self.node.hooks.register(self.family, hook, prio, opname, self.runners[name])
