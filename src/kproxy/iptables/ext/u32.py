"""The u32 match: tests on 32-bit words read at offsets from the IP header, with shifts, masks and
"@" jumps (xt_u32). Read from the packet's headers (IPv4: 20 bytes, no options; the transport
header from the packet's fields) and its ``payload``; without a payload only tests that stay in the
headers can be decided."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.ext.unknown import cannot_know
from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import STRING, XTOPT_INVERT, XTOPT_MAND, XtOpt, XtOptions
from kproxy.iptables.xtutil import c_strtoul
from kproxy.packet import TCP, UDP, Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

MAXSIZE = 10
OPS = {"&": "&", "<": "<<", ">": ">>", "@": "@"}
Test = tuple[tuple[tuple[str, int], ...], tuple[tuple[int, int], ...]]     # ((op, number)...), ((lo, hi)...)


def _number(text: str, pos: int) -> tuple[int, str]:
    got = c_strtoul(text)
    if got is None or got[0] > 0xFFFFFFFF or got[1] == text:
        raise ExtensionError(f"u32: at char {pos}: not a number or out of range")
    return got


def parse_u32(spec: str) -> tuple[Test, ...]:
    """u32_parse: ``location=ranges`` tests joined by ``&&``, with the tool's messages."""
    tests: list[Test] = []
    locs: list[tuple[str, int]] = []
    vals: list[tuple[int, int]] = []
    i, n, state = 0, len(spec), 0

    def at() -> int:
        return i

    while True:
        while i < n and spec[i] in " \t\n\v\f\r":
            i += 1
        if i >= n:
            if state == 0:
                raise ExtensionError("u32: abrupt end of input after location specifier")
            if not vals:
                raise ExtensionError("u32: test ended with no value specified")
            tests.append((tuple(locs), tuple(vals)))
            if len(tests) > MAXSIZE:
                raise ExtensionError(f"u32: at char {at()}: too many \"&&\"s")
            return tuple(tests)
        c = spec[i]
        if state == 0:
            if c == "=":
                if not locs:
                    raise ExtensionError(f"u32: at char {at()}: location spec missing")
                i += 1
                state = 1
                continue
            op = ""
            if locs:
                if c in "<>":
                    i += 1
                    if spec[i:i + 1] != c:
                        raise ExtensionError(f"u32: at char {at()}: a second '{c}' was expected")
                elif c not in "&@":
                    raise ExtensionError(f"u32: at char {at()}: operator expected")
                op = OPS[c]
                i += 1
            number, rest = _number(spec[i:], i)
            i = n - len(rest)
            locs.append((op, number))
            if len(locs) > MAXSIZE:
                raise ExtensionError(f"u32: at char {at()}: too many operators")
        elif c == "&":
            i += 1
            if spec[i:i + 1] != "&":
                raise ExtensionError(f"u32: at char {at()}: a second '&' was expected")
            if not vals:
                raise ExtensionError(f"u32: at char {at()}: value spec missing")
            tests.append((tuple(locs), tuple(vals)))
            if len(tests) >= MAXSIZE + 1:
                raise ExtensionError(f"u32: at char {at()}: too many \"&&\"s")
            locs, vals, state = [], [], 0
            i += 1
        else:
            if vals:
                if c != ",":
                    raise ExtensionError(f"u32: at char {at()}: expected \",\" or \"&&\"")
                i += 1
            lo, rest = _number(spec[i:], i)
            i = n - len(rest)
            while i < n and spec[i] in " \t\n\v\f\r":
                i += 1
            hi = lo
            if spec[i:i + 1] == ":":
                i += 1
                hi, rest = _number(spec[i:], i)
                i = n - len(rest)
            vals.append((lo, hi))
            if len(vals) > MAXSIZE:
                raise ExtensionError(f"u32: at char {at()}: too many \",\"s")


def dump(tests: tuple[Test, ...]) -> str:
    out = []
    for locs, vals in tests:
        text = "".join(f"{op}0x{num:x}" for op, num in locs) + "="
        text += ",".join(f"0x{lo:x}" if lo == hi else f"0x{lo:x}:0x{hi:x}" for lo, hi in vals)
        out.append(text)
    return '"' + "&&".join(out) + '"'


def packet_bytes(pkt: Packet) -> tuple[bytes, bool]:
    """The packet as bytes from the IP header on, and whether the payload part is known."""
    if pkt.family == 4:
        ip = bytes([0x45, pkt.tos, pkt.length >> 8 & 0xFF, pkt.length & 0xFF, 0, 0, 0, 0, pkt.ttl, pkt.proto, 0, 0])
        ip += pkt.src.to_bytes(4, "big") + pkt.dst.to_bytes(4, "big")
    else:
        ip = bytes([0x60 | pkt.tos >> 4, (pkt.tos & 0xF) << 4, 0, 0]) + (max(pkt.length - 40, 0)).to_bytes(2, "big")
        ip += bytes([pkt.proto, pkt.ttl]) + pkt.src.to_bytes(16, "big") + pkt.dst.to_bytes(16, "big")
    if pkt.proto == TCP:
        l4 = pkt.sport.to_bytes(2, "big") + pkt.dport.to_bytes(2, "big") + bytes(8) + bytes([0x50, pkt.tcp_flags]) + \
            bytes(6)
    elif pkt.proto == UDP:
        l4 = pkt.sport.to_bytes(2, "big") + pkt.dport.to_bytes(2, "big") + bytes(4)
    else:
        l4 = bytes([pkt.icmp_type, pkt.icmp_code, 0, 0]) + pkt.icmp_id.to_bytes(2, "big") + bytes(2)
    return ip + l4 + (pkt.payload or b""), pkt.payload is not None


@register_match
class U32Match(Match):
    SHAREABLE = True
    name = "u32"
    OPTIONS = XtOptions("u32", XtOpt("u32", STRING, XTOPT_MAND | XTOPT_INVERT))

    def __init__(self, tests: tuple[Test, ...], invert: bool) -> None:
        self.tests, self.invert = tests, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> U32Match:
        got = cls.OPTIONS.parse(opts)
        if "u32" in got:
            return cls(parse_u32(got.get("u32")), got.invert("u32"))
        cls.OPTIONS.fcheck(got)
        raise AssertionError("unreachable")    # pragma: no cover (fcheck raises for the mandatory option)

    def save(self) -> str:
        return f"-m u32 {'! ' if self.invert else ''}--u32 {dump(self.tests)}"

    def listing(self, numeric: bool = True) -> str:
        return f"u32 {'! ' if self.invert else ''}{dump(self.tests)}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        """u32_match_it: read a word at the first number, then apply each operator; ``@`` moves the base
        by the current value and reads the word at base + number. Reading past the end fails the test."""
        data, known = packet_bytes(pkt)
        for locs, vals in self.tests:
            base = value = 0
            for op, num in locs:
                if op in ("", "@"):
                    if op == "@":
                        base += value
                    at = base + num
                    if at + 4 > len(data):
                        return cannot_know(ctx, "u32", "the packet's payload") if not known else self.invert
                    value = int.from_bytes(data[at:at + 4], "big")
                elif op == "&":
                    value &= num
                elif op == "<<":
                    value = (value << num) & 0xFFFFFFFF
                else:
                    value >>= num
            if not any(lo <= value <= hi for lo, hi in vals):
                return self.invert
        return not self.invert
