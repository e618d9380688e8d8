"""CPU seconds of tool commands on a node file holding a kube-proxy ruleset of 100 and 10,000 Services.

Two nodes per size: ``nft`` (the nftables proxier's ``ip kube-proxy`` table from ``nft_rulesets``:
220,023 rules at 10,000 Services) and ``iptables`` (the iptables proxier's nat table from
``rulesets.nat_ruleset``). On each, a listing command and the changing commands a user runs, each in a
fresh ``python -m kproxy`` process as users run it; the figure is the child's CPU time (user + system),
the least of ``--runs`` rounds (each round runs every command of the node in turn), and ``ratio`` is a
command's figure over the listing command's on the same node (what a change costs beyond reading it).

    .venv/bin/python bench/bench_node_cli.py [--sizes 100,10000] [--runs 3] [--src PATH]

``--src`` runs another checkout's ``src`` (e.g. main's, for a before/after comparison).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nft_rulesets import kube_proxy_script  # noqa: E402
from rulesets import nat_ruleset  # noqa: E402

SMALL_NFT = """add element ip kube-proxy cluster-ips { 10.0.9.9 }
add rule ip kube-proxy services ip daddr 10.0.9.9 drop
"""
SMALL_RESTORE = "*nat\n:KUBE-SVC-BENCH - [0:0]\n-A KUBE-SVC-BENCH -j RETURN\nCOMMIT\n"


class Runner:
    def __init__(self, src: Path) -> None:
        self.env = dict(os.environ, PYTHONPATH=str(src))

    def cpu(self, node: Path, argv: list[str], stdin: str | None = None, ok: tuple[int, ...] = (0,)) -> float:
        """CPU seconds of one ``python -m kproxy --node NODE ARGV`` process."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        res = subprocess.run([sys.executable, "-m", "kproxy", "--node", str(node), *argv], input=stdin,
                             capture_output=True, text=True, env=self.env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode not in ok:
            raise SystemExit(f"{argv}: exit {res.returncode}: {res.stderr}")
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    def out(self, node: Path, argv: list[str]) -> str:
        res = subprocess.run([sys.executable, "-m", "kproxy", "--node", str(node), *argv],
                             capture_output=True, text=True, env=self.env, check=True)
        return res.stdout


def added_rule(r: Runner, node: Path) -> list[str]:
    """A rule added now (not timed): the delete command deletes it by its handle."""
    r.out(node, ["nft", "add", "rule", "ip", "kube-proxy", "services", "ip", "daddr", "10.0.8.8", "drop"])
    handles = re.findall(r"# handle (\d+)", r.out(node, ["nft", "-a", "list", "chain", "ip", "kube-proxy", "services"]))
    return ["nft", "delete", "rule", "ip", "kube-proxy", "services", "handle", handles[-1]]


NFT_COMMANDS: list[tuple[str, Any, str | None]] = [
    ("nft list tables", ["nft", "list", "tables"], None),
    ("nft add element", ["nft", "add", "element", "ip", "kube-proxy", "cluster-ips", "{", "10.0.9.1", "}"], None),
    ("nft add rule", ["nft", "add", "rule", "ip", "kube-proxy", "services", "ip", "daddr", "10.0.9.2", "drop"], None),
    ("nft add rule ... jump (walks the jumps)", ["nft", "add", "rule", "ip", "kube-proxy", "services", "ip", "daddr",
                                                "10.0.9.3", "jump", "mark-for-masquerade"], None),
    ("nft delete rule ... handle N", added_rule, None),
    ("nft flush chain", ["nft", "flush", "chain", "ip", "kube-proxy", "nodeport-endpoints-check"], None),
    ("nft -f small.nft (2 lines)", ["nft", "-f", "-"], SMALL_NFT),
    ("iptables -A INPUT (nft node)", ["iptables", "-A", "INPUT", "-s", "10.1.2.3", "-j", "ACCEPT"], None),
]


IPT_COMMANDS: list[tuple[str, Any, str | None]] = [
    ("iptables -t nat -S KUBE-SERVICES", ["iptables", "-t", "nat", "-S", "KUBE-SERVICES"], None),
    ("iptables -A INPUT", ["iptables", "-A", "INPUT", "-s", "10.1.2.3", "-j", "ACCEPT"], None),
    ("iptables -t nat -A KUBE-MARK-MASQ", ["iptables", "-t", "nat", "-A", "KUBE-MARK-MASQ", "-s", "10.1.2.3",
                                           "-j", "RETURN"], None),
    ("iptables-restore --noflush (3 lines)", ["iptables-restore", "--noflush"], SMALL_RESTORE),
    ("ipset add", ["ipset", "-exist", "add", "bench", "10.9.9.9"], None),
    ("ipvsadm -A", ["ipvsadm", "-A", "-t", "10.0.0.1:80", "-s", "rr"], None),
    ("nft add element (iptables node)", ["nft", "add", "element", "ip", "b", "s", "{", "10.9.9.9", "}"], None),
]


def measure(r: Runner, tmp: Path, sizes: list[int], runs: int, kinds: list[str]) -> None:
    print(f"{'node':<9} {'Services':>8}  {'command':<40} {'CPU s':>7} {'ratio':>6}")
    for n in sizes:
        nft, ipt = tmp / f"nft{n}.db", tmp / f"ipt{n}.db"
        if "nft" in kinds:
            script = tmp / f"nft{n}.nft"
            script.write_text(kube_proxy_script(n))
            r.cpu(nft, ["nft", "-f", str(script)])
        if "iptables" in kinds:
            r.cpu(ipt, ["iptables-restore"], nat_ruleset(n))
            r.cpu(ipt, ["ipset", "create", "bench", "hash:ip"])
            r.cpu(ipt, ["nft", "-f", "-"], "add table ip b\nadd set ip b s { type ipv4_addr; }\n")
            r.cpu(ipt, ["ipvsadm", "-A", "-t", "10.0.0.1:80", "-s", "rr"])
        for kind, node, commands in (("nft", nft, NFT_COMMANDS), ("iptables", ipt, IPT_COMMANDS)):
            if kind not in kinds:
                continue
            # rounds of every command in turn, so that each command's least figure comes from the same
            # stretch of time as the listing's (other work on the machine slows all of them)
            best = [float("inf")] * len(commands)
            for _ in range(runs):
                for i, (label, argv, stdin) in enumerate(commands):
                    ok = (0, 1) if label == "ipvsadm -A" else (0,)      # (the service exists after the first)
                    best[i] = min(best[i], r.cpu(node, argv(r, node) if callable(argv) else argv, stdin, ok))
            for (label, _, _), cpu in zip(commands, best):
                print(f"{kind:<9} {n:>8}  {label:<40} {cpu:>7.2f} {cpu / best[0]:>6.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,10000")
    ap.add_argument("--nodes", default="nft,iptables", help="which nodes to measure")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "src"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kp-bench-node-cli-"))
    try:
        measure(Runner(Path(args.src)), tmp, [int(s) for s in args.sizes.split(",")], args.runs,
                args.nodes.split(","))
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
