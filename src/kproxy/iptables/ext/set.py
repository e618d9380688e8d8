"""The set match and the SET target: iptables rules that look up and change the node's ip sets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kproxy.iptables.extension import (
    XT_CONTINUE,
    ExtensionError,
    Match,
    Opt,
    RuleContext,
    Target,
    register_match,
    register_target,
)
from kproxy.iptables.xtoptions import (
    CUSTOM,
    NONE,
    STRING,
    XTOPT_INVERT,
    XTOPT_MULTI,
    XtCall,
    XtOpt,
    XtOptions,
    two_args,
)
from kproxy.iptables.xtutil import c_strtoui
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule
    from kproxy.node import Node

COUNTERS = ("packets-eq", "packets-lt", "packets-gt", "bytes-eq", "bytes-lt", "bytes-gt")
FREE = XTOPT_INVERT | XTOPT_MULTI      # libxt_set's own parse functions check little


def parse_set(call: XtCall) -> tuple[str, list[str]]:
    """``NAME src[,dst...]``: the set and the directions to look up."""
    name, flags = two_args(call)[:2]
    return name, _flags(flags)


def parse_timeout(call: XtCall) -> int:
    got = c_strtoui(call.arg, 0, 0xFFFFFFFE)
    if got is None:
        raise ExtensionError("Invalid value for option --timeout or out of range 0-4294967294")
    return got


def _flags(text: str) -> list[str]:
    flags = text.split(",")
    if not flags or any(f not in ("src", "dst") for f in flags) or len(flags) > 6:
        raise ExtensionError("You must specify (the comma separated list of) 'src' or 'dst'.")
    return flags


def _check_set(node: Node, name: str) -> None:
    registry = getattr(node, "ipsets", None)
    if registry is None or registry.get(name) is None:
        raise ExtensionError(f"Set {name} doesn't exist.\n")


def _key_expression(dims: tuple[str, ...], flags: list[str]) -> tuple[str, str] | None:
    """IpSet.packet_key as an expression over ``p`` (a guard that must hold first, and the element),
    for sets of addresses and ports; None for the others (nets need the longest prefix)."""
    if not dims or len(flags) < len(dims):
        return None
    guard = ""
    parts = []
    for dim, d in zip(dims, flags, strict=False):
        if dim == "ip":
            parts.append(f"p.{d}")
        elif dim == "port":
            parts.append(f"(p.proto, p.{d[0]}port)")
        elif dim == "bport":
            guard = "p.proto in (6, 17, 132, 136) and "
            parts.append(f"p.{d[0]}port")
        else:
            return None
    return guard, f"({', '.join(parts)},)"


@register_match
class SetMatch(Match):
    name = "set"
    OPTIONS = XtOptions(
        "set",
        XtOpt("match-set", CUSTOM, XTOPT_INVERT, nvals=2, parse=parse_set,
              once="--match-set can be specified only once"),
        *(XtOpt(n, NONE, FREE) for n in ("return-nomatch", "update-counters", "update-subcounters")),
        *(XtOpt(n, STRING, FREE) for n in COUNTERS),
    )

    def __init__(self, set_name: str, flags: list[str], invert: bool, extra: list[Opt]) -> None:
        self.set_name, self.flags, self.invert, self.extra = set_name, flags, invert, extra
        self.dims: tuple[str, ...] = ()      # the set's element parts, learnt when a commit checks the rule

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> SetMatch:
        got = cls.OPTIONS.parse(opts, family, rule)
        if "match-set" not in got:
            raise ExtensionError("You must specify `--match-set' with proper arguments")
        name, flags = got.get("match-set")
        return cls(name, flags, got.invert("match-set"), [o for o in opts if o.name != "match-set"])

    def check(self, node: Node) -> None:
        _check_set(node, self.set_name)
        # While a committed rule holds the set it can be neither destroyed nor renamed, and a swap
        # needs a set of the same type: its parts stay what they are now.
        self.dims = tuple(node.ipsets.need(self.set_name).dims)

    def inline(self) -> tuple[str, tuple[Any, ...]] | None:
        """Membership of a set whose element is made of addresses and ports (hash:ip, hash:ip,port,
        hash:ip,port,ip, bitmap:port): the packet's key looked up in the set's members. A set with
        timeouts or counters (a swap may bring one) takes the full match."""
        key = _key_expression(self.dims, self.flags)
        if key is None or self.invert or self.extra:
            return None
        guard, element = key
        return (f"{guard}(s_ := c.state.node.ipsets.sets.get({{}})) is not None and "
                f"({element} in s_.members if s_.timeout is None and not s_.counters else {{}}(p, c))",
                (self.set_name, self.matches))

    def set_names(self) -> tuple[str, ...]:
        return (self.set_name,)

    def save(self) -> str:
        text = f"-m set {'! ' if self.invert else ''}--match-set {self.set_name} {','.join(self.flags)}"
        for o in self.extra:
            text += f" {'! ' if o.invert else ''}--{o.name}" + "".join(f" {v}" for v in o.values)
        return text

    def listing(self, numeric: bool = True) -> str:
        text = f"{'! ' if self.invert else ''}match-set {self.set_name} {','.join(self.flags)}"
        for o in self.extra:
            text += f" {'! ' if o.invert else ''}{o.name}" + "".join(f" {v}" for v in o.values)
        return text

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        reg = ctx.node.ipsets
        s = reg.get(self.set_name) if reg is not None else None
        if s is None:
            return self.invert
        hit = s.matches_packet(pkt, self.flags, ctx.now, reg)
        if hit and s.counters and s.type != "list:set" and \
                not any(o.name == "update-counters" and o.invert for o in self.extra):
            key = s.packet_key(pkt, self.flags)      # only a set with counters needs the key twice
            entry = s.members.get(key) if key is not None else None
            if entry is not None:
                entry.packets += 1
                entry.bytes += pkt.length
        return hit != self.invert


@register_target
class SetTarget(Target):
    name = "SET"
    OPTIONS = XtOptions(
        "SET",
        *(XtOpt(n, CUSTOM, FREE, nvals=2, parse=parse_set) for n in ("add-set", "del-set", "map-set")),
        XtOpt("exist", NONE, FREE), XtOpt("timeout", CUSTOM, FREE, parse=parse_timeout),
    )

    def __init__(self, op: str, set_name: str, flags: list[str], exist: bool, timeout: int | None) -> None:
        self.op, self.set_name, self.flags, self.exist, self.timeout = op, set_name, flags, exist, timeout

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> SetTarget:
        got = cls.OPTIONS.parse(opts, family, rule)
        ops = [o for o in ("add-set", "del-set") if o in got]
        if len(ops) != 1:
            raise ExtensionError("You must specify either `--add-set' or `--del-set'")
        name, flags = got.get(ops[0])
        return cls(ops[0], name, flags, "exist" in got, got.get("timeout"))

    def check(self, node: Node) -> None:
        _check_set(node, self.set_name)

    def set_names(self) -> tuple[str, ...]:
        return (self.set_name,)

    def save(self) -> str:
        text = f"-j SET --{self.op} {self.set_name} {','.join(self.flags)}"
        if self.exist:
            text += " --exist"
        if self.timeout is not None:
            text += f" --timeout {self.timeout}"
        return text

    def listing(self, numeric: bool = True) -> str:
        text = f"{self.op} {self.set_name} {','.join(self.flags)}"
        if self.exist:
            text += " exist"
        if self.timeout is not None:
            text += f" timeout {self.timeout}"
        return text

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        reg = ctx.node.ipsets
        s = reg.get(self.set_name) if reg is not None else None
        if s is None:
            return XT_CONTINUE
        key = s.packet_key(pkt, self.flags)
        if key is not None:
            try:
                if self.op == "add-set":
                    s.add(key, ctx.now, self.timeout, exist=True)
                else:
                    s.delete(key, ctx.now, exist=True)
            except Exception:  # noqa: BLE001 - a full set: the kernel ignores the failure too
                pass
        return XT_CONTINUE
