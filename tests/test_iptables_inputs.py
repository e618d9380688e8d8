"""What iptables refuses: names, numbers, address families and jumps, as iptables 1.8.9 and the kernel refuse them.

The kernel tests run each case through the real tool in a kp- namespace and through kproxy, and compare
exit status and stderr. The few deliberate differences (things the real tool takes but whose saved form it
cannot restore) are tested on their own below.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kproxy.iptables.commands import run_iptables
from kproxy.iptables.jumps import JUMP_STACK, too_deep, walk
from kproxy.iptables.model import Chain, Rule, Table
from kproxy.iptables.restore import RestoreError, restore
from kproxy.iptables.save import save
from kproxy.iptables.state import IptablesState, copy_table
from kproxy.iptables.tools import run_iptables_restore, run_iptables_save
from saves import rules_of

# Each case: commands run in order on a fresh filter table; every command's (status, stderr) is compared.
CASES = [
    [["-N", "A B"], ["-N", "A\tB"], ["-N", "A\nB"], ["-N", ""], ["-N", "LOG"], ["-N", "standard"], ["-N", "log"]],
    [["-N", "ABCDEFGHIJKLMNOPQRSTUVWXYZ12"], ["-N", "ABCDEFGHIJKLMNOPQRSTUVWXYZ123"], ["-N", "-x"], ["-N", "!x"],
     ["-N", "DNAT "], ["-N", "-ABCDEFGHIJKLMNOPQRSTUVWXYZ123"]],
    [["-A", "INPUT", "-j", "NO SUCH"], ["-A", "INPUT", "-j", "ABCDEFGHIJKLMNOPQRSTUVWXYZ123"],
     ["-A", "INPUT", "-g", "-x"], ["-A", "INPUT", "-j", "!x"], ["-A", "INPUT", "-g", "A\tB"]],
    [["-A", "INPUT", "-i", ""], ["-A", "INPUT", "-i", "abcdefghijklmnop"], ["-A", "INPUT", "-i", "abcdefghijklmno"],
     ["-A", "INPUT", "-i", "a/b"], ["-A", "INPUT", "-i", "a+b"]],
    [["-A", "INPUT", "-j", "LOG", "--log-prefix", "a\nb"], ["-A", "INPUT", "-j", "LOG", "--log-prefix", ""],
     ["-A", "INPUT", "-m", "comment", "--comment", ""]],
    [["-A", "INPUT"], ["-D", "INPUT", "0"], ["-D", "INPUT", "99"], ["-D", "INPUT", "2147483648"],
     ["-D", "INPUT", "1x"], ["-I", "INPUT", "0"], ["-I", "INPUT", "99", "-j", "ACCEPT"], ["-R", "INPUT", "0"],
     ["-L", "INPUT", "0"], ["-S", "INPUT", "1x"], ["-Z", "INPUT", "5"], ["-D", "INPUT", "0x1"], ["-A", "INPUT"],
     ["-D", "INPUT", "+1"], ["-L", "INPUT", "99"], ["-I", "INPUT", "-1"]],
    [["-A", "INPUT", "-s", "::1"], ["-A", "INPUT", "-d", "1.2.3.4,::1"], ["-A", "INPUT", "-s", "10.0.0.0/33"]],
    # Jumps: loops and depth count only from a base chain.
    [["-N", "A"], ["-N", "B"], ["-A", "A", "-j", "B"], ["-A", "B", "-j", "A"], ["-A", "B", "-g", "A"],
     ["-A", "A", "-j", "A"], ["-A", "INPUT", "-j", "A"], ["-F", "B"], ["-A", "INPUT", "-j", "A"], ["-F", "A"],
     ["-A", "INPUT", "-j", "A"], ["-A", "A", "-j", "B"], ["-A", "B", "-j", "A"], ["-I", "B", "-j", "A"],
     ["-A", "B"], ["-R", "B", "1", "-g", "A"], ["-E", "B", "C"], ["-A", "C", "-j", "C"]],
    [["-N", f"C{i}"] for i in range(1, 19)] + [["-A", "OUTPUT", "-j", "C1"]]
    + [["-A", f"C{i}", "-j", f"C{i + 1}"] for i in range(1, 18)] + [["-D", "OUTPUT", "1"]]
    + [["-A", "OUTPUT", "-j", "C3"], ["-A", "OUTPUT", "-j", "C2"]],
]


def _ours(state: IptablesState, argv: list[str], family: int = 4) -> tuple[int, str]:
    rc, _, err = run_iptables(argv, state, family)
    return rc, err


@pytest.mark.kernel
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_refusals_match_the_real_tool(kernel_ns, case):
    state = IptablesState(4)
    for argv in case:
        real = kernel_ns.run(["iptables", *argv], check=False)
        assert _ours(state, argv) == (real.returncode, real.stderr), argv
    theirs = kernel_ns.run(["iptables", "-S"]).stdout
    assert run_iptables(["-S"], state)[1] == theirs


@pytest.mark.kernel
def test_ip6tables_refuses_an_ipv4_address(kernel_ns):
    state = IptablesState(6)
    for argv in (["-A", "INPUT", "-s", "1.2.3.4"], ["-N", "TTL"], ["-N", "HL"], ["-A", "INPUT", "-d", "::1,10.0.0.1"]):
        real = kernel_ns.run(["ip6tables", *argv], check=False)
        assert _ours(state, argv, 6) == (real.returncode, real.stderr), argv


LOOP_RESTORE = """*filter
:X - [0:0]
:Y - [0:0]
-A INPUT -j X
-A X -j Y
-A Y -j X
COMMIT
"""
UNREACHED_LOOP = "*filter\n:X - [0:0]\n:Y - [0:0]\n-A X -j Y\n-A Y -j X\nCOMMIT\n"


def _deep_restore(depth: int) -> str:
    names = [f"C{i}" for i in range(1, depth + 1)]
    lines = ["*filter", *(f":{n} - [0:0]" for n in names), "-A INPUT -j C1"]
    lines += [f"-A {a} -j {b}" for a, b in zip(names, names[1:])]
    return "\n".join([*lines, "COMMIT", ""])


@pytest.mark.kernel
@pytest.mark.parametrize("text", [LOOP_RESTORE, UNREACHED_LOOP, _deep_restore(16), _deep_restore(20)])
def test_restores_with_loops_and_depth_fail_like_the_real_tool(kernel_ns, text):
    real = kernel_ns.run(["iptables-restore"], input=text, check=False)
    state = IptablesState(4)
    rc, out, err = run_iptables_restore([], state, text)
    assert rc == real.returncode
    # The kernel reports every rule too deep in the batch; kproxy the first of them.
    assert err.splitlines() == real.stderr.splitlines()[:2]
    if rc == 0:
        assert save(state, header=False) == "".join(
            ln + "\n" for ln in kernel_ns.run(["iptables-save"]).stdout.splitlines() if not ln.startswith("#"))


def test_a_loop_in_a_restore_leaves_the_node_unchanged():
    from kproxy.node import Node

    node = Node.default()
    node.iptables_restore("*filter\n:X - [0:0]\n-A X -j ACCEPT\nCOMMIT\n")
    before = rules_of(node.iptables_save(counters=True))
    with pytest.raises(RestoreError, match="line 4: RULE_APPEND failed \\(Too many links\\): rule in chain X"):
        node.iptables_restore("*filter\n:X - [0:0]\n-A OUTPUT -j X\n-A X -j X\nCOMMIT\n", noflush=True)
    assert rules_of(node.iptables_save(counters=True)) == before


@pytest.mark.parametrize("argv,message", [
    (["-E", "A", "C D"], "Invalid chain name `C D'"),
    (["-A", "INPUT", "-m", "comment", "--comment", "a\nb"], "Newlines not allowed in --comment"),
    (["-A", "INPUT", "-i", "a b"], "Invalid interface name `a b'"),
    (["-A", "INPUT", "-i", "a\u00a0b"], "Invalid interface name"),
    (["-N", "a\u2028b"], "Invalid chain name"),
])
def test_what_could_not_be_saved_and_restored_is_refused(argv, message):
    """iptables 1.8.9 takes these, but its own iptables-save output of them cannot be restored; the node
    file is that output, so kproxy refuses them with the nearest of the tool's messages."""
    state = IptablesState(4)
    run_iptables(["-N", "A"], state)
    rc, out, err = run_iptables(argv, state)
    assert rc == 2 and message in err and "Traceback" not in err


def test_quoted_words_survive_save_and_restore():
    state = IptablesState(4)
    for text in ('a\\nb', 'q"uo\'te\\', "x\u00a0y", "tab\there"):
        assert run_iptables(["-A", "INPUT", "-m", "comment", "--comment", text], state)[0] == 0
    once = save(state, header=False)
    again = IptablesState(4)
    restore(once, again)
    assert save(again, header=False) == once


def test_restore_help_prints_usage_and_applies_nothing():
    state = IptablesState(4)
    for opt in ("-h", "--help"):
        rc, out, err = run_iptables_restore([opt], state, "*filter\n-A INPUT -j DROP\nCOMMIT\n")
        assert rc == 0 and err.startswith("Usage: iptables-restore [-c] [-v] [-V] [-t] [-h] [-n]")
    assert not state.tables
    assert run_iptables_save(["-h"], state)[0:2] == (1, "")


# The incremental jump check (levels raised from the changed chains) agrees with the exact walk.
edits = st.lists(st.tuples(st.sampled_from("ADF"), st.integers(0, 7), st.integers(0, 9)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(edits, st.randoms(use_true_random=False))
def test_the_incremental_jump_check_agrees_with_the_exact_walk(steps, rnd: random.Random):
    state = IptablesState(4)
    names = ["INPUT", "OUTPUT"] + [f"U{i}" for i in range(8)]
    table = Table.new("filter")
    for n in names[2:]:
        table.add_chain(Chain(n))
    assert not too_deep(table)
    state.commit({"filter": table})
    for op, a, b in steps:
        work = copy_table(state.tables["filter"])
        src = names[a % len(names)]
        if op == "A":
            work.writable(src).rules.append(Rule(jump=names[2 + b % 8], goto=rnd.random() < 0.3))
        elif op == "D" and work.chains[src].rules:
            del work.writable(src).rules[b % len(work.chains[src].rules)]
        elif op == "F":
            work.flush(src)
        exact = walk(work) is None
        assert too_deep(work) == exact
        if not exact:
            state.commit({"filter": work})


def test_sixteen_levels_are_refused_and_fifteen_taken():
    for depth, refused in ((JUMP_STACK - 1, False), (JUMP_STACK, True)):
        state = IptablesState(4)
        try:
            restore(_deep_restore(depth), state)
            ok = True
        except RestoreError as exc:
            ok = False
            assert f"line {depth + 2 + depth - 1}:" in str(exc)
        assert ok is not refused
