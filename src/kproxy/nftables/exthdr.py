"""IPv6 extension header expressions of nft (``exthdr frag exists``, ``frag id 5``, ``rt type 2``,
``rt0 addr[1]``, ``srh sid[1]``, ``mh type``): their fields, how nft 1.0.6 lists them, and what the
kernel's nft_exthdr reads from a packet.

Facts taken from nftables 1.0.6 (field names, widths, listing forms) and checked against the installed
nft: ``rt0 addr[N]`` and ``srh sid[N]`` are the same header bits, and nft lists both as ``srh sid[N]``;
``rt2 addr`` has no usable value type in 1.0.6 (``No symbol type information``), so it is refused, and
its grammar has no ``rt2 reserved`` (``expecting addr``); in
an ``ip`` table every extension header expression is refused with ``cannot use exthdr with ip``.

On a packet, nft_exthdr_ipv6_eval finds the header with ipv6_find_hdr over the packet's chain
(``Packet.exthdrs``, kproxy.ip6ext): ``exists``/``missing`` is whether it found one, and a field
is the bits at the field's offset in the header's octets, as the kernel loads them. A field of an
absent header ends the rule (NFT_BREAK), ``!=`` included. The Mobility header is the upper layer
(``Packet.proto`` 135, its type in ``meta["mh_type"]`` or ``icmp_type``), found past the chain unless
a non-first fragment hides it. A field beyond the header's own length is not modelled (the kernel
reads the octets that follow; here the rule ends). An IPv4 packet that meets an extension header
expression in an inet table matches neither ``exists`` nor ``missing`` nor any field (seen in the
kernel lab: tests/test_nft_exthdr.py's kernel test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kproxy import ip6ext
from kproxy.nftables import types as T
from kproxy.nftables.expr import Expr, Opts

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.packet import Packet


def _int(bits: int) -> T.DType:
    return T.DType("integer", bits, "int")


MH_TYPE = T._t("mh_type", 8, "symbol", "Mobility Header Type",
               binding_refresh_request=0, home_test_init=1, careof_test_init=2, home_test=3, careof_test=4,
               binding_update=5, binding_acknowledgement=6, binding_error=7, fast_binding_update=8,
               fast_binding_acknowledgement=9, fast_binding_advertisement=10, experimental_mobility_header=11,
               home_agent_switch_message=12)

# header -> (IPv6 protocol number, {field: data type}); an indexed field (``addr[N]``) ends in ``[]``.
HEADERS: dict[str, tuple[int, dict[str, T.DType]]] = {
    "hbh": (0, {"nexthdr": T.PROTO, "hdrlength": _int(8)}),
    "rt": (43, {"nexthdr": T.PROTO, "hdrlength": _int(8), "type": _int(8), "seg-left": _int(8)}),
    "rt0": (43, {"addr[]": T.IPV6}),      # 1.0.6's grammar has no ``rt0 reserved``
    "rt2": (43, {"reserved": _int(32), "addr": T.IPV6}),
    "srh": (43, {"last-entry": _int(8), "flags": _int(8), "tag": _int(16), "sid[]": T.IPV6}),
    "frag": (44, {"nexthdr": T.PROTO, "reserved": _int(8), "frag-off": _int(13), "reserved2": _int(2),
                  "more-fragments": _int(1), "id": _int(32)}),
    "dst": (60, {"nexthdr": T.PROTO, "hdrlength": _int(8)}),
    "mh": (135, {"nexthdr": T.PROTO, "hdrlength": _int(8), "type": MH_TYPE, "reserved": _int(8),
                 "checksum": _int(16)}),
}
# (bit offset, bit length) of each field in its header (nftables 1.0.6's exthdr templates); an
# indexed field's N-th item (from 1) lies (N - 1) * length further.
OFFSETS: dict[str, tuple[int, int]] = {
    "nexthdr": (0, 8), "hdrlength": (8, 8), "type": (16, 8), "seg-left": (24, 8), "addr[]": (64, 128),
    "reserved": (32, 32), "addr": (64, 128), "last-entry": (32, 8), "flags": (40, 8), "tag": (48, 16),
    "sid[]": (64, 128),
}
FRAG_OFFSETS = {"nexthdr": (0, 8), "reserved": (8, 8), "frag-off": (16, 13), "reserved2": (29, 2),
                "more-fragments": (31, 1), "id": (32, 32)}
# the headers ``exthdr NAME exists`` takes in 1.0.6's grammar
EXISTS_HEADERS = ("hbh", "rt", "frag", "dst", "mh")
MH = 135


@dataclass
class Exthdr(Expr):
    """``exthdr NAME`` (presence, when field is None) or ``NAME FIELD`` / ``NAME FIELD[INDEX]``."""

    name: str
    field: str | None = None
    index: int | None = None

    @property
    def dtype(self) -> T.DType:  # type: ignore[override]
        if self.field is None:
            return T.BOOLEAN
        fields = HEADERS[self.name][1]
        return fields[self.field + "[]"] if self.index is not None else fields[self.field]

    @property
    def listed(self) -> tuple[str, str | None]:
        """nft lists rt0's addresses as the srh segment list that has the same offsets."""
        if self.name == "rt0" and self.field == "addr":
            return "srh", f"sid[{self.index}]"
        if self.index is not None:
            return self.name, f"{self.field}[{self.index}]"
        return self.name, self.field

    def text(self, o: Opts) -> str:
        name, fld = self.listed
        return f"exthdr {name}" if fld is None else f"{name} {fld}"

    def json(self) -> Any:
        name, fld = self.listed
        return {"exthdr": {"name": name} if fld is None else {"name": name, "field": fld}}


def find_header(pkt: Packet, name: str) -> ip6ext.ExtHdr | bool:
    """ipv6_find_hdr for the header ``name``: the header, True for a Mobility upper layer it
    reaches, False when not found."""
    kind = HEADERS[name][0]
    if kind == MH:
        return pkt.proto == MH and ip6ext.reaches_upper_layer(pkt.exthdrs)
    found = ip6ext.find_hdr(pkt.exthdrs, kind) if pkt.exthdrs else None
    return found if found is not None else False


def field_bits(e: Exthdr, h: ip6ext.ExtHdr, nexthdr: int) -> int | None:
    """The field's bits from the header's octets (None: beyond the header)."""
    assert e.field is not None
    if h.kind == ip6ext.FRAGMENT:
        start, length = FRAG_OFFSETS[e.field]
    else:
        start, length = OFFSETS[e.field + "[]" if e.index is not None else e.field]
        if e.index is not None:
            start += (e.index - 1) * length
    data = h.wire(nexthdr)
    if (start + length + 7) // 8 > len(data):
        return None
    whole = int.from_bytes(data, "big")
    return whole >> (len(data) * 8 - start - length) & ((1 << length) - 1)


def value(e: Exthdr, pkt: Packet) -> Any:
    """The register nft_exthdr loads: a presence bit, or the field (None: NFT_BREAK)."""
    if pkt.family != 6:
        return None     # an IPv4 packet in an inet table: neither exists nor missing holds (kernel lab)
    found = find_header(pkt, e.name)
    if e.field is None:
        return int(found is not False)
    if found is False:
        return None
    if isinstance(found, ip6ext.ExtHdr):
        chain = pkt.exthdrs
        return field_bits(e, found, ip6ext.next_types(chain, pkt.proto)[chain.index(found)])
    if e.field == "type":
        return int(pkt.meta.get("mh_type", pkt.icmp_type))
    if e.field == "nexthdr":
        return 59       # a modelled Mobility header carries no payload: IPPROTO_NONE
    mh = pkt.meta.get("mh", {})
    return int(mh.get(e.field, 0)) if isinstance(mh, dict) else 0


def starts(p: Any) -> bool:
    """Whether the parser stands at an extension header expression."""
    t = p.peek()
    if t.kind != "word":
        return False
    if t.text == "exthdr":
        return True
    if t.text not in HEADERS:
        return False
    nxt = p.peek(1)
    if t.text == "rt":      # ``rt classid``, ``rt nexthop``, ... are the routing expression
        return nxt.kind == "word" and nxt.text in HEADERS["rt"][1]
    return True


def parse(p: Any) -> Exthdr:
    """``exthdr NAME`` or ``NAME FIELD`` or ``NAME FIELD[N]`` (the parser stands at its first word)."""
    from kproxy.nftables.lexer import is_identifier
    from kproxy.nftables.parser import NftError, loc

    def unexpected(t: Any, expecting: str = "") -> NftError:
        err: NftError = p.unexpected(t, expecting)
        if is_identifier(t):
            err.msg = "syntax error, unexpected string" + (f", expecting {expecting}" if expecting else "")
        return err

    first = p.next()
    if first.text == "exthdr":
        name = p.peek()
        if name.kind != "word" or name.text not in EXISTS_HEADERS:
            raise unexpected(name)
        p.next()
        return Exthdr(name.text)
    fields = HEADERS[first.text][1]
    ft = p.peek()
    if ft.kind != "word" or (ft.text not in fields and ft.text + "[]" not in fields) or (
            first.text == "rt2" and ft.text != "addr"):      # 1.0.6's grammar has no ``rt2 reserved``
        raise unexpected(ft, "addr" if first.text in ("rt0", "rt2") else "")
    p.next()
    if ft.text + "[]" not in fields:
        if first.text == "rt2" and ft.text == "addr":
            raise NftError("No symbol type information", loc(p.peek()))
        return Exthdr(first.text, ft.text)
    if not p.at("["):
        raise unexpected(p.peek(), "'['")
    p.next()
    n = p.peek()
    if n.kind != "word" or not n.text.isdigit():
        raise unexpected(n, "number")
    p.next()
    p.expect("]")
    if int(n.text) == 0:
        # segment 0 lies before the address list: nft 1.0.6 finds no template there and reads the
        # compared value as a bare integer, which an address is not
        raise NftError("Could not parse integer", loc(p.peek()))
    return Exthdr(first.text, ft.text, int(n.text))
