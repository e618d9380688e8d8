"""The string match: a pattern searched for in the packet between two offsets (xt_string).

The packet's ``payload`` is what follows the transport header; offsets count from the IP header as
the kernel's do, so the headers in front are taken as their usual sizes. A packet whose payload is
not known cannot be searched: the trace says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.ext.unknown import cannot_know
from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import (
    CUSTOM,
    NONE,
    STRING,
    UINT16,
    XTOPT_INVERT,
    XTOPT_MAND,
    XtCall,
    XtOpt,
    XtOptions,
)
from kproxy.packet import ICMP, TCP, UDP, Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

MAX_PATTERN = 128
ALGOS = ("bm", "kmp")


def parse_string(call: XtCall) -> bytes:
    raw = call.arg.encode(errors="surrogateescape")
    if len(raw) > MAX_PATTERN:
        raise ExtensionError(f"STRING too long \"{call.arg}\"")
    return raw


def parse_hex_string(call: XtCall) -> bytes:
    """``"GET |0d 0a|"``: literal text, ``|hex bytes|`` blocks and ``\\`` escapes (parse_hex_string)."""
    s = call.arg.encode(errors="surrogateescape")
    if not s:
        raise ExtensionError("STRING must contain at least one char")
    out = bytearray()
    i, n, hex_f, literal = 0, len(s), False, False
    while i < n:
        if len(out) >= MAX_PATTERN:
            raise ExtensionError(f"STRING too long \"{call.arg}\"")
        c = s[i:i + 1]
        if c == b"\\" and not hex_f:
            literal = True
        elif c == b"\\":
            raise ExtensionError("Cannot include literals in hex data")
        elif c == b"|":
            if hex_f:
                hex_f = False
            else:
                hex_f = True
                while s[i + 1:i + 2] == b" ":
                    i += 1
            if i + 1 >= n:
                break
            i += 1
        if literal:
            if i + 1 >= n:
                raise ExtensionError("Bad literal placement at end of string")
            out += s[i + 1:i + 2]
            i += 2
            literal = False
        elif hex_f:
            if i + 1 >= n:
                raise ExtensionError("Odd number of hex digits")
            if i + 2 >= n:
                raise ExtensionError("Invalid hex block")
            for ch in (s[i:i + 1], s[i + 1:i + 2]):
                if ch not in b"0123456789abcdefABCDEF" or not ch:
                    raise ExtensionError(f"Invalid hex char '{ch.decode(errors='surrogateescape')}'")
            out.append(int(s[i:i + 2], 16))
            i += 3 if s[i + 2:i + 3] == b" " else 2
        else:
            out += s[i:i + 1]
            i += 1
    return bytes(out)


def is_hex(pattern: bytes) -> bool:
    return not pattern or any(b < 0x20 or b > 0x7E for b in pattern) or pattern.endswith(b"\\")


def pattern_text(pattern: bytes) -> str:
    if is_hex(pattern):
        return '"|' + pattern.hex() + '|"'
    text = pattern.decode("latin-1")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@register_match
class StringMatch(Match):
    SHAREABLE = True
    name = "string"
    REVISION = 1
    OPTIONS = XtOptions(
        "string", XtOpt("from", UINT16), XtOpt("to", UINT16), XtOpt("algo", STRING, XTOPT_MAND, size=16),
        XtOpt("string", CUSTOM, XTOPT_INVERT, excl=("hex-string",), parse=parse_string),
        XtOpt("hex-string", CUSTOM, XTOPT_INVERT, excl=("string",), parse=parse_hex_string),
        XtOpt("icase", NONE))

    def __init__(self, pattern: bytes, algo: str, start: int, stop: int, icase: bool, invert: bool) -> None:
        self.pattern, self.algo, self.start, self.stop = pattern, algo, start, stop
        self.icase, self.invert = icase, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> StringMatch:
        got = cls.OPTIONS.parse(opts)
        if "string" not in got and "hex-string" not in got:
            raise ExtensionError("STRING match: You must specify `--string' or `--hex-string'")
        cls.OPTIONS.fcheck(got)
        key = "string" if "string" in got else "hex-string"
        return cls(got.get(key), got.get("algo"), got.get("from", 0), got.get("to", 0xFFFF), "icase" in got,
                   got.invert(key))

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        # string_mt_check: from after to, an empty pattern, or a search algorithm the kernel lacks.
        if self.algo not in ALGOS:
            self.ERRNO = "No such file or directory"
            return True
        return self.start > self.stop or not self.pattern

    def _tail(self, words: tuple[str, str, str, str]) -> str:
        text = f" {words[0]} {self.algo}"
        if self.start:
            text += f" {words[1]} {self.start}"
        if self.stop != 0xFFFF:
            text += f" {words[2]} {self.stop}"
        if self.icase:
            text += f" {words[3]}"
        return text

    def save(self) -> str:
        word = "--hex-string" if is_hex(self.pattern) else "--string"
        return f"-m string {'! ' if self.invert else ''}{word} {pattern_text(self.pattern)}" + \
            self._tail(("--algo", "--from", "--to", "--icase"))

    def listing(self, numeric: bool = True) -> str:
        return f"STRING match {'!' if self.invert else ''} {pattern_text(self.pattern)}" + \
            self._tail(("ALGO name", "FROM", "TO", "ICASE"))

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if pkt.payload is None:
            return cannot_know(ctx, "string", "the packet's payload")
        header = (20 if pkt.family == 4 else 40) + {TCP: 20, UDP: 8, ICMP: 8}.get(pkt.proto, 8)
        data = bytes(header) + pkt.payload
        window = data[self.start:self.stop + 1]
        pattern = self.pattern
        if self.icase:
            window, pattern = window.lower(), pattern.lower()
        return (pattern in window) != self.invert
