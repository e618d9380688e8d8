"""The tools' command-line habits, compared with iptables 1.8.9 in a kp- namespace: getopt's bundled short
options and attached values, ``--name=value`` and abbreviated long names, -v echoes, -L -Z, and -h."""

from __future__ import annotations

import pytest

from kproxy.iptables.commands import run_iptables
from kproxy.iptables.parser import ParameterProblem, parse_command, respell
from kproxy.iptables.state import IptablesState

pytestmark = pytest.mark.kernel

SESSION = [
    ["-N", "FOO"], ["-A", "INPUT", "-s", "10.0.0.1", "-j", "FOO"],
    ["-nvL"], ["-vnxL", "INPUT"], ["-tnat", "-nL"], ["-t", "nat", "-nvL", "OUTPUT"], ["-nL", "--line-numbers"],
    ["-SFOO"], ["-AFOO", "-jACCEPT"], ["--append=FOO", "--jump=DROP"], ["--table=nat", "-S"], ["-S", "--table=nat"],
    ["-A", "FOO", "-s10.0.0.2", "-jRETURN"], ["-A", "FOO", "-ptcp", "--dport=80"], ["-vS"], ["-nvLFOO"],
    ["-L", "-Z"], ["-L", "-Z", "FOO", "-v"], ["-Z", "-v"], ["-Z", "FOO", "-v"], ["--ap", "FOO"], ["-xyz"], ["-xy"],
    ["-nq"], ["-A", "FOO", "-dx"], ["--lis"], ["--de", "FOO"], ["--list-r", "FOO"],
    ["-A", "FOO", "-p", "tcp", "--dport=81"], ["-A", "FOO", "-p", "tcp", "-m", "comment", "--comment=hi"],
    ["-A", "FOO", "-c5", "6"], ["-A", "FOO", "-v", "-s", "1.2.3.4", "-p", "tcp", "--dport", "80", "-j", "ACCEPT"],
    ["-A", "FOO", "-v", "-i", "eth0", "!", "-d", "1.2.3.0/24", "-m", "comment", "--comment", "x"],
    ["-D", "FOO", "-v", "-s", "1.2.3.4", "-p", "tcp", "--dport", "80", "-j", "ACCEPT"],
    ["-t", "nat", "-A", "OUTPUT", "-v", "-j", "DNAT", "--to-destination", "1.2.3.4"],
    ["-F", "FOO", "-v"], ["-N", "BAZ", "-v"], ["-X", "BAZ", "-v"], ["-S"], ["-t", "nat", "-S"],
]


def test_a_session_of_getopt_habits_matches_the_real_tool(kernel_ns):
    state = IptablesState(4)
    for argv in SESSION:
        real = kernel_ns.run(["iptables", *argv], check=False)
        assert run_iptables(argv, state) == (real.returncode, real.stdout, real.stderr), argv


@pytest.mark.parametrize("argv", [["-h"], ["--help"], ["-A", "FOO", "-h"], ["-L", "--help"]])
def test_help_starts_as_the_real_tools_and_does_no_work(kernel_ns, argv):
    state = IptablesState(4)
    real = kernel_ns.run(["iptables", *argv], check=False)
    rc, out, err = run_iptables(argv, state)
    assert (rc, err) == (real.returncode, real.stderr) == (0, "")
    assert out.splitlines()[:15] == real.stdout.splitlines()[:15]
    assert not state.tables


def test_respelling_spells_getopt_out():
    assert respell("-nvL", [], 0) == ["-n", "-v", "-L"]
    assert respell("-nvLFOO", [], 0) == ["-n", "-v", "-L", "FOO"]
    assert respell("-tnat", [], 0) == ["-t", "nat"]
    assert respell("-s1.2.3.4", [], 0) == ["-s", "-s1.2.3.4"]     # -s reads the whole word, as 1.8.9 does
    assert respell("--table=nat", [], 0) == ["--table", "nat"]
    assert respell("--ap", [], 0) == ["--append"]
    assert respell("--lis", [], 0) is None                          # ambiguous: --list, --list-rules
    with pytest.raises(ParameterProblem, match='unknown option "x"'):
        respell("-nqv", ["x", "-nqv"], 1)


def test_a_restore_line_with_bundled_options_is_parsed_but_not_planned():
    from kproxy.iptables.plan import _PLANS, parse_rule_line, shape

    c = parse_command(["-AFOO", "-j", "ACCEPT"], 4)
    assert (c.cmd, c.chain, c.rules[0].jump) == ("A", "FOO", "ACCEPT")
    argv = ["-AFOO", "-s", "10.0.0.1", "-j", "ACCEPT"]
    c = parse_rule_line(argv, 4, "filter")
    assert c.chain == "FOO" and _PLANS.get((4, shape(argv))) is None


RESTORE_V = "*filter\n:BAR - [0:0]\n:INPUT DROP [0:0]\n-A BAR -s 1.2.3.4 -j ACCEPT\n-I BAR -j RETURN\n-N BAZ\n-X BAZ\n" \
            "-F BAR\n-A BAR -p tcp --dport 80 -m comment --comment \"x y\" -j REJECT\nCOMMIT\n*nat\n" \
            "-A OUTPUT -j DNAT --to-destination 1.1.1.1\nCOMMIT\n"


@pytest.mark.parametrize("opts", [["-v"], ["-nv"], ["-v", "-T", "nat"], ["-vt"], ["--verbose", "--counters"]])
def test_restore_verbose_prints_what_the_real_tool_prints(kernel_ns, opts):
    from kproxy.iptables.tools import run_iptables_restore

    state = IptablesState(4)
    for argv in (["-N", "FOO"], ["-A", "FOO", "-j", "ACCEPT"], ["-t", "nat", "-N", "NN"]):
        kernel_ns.run(["iptables", *argv])
        assert run_iptables(argv, state)[0] == 0
    real = kernel_ns.run(["iptables-restore", *opts], input=RESTORE_V, check=False)
    assert run_iptables_restore(opts, state, RESTORE_V) == (real.returncode, real.stdout, real.stderr)
    for table in ("filter", "nat"):
        assert run_iptables(["-t", table, "-S"], state)[1] == kernel_ns.run(["iptables", "-t", table, "-S"]).stdout
