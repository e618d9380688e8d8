"""Statements of nft rules (matches, verdicts, counters, NAT, reject, set updates) as nft lists them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kproxy.nftables import types as T
from kproxy.nftables.expr import Binop, Const, Expr, Opts, SetLit, Verdict, options_text


class Stmt:
    def text(self, o: Opts) -> str:
        raise NotImplementedError

    def json(self, o: Opts) -> Any:
        raise NotImplementedError


@dataclass
class Match(Stmt):
    left: Expr
    op: str  # "==", "!=", "<", ">", "<=", ">=", or "in" (implicit flag test)
    right: Expr

    def frag_off_mask(self) -> tuple[int, int] | None:
        """``frag frag-off & MASK OP VALUE``: (mask, value), which nft 1.0.6 cannot read back from the
        kernel's bitwise on the 13-bit field and lists in its raw, "unknown" form (issue 12)."""
        from kproxy.nftables.exthdr import Exthdr

        left, right = self.left, self.right
        if (isinstance(left, Binop) and left.op == "&" and isinstance(left.left, Exthdr)
                and left.left.name == "frag" and left.left.field == "frag-off" and isinstance(left.right, Const)
                and isinstance(right, Const) and isinstance(left.right.value, int) and isinstance(right.value, int)):
            return left.right.value, right.value
        return None

    def text(self, o: Opts) -> str:
        left, right = self.left, self.right
        if (quirk := self.frag_off_mask()) is not None:
            op = "==" if self.op == "in" else self.op
            return (f"(frag unknown & 0xfff8 [invalid type]) >> 3 & 0x{quirk[0]:x} [invalid type] {op} "
                    f"0x{quirk[1]:x} [invalid type]")
        if isinstance(left, Binop) and left.op == "&" and left.dtype.kind == "bitmask" and self.op == "==":
            # nft prints a masked flag test as ``tcp flags syn / syn,ack``.
            return f"{left.left.text(o)} {right.text(o)} / {left.right.text(o)}"
        if self.op == "in" or self.op == "==" and not isinstance(left, Binop):
            return f"{left.text(o)} {right.text(o)}"
        return f"{left.text(o)} {self.op} {right.text(o)}"

    def json(self, o: Opts) -> Any:
        if (quirk := self.frag_off_mask()) is not None:
            raw = {"&": [{"exthdr": {"name": "frag", "field": "unknown"}}, "0xfff8 [invalid type]"]}
            left = {"&": [{">>": [raw, 3]}, f"0x{quirk[0]:x} [invalid type]"]}
            return {"match": {"op": self.op, "left": left, "right": f"0x{quirk[1]:x} [invalid type]"}}
        return {"match": {"op": self.op, "left": self.left.json(), "right": self.right.json()}}


@dataclass
class PortsMatch(Match):
    """One half of the ``P sport A P dport B`` pair nft lists for the one comparison of both ports it made
    of them (rule.c stmt_reduce: ``payload load 4b @ transport header + 0``, one ``cmp``). The kernel
    compares the 32 bits once, so ``!=`` holds when either port differs, not only when both do. The
    sport half carries the 32-bit value (``ports``) and decides; the dport half (``ports`` None) always
    holds. Listed exactly as the two matches."""

    ports: int | None = None


@dataclass
class VerdictStmt(Stmt):
    verdict: Verdict

    def text(self, o: Opts) -> str:
        return self.verdict.text(o)

    def json(self, o: Opts) -> Any:
        return self.verdict.json()


@dataclass
class Counter(Stmt):
    packets: int = 0
    bytes: int = 0
    name: str | None = None

    def text(self, o: Opts) -> str:
        if self.name is not None:
            return f'counter name "{self.name}"'
        return "counter" if o.stateless else f"counter packets {self.packets} bytes {self.bytes}"

    def json(self, o: Opts) -> Any:
        if self.name is not None:
            return {"counter": self.name}
        return {"counter": None if o.stateless else {"packets": self.packets, "bytes": self.bytes}}


@dataclass
class ObjRef(Stmt):
    """``limit name "x"`` / ``quota name "x"``: a reference to a named stateful object."""

    kind: str
    name: str

    def text(self, o: Opts) -> str:
        return f'{self.kind} name "{self.name}"'

    def json(self, o: Opts) -> Any:
        return {self.kind: self.name}


@dataclass
class Limit(Stmt):
    rate: int
    per: str
    burst: int = 0
    unit: str | None = None  # None for packets, else bytes/kbytes/mbytes
    burst_unit: str = "bytes"
    over: bool = False

    def text(self, o: Opts) -> str:
        s = "limit rate " + ("over " if self.over else "")
        if self.unit is None:
            s += f"{self.rate}/{self.per}"
            if self.burst != 5:
                s += f" burst {self.burst} packets"
        else:
            s += f"{self.rate} {self.unit}/{self.per}"
            if self.burst:
                s += f" burst {self.burst} {self.burst_unit}"
        return s

    def json(self, o: Opts) -> Any:
        d: dict[str, Any] = {"rate": self.rate, "burst": self.burst, "per": self.per}
        if self.over:
            d["inv"] = True
        if self.unit is not None:       # json.c: the units last, burst_unit even for no burst
            d["rate_unit"] = self.unit
            d["burst_unit"] = self.burst_unit or "bytes"
        return {"limit": d}


UNIT_SIZE = {"bytes": 1, "kbytes": 1024, "mbytes": 1024 * 1024}


def get_rate(n: int) -> tuple[int, str]:
    """statement.c's get_rate: a byte count in the largest of bytes, kbytes, mbytes that divides it,
    as nft lists every quota and byte limit the kernel holds (``1024 kbytes`` is ``1 mbytes``)."""
    unit = "bytes"
    for bigger in ("kbytes", "mbytes"):
        if not n or n % 1024:
            break
        n //= 1024
        unit = bigger
    return n, unit


@dataclass
class Quota(Stmt):
    value: int
    unit: str
    over: bool = False
    used: int = 0
    used_unit: str = "bytes"

    def text(self, o: Opts) -> str:
        s = "quota " + ("over " if self.over else "") + f"{self.value} {self.unit}"
        if self.used and not o.stateless:
            s += f" used {self.used} {self.used_unit}"
        return s

    def json(self, o: Opts) -> Any:
        d: dict[str, Any] = {"val": self.value, "val_unit": self.unit}
        if self.over:
            d["inv"] = True
        if self.used and not o.stateless:
            d.update(used=self.used, used_unit=self.used_unit)
        return {"quota": d}


@dataclass
class Log(Stmt):
    prefix: str | None = None
    level: str | None = None
    group: int | None = None
    snaplen: int | None = None
    threshold: int | None = None
    flags: list[str] = field(default_factory=list)

    def text(self, o: Opts) -> str:
        return "log" + options_text([
            ('prefix "{}"', self.prefix), ("group {}", self.group), ("snaplen {}", self.snaplen),
            ("queue-threshold {}", self.threshold), ("level {}", None if self.level == "warn" else self.level)]) + \
            self.flags_text()

    def flags_text(self) -> str:
        """As statement.c prints them: ``flags all``, else ``flags tcp sequence,options``, ``flags ip
        options``, ``flags skuid``, ``flags ether``, each its own ``flags``."""
        if self.flags == ["all"]:
            return " flags all"
        tcp = [f[4:] for f in self.flags if f.startswith("tcp ")]
        out = f" flags tcp {','.join(tcp)}" if tcp else ""
        return out + "".join(f" flags {f}" for f in self.flags if not f.startswith("tcp "))

    def json(self, o: Opts) -> Any:
        d: dict[str, Any] = {}
        if self.prefix is not None:
            d["prefix"] = self.prefix
        if self.group is not None:
            d["group"] = self.group
        if self.snaplen is not None:
            d["snaplen"] = self.snaplen
        if self.threshold is not None:
            d["queue-threshold"] = self.threshold
        if self.level is not None and self.level != "warn":
            d["level"] = self.level
        if self.flags:
            d["flags"] = self.flags if len(self.flags) > 1 else self.flags[0]   # one flag: a string
        return {"log": d or None}


@dataclass
class Mangle(Stmt):
    """``meta mark set ...``, ``ct mark set ...``, payload writes."""

    key: Expr
    value: Expr

    def text(self, o: Opts) -> str:
        return f"{self.key.text(o)} set {self.value.text(o)}"

    def json(self, o: Opts) -> Any:
        return {"mangle": {"key": self.key.json(), "value": self.value.json()}}


@dataclass
class Nat(Stmt):
    kind: str  # dnat, snat, masquerade, redirect
    addr: Expr | None = None
    port: Expr | None = None
    family: str | None = None  # "ip"/"ip6" when written (inet tables)
    flags: list[str] = field(default_factory=list)

    def text(self, o: Opts) -> str:
        s = self.kind
        if self.family:
            s += f" {self.family}"
        if self.addr is not None or self.port is not None:
            s += " to"
        if self.addr is not None:
            a = self.addr.text(o)
            if self.port is not None and self.addr.dtype.kind == "ipv6" and not isinstance(self.addr, SetLit):
                a = f"[{a}]"
            s += f" {a}"
        if self.port is not None:
            s += (" " if self.addr is None else "") + f":{self.port.text(o)}"
        if self.flags:
            s += " " + ",".join(self.flags)
        return s

    def json(self, o: Opts) -> Any:
        d: dict[str, Any] = {}
        if self.family:
            d["family"] = self.family
        if self.addr is not None:
            d["addr"] = self.addr.json()
        if self.port is not None:
            d["port"] = self.port.json()
        if self.flags:
            d["flags"] = self.flags if len(self.flags) > 1 else self.flags[0]
        return {self.kind: d or None}


@dataclass
class Reject(Stmt):
    kind: str | None = None  # None (default), "tcp reset", "icmp", "icmpv6", "icmpx"
    code: Const | None = None
    default_json: tuple[str, str] | None = None

    def text(self, o: Opts) -> str:
        if self.kind is None:
            return "reject"
        if self.kind == "tcp reset":
            return "reject with tcp reset"
        return f"reject with {self.kind} {self.code.text(o) if self.code else ''}".rstrip()

    def json(self, o: Opts) -> Any:
        if self.kind is None:
            if self.default_json is None:
                return {"reject": None}
            kind, code = self.default_json
            dt = {"icmpx": T.ICMPX_CODE, "icmp": T.ICMP_CODE, "icmpv6": T.ICMPV6_CODE}.get(kind)
            codes = dict(dt.symbols) if dt is not None else {}
            expr = dt.json(codes[code]) if dt is not None and code in codes else code  # a number with -j -n
            return {"reject": {"type": kind, "expr": expr}}
        if self.kind == "tcp reset":
            return {"reject": {"type": "tcp reset"}}
        return {"reject": {"type": self.kind, "expr": self.code.json() if self.code else None}}


@dataclass
class Simple(Stmt):
    """Statements that are one keyword: notrack."""

    word: str

    def text(self, o: Opts) -> str:
        return self.word

    def json(self, o: Opts) -> Any:
        return {self.word: None}


@dataclass
class Queue(Stmt):
    num: str | None = None
    flags: list[str] = field(default_factory=list)

    def text(self, o: Opts) -> str:
        s = "queue"
        if self.flags:
            s += " flags " + ",".join(self.flags)
        if self.num is not None:
            s += f" to {self.num}"
        return s

    def json(self, o: Opts) -> Any:
        d: dict[str, Any] = {}
        if self.num is not None:
            d["num"] = int(self.num) if self.num.isdigit() else self.num
        if self.flags:
            d["flags"] = self.flags if len(self.flags) > 1 else self.flags[0]
        return {"queue": d or None}


@dataclass
class VerdictMap(Stmt):
    key: Expr
    data: Expr

    def text(self, o: Opts) -> str:
        return f"{self.key.text(o)} vmap {self.data.text(o)}"

    def json(self, o: Opts) -> Any:
        return {"vmap": {"key": self.key.json(), "data": self.data.json()}}


@dataclass
class SetUpdate(Stmt):
    """``add @s { ip saddr }`` / ``update @s { ip saddr timeout 10s limit rate 1/second }``."""

    op: str
    set_name: str
    key: Expr
    timeout: int | None = None
    stmts: list[Stmt] = field(default_factory=list)

    def text(self, o: Opts) -> str:
        from kproxy.nftables.expr import fmt_time

        inner = self.key.text(o)
        if self.timeout is not None:
            inner += f" timeout {fmt_time(self.timeout, o)}"
        for s in self.stmts:
            inner += " " + s.text(o)
        return f"{self.op} @{self.set_name} {{ {inner} }}"

    def json(self, o: Opts) -> Any:
        d: dict[str, Any] = {"op": self.op, "elem": self.key.json(), "set": f"@{self.set_name}"}
        if self.timeout is not None:
            d["elem"] = {"elem": {"val": self.key.json(), "timeout": self.timeout // 1000}}
        if self.stmts:
            d["stmt"] = [s.json(o) for s in self.stmts]
        return {"set": d}


@dataclass
class CtSet(Stmt):
    """``ct zone set 1``, ``ct helper set "ftp"`` style assignments that are not plain mangles."""

    key: str
    value: Expr

    def text(self, o: Opts) -> str:
        return f"ct {self.key} set {self.value.text(o)}"

    def json(self, o: Opts) -> Any:
        return {"mangle": {"key": {"ct": {"key": self.key}}, "value": self.value.json()}}


MARK_TYPES = {T.MARK.name}


@dataclass
class Forward(Stmt):
    """``fwd to DEV`` / ``dup to DEV`` (netdev family): the packet, or a copy of it, sent out of DEV."""

    kind: str  # fwd, dup
    dev: str

    def text(self, o: Opts) -> str:
        return f'{self.kind} to "{self.dev}"'

    def json(self, o: Opts) -> Any:
        return {self.kind: {"dev" if self.kind == "fwd" else "addr": self.dev}}


@dataclass
class FlowAdd(Stmt):
    """``flow add @ft`` (also written ``flow offload @ft``): the packet's connection joins the flowtable."""

    flowtable: str

    def text(self, o: Opts) -> str:
        return f"flow add @{self.flowtable}"

    def json(self, o: Opts) -> Any:
        return {"flow": {"op": "add", "flowtable": f"@{self.flowtable}"}}
