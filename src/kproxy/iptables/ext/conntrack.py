"""The conntrack and state matches: connection state, status, direction and tuples of the packet's flow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, Xlate, register_match
from kproxy.iptables.model import Net
from kproxy.iptables.xtoptions import (
    CHOICE,
    CUSTOM,
    HOSTMASK,
    PORTRC,
    UINT32RC,
    XTOPT_INVERT,
    XTOPT_MAND,
    XtCall,
    XtOpt,
    XtOptions,
)
from kproxy.netfilter.conntrack import (
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_EXPECTED,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
)
from kproxy.packet import Packet, format_addr

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

STATES = ["INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT"]
STATUSES = [("EXPECTED", IPS_EXPECTED), ("SEEN_REPLY", IPS_SEEN_REPLY), ("ASSURED", IPS_ASSURED),
            ("CONFIRMED", IPS_CONFIRMED)]
ADDR_OPTS = ("ctorigsrc", "ctorigdst", "ctreplsrc", "ctrepldst")
PORT_OPTS = ("ctorigsrcport", "ctorigdstport", "ctreplsrcport", "ctrepldstport")


def parse_states(text: str, allowed: list[str], what: str = "ctstate") -> list[str]:
    out = []
    for word in text.split(","):
        if word.upper() not in allowed:
            raise ExtensionError(f"Bad {what} \"{word}\"")
        out.append(word.upper())
    return sorted(set(out), key=allowed.index)


def parse_ctstate(call: XtCall) -> list[str]:
    return parse_states(call.arg, STATES)


def parse_ctstatus(call: XtCall) -> list[str]:
    return [w for w in parse_states(call.arg, [n for n, _ in STATUSES] + ["NONE"], "ctstatus") if w != "NONE"]


def parse_ctproto(call: XtCall) -> int:
    from kproxy.iptables.parser import ParameterProblem, parse_protocol

    try:
        return parse_protocol(call.arg, call.family)
    except ParameterProblem as exc:
        raise ExtensionError(str(exc)) from None


def state_xlate(states: list[str], invert: bool) -> str:
    """``ct state`` in the kernel's bit order; SNAT or DNAT among the states makes it the ct status
    bit instead (only that one, never inverted: the translator drops the rest)."""
    if "SNAT" in states or "DNAT" in states:
        return f"ct status {'snat' if 'SNAT' in states else 'dnat'}"     # the tool drops the invert here
    return f"ct state {'! ' if invert else ''}{','.join(s.lower() for s in STATES[:5] if s in states)}"


def _range_text(rng: tuple[int, int]) -> str:
    return str(rng[0]) if rng[0] == rng[1] else f"{rng[0]}-{rng[1]}"


def _ct_part(name: str, val: Any, invert: bool, reply_dir: bool) -> str:
    """One conntrack option as the translator writes it."""
    neq = "!= " if invert else ""
    if name == "ctdir":
        return f"ct direction {val.lower()}"
    if name == "ctproto":
        return f"ct {'reply' if reply_dir else 'original'} protocol {neq}{val}"
    if name == "ctstate":
        return state_xlate(val, invert)
    if name == "ctstatus":
        words = [s.lower().replace("_", "-") for s, _ in STATUSES if s in val]
        return f"ct status {'! ' if invert else ''}{','.join(words)}".rstrip()
    if name == "ctexpire":
        return f"ct expiration {neq}{_range_text(val)}"
    way = "original" if "orig" in name else "reply"
    if name in ADDR_OPTS:
        return f"ct {way} {name[-3]}addr {neq}{_net_text(val)}"
    return f"ct {way} proto-{name[-7:-4]} {neq}{_range_text(val)}"


XLATE_ORDER = ["ctdir", "ctproto", "ctstate", "ctstatus", "ctexpire", *ADDR_OPTS, *PORT_OPTS]


def packet_states(pkt: Packet) -> set[str]:
    """The virtual states a packet is in: its ctstate, plus SNAT/DNAT when its flow is NATed."""
    st = {pkt.ctstate or "INVALID"}
    if pkt.ct is not None:
        if pkt.ct.status & IPS_SRC_NAT:
            st.add("SNAT")
        if pkt.ct.status & IPS_DST_NAT:
            st.add("DNAT")
    return st


def _net_text(net: Net) -> str:
    text = format_addr(net.addr, net.family)
    return text if net.prefixlen == net.bits else f"{text}/{net.prefixlen}"


@register_match
class ConntrackMatch(Match):
    NEEDS_CONNTRACK = True
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "conntrack"
    OPTIONS = XtOptions(
        "conntrack",
        XtOpt("ctstate", CUSTOM, XTOPT_INVERT, parse=parse_ctstate),
        XtOpt("ctproto", CUSTOM, XTOPT_INVERT, parse=parse_ctproto),
        *(XtOpt(n, HOSTMASK, XTOPT_INVERT) for n in ADDR_OPTS),
        *(XtOpt(n, PORTRC, XTOPT_INVERT) for n in PORT_OPTS),
        XtOpt("ctstatus", CUSTOM, XTOPT_INVERT, parse=parse_ctstatus),
        XtOpt("ctexpire", UINT32RC, XTOPT_INVERT),
        XtOpt("ctdir", CHOICE, choices=("ORIGINAL", "REPLY")),
    )

    def __init__(self) -> None:
        self.opts: dict[str, tuple[Any, bool]] = {}

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> ConntrackMatch:
        got = cls.OPTIONS.parse(opts, family)
        if not got.values:
            raise ExtensionError("conntrack: At least one option is required")
        m = cls()
        m.opts = {name: (got.values[name], got.inverted[name]) for name in got.order}
        return m

    def _fmt(self, name: str, val: Any, save: bool) -> str:
        if name == "ctstate":
            return ",".join(val)
        if name == "ctstatus":
            return ",".join(val) or "NONE"
        if name in ADDR_OPTS:
            return _net_text(val)
        if name in PORT_OPTS or name == "ctexpire":
            return str(val[0]) if val[0] == val[1] else f"{val[0]}:{val[1]}"
        return str(val)

    ORDER = ["ctstate", "ctproto", "ctorigsrc", "ctorigdst", "ctreplsrc", "ctrepldst", "ctorigsrcport",
             "ctorigdstport", "ctreplsrcport", "ctrepldstport", "ctstatus", "ctexpire", "ctdir"]

    def translate(self, xl: Xlate) -> str:
        """conntrack3_mt_xlate: the direction first (the protocol test follows it), then the rest."""
        reply_dir = self.opts.get("ctdir", ("", False))[0] == "REPLY"
        return " ".join(_ct_part(n, *self.opts[n], reply_dir) for n in XLATE_ORDER if n in self.opts)

    def save(self) -> str:
        parts = ["-m conntrack"]
        for name in self.ORDER:
            if name in self.opts:
                val, invert = self.opts[name]
                parts.append(f"{'! ' if invert else ''}--{name} {self._fmt(name, val, True)}")
        return " ".join(parts)

    def listing(self, numeric: bool = True) -> str:
        parts = []
        for name in self.ORDER:
            if name in self.opts:
                val, invert = self.opts[name]
                parts.append(f"{'! ' if invert else ''}{name} {self._fmt(name, val, False)}")
        return " ".join(parts)

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        """conntrack_mt: the state test first; without a connection nothing else can match."""
        ct = pkt.ct
        if "ctstate" in self.opts:
            states, invert = self.opts["ctstate"]
            if bool(packet_states(pkt) & set(states)) == invert:
                return False
        if ct is None:
            return "ctstate" in self.opts
        for name, (val, invert) in self.opts.items():
            if name == "ctstate":
                continue
            if name == "ctstatus":
                ok = any(ct.status & dict(STATUSES)[s] for s in val)
            elif name == "ctproto":
                ok = ct.orig.proto == val
            elif name in ADDR_OPTS:
                t = ct.orig if "orig" in name else ct.reply
                ok = val.contains(t.src if name.endswith("src") else t.dst)
            elif name in PORT_OPTS:
                t = ct.orig if "orig" in name else ct.reply
                port = t.sport if name.endswith("srcport") else t.dport
                ok = val[0] <= port <= val[1]
            elif name == "ctdir":
                ok = (pkt.ctdir == 1) == (val == "REPLY")
            else:
                left = max(0, int(ct.expires - ctx.now))
                ok = val[0] <= left <= val[1]
            if ok == invert:
                return False
        return True


def parse_state_list(call: XtCall) -> list[str]:
    if "" in call.arg.split(","):
        raise ExtensionError("\"--state\" requires a list of states with no spaces, e.g. ESTABLISHED,RELATED")
    return parse_states(call.arg, STATES[:5], "state")


@register_match
class StateMatch(Match):
    NEEDS_CONNTRACK = True
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "state"
    OPTIONS = XtOptions("state", XtOpt("state", CUSTOM, XTOPT_INVERT | XTOPT_MAND, parse=parse_state_list))

    def __init__(self, states: list[str], invert: bool) -> None:
        self.states, self.invert = states, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> StateMatch:
        got = cls.OPTIONS.parse_all(opts)
        return cls(got.get("state"), got.invert("state"))

    def translate(self, xl: Xlate) -> str:
        return state_xlate(self.states, self.invert)

    def save(self) -> str:
        return f"-m state {'! ' if self.invert else ''}--state {','.join(self.states)}"

    def listing(self, numeric: bool = True) -> str:
        return f"{'! ' if self.invert else ''}state {','.join(self.states)}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return ((pkt.ctstate or "INVALID") in self.states) != self.invert
