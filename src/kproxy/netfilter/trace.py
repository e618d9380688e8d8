"""Trace events: what the engine did to one packet, step by step.

The engine and every subsystem append events here when a trace is attached to the hook state;
renderers turn them into text (like ``nft monitor trace``) or JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class TraceEvent:
    """One step. ``kind`` is one of: packet, hook, rule, policy, return, verdict, nat, conntrack,
    route, ipvs, log, fate, note."""

    kind: str
    hook: str = ""
    table: str = ""
    chain: str = ""
    rule: int = 0            # 1-based rule number in the chain, 0 when not about a rule
    text: str = ""           # the rule in iptables-save form, or a human sentence
    verdict: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", 0, {}) or k == "kind"}


class Trace:
    """An ordered list of events for one packet (and the packets it causes, e.g. a reject)."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []

    def add(self, kind: str, **fields: Any) -> TraceEvent:
        ev = TraceEvent(kind, **fields)
        self.events.append(ev)
        return ev

    def of_kind(self, kind: str) -> list[TraceEvent]:
        return [e for e in self.events if e.kind == kind]
