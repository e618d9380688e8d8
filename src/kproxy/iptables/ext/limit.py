"""The limit match: a token bucket per rule, shared by every packet that reaches the rule.

iptables-nft 1.8.9 does not load xt_limit: it turns ``--limit``/``--limit-burst`` into an nft
``limit rate N/unit burst B packets`` expression (add_nft_limit) and reads it back when listing.
So the rule is what survives that round trip (``60/min`` becomes ``1/sec``, burst 0 becomes the
kernel's default 5), and packets are counted as ``nft_limit`` counts them: a bucket of
``burst * cost`` nanoseconds of tokens, refilled one token per nanosecond, where ``cost`` is
``unit * 1e9 // rate`` and a packet passes while it can pay its cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, Xlate, register_match
from kproxy.iptables.xtoptions import CUSTOM, UINT32, XtCall, XtOpt, XtOptions
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

XT_LIMIT_SCALE = 10000
NSEC_PER_SEC = 1_000_000_000
DEFAULT_AVG = XT_LIMIT_SCALE * 3600 // 3        # 3/hour
DEFAULT_BURST = 5                                # XT_LIMIT_BURST, and nft's NFT_LIMIT_PKT_BURST_DEFAULT
UNIT_WORDS = (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400))
RATES = [("day", XT_LIMIT_SCALE * 86400), ("hour", XT_LIMIT_SCALE * 3600), ("min", XT_LIMIT_SCALE * 60),
         ("sec", XT_LIMIT_SCALE)]


def c_atoi(text: str) -> int:
    """C atoi: leading blanks, a sign, then digits up to the first other character (0 if none)."""
    s = text.lstrip(" \t\n\v\f\r")
    sign = -1 if s.startswith("-") else 1
    s = s[1:] if s[:1] in "+-" else s
    n = 0
    while n < len(s) and s[n].isdigit():
        n += 1
    return sign * int(s[:n]) if n else 0


def unit_seconds(unit: str) -> int | None:
    """The seconds of the unit after a rate's ``/`` (limit and hashlimit): any prefix of second, minute,
    hour or day, in any case; None for another word or none."""
    if not unit:
        return None
    return next((secs for word, secs in UNIT_WORDS if word.startswith(unit.lower())), None)


def parse_rate(call: XtCall) -> int:
    """``3/min`` into the average interval in 1/10000 s (XT_LIMIT_SCALE), as libxt_limit does."""
    text = call.arg
    bad = ExtensionError(f"bad rate \"{text}\"'")
    _, slash, unit = text.partition("/")
    mult = 1
    if slash:
        secs = unit_seconds(unit)
        if secs is None:
            raise bad
        mult = secs
    r = c_atoi(text) & 0xFFFFFFFF
    if r == 0:
        raise bad
    avg = XT_LIMIT_SCALE * mult // r
    if avg == 0:
        raise ExtensionError(f"Rate too fast \"{text}\"")
    return avg


def nft_rate(avg: int) -> tuple[int, int]:
    """add_nft_limit: the (rate, unit in seconds) an average interval becomes in the nft expression,
    in the unit print_rate would choose."""
    _, mult = pick_unit(avg, RATES)
    return mult // avg, mult // XT_LIMIT_SCALE


def pick_unit(period: int, rates: list[tuple[str, int]]) -> tuple[str, int]:
    """print_rate's choice (limit and hashlimit): the coarsest unit that still divides the period well."""
    i = 1
    while i < len(rates):
        mult = rates[i][1]
        if period > mult or mult // period < mult % period:
            break
        i += 1
    return rates[i - 1]


def rate_text(period: int) -> str:
    name, mult = pick_unit(period, RATES)
    return f"{mult // period}/{name}"


@register_match
class LimitMatch(Match):
    name = "limit"
    OPTIONS = XtOptions("limit", XtOpt("limit", CUSTOM, parse=parse_rate), XtOpt("limit-burst", UINT32, max=10000))

    def __init__(self, avg: int = DEFAULT_AVG, burst: int = DEFAULT_BURST) -> None:
        self.rate, self.unit = nft_rate(avg)
        self.avg = XT_LIMIT_SCALE * self.unit // self.rate      # what is read back from the kernel
        self.burst = burst or DEFAULT_BURST
        self.given_burst = burst     # the translator prints no burst for --limit-burst 0
        self.cost = self.unit * NSEC_PER_SEC // self.rate
        self.tokens_max = self.cost * self.burst
        self.tokens = self.tokens_max
        self.last: int | None = None

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> LimitMatch:
        got = cls.OPTIONS.parse_all(opts)
        return cls(got.get("limit", DEFAULT_AVG), got.get("limit-burst", DEFAULT_BURST))

    def save(self) -> str:
        burst = f" --limit-burst {self.burst}" if self.burst != DEFAULT_BURST else ""
        return f"-m limit --limit {rate_text(self.avg)}{burst}"

    def listing(self, numeric: bool = True) -> str:
        return f"limit: avg {rate_text(self.avg)} burst {self.burst}"

    def state_json(self) -> list[Any]:
        """The bucket, which lives as long as the rule does: kept in the node file beside it."""
        return [self.tokens, self.last]

    def load_state(self, data: list[Any]) -> None:
        self.tokens, self.last = int(data[0]), None if data[1] is None else int(data[1])

    def translate(self, xl: Xlate) -> str:
        text = f"limit rate {self.rate}/{dict((s, w) for w, s in UNIT_WORDS)[self.unit]}"
        return f"{text} burst {self.given_burst} packets" if self.given_burst else text

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        """nft_limit_eval: refill by the nanoseconds since the last packet, then try to pay the cost."""
        now = int(ctx.now * NSEC_PER_SEC)
        last = now if self.last is None else self.last
        tokens = min(self.tokens + max(now - last, 0), self.tokens_max)
        self.last = now
        if tokens >= self.cost:
            self.tokens = tokens - self.cost
            return True
        self.tokens = tokens
        return False
