"""What a doctor check found: a verdict on one question, the evidence behind it and what to do.

Evidence is kept structured (an object field, a rule with its table/chain/position, a trace, a
conntrack entry) so the text, JSON and HTML reports show the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OK, INFO, WARN, ERROR = "ok", "info", "warning", "error"
SEVERITIES = (OK, INFO, WARN, ERROR)


@dataclass
class Evidence:
    """One fact: ``kind`` is object, rule, trace, conntrack, sysctl or note; ``text`` is what to show."""

    kind: str
    text: str
    where: str = ""                       # "EndpointSlice default/web-x endpoints[0].conditions.ready",
    #                                       "filter INPUT #1", "conntrack", ...
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "text": self.text}
        if self.where:
            d["where"] = self.where
        if self.data:
            d["data"] = self.data
        return d


@dataclass
class Finding:
    """The answer to one checklist question."""

    check: str                            # service, endpoints, rules, path, user-rule, conntrack, sysctl, ...
    severity: str
    title: str
    evidence: list[Evidence] = field(default_factory=list)
    fix: str = ""

    def add(self, kind: str, text: str, where: str = "", **data: Any) -> Finding:
        self.evidence.append(Evidence(kind, text, where, data))
        return self

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"check": self.check, "severity": self.severity, "title": self.title,
                             "evidence": [e.as_dict() for e in self.evidence]}
        if self.fix:
            d["fix"] = self.fix
        return d


@dataclass
class PathResult:
    """One packet sent towards the Service: where from, how it ended, and its trace events."""

    name: str                             # "from pod default/client", "from outside via NodePort 30080", ...
    spec: str                             # the packet, as ``kproxy trace`` options
    fate: str
    summary: str
    reached: str = ""                     # the endpoint (ip:port) it reached, "" when it did not
    stopped_at: str = ""                  # the rule or decision that stopped it
    events: list[dict[str, Any]] = field(default_factory=list)
    trace_text: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.reached)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "packet": self.spec, "fate": self.fate, "summary": self.summary,
                "reached": self.reached or None, "stopped_at": self.stopped_at or None, "events": self.events}


@dataclass
class Report:
    """Everything doctor found for one target."""

    target: str
    mode: str
    findings: list[Finding] = field(default_factory=list)
    paths: list[PathResult] = field(default_factory=list)

    def add(self, finding: Finding) -> Finding:
        self.findings.append(finding)
        return finding

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def healthy(self) -> bool:
        """Every path reached an endpoint and no check found an error: doctor's exit status 0."""
        return all(p.ok for p in self.paths) and not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "mode": self.mode, "healthy": self.healthy,
                "findings": [f.as_dict() for f in self.findings], "paths": [p.as_dict() for p in self.paths]}
