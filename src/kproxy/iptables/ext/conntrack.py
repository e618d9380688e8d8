"""The conntrack and state matches: connection state, status, direction and tuples of the packet's flow."""

from __future__ import annotations

from typing import Any

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.model import Net
from kproxy.iptables.xtutil import parse_port_range
from kproxy.netfilter.conntrack import (
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_EXPECTED,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
)
from kproxy.packet import Packet, format_addr

STATES = ["INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT"]
STATUSES = [("EXPECTED", IPS_EXPECTED), ("SEEN_REPLY", IPS_SEEN_REPLY), ("ASSURED", IPS_ASSURED),
            ("CONFIRMED", IPS_CONFIRMED)]
ADDR_OPTS = ("ctorigsrc", "ctorigdst", "ctreplsrc", "ctrepldst")
PORT_OPTS = ("ctorigsrcport", "ctorigdstport", "ctreplsrcport", "ctrepldstport")


def parse_states(text: str, allowed: list[str]) -> list[str]:
    out = []
    for word in text.split(","):
        if word.upper() not in allowed:
            raise ExtensionError(f"Bad ctstate \"{word}\"")
        out.append(word.upper())
    return sorted(set(out), key=allowed.index)


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
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "conntrack"
    OPTIONS = {"ctstate": 1, "ctproto": 1, "ctstatus": 1, "ctexpire": 1, "ctdir": 1,
               **{k: 1 for k in ADDR_OPTS}, **{k: 1 for k in PORT_OPTS}}

    def __init__(self) -> None:
        self.opts: dict[str, tuple[Any, bool]] = {}

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> ConntrackMatch:
        from kproxy.iptables.parser import ParameterProblem, parse_net, parse_protocol

        m = cls()
        for o in opts:
            v = o.values[0]
            try:
                if o.name == "ctstate":
                    val: Any = parse_states(v, STATES)
                elif o.name == "ctstatus":
                    names = dict(STATUSES)
                    val = [w.upper() for w in v.split(",")]
                    if any(w not in names for w in val):
                        raise ExtensionError(f"Bad ctstatus \"{v}\"")
                elif o.name == "ctproto":
                    val = parse_protocol(v, family)
                elif o.name in ADDR_OPTS:
                    val = parse_net(v, family)
                elif o.name in PORT_OPTS:
                    val = parse_port_range(v)
                elif o.name == "ctdir":
                    if v.upper() not in ("ORIGINAL", "REPLY"):
                        raise ExtensionError(f"Unknown --ctdir value \"{v}\"")
                    val = v.upper()
                else:
                    lo, _, hi = v.partition(":")
                    val = (int(lo), int(hi or lo))
            except ParameterProblem as exc:
                raise ExtensionError(str(exc)) from None
            m.opts[o.name] = (val, o.invert)
        return m

    def _fmt(self, name: str, val: Any, save: bool) -> str:
        if name in ("ctstate", "ctstatus"):
            return ",".join(val)
        if name in ADDR_OPTS:
            return _net_text(val)
        if name in PORT_OPTS or name == "ctexpire":
            return str(val[0]) if val[0] == val[1] else f"{val[0]}:{val[1]}"
        return str(val)

    ORDER = ["ctstate", "ctproto", "ctorigsrc", "ctorigdst", "ctreplsrc", "ctrepldst", "ctorigsrcport",
             "ctorigdstport", "ctreplsrcport", "ctrepldstport", "ctstatus", "ctexpire", "ctdir"]

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
        ct = pkt.ct
        for name, (val, invert) in self.opts.items():
            if name == "ctstate":
                ok = bool(packet_states(pkt) & set(val))
            elif ct is None:
                ok = False
            elif name == "ctstatus":
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
                left = ct.expires - ctx.now
                ok = val[0] <= left <= val[1]
            if ok == invert:
                return False
        return True


@register_match
class StateMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "state"
    OPTIONS = {"state": 1}

    def __init__(self, states: list[str], invert: bool) -> None:
        self.states, self.invert = states, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> StateMatch:
        if not opts:
            raise ExtensionError("state: option \"--state\" must be specified")
        o = opts[-1]
        return cls(parse_states(o.values[0], STATES[:5]), o.invert)

    def save(self) -> str:
        return f"-m state {'! ' if self.invert else ''}--state {','.join(self.states)}"

    def listing(self, numeric: bool = True) -> str:
        return f"{'! ' if self.invert else ''}state {','.join(self.states)}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return ((pkt.ctstate or "INVALID") in self.states) != self.invert
