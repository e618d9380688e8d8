"""Packets as the netfilter path sees them: an IP header, an L4 header, and skb metadata.

Addresses are kept as integers (with ``family`` 4 or 6) because every hot operation on them —
prefix matching, hashing into compiled rule indexes, NAT rewrites — is integer arithmetic.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from kproxy import ip6ext
from kproxy.ip6ext import ExtHdr

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.netfilter.conntrack import Conn

# IP protocol numbers, and the names iptables/nft accept for them (from /etc/protocols).
PROTO_NUMBERS: dict[str, int] = {
    "all": 0, "icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
    "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132, "udplite": 136, "dccp": 33, "mh": 135,
}
PROTO_NAMES: dict[int, str] = {
    0: "all", 1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 51: "ah",
    58: "ipv6-icmp", 132: "sctp", 136: "udplite", 33: "dccp", 135: "mh",
}
TCP, UDP, ICMP, SCTP, ICMPV6 = 6, 17, 1, 132, 58

# TCP header flags, as bits of the flags byte.
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
M32 = 0xFFFFFFFF          # sequence numbers wrap at 32 bits
TCP_FLAG_BITS: dict[str, int] = {
    "FIN": FIN, "SYN": SYN, "RST": RST, "PSH": PSH, "ACK": ACK, "URG": URG, "ECE": ECE, "CWR": CWR,
}

# Netfilter verdicts (include/uapi/linux/netfilter.h).
NF_DROP, NF_ACCEPT, NF_STOLEN, NF_QUEUE, NF_REPEAT = 0, 1, 2, 3, 4


def parse_addr(text: str) -> tuple[int, int]:
    """Parse an IPv4 or IPv6 address into ``(family, integer)``."""
    addr = ipaddress.ip_address(text)
    return addr.version, int(addr)


def format_addr(value: int, family: int = 4) -> str:
    """Format an integer address the way the kernel tools print it (glibc's inet_ntop)."""
    if family == 4:
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"{value} is not an IPv4 address")
        return f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"   # saves format 100,000s
    return ntop6(value)


def ntop6(value: int) -> str:
    """inet_ntop(AF_INET6) itself: the IPv4 tail dotted for IPv4-mapped (``::ffff:1.2.3.4``) and
    IPv4-compatible (``::1.2.3.4``) addresses, as iptables, nft and conntrack print them."""
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def parse_proto(text: str | int) -> int:
    """A protocol name or number (as ``-p`` takes it) to its number."""
    if isinstance(text, int):
        return text
    key = text.lower()
    if key in PROTO_NUMBERS:
        return PROTO_NUMBERS[key]
    if key.isdigit() and 0 <= int(key) <= 255:
        return int(key)
    raise ValueError(f"unknown protocol \"{text}\" specified")


def parse_tcp_flags(text: str) -> int:
    """``SYN,ACK`` (or ``ALL``/``NONE``) into a flags byte."""
    if not text or text.upper() == "NONE":
        return 0
    bits = 0
    for name in text.upper().split(","):
        if name == "ALL":
            bits |= 0x3F
        elif name in TCP_FLAG_BITS:
            bits |= TCP_FLAG_BITS[name]
        else:
            raise ValueError(f"Unknown TCP flag `{name}'")
    return bits


class TcpSeg(NamedTuple):
    """The TCP header fields conntrack reads besides ports and flags (options: -1 = not sent)."""

    seq: int
    ack: int = 0
    window: int = 0
    wscale: int = -1
    sack_perm: bool = False
    payload: int = 0

    def end(self, flags: int) -> int:
        """segment_seq_plus_len: the sequence number after this segment (SYN and FIN count one)."""
        return (self.seq + self.payload + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)) & M32


@dataclass(slots=True)
class Packet:
    """One IP packet plus the per-skb state the netfilter path reads and writes.

    ``sport``/``dport`` are the L4 ports (for ICMP echo, conntrack uses the ICMP id as the
    "port"; keep it in ``icmp_id``). ``inner`` carries the embedded header of an ICMP error,
    which is how conntrack finds the RELATED connection.
    """

    src: int
    dst: int
    proto: int = TCP
    sport: int = 0
    dport: int = 0
    family: int = 4
    tcp_flags: int = 0
    icmp_type: int = 0
    icmp_code: int = 0
    icmp_id: int = 0
    length: int = 60
    ttl: int = 64
    iif: str = ""
    oif: str = ""
    mark: int = 0
    src_mac: str = ""
    pkttype: str = "unicast"
    inner: Packet | None = None
    # TCP sequence numbers, acknowledgement, window and options, for conntrack's window checks;
    # None when unknown (then only the state table applies).
    seg: TcpSeg | None = None
    # Conntrack attachment (skb->_nfct): the connection, and this packet's state and direction.
    ct: Conn | None = None
    ctstate: str = ""          # NEW, ESTABLISHED, RELATED, INVALID, UNTRACKED or "" (none yet)
    ctdir: int = 0             # 0 = ORIGINAL, 1 = REPLY
    notrack: bool = False
    # The conntrack zone a ``ct zone set`` / CT --zone template gave the packet before its lookup,
    # and the directions it applies to (bit 0 original, bit 1 reply; 0: no template, the default zone).
    zone: int = 0
    zone_dir: int = 0
    trace: bool = False        # set by the TRACE target (raw table)
    local: bool = False        # generated by this node (entered at OUTPUT)
    # Header fields some matches read and some targets rewrite: the IPv4 TOS byte or IPv6 traffic
    # class (DSCP in the top six bits, ECN in the low two), the TCP MSS option (0: not sent), the
    # payload after the transport header (None: not known, so string and u32 cannot decide), and the
    # owning socket's uid/gid (None: not known; only local packets have a socket).
    tos: int = 0
    tcp_mss: int = 0
    payload: bytes | None = None
    uid: int | None = None
    gid: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # IPv6 extension headers between the IPv6 header and ``proto``'s header, in order (kproxy.ip6ext);
    # ``proto`` stays the upper-layer protocol, what ``meta l4proto`` and ``-p`` see.
    exthdrs: tuple[ExtHdr, ...] = ()

    @classmethod
    def make(cls, src: str, dst: str, proto: str | int = "tcp", sport: int = 0, dport: int = 0,
             **kw: Any) -> Packet:
        """Build a packet from textual addresses (``Packet.make("10.0.0.1", "10.96.0.10", "udp", 4000, 53)``);
        ``exthdrs`` may be spec words (``["hbh,opt=5:2", "frag,mf=1,id=7"]``) or ``ExtHdr`` objects."""
        fam, s = parse_addr(src)
        fam2, d = parse_addr(dst)
        if fam != fam2:
            raise ValueError(f"address families differ: {src} and {dst}")
        if kw.get("exthdrs"):
            if fam != 6:
                raise ValueError("extension headers need an IPv6 packet")
            kw["exthdrs"] = ip6ext.parse_chain(tuple(kw["exthdrs"]))
        p = parse_proto(proto)
        if p == TCP and "tcp_flags" not in kw:
            kw["tcp_flags"] = SYN
        return cls(src=s, dst=d, proto=p, sport=sport, dport=dport, family=fam, **kw)

    @property
    def src_str(self) -> str:
        return format_addr(self.src, self.family)

    @property
    def dst_str(self) -> str:
        return format_addr(self.dst, self.family)

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    def copy(self) -> Packet:
        """A copy with the same headers and metadata but no conntrack attachment."""
        return Packet(
            src=self.src, dst=self.dst, proto=self.proto, sport=self.sport, dport=self.dport,
            family=self.family, tcp_flags=self.tcp_flags, icmp_type=self.icmp_type,
            icmp_code=self.icmp_code, icmp_id=self.icmp_id, length=self.length, ttl=self.ttl,
            iif=self.iif, oif=self.oif, mark=self.mark, src_mac=self.src_mac, pkttype=self.pkttype,
            inner=self.inner, local=self.local, seg=self.seg, tos=self.tos, tcp_mss=self.tcp_mss,
            payload=self.payload, uid=self.uid, gid=self.gid, exthdrs=self.exthdrs,
        )

    @property
    def nexthdr(self) -> int:
        """The IPv6 header's next-header field (``ip6 nexthdr``): the first extension header's type."""
        return self.exthdrs[0].kind if self.exthdrs else self.proto

    def describe(self) -> str:
        """One line: ``tcp 10.0.0.1:1234 -> 10.96.0.10:80 [SYN]`` (extension headers after it)."""
        return self._describe() + ip6ext.describe(self.exthdrs)

    def _describe(self) -> str:
        if self.proto in (TCP, UDP, SCTP):
            text = f"{self.proto_name} {self.src_str}:{self.sport} -> {self.dst_str}:{self.dport}"
            if self.proto == TCP:
                text += f" [{tcp_flags_str(self.tcp_flags)}]"
            return text
        if self.proto in (ICMP, ICMPV6):
            return f"{self.proto_name} {self.src_str} -> {self.dst_str} type {self.icmp_type} code {self.icmp_code}"
        return f"{self.proto_name} {self.src_str} -> {self.dst_str}"


def tcp_flags_str(bits: int) -> str:
    names = [name for name, bit in TCP_FLAG_BITS.items() if bits & bit]
    return ",".join(names) if names else "NONE"
