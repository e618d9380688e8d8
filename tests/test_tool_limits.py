"""ipset and ipvsadm: the tools' own errors for numbers out of range, wrong address families and names,
and ipvsadm's help, filters and save flags. ipset cases are compared with ipset 7.17 in a kp- namespace."""

from __future__ import annotations

import time

import pytest

from kproxy.ipset.cli import run_ipset
from kproxy.ipset.registry import IpsetRegistry
from kproxy.ipvs.ipvs import Ipvs
from kproxy.ipvs.ipvsadm import run_ipvsadm

IPSET_CASES = [
    ["create", "s4", "hash:ip"], ["add", "s4", "::1"], ["test", "s4", "::1"], ["del", "s4", "::1"],
    ["add", "s4", "1.2.3.4,80"], ["add", "s4", "1.2.3.4", "timeout", "5"],
    ["create", "s6", "hash:ip", "family", "inet6"], ["add", "s6", "1.2.3.4"],
    ["create", "t1", "hash:ip", "timeout", "4294967296"], ["create", "t2", "hash:ip", "timeout", "2147484"],
    ["create", "t3", "hash:ip", "timeout", "2147483"], ["create", "t4", "hash:ip", "timeout", "-1"],
    ["create", "t5", "hash:ip", "timeout", "x"], ["add", "t3", "1.1.1.1", "timeout", "2147484"],
    ["add", "t3", "1.1.1.1", "timeout", "x"],
    ["create", "m1", "hash:ip", "maxelem", "0"], ["create", "m2", "hash:ip", "maxelem", "4294967296"],
    ["create", "m3", "hash:ip", "maxelem", "x"], ["create", "h1", "hash:ip", "hashsize", "0"],
    ["create", "h2", "hash:ip", "hashsize", "4294967296"], ["create", "h4", "hash:ip", "hashsize", "x"],
    ["create", "h5", "hash:ip", "hashsize", "100"], ["create", "h6", "hash:ip", "hashsize", "1073741825"],
    ["create", "x" * 32, "hash:ip"], ["create", "x" * 31, "hash:ip"], ["create", "a b", "hash:ip"],
    ["create", "bp", "bitmap:port", "range", "0-70000"], ["create", "bp2", "bitmap:port", "range", "10-5"],
    ["add", "bp2", "70000"], ["add", "bp2", "4"],
    ["create", "n1", "hash:net"], ["add", "n1", "10.0.0.0/33"], ["add", "n1", "::/0"], ["add", "n1", "1.2.3.4/x"],
    ["create", "ipp", "hash:ip,port"], ["add", "ipp", "1.2.3.4,tcp:70000"], ["add", "ipp", "1.2.3.4,x"],
    ["add", "ipp", "::1,80"], ["add", "ipp", "1.2.3.4,udp:x"],
    ["list", "-n"],
]


def _headers_only(text: str) -> list[str]:
    """A save without the random initval and the memory estimate."""
    return [" ".join(w for w in line.split() if not w.startswith("0x")) for line in text.splitlines()]


@pytest.mark.kernel
def test_ipset_refusals_match_the_real_tool(kernel_ns):
    if kernel_ns.run(["ipset", "version"], check=False).returncode != 0:
        pytest.skip("ipset is not usable here")
    reg = IpsetRegistry()
    for argv in IPSET_CASES:
        real = kernel_ns.run(["ipset", *argv], check=False)
        rc, out, err = run_ipset(argv, reg, 1000.0)
        assert (rc, out, err) == (real.returncode, real.stdout, real.stderr), argv
    real = kernel_ns.run(["ipset", "save"]).stdout
    assert _headers_only(run_ipset(["save"], reg, 1000.0)[1]) == _headers_only(real)


def _ipvs() -> Ipvs:
    ipvs = Ipvs()
    for argv in (["-A", "-t", "10.0.0.1:80", "-s", "sh", "-b", "sh-port"], ["-a", "-t", "10.0.0.1:80", "-r", "10.1.1.1", "-m"],
                 ["-A", "-u", "10.0.0.2:53", "-s", "rr"]):
        assert run_ipvsadm(argv, ipvs, 0)[0] == 0, argv
    return ipvs


@pytest.mark.parametrize("argv,err", [
    (["-a", "-t", "10.0.0.1:80", "-r", "10.1.1.2", "-w", "65536"], "illegal weight specified\n"),
    (["-a", "-t", "10.0.0.1:80", "-r", "10.1.1.2", "-w", "-1"], "illegal weight specified\n"),
    (["-e", "-t", "10.0.0.1:80", "-r", "10.1.1.1", "-x", "2147483648"], "illegal u_threshold specified\n"),
    (["-e", "-t", "10.0.0.1:80", "-r", "10.1.1.1", "-y", "z"], "illegal l_threshold specified\n"),
    (["-A", "-u", "10.0.0.3:53", "-p", "0"], "invalid timeout value `0' specified\n"),
    (["-A", "-u", "10.0.0.3:53", "-p", "2678401"], "invalid timeout value `2678401' specified\n"),
    (["--set", "1", "2"], "--set option requires 3 timeout values\n"),
    (["--set", "1", "2", "x"], "invalid timeout value `x' specified\n"),
    (["-Ln", "junk"], "unexpected argument junk\n"),
])
def test_ipvsadm_refuses_numbers_out_of_range(argv, err):
    ipvs = _ipvs()
    before = run_ipvsadm(["-S", "-n"], ipvs, 0)[1]
    assert run_ipvsadm(argv, ipvs, 0) == (2, "", err)
    assert run_ipvsadm(["-S", "-n"], ipvs, 0)[1] == before


def test_ipvsadm_edges_of_the_ranges_are_taken():
    ipvs = _ipvs()
    assert run_ipvsadm(["-e", "-t", "10.0.0.1:80", "-r", "10.1.1.1", "-m", "--weight=65535", "-x", "2147483647"],
                       ipvs, 0)[0] == 0
    assert "-w 65535 -x 2147483647" in run_ipvsadm(["-S", "-n"], ipvs, 0)[1]


def test_ipvsadm_rate_listing_returns_at_once_on_a_node_clock():
    ipvs = _ipvs()
    start = time.perf_counter()
    rc, out, _ = run_ipvsadm(["-Ln", "--rate"], ipvs, 1_700_000_000.0)
    assert rc == 0 and "TCP  10.0.0.1:80" in out
    assert time.perf_counter() - start < 1.0


def test_ipvsadm_list_filter_save_flags_and_help():
    ipvs = _ipvs()
    one = run_ipvsadm(["-Ln", "-t", "10.0.0.1:80"], ipvs, 0)[1]
    assert "TCP  10.0.0.1:80 sh (sh-port)" in one and "UDP" not in one
    assert run_ipvsadm(["-L", "-n", "-u", "10.0.0.1:80"], ipvs, 0) == (1, "", "No such service\n")
    saved = run_ipvsadm(["-S", "-n"], ipvs, 0)[1]
    assert saved.splitlines()[0] == "-A -t 10.0.0.1:80 -s sh -b sh-port"
    other = Ipvs()
    assert run_ipvsadm(["-R"], other, 0, stdin=saved)[0] == 0
    assert run_ipvsadm(["-S", "-n"], other, 0)[1] == saved
    for opt in ("-h", "--help"):
        rc, out, err = run_ipvsadm([opt], ipvs, 0)
        assert rc == 0 and not err
        assert out.splitlines()[:2] == ["ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)", "Usage:"]


@pytest.mark.kernel
@pytest.mark.parametrize("argv", [["ipset", "-h"], ["ipset", "--help"], ["ipset", "help"], ["ipset", "-H"],
                                  ["ipset", "-V"], ["ipset", "version"], ["conntrack", "-h"], ["conntrack", "--help"],
                                  ["conntrack", "-V"], ["conntrack", "-L", "-h"], ["iptables-save", "-h"],
                                  ["iptables-restore", "-h"], ["ip6tables", "-h"], ["iptables-save", "-V"]])
def test_help_and_version_start_as_the_real_tools(kernel_ns, argv, tmp_path):
    """Exit status, stderr, and the first lines of the help (the rest is kproxy's own summary); no work done."""
    from click.testing import CliRunner

    from kproxy.cli.main import cli

    if kernel_ns.run(["which", argv[0]], check=False).returncode != 0:
        pytest.skip(f"{argv[0]} is not installed")
    real = kernel_ns.run(argv, check=False)
    node = tmp_path / "node.json"
    res = CliRunner().invoke(cli, ["--node", str(node), *argv], input="*filter\n-A INPUT -j DROP\nCOMMIT\n")
    assert (res.exit_code, res.stderr.splitlines()[:4]) == (real.returncode, real.stderr.splitlines()[:4])
    assert res.stdout.splitlines()[:4] == real.stdout.splitlines()[:4]
    saved = CliRunner().invoke(cli, ["--node", str(node), "iptables-save"]).stdout
    assert "-A INPUT -j DROP" not in saved


@pytest.mark.kernel
@pytest.mark.parametrize("argv", [["-Lpudp"], ["-L", "-pudp"], ["-L", "--proto=udp"], ["-L", "-oextended"],
                                  ["-L", "--output=extended"], ["-L", "--family=ipv6"], ["-L", "-ptcp", "--dport=80"],
                                  ["-L", "-pbogus"]])
def test_conntrack_getopt_forms_match_the_real_tool(kernel_ns, argv):
    from kproxy.cli.conntrack_cmd import run_conntrack
    from kproxy.node import Node

    if kernel_ns.run(["which", "conntrack"], check=False).returncode != 0:
        pytest.skip("conntrack is not installed")
    real = kernel_ns.run(["conntrack", *argv], check=False)
    assert run_conntrack(argv, Node.default()) == (real.returncode, real.stdout, real.stderr)
