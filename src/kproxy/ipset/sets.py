"""IP sets (ipset 7.17 types): elements, timeouts, counters, comments, nomatch, and how packets match them.

Each set type is a list of dimensions (``ip``, ``port``, ``net``, ``iface``, ``set``); an element is
a tuple with one value per dimension. ``hash:net``-like sets match the most specific prefix that
holds the address, and a ``nomatch`` entry there makes the test fail, as in the kernel.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

from kproxy.versioned import SetMembers

TYPES: dict[str, tuple[list[str], int]] = {   # type -> (dimensions, revision)
    "hash:ip": (["ip"], 6), "hash:ip,port": (["ip", "port"], 7), "hash:ip,port,ip": (["ip", "port", "ip"], 6),
    "hash:ip,port,net": (["ip", "port", "net"], 8), "hash:net": (["net"], 7), "hash:net,iface": (["net", "iface"], 8),
    "bitmap:port": (["bport"], 3), "list:set": (["set"], 3),
}
PROTOS = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136, "icmp": 1, "icmpv6": 58}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}


class IpsetError(ValueError):
    """An ipset error; the message is the tool's text after ``ipset v7.17: ``."""


@dataclass
class Entry:
    expires: float | None = None
    packets: int = 0
    bytes: int = 0
    comment: str | None = None
    nomatch: bool = False


@dataclass
class IpSet:
    name: str
    type: str
    family: str = "inet"
    hashsize: int = 1024
    maxelem: int = 65536
    timeout: int | None = None
    counters: bool = False
    comment: bool = False
    range: tuple[int, int] | None = None      # bitmap:port
    size: int = 8                             # list:set
    initval: int = field(default_factory=lambda: secrets.randbits(32))
    members: dict[tuple[Any, ...], Entry] = field(default_factory=SetMembers)
    references: int = 0

    @property
    def dims(self) -> list[str]:
        return TYPES[self.type][0]

    @property
    def revision(self) -> int:
        return TYPES[self.type][1]

    @property
    def bits(self) -> int:
        return 32 if self.family == "inet" else 128

    # ---- elements --------------------------------------------------------------------------------
    def parse(self, text: str) -> tuple[Any, ...]:
        """An element as the tool writes it (``10.0.0.1,tcp:80``) to its key."""
        parts = text.split(",")
        if len(parts) != len(self.dims):
            raise IpsetError(f"Syntax error: Second element is missing from {text}." if len(parts) < len(self.dims)
                             else f"Syntax error: Elem separator in {text}, but settype {self.type} supports none.")
        return tuple(self._value(dim, p) for dim, p in zip(self.dims, parts, strict=True))

    def _value(self, dim: str, text: str) -> Any:
        if dim == "ip":
            return self._addr(text, text)
        if dim == "net":
            addr, slash, plen = text.partition("/")
            ip = self._addr(addr, addr)
            prefix = parse_uint(plen, 255) if slash else self.bits
            if prefix > self.bits:
                raise IpsetError(f"Syntax error: '{plen}' is out of range 0-{self.bits}")
            return (ip, prefix)
        if dim == "port":
            proto, _, port = text.rpartition(":")
            proto = proto or "tcp"
            if proto not in PROTOS:
                raise IpsetError(f"Syntax error: cannot parse '{proto}' as a protocol")
            return (PROTOS[proto], _port(port, proto))
        if dim == "bport":
            p = _port(text)
            if self.range and not self.range[0] <= p <= self.range[1]:
                raise IpsetError("Element is out of the range of the set")
            return p
        return text          # iface, set

    def _addr(self, text: str, shown: str) -> int:
        """An address of the set's family; the other family's is the tool's resolver error."""
        version = 4 if self.family == "inet" else 6
        try:     # inet_pton: kube-proxy's restores add tens of thousands of members per sync
            return int.from_bytes(socket.inet_pton(socket.AF_INET if version == 4 else socket.AF_INET6, text), "big")
        except (OSError, ValueError):
            raise IpsetError(f"Syntax error: cannot parse {shown}: resolving to IPv{version} address failed") from None

    def format(self, key: tuple[Any, ...]) -> str:
        out = []
        for dim, v in zip(self.dims, key, strict=True):
            if dim == "ip":
                out.append(str(ipaddress.ip_address(v)))
            elif dim == "net":
                addr = ipaddress.ip_address(v[0])
                out.append(f"{addr}/{v[1]}" if v[1] != self.bits else str(addr))
            elif dim == "port":
                out.append(f"{PROTO_NAMES.get(v[0], v[0])}:{v[1]}")
            else:
                out.append(str(v))
        return ",".join(out)

    def live(self, now: float) -> list[tuple[tuple[Any, ...], Entry]]:
        """Members not yet expired, most recently added first (the order the kernel lists small sets in)."""
        gone = [k for k, e in self.members.items() if e.expires is not None and e.expires <= now]
        for k in gone:
            del self.members[k]
        return list(reversed(list(self.members.items())))

    def add(self, key: tuple[Any, ...], now: float, timeout: int | None = None, comment: str | None = None,
            nomatch: bool = False, exist: bool = False) -> None:
        if self.timeout is not None:      # only a set with a timeout has members that expire
            self.live(now)
        if key in self.members and not exist:
            raise IpsetError("Element cannot be added to the set: it's already added")
        if key not in self.members and len(self.members) >= self.maxelem:
            raise IpsetError("Hash is full, cannot add more elements")
        t = timeout if timeout is not None else self.timeout
        entry = Entry(now + t if t else None, comment=comment if self.comment else None, nomatch=nomatch)
        old = self.members.pop(key, None)
        if old is not None and exist:
            entry.packets, entry.bytes = old.packets, old.bytes
        self.members[key] = entry

    def delete(self, key: tuple[Any, ...], now: float, exist: bool = False) -> None:
        if self.timeout is not None:
            self.live(now)
        if key not in self.members:
            if exist:
                return
            raise IpsetError("Element cannot be deleted from the set: it's not added")
        del self.members[key]

    def contains(self, key: tuple[Any, ...], now: float, registry: Any = None) -> bool:
        """ipset test / the set match: nets by most specific prefix (nomatch fails), lists by member sets."""
        if self.type == "list:set":
            return key in dict(self.live(now))
        if self.timeout is not None:      # the per-packet path: no O(members) scan without timeouts
            self.live(now)
        if "net" not in self.dims:
            e = self.members.get(key)
            return e is not None
        i = self.dims.index("net")
        addr = key[i][0] if isinstance(key[i], tuple) else key[i]
        best: Entry | None = None
        best_len = -1
        for k, e in self.members.items():
            net, plen = k[i]
            if all(k[j] == key[j] for j in range(len(k)) if j != i) and plen > best_len and \
                    (addr >> (self.bits - plen) if plen else 0) == (net >> (self.bits - plen) if plen else 0):
                best, best_len = e, plen
        return best is not None and not best.nomatch

    def matches_packet(self, pkt: Any, dirs: list[str], now: float, registry: Any) -> bool:
        """The set match: a list:set matches when one of its member sets does, in order."""
        if self.type == "list:set":
            for k, _ in self.live(now):
                member = registry.get(k[0])
                if member is not None and member.matches_packet(pkt, dirs, now, registry):
                    return True
            return False
        key = self.packet_key(pkt, dirs)
        return key is not None and self.contains(key, now, registry)

    def packet_key(self, pkt: Any, dirs: list[str]) -> tuple[Any, ...] | None:
        """The element a packet presents to ``-m set --match-set NAME src,dst``."""
        out: list[Any] = []
        for dim, d in zip(self.dims, dirs, strict=False):
            addr = pkt.src if d == "src" else pkt.dst
            port = pkt.sport if d == "src" else pkt.dport
            if dim == "ip":
                out.append(addr)
            elif dim == "net":
                out.append((addr, self.bits))
            elif dim in ("port", "bport"):
                if pkt.proto not in (6, 17, 132, 136) and dim == "bport":
                    return None
                out.append((pkt.proto, port) if dim == "port" else port)
            elif dim == "iface":
                out.append(pkt.iif if d == "src" else pkt.oif)
        if len(out) != len(self.dims):
            return None
        return tuple(out)

    # ---- headers -----------------------------------------------------------------------------------
    def header(self) -> str:
        if self.type == "bitmap:port":
            text = f"range {self.range[0]}-{self.range[1]}" if self.range else ""
        elif self.type == "list:set":
            text = f"size {self.size}"
        else:
            text = f"family {self.family} hashsize {self.hashsize} maxelem {self.maxelem}"
        if self.timeout is not None:
            text += f" timeout {self.timeout}"
        if self.counters:
            text += " counters"
        if self.comment:
            text += " comment"
        if self.type.startswith("hash:"):
            text += f" bucketsize 12 initval 0x{self.initval:08x}"
        return text

    def element_text(self, key: tuple[Any, ...], e: Entry, now: float) -> str:
        """The tool's order: element, timeout (0 = permanent in a timeout set), nomatch, counters, comment."""
        text = self.format(key)
        if self.timeout is not None:
            text += f" timeout {max(0, int(e.expires - now)) if e.expires is not None else 0}"
        if e.nomatch:
            text += " nomatch"
        if self.counters:
            text += f" packets {e.packets} bytes {e.bytes}"
        if e.comment is not None:
            text += f' comment "{e.comment}"'
        return text

    def memory(self) -> int:
        """A plausible 'Size in memory' (the kernel's depends on its allocator; tests ignore this line)."""
        return 200 + 88 * len(self.members)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "family": self.family, "hashsize": self.hashsize,
                "maxelem": self.maxelem, "timeout": self.timeout, "counters": self.counters, "comment": self.comment,
                "range": list(self.range) if self.range else None, "size": self.size, "initval": self.initval,
                "members": [[_jsonable(k), e.expires, e.packets, e.bytes, e.comment, e.nomatch]
                            for k, e in self.members.items()]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IpSet:
        s = cls(d["name"], d["type"], d["family"], d["hashsize"], d["maxelem"], d["timeout"], d["counters"],
                d["comment"], tuple(d["range"]) if d["range"] else None, d["size"], d["initval"])
        for k, exp, pk, by, com, nom in d["members"]:
            s.members[_unjson(k)] = Entry(exp, pk, by, com, nom)
        return s


def _jsonable(key: tuple[Any, ...]) -> list[Any]:
    return [list(v) if isinstance(v, tuple) else v for v in key]


def _unjson(key: list[Any]) -> tuple[Any, ...]:
    return tuple(tuple(v) if isinstance(v, list) else v for v in key)


def parse_uint(text: str, maximum: int, minimum: int = 0) -> int:
    """A number as ipset's parser takes it (decimal, or 0x hex), with its errors for words and ranges."""
    t = text.strip()
    try:
        n = int(t, 16) if t[:2].lower() == "0x" else int(t, 10)
    except ValueError:
        raise IpsetError(f"Syntax error: '{text}' is invalid as number") from None
    if not minimum <= n <= maximum:
        raise IpsetError(f"Syntax error: '{text}' is out of range {minimum}-{maximum}")
    return n


def _port(text: str, proto: str = "tcp") -> int:
    """A port number or service name; a failure is the tool's three lines (number, protocol, port)."""
    if text.isascii() and text.isdigit() and int(text) <= 65535:
        return int(text)
    try:
        return parse_uint(text, 65535)
    except IpsetError as exc:
        first = str(exc)
    try:
        if text and text.isprintable() and "\0" not in text:
            return socket.getservbyname(text, proto if proto in ("tcp", "udp") else "tcp")
    except OSError:
        pass
    raise IpsetError(f"{first}\nSyntax error: '{proto}' is invalid as number\ncannot parse '{text}' as a {proto} port")
