"""The NAT targets: DNAT, SNAT, MASQUERADE and REDIRECT, each binding the connection through the NAT core."""

from __future__ import annotations

from typing import Any

from kproxy.iptables.extension import ExtensionError, Opt, RuleContext, Target, register_target
from kproxy.netfilter.nat import NatRange
from kproxy.packet import NF_ACCEPT, NF_DROP, Packet, format_addr

PORT_PROTOS = (6, 17, 132, 33, 136)


def _parse_ports(text: str, what: str) -> tuple[int, int]:
    lo_s, _, hi_s = text.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if hi_s else lo
    except ValueError:
        raise ExtensionError(f"Port \"{text}\" not valid") from None
    if not (0 < lo <= 65535 and 0 < hi <= 65535) or hi < lo:
        raise ExtensionError(f"Port \"{text}\" not valid")
    return lo, hi


def parse_range(text: str, family: int, rule: Any, what: str) -> NatRange:
    """``addr[-addr][:port[-port]]`` (``[v6]:port`` for IPv6)."""
    ports: tuple[int, int] | None = None
    addr_part = text
    if family == 6 and text.startswith("["):
        addr_part, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            ports = _parse_ports(rest[1:], what)
    elif family == 4 and ":" in text:
        addr_part, _, port_text = text.partition(":")
        ports = _parse_ports(port_text, what)
    if ports is not None and (rule.proto not in PORT_PROTOS or rule.proto_inv):
        raise ExtensionError("Need TCP, UDP, SCTP or DCCP with port specification")
    lo_a = hi_a = None
    if addr_part:
        from kproxy.iptables.parser import ParameterProblem, _inet_addr

        a, _, b = addr_part.partition("-")
        try:
            lo_a = _inet_addr(a, family)
            hi_a = _inet_addr(b, family) if b else lo_a
        except ParameterProblem:
            raise ExtensionError(f"Bad IP address \"{addr_part}\"") from None
    return NatRange(lo_a, hi_a, ports[0] if ports else None, ports[1] if ports else None)


def range_text(r: NatRange, family: int) -> str:
    text = ""
    if r.min_addr is not None:
        text = format_addr(r.min_addr, family)
        if r.max_addr is not None and r.max_addr != r.min_addr:
            text += "-" + format_addr(r.max_addr, family)
        if family == 6 and r.min_port is not None:
            text = f"[{text}]"
    if r.min_port is not None:
        text += f":{r.min_port}" + (f"-{r.max_port}" if r.max_port != r.min_port else "")
    return text


def _flags(r: NatRange, save: bool) -> str:
    out = ""
    if r.random:
        out += " --random" if save else " random"
    if r.random_fully:
        out += " --random-fully" if save else " random-fully"
    if r.persistent:
        out += " --persistent" if save else " persistent"
    return out


def _with_flags(r: NatRange, opts: list[Opt]) -> NatRange:
    names = {o.name for o in opts}
    return NatRange(r.min_addr, r.max_addr, r.min_port, r.max_port, "random" in names, "random-fully" in names,
                    "persistent" in names)


class _Nat(Target):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    TABLES = ("nat",)
    KIND = "DST"
    OPT = "to-destination"

    def __init__(self, rng: NatRange, family: int) -> None:
        self.range, self.family = rng, family

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> _Nat:
        to = [o for o in opts if o.name == cls.OPT]
        if not to:
            raise ExtensionError(f"{cls.name}: option \"--{cls.OPT}\" must be specified" if cls.name != "DNAT"
                                 else "DNAT: option \"--to-destination\" must be specified")
        if len(to) > 1:
            raise ExtensionError("Multiple --to-destination not supported" if cls.KIND == "DST"
                                 else "Multiple --to-source not supported")
        return cls(_with_flags(parse_range(to[0].values[0], family, rule, cls.name), opts), family)

    def save(self) -> str:
        return f"-j {self.name} --{self.OPT} {range_text(self.range, self.family)}" + _flags(self.range, True)

    def listing(self, numeric: bool = True) -> str:
        return f"to:{range_text(self.range, self.family)}" + _flags(self.range, False)

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        return ctx.node.nat.setup(pkt, self.range, self.KIND, ctx.state)


@register_target
class DnatTarget(_Nat):
    name = "DNAT"
    HOOKS = ("PREROUTING", "OUTPUT")
    OPTIONS = {"to-destination": 1, "random": 0, "persistent": 0}


@register_target
class SnatTarget(_Nat):
    name = "SNAT"
    KIND = "SRC"
    OPT = "to-source"
    HOOKS = ("POSTROUTING", "INPUT")
    OPTIONS = {"to-source": 1, "random": 0, "random-fully": 0, "persistent": 0}


@register_target
class MasqueradeTarget(Target):
    """Source NAT to the outgoing device's address for the next hop; no address means drop."""
    SHAREABLE = True   # no per-rule state: rules with the same options share one object

    name = "MASQUERADE"
    TABLES = ("nat",)
    HOOKS = ("POSTROUTING",)
    OPTIONS = {"to-ports": 1, "random": 0, "random-fully": 0}

    def __init__(self, rng: NatRange) -> None:
        self.range = rng

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> MasqueradeTarget:
        ports = None
        for o in opts:
            if o.name == "to-ports":
                if rule.proto not in PORT_PROTOS or rule.proto_inv:
                    raise ExtensionError("Need TCP, UDP, SCTP or DCCP with port specification")
                ports = _parse_ports(o.values[0], cls.name)
        return cls(_with_flags(NatRange(None, None, ports[0] if ports else None, ports[1] if ports else None), opts))

    def save(self) -> str:
        text = "-j MASQUERADE"
        if self.range.min_port is not None:
            text += f" --to-ports {_ports(self.range)}"
        return text + _flags(self.range, True)

    def listing(self, numeric: bool = True) -> str:
        text = "masq ports: " + _ports(self.range) if self.range.min_port is not None else ""
        return (text + _flags(self.range, False)).strip()

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        node = ctx.node
        route = node.route(pkt.family, pkt.dst)
        nexthop = route.gateway if route.gateway is not None else pkt.dst
        addr = node.source_address_for(pkt.family, ctx.state.out_dev, nexthop)
        if addr is None:
            if ctx.state.trace is not None:
                ctx.state.trace.add("nat", hook=ctx.hook, text=f"MASQUERADE: no address on {ctx.state.out_dev}: drop")
            return NF_DROP
        r = self.range
        return node.nat.setup(pkt, NatRange(addr, addr, r.min_port, r.max_port, r.random, r.random_fully),
                              "SRC", ctx.state)


def _ports(r: NatRange) -> str:
    return str(r.min_port) if r.min_port == r.max_port else f"{r.min_port}-{r.max_port}"


@register_target
class RedirectTarget(Target):
    """Destination NAT to this node: the incoming device's first address, or loopback for local traffic."""
    SHAREABLE = True   # no per-rule state: rules with the same options share one object

    name = "REDIRECT"
    TABLES = ("nat",)
    HOOKS = ("PREROUTING", "OUTPUT")
    OPTIONS = {"to-ports": 1, "random": 0}

    def __init__(self, rng: NatRange) -> None:
        self.range = rng

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> RedirectTarget:
        return MasqueradeTarget.from_options.__func__(cls, opts, family, rule)  # type: ignore[attr-defined]

    def save(self) -> str:
        text = "-j REDIRECT"
        if self.range.min_port is not None:
            text += f" --to-ports {_ports(self.range)}"
        return text + _flags(self.range, True)

    def listing(self, numeric: bool = True) -> str:
        text = "redir ports " + _ports(self.range) if self.range.min_port is not None else ""
        return (text + _flags(self.range, False)).strip()

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        node = ctx.node
        if ctx.hook == "OUTPUT":
            addr: int | None = 0x7F000001 if pkt.family == 4 else 1
        else:
            addr = node.primary_address(ctx.state.in_dev, pkt.family)
        if addr is None:
            return NF_DROP
        r = self.range
        verdict = node.nat.setup(pkt, NatRange(addr, addr, r.min_port, r.max_port, r.random), "DST", ctx.state)
        return verdict if verdict != NF_ACCEPT else NF_ACCEPT
