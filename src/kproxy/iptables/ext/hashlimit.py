"""The hashlimit match (revision 3): a token bucket per source/destination address and port group,
kept in a named table shared by every rule that names it.

Rates are stored as libxt_hashlimit does: packets as the interval in 1/1,000,000 s, bytes as a
"cost" (``UINT32_MAX / (bytes >> 4 + 1)``), so every printed form (``512kb/s``, ``100/sec``,
``--hashlimit-htable-expire``) comes from the stored value, never from the input text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kproxy.iptables.ext.connlimit import parse_plen
from kproxy.iptables.ext.limit import c_atoi, pick_unit, unit_seconds
from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import (
    BAD_VALUE,
    CUSTOM,
    NONE,
    STRING,
    UINT32,
    XTOPT_INVERT,
    XTOPT_MAND,
    XtCall,
    XtOpt,
    XtOptions,
)
from kproxy.iptables.xtutil import c_strtoul
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

SCALE = 1_000_000                  # XT_HASHLIMIT_SCALE_v2
U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF
BURST_MAX = 1_000_000
BYTE_EXPIRE, BYTE_EXPIRE_BURST = 15, 60
GCINTERVAL = 1000
RATES = [("day", SCALE * 86400), ("hour", SCALE * 3600), ("min", SCALE * 60), ("sec", SCALE)]
UNITS = (("m", 1024 * 1024), ("k", 1024), ("", 1))
MODES = ("srcip", "srcport", "dstip", "dstport")       # print order


def cost_to_bytes(cost: int) -> int:
    r = U32 // cost if cost else U32
    return ((r - 1) << 4) & U64


def bytes_to_cost(nbytes: int) -> int:
    return U32 // (((nbytes >> 4) & U32) + 1)


def parse_bytes(text: str) -> int | None:
    """``512kb/s``: the cost, or None when the text is not a byte rate."""
    at = text.find("b/s")
    if at <= 0:
        return None
    r = c_atoi(text) & U64
    if r == 0:
        return None
    tmp = r * {"m": 1024 * 1024, "k": 1024}.get(text[at - 1], 1)
    if tmp > U64:
        raise ExtensionError(f"Rate value too large \"{tmp}\" (max {U64})")
    cost = bytes_to_cost(tmp)
    if cost == 0:
        raise ExtensionError(f"Rate too high \"{text}\"")
    return cost


def parse_packet_rate(text: str) -> tuple[int, int] | None:
    """``100/sec``: (interval in 1/SCALE s, seconds per unit), or None."""
    _, slash, unit = text.partition("/")
    mult = 1
    if slash:
        secs = unit_seconds(unit)
        if secs is None:
            return None
        mult = secs
    r = c_atoi(text) & U64
    if not r:
        return None
    avg = SCALE * mult // r
    if avg == 0:
        raise ExtensionError(f"Rate too fast \"{text}\"")
    return avg, mult


def parse_rate_option(call: XtCall) -> tuple[bool, int, int]:
    """(bytes mode, avg, mult) of --hashlimit-upto/--hashlimit-above."""
    cost = parse_bytes(call.arg)
    if cost is not None:
        return True, cost, BYTE_EXPIRE
    got = parse_packet_rate(call.arg)
    if got is None:
        name = "hashlimit-upto" if call.opt in ("hashlimit-upto", "hashlimit") else call.opt
        raise ExtensionError(BAD_VALUE.format(ext="hashlimit", opt=name, value=call.arg))
    return False, got[0], got[1]


def parse_burst(call: XtCall) -> int:
    bad = ExtensionError(f"bad value for option \"--hashlimit-burst\", or out of range (1-{BURST_MAX}).")
    got = c_strtoul(call.arg)
    if got is None or got[0] < 1 or got[0] > U64:
        raise bad
    v, rest = got
    if not rest and v > BURST_MAX:
        raise bad
    v *= {"m": 1024 * 1024, "k": 1024}.get(rest[:1], 1)
    if v > U64:
        raise ExtensionError(f"bad value for option \"--hashlimit-burst\", value \"{call.arg}\" too large "
                             f"(max {U64 // 1024 // 1024}mb).")
    return v


def parse_mode(call: XtCall) -> frozenset[str]:
    words = [w for w in call.arg.replace("|", ",").split(",") if w]
    if any(w not in MODES for w in words):
        raise ExtensionError(BAD_VALUE.format(ext="hashlimit", opt="hashlimit-mode", value=call.arg))
    return frozenset(words)


def parse_interval(call: XtCall) -> int:
    n = c_atoi(call.arg)
    if n <= 0:
        raise ExtensionError(BAD_VALUE.format(ext="hashlimit", opt="hashlimit-rate-interval", value=call.arg))
    return n & U32


def options() -> XtOptions:
    return XtOptions(
        "hashlimit",
        XtOpt("hashlimit-upto", CUSTOM, XTOPT_INVERT, excl=("hashlimit-above",), parse=parse_rate_option),
        XtOpt("hashlimit-above", CUSTOM, XTOPT_INVERT, excl=("hashlimit-upto",), parse=parse_rate_option),
        XtOpt("hashlimit", CUSTOM, XTOPT_INVERT, id="hashlimit-upto", parse=parse_rate_option),
        XtOpt("hashlimit-srcmask", CUSTOM, parse=parse_plen), XtOpt("hashlimit-dstmask", CUSTOM, parse=parse_plen),
        XtOpt("hashlimit-burst", CUSTOM, parse=parse_burst),
        XtOpt("hashlimit-htable-size", UINT32), XtOpt("hashlimit-htable-max", UINT32),
        XtOpt("hashlimit-htable-gcinterval", UINT32), XtOpt("hashlimit-htable-expire", UINT32),
        XtOpt("hashlimit-mode", CUSTOM, parse=parse_mode),
        XtOpt("hashlimit-name", STRING, XTOPT_MAND, min=1),
        XtOpt("hashlimit-rate-match", NONE), XtOpt("hashlimit-rate-interval", CUSTOM, parse=parse_interval),
    )


def rate_text(period: int) -> tuple[str, int]:
    """print_rate: the rate in the largest unit that keeps it whole enough, and that unit in ms."""
    if period == 0:
        return "inf", 0
    name, mult = pick_unit(period, RATES)
    return f"{mult // period}/{name}", mult // SCALE * 1000


def bytes_text(avg: int, burst: int, prefix: str) -> tuple[str, int]:
    """print_bytes: the byte rate (and burst) in the largest unit that gives back the same cost."""
    r = cost_to_bytes(avg)
    i = 0
    while i < len(UNITS) - 1:
        if r >= UNITS[i][1] and bytes_to_cost(r & ~(UNITS[i][1] - 1)) == avg:
            break
        i += 1
    text = f"{r // UNITS[i][1]}{UNITS[i][0]}b/s"
    if burst == 0:
        return text, BYTE_EXPIRE * 1000
    r *= burst
    i = 0
    while i < len(UNITS) - 1 and r < UNITS[i][1]:
        i += 1
    return f"{text} {prefix}burst {r // UNITS[i][1]}{UNITS[i][0]}b", BYTE_EXPIRE_BURST * 1000


@register_match
class HashlimitMatch(Match):
    name = "hashlimit"
    REVISION = 3
    OPTIONS = options()

    def __init__(self, family: int) -> None:
        self.family = family
        bits = 32 if family == 4 else 128
        self.above = self.bytes = self.rate_match = False
        self.avg = 0
        self.burst = 5
        self.modes: frozenset[str] = frozenset()
        self.size = self.max = 0
        self.gc = GCINTERVAL
        self.expire = 0
        self.srcmask = self.dstmask = bits
        self.bits = bits
        self.name_ = ""
        self.interval = 0

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> HashlimitMatch:
        table = cls.OPTIONS
        got = table.parse(opts, family)
        m = cls(family)
        key = "hashlimit-above" if "hashlimit-above" in got else "hashlimit-upto"
        if key not in got:
            raise ExtensionError("You have to specify --hashlimit")
        m.bytes, m.avg, mult = got.get(key)
        m.above = (key == "hashlimit-above") != got.invert(key)
        m.modes = got.get("hashlimit-mode", frozenset())
        m.srcmask, m.dstmask = got.get("hashlimit-srcmask", m.bits), got.get("hashlimit-dstmask", m.bits)
        m.size, m.max = got.get("hashlimit-htable-size", 0), got.get("hashlimit-htable-max", 0)
        m.gc = got.get("hashlimit-htable-gcinterval", GCINTERVAL)
        m.name_ = got.get("hashlimit-name", "")
        m.rate_match = "hashlimit-rate-match" in got
        m.interval = got.get("hashlimit-rate-interval", 0)
        m.burst = got.get("hashlimit-burst", 5)
        m.expire = got.get("hashlimit-htable-expire", mult * 1000)
        m._final_check("hashlimit-burst" in got, "hashlimit-htable-expire" in got, mult)
        table.fcheck(got)
        return m

    def _final_check(self, burst_given: bool, expire_given: bool, mult: int) -> None:
        """hashlimit_mt_check: bursts of bytes in multiples of the rate, rate-match's per-second rate."""
        if self.bytes:
            burst = 0
            if burst_given:
                unit = cost_to_bytes(self.avg)
                if self.burst < unit:
                    raise ExtensionError(f"burst cannot be smaller than {unit}b")
                burst = -(-self.burst // unit)
                if not expire_given:
                    self.expire = BYTE_EXPIRE_BURST * 1000
            self.burst = burst
        elif self.burst > BURST_MAX:
            raise ExtensionError(f"bad value for option \"--hashlimit-burst\", or out of range (1-{BURST_MAX}).")
        if self.rate_match:
            if not self.bytes:
                self.avg //= mult
            if self.interval == 0:
                self.interval = 1 if self.bytes else mult

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return self.srcmask > self.bits or self.dstmask > self.bits

    def _parts(self, prefix: str, listing: bool) -> list[str]:
        out = [f"{prefix}above" if self.above else f"{prefix}upto" if not listing else "limit: up to"]
        if listing and self.above:
            out = ["limit: above"]
        if self.bytes:
            text, quantum = bytes_text(self.avg, self.burst, prefix)
            out.append(text)
        else:
            period = self.avg * self.interval if listing and self.interval else self.avg
            text, quantum = rate_text(period)
            out += [text, f"{prefix}burst {self.burst}"]
        if self.modes:
            sep = "-" if listing else ","
            out.append(f"{prefix}mode " + sep.join(m for m in MODES if m in self.modes))
        if not listing:
            out.append(f"--hashlimit-name {self.name_}")
        for word, value, default in (("htable-size", self.size, 0), ("htable-max", self.max, 0),
                                     ("htable-gcinterval", self.gc, GCINTERVAL),
                                     ("htable-expire", self.expire, quantum),
                                     ("srcmask", self.srcmask, self.bits), ("dstmask", self.dstmask, self.bits)):
            if value != default:
                out.append(f"{prefix}{word} {value}")
        if self.rate_match:
            out.append(f"{prefix}rate-match")
            if self.interval != 1:
                out.append(f"{prefix}rate-interval {self.interval}")
        return out

    def save(self) -> str:
        return "-m hashlimit " + " ".join(self._parts("--hashlimit-", False))

    def listing(self, numeric: bool = True) -> str:
        return " ".join(self._parts("", True))

    def _key(self, pkt: Packet) -> tuple[Any, ...]:
        def masked(addr: int, bits: int) -> int:
            return addr >> (self.bits - bits) if bits else 0
        return (masked(pkt.src, self.srcmask) if "srcip" in self.modes else None,
                masked(pkt.dst, self.dstmask) if "dstip" in self.modes else None,
                pkt.sport if "srcport" in self.modes else None, pkt.dport if "dstport" in self.modes else None)

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        """A bucket per key in the table named by the rule (shared by rules of the same name): each packet
        (or byte) costs one token, tokens refill at the rate up to the burst; upto matches while paid."""
        tables = ctx.node.subsystems.setdefault("hashlimit", {})
        buckets = tables.setdefault((self.family, self.name_), {})
        key = self._key(pkt)
        now = ctx.now
        rate: float
        if self.bytes:
            rate = cost_to_bytes(self.avg) or 1          # bytes per second
            capacity = max(self.burst, 1) * rate
            cost = pkt.length
        else:
            rate = SCALE / self.avg if self.avg else float("inf")
            capacity, cost = self.burst, 1
        tokens, last = buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + (now - last) * rate)
        paid = tokens >= cost
        buckets[key] = (tokens - cost if paid else tokens, now)
        return paid != self.above
