"""ipset: set types, timeouts, nomatch, list:set, atomic restore, the iptables set match, and ipset 7.17's output."""

from __future__ import annotations

import re
import shutil

import pytest

from kproxy.ipset.cli import run_ipset
from kproxy.ipset.registry import IpsetRegistry
from kproxy.node import Node
from kproxy.packet import Packet

COMMANDS = [
    ["create", "S1", "hash:ip"], ["add", "S1", "10.0.0.2"], ["add", "S1", "10.0.0.1"],
    ["create", "S2", "hash:ip,port", "timeout", "300", "counters", "comment"],
    ["add", "S2", "10.0.0.1,tcp:80", "timeout", "100", "comment", "hello"], ["add", "S2", "10.0.0.1,udp:53"],
    ["create", "S3", "hash:net", "family", "inet", "hashsize", "64", "maxelem", "1000"], ["add", "S3", "10.0.0.0/8"],
    ["add", "S3", "10.1.0.0/16", "nomatch"], ["create", "S4", "bitmap:port", "range", "1-1024"], ["add", "S4", "80"],
    ["create", "S5", "list:set"], ["add", "S5", "S1"], ["create", "S6", "hash:ip,port,ip"],
    ["add", "S6", "1.2.3.4,tcp:80,5.6.7.8"], ["create", "S7", "hash:ip,port,net"], ["add", "S7", "1.2.3.4,udp:53,10.0.0.0/24"],
    ["create", "S8", "hash:net,iface"], ["add", "S8", "10.0.0.0/8,eth0"],
    ["test", "S1", "10.0.0.1"], ["test", "S1", "10.0.0.9"], ["add", "S1", "10.0.0.1"], ["add", "S1", "nope"],
    ["create", "S1", "hash:ip"], ["list", "nosuch"], ["destroy", "S1"], ["add", "S9", "1.1.1.1"],
    ["test", "S3", "10.1.2.3"], ["test", "S3", "10.2.0.1"], ["del", "S4", "81"], ["swap", "S1", "S3"],
]


def normalise(text: str) -> str:
    """The kernel's random initval and allocator-dependent memory size aside, and members sorted per set."""
    text = re.sub(r"initval 0x[0-9a-f]+", "initval X", text)
    text = re.sub(r"Size in memory: \d+", "Size in memory: X", text)
    text = re.sub(r"(\w) timeout \d+", r"\1 timeout T", text)   # remaining seconds tick in the kernel
    if text.startswith("create"):
        return "\n".join(sorted(text.splitlines()))   # save: order of members within a set is the kernel's hash order
    blocks = []
    for block in text.split("\n\n"):
        head, sep, members = block.partition("Members:\n")
        blocks.append(head + sep + "\n".join(sorted(filter(None, members.split("\n")))))
    return "\n\n".join(blocks)


def test_types_nomatch_and_list_set():
    reg = IpsetRegistry()
    for argv in COMMANDS[:19]:
        assert run_ipset(argv, reg, 1000.0)[0] == 0, argv
    assert run_ipset(["test", "S3", "10.1.2.3"], reg, 1000.0)[0] == 1          # nomatch wins: more specific
    assert run_ipset(["test", "S3", "10.2.0.1"], reg, 1000.0)[0] == 0
    assert run_ipset(["test", "S5", "S1"], reg, 1000.0)[0] == 0                # a member set
    assert run_ipset(["test", "S2", "10.0.0.1,udp:53"], reg, 1000.0)[0] == 0
    assert run_ipset(["test", "S2", "10.0.0.1,udp:53"], reg, 1000.0 + 301)[0] == 1   # timed out


def test_restore_is_all_or_nothing():
    reg = IpsetRegistry()
    run_ipset(["create", "A", "hash:ip"], reg, 0)
    rc, _, err = run_ipset(["restore"], reg, 0, stdin="add A 1.1.1.1\nadd A bogus\n")
    assert rc == 1 and err == "ipset v7.17: Error in line 2: Syntax error: cannot parse bogus: resolving to IPv4 address failed\n"
    assert run_ipset(["test", "A", "1.1.1.1"], reg, 0)[0] == 1


def test_iptables_set_match_and_target():
    node = Node.default()
    run_ipset(["create", "allowed", "hash:ip"], node.ipsets, 0)
    run_ipset(["create", "seen", "hash:ip"], node.ipsets, 0)
    assert node.iptables_cmd(["-A", "INPUT", "-j", "SET", "--add-set", "seen", "src"])[0] == 0
    assert node.iptables_cmd(["-A", "INPUT", "-m", "set", "!", "--match-set", "allowed", "src", "-j", "DROP"])[0] == 0
    run_ipset(["add", "allowed", "192.168.1.5"], node.ipsets, 0)
    assert node.receive(Packet.make("192.168.1.5", "192.168.1.10", "udp", 1, 2), "eth0").fate == "delivered"
    assert node.receive(Packet.make("192.168.1.6", "192.168.1.10", "udp", 1, 2), "eth0").fate == "dropped"
    assert run_ipset(["test", "seen", "192.168.1.6"], node.ipsets, 0)[0] == 0
    out = run_ipset(["list", "allowed"], node.ipsets, 0)[1]
    assert "References: 1" in out
    assert run_ipset(["destroy", "allowed"], node.ipsets, 0)[2] == \
        "ipset v7.17: Set cannot be destroyed: it is in use by a kernel component\n"


@pytest.mark.kernel
def test_output_and_errors_match_ipset_7_17(kernel_ns):
    if shutil.which("ipset") is None and not shutil.os.path.exists("/usr/sbin/ipset"):
        pytest.skip("ipset is not installed")
    reg = IpsetRegistry()
    for argv in COMMANDS:
        theirs = kernel_ns.run(["ipset", *argv], check=False)
        ours = run_ipset(argv, reg, 1000.0)
        assert (ours[0], ours[1], ours[2]) == (theirs.returncode, theirs.stdout, theirs.stderr), argv
    for argv in (["list"], ["save"], ["list", "-t"], ["list", "-n"]):
        theirs = kernel_ns.run(["ipset", *argv], check=False)
        ours = run_ipset(argv, reg, 1000.0)
        assert normalise(ours[1]) == normalise(theirs.stdout), argv


def test_list_set_matches_through_its_member_sets():
    node = Node.default()
    for argv in (["create", "a", "hash:ip"], ["create", "b", "hash:net"], ["create", "both", "list:set"],
                 ["add", "both", "a"], ["add", "both", "b"], ["add", "b", "192.168.1.0/28"]):
        assert run_ipset(argv, node.ipsets, 0)[0] == 0, argv
    node.iptables_cmd(["-A", "INPUT", "-m", "set", "--match-set", "both", "src", "-j", "DROP"])
    assert node.receive(Packet.make("192.168.1.5", "192.168.1.10", "udp", 1, 2), "eth0").fate == "dropped"
    assert node.receive(Packet.make("192.168.1.50", "192.168.1.10", "udp", 1, 2), "eth0").fate == "delivered"
