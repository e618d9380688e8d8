"""``kproxy node capture`` and ``node load`` of a 100,000-rule node, against the real tools' own dump time.

A kp- namespace gets a kube-proxy nat table (``rulesets.nat_ruleset``, 11 rules per Service) plus a
filter chain, about ``--rules`` rules in all, an ipset and an nft table, loaded with the real
iptables-restore. Then, each the best of ``--runs``:

- capture in this process, the time spent in the real tools (ip -j, sysctl, iptables-save -c, ...)
  measured apart from kproxy's own work (building the node and writing its file);
- ``node capture``: a fresh ``python -m kproxy`` process, as users run it (the tools included);
- ``node load``: a fresh process building the node file from the same dumps saved as files;
- interpreter start-up and imports (``kproxy node --help``).

"beyond the tools" is kproxy's own CPU in capture plus start-up; load runs no tool and counts in full.
Wall clock is printed beside CPU: on a shared machine it is the CPU stretched by the load. The
namespace is always deleted.

    .venv/bin/python bench/bench_capture.py [--rules 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kproxy.capture import Runner, capture  # noqa: E402
from kproxy.lab.netns import Netns  # noqa: E402
from rulesets import nat_ruleset  # noqa: E402

RULES_PER_SERVICE = 11


def populate(ns: Netns, rules: int) -> int:
    """The ruleset, an ipset and an nft table in ``ns``; returns the number of iptables rules."""
    services = rules // RULES_PER_SERVICE
    nat = nat_ruleset(services)
    n_nat = sum(1 for line in nat.splitlines() if line.startswith("-A"))
    flat = rules - n_nat
    filt = "*filter\n:BIG - [0:0]\n" + "".join(
        f"-A BIG -s 10.{i // 65536}.{i // 256 % 256}.{i % 256}/32 -p tcp -m tcp --dport 80 -j ACCEPT\n"
        for i in range(max(flat - 1, 0))) + "-A INPUT -j BIG\nCOMMIT\n"
    ns.run(["iptables-restore"], input=nat + filt, timeout=600)
    ns.run(["ipset", "restore"], input="create kp hash:ip\n" + "".join(f"add kp 10.50.{i // 256}.{i % 256}\n"
                                                                       for i in range(1000)))
    ns.run(["nft", "-f", "-"], input="table inet kpt {\n chain in {\n  type filter hook input priority 10;\n"
                                     "  tcp dport 443 counter accept\n }\n}\n")
    return n_nat + max(flat, 1)


def tool_commands(ns: Netns) -> list[list[str]]:
    """What ``node capture`` runs, found by running it once with the runner recording."""
    seen: list[list[str]] = []
    original = Runner.run

    def recording(self: Runner, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        seen.append(list(argv))
        return original(self, argv, check)

    Runner.run = recording  # type: ignore[method-assign]
    try:
        capture(ns.name)
    finally:
        Runner.run = original  # type: ignore[method-assign]
    return seen


def own_work(ns: Netns, node_file: Path) -> tuple[float, float, float, float]:
    """``node capture`` in this process: (tools' wall, tools' CPU, kproxy's own wall, kproxy's own CPU)."""
    from kproxy.capture import build
    from kproxy.store.chains import gc_paused
    from kproxy.store.lock import FOREVER
    from kproxy.store.session import NodeSession

    spent = [0.0, 0.0]
    original = Runner.run

    def clocked(self: Runner, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        try:
            return original(self, argv, check)
        finally:
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            spent[0] += time.perf_counter() - t0
            spent[1] += (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    Runner.run = clocked  # type: ignore[method-assign]
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        with gc_paused():
            node = build(capture(ns.name))
            session = NodeSession(node_file, True, FOREVER)
            session.node = node
            session.commit()
            session.close()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        Runner.run = original  # type: ignore[method-assign]
    return spent[0], spent[1], wall - spent[0], cpu


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of a process (CPU: its own and its children's, the tools it ran)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:8])}...: {res.stderr.strip()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return min(r[0] for r in runs), min(r[1] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    kproxy = [sys.executable, "-m", "kproxy"]
    ns = Netns.create("bcap")
    try:
        t0 = time.perf_counter()
        n = populate(ns, args.rules)
        print(f"namespace {ns.name}: {n} iptables rules loaded by the real iptables-restore in "
              f"{time.perf_counter() - t0:.1f} s")
        commands = [argv for argv in tool_commands(ns) if argv[0] != "test"]   # the dumps, not the probe for IPVS
        with tempfile.TemporaryDirectory() as tmp:
            dumps: list[str] = []
            for i, argv in enumerate(commands):
                path = Path(tmp) / f"dump{i}"
                path.write_text(ns.run(argv, timeout=600).stdout)
                kind = {"ip": "route" if "route" in argv else "addr", "sysctl": "sysctl", "iptables-save": "iptables",
                        "ip6tables-save": "ip6tables", "nft": "nft", "ipset": "ipset", "ipvsadm": "ipvs",
                        "conntrack": "conntrack"}.get(argv[0])
                if kind:
                    dumps += [f"--{kind}", str(path)]
            own, cap, load = [], [], []
            for run in range(args.runs):
                own.append(own_work(ns, Path(tmp) / f"own{run}.db"))
                cap.append(timed([*kproxy, "--node", f"{tmp}/cap{run}.db", "node", "capture", "--netns", ns.name],
                                 env))
                load.append(timed([*kproxy, "--node", f"{tmp}/load{run}.db", "node", "load", *dumps], env))
            start = best([timed([*kproxy, "node", "--help"], env) for _ in range(args.runs)])
        tools = min(own, key=lambda o: o[0])
        (sw, sc), (cw, cc), (lw, lc) = start, best(cap), best(load)
        print(f"the real tools inside capture ({len(commands)} commands): {tools[0]:.2f} s wall, {tools[1]:.2f} s CPU")
        print(f"kproxy's own work in capture (build and write): {min(o[2] for o in own):.2f} s wall, "
              f"{min(o[3] for o in own):.2f} s CPU; interpreter start-up and imports: {sw:.2f} s wall, {sc:.2f} s CPU")
        print(f"kproxy node capture as a command: {cw:.2f} s wall, {cc:.2f} s CPU (the tools' included)")
        print(f"kproxy node load (from the dump files) as a command: {lw:.2f} s wall, {lc:.2f} s CPU")
        beyond = min(o[3] for o in own) + sc
        print(f"target (at most 3 s beyond the tools): capture {beyond:.2f} s CPU beyond "
              f"({'met' if beyond <= 3 else 'NOT met'}), load {lc:.2f} s CPU ({'met' if lc <= 3 else 'NOT met'})")
    finally:
        ns.delete()


if __name__ == "__main__":
    main()
