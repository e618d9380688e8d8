"""Commands on a node file holding 100,000 rules, each a fresh ``python -m kproxy`` process as users run it.

Two big nodes: ``kube`` (a kube-proxy nat table: 91,671 rules in 33,343 chains, from
``rulesets.nat_ruleset``) and ``flat`` (one filter chain of 100,000 rules). Each command is timed on
the big node and on a small one (a node file with one rule): the difference is what the big node
costs the command beyond its own work, the small node's time being interpreter start-up, imports and
the command itself. Every figure is the best of ``--runs`` runs (wall clock, with the child's CPU
time beside it), as the machine is shared.

    .venv/bin/python bench/bench_node_file.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rulesets import nat_ruleset  # noqa: E402

SERVICES = 8333        # 91,671 nat rules
FLAT = 100_000

# (label, node kind, argv): "any" runs on both big nodes; a writer changes the node a little each run.
COMMANDS = [
    ("iptables -S INPUT (rules elsewhere)", "any", ["iptables", "-S", "INPUT"]),
    ("iptables -t nat -S KUBE-SVC-… (one chain)", "kube", ["iptables", "-t", "nat", "-S", "KUBE-SVC-0000000000000000"]),
    ("conntrack -C", "any", ["conntrack", "-C"]),
    ("ipset list", "any", ["ipset", "list"]),
    ("ipvsadm -L -n", "any", ["ipvsadm", "-L", "-n"]),
    ("iptables -A INPUT (another table)", "kube", ["iptables", "-A", "INPUT", "-s", "10.1.2.3", "-j", "ACCEPT"]),
    ("iptables -t nat -A KUBE-MARK-MASQ (big table)", "kube",
     ["iptables", "-t", "nat", "-A", "KUBE-MARK-MASQ", "-s", "10.1.2.3", "-j", "RETURN"]),
    ("iptables -t nat -N + -A (new chain, big table)", "kube", None),
    ("iptables -A BIG (the 100,000-rule chain)", "flat", ["iptables", "-A", "BIG", "-s", "10.1.2.3", "-j", "DROP"]),
    ("iptables -A INPUT (big table, other chain)", "flat", ["iptables", "-A", "INPUT", "-s", "10.1.2.3", "-j", "DROP"]),
]


def flat_ruleset(rules: int) -> str:
    return "*filter\n:BIG - [0:0]\n" + "".join(
        f"-A BIG -s 10.{i // 65536}.{i // 256 % 256}.{i % 256}/32 -p tcp -m tcp --dport 80 -j ACCEPT\n"
        for i in range(rules)) + "-A INPUT -j BIG\nCOMMIT\n"


def run(node: Path, argv: list[str], stdin: str | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of one ``python -m kproxy`` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "kproxy", "--node", str(node), *argv], input=stdin,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"{argv}: exit {res.returncode}: {res.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def best(node: Path, argv: list[str] | None, runs: int, n: list[int]) -> tuple[float, float]:
    out = []
    for _ in range(runs):
        if argv is None:          # a new chain and a rule in it: two commands
            n[0] += 1
            a = run(node, ["iptables", "-t", "nat", "-N", f"NEW-{n[0]}"])
            b = run(node, ["iptables", "-t", "nat", "-A", f"NEW-{n[0]}", "-j", "RETURN"])
            out.append((a[0] + b[0], a[1] + b[1]))
        else:
            out.append(run(node, argv))
    return min(w for w, _ in out), min(c for _, c in out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kp-bench-node-"))
    try:
        measure(tmp, args.runs)
    finally:
        shutil.rmtree(tmp)


def measure(tmp: Path, runs: int) -> None:
    nodes = {"kube": tmp / "kube.db", "flat": tmp / "flat.db", "small": tmp / "small.db"}
    flat = flat_ruleset(FLAT)
    print(f"node files in {tmp}")
    for kind, text in (("kube", nat_ruleset(SERVICES)), ("flat", flat)):
        wall, cpu = run(nodes[kind], ["iptables-restore"], text)
        print(f"create {kind}: iptables-restore of {text.count(chr(10) + '-A ')} rules into a new node file: "
              f"{wall:.2f} s wall, {cpu:.2f} s CPU; file {os.path.getsize(nodes[kind]) / 1e6:.1f} MB")
    for kind in ("kube", "flat"):
        wall, cpu = best(nodes[kind], ["iptables-save"], 1, [0])
        print(f"iptables-save of {kind}: {wall:.2f} s wall, {cpu:.2f} s CPU")
    run(nodes["small"], ["iptables-restore"], nat_ruleset(1))       # the same chains, a dozen rules
    run(nodes["small"], ["iptables-restore", "-n"], flat_ruleset(1))
    counter = [0]
    print(f"\n{'command':<50} {'node':<5} {'big: wall':>10} {'cpu':>6} {'small: wall':>12} {'cpu':>6} "
          f"{'beyond: wall':>13} {'cpu':>6}")
    for label, kind, argv in COMMANDS:
        for k in (("kube", "flat") if kind == "any" else (kind,)):
            big_w, big_c = best(nodes[k], argv, runs, counter)
            small_w, small_c = best(nodes["small"], argv, runs, counter)
            print(f"{label:<50} {k:<5} {big_w:>10.3f} {big_c:>6.3f} {small_w:>12.3f} {small_c:>6.3f} "
                  f"{big_w - small_w:>13.3f} {big_c - small_c:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
