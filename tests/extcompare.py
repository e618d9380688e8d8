"""Table-driven comparison of extension command lines with the real iptables/ip6tables 1.8.9.

Each case is one argv handed to the real tool in a kp- namespace and to ``run_iptables``: the exit
status, stdout and stderr must agree, then every listing (-S, -L with -n/-v/-x) and iptables-save of
the tables the cases touched. Mismatches are collected so one run shows them all.
"""

from __future__ import annotations

from typing import Any

from kproxy.iptables.commands import run_iptables
from kproxy.iptables.save import save
from kproxy.iptables.state import IptablesState

LISTINGS = (["-S"], ["-L", "-n", "-v"], ["-L", "-n", "-v", "-x"], ["-L"], ["-L", "-v"])


def strip_header(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


def tables_of(cases: list[list[str]]) -> list[str]:
    tables = ["filter"]
    for argv in cases:
        if "-t" in argv:
            name = argv[argv.index("-t") + 1]
            if name not in tables:
                tables.append(name)
    return tables


def mismatches(ns: Any, family: int, cases: list[list[str]]) -> list[tuple[Any, ...]]:
    """Every case, listing and save where our tool and the real one differ (empty: they agree)."""
    prog = "iptables" if family == 4 else "ip6tables"
    state = IptablesState(family)
    bad: list[tuple[Any, ...]] = []
    for argv in cases:
        theirs = ns.run([prog, *argv], check=False)
        ours = run_iptables(argv, state, family)
        if ours != (theirs.returncode, theirs.stdout, theirs.stderr):
            bad.append((argv, ours, (theirs.returncode, theirs.stdout, theirs.stderr)))
    for table in tables_of(cases):
        for listing in LISTINGS:
            argv = ["-t", table, *listing]
            theirs = ns.run([prog, *argv], check=False)
            ours = run_iptables(argv, state, family)
            if ours != (theirs.returncode, theirs.stdout, theirs.stderr):
                bad.append((argv, ours[1], theirs.stdout))
    real = strip_header(ns.run([f"{prog}-save"]).stdout)
    mine = save(state, header=False)
    if mine != real:
        bad.append(("save", mine, real))
    return bad


def restore_mismatch(ns: Any, family: int, text: str) -> tuple[str, str] | None:
    """Load a dump into the kernel and into our state; None when both save it back identically."""
    from kproxy.iptables.restore import restore

    prog = "iptables" if family == 4 else "ip6tables"
    ns.run([f"{prog}-restore"], input=text)
    real = strip_header(ns.run([f"{prog}-save", "-c"]).stdout)
    state = IptablesState(family)
    restore(text, state)
    mine = save(state, counters=True, header=False)
    return None if mine == real else (mine, real)
