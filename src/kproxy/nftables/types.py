"""nft's data types: how a value of each type is written in a script, printed in a listing and in JSON."""

from __future__ import annotations

import ipaddress
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

# ``nft -j -n``: symbolic constants (protocols, ct states, ICMP types, ...) are listed as numbers.
JSON_NUMERIC: ContextVar[bool] = ContextVar("JSON_NUMERIC", default=False)


class TypeError_(Exception):
    """A value that does not parse as the expected type (nft: ``Could not parse ...``)."""


@cache
def protocols() -> tuple[dict[str, int], dict[int, str]]:
    """/etc/protocols, as nft reads it (getprotobyname/getprotobynumber)."""
    by_name: dict[str, int] = {}
    by_num: dict[int, str] = {}
    try:
        lines = Path("/etc/protocols").read_text().splitlines()
    except OSError:
        lines = ["tcp 6", "udp 17", "icmp 1", "sctp 132", "ipv6-icmp 58", "esp 50", "ah 51", "gre 47"]
    for line in lines:
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and parts[1].isdigit():
            num = int(parts[1])
            for name in [parts[0], *parts[2:]]:
                by_name.setdefault(name, num)
            by_num.setdefault(num, parts[0])
    return by_name, by_num


# Protocol names nft's grammar knows as keywords, whatever /etc/protocols says.
PROTO_KEYWORDS = {"icmpv6": 58, "tcp": 6, "udp": 17, "icmp": 1, "sctp": 132, "esp": 50, "ah": 51, "udplite": 136,
                  "dccp": 33, "comp": 108, "gre": 47}


@cache
def services() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        lines = Path("/etc/services").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and "/" in parts[1]:
            port = parts[1].split("/")[0]
            for name in [parts[0], *parts[2:]]:
                out.setdefault(name, int(port))
    return out


@dataclass(frozen=True)
class DType:
    name: str
    bits: int
    kind: str  # int, hex, mark, ipv4, ipv6, ether, string, ifindex, proto, symbol, bitmask, verdict, service
    symbols: tuple[tuple[str, int], ...] = field(default=())
    desc: str = ""

    def sym_by_name(self) -> dict[str, int]:
        return dict(self.symbols)

    def parse(self, text: str) -> Any:
        """The value ``text`` stands for (an int, or a str for strings), or TypeError_."""
        k = self.kind
        if k == "ipv4":
            try:
                return int(ipaddress.IPv4Address(text))
            except ValueError:
                raise TypeError_(text) from None
        if k == "ipv6":
            try:
                return int(ipaddress.IPv6Address(text))
            except ValueError:
                raise TypeError_(text) from None
        if k == "ether":
            parts = text.split(":")
            if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
                raise TypeError_(text)
            try:
                return int("".join(p.zfill(2) for p in parts), 16)
            except ValueError:
                raise TypeError_(text) from None
        if k == "ifindex" and text.isdigit():
            return int(text)            # an interface index (0: none, as ``fib ... oif != 0`` writes it)
        if k in ("string", "ifindex"):
            return text
        if k == "classid":
            return classid_parse(text)
        if k == "boolean" and text in ("exists", "missing"):
            return int(text == "exists")
        if k == "rtsym" and text in (syms := self.sym_by_name()):
            return syms[text]
        if k == "time":
            ms = time_ms(text)
            if ms is None or self.bits and ms >= 1 << self.bits:
                raise TypeError_(text)
            return ms
        syms = self.sym_by_name()
        if text in syms:
            return syms[text]
        if k == "proto" and text in protocols()[0]:
            return protocols()[0][text]
        if k == "proto" and text in PROTO_KEYWORDS:
            return PROTO_KEYWORDS[text]
        if k == "service" and text in services():
            return services()[text]
        try:
            value = int(text, 0)
        except ValueError:
            raise TypeError_(text) from None
        if value < 0 or self.bits and value >= 1 << self.bits:
            raise TypeError_(text)
        return value

    def text(self, value: Any, numeric: int = 0) -> str:
        k = self.kind
        if k == "ipv4":
            return str(ipaddress.IPv4Address(value))
        if k == "ipv6":
            return ipv6_text(value)
        if k == "ether":
            return ":".join(f"{(value >> s) & 0xFF:02x}" for s in range(40, -8, -8))
        if k == "ifindex" and isinstance(value, int):
            return str(value)
        if k in ("string", "ifindex"):
            return f'"{value}"'
        if k == "boolean":        # a symbol table (exists 1, missing 0): -n prints the number
            return str(int(value)) if numeric else "exists" if value else "missing"
        if k == "mark":
            return f"0x{value:08x}"
        if k == "time":             # datatype.c's time_print; -n (NUMERIC_TIME): whole seconds
            return f"{value // 1000}s" if numeric else time_text(value)
        if k == "classid":
            return "root" if value == 0xFFFFFFFF else "none" if value == 0 else f"{value >> 16:x}:{value & 0xFFFF:x}"
        if k == "hex":
            return f"0x{value:0{(self.bits + 3) // 4}x}" if self.bits else hex(value)
        if k == "proto":
            if numeric:
                return str(value)
            return protocols()[1].get(value, str(value))
        if k == "bitmask":
            if numeric:
                return ",".join(hex(1 << i) for i in range(self.bits) if value >> i & 1) or "0x0"
            return ",".join(self.bit_names(value))
        if k == "rtsym" and not numeric:     # an iproute2 table's name is printed quoted
            for name, v in self.symbols:
                if v == value:
                    return f'"{name}"'
        if k == "symbol" and not numeric:
            for name, v in self.symbols:
                if v == value:
                    return name
        if k == "symbol" and self.name in HEX_SYMBOLS:
            return f"0x{value:0{HEX_SYMBOLS[self.name]}x}"
        return str(value)

    def bit_names(self, value: int) -> list[str]:
        names = [name for name, v in self.symbols if v and value & v == v]
        rest = value
        for _, v in self.symbols:
            rest &= ~v
        if rest or not names:
            names.append(f"0x{rest:0{(self.bits + 3) // 4}x}" if rest or not names else "")
        return names

    def json(self, value: Any) -> Any:
        k = self.kind
        if JSON_NUMERIC.get() and isinstance(value, int):
            if k == "proto" or k == "symbol" and self.symbols:
                return value
            if k == "bitmask":
                bits = [1 << i for i in range(value.bit_length()) if value >> i & 1]
                return bits[0] if len(bits) == 1 else bits
        if k == "boolean":
            return bool(value)
        if k == "classid":
            return self.text(value)
        if k == "rtsym":          # a realm is a string even as a number (nft 1.0.6), a devgroup only as a name
            t = self.text(value, 1 if JSON_NUMERIC.get() else 0).strip('"')
            return t if self.name == "realm" or not t.isdigit() else value
        if k == "time":
            return value // 1000
        if k in ("ipv4", "ipv6", "ether", "proto", "string", "ifindex") or (k == "symbol" and self.symbols):
            t = self.text(value)
            if k == "symbol" and self.name in HEX_SYMBOLS and t.startswith("0x"):
                return value            # no symbol: JSON has the number
            return t.strip('"') if k in ("string", "ifindex") else (int(t) if t.isdigit() else t)
        if k == "bitmask":
            names = self.bit_names(value)
            return names[0] if len(names) == 1 else names
        return value


def ipv6_text(value: int) -> str:
    addr = ipaddress.IPv6Address(value)
    if addr.ipv4_mapped is not None:
        return f"::ffff:{addr.ipv4_mapped}"
    return addr.compressed


def _t(name: str, bits: int, kind: str, desc: str = "", **syms: int) -> DType:
    return DType(name, bits, kind, tuple((k.replace("_", "-"), v) for k, v in syms.items()), desc)


def _strtoull(text: str, base: int) -> int:
    """C's strtoull: the longest prefix that reads as a number (0 if none), as nft uses it unchecked."""
    import re as _re

    s = text.strip()
    if base == 0:
        m = _re.match(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*", s)
        if m is None:
            return 0
        g = m.group()
        return int(g, 16) if g[:2].lower() == "0x" else int(g, 8) if g.startswith("0") else int(g)
    m = _re.match(r"(?:0[xX])?([0-9a-fA-F]+)", s)
    return int(m.group(1), 16) if m else 0


def classid_parse(text: str) -> int:
    """meta.c's tchandle_type_parse: ``root``, ``none``, ``MAJOR:MINOR`` in hex, else a number."""
    if text == "root":
        return 0xFFFFFFFF
    if text == "none":
        return 0
    if ":" in text:
        major, _, minor = text.partition(":")
        handle = (_strtoull(major, 16) << 16) & 0xFFFFFFFF
        return handle if not minor else handle | (_strtoull(minor, 16) & 0xFFFFFFFF)
    return _strtoull(text, 0) & 0xFFFFFFFF


CLASSID = DType("classid", 32, "classid", desc="TC classid")


def iproute2_table(name: str) -> tuple[tuple[str, int], ...]:
    """An /etc/iproute2 table (``rt_realms``, ``group``) as nft's rt_symbol_table_init reads it: ``NUMBER
    NAME`` lines, numbers in any C base; a missing file is an empty table."""
    out: list[tuple[str, int]] = []
    try:
        lines = (Path("/etc/iproute2") / name).read_text().splitlines()
    except OSError:
        return ()
    for line in lines:
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2:
            try:
                out.append((parts[1], int(parts[0], 0)))
            except ValueError:
                continue
    return tuple(out)


# rt.c's realm_type and meta.c's devgroup_type: integers named by iproute2's tables, names printed quoted
REALM = DType("realm", 32, "rtsym", iproute2_table("rt_realms"), "routing realm")
DEVGROUP = DType("devgroup", 32, "rtsym", iproute2_table("group"), "devgroup name")
CT_TIME = DType("time", 32, "time", desc="relative time")       # ct expiration: milliseconds


def time_ms(text: str) -> int | None:
    """``1d2h3m4s5ms`` (or a bare number of seconds) in milliseconds; None if malformed."""
    if text.isdigit():
        return int(text) * 1000
    parts = re.findall(r"(\d+)(ms|d|h|m|s)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        return None
    scale = {"d": 86400000, "h": 3600000, "m": 60000, "s": 1000, "ms": 1}
    return sum(int(a) * scale[b] for a, b in parts)


def time_text(ms: int) -> str:
    out = ""
    for unit, size in (("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            out += f"{ms // size}{unit}"
            ms %= size
    return out or "0s"
INTEGER = DType("integer", 0, "int")
IPV4 = DType("ipv4_addr", 32, "ipv4")
IPV6 = DType("ipv6_addr", 128, "ipv6")
ETHER = DType("ether_addr", 48, "ether")
SERVICE = DType("inet_service", 16, "service")
PROTO = DType("inet_proto", 8, "proto")
MARK = DType("mark", 32, "mark")
IFNAME = DType("ifname", 16 * 8, "string")
IFINDEX = DType("iface_index", 32, "ifindex")
STRING = DType("string", 0, "string")
BOOLEAN = DType("boolean", 1, "boolean")        # ``exists`` / ``missing``
VERDICT = DType("verdict", 32, "verdict")
UID = DType("uid", 32, "int")
GID = DType("gid", 32, "int")
TIME = DType("time", 64, "int")
ICMP_TYPE = _t("icmp_type", 8, "symbol", echo_reply=0, destination_unreachable=3, source_quench=4, redirect=5,
               echo_request=8, router_advertisement=9, router_solicitation=10, time_exceeded=11,
               parameter_problem=12, timestamp_request=13, timestamp_reply=14, info_request=15, info_reply=16,
               address_mask_request=17, address_mask_reply=18)
ICMPV6_TYPE = _t("icmpv6_type", 8, "symbol", destination_unreachable=1, packet_too_big=2, time_exceeded=3,
                 parameter_problem=4, echo_request=128, echo_reply=129, mld_listener_query=130,
                 mld_listener_report=131, mld_listener_done=132, mld_listener_reduction=132,
                 nd_router_solicit=133, nd_router_advert=134, nd_neighbor_solicit=135, nd_neighbor_advert=136,
                 nd_redirect=137, router_renumbering=138, ind_neighbor_solicit=141, ind_neighbor_advert=142,
                 mld2_listener_report=143)
ICMP_CODE = _t("icmp_code", 8, "symbol", net_unreachable=0, host_unreachable=1, prot_unreachable=2,
               port_unreachable=3, net_prohibited=9, host_prohibited=10, admin_prohibited=13, frag_needed=4)
ICMPV6_CODE = _t("icmpv6_code", 8, "symbol", no_route=0, admin_prohibited=1, addr_unreachable=3,
                 port_unreachable=4, policy_fail=5, reject_route=6)
ICMPX_CODE = _t("icmpx_code", 8, "symbol", port_unreachable=1, admin_prohibited=3, no_route=0,
                host_unreachable=2)
CT_STATE = _t("ct_state", 32, "bitmask", invalid=1, established=2, related=4, new=8, untracked=64)
CT_STATUS = _t("ct_status", 32, "bitmask", expected=1, seen_reply=2, assured=4, confirmed=8, snat=0x10,
               dnat=0x20, dying=0x200)
CT_DIR = _t("ct_dir", 8, "symbol", original=0, reply=1)
TCP_FLAG = _t("tcp_flag", 8, "bitmask", fin=1, syn=2, rst=4, psh=8, ack=0x10, urg=0x20, ecn=0x40, cwr=0x80)
PKTTYPE = _t("pkt_type", 8, "symbol", host=0, unicast=0, broadcast=1, multicast=2, other=3)
FIB_ADDRTYPE = _t("fib_addrtype", 32, "symbol", unspec=0, unicast=1, local=2, broadcast=3, anycast=4,
                  multicast=5, blackhole=6, unreachable=7, prohibit=8)
NFPROTO = _t("nf_proto", 8, "symbol", ipv4=2, ipv6=10)
# proto.c's dscp_type and ecn_type: symbols over a hexadecimal base (unnamed values print as hex)
DSCP = DType("dscp", 6, "symbol", (("cs0", 0x00), ("cs1", 0x08), ("cs2", 0x10), ("cs3", 0x18), ("cs4", 0x20),
                                   ("cs5", 0x28), ("cs6", 0x30), ("cs7", 0x38), ("df", 0x00), ("be", 0x00),
                                   ("lephb", 0x01), ("af11", 0x0a), ("af12", 0x0c), ("af13", 0x0e), ("af21", 0x12),
                                   ("af22", 0x14), ("af23", 0x16), ("af31", 0x1a), ("af32", 0x1c), ("af33", 0x1e),
                                   ("af41", 0x22), ("af42", 0x24), ("af43", 0x26), ("va", 0x2c), ("ef", 0x2e)),
             "Differentiated Services Code Point")
ECN = DType("ecn", 2, "symbol", (("not-ect", 0), ("ect1", 1), ("ect0", 2), ("ce", 3)), "Explicit Congestion Notification")
HEX_SYMBOLS = {"ether_type": 4, "dscp": 2, "ecn": 1}     # digits of a symbol type's hexadecimal base
NUMBER_RE = re.compile(r"[0-9]+|0x[0-9a-fA-F]+")
ETHER_TYPE = DType("ether_type", 16, "symbol", (("ip", 0x800), ("arp", 0x806), ("ip6", 0x86DD), ("8021q", 0x8100),
                                                ("8021ad", 0x88A8), ("vlan", 0x8100)))

# Types a set may be declared with (``type ipv4_addr . inet_service``).
SET_TYPES = {t.name: t for t in (IPV4, IPV6, ETHER, SERVICE, PROTO, MARK, IFNAME, IFINDEX, VERDICT, ICMP_TYPE,
                                 ICMPV6_TYPE, CT_STATE, CT_STATUS, TCP_FLAG, PKTTYPE, UID, GID, ETHER_TYPE,
                                 NFPROTO, FIB_ADDRTYPE, ICMP_CODE, ICMPV6_CODE, DSCP, ECN, CLASSID, REALM,
                                 DEVGROUP)}
SET_TYPES["integer"] = DType("integer", 32, "int")

# The data of an object map (``type ipv4_addr : counter``): the names of a table's stateful objects.
OBJ_REFS = {k: DType(k, 0, "string") for k in ("counter", "quota", "limit", "secmark", "synproxy")}


# datatype.c's descriptions, as nft names types in its errors
DESCRIPTIONS = {"integer": "integer", "string": "string", "mark": "packet mark", "ipv4_addr": "IPv4 address",
                "ipv6_addr": "IPv6 address", "ether_addr": "Ethernet address", "inet_service": "internet network service",
                "inet_proto": "Internet protocol", "ifname": "network interface name", "iface_index": "network interface index",
                "ct_state": "conntrack state", "ct_status": "conntrack status", "ct_dir": "conntrack direction",
                "uid": "user ID", "gid": "group ID", "pkt_type": "packet type", "nf_proto": "netfilter protocol",
                "ether_type": "Ethernet protocol", "verdict": "netfilter verdict", "boolean": "boolean type",
                "tcp_flag": "TCP flag", "icmp_type": "ICMP type", "icmpv6_type": "ICMPv6 type", "classid": "TC classid"}


def describe(dt: DType) -> str:
    return DESCRIPTIONS.get(dt.name) or dt.desc or dt.name
