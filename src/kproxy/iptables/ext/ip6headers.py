"""IPv6 extension header matches (ip6tables only): frag, hbh and dst (option headers), rt, mh,
ipv6header and eui64.

They read the packet's extension header chain (``Packet.exthdrs``, kproxy.ip6ext) the way
net/ipv6/netfilter/ip6t_*.c do in Linux 6.18: frag, hbh, dst and rt find their header with
ipv6_find_hdr (which stops at a non-first fragment) and fail when it is absent, inverted or not;
``--hbh-len``/``--dst-len``/``--rt-len`` compare the header's length in octets; ``--hbh-opts`` walks
the options in order, padding included; ipv6header walks the whole chain into a mask of the headers
present (``--soft``: these at least, else exactly these). mh matches a Mobility packet, whose header
is the upper layer (``-p mh``) after any extension headers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from kproxy.ip6ext import AUTH, DEST, ESP, FRAGMENT, HOP, PAD1, ROUTING, ExtHdr, find_hdr
from kproxy.ip6ext import NONE as NO_NEXT_HEADER
from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import (
    NONE,
    STRING,
    UINT32,
    UINT32RC,
    XTOPT_INVERT,
    XTOPT_MAND,
    XtOpt,
    XtOptions,
)
from kproxy.iptables.xtutil import c_strtoui, c_strtoul, numeric_to_ip6addr
from kproxy.nftables.types import protocols
from kproxy.packet import Packet, format_addr

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

U32 = 0xFFFFFFFF
MH = 135


def range_text(word: str, lo: int, hi: int, inv: bool, full: int = U32) -> str | None:
    """``id:5``, ``ids:1:9`` (None for the whole range, not inverted)."""
    if lo == 0 and hi == full and not inv:
        return None
    bang = "!" if inv else ""
    return f"{word}:{bang}{lo}" if lo == hi else f"{word}s:{bang}{lo}:{hi}"


def range_save(opt: str, lo: int, hi: int, inv: bool) -> str:
    if lo == 0 and hi == U32 and not inv:
        return ""
    return f" {'! ' if inv else ''}--{opt} " + (str(lo) if lo == hi else f"{lo}:{hi}")


class HeaderMatch(Match):
    """A match on one extension header: it fails when ipv6_find_hdr does not find the header."""

    SHAREABLE = True
    FAMILIES: ClassVar[tuple[int, ...]] = (6,)
    KIND: ClassVar[int] = FRAGMENT

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        h = find_hdr(pkt.exthdrs, self.KIND) if pkt.exthdrs else None
        return h is not None and self.header_matches(h)

    def header_matches(self, h: ExtHdr) -> bool:
        raise NotImplementedError


@register_match
class FragMatch(HeaderMatch):
    name = "frag"
    OPTIONS = XtOptions("frag", XtOpt("fragid", UINT32RC, XTOPT_INVERT), XtOpt("fraglen", UINT32, XTOPT_INVERT),
                        XtOpt("fragres", NONE), XtOpt("fragfirst", NONE),
                        XtOpt("fragmore", NONE, excl=("fraglast",)), XtOpt("fraglast", NONE, excl=("fragmore",)))

    def __init__(self, got: Any) -> None:
        self.ids = got.get("fragid", (0, U32))
        self.ids_inv = got.invert("fragid")
        self.len = got.get("fraglen")
        self.len_inv = got.invert("fraglen")
        self.flags = [f for f in ("fragres", "fragfirst", "fragmore", "fraglast") if f in got]

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> FragMatch:
        return cls(cls.OPTIONS.parse_all(opts))

    def save(self) -> str:
        text = "-m frag" + range_save("fragid", self.ids[0], self.ids[1], self.ids_inv)
        if self.len is not None:
            text += f" {'! ' if self.len_inv else ''}--fraglen {self.len}"
        return text + "".join(f" --{f}" for f in self.flags)

    def listing(self, numeric: bool = True) -> str:
        text = "frag " + (range_text("id", self.ids[0], self.ids[1], self.ids_inv) or "")
        if self.len is not None:
            text += f" length:{'!' if self.len_inv else ''}{self.len}"
        words = {"fragres": "reserved", "fragfirst": "first", "fragmore": "more", "fraglast": "last"}
        return text + "".join(f" {words[f]}" for f in self.flags)

    def header_matches(self, h: ExtHdr) -> bool:
        """frag_mt6: the id range, then each flag (--fraglen is parsed but not compared)."""
        if (self.ids[0] <= h.ident <= self.ids[1]) == self.ids_inv:
            return False
        flags = self.flags
        return not (("fragres" in flags and (h.res or h.res2)) or ("fragfirst" in flags and h.offset)
                    or ("fragmore" in flags and not h.mf) or ("fraglast" in flags and h.mf))


def parse_opts_num(text: str, what: str, ext: str) -> int:
    got = c_strtoul(text)
    if got is None:
        raise ExtensionError(f"{ext}: no valid digits in {what} `{text}'")
    if got[1]:
        raise ExtensionError(f"{ext}: error parsing {what} `{text}'")
    return got[0]


def parse_header_options(text: str, ext: str) -> list[int]:
    """``type[:length],...`` (at most 16) as 16-bit words: type << 8 | length (0xFF: any length)."""
    out: list[int] = []
    parts = text.split(",")
    for i, part in enumerate(parts):
        if i == 16:
            raise ExtensionError("too many addresses specified")
        kind, colon, length = part.partition(":")
        if colon and i == 15:
            raise ExtensionError("too many ports specified")
        word = (parse_opts_num(kind, "opt", ext) & 0xFF) << 8
        if colon:
            if word == 0:
                raise ExtensionError("PAD0 has not got length")
            word |= parse_opts_num(length, "length", ext) & 0xFF
        else:
            word |= 0xFF
        out.append(word)
    return out


def options_text(opts: list[int]) -> str:
    return ",".join(f"{w >> 8}" + (f":{w & 0xFF}" if w & 0xFF != 0xFF else "") for w in opts)


@register_match
class HbhMatch(HeaderMatch):
    name = "hbh"
    KIND = HOP
    OPTIONS = XtOptions("hbh", XtOpt("hbh-len", UINT32, XTOPT_INVERT), XtOpt("hbh-opts", STRING))

    def __init__(self, length: int | None, inv: bool, opts: list[int] | None) -> None:
        self.length, self.inv, self.opts = length, inv, opts

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> HbhMatch:
        got = cls.OPTIONS.parse_all(opts)
        word = cls.name
        hopts = parse_header_options(got.get(f"{word}-opts"), word) if f"{word}-opts" in got else None
        return cls(got.get(f"{word}-len"), got.invert(f"{word}-len"), hopts)

    def save(self) -> str:
        text = f"-m {self.name}"
        if self.length is not None:
            text += f" {'! ' if self.inv else ''}--{self.name}-len {self.length}"
        if self.opts is not None:
            text += f" --{self.name}-opts " + options_text(self.opts)
        return text

    def listing(self, numeric: bool = True) -> str:
        text = self.name
        if self.length is not None:
            text += f" length:{'!' if self.inv else ''}{self.length}"
        if self.opts is not None:
            text += " opts " + options_text(self.opts)
        return text

    def header_matches(self, h: ExtHdr) -> bool:
        """hbh_mt6 (strict mode, the only one the tool sets): the length, then the first options in
        order, each type equal and each length equal unless the rule gave none."""
        hdrlen = h.length()
        if self.length is not None and (self.length == hdrlen) == self.inv:
            return False
        if self.opts is None:
            return True
        left = hdrlen - 2
        have = iter(h.opts)
        for i, want in enumerate(self.opts):
            if left < 1:
                return False
            otype, olen = next(have, (PAD1, 0))       # past the last option: the header's padding octets
            if otype != want >> 8:
                return False
            if otype != PAD1:
                if left < 2:
                    return False
                if want & 0xFF != 0xFF and want & 0xFF != olen:
                    return False
                size = olen + 2
            else:
                size = 1
            if left < size and i < len(self.opts) - 1:
                return False
            left -= size
        return True


@register_match
class DstMatch(HbhMatch):
    name = "dst"
    KIND = DEST
    OPTIONS = XtOptions("dst", XtOpt("dst-len", UINT32, XTOPT_INVERT), XtOpt("dst-opts", STRING))


@register_match
class RtMatch(HeaderMatch):
    name = "rt"
    KIND = ROUTING
    OPTIONS = XtOptions("rt", XtOpt("rt-type", UINT32, XTOPT_INVERT), XtOpt("rt-segsleft", UINT32RC, XTOPT_INVERT),
                        XtOpt("rt-len", UINT32, XTOPT_INVERT), XtOpt("rt-0-res", NONE), XtOpt("rt-0-addrs", STRING),
                        XtOpt("rt-0-not-strict", NONE))

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.inv: dict[str, bool] = {}

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> RtMatch:
        m = cls()
        for i, o in enumerate(opts):       # option by option: the type-0 options need --rt-type 0 before them
            got = cls.OPTIONS.parse(opts[:i + 1], family)
            key = o.name
            if key in ("rt-0-res", "rt-0-addrs") and (m.values.get("rt-type") != 0 or m.inv.get("rt-type")):
                raise ExtensionError(f"`--rt-type 0' required before `--{key}'")
            if key == "rt-0-not-strict" and "rt-0-addrs" not in m.values:
                raise ExtensionError("`--rt-0-addr ...' required before `--rt-0-not-strict'")
            value = got.get(key)
            if key == "rt-0-addrs":
                value = [numeric_to_ip6addr(a) for a in value.split(",")[:16]]
                if None in value:
                    raise ExtensionError("bad address")
            m.values[key], m.inv[key] = value, o.invert
        return m

    def save(self) -> str:
        v, inv = self.values, self.inv
        text = "-m rt"
        if "rt-type" in v:
            text += f" {'! ' if inv['rt-type'] else ''}--rt-type {v['rt-type']}"
        lo, hi = v.get("rt-segsleft", (0, U32))
        text += range_save("rt-segsleft", lo, hi, inv.get("rt-segsleft", False))
        if "rt-len" in v:
            text += f" {'! ' if inv['rt-len'] else ''}--rt-len {v['rt-len']}"
        text += " --rt-0-res" if "rt-0-res" in v else ""
        if "rt-0-addrs" in v:
            text += " --rt-0-addrs " + ",".join(format_addr(a, 6) for a in v["rt-0-addrs"])
        return text + (" --rt-0-not-strict" if "rt-0-not-strict" in v else "")

    def listing(self, numeric: bool = True) -> str:
        v, inv = self.values, self.inv
        text = "rt"
        if "rt-type" in v:
            text += f" type:{'!' if inv['rt-type'] else ''}{v['rt-type']}"
        lo, hi = v.get("rt-segsleft", (0, U32))
        segs = range_text("segsleft", lo, hi, inv.get("rt-segsleft", False))
        text += f" {segs}" if segs else ""
        if "rt-len" in v:
            text += f" length:{'!' if inv['rt-len'] else ''}{v['rt-len']}"
        text += " reserved" if "rt-0-res" in v else ""
        if "rt-0-addrs" in v:
            text += " 0-addrs " + ",".join(format_addr(a, 6) for a in v["rt-0-addrs"])
        return text + (" 0-not-strict" if "rt-0-not-strict" in v else "")

    def header_matches(self, h: ExtHdr) -> bool:
        """rt_mt6: segments left, length (octets), type, then reserved and the address list."""
        v, inv = self.values, self.inv
        lo, hi = v.get("rt-segsleft", (0, U32))
        if (lo <= h.segs_left <= hi) == inv.get("rt-segsleft", False):
            return False
        if "rt-len" in v and (v["rt-len"] == h.length()) == inv["rt-len"]:
            return False
        if "rt-type" in v and (v["rt-type"] == h.rt_type) == inv["rt-type"]:
            return False
        if "rt-0-res" in v and h.res:
            return False
        if "rt-0-addrs" not in v:
            return True
        want: list[int] = v["rt-0-addrs"]
        if len(want) > len(h.addrs):
            return False
        if "rt-0-not-strict" in v:
            i = 0
            for a in h.addrs:
                if a == want[i]:
                    i += 1
                if i == len(want):
                    break
            return i == len(want)
        return list(h.addrs) == want


MH_NAMES = ("binding-refresh-request", "home-test-init", "careof-test-init", "home-test", "careof-test",
            "binding-update", "binding-acknowledgement", "binding-error")


def mh_type(text: str) -> int:
    """name_to_type: a unique (or exact) prefix of a type name, else a number up to 255."""
    found = None
    for i, name in enumerate(MH_NAMES):
        if name[:len(text)].lower() == text.lower() and len(text) <= len(name) and \
                (found is None or len(name) == len(text)):
            found = i
    if found is not None:
        return found
    got = c_strtoui(text, 0, 0xFF)
    if got is None:
        raise ExtensionError(f"Invalid MH type `{text}'")
    return got


@register_match
class MhMatch(Match):
    SHAREABLE = True
    name = "mh"
    FAMILIES = (6,)
    OPTIONS = XtOptions("mh", XtOpt("mh-type", STRING, XTOPT_INVERT))

    def __init__(self, lo: int, hi: int, inv: bool) -> None:
        self.lo, self.hi, self.inv = lo, hi, inv
        self.kernel_proto = MH

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> MhMatch:
        got = cls.OPTIONS.parse_all(opts)
        lo, hi = 0, 0xFF
        if "mh-type" in got:
            text = got.get("mh-type")
            first, colon, second = text.partition(":")
            if not colon:
                lo = hi = mh_type(first)
            else:
                lo = mh_type(first) if first else 0
                hi = mh_type(second) if second else 0xFF
                if lo > hi:
                    raise ExtensionError("Invalid MH type range (min > max)")
        return cls(lo, hi, got.invert("mh-type"))

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return rule.proto != MH or rule.proto_inv

    def _name(self, t: int, numeric: bool) -> str:
        return str(t) if numeric or t >= len(MH_NAMES) else MH_NAMES[t]

    def save(self) -> str:
        if self.lo == 0 and self.hi == 0xFF and not self.inv:
            return "-m mh"
        value = str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi}"
        return f"-m mh {'! ' if self.inv else ''}--mh-type {value}"

    def listing(self, numeric: bool = True) -> str:
        if self.lo == 0 and self.hi == 0xFF and not self.inv:
            return "mh"
        value = self._name(self.lo, numeric)
        if self.lo != self.hi:
            value += ":" + self._name(self.hi, numeric)
        return f"mh {'!' if self.inv else ''}{value}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        kind = pkt.meta.get("mh_type", pkt.icmp_type)
        return pkt.proto == MH and (self.lo <= kind <= self.hi) != self.inv


# ipv6header: the header kinds, their mask bits (print order) and the names the tool takes and prints.
CHAIN_FLAGS = ((0, 128), (60, 64), (43, 32), (44, 16), (51, 8), (50, 4), (59, 2), (255, 1))
CHAIN_PROTOS = (("hop-by-hop", 0), ("protocol", 255), ("hop", 0), ("dst", 60), ("route", 43), ("frag", 44),
                ("auth", 51), ("esp", 50), ("none", 59), ("prot", 255), ("0", 0), ("60", 60), ("43", 43),
                ("44", 44), ("51", 51), ("50", 50), ("59", 59), ("255", 255))


def header_proto(word: str) -> int:
    by_name = protocols()[0]
    if word in by_name:
        return by_name[word]
    for name, num in CHAIN_PROTOS:
        if name == word:
            return num
    raise ExtensionError(f"unknown header `{word}' specified")


def header_name(proto: int) -> str:
    if proto and proto in protocols()[1]:
        return protocols()[1][proto]
    return next(name for name, num in CHAIN_PROTOS if num == proto)


@register_match
class Ipv6headerMatch(Match):
    SHAREABLE = True
    name = "ipv6header"
    FAMILIES = (6,)
    OPTIONS = XtOptions("ipv6header", XtOpt("header", STRING, XTOPT_MAND | XTOPT_INVERT), XtOpt("soft", NONE))

    def __init__(self, flags: int, inv: bool, soft: bool) -> None:
        self.flags, self.inv, self.soft = flags, inv, soft

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> Ipv6headerMatch:
        got = cls.OPTIONS.parse(opts)
        flags = 0
        if "header" in got:
            for word in [w for w in got.get("header").split(",") if w]:
                proto = header_proto(word)
                bit = next((b for p, b in CHAIN_FLAGS if p == proto), None)
                if bit is None:
                    raise ExtensionError(f"unknown header `{proto}' specified")
                flags |= bit
            if not flags:
                raise ExtensionError("ip6t_ipv6header: cannot parse header names")
        cls.OPTIONS.fcheck(got)
        return cls(flags, got.invert("header"), "soft" in got)

    def _names(self) -> str:
        return ",".join(header_name(p) for p, b in CHAIN_FLAGS if self.flags & b) or "NONE"

    def save(self) -> str:
        return f"-m ipv6header {'! ' if self.inv else ''}--header {self._names()}" + (" --soft" if self.soft else "")

    def listing(self, numeric: bool = True) -> str:
        flags = f"0x{self.flags:02X}" if numeric else self._names()
        return f"ipv6header flags:{'!' if self.inv else ''}{flags}" + (" soft" if self.soft else "")

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        """ipv6header_mt6: a bit per header on the chain, then "protocol" unless the chain ends in ESP
        or "no next header" (a final AH, whose own next header is not modelled, sets the AH bit only).
        --soft: the listed headers are all present (all absent when inverted); else exactly these."""
        have = 0
        for h in pkt.exthdrs:
            have |= next(b for p, b in CHAIN_FLAGS if p == h.kind)
        final = pkt.proto
        have |= next((b for p, b in CHAIN_FLAGS if p == final and p in (ESP, AUTH, NO_NEXT_HEADER)), 1)
        if self.soft:
            invflags = 0xFF if self.inv else 0
            return not ((have ^ self.flags ^ invflags) & self.flags)
        return (have != self.flags) if self.inv else (have == self.flags)


@register_match
class Eui64Match(Match):
    SHAREABLE = True
    name = "eui64"
    FAMILIES = (6,)
    HOOKS = ("PREROUTING", "INPUT", "FORWARD")

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> Eui64Match:
        return cls()

    def save(self) -> str:
        return "-m eui64"

    def listing(self, numeric: bool = True) -> str:
        return ""          # (libip6t_eui64 has no print function)

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        """eui64_mt: the source's interface identifier is the EUI-64 of the source MAC."""
        if not pkt.src_mac:
            return False
        mac = bytes.fromhex(pkt.src_mac.replace(":", ""))
        eui = bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
        return (pkt.src & ((1 << 64) - 1)).to_bytes(8, "big") == eui
