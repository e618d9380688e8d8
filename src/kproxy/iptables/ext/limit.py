"""The limit match (xt_limit): a token bucket in the kernel's credit units, shared by all packets of the rule."""

from __future__ import annotations

from typing import Any

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.packet import Packet

XT_LIMIT_SCALE = 10000
HZ = 1000
CREDITS_PER_JIFFY = 128          # POW2_BELOW32(MAX_CPJ) for HZ=1000
UNITS = {"sec": 1, "second": 1, "s": 1, "min": 60, "minute": 60, "m": 60, "hour": 3600, "h": 3600,
         "day": 86400, "d": 86400}


def parse_rate(text: str) -> int:
    """``3/min`` into the average interval in 1/10000 s (XT_LIMIT_SCALE), as libxt_limit does."""
    num, _, unit = text.partition("/")
    try:
        n = int(num)
    except ValueError:
        raise ExtensionError(f"bad rate \"{text}\"'") from None
    mult = 1
    if unit:
        key = next((k for k in UNITS if k.startswith(unit) and len(unit) >= 1 and unit == k[:len(unit)]), None)
        if key is None:
            raise ExtensionError(f"bad rate \"{text}\"'")
        mult = UNITS[key]
    if n == 0 or XT_LIMIT_SCALE * mult // n == 0:
        raise ExtensionError(f"Rate too fast \"{text}\"")
    return XT_LIMIT_SCALE * mult // n


RATES = [("day", XT_LIMIT_SCALE * 86400), ("hour", XT_LIMIT_SCALE * 3600), ("min", XT_LIMIT_SCALE * 60),
         ("sec", XT_LIMIT_SCALE)]


def rate_text(period: int) -> str:
    """print_rate: the coarsest unit that still divides the period well."""
    i = 1
    while i < len(RATES):
        mult = RATES[i][1]
        if period > mult or mult // period < mult % period:
            break
        i += 1
    name, mult = RATES[i - 1]
    return f"{mult // period}/{name}"


@register_match
class LimitMatch(Match):
    name = "limit"
    OPTIONS = {"limit": 1, "limit-burst": 1}

    def __init__(self, avg: int, burst: int, invert: bool = False) -> None:
        self.avg, self.burst, self.invert = avg, burst, invert
        self.cost = avg * HZ * CREDITS_PER_JIFFY // XT_LIMIT_SCALE
        self.credit_cap = self.cost * burst
        self.credit = self.credit_cap
        self.prev: float | None = None

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> LimitMatch:
        avg, burst, invert = XT_LIMIT_SCALE * 3600 // 3, 5, False
        for o in opts:
            if o.name == "limit":
                avg, invert = parse_rate(o.values[0]), o.invert
            else:
                burst = int(o.values[0])
                if not 0 < burst <= 10000:
                    raise ExtensionError(f"bad --limit-burst `{o.values[0]}'")
        return cls(avg, burst, invert)

    def save(self) -> str:
        burst = f" --limit-burst {self.burst}" if self.burst != 5 else ""
        return f"-m limit {'! ' if self.invert else ''}--limit {rate_text(self.avg)}{burst}"

    def listing(self, numeric: bool = True) -> str:
        return f"limit: {'! ' if self.invert else ''}avg {rate_text(self.avg)} burst {self.burst}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        now = ctx.now
        if self.prev is None:
            self.prev = now
        jiffies = int((now - self.prev) * HZ)
        if jiffies > 0:
            self.credit = min(self.credit + jiffies * CREDITS_PER_JIFFY, self.credit_cap)
            self.prev = now
        if self.credit >= self.cost:
            self.credit -= self.cost
            return not self.invert
        return self.invert
