"""``kproxy nft list`` on a node holding iptables rules, against nft 1.0.6 listing iptables-nft 1.8.9's tables.

Each case runs the same iptables commands and restores with the real iptables-nft in a ``kp-`` namespace
and with kproxy on an emulated node, then compares ``nft list ruleset`` (and ``list table``/``list
chain``, ``-a``, ``-s``) byte for byte, stdout and the stderr warnings. Commands the kernel refuses are
left out of both. The corpus is the translator's rule tables, random combinations of them, and the
example dumps (a kube-proxy node, a production-like host); the share of rule lines rendered exactly is
printed (``pytest -s``) before the assertion.
"""

from __future__ import annotations

import difflib
import json
import random
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tests.test_iptables_translate import HEAD, MATCH, PROTO, RULES4, RULES6, TARGET

from kproxy.lab.netns import Netns, kernel_lab_available
from kproxy.nftables.cli import run_nft
from kproxy.nftables.model import Ruleset
from kproxy.nftables.xtables import XtView
from kproxy.nftables.xtlayout import node_layout
from kproxy.node import Node, NodeError

ROOT = Path(__file__).resolve().parents[1]
HANDLE = re.compile(r'("handle":|# handle) \d+')
SBIN = "/usr/sbin"
TOOL = {4: f"{SBIN}/iptables-nft", 6: f"{SBIN}/ip6tables-nft"}
RESTORE = {4: f"{SBIN}/iptables-nft-restore", 6: f"{SBIN}/ip6tables-nft-restore"}

# An op: ("cmd", family, argv) or ("restore", family, text, noflush).
Op = tuple


def _reason() -> str | None:
    why = kernel_lab_available()
    if why is None and not Path(TOOL[4]).exists():
        why = "iptables-nft is not installed"
    return why


@contextmanager
def fresh() -> Iterator[Netns]:
    """A namespace of its own, skipping the test where none can be made."""
    reason = _reason()
    if reason is not None:
        pytest.skip(reason)
    n = Netns.create("nftxt")
    try:
        yield n
    finally:
        n.delete()


@pytest.fixture(scope="module")
def ns() -> Iterator[Netns]:
    with fresh() as n:
        yield n


def kernel_apply(ns: Netns, ops: list[Op]) -> list[Op]:
    """Flush everything, run the ops in the namespace; the ops the kernel accepted."""
    ns.run([f"{SBIN}/nft", "flush", "ruleset"])
    done = []
    for op in ops:
        if op[0] == "nfacct":       # an accounting object the rules name (kube-proxy's, on nfacct kernels)
            from kproxy.backends.kernel import KernelBackend

            assert KernelBackend(netns=ns.name).nfacct_ensure(op[2])
            done.append(op)
            continue
        if op[0] == "cmd":
            proc = ns.run([TOOL[op[1]], *op[2]], check=False)
        else:
            proc = ns.run([RESTORE[op[1]], *(["--noflush"] if op[3] else [])], input=op[2], check=False)
        if proc.returncode == 0:
            done.append(op)
    return done


def emulated(ops: list[Op]) -> Node:
    node = Node()
    for op in ops:
        if op[0] == "nfacct":
            from kproxy.netfilter.nfacct import objects_of

            objects_of(node).ensure(op[2])
        elif op[0] == "cmd":
            rc, _, err = node.iptables_cmd(list(op[2]), op[1])
            assert rc == 0, (op, err)
        else:
            node.iptables_restore(op[2], op[1], noflush=op[3])
    return node


def listing(ns: Netns, node: Node, args: list[str]) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
    real = ns.run([f"{SBIN}/nft", *args], check=False)
    rc, out, err, _ = run_nft(args, Ruleset(), xt=XtView(node))
    return (real.returncode, real.stdout, real.stderr), (rc, out, err)


def rule_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("\t\t") and not ln.startswith("\t\ttype ")]


def share(real: str, ours: str) -> tuple[int, int]:
    """Rule lines equal at the same place, of the kernel's rule lines."""
    a, b = rule_lines(real), rule_lines(ours)
    return sum(x == y for x, y in zip(a, b)), len(a)


def unhandled(result: tuple[int, str, str]) -> tuple[int, str, str]:
    rc, out, err = result
    return rc, HANDLE.sub(r"\1 0", out), err


def compare(ns: Netns, ops: list[Op], args: list[str], label: str, handles: bool = True,
            all_accepted: bool = False) -> None:
    """Handles (``-a``, ``-j``) are compared only where asked: kproxy numbers a table as a fresh load of
    it would, while the kernel numbers chains and rules in the order the commands created them."""
    done = kernel_apply(ns, ops)
    assert not all_accepted or done == ops, "the kernel refused some of the input"
    node = emulated(done)
    real, ours = listing(ns, node, args)
    if not handles:
        real, ours = unhandled(real), unhandled(ours)
    same, total = share(real[1], ours[1])
    print(f"\n{label}: {same}/{total} rule lines rendered exactly")
    diff = "".join(difflib.unified_diff(real[1].splitlines(True), ours[1].splitlines(True), "nft", "kproxy"))
    assert ours[1] == real[1], diff
    assert ours == real


def rule_op(line: str, family: int) -> Op:
    argv = shlex.split(line)
    if argv[:1] == ["-t"]:
        argv = argv[:2] + (argv[2:] if argv[2] in ("-A", "-I") else ["-A", "INPUT", *argv[2:]])
    elif argv[:1] not in (["-A"], ["-I"]):       # an empty line is a rule with no match and no target
        argv = ["-A", "INPUT", *argv]
    return ("cmd", family, argv)


def corpus_ops(lines: list[str], family: int) -> list[Op]:
    return [("cmd", family, ["-N", "FOO"])] + [rule_op(line, family) for line in lines]


@pytest.mark.kernel
def test_the_translator_corpus_lists_as_nft_does_ipv4(ns):
    compare(ns, corpus_ops(RULES4, 4), ["list", "ruleset"], "RULES4")


@pytest.mark.kernel
def test_the_translator_corpus_lists_as_nft_does_ipv6(ns):
    compare(ns, corpus_ops(RULES6, 6), ["list", "ruleset"], "RULES6")


@pytest.mark.kernel
@pytest.mark.parametrize("seed", [20261207, 1059335333, random.randrange(1 << 30)])   # 1059335333 draws an empty rule
def test_random_rules_list_as_nft_does(ns, seed):
    rnd = random.Random(seed)
    lines = []
    for _ in range(150):
        parts = rnd.sample(HEAD, rnd.randint(0, 2)) + [rnd.choice(PROTO + [""])] + \
            rnd.sample(MATCH, rnd.randint(0, 2)) + [rnd.choice(TARGET)]
        lines.append(" ".join(p for p in parts if p))
    compare(ns, corpus_ops(lines, 4), ["list", "ruleset"], f"random seed {seed}")


@pytest.mark.kernel
@pytest.mark.parametrize("dump", ["iptables.rules", "iptables-prod.rules", "verify.rules"])
def test_example_dumps_list_as_nft_does(ns, dump):
    text = (ROOT / "examples" / dump).read_text()
    compare(ns, [*nfacct_ops(text), ("restore", 4, text, False)], ["list", "ruleset"], dump, all_accepted=True)


def nfacct_ops(text: str) -> list[Op]:
    """The accounting objects a dump's rules name (kube-proxy's, on kernels with nfacct), made first."""
    return [("nfacct", 4, name) for name in sorted(set(re.findall(r"--nfacct-name\s+(\S+)", text)))]


@pytest.mark.kernel
@pytest.mark.parametrize("args", [["-a", "list", "ruleset"], ["-s", "list", "ruleset"], ["list", "table", "ip", "nat"],
                                  ["list", "chain", "ip", "filter", "INPUT"], ["list", "chain", "ip", "filter", "FOO"],
                                  ["list", "ruleset", "ip6"], ["list", "tables"], ["-n", "list", "ruleset"]])
def test_a_restored_dump_lists_the_same_with_options(args):
    text = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:FOO - [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\n"
            "-A INPUT -m comment --comment x -j FOO\n-A FOO -m conntrack --ctstate NEW -j LOG\nCOMMIT\n"
            "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\nCOMMIT\n")
    ops = [("restore", 4, text, False), ("restore", 6, "*filter\n-A OUTPUT -j ACCEPT\nCOMMIT\n", False)]
    with fresh() as ns:          # table handles count from the namespace's first table
        compare(ns, ops, args, " ".join(args))


# Which built-in chains exist, and the order of tables and chains, after sequences of commands.
SEQUENCES = {
    "lazy-builtins": [["-A", "INPUT", "-j", "ACCEPT"], ["-N", "FOO"], ["-A", "FORWARD", "-j", "FOO"],
                      ["-P", "OUTPUT", "DROP"], ["-t", "nat", "-N", "X"], ["-t", "raw", "-I", "OUTPUT", "-j", "ACCEPT"]],
    "flush-delete-zero": [["-A", "INPUT", "-j", "ACCEPT"], ["-N", "FOO"], ["-A", "FORWARD", "-j", "FOO"],
                          ["-P", "OUTPUT", "DROP"], ["-F"], ["-X"], ["-t", "nat", "-Z"], ["-t", "mangle", "-F"],
                          ["-t", "mangle", "-L"]],
    "rename-and-delete": [["-N", "A"], ["-N", "B"], ["-A", "INPUT", "-j", "B"], ["-E", "A", "C"], ["-X", "C"],
                          ["-D", "INPUT", "1"], ["-A", "OUTPUT", "-j", "B"]],
}


@pytest.mark.kernel
@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_command_sequences_create_what_iptables_nft_creates(ns, name):
    compare(ns, [("cmd", 4, argv) for argv in SEQUENCES[name]], ["list", "ruleset"], name)


RESTORES = [
    pytest.param([("restore", 4, "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:FOO - [0:0]\n"
      "-A FOO -j ACCEPT\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n", False),
     ("restore", 4, "*filter\n-A OUTPUT -j ACCEPT\n-A INPUT -j DROP\nCOMMIT\n*mangle\nCOMMIT\n", False)],
                 id="a-flushing-restore-drops-undeclared-policies"),
    [("cmd", 4, ["-A", "INPUT", "-j", "ACCEPT"]), ("cmd", 4, ["-t", "nat", "-A", "OUTPUT", "-j", "RETURN"]),
     ("restore", 4, "*filter\n:BAR - [0:0]\n-A BAR -j RETURN\n-A FORWARD -j BAR\nCOMMIT\n", True)],
    [("restore", 6, "*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n"
      "COMMIT\n", False), ("cmd", 4, ["-A", "INPUT", "-j", "DROP"])],
]


@pytest.mark.kernel
@pytest.mark.parametrize("ops", RESTORES)
def test_restores_create_what_iptables_nft_creates(ns, ops):
    compare(ns, ops, ["list", "ruleset"], "restore")


def test_an_iptables_legacy_node_keeps_its_tables_out_of_nft():
    node = Node()
    node.iptables_cmd(["-A", "INPUT", "-j", "ACCEPT"], 4)
    assert run_nft(["list", "ruleset"], Ruleset(), xt=XtView(node))[1].startswith("table ip filter {")
    node_layout(node).variant = "legacy"
    assert run_nft(["list", "ruleset"], Ruleset(), xt=XtView(node))[:3] == (0, "", "")


def test_the_layout_survives_the_node_file(tmp_path):
    path = tmp_path / "n.json"
    env_cmd = [sys.executable, "-m", "kproxy", "--node", str(path)]
    for argv in (["iptables", "-N", "FOO"], ["iptables", "-A", "INPUT", "-j", "FOO"], ["iptables", "-P", "OUTPUT", "DROP"]):
        assert subprocess.run([*env_cmd, *argv], capture_output=True, check=False).returncode == 0
    out = subprocess.run([*env_cmd, "nft", "list", "ruleset"], capture_output=True, text=True, check=False).stdout
    assert [ln.strip() for ln in out.splitlines() if ln.strip().startswith("chain")] == \
        ["chain FOO {", "chain INPUT {", "chain OUTPUT {"]


JSON_RULES = ["-p tcp --dport 22 -j ACCEPT", "-i eth+ ! -s 10.0.0.0/8 -p udp ! --sport 5 -j DROP", "-p tcp --syn",
              "-p tcp --tcp-flags SYN NONE", "-p tcp ! --tcp-flags ALL NONE", "-p tcp --tcp-flags ACK ACK",
              "-p tcp ! --dport 0:100", "-m mark --mark 0x4000/0x4000 -j MARK --xor-mark 0x4000",
              "-m comment --comment x -m limit --limit 5/min --limit-burst 9 -j FOO", "-f -j TRACE",
              "-m conntrack --ctstate NEW -g FOO", "-m recent --set", "-p 47 -j RETURN", "! -p tcp -d 1.2.3.4"]


@pytest.mark.kernel
@pytest.mark.parametrize("args", [["-j", "list", "ruleset"], ["-j", "list", "table", "ip", "filter"],
                                  ["-j", "list", "chain", "ip", "filter", "INPUT"]])
def test_json_listing_as_nft_does(args):
    with fresh() as ns:
        compare(ns, corpus_ops(JSON_RULES, 4), args, " ".join(args), handles=False)


@pytest.mark.kernel
@pytest.mark.parametrize("which", ["RULES4", "RULES6", "iptables-prod.rules"])
def test_the_corpus_in_json_as_nft_does(which):
    if which.endswith(".rules"):
        ops = [("restore", 4, (ROOT / "examples" / which).read_text(), False)]
    else:
        ops = corpus_ops(RULES4 if which == "RULES4" else RULES6, 4 if which == "RULES4" else 6)
    with fresh() as ns:
        compare(ns, ops, ["-j", "list", "ruleset"], f"{which} -j", handles=which.endswith(".rules"))


@pytest.mark.kernel
@pytest.mark.parametrize("args", [["-n", "list", "ruleset"], ["-nn", "list", "ruleset"], ["-y", "list", "ruleset"],
                                  ["-s", "list", "ruleset"], ["list", "chains"], ["list", "chain", "ip", "filter", "FORWARD"],
                                  ["list", "table", "ip", "nosuch"]])
def test_the_corpus_with_listing_options(ns, args):
    ops = corpus_ops(RULES4 + ["-p 47 -j ACCEPT", "! -p 58"], 4) + [("cmd", 4, ["-P", "FORWARD", "DROP"])]
    compare(ns, ops, args, " ".join(args))


def test_a_node_description_marks_iptables_legacy(tmp_path):
    desc = {"name": "n", "interfaces": [], "routes": [], "iptables": "legacy"}
    node = Node.from_description(desc)
    node.iptables_cmd(["-A", "INPUT", "-j", "ACCEPT"], 4)
    assert node.iptables_variant() == "legacy" and node.describe()["iptables"] == "legacy"
    assert run_nft(["list", "ruleset"], Ruleset(), xt=XtView(node))[:3] == (0, "", "")
    assert "iptables" not in Node.from_description({**desc, "iptables": "nft"}).describe()
    with pytest.raises(NodeError, match="iptables: 'x' is neither nft nor legacy"):
        Node.from_description({**desc, "iptables": "x"})


def test_a_rule_without_a_rendering_is_said_plainly():
    node = Node()
    node.iptables_cmd(["-A", "INPUT", "-j", "QUEUE"], 4)       # the kernel here has no nf_queue to check it against
    node.iptables_cmd(["-A", "INPUT", "-j", "ACCEPT"], 4)
    rc, out, err, _ = run_nft(["list", "ruleset"], Ruleset(), xt=XtView(node))
    assert rc == 0
    assert out.splitlines()[3:5] == ["\t\t# kproxy: no nft rendering yet for the QUEUE verdict",
                                     "\t\tcounter packets 0 bytes 0 accept"]
    assert err == "kproxy: ip filter INPUT: no nft rendering yet for the QUEUE verdict\n"


def kube_proxy_ops(dump: str) -> list[Op]:
    """The dump applied the way kube-proxy applies its rules: ``-N`` of its chains and ``-A`` of the
    jumps from the built-in chains as commands, then ``iptables-restore --noflush`` of its own chains
    (which names no built-in chain)."""
    cmds: list[Op] = []
    body: list[str] = []
    table = ""
    for line in dump.splitlines():
        if line.startswith("*"):
            table = line[1:]
            body.append(line)
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if line.split()[1] == "-":
                cmds.append(("cmd", 4, ["-t", table, "-N", name]))
                body.append(line)
        elif line.startswith("-A ") and line.split()[1] in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"):
            cmds.append(("cmd", 4, ["-t", table, *shlex.split(line)]))
        elif line and not line.startswith("#"):
            body.append(line)
    return [*cmds, ("restore", 4, "\n".join(body) + "\n", True)]


@pytest.mark.kernel
@pytest.mark.parametrize("dump", ["iptables.rules", "iptables-prod.rules"])
def test_rules_applied_as_kube_proxy_applies_them(ns, dump):
    text = (ROOT / "examples" / dump).read_text()
    ops = nfacct_ops(text) + kube_proxy_ops(text)
    compare(ns, ops, ["list", "ruleset"], f"{dump} as kube-proxy applies it", all_accepted=True)
    compare(ns, ops, ["-j", "list", "ruleset"], f"{dump} as kube-proxy applies it, -j", handles=False)


def test_a_flushing_restore_keeps_undeclared_policies_only_on_a_legacy_node():
    for variant, policy in (("nft", "ACCEPT"), ("legacy", "DROP")):
        node = Node.from_description({"name": "n", "iptables": variant})
        node.iptables_cmd(["-P", "FORWARD", "DROP"], 4)
        node.iptables_restore("*filter\n-A INPUT -j ACCEPT\nCOMMIT\n", 4)
        assert node.iptables[4].tables["filter"].chains["FORWARD"].policy == policy


FLUSH_HISTORY = [["-A", "INPUT", "-s", "1.1.1.1", "-j", "ACCEPT"], ["-N", "FOO"], ["-A", "INPUT", "-j", "FOO"],
                 ["-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE"]]


@pytest.mark.kernel
def test_flush_ruleset_takes_iptables_nft_tables_with_it():
    """nft flush ruleset deletes iptables-nft's tables (they are nf_tables tables): iptables-save then
    prints nothing, and a table made afterwards gets the namespace's next table handle."""
    node = Node()
    with fresh() as n:
        for argv in FLUSH_HISTORY:
            n.run([TOOL[4], *argv])
            assert node.iptables_cmd(argv, 4)[0] == 0
        n.run([f"{SBIN}/nft", "flush", "ruleset"])
        rc, _, err, rs = run_nft(["flush", "ruleset"], Ruleset(), xt=XtView(node))
        assert rc == 0, err
        assert node.iptables_save(4) == "" and "-A" not in n.run([f"{SBIN}/iptables-nft-save"]).stdout
        assert run_nft(["list", "ruleset"], rs, xt=XtView(node))[1] == n.run([f"{SBIN}/nft", "list", "ruleset"]).stdout == ""
        n.run([TOOL[4], "-A", "INPUT", "-j", "ACCEPT"])
        assert node.iptables_cmd(["-A", "INPUT", "-j", "ACCEPT"], 4)[0] == 0
        assert run_nft(["-a", "list", "ruleset"], rs, xt=XtView(node))[1] == \
            n.run([f"{SBIN}/nft", "-a", "list", "ruleset"]).stdout


def test_flush_ruleset_leaves_a_legacy_nodes_iptables_tables():
    node = Node()
    node_layout(node).variant = "legacy"
    node.iptables_cmd(["-A", "INPUT", "-j", "ACCEPT"], 4)
    assert run_nft(["flush", "ruleset"], Ruleset(), xt=XtView(node))[0] == 0
    assert "-A INPUT -j ACCEPT" in node.iptables_save(4)
    # and on an nf_tables node, flushing another family leaves the ip tables
    node = Node()
    node.iptables_cmd(["-A", "INPUT", "-j", "ACCEPT"], 4)
    assert run_nft(["flush", "ruleset", "ip6"], Ruleset(), xt=XtView(node))[0] == 0
    assert "-A INPUT -j ACCEPT" in node.iptables_save(4)
    assert run_nft(["flush", "ruleset", "ip"], Ruleset(), xt=XtView(node))[0] == 0
    assert node.iptables_save(4) == ""


# (argv, stdin): iptables-nft commands and restores whose handles the kernel hands out one by one
HANDLE_HISTORY: list[tuple[list[str], str | None]] = [
    (["-A", "INPUT", "-s", "1.1.1.1", "-j", "ACCEPT"], None),
    (["-A", "INPUT", "-s", "2.2.2.2", "-j", "DROP"], None),
    (["-I", "INPUT", "-s", "3.3.3.3", "-j", "ACCEPT"], None),
    (["-N", "FOO"], None),
    (["-A", "FOO", "-p", "tcp", "--dport", "80", "-j", "ACCEPT"], None),
    (["-A", "INPUT", "-j", "FOO"], None),
    (["-D", "INPUT", "-s", "2.2.2.2", "-j", "DROP"], None),
    (["-R", "INPUT", "1", "-s", "4.4.4.4", "-j", "ACCEPT"], None),
    (["-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE"], None),
    (["-F", "FOO"], None),
    (["-A", "FOO", "-j", "RETURN"], None),
    (["-N", "BAR"], None),
    (["-X", "BAR"], None),
    (["-E", "FOO", "FOO2"], None),
    (["-P", "FORWARD", "DROP"], None),
    (["--noflush"], "*filter\n-A FOO2 -s 5.5.5.5 -j DROP\n-I INPUT 2 -s 6.6.6.6 -j ACCEPT\n-I INPUT 1 -s 7.7.7.7\n"
                    "-I INPUT 1 -s 8.8.8.8\nCOMMIT\n"),
    (["-D", "INPUT", "1"], None),
    ([], "*nat\n:POSTROUTING ACCEPT [0:0]\n:X - [0:0]\n-A X -j RETURN\n-A POSTROUTING -j X\nCOMMIT\n"),
    (["-t", "nat", "-I", "X", "-s", "9.9.9.9"], None),
]


def _history(run_cmd: Any, run_restore: Any) -> None:
    for argv, stdin in HANDLE_HISTORY:
        if stdin is None:
            run_cmd(argv)
        else:
            run_restore(argv, stdin)


@pytest.mark.kernel
def test_rule_and_chain_handles_follow_the_command_history_as_in_the_kernel(tmp_path):
    """Handles of rules added, inserted, replaced (kept), deleted (not reused), flushed and restored
    by iptables-nft, and of chains made and deleted: the table's one counter, as nft -a shows it; the
    same through the node file, command by command."""
    node = Node()
    path = tmp_path / "n.json"
    kp = [sys.executable, "-m", "kproxy", "--node", str(path)]
    with fresh() as n:
        def real_cmd(argv: list[str]) -> None:
            n.run([TOOL[4], *argv])
            assert node.iptables_cmd(argv, 4)[0] == 0
            subprocess.run([*kp, "iptables", *argv], check=True, capture_output=True)

        def real_restore(argv: list[str], stdin: str) -> None:
            n.run([f"{SBIN}/iptables-nft-restore", *argv], input=stdin)
            node.iptables_restore(stdin, 4, noflush="--noflush" in argv)
            subprocess.run([*kp, "iptables-restore", *argv], input=stdin, text=True, check=True, capture_output=True)

        _history(real_cmd, real_restore)
        real = n.run([f"{SBIN}/nft", "-a", "list", "ruleset"]).stdout
        assert run_nft(["-a", "list", "ruleset"], Ruleset(), xt=XtView(node))[1] == real
        listed = subprocess.run([*kp, "nft", "-a", "list", "ruleset"], capture_output=True, text=True, check=True)
        assert listed.stdout == real
        real_json = n.run([f"{SBIN}/nft", "-j", "-a", "list", "ruleset"]).stdout
        ours = run_nft(["-j", "-a", "list", "ruleset"], Ruleset(), xt=XtView(node))[1]
        assert json.loads(ours)["nftables"][1:] == json.loads(real_json)["nftables"][1:]
