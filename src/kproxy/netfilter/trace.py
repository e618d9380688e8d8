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


SCRATCH = TraceEvent("note")     # handed back for an event nobody keeps


class Trace:
    """An ordered list of events for one packet (and the packets it causes, e.g. a reject)."""

    # The connection-table lookups hooks made, as (table, key, what was found), when someone asked
    # for them (the flow cache, learning a flow); None otherwise.
    lookups: list[tuple[Any, Any, Any]] | None = None
    # True when the texts do not matter (the flow cache's recording): producers skip composing them.
    quiet = False
    # When a list (the flow cache's recording): the rules and built-in chains (policies) that counted
    # the packet, as (table name, rule or chain), kept here instead of as events.
    counted: list[tuple[str, Any]] | None = None

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []

    def note_lookup(self, table: Any, key: Any, found: Any) -> None:
        if self.lookups is not None:
            self.lookups.append((table, key, found))

    def add(self, kind: str, **fields: Any) -> TraceEvent:
        ev = TraceEvent(kind, **fields)
        self.events.append(ev)
        return ev

    def of_kind(self, kind: str) -> list[TraceEvent]:
        return [e for e in self.events if e.kind == kind]


def render_text(trace: Trace) -> str:
    """A readable, indented account of the events, one line each, in the order they happened."""
    lines: list[str] = []
    for e in trace.events:
        k = e.kind
        if k == "packet":
            lines.append(f"packet    {e.text}")
        elif k == "hook":
            where = ", ".join(f"{d} {v}" for d, v in e.detail.items() if v)
            lines.append(f"{e.hook}" + (f" ({where})" if where else "") + f": {e.text}")
        elif k == "chain":
            lines.append(f"  {e.table:<8} {e.chain}")
        elif k == "rule":
            verdict = f"  => {e.verdict}" if e.verdict and e.verdict != "continue" else ""
            lines.append(f"  {e.table:<8} {e.chain} #{e.rule}: {e.text}{verdict}")
        elif k == "policy":
            lines.append(f"  {e.table:<8} {e.chain} policy {e.verdict}")
        elif k == "return":
            lines.append(f"  {e.table:<8} {e.chain} {e.text or 'RETURN'}")
        elif k in ("nat", "conntrack", "ipvs", "log", "note"):
            lines.append(f"  {k:<8} {e.text}")
        elif k == "route":
            lines.append(f"routing   {e.text}")
        elif k == "fate":
            lines.append(f"fate      {e.verdict}: {e.text}")
        else:
            lines.append(f"  {k:<8} {e.text}")
    return "\n".join(lines)
