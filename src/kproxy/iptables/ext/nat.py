"""The NAT targets: DNAT, SNAT, MASQUERADE and REDIRECT, each binding the connection through the NAT core."""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

from kproxy.iptables.extension import ExtensionError, Opt, RuleContext, Target, Xlate, register_target
from kproxy.iptables.xtoptions import CUSTOM, NONE, XTOPT_MAND, XtCall, XtOpt, XtOptions
from kproxy.iptables.xtutil import QUAD, c_strtoul, service_port
from kproxy.netfilter.nat import NatRange
from kproxy.packet import NF_ACCEPT, NF_DROP, Packet, format_addr

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

PORT_PROTOS = (6, 17, 132, 33, 136)


class _Ports:
    """A parsed port part: ``lo[-hi[/base]]``."""

    def __init__(self, lo: int, hi: int, base: int | None = None) -> None:
        self.lo, self.hi, self.base = lo, hi, base


def _port_number(text: str, services: bool) -> tuple[int, str]:
    """One port: a base-0 number (its unparsed rest returned), else a service name when allowed."""
    got = c_strtoul(text)
    if got is not None and got[0] <= 65535:
        return got
    if got is None and services:
        name = text.split("-")[0].split("/")[0]
        port = service_port(name, None)
        if port is not None:
            return port, text[len(name):]
    raise ExtensionError(f"Port `{text}' not valid")


def _parse_ports(text: str, with_base: bool) -> _Ports:
    """The port part of --to-destination/--to-source (``with_base``) or of --to-ports."""
    lo, rest = _port_number(text, True)
    if not rest:
        return _Ports(lo, lo)
    if not rest.startswith("-"):
        raise ExtensionError(f"Garbage after port value: `{rest}'")
    hi_text, slash, base_text = rest[1:].partition("/")
    if not hi_text or not hi_text.isdigit():
        raise ExtensionError(f"Port `{hi_text}' not valid")
    hi = int(hi_text)
    if hi > 65535:
        raise ExtensionError(f"Port `{hi_text}' not valid")
    if hi < lo:
        raise ExtensionError(f"Port range `{hi_text}' funky")
    base = None
    if slash and with_base:
        if not base_text.isdigit() or int(base_text) > 65535:
            raise ExtensionError(f"Port `{base_text}' not valid")
        base = int(base_text)
    elif slash:
        raise ExtensionError(f"Garbage after port value: `/{base_text}'")
    return _Ports(lo, hi, base)


def _need_ports(rule: Rule) -> None:
    if rule.proto not in PORT_PROTOS or rule.proto_inv:
        raise ExtensionError("Need TCP, UDP, SCTP or DCCP with port specification")


def _ipv4(text: str) -> int:
    """A dotted quad, as strict as ipaddress.IPv4Address (no leading zeros), with a quick path for the
    plain form every DNAT of a kube-proxy dump uses."""
    if QUAD.fullmatch(text):
        return int.from_bytes(socket.inet_aton(text), "big")
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        raise ExtensionError(f"Bad IP address \"{text}\"") from None


def parse_range(text: str, family: int, rule: Rule, what: str) -> NatRange:
    """``addr[-addr][:port[-port[/base]]]`` (``[v6]:port`` for IPv6), as libxt_DNAT/SNAT parse it."""
    ports: _Ports | None = None
    addr_part = text
    if family == 6 and text.startswith("["):
        addr_part, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            _need_ports(rule)
            ports = _parse_ports(rest[1:], True)
    elif family == 4 and text.count(":") == 1:
        addr_part, _, port_text = text.partition(":")
        _need_ports(rule)
        ports = _parse_ports(port_text, True)
    lo_a = hi_a = None
    if addr_part:
        a, dash, b = addr_part.partition("-")
        if family == 4:
            lo_a = _ipv4(a)
            hi_a = _ipv4(b) if dash else lo_a
        else:
            from kproxy.iptables.parser import ParameterProblem, _inet_addr

            try:
                lo_a = _inet_addr(a, family)
                hi_a = _inet_addr(b, family) if dash else lo_a
            except ParameterProblem:
                raise ExtensionError(f"Bad IP address \"{addr_part}\"") from None
    base = None
    if ports is not None and ports.base is not None:
        base = ports.base if what == "DNAT" else 0
    return NatRange(lo_a, hi_a, ports.lo if ports else None, ports.hi if ports else None, base_port=base)


def parse_to_ports(call: XtCall) -> tuple[int, int]:
    """--to-ports of MASQUERADE and REDIRECT: ``port[-port]``."""
    _need_ports(call.rule)
    if ":" in call.arg:
        raise ExtensionError("Invalid port:port syntax - use dash")
    ports = _parse_ports(call.arg, False)
    return ports.lo, ports.hi


def parse_to(call: XtCall) -> NatRange:
    """--to-destination / --to-source."""
    return parse_range(call.arg, call.family, call.rule, call.ext)


def nat_options(name: str, to: str | None, *flags: str) -> XtOptions:
    """A NAT target's table: its mandatory range (``--to-ports`` is optional), then its flags."""
    entry = XtOpt(to, CUSTOM, XTOPT_MAND, parse=parse_to) if to else XtOpt("to-ports", CUSTOM, parse=parse_to_ports)
    return XtOptions(name, entry, *(XtOpt(f, NONE) for f in flags))


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
        if r.base_port is not None:
            text += f"/{r.base_port}"
    return text


def xlate_flags(r: NatRange) -> str:
    """The NAT flags as nft statement flags: the first after a space, the others after commas."""
    words = [w for w, on in (("random", r.random), ("fully-random", r.random_fully), ("persistent", r.persistent))
             if on]
    return " " + ",".join(words) if words else ""


def xlate_nat(verb: str, r: NatRange, family: int) -> str | None:
    """``dnat to ADDR:PORTS``; a port base (``/PORT``) has no nft form."""
    if r.base_port is not None:
        return None
    return f"{verb} to {range_text(r, family)}{xlate_flags(r)}"


def xlate_ports(verb: str, r: NatRange) -> str:
    """``masquerade to :PORTS`` and ``redirect to :PORTS``."""
    ports = f" to :{_ports(r)}" if r.min_port is not None else ""
    return f"{verb}{ports}{xlate_flags(r)}"


def _flags(r: NatRange, save: bool) -> str:
    out = ""
    if r.random:
        out += " --random" if save else " random"
    if r.random_fully:
        out += " --random-fully" if save else " random-fully"
    if r.persistent:
        out += " --persistent" if save else " persistent"
    return out


def _with_flags(r: NatRange, names: set[str]) -> NatRange:
    return NatRange(r.min_addr, r.max_addr, r.min_port, r.max_port, "random" in names, "random-fully" in names,
                    "persistent" in names, r.base_port)


class _Nat(Target):
    NEEDS_CONNTRACK = True
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    TABLES = ("nat",)
    KIND = "DST"
    OPT = "to-destination"

    def __init__(self, rng: NatRange, family: int) -> None:
        self.range, self.family = rng, family

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> _Nat:
        if len(opts) == 1 and opts[0].name == cls.OPT and not opts[0].invert:   # the usual lone range
            return cls(parse_range(opts[0].values[0], family, rule, cls.name), family)
        got = cls.OPTIONS.parse_all(opts, family, rule)
        return cls(_with_flags(got.get(cls.OPT), got.seen()), family)

    def save(self) -> str:
        return f"-j {self.name} --{self.OPT} {range_text(self.range, self.family)}" + _flags(self.range, True)

    def listing(self, numeric: bool = True) -> str:
        return f"to:{range_text(self.range, self.family)}" + _flags(self.range, False)

    def translate(self, xl: Xlate) -> str | None:
        return xlate_nat(self.name.lower(), self.range, self.family)

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        return ctx.state.node.nat.setup(pkt, self.range, self.KIND, ctx.state)


@register_target
class DnatTarget(_Nat):
    name = "DNAT"
    HOOKS = ("PREROUTING", "OUTPUT")
    OPTIONS = nat_options("DNAT", "to-destination", "random", "persistent")


@register_target
class SnatTarget(_Nat):
    name = "SNAT"
    KIND = "SRC"
    OPT = "to-source"
    HOOKS = ("POSTROUTING", "INPUT")
    OPTIONS = nat_options("SNAT", "to-source", "random", "random-fully", "persistent")


@register_target
class MasqueradeTarget(Target):
    """Source NAT to the outgoing device's address for the next hop; no address means drop."""
    NEEDS_CONNTRACK = True
    SHAREABLE = True   # no per-rule state: rules with the same options share one object

    name = "MASQUERADE"
    TABLES = ("nat",)
    HOOKS = ("POSTROUTING",)
    OPTIONS = nat_options("MASQUERADE", None, "random", "random-fully")

    def __init__(self, rng: NatRange) -> None:
        self.range = rng

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> MasqueradeTarget:
        got = cls.OPTIONS.parse_all(opts, family, rule)
        lo, hi = got.get("to-ports", (None, None))
        return cls(_with_flags(NatRange(None, None, lo, hi), got.seen()))

    def save(self) -> str:
        text = "-j MASQUERADE"
        if self.range.min_port is not None:
            text += f" --to-ports {_ports(self.range)}"
        return text + _flags(self.range, True)

    def listing(self, numeric: bool = True) -> str:
        text = "masq ports: " + _ports(self.range) if self.range.min_port is not None else ""
        return (text + _flags(self.range, False)).strip()

    def translate(self, xl: Xlate) -> str:
        return xlate_ports("masquerade", self.range)

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
    NEEDS_CONNTRACK = True
    SHAREABLE = True   # no per-rule state: rules with the same options share one object

    name = "REDIRECT"
    TABLES = ("nat",)
    HOOKS = ("PREROUTING", "OUTPUT")
    OPTIONS = nat_options("REDIRECT", None, "random")

    def __init__(self, rng: NatRange) -> None:
        self.range = rng

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> RedirectTarget:
        return MasqueradeTarget.from_options.__func__(cls, opts, family, rule)  # type: ignore[attr-defined]

    def save(self) -> str:
        text = "-j REDIRECT"
        if self.range.min_port is not None:
            text += f" --to-ports {_ports(self.range)}"
        return text + _flags(self.range, True)

    def listing(self, numeric: bool = True) -> str:
        text = "redir ports " + _ports(self.range) if self.range.min_port is not None else ""
        return (text + _flags(self.range, False)).strip()

    def translate(self, xl: Xlate) -> str:
        return xlate_ports("redirect", self.range)

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
