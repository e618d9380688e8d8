"""Byte-compatibility with iptables 1.8.9: the same input through the real tool (in a kp- namespace) and ours.

Headers with timestamps are the only lines left out of the comparison.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kproxy.iptables.commands import run_iptables
from kproxy.iptables.restore import RestoreError, restore
from kproxy.iptables.save import save
from kproxy.iptables.state import IptablesState

pytestmark = pytest.mark.kernel

CORE_RULESETS = [
    # Addresses, interfaces, protocols, fragments, inversions, jumps and gotos, user chain order.
    """*filter
:INPUT DROP [0:0]
:ZZZ - [0:0]
:AAA - [0:0]
-A INPUT -s 10.1.2.3/8 -d 192.168.0.1 -i eth0 -p udp -j AAA
-A INPUT ! -s 10.0.0.0/8 ! -d 1.2.3.4/32 ! -i eth+ ! -p tcp -g ZZZ
-A INPUT -f -j ACCEPT
-A INPUT ! -f -p 47
-A INPUT -p 132 -d 0/0
-A INPUT -s 1.2.3.4/255.255.0.0
-A FORWARD -i cni0 -o eth0 -j ACCEPT
-A OUTPUT -o lo -p icmp -j RETURN
-A AAA -j RETURN
-A ZZZ -j DROP
COMMIT
""",
    """*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A POSTROUTING -o eth0 -s 10.244.0.0/16 -j ACCEPT
COMMIT
*raw
-A PREROUTING -i eth1 -j ACCEPT
COMMIT
*mangle
:FOO - [0:0]
-A FORWARD -j FOO
COMMIT
*security
-A INPUT -j ACCEPT
COMMIT
""",
]

COMMANDS = [
    ["-N", "FOO"], ["-A", "INPUT", "-s", "1.1.1.1,2.2.2.2", "-j", "FOO"], ["-I", "INPUT", "2", "-p", "udp"],
    ["-R", "INPUT", "1", "-p", "icmp", "-j", "FOO"], ["-D", "INPUT", "-s", "2.2.2.2", "-j", "FOO"],
    ["-X", "FOO"], ["-D", "INPUT", "9"], ["-I", "INPUT", "9", "-j", "ACCEPT"], ["-A", "NOPE", "-j", "ACCEPT"],
    ["-N", "FOO"], ["-C", "INPUT", "-j", "ACCEPT"], ["-C", "INPUT", "-p", "udp"], ["-P", "FOO", "DROP"],
    ["-P", "INPUT", "BOGUS"], ["-P", "FORWARD", "DROP"], ["--bogus"], ["-A", "INPUT", "-D", "INPUT"],
    ["-N", "-foo"], ["-A", "INPUT", "-s", "1.2.3.4/33"], ["-A", "INPUT", "-o", "eth0"], ["-N", "BAR"],
    ["-E", "BAR", "BAZ"], ["-E", "BAZ", "FOO"], ["-A", "INPUT", "-j", "NOPE"], ["-A", "INPUT", "-p", "nosuch"],
    ["-A", "INPUT", "-i", "eth0", "-i", "eth1"], ["-A", "INPUT", "bogus"], ["-A", "INPUT", "-m", "nosuch"],
    ["-F", "FOO"], ["-Z"], ["-X", "BAZ"],
]


def kernel_save(ns, text: str, *args: str) -> tuple[int, str, str]:
    ns.run(["iptables-restore", *args], input=text)
    out = ns.run(["iptables-save", "-c"]).stdout
    return 0, strip_header(out), ""


def strip_header(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


@pytest.mark.parametrize("text", CORE_RULESETS, ids=["filter", "all-tables"])
def test_save_matches_the_real_tool(kernel_ns, text):
    kernel_ns.run(["iptables-restore"], input=text)
    theirs = strip_header(kernel_ns.run(["iptables-save", "-c"]).stdout)
    state = IptablesState(4)
    restore(text, state)
    assert save(state, counters=True, header=False) == theirs


@pytest.mark.parametrize("listing", [
    ["-S"], ["-S", "-v"], ["-L", "-n"], ["-L", "-n", "-v"], ["-L", "-n", "-v", "-x", "--line-numbers"],
    ["-L", "INPUT", "-n", "--line-numbers"], ["-S", "INPUT", "2"], ["-t", "nat", "-L", "-n", "-v"],
])
def test_listings_match_the_real_tool(kernel_ns, listing):
    text = CORE_RULESETS[0]
    kernel_ns.run(["iptables-restore"], input=text)
    theirs = kernel_ns.run(["iptables", *listing], check=False)
    state = IptablesState(4)
    restore(text, state)
    assert run_iptables(listing, state) == (theirs.returncode, theirs.stdout, theirs.stderr)


def test_command_sequence_matches_the_real_tool(kernel_ns):
    """Each command's exit status, output and error text, and the resulting ruleset, step by step."""
    state = IptablesState(4)
    kernel_ns.run(["iptables", "-A", "INPUT", "-j", "ACCEPT"])
    run_iptables(["-A", "INPUT", "-j", "ACCEPT"], state)
    for argv in COMMANDS:
        theirs = kernel_ns.run(["iptables", *argv], check=False)
        ours = run_iptables(argv, state)
        assert ours == (theirs.returncode, theirs.stdout, theirs.stderr), argv
        real = strip_header(kernel_ns.run(["iptables-save", "-c"]).stdout)
        assert save(state, counters=True, header=False) == real, argv


@pytest.mark.parametrize("text", [
    "*filter\n-A INPUT -p tcp\n", "*nosuch\nCOMMIT\n", "*filter\n:INPUT BOGUS [0:0]\nCOMMIT\n",
    "*filter\n-A NOCHAIN -j ACCEPT\nCOMMIT\n", "*filter\n-A INPUT -j ACCEPT extra\nCOMMIT\n",
    "*filter\n-A INPUT -i\nCOMMIT\n", "*filter\n-A INPUT -j NOPE\nCOMMIT\n",
    "*filter\n-A INPUT --foo\nCOMMIT\n", "*filter\n-D INPUT -j ACCEPT\nCOMMIT\n",
    "*filter\n-A INPUT -p udp -j REJECT --reject-with tcp-rst\nCOMMIT\n",      # refused by the kernel
    "*mangle\n-A INPUT -j REJECT\nCOMMIT\n",
])
def test_restore_errors_match_the_real_tool(kernel_ns, text):
    # (a chain still referenced cannot be deleted: see test_deleting_a_referenced_chain_fails_like_the_kernel)
    theirs = kernel_ns.run(["iptables-restore"], input=text, check=False)
    state = IptablesState(4)
    with pytest.raises(RestoreError) as err:
        restore(text, state)
    assert (err.value.rc, str(err.value) + "\n") == (theirs.returncode, theirs.stderr)


EXTENSIONS = (Path(__file__).parent / "data" / "extensions.rules").read_text()


def test_every_match_and_target_saves_like_the_real_tool(kernel_ns):
    """tests/data/extensions.rules uses every supported match and target, in every table."""
    kernel_ns.run(["iptables-restore"], input=EXTENSIONS)
    theirs = strip_header(kernel_ns.run(["iptables-save"]).stdout)
    state = IptablesState(4)
    restore(EXTENSIONS, state)
    assert save(state, header=False) == theirs
    # Our canonical output, loaded again, is a fixed point in both implementations.
    again = IptablesState(4)
    restore(theirs, again)
    assert save(again, header=False) == theirs


@pytest.mark.parametrize("table", ["raw", "mangle", "filter", "nat"])
@pytest.mark.parametrize("flags", [["-L", "-n", "-v"], ["-L"], ["-S"]])
def test_every_extension_lists_like_the_real_tool(kernel_ns, table, flags):
    kernel_ns.run(["iptables-restore"], input=EXTENSIONS)
    theirs = kernel_ns.run(["iptables", "-t", table, *flags])
    state = IptablesState(4)
    restore(EXTENSIONS, state)
    assert run_iptables(["-t", table, *flags], state) == (theirs.returncode, theirs.stdout, theirs.stderr)


@pytest.mark.parametrize("argv", [
    ["-A", "INPUT", "-p", "tcp", "--dport", "99999"], ["-A", "INPUT", "-p", "tcp", "--dport", "80", "--dport", "81"],
    ["-A", "INPUT", "-p", "udp", "-m", "tcp", "--dport", "80"], ["-A", "INPUT", "-m", "tcp", "--dport", "80"],
    ["-A", "INPUT", "-p", "udp", "-j", "DNAT", "--to-destination", "1.2.3.4"],
    # refused by the kernel's checkentry (EINVAL on append)
    ["-A", "INPUT", "-p", "udp", "-j", "REJECT", "--reject-with", "tcp-reset"],
    ["-A", "INPUT", "!", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
    ["-A", "OUTPUT", "-m", "mac", "--mac-source", "00:11:22:33:44:55"],
    ["-A", "INPUT", "-m", "recent", "--set", "--seconds", "5"],
    ["-A", "OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "--limit-iface-in"],
    ["-A", "INPUT", "-j", "LOG", "--log-level", "9"], ["-A", "INPUT", "-j", "REJECT", "--reject-with", "icmp-net"],
])
def test_extension_errors_match_the_real_tool(kernel_ns, argv):
    theirs = kernel_ns.run(["iptables", *argv], check=False)
    state = IptablesState(4)
    assert run_iptables(argv, state) == (theirs.returncode, theirs.stdout, theirs.stderr)


def test_deleting_a_referenced_chain_fails_like_the_kernel(kernel_ns):
    base = "*filter\n:A - [0:0]\n-A INPUT -j A\nCOMMIT\n"
    change = "*filter\n-X A\nCOMMIT\n"
    kernel_ns.run(["iptables-restore"], input=base)
    theirs = kernel_ns.run(["iptables-restore", "-n"], input=change, check=False)
    state = IptablesState(4)
    restore(base, state)
    with pytest.raises(RestoreError) as err:
        restore(change, state, noflush=True)
    assert (err.value.rc, str(err.value) + "\n") == (theirs.returncode, theirs.stderr)
