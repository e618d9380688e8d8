"""Which nft base chains the flow cache may replay: those whose every reachable statement, for an
established packet, is a function of the packet's headers, its connection and the configuration, and
whose only effect besides the verdict is counting.

A base chain of a filter (or route) type qualifies when every chain it can reach (jumps, gotos, and
the verdicts of its verdict maps) holds only matches, verdicts, verdict maps, anonymous counters and
rejects (a rejected packet is never learnt), over expressions of the packet's headers (payload),
meta keys the flow's headers and devices decide, the connection's fixed keys (state, status,
direction, mark, zone, addresses and ports: the cache checks the entry's state and mark), fib and
hashes of those, and sets and maps whose elements only the control plane changes (no timeouts, no
element counters, that no ``add @set`` or ``update @set`` changes (such a set is dynamic): a set the
packet path changes may answer differently to the flow's next packet). Anything else (numgen,
meta random, limit, quota, named counters, logs, mark or ct settings, set updates, queues) keeps every
packet through the chain on the whole path. nat chains are not asked: the NAT core runs them only for
a connection's first packet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kproxy.nftables.expr import (
    Binop,
    Concat,
    Const,
    Ct,
    Elem,
    Expr,
    Fib,
    Hash,
    MapExpr,
    Meta,
    Payload,
    Prefix,
    Range,
    SetLit,
    SetRef,
    Verdict,
)
from kproxy.nftables.stmt import Counter, Match, Reject, Stmt, VerdictMap, VerdictStmt

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.nftables.evaluate import ChainRunner
    from kproxy.nftables.model import Table

# meta keys the evaluator reads from headers in the flow key, the hook's devices or fixed packet fields
PURE_META = frozenset({"l4proto", "nfproto", "protocol", "iifname", "iif", "oifname", "oif", "mark", "length",
                       "pkttype", "skuid", "skgid", "nftrace"})
# ct keys fixed for a connection, or in the signature the cache checks (state, status, mark)
PURE_CT = frozenset({"state", "status", "direction", "mark", "zone", "saddr", "daddr", "proto-src", "proto-dst"})


def replayable(runner: ChainRunner) -> bool:
    """Whether the flow cache may replay what ``runner``'s base chain did to an established packet."""
    table, chains = runner.table, runner.table.chains
    pure = Purity(table)
    todo, seen = [runner.chain], {runner.chain.name}
    while todo:
        chain = todo.pop()
        for rule in chain.rules:
            for st in rule.stmts:
                if not pure.stmt(st):
                    return False
                for target in pure.targets(st):
                    if target not in chains:
                        return False
                    if target not in seen:
                        seen.add(target)
                        todo.append(chains[target])
    return True


class Purity:
    """The statement and expression checks for one table."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def targets(self, st: Stmt) -> list[str]:
        if isinstance(st, VerdictStmt):
            return [st.verdict.target] if st.verdict.target else []
        if isinstance(st, VerdictMap):
            data = st.data
            held = data if isinstance(data, SetLit) else self.table.sets.get(getattr(data, "name", ""))
            return [e.data.target for e in getattr(held, "elems", ()) if isinstance(e.data, Verdict) and e.data.target]
        return []

    def stmt(self, st: Stmt) -> bool:
        kind = type(st)
        if isinstance(st, Match):
            return self.expr(st.left) and self.expr(st.right)
        if kind is VerdictStmt or kind is Reject:
            return True
        if isinstance(st, Counter):
            return kind is Counter and st.name is None   # a named counter is an object: not replayed
        if isinstance(st, VerdictMap):
            return self.expr(st.key) and self.expr(st.data)
        return False

    def expr(self, e: Expr | None) -> bool:
        if e is None or isinstance(e, (Const, Prefix, Range, Verdict, Payload)):
            return True     # payload reads only header fields the flow key holds
        kind = type(e)
        if kind is Meta:
            return e.key in PURE_META        # type: ignore[attr-defined]
        if kind is Ct:
            return e.key in PURE_CT          # type: ignore[attr-defined]
        if isinstance(e, Concat):
            return all(self.expr(i) for i in e.items)
        if isinstance(e, Binop):
            return self.expr(e.left) and self.expr(e.right)
        if kind is Fib:
            return True     # routes and addresses: the configuration epoch
        if isinstance(e, Hash):
            return self.expr(e.expr)
        if isinstance(e, MapExpr):
            return self.expr(e.key) and self.expr(e.data)
        if isinstance(e, SetLit):
            return all(self.elem(x) for x in e.elems)
        if isinstance(e, SetRef):
            # A set a rule adds to or updates is dynamic (nft flags it so, as the kernel's dynset
            # requires, and so does the parser: ``rules._made_dynamic``), wherever that rule is.
            s = self.table.sets.get(e.name)
            return s is not None and s.timeout is None and not {"timeout", "dynamic"} & set(s.flags) and \
                all(self.elem(x) for x in s.elems)
        return False

    def elem(self, x: Any) -> bool:
        if type(x) is not Elem:
            return self.expr(x)
        # an element's key and data are values (constants, prefixes, ranges, verdicts)
        return x.timeout is None and x.expires is None and not x.counter
