"""Object maps (issue 12): ``map m { type ipv4_addr : counter; elements = { 10.0.0.1 : "c1" } }`` and the
statements that pick a named stateful object through one, ``counter name ip saddr map @m`` (``quota
name``, ``limit name``; an anonymous map too). The kernel (nft_objref_map) refuses elements and rules
naming objects that do not exist (ENOENT at the element's key) and counts a map element as a use of its
object, which then cannot be deleted (EBUSY). nft lists the statement by the map's object type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kproxy.nftables import types as T
from kproxy.nftables.expr import Const, MapExpr, SetLit, SetRef
from kproxy.nftables.stmt import Stmt

if TYPE_CHECKING:
    from kproxy.nftables.lexer import Token
    from kproxy.nftables.model import NSet, Table
    from kproxy.nftables.parser import Parser
    from kproxy.nftables.rules import RuleBuilder
    from kproxy.nftables.stmt import Opts


@dataclass
class ObjMap(Stmt):
    """``KIND name KEY map @m|{ ... }``: the object the packet's key maps to."""

    kind: str
    map: MapExpr

    def text(self, o: Opts) -> str:
        return f"{self.kind} name {self.map.text(o)}"

    def json(self, o: Opts) -> Any:
        return {self.kind: self.map.json()}


def parse(b: RuleBuilder, kind: str, kw: Token) -> None:
    """After ``KIND name`` when an expression follows (a bare name is :class:`ObjRef`)."""
    p = b.p
    key = b.concat()
    p.expect("map")
    data = b.map_data(key, [T.OBJ_REFS[kind]])
    if isinstance(data, SetRef):
        s = b.tbl.sets.get(data.name)
        if s is not None and s.data and s.data[0].name in T.OBJ_REFS:
            kind = s.data[0].name       # the kernel keeps only the map: nft names the statement by its type
    elif isinstance(data, SetLit):
        for e in data.elems:
            if isinstance(e.data, Const) and (kind, str(e.data.value)) not in b.tbl.objs:
                from kproxy.nftables.lexer import Token as Tok

                line, col, end = key_loc(p, e) or (kw.line, kw.col, kw.end)
                b.missing_obj = b.missing_obj or Tok("word", "", line, col, end)
    b.stmts.append(ObjMap(kind, MapExpr(key, data)))


def key_loc(p: Parser, e: Any) -> Any:
    """Where an element's key was written: the kernel's errors point at the key (its first token)."""
    where = getattr(e, "loc", None)
    if where is None:
        return None
    tok = next((t for t in p.toks if t.line == where[0] and t.col == where[1]), None)
    return (where[0], where[1], tok.end) if tok is not None else where


def check_elements(p: Parser, tbl: Table, s: NSet, elems: list[Any]) -> None:
    """The kernel's ENOENT, at its key, for an object map's element naming an object the table lacks."""
    from kproxy.nftables.parser import NftError

    if not s.data or s.data[0].name not in T.OBJ_REFS:
        return
    kind = s.data[0].name
    bad = next((e for e in elems if isinstance(e.data, Const) and (kind, str(e.data.value)) not in tbl.objs), None)
    if bad is not None:
        raise NftError("Could not process rule: No such file or directory", key_loc(p, bad))


def uses(tbl: Table, kind: str, name: str) -> bool:
    """Whether a map element or an object-map statement's anonymous map names the object."""
    return any(s.data and s.data[0].name == kind and any(isinstance(e.data, Const) and e.data.value == name
                                                         for e in s.elems)
               for s in tbl.sets.values())
