"""``dup to ADDR [device "DEV"]`` in ip and ip6 tables (nft_dup_ipv4 / nft_dup_ipv6): a copy of the packet
sent to ADDR (a constant, or a map from packet fields), out of DEV when given; the packet itself goes
on. nft 1.0.6 has no dup for inet, arp or bridge tables ("unsupported family"); the netdev family's
``dup to DEV`` is :class:`kproxy.nftables.stmt.Forward`. The packet path models it as iptables' TEE: the
clone is noted in the trace and the original continues."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kproxy.nftables import types as T
from kproxy.nftables.expr import Expr, MapExpr
from kproxy.nftables.stmt import Stmt

if TYPE_CHECKING:
    from kproxy.nftables.lexer import Token
    from kproxy.nftables.rules import RuleBuilder
    from kproxy.nftables.stmt import Opts

ADDR_TYPES = {"ip": T.IPV4, "ip6": T.IPV6}


@dataclass
class Dup(Stmt):
    addr: Expr
    dev: str | None = None

    def text(self, o: Opts) -> str:
        return f"dup to {self.addr.text(o)}" + (f' device "{self.dev}"' if self.dev is not None else "")

    def json(self, o: Opts) -> Any:
        d: dict[str, Any] = {"addr": self.addr.json()}
        if self.dev is not None:
            d["dev"] = self.dev
        return {"dup": d}


def parse(b: RuleBuilder, kw: Token) -> None:
    """After the ``dup`` keyword of an ip, ip6, inet, arp or bridge table's rule."""
    p = b.p
    p.expect("to")
    dtype = ADDR_TYPES.get(b.tbl.family)
    start = p.peek()
    if b.is_expr_start():
        addr: Expr = b.concat()
        if p.accept("map"):
            addr = MapExpr(addr, b.map_data(addr, [dtype or T.IPV4]))
    else:
        other = T.IPV4 if dtype is T.IPV6 else T.IPV6
        if start.kind == "word" and not _parses(dtype or T.IPV4, start.text) and _parses(other, start.text):
            if dtype is not None:   # nft asks getaddrinfo for the table's family
                raise b.error("Could not resolve hostname: Address family for hostname not supported", start)
            addr = p.value(other)
        else:
            addr = p.value(dtype or T.IPV4)
    dev = None
    if p.accept("device"):
        d = p.word()
        if dtype is not None and p.interfaces is not None and d.text not in p.interfaces:
            raise b.error("Interface does not exist", d)
        dev = d.text
    if dtype is None:
        raise b.error("unsupported family", kw, p.toks[p.pos - 1])
    b.stmts.append(Dup(addr, dev))


def _parses(dt: T.DType, text: str) -> bool:
    try:
        dt.parse(text)
    except T.TypeError_:
        return False
    return True
