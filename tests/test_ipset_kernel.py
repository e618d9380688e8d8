"""Our ipset against the real ipset 7.17 in a kp- namespace: same commands, same list/save text.

Normalised: the "Size in memory" line (allocator-dependent) and remaining element timeouts (the kernel
counts jiffies since the add). Hash sets are compared with ``-sorted`` because their unsorted order is
the kernel's bucket order.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kproxy.ipset.cli import run_ipset
from kproxy.ipset.registry import IpsetRegistry
from kproxy.lab.netns import Netns, kernel_lab_available

pytestmark = pytest.mark.kernel

IPSET = shutil.which("ipset") or ("/usr/sbin/ipset" if Path("/usr/sbin/ipset").exists() else None)

SCRIPT = """\
create a hash:ip initval 0x00000001
add a 10.0.0.1
add a 10.0.0.10
add a 9.0.0.1
create n hash:net counters comment initval 0x00000002
add n 10.0.0.0/8 comment "x y"
add n 10.1.0.0/16 nomatch
add n 192.168.1.1
create tn hash:net timeout 50 counters comment initval 0x00000003
add tn 10.1.0.0/16 nomatch comment "c"
add tn 10.2.0.0/16 timeout 0
create p bitmap:port range 1-1000
add p 80
add p 22
create ipp hash:ip,port timeout 100 initval 0x00000004
add ipp 10.0.0.1,tcp:80
add ipp 10.0.0.1,udp:53 timeout 0
create ipn hash:ip,port,net initval 0x00000005
add ipn 10.0.0.1,tcp:443,192.168.0.0/24
create ipi hash:ip,port,ip initval 0x00000006
add ipi 10.0.0.1,udp:53,10.0.0.2
create ni hash:net,iface initval 0x00000007
add ni 10.0.0.0/24,eth0
create six hash:ip family inet6 initval 0x00000008
add six 2001:db8::1
create l list:set
add l a
add l p
"""


@pytest.fixture
def ns() -> Iterator[Netns]:
    reason = kernel_lab_available()
    if reason:
        pytest.skip(reason)
    if IPSET is None:
        pytest.skip("ipset is not installed")
    try:
        space = Netns.create("ipset")
    except Exception as exc:  # noqa: BLE001 - any failure to make a namespace is a skip reason
        pytest.skip(f"cannot create a network namespace: {exc}")
    try:
        yield space
    finally:
        space.delete()


def _norm(text: str) -> str:
    text = re.sub(r"(?m)^Size in memory: \d+$", "Size in memory: N", text)
    return re.sub(r"(?m)^((?:add \S+ )?\S+.*? timeout )[1-9]\d*", r"\1T", text)


def _ours(lines: list[str]) -> IpsetRegistry:
    reg = IpsetRegistry()
    for line in lines:
        rc, _, err = run_ipset(shlex.split(line), reg, 0.0)
        assert rc == 0, (line, err)
    return reg


def _kernel(ns: Netns, argv: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    proc = ns.run([str(IPSET), *argv], input=stdin, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_list_and_save_match_the_real_tool(ns: Netns) -> None:
    lines = SCRIPT.splitlines()
    for line in lines:
        rc, _, err = _kernel(ns, shlex.split(line))
        assert rc == 0, (line, err)
    reg = _ours(lines)
    for argv in (["-s", "list"], ["-s", "save"], ["list", "-t"], ["list", "-n"], ["-s", "list", "l"],
                 ["-o", "save", "-s", "list", "p"]):
        theirs = _kernel(ns, argv)
        ours = run_ipset(argv, reg, 0.5)
        assert ours[0] == theirs[0], argv
        assert _norm(ours[1]) == _norm(theirs[1]), argv


@pytest.mark.parametrize("argv", [
    ["test", "n", "10.1.2.3"], ["test", "n", "10.2.2.3"], ["test", "a", "10.0.0.1"], ["test", "a", "10.0.0.2"],
    ["add", "a", "10.0.0.1"], ["del", "a", "10.9.9.9"], ["list", "nosuch"], ["create", "a", "hash:ip"],
    ["destroy", "a"], ["swap", "a", "p"], ["rename", "a", "n"], ["add", "p", "2000"],
    ["test", "ipp", "10.0.0.1,udp:53"],
])
def test_results_and_errors_match_the_real_tool(ns: Netns, argv: list[str]) -> None:
    lines = SCRIPT.splitlines()
    rc, _, err = _kernel(ns, ["restore"], SCRIPT)
    assert rc == 0, err
    reg = _ours(lines)
    assert run_ipset(argv, reg, 0.5) == _kernel(ns, argv)


def test_restore_error_line_matches_the_real_tool(ns: Netns) -> None:
    text = "create x hash:ip\nadd x 10.0.0.1\nadd x 10.0.0.1\n"
    theirs = _kernel(ns, ["restore"], text)
    ours = run_ipset(["restore"], IpsetRegistry(), 0.0, stdin=text)
    assert (ours[0], ours[2]) == (theirs[0], theirs[2])
