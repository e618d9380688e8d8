"""Expressions of nft rules (payload, meta, ct, fib, numgen, hashes, values, sets) as nft lists them.

Each node prints itself in nft 1.0.6's canonical text (``text``) and JSON (``json``) forms; values know
their data type, taken from the expression they are compared with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kproxy.nftables import types as T

# (protocol, field) -> data type; the protocol's layer decides which dependency nft inserts.
PAYLOAD: dict[str, dict[str, T.DType]] = {
    "ether": {"saddr": T.ETHER, "daddr": T.ETHER, "type": T.ETHER_TYPE},
    "vlan": {"id": T.DType("integer", 12, "int"), "pcp": T.DType("integer", 3, "int"), "type": T.ETHER_TYPE},
    "ip": {"version": T.DType("integer", 4, "int"), "hdrlength": T.DType("integer", 4, "int"),
           "dscp": T.DSCP, "ecn": T.ECN,
           "length": T.DType("integer", 16, "int"), "id": T.DType("integer", 16, "int"),
           "frag-off": T.DType("integer", 16, "int"), "ttl": T.DType("integer", 8, "int"), "protocol": T.PROTO,
           "checksum": T.DType("integer", 16, "int"), "saddr": T.IPV4, "daddr": T.IPV4},
    "ip6": {"version": T.DType("integer", 4, "int"), "dscp": T.DSCP, "ecn": T.ECN, "flowlabel": T.DType("integer", 20, "int"),
            "length": T.DType("integer", 16, "int"), "nexthdr": T.PROTO, "hoplimit": T.DType("integer", 8, "int"),
            "saddr": T.IPV6, "daddr": T.IPV6},
    "tcp": {"sport": T.SERVICE, "dport": T.SERVICE, "sequence": T.DType("integer", 32, "int"),
            "ackseq": T.DType("integer", 32, "int"), "doff": T.DType("integer", 4, "int"), "flags": T.TCP_FLAG,
            "window": T.DType("integer", 16, "int"), "checksum": T.DType("integer", 16, "int"),
            "urgptr": T.DType("integer", 16, "int")},
    "udp": {"sport": T.SERVICE, "dport": T.SERVICE, "length": T.DType("integer", 16, "int"),
            "checksum": T.DType("integer", 16, "int")},
    "udplite": {"sport": T.SERVICE, "dport": T.SERVICE},
    "sctp": {"sport": T.SERVICE, "dport": T.SERVICE, "vtag": T.DType("integer", 32, "int"),
             "checksum": T.DType("integer", 32, "int")},
    "icmp": {"type": T.ICMP_TYPE, "code": T.ICMP_CODE, "checksum": T.DType("integer", 16, "int"),
             "id": T.DType("integer", 16, "int"), "sequence": T.DType("integer", 16, "int"),
             "mtu": T.DType("integer", 16, "int"), "gateway": T.IPV4},
    "icmpv6": {"type": T.ICMPV6_TYPE, "code": T.ICMPV6_CODE, "checksum": T.DType("integer", 16, "int"),
               "id": T.DType("integer", 16, "int"), "sequence": T.DType("integer", 16, "int"),
               "mtu": T.DType("integer", 32, "int")},
    "th": {"sport": T.SERVICE, "dport": T.SERVICE},
}
TRANSPORT = {"tcp": 6, "udp": 17, "udplite": 136, "sctp": 132, "icmp": 1, "icmpv6": 58}
NETWORK = {"ip": 2, "ip6": 10}

META: dict[str, T.DType] = {
    "length": T.DType("integer", 32, "int"), "protocol": T.ETHER_TYPE, "nfproto": T.NFPROTO, "l4proto": T.PROTO,
    "priority": T.CLASSID, "mark": T.MARK, "iif": T.IFINDEX, "iifname": T.IFNAME,
    "iiftype": T.DType("integer", 16, "int"), "oif": T.IFINDEX, "oifname": T.IFNAME,
    "oiftype": T.DType("integer", 16, "int"), "skuid": T.UID, "skgid": T.GID, "nftrace": T.DType("integer", 1, "int"),
    "rtclassid": T.REALM, "pkttype": T.PKTTYPE, "cpu": T.DType("integer", 32, "int"),
    "iifgroup": T.DEVGROUP, "oifgroup": T.DEVGROUP,
    "cgroup": T.DType("integer", 32, "int"), "random": T.DType("integer", 32, "int"),
    "secpath": T.DType("integer", 1, "int"), "time": T.DType("integer", 64, "int"),
}
# Meta keys written without ``meta`` in a script; nft prints only the interface ones that way.
META_BARE_IN = {"mark", "iif", "iifname", "iiftype", "oif", "oifname", "oiftype", "skuid", "skgid", "nftrace",
                "rtclassid", "pkttype", "cpu", "iifgroup", "oifgroup", "cgroup"}
META_BARE_OUT = {"iif", "iifname", "oif", "oifname", "iifgroup", "oifgroup"}

CT: dict[str, T.DType] = {
    "state": T.CT_STATE, "direction": T.CT_DIR, "status": T.CT_STATUS, "mark": T.MARK,
    "expiration": T.CT_TIME, "helper": T.STRING, "l3proto": T.NFPROTO, "protocol": T.PROTO,
    "zone": T.DType("integer", 16, "int"), "saddr": T.IPV4, "daddr": T.IPV4, "proto-src": T.SERVICE,
    "proto-dst": T.SERVICE, "packets": T.DType("integer", 64, "int"), "bytes": T.DType("integer", 64, "int"),
    "count": T.DType("integer", 32, "int"), "id": T.DType("integer", 32, "int"),
}


class Expr:
    dtype: T.DType = T.INTEGER

    def text(self, o: Opts) -> str:
        raise NotImplementedError

    def json(self) -> Any:
        raise NotImplementedError


@dataclass
class Opts:
    """Listing options: ``-n`` levels, ``-s`` (stateless), ``-a`` (handles), ``-y`` (numeric priority)."""

    numeric: int = 0
    stateless: bool = False
    handles: bool = False
    numeric_prio: bool = False


@dataclass
class Payload(Expr):
    proto: str
    field: str

    @property
    def dtype(self) -> T.DType:  # type: ignore[override]
        return PAYLOAD[self.proto][self.field]

    def text(self, o: Opts) -> str:
        return f"{self.proto} {self.field}"

    def json(self) -> Any:
        return {"payload": {"protocol": self.proto, "field": self.field}}


RAW = T.DType("integer", 0, "hex")      # a raw header range's value: nft lists it in hex


@dataclass
class RawPayload(Payload):
    """A header range named by base, bit offset and length (``@th,0,32``). nft writes one when it
    merges a rule's adjacent port matches and knows no protocol to name them by."""

    offset: int = 0
    length: int = 0

    @property
    def dtype(self) -> T.DType:  # type: ignore[override]
        return RAW

    def text(self, o: Opts) -> str:
        return f"@{self.proto},{self.offset},{self.length}"

    def json(self) -> Any:
        return {"payload": {"base": self.proto, "offset": self.offset, "len": self.length}}


def raw_payload(base: str, offset: int, length: int) -> Payload:
    """A raw range as nft reads one: the transport header's ports get their names back."""
    if base == "th" and length == 16 and offset in (0, 16):
        return Payload("th", "sport" if offset == 0 else "dport")
    return RawPayload(base, "raw", offset, length)


@dataclass
class Meta(Expr):
    key: str

    @property
    def dtype(self) -> T.DType:  # type: ignore[override]
        return META[self.key]

    def text(self, o: Opts) -> str:
        return self.key if self.key in META_BARE_OUT else f"meta {self.key}"

    def json(self) -> Any:
        return {"meta": {"key": self.key}}


@dataclass
class Ct(Expr):
    key: str
    direction: str | None = None
    family: str | None = None  # ip/ip6 for ``ct original ip saddr``

    @property
    def dtype(self) -> T.DType:  # type: ignore[override]
        if self.key in ("saddr", "daddr") and self.family == "ip6":
            return T.IPV6
        return CT[self.key]

    def text(self, o: Opts) -> str:
        parts = ["ct"]
        if self.direction:
            parts.append(self.direction)
        if self.family:
            parts.append(self.family)
        parts.append(self.key)
        return " ".join(parts)

    def json(self) -> Any:
        d: dict[str, Any] = {"key": self.key}
        if self.family:
            d["family"] = self.family
        if self.direction:
            d["dir"] = self.direction
        return {"ct": d}


@dataclass
class Fib(Expr):
    flags: list[str]
    result: str  # type, oif, oifname
    present: bool = False       # compared with ``exists`` / ``missing``: whether the lookup found a device

    @property
    def dtype(self) -> T.DType:  # type: ignore[override]
        if self.present:
            return T.BOOLEAN
        return {"type": T.FIB_ADDRTYPE, "oif": T.IFINDEX, "oifname": T.IFNAME}[self.result]

    def text(self, o: Opts) -> str:
        return f"fib {' . '.join(self.flags)} {self.result}"

    def json(self) -> Any:
        return {"fib": {"result": self.result, "flags": self.flags}}


@dataclass
class Numgen(Expr):
    mode: str
    mod: int
    offset: int = 0

    def text(self, o: Opts) -> str:
        return f"numgen {self.mode} mod {self.mod}" + (f" offset {self.offset}" if self.offset else "")

    def json(self) -> Any:
        d: dict[str, Any] = {"mode": self.mode, "mod": self.mod, "offset": self.offset}
        return {"numgen": d}


@dataclass
class Hash(Expr):
    kind: str  # jhash, symhash
    expr: Expr | None
    mod: int
    seed: int | None = None
    offset: int = 0

    def text(self, o: Opts) -> str:
        s = self.kind + (f" {self.expr.text(o)}" if self.expr else "") + f" mod {self.mod}"
        if self.seed:
            s += f" seed 0x{self.seed:x}"
        if self.offset:
            s += f" offset {self.offset}"
        return s

    def json(self) -> Any:
        d: dict[str, Any] = {"mod": self.mod}
        if self.seed:
            d["seed"] = self.seed
        if self.offset:
            d["offset"] = self.offset
        if self.expr is not None:
            d["expr"] = self.expr.json()
        return {self.kind: d}


@dataclass
class Concat(Expr):
    items: list[Expr]

    def text(self, o: Opts) -> str:
        return " . ".join(i.text(o) for i in self.items)

    def json(self) -> Any:
        return {"concat": [i.json() for i in self.items]}


@dataclass
class Binop(Expr):
    op: str  # & | ^ << >>
    left: Expr
    right: Expr

    @property
    def dtype(self) -> T.DType:  # type: ignore[override]
        return self.left.dtype

    def text(self, o: Opts) -> str:
        return f"{self.left.text(o)} {self.op} {self.right.text(o)}"

    def json(self) -> Any:
        return {self.op: [self.left.json(), self.right.json()]}


@dataclass
class Const(Expr):
    ctype: T.DType
    value: Any

    @property
    def dtype(self) -> T.DType:  # type: ignore[override]
        return self.ctype

    def text(self, o: Opts) -> str:
        return self.ctype.text(self.value, o.numeric)

    def json(self) -> Any:
        return self.ctype.json(self.value)


@dataclass
class Prefix(Expr):
    base: Const
    length: int

    def text(self, o: Opts) -> str:
        return f"{self.base.text(o)}/{self.length}"

    def json(self) -> Any:
        return {"prefix": {"addr": self.base.json(), "len": self.length}}


@dataclass
class Range(Expr):
    lo: Const
    hi: Const

    def text(self, o: Opts) -> str:
        return f"{self.lo.text(o)}-{self.hi.text(o)}"

    def json(self) -> Any:
        return {"range": [self.lo.json(), self.hi.json()]}


@dataclass
class Verdict(Expr):
    kind: str
    target: str | None = None

    def text(self, o: Opts) -> str:
        return f"{self.kind} {self.target}" if self.target else self.kind

    def json(self) -> Any:
        return {self.kind: {"target": self.target} if self.target else None}


@dataclass
class Elem(Expr):
    """One element of a set literal: key, optional mapped data, timeout/expires/comment."""

    key: Expr
    data: Expr | None = None
    timeout: int | None = None
    expires: int | None = None
    comment: str | None = None
    counter: bool = False

    def text(self, o: Opts) -> str:
        s = self.key.text(o) + options_text([
            ("timeout {}", None if self.timeout is None else fmt_time(self.timeout, o)),
            ("expires {}", None if self.expires is None else fmt_time(self.expires, o)),
            ('comment "{}"', self.comment)])
        return s if self.data is None else f"{s} : {self.data.text(o)}"

    def json(self) -> Any:
        key = self.key.json()
        if self.timeout is not None or self.comment is not None or self.expires is not None:
            d: dict[str, Any] = {"val": key}
            if self.timeout is not None:
                d["timeout"] = self.timeout // 1000
            if self.expires is not None:
                d["expires"] = self.expires // 1000
            if self.comment is not None:
                d["comment"] = self.comment
            key = {"elem": d}
        return key if self.data is None else [key, self.data.json()]


@dataclass
class SetLit(Expr):
    elems: list[Elem] = field(default_factory=list)

    def text(self, o: Opts) -> str:
        return "{ " + ", ".join(e.text(o) for e in self.elems) + " }"

    def json(self) -> Any:
        return {"set": [e.json() for e in self.elems]}


@dataclass
class SetRef(Expr):
    name: str

    def text(self, o: Opts) -> str:
        return f"@{self.name}"

    def json(self) -> Any:
        return f"@{self.name}"


@dataclass
class MapExpr(Expr):
    key: Expr
    data: Expr  # SetLit or SetRef

    def text(self, o: Opts) -> str:
        return f"{self.key.text(o)} map {self.data.text(o)}"

    def json(self) -> Any:
        return {"map": {"key": self.key.json(), "data": self.data.json()}}


def options_text(options: list[tuple[str, object]]) -> str:
    """`` word value`` for each option that is set, in the order nft prints them."""
    return "".join(" " + fmt.format(value) for fmt, value in options if value is not None)


def fmt_time(ms: int, o: Opts | None = None) -> str:
    """nft's time format: ``1d2h3m4s500ms``; zero parts left out. With ``-n`` (nft's
    NUMERIC_TIME, part of every ``-n``) whole seconds: ``300s``."""
    if o is not None and o.numeric:
        return f"{ms // 1000}s"
    return T.time_text(ms)


def parse_time(text: str) -> int | None:
    """Milliseconds for ``1h30m``, ``10s``, ``500ms``, a bare number of seconds; None if malformed."""
    return T.time_ms(text)


@dataclass
class TcpOption(Expr):
    name: str
    field: str

    dtype = T.DType("integer", 16, "int")

    def text(self, o: Opts) -> str:
        return f"tcp option {self.name} {self.field}"

    def json(self) -> Any:
        return {"tcp option": {"name": self.name, "field": self.field}}


RT_KEYS = {"classid": T.REALM, "mtu": T.DType("integer", 16, "int"), "ipsec": T.BOOLEAN}


@dataclass
class Rt(Expr):
    """rt.c's routing keys; ``nexthop`` is an address of ``family`` (ip or ip6), named in the listing."""

    key: str
    family: str | None = None

    @property
    def dtype(self) -> T.DType:  # type: ignore[override]
        if self.key == "nexthop":
            return T.IPV6 if self.family == "ip6" else T.IPV4
        return RT_KEYS[self.key]

    def text(self, o: Opts) -> str:
        return f"rt {self.family} nexthop" if self.key == "nexthop" else f"rt {self.key}"

    def json(self) -> Any:
        if self.key == "nexthop":
            return {"rt": {"key": self.key, "family": self.family}}
        return {"rt": {"key": self.key}}
