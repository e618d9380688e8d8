"""nft chains compiled into closures when first run, so a packet costs a few calls and dict lookups per rule.

A chain becomes one function over its rules; a rule is its leading matches (tests returning a bool)
followed by its other statements (actions returning the interpreter's signals). The common forms are
specialised: payload, meta and ct state keys read straight from the packet, exact, prefix and range
comparisons, jumps and gotos bound to the target chain's compiled function, and set and map lookups
through an index (a dict for sets whose elements are all exact values, as kube-proxy's verdict maps
are, so a lookup does not grow with the set). Everything else calls the interpreter's own method for
that statement or expression (``ChainRunner.run_stmt``, ``matches``, ``value``), so the two cannot
disagree on the forms that are not specialised. A ruleset is compiled per commit: ``attach`` builds a
new ``ChainRunner`` for every transaction, and set contents changed by the packet path (``add @s``)
are seen because each index checks that its set's element list is unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kproxy.iptables.ext.statistic import node_rng
from kproxy.netfilter.nat import NatRange, one_destination
from kproxy.nftables.evaluate import CONTINUE, CT_STATE_BITS, PORT_PROTOS, RETURN, Unsupported
from kproxy.nftables.expr import (
    TRANSPORT,
    Binop,
    Concat,
    Const,
    Ct,
    Elem,
    Expr,
    Meta,
    Numgen,
    Payload,
    Prefix,
    Range,
    SetLit,
    SetRef,
    Verdict,
)
from kproxy.nftables.stmt import Mangle, Match, Nat, PortsMatch, Stmt, VerdictMap, VerdictStmt
from kproxy.packet import NF_ACCEPT, NF_DROP

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.netfilter.hooks import HookState
    from kproxy.nftables.evaluate import ChainRunner
    from kproxy.nftables.model import Chain
    from kproxy.packet import Packet

Getter = Callable[["Packet", "HookState"], Any]
Test = Callable[["Packet", "HookState"], bool]
Action = Callable[["Packet", "HookState", int], "int | None"]
ChainFn = Callable[["Packet", "HookState", int], int]

MISSING = object()
INLINE_RULES = 4        # a jump to a chain of at most this many rules is compiled inline ...
INLINE_LEVELS = 3       # ... this many chains deep at most


def indexed_get(src: ChainSource, index: Any, holder: Any, current: Callable[[], Any], expr: str) -> str:
    """A lookup through a named set's or map's exact index while it is current (the same elements
    list, the same length), else through ``current``, which brings it up to date first."""
    i, h = src.const(index), src.const(holder)
    return f"({i}.exact if {i}.elems is {h}.elems and {i}.size == len({h}.elems) else {src.const(current)}())" \
        f".get({expr})"

class SetIndex:
    """The elements of one set or map by value, rebuilt when its element list changes.

    Only sets whose keys are all exact values (no prefix, range or wildcard) get a dict; the others
    are scanned in order, as the interpreter does, since the first element that covers a value wins.
    """

    __slots__ = ("elems", "size", "exact", "convert", "ints")

    def __init__(self, convert: Callable[[Any], Any] | None = None, ints: dict[int, int] | None = None) -> None:
        self.elems: list[Elem] | None = None
        self.size = -1
        self.exact: dict[Any, Any] | Scan | None = None
        self.convert = convert  # what to keep of an element's data (or of the element, in a set)
        self.ints = ints        # the compiler's one object per number (``intern_int``)

    def refresh(self, elems: list[Elem]) -> dict[Any, Any] | None:
        exact: dict[Any, Any] | None = {}
        ints = self.ints
        for e in elems:
            k = exact_key(e.key)
            if k is MISSING:
                exact = None
                break
            assert exact is not None
            if ints is not None:
                k = tuple([intern_int(ints, x) for x in k]) if type(k) is tuple else intern_int(ints, k)
            if k not in exact:  # the first element of a value wins
                found = e.data if e.data is not None else e
                exact[k] = found if self.convert is None else self.convert(found)
        self.elems, self.size, self.exact = elems, len(elems), exact
        return exact


class Scan:
    """A lookup with a dict's ``get`` for a map whose keys are not all exact values."""

    __slots__ = ("get",)

    def __init__(self, get: Callable[[Any], Any]) -> None:
        self.get = get


def intern_int(ints: dict[int, int], v: Any) -> Any:
    """One object for each number a compiler's chains and indexes hold (a Service's address is in its
    map key and in its chain's test, an endpoint's in its chain's test and in its DNAT): a new connection
    reads one object where it read two, which counts when 10,000 Services' objects are not in the cache."""
    return ints.setdefault(v, v) if type(v) is int and v > 256 else v


def exact_key(k: Expr) -> Any:
    """The value an element key matches exactly (a tuple for a concatenation), or MISSING."""
    if type(k) is Const:
        v = k.value
        return MISSING if isinstance(v, str) and v.endswith("*") else v
    if type(k) is Concat:
        parts = tuple(exact_key(i) for i in k.items)
        return MISSING if any(p is MISSING for p in parts) else parts
    return MISSING


class Compiler:
    """Compiles the chains of one runner's table, each once, on first use.

    A chain is Python source with one ``if`` per rule: the common tests are inlined as expressions
    (``pkt.family == 4 and pkt.src == k0``), jumps and gotos call the target chain's function, and every
    other statement is a call of a closure. Chains of the same shape (kube-proxy's thousands of
    endpoint chains) share one code object; each binds its own constants as parameter defaults.
    """

    def __init__(self, runner: ChainRunner) -> None:
        self.runner = runner
        self.chains: dict[str, ChainFn] = {}
        self.indexes: dict[int, SetIndex] = {}
        self.building: set[str] = set()
        # Bound once: every chain binds the same object (a fresh bound method per chain is one more
        # object per chain for a packet to touch).
        self.nat_setup = runner.node.nat.setup
        self.ints: dict[int, int] = {}      # one object per number (``intern_int``)
        family = {"ip": 4, "ip6": 6}.get(runner.table.family)
        self.family_guard = f"pkt.family == {family}" if family else None   # a test the table's packets pass
        self.traced: Callable[[Packet, HookState], int] = runner.run_base
        self.stub: Callable[[Packet, HookState], int] | None = None    # ``entry``'s function
        self.fused: Callable[[Packet, HookState], int] | None = None   # ``fuse``'s function, while current
        # Puts a hook function in the place of another where the runner's chain is registered.
        self.install: Callable[[Any, Any], None] | None = None
        self.nat_setup_one = runner.node.nat.setup_one_destination

    def chain(self, chain: Chain) -> ChainFn:
        fn = self.chains.get(chain.name)
        if fn is None:
            self.building.add(chain.name)
            try:
                fn = self.chains[chain.name] = self.build_chain(chain)
            finally:
                self.building.discard(chain.name)
        return fn

    def entry(self, traced: Callable[[Packet, HookState], int]) -> Callable[[Packet, HookState], int]:
        """The base chain's hook function as registered: a traced packet goes to ``traced`` (the
        interpreter, which reports each rule), the others to the fused entry (``fuse``), built on first use.

        The fused entry takes this function's place where it is registered (``install``), so a packet
        calls the base chain's own code, with no call in between."""
        self.traced = traced

        def hook(pkt: Packet, state: HookState) -> int:
            if state.trace is not None:
                return traced(pkt, state)
            return (self.fused or self.fuse())(pkt, state)

        self.stub = hook
        return hook

    def fuse(self) -> Callable[[Packet, HookState], int]:
        """The base chain compiled as its hook function: a traced packet to the interpreter, a packet of the
        other family accepted, the chain's RETURN (its end, a ``return``) taken as the policy, an expression
        the emulator does not evaluate a drop (said plainly when traced; never matched wrongly)."""
        chain = self.runner.chain
        family = {"ip": 4, "ip6": 6}.get(self.runner.table.family, 0)  # 0: both (inet)
        src = ChainSource(self.ints)
        src.policy = "NF_DROP" if chain.policy == "drop" else "NF_ACCEPT"
        src.offset = 1          # inside the try
        src.depth = "0"         # a constant: Python folds the depths of the inlined chains, and drops their checks
        self.building.add(chain.name)
        try:
            for r in chain.rules:
                self.rule(src, r.stmts)
        finally:
            self.building.discard(chain.name)
        self.fused = src.function((src.const(self.traced), family))
        if self.install is not None:
            self.install(self.stub, self.fused)
        return self.fused

    def forget(self) -> None:
        """Drop every compiled chain and index: the table's chains or sets were changed in place (a journaled
        transaction replaces the objects it changes); chains compile again on their next packet."""
        self.chains.clear()
        self.indexes.clear()
        self.ints.clear()
        fused, self.fused = self.fused, None
        if fused is not None and self.install is not None:
            self.install(fused, self.stub)     # the hook builds the entry again on the next packet

    def precompile(self) -> int:
        """Compile now every chain the base chain can reach (packets otherwise do it on first use);
        returns how many."""
        chains = self.runner.table.chains
        todo, seen = [self.runner.chain], {self.runner.chain.name}
        while todo:
            chain = todo.pop()
            self.chain(chain)
            for name in jump_targets(chain, self.runner.table.sets):
                if name not in seen and name in chains:
                    seen.add(name)
                    todo.append(chains[name])
        if self.fused is None and self.stub is not None:
            self.fuse()
        return len(seen)

    def build_chain(self, chain: Chain) -> ChainFn:
        src = ChainSource(self.ints)
        for r in chain.rules:
            self.rule(src, r.stmts)
        return src.function()

    def rule(self, src: ChainSource, stmts: list[Stmt]) -> None:
        """One rule: its leading matches as one condition, then each further statement nested under the last."""
        i, conds = 0, []
        while i < len(stmts) and isinstance(stmts[i], Match):
            conds.append(self.test(src, stmts[i]))  # type: ignore[arg-type]
            i += 1
        indent = 1
        if conds:
            src.line(indent, f"if {' and '.join(conds)}:")
            indent += 1
        for st in stmts[i:]:
            indent = self.statement(src, st, indent)
        src.line(indent, "pass")

    def statement(self, src: ChainSource, st: Stmt, indent: int) -> int:
        """Code for one statement after a rule's leading matches; returns the indent the rule goes on at."""
        if isinstance(st, Match):
            src.line(indent, f"if {self.test(src, st)}:")
            return indent + 1
        if isinstance(st, VerdictStmt):
            return self.verdict_code(src, st.verdict, indent)
        if isinstance(st, VerdictMap):
            # A miss, or no key (the packet lacks the header), is NFT_BREAK: the rest of the rule does not run.
            table = self.numgen_table(src, st)
            if table is not None:
                src.line(indent, f"a = {table}")
            else:
                guard, expr = self.inline_value(src, st.key)
                if guard:
                    src.line(indent, f"if {guard}:")
                    indent += 1
                src.line(indent, f"a = {self.map_lookup(src, st, expr)}")
            src.line(indent, "if a is not None:")
            # The verdict's action takes the target chain's depth: a goto's action is the chain itself.
            src.line(indent + 1, f"r = a(pkt, state, {src.depth} + 1)")
            src.line(indent + 1, "if r != CONTINUE:")
            src.ret(indent + 2, "r")
            return indent + 1
        if isinstance(st, Nat) and (rng := self.nat_range(st)) is not None:
            # The NAT core's setup called straight from the chain (a DNAT per new connection).
            if st.kind == "dnat" and one_destination(rng) is not None:     # kube-proxy's: one address, one port
                setup = src.const(self.nat_setup_one)
                src.line(indent, f"r = {setup}(pkt, {src.const(rng)}, state)")
            else:
                setup = src.const(self.nat_setup)
                src.line(indent, f"r = {setup}(pkt, {src.const(rng)}, {'SRC' if st.kind == 'snat' else 'DST'!r}, state)")
            src.line(indent, "if r != CONTINUE:")
            src.ret(indent + 1, "r")
            return indent
        if isinstance(st, Mangle) and type(st.key) is Meta and st.key.key == "mark" and \
                (value := self.mark_value(src, st.value)) is not None:
            # ``meta mark set VALUE``: the interpreter's ``mangle`` inline; no value breaks the rule.
            guard, expr = value
            if guard:
                src.line(indent, f"if {guard}:")
                indent += 1
            src.line(indent, f"pkt.mark = {expr} & 0xFFFFFFFF")
            return indent
        act = src.const(self.action(st))
        src.line(indent, f"r = {act}(pkt, state, {src.depth})")
        src.line(indent, "if r is not None:")  # None: a match inside the statement failed
        src.line(indent + 1, "if r != CONTINUE:")
        src.ret(indent + 2, "r")
        return indent + 1

    def verdict_code(self, src: ChainSource, v: Verdict, indent: int) -> int:
        fixed = {"accept": "NF_ACCEPT", "drop": "NF_DROP", "return": "RETURN"}.get(v.kind)
        if fixed is not None:
            src.ret(indent, fixed)
            return indent
        if v.kind == "continue":
            return indent
        target = self.runner.table.chains.get(v.target or "")
        if target is None or v.kind not in ("jump", "goto"):
            fn = src.const(self.verdict(v))
            src.line(indent, f"r = {fn}(pkt, state, {src.depth})")
            src.line(indent, "if r != CONTINUE:")
            src.ret(indent + 1, "r")
            return indent
        if v.kind == "jump" and self.inlinable(target, src):
            return self.inline_jump(src, target, indent)
        fn = src.const(self.target(target))
        if v.kind == "goto":
            src.ret(indent, f"{fn}(pkt, state, {src.depth} + 1)")
            return indent
        # A jump comes back to the next statement when the target chain returns.
        src.line(indent, f"r = {fn}(pkt, state, {src.depth} + 1)")
        src.line(indent, "if r != RETURN:")
        src.ret(indent + 1, "r", may_return=False)
        return indent

    def inlinable(self, chain: Chain, src: ChainSource) -> bool:
        """Whether a jump to ``chain`` is compiled into the jumping chain's own code: a short chain (as
        kube-proxy's ``services``, ``masquerading`` and check chains are) not being built (a loop), a
        few levels deep at most. A call per jump fewer; the rules and their order are the same."""
        return len(chain.rules) <= INLINE_RULES and src.inlined < INLINE_LEVELS and \
            chain.name not in self.building and not chain.base

    def inline_jump(self, src: ChainSource, chain: Chain, indent: int) -> int:
        """A jump's target chain, inline: its rules in a loop run once, whose ``break`` is the chain's
        RETURN (back to the statement after the jump); any other verdict leaves the whole function, as
        the jump would pass it on. The target runs one level deeper, as it would when called."""
        src.line(indent, "while True:")
        saved = src.offset, src.depth, src.inlined
        src.offset, src.depth, src.inlined = src.offset + indent, f"{src.depth} + 1", src.inlined + 1
        self.building.add(chain.name)
        try:
            src.line(1, f"if {src.depth} > 16:")
            src.line(2, "return NF_DROP")
            for r in chain.rules:
                self.rule(src, r.stmts)
            src.line(1, "break")
        finally:
            self.building.discard(chain.name)
            src.offset, src.depth, src.inlined = saved
        return indent

    def target(self, chain: Chain) -> ChainFn:
        """The function of a jump's target: compiled now, or looked up per call while it is being built
        (a loop) or when building it now would nest too deep."""
        if chain.name in self.chains:
            return self.chains[chain.name]
        if chain.name in self.building or len(self.building) > 32:
            chains, name, build = self.chains, chain.name, self.chain
            return lambda pkt, state, depth: (chains.get(name) or build(chain))(pkt, state, depth)
        return self.chain(chain)

    # ---- statements -------------------------------------------------------------------------------
    def action(self, st: Stmt) -> Action:
        run_stmt = self.runner.run_stmt
        return lambda pkt, state, depth: run_stmt(st, pkt, state, depth)

    def verdict(self, v: Verdict) -> Action:
        """A verdict as a closure (a verdict map's data): the same outcome as the inlined form."""
        fixed = {"accept": NF_ACCEPT, "drop": NF_DROP, "return": RETURN, "continue": CONTINUE}.get(v.kind)
        if fixed is not None:
            return lambda pkt, state, depth: fixed
        target = self.runner.table.chains.get(v.target or "")
        if target is None or v.kind not in ("jump", "goto"):
            verdict = self.runner.verdict
            return lambda pkt, state, depth: verdict(v, pkt, state, depth)
        fn, jump = self.target(target), v.kind == "jump"

        def go(pkt: Packet, state: HookState, depth: int) -> int:
            result = fn(pkt, state, depth + 1)
            if result == RETURN:
                return CONTINUE if jump else RETURN
            return result

        return go

    def map_verdict(self, v: Verdict) -> Action:
        """A verdict map's data as an action called with the target chain's depth (the caller's plus one):
        a goto is the target chain's function itself, a jump turns the chain's RETURN into CONTINUE."""
        target = self.runner.table.chains.get(v.target or "")
        if target is None or v.kind not in ("jump", "goto"):
            act = self.verdict(v)
            return lambda pkt, state, depth: act(pkt, state, depth - 1)
        fn = self.target(target)
        if v.kind == "goto":
            return fn

        def jump(pkt: Packet, state: HookState, depth: int) -> int:
            result = fn(pkt, state, depth)
            return CONTINUE if result == RETURN else result

        return jump

    def draw(self, src: ChainSource, mod: int) -> str:
        """Code for ``numgen random mod MOD``'s draw before its offset: 0 to MOD - 1 from the node's random
        source, looked up per packet, as the interpreter does."""
        node = self.runner.node
        rng = f"({src.const(node.subsystems)}.get('rng') or {src.const(node_rng)}({src.const(node)}))"
        # A plain random.Random's randrange(n) is its _randbelow(n) (the same draw, one call less); a
        # subclass (kproxy verify's scripted draws) is asked through its own randrange.
        n = src.var()
        return f"({n}._randbelow({mod}) if type({n} := {rng}) is {src.const(random.Random)} else {n}.randrange({mod}))"

    def numgen_table(self, src: ChainSource, st: VerdictMap) -> str | None:
        """Code for the action of ``numgen random mod N [offset O] vmap { ... }`` (kube-proxy's choice of an
        endpoint): a tuple of the actions of O, O + 1, ... O + N - 1 (None where the map has no such key)
        indexed by the draw, rather than a dict asked for the offset draw. None for any other map."""
        key, data = st.key, st.data
        if type(key) is not Numgen or key.mode != "random" or not 0 < key.mod <= 4096 or not isinstance(data, SetLit):
            return None
        exact = SetIndex(self.verdict_action(), self.ints).refresh(data.elems)
        if exact is None:
            return None
        table = tuple(exact.get(key.offset + i) for i in range(key.mod))
        return f"{src.const(table)}[{self.draw(src, key.mod)}]"

    def verdict_action(self) -> Callable[[Any], Action | None]:
        """What a verdict map's index keeps of an element's data: the verdict's action (``map_verdict``),
        made once per verdict; None for data that is not a verdict."""
        compiled: dict[int, tuple[Verdict, Action]] = {}
        compile_verdict = self.map_verdict

        def action(found: Any) -> Action | None:
            if type(found) is not Verdict:
                return None
            held = compiled.get(id(found))
            if held is None or held[0] is not found:
                held = compiled[id(found)] = (found, compile_verdict(found))
            return held[1]

        return action

    def map_lookup(self, src: ChainSource, st: VerdictMap, expr: str) -> str:
        """Code for the action of the verdict a verdict map holds for ``expr`` (``map_verdict``), None on a miss.

        A map of exact keys is a dict from key to action. An anonymous map (a rule's own, as kube-proxy's
        ``numgen`` maps are) cannot change: its dict's own ``get`` is the lookup. A named map's dict is
        used while the map's element list is the one it was built from, else rebuilt first (inline: no
        call per packet); a map of other keys is scanned by the interpreter's lookup."""
        find = self.finder(st.data)
        action = self.verdict_action()
        scan = Scan(lambda key: action(find(key)))
        index = SetIndex(action, self.ints)
        holder: Any = st.data if isinstance(st.data, SetLit) else \
            self.runner.table.sets.get(getattr(st.data, "name", ""))
        if holder is None:
            return f"{src.const(scan.get)}({expr})"
        exact = index.refresh(holder.elems)
        if isinstance(st.data, SetLit):
            # the dict itself: its ``get`` is looked up per packet, with no bound method kept per map
            return f"{src.const(scan)}.get({expr})" if exact is None else f"{src.const(exact)}.get({expr})"

        def current() -> Any:
            exact = index.refresh(holder.elems)
            if exact is None:
                index.exact = scan       # scanned until the map changes again
            return index.exact

        if exact is None:
            index.exact = scan
        return indexed_get(src, index, holder, current, expr)

    def mark_value(self, src: ChainSource, e: Expr) -> tuple[str, str] | None:
        """A mark's new value as (guard, expression): a constant, or a bitwise operation of an inlined value
        with a constant (``meta mark | 0x4000``); None for the rest."""
        if type(e) is Const and type(e.value) is int:
            return "", src.const(e.value)
        if type(e) is Binop and e.op in ("&", "|", "^", "<<", ">>") and type(e.right) is Const \
                and type(e.right.value) is int and type(e.left) is not Const:
            guard, inner = self.inline_value(src, e.left)
            return guard, f"({inner} {e.op} {src.const(e.right.value)})"
        return None

    def nat_range(self, st: Nat) -> NatRange | None:
        """``dnat``/``snat to ADDR[:PORT]`` with constants: the range, built once (the NAT core does the
        rest); None for the other forms, which the interpreter's ``nat`` runs."""
        addr, port = st.addr, st.port
        if st.kind not in ("dnat", "snat") or not (type(addr) is Const and (port is None or type(port) is Const)):
            return None
        p = None if port is None else port.value
        a = intern_int(self.ints, addr.value)
        return NatRange(a, a, p, p, "random" in st.flags, "fully-random" in st.flags,
                        "persistent" in st.flags)

    # ---- matches ----------------------------------------------------------------------------------
    def test(self, src: ChainSource, m: Match) -> str:
        """A match as a Python condition."""
        left, right, op = m.left, m.right, m.op
        if type(m) is PortsMatch:
            # nft's one comparison of both ports, listed as two matches: the sport half decides.
            inline = self.payload(left) if type(left) is Payload else None
            if m.ports is None:
                return "True"
            if inline is None:
                return f"{src.const(self.runner.matches)}({src.const(m)}, pkt, state)"
            return f"({inline[0]} and (pkt.sport << 16 | pkt.dport) {op} {src.const(m.ports)})"
        if type(left) is Ct and left.key == "state" and op == "in" and type(right) is Const \
                and type(right.value) is int:
            return ct_state_test(src, right.value)
        if isinstance(left, Binop):
            if left.op != "&" or type(left.right) is not Const:
                return f"{src.const(self.runner.matches)}({src.const(m)}, pkt, state)"
            guard, expr = self.inline_value(src, left.left)
            expr = f"({expr} & {src.const(left.right.value)})"
        else:
            guard, expr = self.inline_value(src, left)
        cond = self.compare(src, expr, op, right, ":=" not in guard)
        if cond is None:
            return f"{src.const(self.runner.matches)}({src.const(m)}, pkt, state)"
        return f"({guard} and {cond})" if guard else f"({cond})"

    def compare(self, src: ChainSource, expr: str, op: str, right: Expr, inline: bool = False) -> str | None:
        """The comparison of a value known not to be None; None for the forms the interpreter keeps.
        ``inline``: the value is a header field or a tuple of them (hashable: a set's dict may be asked)."""
        if op == "in" and type(right) is Const:
            return f"{expr} & {src.const(right.value)} != 0"
        if isinstance(right, (SetLit, SetRef)):
            found = self.set_lookup(src, right, expr) if inline else f"{src.const(self.finder(right))}({expr})"
            return f"({found} is {'not ' if op == '==' else ''}None)"
        if op not in ("==", "!="):
            return None
        if type(right) is Prefix:
            shift = (right.base.ctype.bits or 32) - right.length
            return f"{expr} >> {shift} {op} {src.const(right.base.value >> shift)}"
        if type(right) is Range:
            inside = f"{src.const(right.lo.value)} <= {expr} <= {src.const(right.hi.value)}"
            return inside if op == "==" else f"not ({inside})"
        if type(right) is not Const or isinstance(right.value, str) and right.value.endswith("*"):
            return None
        return f"{expr} {op} {src.const(right.value)}"

    def set_lookup(self, src: ChainSource, where: SetLit | SetRef, expr: str) -> str:
        """Code for the element of a set that holds ``expr`` (None when none does), as ``finder`` answers:
        an anonymous set of exact values is its dict's ``get``; a named one's dict is used while its
        element list is the one it was built from, else rebuilt first (inline, as ``map_lookup`` does);
        any other set is scanned by ``finder``."""
        holder: Any = where if isinstance(where, SetLit) else self.runner.table.sets.get(where.name)
        find = self.finder(where)
        if holder is None:
            return f"{src.const(find)}({expr})"
        index = SetIndex(None, self.ints)          # this site's own: ``finder``'s index never holds a Scan
        exact = index.refresh(holder.elems)
        if isinstance(where, SetLit):
            return f"{src.const(find)}({expr})" if exact is None else f"{src.const(exact)}.get({expr})"
        scan = Scan(find)

        def current() -> Any:
            if index.refresh(holder.elems) is None:
                index.exact = scan       # scanned until the set changes again
            return index.exact

        if exact is None:
            index.exact = scan
        return indexed_get(src, index, holder, current, expr)

    def finder(self, where: Expr) -> Callable[[Any], Any]:
        """A lookup in an anonymous or named set: the element (or its data), None when absent."""
        lookup = self.runner.lookup
        if isinstance(where, SetRef):
            s = self.runner.table.sets.get(where.name)
            if s is None:
                return lambda v: lookup(where, v)
            holder = s
        elif isinstance(where, SetLit):
            holder = where  # type: ignore[assignment]
        else:
            return lambda v: lookup(where, v)
        index = self.indexes.setdefault(id(holder), SetIndex(None, self.ints))
        index.refresh(holder.elems)

        def find(v: Any) -> Any:
            if v is None:
                return None
            elems = holder.elems
            exact = index.exact if index.elems is elems and index.size == len(elems) else index.refresh(elems)
            if exact is None:
                return lookup(where, v)
            try:
                return exact.get(v)
            except TypeError:  # an unhashable value matches no exact key
                return None

        return find

    def payload(self, e: Payload) -> tuple[str, str] | None:
        """``inline_payload``, without the family test an ``ip`` or ``ip6`` table's chains never fail: only
        that family's packets reach them (the base chains are hooked for it alone, and test it)."""
        inline = inline_payload(e)
        if inline is not None and inline[0] == self.family_guard:
            return "", inline[1]
        return inline

    # ---- values -----------------------------------------------------------------------------------
    def inline_value(self, src: ChainSource, e: Expr) -> tuple[str, str]:
        """A value as (guard, expression): the expression is read only when the guard holds, and the guard
        holds exactly when the interpreter's value is not None. Forms not inlined call a getter once."""
        if type(e) is Payload:
            inline = self.payload(e)
            if inline is not None:
                return inline
        elif type(e) is Meta and e.key in ("l4proto", "mark"):
            return "", f"pkt.{'proto' if e.key == 'l4proto' else 'mark'}"
        elif type(e) is Ct and e.key == "state":
            # No state (None or "": before conntrack, no entry and no untracked mark) is INVALID, as in
            # the interpreter (the kernel lab shows it).
            bits: dict[str | None, int] = {None: 1, "": 1}
            bits.update(CT_STATE_BITS)
            return "", f"(64 if pkt.notrack else {src.const(bits.get)}(pkt.ctstate, 64))"
        elif type(e) is Numgen and e.mode == "random" and e.mod > 0:
            return "", f"{self.draw(src, e.mod)} + {e.offset}"
        elif type(e) is Concat:
            parts = [self.payload(i) if type(i) is Payload else
                     ("", "pkt.proto") if type(i) is Meta and i.key == "l4proto" else None for i in e.items]
            if all(p is not None for p in parts):
                guards = [g for g, _ in parts if g]  # type: ignore[misc]
                return " and ".join(dict.fromkeys(guards)), "(" + ", ".join(x for _, x in parts) + ",)"  # type: ignore[misc]
        name = src.var()
        return f"({name} := {src.const(self.value(e))}(pkt, state)) is not None", name

    # ---- values -----------------------------------------------------------------------------------
    def value(self, e: Expr) -> Getter:
        if type(e) is Const:
            c = e.value
            return lambda pkt, state: c
        if type(e) is Payload:
            return payload_getter(e) or self.fallback(e)
        if type(e) is Meta:
            if e.key == "l4proto":
                return lambda pkt, state: pkt.proto
            if e.key == "mark":
                return lambda pkt, state: pkt.mark
            return self.fallback(e)
        if type(e) is Ct and e.key == "state":
            return lambda pkt, state: 64 if pkt.notrack else CT_STATE_BITS.get(pkt.ctstate or "INVALID", 64)
        if type(e) is Concat:
            parts = tuple(self.value(i) for i in e.items)

            def concat(pkt: Packet, state: HookState) -> Any:
                out = tuple(g(pkt, state) for g in parts)
                return None if None in out else out

            return concat
        if type(e) is Numgen and e.mode == "random" and e.mod > 0:
            # The node's one random source, looked up per packet (a verify replay replaces it).
            subsystems, node, mod, offset = self.runner.node.subsystems, self.runner.node, e.mod, e.offset
            return lambda pkt, state: (subsystems.get("rng") or node_rng(node)).randrange(mod) + offset
        return self.fallback(e)

    def fallback(self, e: Expr) -> Getter:
        value = self.runner.value
        return lambda pkt, state: value(e, pkt, state)


def ct_state_test(src: ChainSource, mask: int) -> str:
    """``ct state`` & ``mask`` != 0 as a set membership of the packet's state name: one test per packet.

    No state (None or "": before conntrack, no entry) is INVALID and an untracked packet or an unknown
    name is UNTRACKED, as the interpreter's bits say."""
    names: dict[str | None, int] = {None: 1, "": 1}
    names.update(CT_STATE_BITS)
    if mask & CT_STATE_BITS["UNTRACKED"]:
        others = frozenset(n for n, bit in names.items() if not bit & mask)
        return f"(pkt.ctstate not in {src.const(others)} or pkt.notrack)"
    hits = frozenset(n for n, bit in names.items() if bit & mask)
    return f"(pkt.ctstate in {src.const(hits)} and not pkt.notrack)"


def inline_payload(e: Payload) -> tuple[str, str] | None:
    """The common payload keys as (guard, expression) over the packet; None for the rest."""
    proto, fld = e.proto, e.field
    if proto in ("ip", "ip6") and fld in ("saddr", "daddr"):
        return f"pkt.family == {4 if proto == 'ip' else 6}", "pkt.src" if fld == "saddr" else "pkt.dst"
    if fld not in ("sport", "dport"):
        return None
    if proto == "th":
        return "pkt.proto in PORT_PROTOS", f"pkt.{fld}"
    number = TRANSPORT.get(proto)
    return None if number is None else (f"pkt.proto == {number}", f"pkt.{fld}")


def payload_getter(e: Payload) -> Getter | None:
    """The packet's field for the common payload keys; None for the rest (the interpreter reads those)."""
    proto, fld = e.proto, e.field
    if proto in ("ip", "ip6"):
        fam = 4 if proto == "ip" else 6
        attr = {"saddr": "src", "daddr": "dst"}.get(fld)
        if attr == "src":
            return lambda pkt, state: pkt.src if pkt.family == fam else None
        if attr == "dst":
            return lambda pkt, state: pkt.dst if pkt.family == fam else None
        return None
    if fld not in ("sport", "dport"):
        return None
    if proto == "th":
        if fld == "sport":
            return lambda pkt, state: pkt.sport if pkt.proto in PORT_PROTOS else None
        return lambda pkt, state: pkt.dport if pkt.proto in PORT_PROTOS else None
    number = TRANSPORT.get(proto)
    if number is None:
        return None
    if fld == "sport":
        return lambda pkt, state: pkt.sport if pkt.proto == number else None
    return lambda pkt, state: pkt.dport if pkt.proto == number else None



def jump_targets(chain: Chain, sets: dict[str, Any]) -> list[str]:
    """The chains a chain's rules jump or go to, directly or through a verdict map."""
    out: list[str] = []
    for r in chain.rules:
        for st in r.stmts:
            if isinstance(st, VerdictStmt) and st.verdict.target:
                out.append(st.verdict.target)
            elif isinstance(st, VerdictMap):
                out += [e.data.target for e in map_elems(st, sets) if isinstance(e.data, Verdict) and e.data.target]
    return out


def map_elems(st: VerdictMap, sets: dict[str, Any]) -> list[Elem]:
    """The elements of a verdict map, anonymous or named (none if the named one is missing)."""
    if isinstance(st.data, SetLit):
        return st.data.elems
    return list(getattr(sets.get(getattr(st.data, "name", "")), "elems", []))


class ChainSource:
    """The source of one chain's function and the constants it binds."""

    cache: dict[str, Callable[..., ChainFn]] = {}  # source text -> its factory, shared by every ruleset

    def __init__(self, ints: dict[int, int] | None = None) -> None:
        self.lines: list[str] = []
        self.consts: list[Any] = []
        self.vars = 0
        self.ints = ints        # the compiler's one object per number (``intern_int``)
        # Where the lines go while a jump's target is written inline (``Compiler.inline_jump``): how much
        # deeper they are indented, the depth the target's code runs at, how many targets are open.
        self.offset = 0
        self.depth = "depth"
        self.inlined = 0
        self.policy: str | None = None      # a base chain's hook function (``Compiler.fuse``): its policy

    def line(self, indent: int, text: str) -> None:
        self.lines.append("    " * (indent + 1 + self.offset) + text)

    def ret(self, indent: int, expr: str, may_return: bool = True) -> None:
        """The chain's code ends with the verdict ``expr``: returned, or inside an inlined target, where
        RETURN goes back to the jumping chain (``break``), passed on otherwise. ``may_return``: False when
        ``expr`` is known not to be RETURN."""
        if expr in ("NF_ACCEPT", "NF_DROP"):
            self.line(indent, f"return {expr}")
        elif not self.inlined and self.policy is not None:
            # the base chain's end: its RETURN (or a CONTINUE, never returned by a chain) is the policy
            if expr == "RETURN":
                self.line(indent, f"return {self.policy}")
            else:
                self.line(indent, f"r = {expr}")
                self.line(indent, f"return {self.policy} if r == RETURN or r == CONTINUE else r")
        elif not self.inlined:
            self.line(indent, f"return {expr}")
        elif expr == "RETURN":
            self.line(indent, "break")
        elif not may_return:
            self.line(indent, f"return {expr}")
        else:
            if expr != "r":
                self.line(indent, f"r = {expr}")
            self.line(indent, "if r != RETURN:")
            self.line(indent + 1, "return r")
            self.line(indent, "break")

    def const(self, value: Any) -> str:
        self.consts.append(value if self.ints is None else intern_int(self.ints, value))
        return f"k{len(self.consts) - 1}"

    def var(self) -> str:
        self.vars += 1
        return f"v{self.vars}"

    def function(self, entry: tuple[str, int] | None = None) -> Any:
        """The chain's function, ``run(pkt, state, depth)``; with ``entry`` (the constant of the traced
        packets' function, the family or 0), a base chain's hook function ``run(pkt, state)``."""
        params = "".join(f", k{i}=k{i}" for i in range(len(self.consts)))
        unpack = f"    {', '.join(f'k{i}' for i in range(len(self.consts)))}, = K\n" if self.consts else ""
        if entry is None:
            text = (f"def make(K):\n{unpack}    def run(pkt, state, depth{params}):\n"
                    "        if depth > 16:\n            return NF_DROP\n" + "\n".join(self.lines) +
                    "\n        return RETURN\n    return run\n")
        else:
            traced, family = entry
            text = (f"def make(K):\n{unpack}    def run(pkt, state{params}):\n"
                    f"        if state.trace is not None:\n            return {traced}(pkt, state)\n" +
                    (f"        if pkt.family != {family}:\n            return NF_ACCEPT\n" if family else "") +
                    "        try:\n" + "\n".join(self.lines) + "\n            pass\n"
                    "        except Unsupported:\n            return NF_DROP\n"
                    f"        return {self.policy}\n    return run\n")
        factory = self.cache.get(text)
        if factory is None:
            scope: dict[str, Any] = {"NF_ACCEPT": NF_ACCEPT, "NF_DROP": NF_DROP, "RETURN": RETURN,
                                     "CONTINUE": CONTINUE, "PORT_PROTOS": PORT_PROTOS, "Unsupported": Unsupported}
            exec(compile(text, "<nft chain>", "exec"), scope)  # noqa: S102 - our own generated source
            factory = self.cache[text] = scope["make"]
        return factory(self.consts)
