"""IPv6 extension headers as a packet carries them, and how the kernel walks them.

A packet's ``exthdrs`` is the ordered chain between the IPv6 header and the upper-layer header
(``Packet.proto`` stays the final, upper-layer protocol). Four kinds are modelled, with the fields
netfilter reads: hop-by-hop and destination options (the option list, padding included), routing
headers (type, segments left, the 32-bit word after them, the address list; type 4, the segment
routing header, uses the same layout) and fragment headers (offset, M flag, identification, the
two reserved fields). The wire form (``ExtHdr.wire``) is what the kernel tests send and what nft's
``exthdr`` expressions read bits from.

The walks follow net/ipv6/exthdrs_core.c (Linux 6.18): ``find_hdr`` is ipv6_find_hdr (nft_exthdr,
ip6t_frag/hbh/rt), which stops at a non-first fragment; ``ipv6_ext_hdr`` names the headers it
skips. A non-first fragment carries nothing after its fragment header (the rest is payload), so a
chain ends there.

Spec syntax (``kproxy trace --exthdr``, packet files, ``Packet.make(exthdrs=...)``), one header per
word, in order: ``NAME[,KEY=VALUE...]``::

    hbh[,opt=TYPE[:LEN]...]     dst[,opt=TYPE[:LEN]...]     (LEN: option data octets, default 0)
    rt[,type=N][,segs=N][,res=N][,addr=ADDR...]           (segs default: the number of addresses)
    frag[,offset=N][,mf=0|1][,id=N][,res=N][,res2=N]      (offset in 8-octet units)

Options are padded to a multiple of 8 octets with Pad1/PadN as a sender must (RFC 8200 4.2).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

HOP, ROUTING, FRAGMENT, ESP, AUTH, NONE, DEST, MH = 0, 43, 44, 50, 51, 59, 60, 135
NAMES = {"hbh": HOP, "rt": ROUTING, "frag": FRAGMENT, "dst": DEST}
KIND_NAMES = {v: k for k, v in NAMES.items()}
# ipv6_ext_hdr (include/net/ipv6.h): the headers ipv6_find_hdr and ipv6_skip_exthdr step over.
EXT_HEADERS = frozenset({HOP, ROUTING, FRAGMENT, AUTH, NONE, DEST})
PAD1, PADN = 0, 1


class ExtHdrError(ValueError):
    """A bad extension header spec; the message names the word and what is wrong."""


@dataclass(frozen=True, slots=True)
class ExtHdr:
    """One extension header. ``opts``: (type, data length) per option, Pad1 as (0, 0) taking one
    octet. ``res``: the routing header's 32 bits after segments-left (type 0/2 reserved, type 4's
    last-entry/flags/tag) or the fragment header's reserved octet."""

    kind: int
    opts: tuple[tuple[int, int], ...] = ()
    rt_type: int = 0
    segs_left: int = 0
    addrs: tuple[int, ...] = ()
    res: int = 0
    offset: int = 0
    mf: bool = False
    ident: int = 0
    res2: int = 0

    @property
    def name(self) -> str:
        return KIND_NAMES[self.kind]

    def length(self) -> int:
        """The header's length in octets (ipv6_optlen; 8 for a fragment header)."""
        if self.kind == FRAGMENT:
            return 8
        if self.kind == ROUTING:
            return 8 + 16 * len(self.addrs)
        return 2 + sum(1 if t == PAD1 else 2 + n for t, n in self.opts)

    @property
    def frag_off(self) -> int:
        """The fragment header's 16-bit offset word: offset << 3 | res2 << 1 | M."""
        return self.offset << 3 | self.res2 << 1 | int(self.mf)

    def wire(self, nexthdr: int) -> bytes:
        """The header's octets, given the next header's type."""
        if self.kind == FRAGMENT:
            return bytes([nexthdr, self.res]) + self.frag_off.to_bytes(2, "big") + self.ident.to_bytes(4, "big")
        if self.kind == ROUTING:
            head = bytes([nexthdr, 2 * len(self.addrs), self.rt_type, self.segs_left]) + self.res.to_bytes(4, "big")
            return head + b"".join(a.to_bytes(16, "big") for a in self.addrs)
        body = b"".join(b"\0" if t == PAD1 else bytes([t, n]) + bytes(n) for t, n in self.opts)
        return bytes([nexthdr, (self.length() // 8) - 1]) + body

    def text(self) -> str:
        """The spec word that builds this header (padding options left out)."""
        parts = [self.name]
        if self.kind in (HOP, DEST):
            parts += [f"opt={t}" if t == PAD1 else f"opt={t}:{n}" for t, n in self.opts[:self._own_opts()]]
        elif self.kind == ROUTING:
            parts.append(f"type={self.rt_type}")
            if self.segs_left != len(self.addrs):
                parts.append(f"segs={self.segs_left}")
            if self.res != default_res(self.rt_type, len(self.addrs)):
                parts.append(f"res={self.res}")
            parts += [f"addr={ipaddress.IPv6Address(a)}" for a in self.addrs]
        else:
            parts += [f"offset={self.offset}", f"mf={int(self.mf)}", f"id={self.ident}"]
            parts += [f"{k}={v}" for k, v in (("res", self.res), ("res2", self.res2)) if v]
        return ",".join(parts)

    def _own_opts(self) -> int:
        """How many options come before the padding ``options`` added (which re-parsing adds back)."""
        n = len(self.opts)
        if n and self.opts[-1][0] in (PAD1, PADN) and options(list(self.opts[:-1])) == self.opts:
            return n - 1
        return n


def pad(used: int) -> tuple[tuple[int, int], ...]:
    """The padding option that fills ``used`` octets up to a multiple of 8: Pad1 or PadN."""
    gap = -used % 8
    if gap == 0:
        return ()
    return ((PAD1, 0),) if gap == 1 else ((PADN, gap - 2),)


def options(opts: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """An option list padded to a whole header."""
    used = 2 + sum(1 if t == PAD1 else 2 + n for t, n in opts)
    return tuple(opts) + pad(used)


def default_res(rt_type: int, naddrs: int) -> int:
    """A segment routing header's last-entry (the index of its last segment); zero for the others."""
    return ((naddrs - 1) & 0xFF) << 24 if rt_type == 4 and naddrs else 0


def _num(word: str, key: str, value: str, top: int) -> int:
    try:
        n = int(value, 0)
    except ValueError:
        raise ExtHdrError(f"{word}: {key}: \"{value}\" is not a number") from None
    if not 0 <= n <= top:
        raise ExtHdrError(f"{word}: {key}: {n} out of range (0-{top})")
    return n


def parse(word: str) -> ExtHdr:
    """One spec word (``hbh,opt=5:2``, ``rt,type=0,addr=2001:db8::1``, ``frag,offset=0,mf=1,id=7``)."""
    name, *items = word.split(",")
    if name not in NAMES:
        raise ExtHdrError(f"{word}: unknown extension header \"{name}\" (hbh, dst, rt or frag)")
    kind = NAMES[name]
    allowed = {HOP: ("opt",), DEST: ("opt",), ROUTING: ("type", "segs", "res", "addr"),
               FRAGMENT: ("offset", "mf", "id", "res", "res2")}[kind]
    got: dict[str, list[str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or key not in allowed:
            raise ExtHdrError(f"{word}: \"{item}\": {name} takes " + ", ".join(f"{k}=" for k in allowed))
        if key not in ("opt", "addr") and key in got:
            raise ExtHdrError(f"{word}: {key}= given twice")
        got.setdefault(key, []).append(value)
    one = {k: v[0] for k, v in got.items()}
    if kind in (HOP, DEST):
        opts: list[tuple[int, int]] = []
        for text in got.get("opt", []):
            t, colon, n = text.partition(":")
            otype = _num(word, "opt", t, 255)
            olen = _num(word, "opt length", n, 255) if colon else 0
            if otype == PAD1 and colon:
                raise ExtHdrError(f"{word}: opt=0 is Pad1, which has no length")
            opts.append((otype, olen))
        padded = options(opts)
        if 2 + sum(1 if t == PAD1 else 2 + n for t, n in padded) > 2048:
            raise ExtHdrError(f"{word}: the options do not fit in one header (2048 octets)")
        return ExtHdr(kind, opts=padded)
    if kind == ROUTING:
        addrs: list[int] = []
        for text in got.get("addr", []):
            try:
                addrs.append(int(ipaddress.IPv6Address(text)))
            except ValueError:
                raise ExtHdrError(f"{word}: addr: invalid IPv6 address \"{text}\"") from None
        if len(addrs) > 127:
            raise ExtHdrError(f"{word}: at most 127 addresses fit in a routing header")
        rt_type = _num(word, "type", one["type"], 255) if "type" in one else 0
        segs = _num(word, "segs", one["segs"], 255) if "segs" in one else len(addrs)
        res = _num(word, "res", one["res"], 0xFFFFFFFF) if "res" in one else default_res(rt_type, len(addrs))
        return ExtHdr(kind, rt_type=rt_type, segs_left=segs, addrs=tuple(addrs), res=res)
    return ExtHdr(kind, offset=_num(word, "offset", one.get("offset", "0"), 8191),
                  mf=bool(_num(word, "mf", one.get("mf", "0"), 1)), ident=_num(word, "id", one.get("id", "0"), 0xFFFFFFFF),
                  res=_num(word, "res", one.get("res", "0"), 255), res2=_num(word, "res2", one.get("res2", "0"), 3))


def parse_chain(words: list[str] | tuple[str | ExtHdr, ...] | list[str | ExtHdr]) -> tuple[ExtHdr, ...]:
    """A chain from spec words (or headers already built), checked like ``check_chain``."""
    chain = tuple(w if isinstance(w, ExtHdr) else parse(w) for w in words)
    check_chain(chain)
    return chain


def check_chain(chain: tuple[ExtHdr, ...]) -> None:
    """A non-first fragment ends the chain: what follows its fragment header is payload."""
    for i, h in enumerate(chain[:-1]):
        if h.kind == FRAGMENT and h.offset:
            raise ExtHdrError(f"{chain[i + 1].name}: no header can follow a non-first fragment (offset "
                              f"{h.offset}): what follows its fragment header is payload")


def next_types(chain: tuple[ExtHdr, ...], proto: int) -> list[int]:
    """Each header's next-header value: the following header's type, the last one's the protocol."""
    return [h.kind for h in chain[1:]] + [proto] if chain else []


def first_nexthdr(chain: tuple[ExtHdr, ...], proto: int) -> int:
    """The IPv6 header's own next-header field (``ip6 nexthdr``)."""
    return chain[0].kind if chain else proto


def find_hdr(chain: tuple[ExtHdr, ...], target: int) -> ExtHdr | None:
    """ipv6_find_hdr for an extension header ``target``: the first one on the walk, None (-ENOENT)
    when the walk reaches the upper layer or a non-first fragment first."""
    for h in chain:
        if h.kind == target:
            return h
        if h.kind == FRAGMENT and h.offset:
            return None
    return None


def reaches_upper_layer(chain: tuple[ExtHdr, ...]) -> bool:
    """Whether ipv6_find_hdr for an upper-layer protocol (a Mobility header) gets past the chain:
    not past a non-first fragment."""
    return not any(h.kind == FRAGMENT and h.offset for h in chain)


def wire(chain: tuple[ExtHdr, ...], proto: int) -> bytes:
    """The chain's octets, as sent after the IPv6 header."""
    return b"".join(h.wire(n) for h, n in zip(chain, next_types(chain, proto), strict=True))


def fragment(chain: tuple[ExtHdr, ...]) -> ExtHdr | None:
    """The chain's fragment header as nf_ct_frag6_gather finds it (find_prev_fhdr), if any."""
    return next((h for h in chain if h.kind == FRAGMENT), None)


def describe(chain: tuple[ExtHdr, ...]) -> str:
    """`` [hbh,opt=5:2 frag,offset=0,mf=1,id=7]`` for a packet's one-line description."""
    return " [" + " ".join(h.text() for h in chain) + "]" if chain else ""
