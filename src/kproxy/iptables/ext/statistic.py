"""The statistic match (xt_statistic): random with a 31-bit probability, or every nth packet.

The kernel stores the probability as ``round(p * 2^31)`` and compares it with 31 random bits, so
``0.33333333333`` prints back as ``0.33333333349``; nth keeps one counter per rule, shared by every
packet that reaches it. Random draws come from the node's RNG (``node.subsystems["rng"]``) so a
seeded node is reproducible.
"""

from __future__ import annotations

import random
from typing import Any

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.packet import Packet


def node_rng(node: Any) -> random.Random:
    rng = node.subsystems.get("rng")
    if rng is None:
        rng = node.subsystems["rng"] = random.Random()
    return rng


@register_match
class StatisticMatch(Match):
    name = "statistic"
    OPTIONS = {"mode": 1, "probability": 1, "every": 1, "packet": 1}

    def __init__(self, mode: str, probability: int = 0, every: int = 0, packet: int = 0,
                 invert: bool = False) -> None:
        self.mode, self.probability, self.every, self.packet, self.invert = mode, probability, every, packet, invert
        self.count = every - packet   # libxt_statistic starts the counter so packet p of each n matches

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> StatisticMatch:
        vals = {o.name: o for o in opts}
        mode = vals.get("mode")
        if mode is None:
            raise ExtensionError("statistic: option \"--mode\" must be specified")
        invert = any(o.invert for o in opts)
        if mode.values[0] == "random":
            if "probability" not in vals:
                raise ExtensionError("--probability must be specified when using random mode")
            try:
                p = float(vals["probability"].values[0])
            except ValueError:
                raise ExtensionError("statistic: Bad value for option \"--probability\", "
                                     "or out of range (0.000000-1.000000).") from None
            if not 0.0 <= p <= 1.0:
                raise ExtensionError("statistic: Bad value for option \"--probability\", "
                                     "or out of range (0.000000-1.000000).")
            return cls("random", probability=int(p * 0x80000000 + 0.5), invert=invert)
        if mode.values[0] == "nth":
            if "every" not in vals:
                raise ExtensionError("--every must be specified when using nth mode")
            every = int(vals["every"].values[0])
            packet = int(vals["packet"].values[0]) if "packet" in vals else 0
            if every < 1 or packet > every - 1:
                raise ExtensionError("the --packet p must be 0 <= p <= n-1")
            return cls("nth", every=every - 1, packet=packet, invert=invert)
        raise ExtensionError(f"Bad mode \"{mode.values[0]}\"")

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

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if self.mode == "random":
            hit = (node_rng(ctx.node).getrandbits(32) & 0x7FFFFFFF) < self.probability
            return hit != self.invert
        self.count = 0 if self.count == self.every else self.count + 1
        return (self.count == 0) != self.invert
