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
from kproxy.packet import Packet


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
    OPTIONS = {"match-set": 2, "return-nomatch": 0, "update-counters": 0, "update-subcounters": 0,
               "packets-eq": 1, "packets-lt": 1, "packets-gt": 1, "bytes-eq": 1, "bytes-lt": 1, "bytes-gt": 1}

    def __init__(self, set_name: str, flags: list[str], invert: bool, extra: list[Opt]) -> None:
        self.set_name, self.flags, self.invert, self.extra = set_name, flags, invert, extra

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> SetMatch:
        ms = [o for o in opts if o.name == "match-set"]
        if not ms:
            raise ExtensionError("You must specify `--match-set' with proper arguments")
        return cls(ms[0].values[0], _flags(ms[0].values[1]), ms[0].invert, [o for o in opts if o.name != "match-set"])

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
    OPTIONS = {"add-set": 2, "del-set": 2, "exist": 0, "timeout": 1, "map-set": 2}

    def __init__(self, op: str, set_name: str, flags: list[str], exist: bool, timeout: int | None) -> None:
        self.op, self.set_name, self.flags, self.exist, self.timeout = op, set_name, flags, exist, timeout

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> SetTarget:
        ops = [o for o in opts if o.name in ("add-set", "del-set")]
        if len(ops) != 1:
            raise ExtensionError("You must specify either `--add-set' or `--del-set'")
        timeout = next((int(o.values[0]) for o in opts if o.name == "timeout"), None)
        return cls(ops[0].name, ops[0].values[0], _flags(ops[0].values[1]), any(o.name == "exist" for o in opts),
                   timeout)

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
