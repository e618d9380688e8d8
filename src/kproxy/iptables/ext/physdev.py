"""physdev: the bridge port a packet came in or goes out on.

The emulated node has no bridges, so no packet is bridged: ``--physdev-is-in``,
``--physdev-is-out`` and ``--physdev-is-bridged`` never match (their negations always do), and
the port-name options never match. kube-proxy's IPVS mode uses ``! --physdev-is-in`` to tell
traffic from off the node from traffic of local containers on a bridge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import STRING, XTOPT_INVERT, XtOpt, XtOptions
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

IFNAMSIZ = 16
PHYSDEV_OPTS = XtOptions(
    "physdev",
    XtOpt("physdev-in", STRING, XTOPT_INVERT, size=IFNAMSIZ),
    XtOpt("physdev-out", STRING, XTOPT_INVERT, size=IFNAMSIZ),
    XtOpt("physdev-is-in", flags=XTOPT_INVERT),
    XtOpt("physdev-is-out", flags=XTOPT_INVERT),
    XtOpt("physdev-is-bridged", flags=XTOPT_INVERT),
)
_ORDER = list(PHYSDEV_OPTS)


@register_match
class PhysdevMatch(Match):
    SHAREABLE = True
    name = "physdev"
    OPTIONS = PHYSDEV_OPTS

    def __init__(self, tests: list[tuple[str, str, bool]]) -> None:
        self.tests = tests       # (option, value, inverted), in the order iptables prints them

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> PhysdevMatch:
        parsed = PHYSDEV_OPTS.parse_all(opts, family, rule)
        got = [(key, value if isinstance(value, str) else "", parsed.invert(key))
               for key, value in parsed.values.items()]
        if not got:
            raise ExtensionError("PHYSDEV: no physdev option specified")
        return cls(sorted(got, key=lambda t: _ORDER.index(t[0])))

    def save(self) -> str:
        parts = ["-m physdev"]
        for opt, value, inv in self.tests:
            parts.append(f"{'! ' if inv else ''}--{opt}{' ' + value if value else ''}")
        return " ".join(parts)

    def listing(self, numeric: bool = True) -> str:
        return "PHYSDEV match " + " ".join(f"{'! ' if inv else ''}--{opt}{' ' + value if value else ''}"
                                           for opt, value, inv in self.tests)

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        # Not bridged: every test is false, so each matches only when inverted.
        return all(inv for _, _, inv in self.tests)
