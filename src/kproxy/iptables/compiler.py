"""Chains compiled into Python functions, the way a JIT turns a rule blob into machine code.

A committed chain becomes one function ``chain(p, c) -> verdict``: each rule is an ``if`` whose
condition inlines the rule's header tests (and the simple matches that offer an inline form),
whose body counts the packet and acts. The verdicts are the kernel's (NF_ACCEPT, NF_DROP,
NF_QUEUE) or ``XT_RETURN`` when the chain returns or is fallen off; a ``-j`` to a user chain is a
call (through the target's ``ChainRef``), a ``-g`` a tail call, so RETURN semantics, the jump stack and goto come from Python's own
call stack. Trace events are emitted from the same code when the hook state carries a trace.

Compiling is cheap because chains repeat: a dump's chains differ mostly in their constants
(addresses, ports, chain names), so the generated source names constants (``k0``, ``k1``, ...)
and is compiled once per distinct source; each chain is a function of that code whose parameter
defaults are its own constants (one tuple, copied into fast locals on each call: fewer objects
to touch per packet than closure cells, which matters once thousands of Services are in use).
Long chains are indexed: a dict from an exact-match key to the positions of the rules that may
match, in order, each rule then its own small function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import FunctionType
from typing import Any

from kproxy.iptables.extension import XT_CONTINUE, XT_RETURN, RuleContext
from kproxy.iptables.model import Rule
from kproxy.netfilter.trace import SCRATCH
from kproxy.packet import NF_ACCEPT, NF_DROP, NF_QUEUE, Packet

ChainFn = Callable[[Packet, RuleContext], int]


class ChainRef:
    """A jump's target: the target chain's function once compiled (``fn``), bound into the jumping
    chain as a constant, so a jump costs an attribute read rather than a lookup by name."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn: ChainFn) -> None:
        self.name = name
        self.fn = fn


Ref = Callable[[str], ChainRef]      # a table's ChainRef for a chain name

# Chains longer than this (and not indexed) run as a loop over per-rule functions rather than
# one function with an ``if`` per rule: compiling a function of thousands of branches is slow.
MAX_INLINE_RULES = 64

_VERDICT_CODE = {"ACCEPT": f"return {NF_ACCEPT}", "DROP": f"return {NF_DROP}", "QUEUE": f"return {NF_QUEUE}",
                 "RETURN": f"return {XT_RETURN}"}


_NAMES = [f"k{i}" for i in range(512)]


class _Source:
    """Generated lines plus the constants they name (``k0``, ``k1``, ...)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: list[Any] = []

    def const(self, value: Any) -> str:
        consts = self.consts
        consts.append(value)
        n = len(consts) - 1
        return _NAMES[n] if n < len(_NAMES) else f"k{n}"

    def emit(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)


def _net_test(src: _Source, field: str, net: Any, inv: bool) -> str:
    op = "!=" if inv else "=="
    if net.prefixlen == net.bits:
        return f"p.{field} {op} {src.const(net.addr)}"
    return f"(p.{field} & {src.const(net.mask)}) {op} {src.const(net.addr)}"


def _iface_test(src: _Source, dev: str, name: str, inv: bool) -> str:
    if name.endswith("+"):
        test = f"c.state.{dev}.startswith({src.const(name[:-1])})"
        return f"not {test}" if inv else test
    return f"c.state.{dev} {'!=' if inv else '=='} {src.const(name)}"


def rule_test(src: _Source, rule: Rule) -> str:
    """The rule's condition, cheapest checks first (as ``ipt_do_table`` tests the ip header before
    the matches); ``True`` when it has none."""
    parts: list[str] = []
    if rule.proto:
        parts.append(f"p.proto {'!=' if rule.proto_inv else '=='} {src.const(rule.proto)}")
    if rule.dst is not None:
        parts.append(_net_test(src, "dst", rule.dst, rule.dst_inv))
    if rule.src is not None:
        parts.append(_net_test(src, "src", rule.src, rule.src_inv))
    if rule.iif is not None:
        parts.append(_iface_test(src, "in_dev", rule.iif, rule.iif_inv))
    if rule.oif is not None:
        parts.append(_iface_test(src, "out_dev", rule.oif, rule.oif_inv))
    if rule.fragment is not None:
        # Unfragmented packets only: -f never matches, ! -f always does.
        parts.append("False" if rule.fragment else "True")
    for m in rule.matches:
        if m.redundant(rule):
            continue
        inline = m.inline()      # each match declares its own inline form (None: called)
        if inline is None:
            parts.append(f"{src.const(m.matches)}(p, c)")
        else:
            template, values = inline
            parts.append("(" + template.format(*(src.const(v) for v in values)) + ")")
    return " and ".join(parts) if parts else "True"


def _rule_block(src: _Source, rule: Rule, index: int, name: str, indent: int, ref: Ref) -> None:
    """``if <test>:`` count, trace, act. Falling out of the block is "next rule"."""
    r = src.const(rule)
    index_const = src.const(index)     # a constant, so that rules differing only in position share code
    src.emit(indent, f"if {rule_test(src, rule)}:")
    body = indent + 1
    src.emit(body, f"{r}.packets += 1")
    src.emit(body, f"{r}.bytes += L")
    jump = rule.jump
    if jump is not None:
        src.emit(body, f"if tr is not None: _trace_rule(tr, c, {src.const(name)}, {index_const}, {r}, {src.const(jump)})")
        if jump in _VERDICT_CODE:
            src.emit(body, _VERDICT_CODE[jump])
        elif rule.goto:
            src.emit(body, f"return {src.const(ref(jump))}.fn(p, c)")
        else:
            src.emit(body, f"v = {src.const(ref(jump))}.fn(p, c)")
            src.emit(body, f"if v != {XT_RETURN}: return v")
            src.emit(body, f"c.chain = {src.const(name)}")
        return
    target = rule.target
    if target is None:
        src.emit(body, f"if tr is not None: _trace_rule(tr, c, {src.const(name)}, {index_const}, {r}, '')")
        return
    t = src.const(target.execute)
    src.emit(body, f"v = {t}(p, c) if tr is None else _traced_target(tr, c, {src.const(name)}, {index_const}, {r}, {t}, p)")
    src.emit(body, f"if v != {XT_CONTINUE}: return v")


def _chain_end(src: _Source, name: str, builtin: bool) -> None:
    if not builtin:
        src.emit(1, "if tr is not None: tr.add('return', hook=c.state.hook, table=c.table, "
                    f"chain={src.const(name)}, text='end of chain')")
    src.emit(1, f"return {XT_RETURN}")


def _prologue(src: _Source, name: str) -> None:
    src.emit(1, "L = p.length")
    src.emit(1, "tr = c.state.trace")
    src.emit(1, f"c.chain = {src.const(name)}")


def inline_chain(rules: Sequence[Rule], name: str, builtin: bool, ref: Ref) -> ChainFn:
    """A chain as one function: an ``if`` per rule."""
    src = _Source()
    src.emit(0, "def chain(p, c):")
    _prologue(src, name)
    for i, rule in enumerate(rules):
        _rule_block(src, rule, i, name, 1, ref)
    _chain_end(src, name, builtin)
    return _instantiate(src)


def rule_step(rule: Rule, index: int, name: str, ref: Ref) -> Callable[..., int | None]:
    """One rule as ``step(p, c, L, tr)``: None to go on to the next rule, else the chain's verdict."""
    src = _Source()
    src.emit(0, "def chain(p, c, L, tr):")
    _rule_block(src, rule, index, name, 1, ref)
    src.emit(1, "return None")
    return _instantiate(src)


def looped_chain(name: str, builtin: bool, field: str | None, buckets: dict[Any, list[int]], wildcards: list[int],
                 steps: list[Callable[..., int | None] | None], make_step: Callable[[int], Any]) -> ChainFn:
    """A long chain: the rules that may match (those in the bucket of the packet's ``field``, or
    ``wildcards`` when it has none), in order, each its own step."""
    src = _Source()
    src.emit(0, "def chain(p, c):")
    _prologue(src, name)
    st, mk, wild = src.const(steps), src.const(make_step), src.const(wildcards)
    positions = wild if field is None else f"{src.const(buckets)}.get(p.{field}, {wild})"
    src.emit(1, f"for i in {positions}:")
    src.emit(2, f"s = {st}[i]")
    src.emit(2, f"if s is None: s = {mk}(i)")
    src.emit(2, "v = s(p, c, L, tr)")
    src.emit(2, "if v is not None: return v")
    _chain_end(src, name, builtin)
    return _instantiate(src)


_templates: dict[str, FunctionType] = {}
MAX_CACHED_SOURCES = 20000


def _instantiate(src: _Source) -> Any:
    """Compile the source once per distinct text, then make a function of that code whose
    constants are its parameters' defaults: one tuple per chain, read as fast locals."""
    body = "\n".join(src.lines)
    template = _templates.get(body)
    if template is None:
        head = src.lines[0]
        params = "".join(f", k{i}=None" for i in range(len(src.consts)))
        code = head[:-2] + params + "):\n" + "\n".join(src.lines[1:]) + "\n"
        namespace: dict[str, Any] = {"_trace_rule": _trace_rule, "_traced_target": _traced_target}
        exec(compile(code, "<iptables chain>", "exec"), namespace)   # noqa: S102 - our own generated code
        template = namespace["chain"]
        if len(_templates) >= MAX_CACHED_SOURCES:
            _templates.clear()
        _templates[body] = template
    return FunctionType(template.__code__, template.__globals__, "chain", tuple(src.consts))


def rebind(fn: Any, ref: Ref) -> Any:
    """``fn`` with its jump targets taken from another table (``ref``): a chain that a commit left
    unchanged keeps its code but must jump into the new table's chains."""
    defaults = fn.__defaults__
    if not defaults or not any(type(d) is ChainRef for d in defaults):
        return fn
    new = tuple(ref(d.name) if type(d) is ChainRef else d for d in defaults)
    return FunctionType(fn.__code__, fn.__globals__, fn.__name__, new)


def _trace_rule(trace: Any, c: RuleContext, chain: str, i: int, rule: Rule, verdict: str) -> Any:
    if trace.counted is not None:
        trace.counted.append((c.table, rule))
        return SCRATCH
    from kproxy.iptables.save import format_rule

    return trace.add("rule", hook=c.state.hook, table=c.table, chain=chain, rule=i + 1,
                     text="" if trace.quiet else format_rule(chain, rule), verdict=verdict)


def _traced_target(trace: Any, c: RuleContext, chain: str, i: int, rule: Rule,
                   execute: Callable[[Packet, RuleContext], int], p: Packet) -> int:
    event = _trace_rule(trace, c, chain, i, rule, "")
    verdict = execute(p, c)
    rejected = c.state.rejected_with
    event.verdict = _verdict_name(verdict) if not rejected else f"REJECT ({rejected})"
    return verdict


def _verdict_name(v: int) -> str:
    return {NF_ACCEPT: "ACCEPT", NF_DROP: "DROP", XT_CONTINUE: "continue", XT_RETURN: "RETURN",
            NF_QUEUE: "QUEUE"}.get(v, str(v))
