"""The statistic match (xt_statistic): random with a 31-bit probability, or every nth packet.

The kernel stores the probability as ``round(p * 2^31)`` and compares it with 31 random bits, so
``0.33333333333`` prints back as ``0.33333333349``; nth keeps one counter per rule, shared by every
packet that reaches it. Random draws come from the node's RNG (``node.subsystems["rng"]``) so a
seeded node is reproducible.
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, Any

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, Xlate, register_match
from kproxy.iptables.xtoptions import (
    CHOICE,
    CUSTOM,
    UINT32,
    XTOPT_INVERT,
    XTOPT_MAND,
    XtCall,
    XtOpt,
    XtOptions,
)
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule
    from kproxy.netfilter.netns import NetNamespace

_FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)", re.IGNORECASE)
_HEXFLOAT = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?")


def c_strtod(text: str) -> float | None:
    """C strtod over the whole string (after leading blanks): decimal, hex, inf and nan forms."""
    s = text.lstrip(" \t\n\v\f\r")
    if _HEXFLOAT.fullmatch(s):
        body = s if "p" in s.lower() else s + "p0"
        return float.fromhex(body)
    if _FLOAT.fullmatch(s):
        return float(s)
    return None


def parse_probability(call: XtCall) -> int:
    """The probability as the kernel keeps it: round(p * 2^31)."""
    p = c_strtod(call.arg)
    if p is None or p < 0.0 or p > 1.0:   # (nan passes these checks, as in C)
        raise ExtensionError("statistic: bad value for option \"--probability\", or out of range (0-1).\n")
    return 0 if p != p else int(p * 0x80000000 + 0.5)


def node_rng(node: NetNamespace) -> random.Random:
    rng = node.subsystems.get("rng")
    if rng is None:
        rng = node.subsystems["rng"] = random.Random()
    return rng


@register_match
class StatisticMatch(Match):
    SHAREABLE = True   # random mode has no per-rule state; nth says so through ``stateful``
    name = "statistic"
    OPTIONS = XtOptions(
        "statistic",
        XtOpt("mode", CHOICE, XTOPT_MAND, choices=("random", "nth"), bad="Bad mode \"{value}\""),
        XtOpt("probability", CUSTOM, XTOPT_INVERT, excl=("every", "packet"), parse=parse_probability),
        XtOpt("every", UINT32, XTOPT_INVERT, min=1, also=("packet",)),
        XtOpt("packet", UINT32, also=("every",)),
    )

    def __init__(self, mode: str, probability: int = 0, every: int = 0, packet: int = 0,
                 invert: bool = False) -> None:
        self.mode, self.probability, self.every, self.packet, self.invert = mode, probability, every, packet, invert
        self.count = every - packet   # libxt_statistic starts the counter so packet p of each n matches

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> StatisticMatch:
        got = cls.OPTIONS.parse(opts)
        m = cls(got.get("mode", "random"), got.get("probability", 0), got.get("every", 1) - 1, got.get("packet", 0),
                got.invert("probability") or got.invert("every"))
        seen = got.seen()
        if m.mode == "random" and "probability" not in seen:
            raise ExtensionError("--probability must be specified when using random mode")
        if m.mode == "nth" and not seen & {"every", "packet"}:
            raise ExtensionError("--every and --packet must be specified when using nth mode")
        if m.packet > m.every:
            raise ExtensionError("the --packet p must be 0 <= p <= n-1")
        cls.OPTIONS.fcheck(got)
        m.count = m.every - m.packet   # as the kernel starts the shared counter (xt_statistic checkentry)
        m.stateful = m.mode == "nth"   # its packet counter belongs to this rule alone
        return m

    def save(self) -> str:
        bang = "! " if self.invert else ""
        if self.mode == "random":
            return f"-m statistic --mode random {bang}--probability {self.probability / 0x80000000:.11f}"
        return f"-m statistic --mode nth {bang}--every {self.every + 1} --packet {self.packet}"

    def listing(self, numeric: bool = True) -> str:
        bang = "! " if self.invert else ""
        if self.mode == "random":
            return f"statistic mode random {bang}probability {self.probability / 0x80000000:.11f}"
        return f"statistic mode nth {bang}every {self.every + 1}" + (f" packet {self.packet}" if self.packet else "")

    def translate(self, xl: Xlate) -> str:
        """``meta random`` under the probability, or ``numgen inc`` modulo the period."""
        if self.mode == "random":
            return f"meta random & 2147483647 {'>=' if self.invert else '<'} {self.probability}"
        return f"numgen inc mod {self.every + 1} {'!= ' if self.invert else ''}{self.packet}"

    def state_json(self) -> int | None:
        """nth mode's packet counter (kept in the node file beside the rule); random mode has none."""
        return self.count if self.mode == "nth" else None

    def load_state(self, data: int) -> None:
        self.count = int(data)

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if self.mode == "random":
            hit = (node_rng(ctx.state.node).getrandbits(32) & 0x7FFFFFFF) < self.probability
            return hit != self.invert
        self.count = 0 if self.count == self.every else self.count + 1
        return (self.count == 0) != self.invert

    def inline(self) -> tuple[str, tuple[Any, ...]] | None:
        if self.mode != "random":
            return None         # nth keeps a count: called
        # node_rng's lookup inlined (it is called only the first time, to make the RNG).
        draw = "(c.state.node.subsystems.get('rng') or {}(c.state.node)).getrandbits(32) & 0x7FFFFFFF"
        return f"({draw}) {'>=' if self.invert else '<'} {{}}", (node_rng, self.probability)
