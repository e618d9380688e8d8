"""One doctor run in checklist order, and its text and JSON forms.

The order is the seed's workflow: the Service and its selector, its endpoints, the mode's rules,
user rules made blind by DNAT, conntrack, sysctls, and last the packets themselves (which change
conntrack, so everything that reads the table runs before them).
"""

from __future__ import annotations

import json

from kproxy.doctor.checks import check_conntrack, check_endpoints, check_service, check_sysctls
from kproxy.doctor.findings import ERROR, INFO, OK, WARN, Report
from kproxy.doctor.paths import run_paths
from kproxy.doctor.rules import (
    check_blind_nft_rules,
    check_blind_rules,
    check_rules,
    detect_mode,
    severity_of_mode,
)
from kproxy.doctor.target import Case, resolve

MARKS = {OK: "ok", INFO: "--", WARN: "!!", ERROR: "XX"}


def diagnose(case: Case) -> Report:
    """Resolve the target and run every check; TargetError for a target that does not parse."""
    resolve(case)
    mode = detect_mode(case)
    report = Report(case.target, mode)
    report.add(severity_of_mode(mode, getattr(case.cfg, "mode", "") if case.cfg_given else ""))
    check_service(case, report)
    check_endpoints(case, report)
    check_rules(case, report, mode)
    check_blind_rules(case, report, mode)
    check_blind_nft_rules(case, report, mode)
    check_conntrack(case, report)
    check_sysctls(case, report)
    run_paths(case, report)
    return report


def render_text(report: Report) -> str:
    lines = [f"doctor {report.target} (kube-proxy mode: {report.mode})", ""]
    for f in report.findings:
        lines.append(f"[{MARKS[f.severity]}] {f.check}: {f.title}")
        for e in f.evidence:
            where = f"{e.where}: " if e.where else ""
            body = e.text.splitlines() or [""]
            lines.append(f"       {where}{body[0]}")
            lines.extend(f"         {ln}" for ln in body[1:])
        if f.fix:
            lines.append(f"     fix: {f.fix}")
    lines.append("")
    reached = sum(p.ok for p in report.paths)
    lines.append(f"paths: {reached} of {len(report.paths)} reach an endpoint")
    for p in report.paths:
        end = f"-> {p.reached}" if p.ok else f"STOPPED at {p.stopped_at}"
        lines.append(f"  {'ok' if p.ok else 'XX'} {p.name}: {end}")
    lines.append("")
    lines.append("healthy" if report.healthy else f"NOT healthy: {len(report.errors)} error(s)")
    return "\n".join(lines)


def render_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=1)
