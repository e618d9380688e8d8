"""The set match and the SET target: iptables rules that look up and change the node's ip sets."""

from __future__ import annotations

from typing import Any

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


def _check_set(node: Any, name: str) -> None:
    registry = getattr(node, "ipsets", None)
    if registry is None or registry.get(name) is None:
        raise ExtensionError(f"Set {name} doesn't exist.\n")


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

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> SetMatch:
        got = cls.OPTIONS.parse(opts, family, rule)
        if "match-set" not in got:
            raise ExtensionError("You must specify `--match-set' with proper arguments")
        name, flags = got.get("match-set")
        return cls(name, flags, got.invert("match-set"), [o for o in opts if o.name != "match-set"])

    def check(self, node: Any) -> None:
        _check_set(node, self.set_name)

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
        key = s.packet_key(pkt, self.flags) if s.type != "list:set" else None
        if hit and key is not None and not any(o.name == "update-counters" and o.invert for o in self.extra) \
                and s.counters:
            entry = s.members.get(key)
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
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> SetTarget:
        got = cls.OPTIONS.parse(opts, family, rule)
        ops = [o for o in ("add-set", "del-set") if o in got]
        if len(ops) != 1:
            raise ExtensionError("You must specify either `--add-set' or `--del-set'")
        name, flags = got.get(ops[0])
        return cls(ops[0], name, flags, "exist" in got, got.get("timeout"))

    def check(self, node: Any) -> None:
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
