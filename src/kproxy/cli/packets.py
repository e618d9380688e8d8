"""Packet specifications as the ``trace`` command and packet files write them.

A spec is the trace options of one packet (``--iif eth0 --src 10.0.0.1 --dst 10.96.0.10 -p udp
--dport 53``, and ``--ttl``, ``--tos``, ``--mss``, ``--payload``, ``--uid``/``--gid`` for the
extensions that read them; ``--exthdr WORD``, repeated in order, for IPv6 extension headers: ``hbh,opt=5:2``,
``dst``, ``rt,type=0,addr=2001:db8::1``, ``frag,offset=0,mf=1,id=7``; see kproxy.ip6ext). A packet file holds one spec per line (``#`` comments allowed); the word ``reply``
on a line means "the answer to the previous packet", sent back from where that packet went, so a
file can play a whole exchange through shared conntrack state.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass

from kproxy import ip6ext
from kproxy.packet import ACK, SYN, TCP, Packet, parse_addr, parse_proto, parse_tcp_flags


class SpecError(ValueError):
    """A bad packet spec; the message names the file, line and argument."""


@dataclass
class PacketSpec:
    src: str
    dst: str
    proto: str = "tcp"
    sport: int | None = None
    dport: int = 0
    iif: str | None = None
    local: bool = False
    tcp_flags: str | None = None
    mark: int = 0
    icmp_type: int = 8
    icmp_code: int = 0
    length: int | None = None
    reply: bool = False
    # Header fields and socket owner some extensions read (ttl, tos/dscp/ecn, tcpmss, string/u32, owner).
    ttl: int | None = None
    tos: int | None = None
    mss: int | None = None
    payload: str | None = None
    uid: int | None = None
    gid: int | None = None
    exthdrs: tuple[str, ...] = ()

    def packet(self, sport: int) -> Packet:
        proto = parse_proto(self.proto)
        kw: dict[str, object] = {"mark": self.mark}
        if proto == TCP:
            kw["tcp_flags"] = parse_tcp_flags(self.tcp_flags) if self.tcp_flags is not None else SYN
        if proto in (1, 58):
            kw.update(icmp_type=self.icmp_type, icmp_code=self.icmp_code, icmp_id=sport)
            sport_value, dport = 0, 0
        else:
            sport_value, dport = sport, self.dport
        for name, value in (("ttl", self.ttl), ("tos", self.tos), ("tcp_mss", self.mss), ("uid", self.uid),
                            ("gid", self.gid)):
            if value is not None:
                kw[name] = value
        if self.payload is not None:
            kw["payload"] = self.payload.encode("utf-8", "surrogateescape")
        chain = ip6ext.parse_chain(self.exthdrs)
        if chain:
            kw["exthdrs"] = chain
        if self.length is not None:
            kw["length"] = self.length
        else:
            kw["length"] = {6: 60, 17: 29, 1: 84}.get(proto, 60) + sum(h.length() for h in chain)
        src = self.src or ("::" if ":" in self.dst else "0.0.0.0")
        return Packet.make(src, self.dst, proto, sport_value, dport, **kw)


def number(text: str) -> int:
    """A number in C's notation (``64``, ``0x40``): argparse names the type in its error, "invalid number value"."""
    return int(text, 0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="packet", add_help=False, exit_on_error=False)
    p.add_argument("--iif")
    p.add_argument("--local", action="store_true")
    p.add_argument("--src", "-s")
    p.add_argument("--dst", "-d")
    p.add_argument("-p", "--proto", default="tcp")
    p.add_argument("--sport", type=int)
    p.add_argument("--dport", type=int, default=0)
    p.add_argument("--tcp-flags")
    p.add_argument("--mark", type=number, default=0)
    p.add_argument("--icmp-type", type=int, default=8)
    p.add_argument("--icmp-code", type=int, default=0)
    p.add_argument("--length", type=int)
    for opt in ("--ttl", "--tos", "--mss", "--uid", "--gid"):
        p.add_argument(opt, type=number)
    p.add_argument("--payload")
    p.add_argument("--exthdr", action="append", default=[])
    return p


def check_spec(spec: PacketSpec, where: str) -> PacketSpec:
    """Validate a spec the way the CLI reports errors: one line naming the argument."""
    if spec.reply:
        return spec
    if not spec.local and not spec.iif:
        raise SpecError(f"{where}: give --iif DEV (arriving packet) or --local (locally generated)")
    if spec.local and spec.iif:
        raise SpecError(f"{where}: --iif and --local exclude each other")
    if not spec.dst:
        raise SpecError(f"{where}: --dst is required")
    families = set()
    for opt, value in (("--src", spec.src), ("--dst", spec.dst)):
        if value:
            try:
                families.add(parse_addr(value)[0])
            except ValueError:
                raise SpecError(f"{where}: {opt}: invalid address \"{value}\"") from None
    if len(families) > 1:
        raise SpecError(f"{where}: --src {spec.src} and --dst {spec.dst} are of different address families")
    try:
        proto = parse_proto(spec.proto)
    except ValueError as exc:
        raise SpecError(f"{where}: -p: {exc}") from None
    family = families.pop() if families else 4
    if (proto, family) in ((1, 6), (58, 4)):
        raise SpecError(f"{where}: -p {spec.proto}: not a protocol of IPv{family} (--dst {spec.dst})")
    for opt, port in (("--sport", spec.sport), ("--dport", spec.dport)):
        if port is not None and not 0 <= port <= 65535:
            raise SpecError(f"{where}: {opt}: port {port} out of range")
    for opt, number, top in (("--ttl", spec.ttl, 255), ("--tos", spec.tos, 255), ("--mss", spec.mss, 65535),
                             ("--uid", spec.uid, 2**32 - 1), ("--gid", spec.gid, 2**32 - 1)):
        if number is not None and not 0 <= number <= top:
            raise SpecError(f"{where}: {opt}: {number} out of range (0-{top})")
    if spec.tcp_flags is not None:
        try:
            parse_tcp_flags(spec.tcp_flags)
        except ValueError as exc:
            raise SpecError(f"{where}: --tcp-flags: {exc}") from None
    if spec.exthdrs:
        if family != 6:
            raise SpecError(f"{where}: --exthdr: extension headers need an IPv6 packet (--dst {spec.dst})")
        try:
            ip6ext.parse_chain(spec.exthdrs)
        except ip6ext.ExtHdrError as exc:
            raise SpecError(f"{where}: --exthdr {exc}") from None
    return spec


def parse_spec_args(argv: list[str], where: str = "arguments") -> PacketSpec:
    if argv == ["reply"]:
        return PacketSpec(src="", dst="", reply=True)
    try:
        ns, rest = _parser().parse_known_args(argv)
    except (argparse.ArgumentError, ValueError) as exc:
        raise SpecError(f"{where}: {exc}") from None
    if rest:
        raise SpecError(f"{where}: unknown argument \"{rest[0]}\"")
    spec = PacketSpec(src=ns.src or "", dst=ns.dst or "", proto=ns.proto, sport=ns.sport, dport=ns.dport,
                      iif=ns.iif, local=ns.local, tcp_flags=ns.tcp_flags, mark=ns.mark,
                      icmp_type=ns.icmp_type, icmp_code=ns.icmp_code, length=ns.length, ttl=ns.ttl, tos=ns.tos,
                      mss=ns.mss, payload=ns.payload, uid=ns.uid, gid=ns.gid, exthdrs=tuple(ns.exthdr))
    return check_spec(spec, where)


def parse_packet_file(text: str, source: str) -> list[PacketSpec]:
    specs: list[PacketSpec] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.split("#", 1)[0].strip()
        if not stripped:
            continue
        try:
            argv = shlex.split(stripped)
        except ValueError as exc:
            raise SpecError(f"{source}:{lineno}: {exc}") from None
        spec = parse_spec_args(argv, f"{source}:{lineno}")
        if spec.reply and not specs:
            raise SpecError(f"{source}:{lineno}: \"reply\" needs a packet before it")
        specs.append(spec)
    return specs


def reply_packet(prev: Packet) -> Packet:
    """The answer to ``prev`` as its final receiver sends it: addresses and ports swapped."""
    flags = prev.tcp_flags
    if prev.proto == TCP:
        flags = (SYN | ACK) if flags == SYN else ACK
    icmp_type = 0 if prev.proto == 1 and prev.icmp_type == 8 else prev.icmp_type
    return Packet(src=prev.dst, dst=prev.src, proto=prev.proto, sport=prev.dport, dport=prev.sport,
                  family=prev.family, tcp_flags=flags, length=prev.length, icmp_type=icmp_type,
                  icmp_code=prev.icmp_code, icmp_id=prev.icmp_id)
