"""nft's ``ct helper`` objects (nft_ct's cthelper object) and the ``ct helper set`` statement that
assigns one to a new connection.

An object names a conntrack helper by its kernel name (``type "ftp" protocol tcp``) for one layer 3
protocol (``l3proto``, the table's family unless given). A rule refers to it by the object's name, as a
string or through a map (``ct helper set tcp dport map { 21 : "ftp-std" }``); the kernel refuses a rule
naming an object that does not exist (ENOENT) and the deletion of an object a rule still uses (EBUSY).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kproxy.nftables.expr import Const, Expr, MapExpr, SetLit
from kproxy.nftables.stmt import Stmt

if TYPE_CHECKING:
    from kproxy.nftables.model import Obj, Table
    from kproxy.nftables.parser import Parser
    from kproxy.nftables.stmt import Opts
    from kproxy.packet import Packet

KIND = "ct helper"
L4PROTOS = ("tcp", "udp")
PROTO_NUMBERS = {"tcp": 6, "udp": 17}


def defaults(tbl: Table) -> dict[str, Any]:
    return {"type": "", "protocol": "", "l3proto": tbl.family}


def body_item(p: Parser, obj: Obj) -> None:
    """One item of an object's block: ``type "NAME" protocol tcp|udp`` or ``l3proto FAMILY``."""
    from kproxy.nftables.parser import NftError, loc

    t = p.next()
    if t.text == "type" and t.kind == "word":
        name = p.next()
        if name.kind != "string":
            err = p.unexpected(name, "quoted string")
            err.msg = "syntax error, unexpected string, expecting quoted string"
            raise err
        p.expect("protocol")
        proto = p.word()
        if proto.text not in L4PROTOS:
            raise p.unexpected(proto, "udp or tcp")
        obj.values.update(type=name.text, protocol=proto.text)
    elif t.text == "l3proto" and t.kind == "word":
        fam = p.word()
        if fam.text not in ("ip", "ip6", "inet"):
            raise NftError(f"invalid l3proto: {fam.text}", loc(fam))
        obj.values["l3proto"] = fam.text
    else:
        raise p.unexpected(t)


def known(obj: Obj) -> bool:
    """Whether the kernel has the helper for the protocol (nf_conntrack_helper_try_module_get)."""
    from kproxy.iptables.ext.cthelper import HELPERS

    return PROTO_NUMBERS.get(obj.values["protocol"], -1) in HELPERS.get(obj.values["type"], ())


def body_text(obj: Obj) -> str:
    v = obj.values
    return f'type "{v["type"]}" protocol {v["protocol"]}\nl3proto {v["l3proto"]}'


def body_json(obj: Obj) -> dict[str, Any]:
    v = obj.values
    return {"type": v["type"], "protocol": v["protocol"], "l3proto": v["l3proto"]}


@dataclass
class CtHelperSet(Stmt):
    """``ct helper set "NAME"`` (or a map to names): attach the named helper object's helper to the
    connection the packet starts."""

    value: Expr

    def text(self, o: Opts) -> str:
        return f"ct helper set {self.value.text(o)}"

    def json(self, o: Opts) -> Any:
        return {"ct helper": self.value.json()}

    def names(self) -> list[tuple[str, Any]]:
        """The object names the statement may use, with where each was written (for errors)."""
        if isinstance(self.value, Const):
            return [(str(self.value.value), getattr(self.value, "loc", None))]
        if isinstance(self.value, MapExpr) and isinstance(self.value.data, SetLit):
            return [(str(e.data.value), getattr(e, "loc", None)) for e in self.value.data.elems
                    if isinstance(e.data, Const)]
        return []

    def resolve(self, value: Any) -> str | None:
        """The object name for a looked-up map value (or the constant)."""
        return str(value) if value is not None else None


def uses(stmt: Any, name: str) -> bool:
    return isinstance(stmt, CtHelperSet) and any(n == name for n, _ in stmt.names())


def assign(obj: Obj | None, pkt: Packet) -> None:
    """nft_ct_helper_obj_eval: a new (unconfirmed) connection of the object's layer 4 protocol, in a family
    the object covers, with no helper yet, gets the object's helper; anything else is left as it is."""
    from kproxy.netfilter.conntrack import IPS_CONFIRMED

    conn = pkt.ct
    if obj is None or conn is None or pkt.notrack or conn.status & IPS_CONFIRMED or conn.helper:
        return
    v = obj.values
    if conn.proto != PROTO_NUMBERS.get(v["protocol"]):
        return
    if v["l3proto"] != "inet" and v["l3proto"] != ("ip6" if conn.orig.family == 6 else "ip"):
        return
    conn.helper = v["type"]
