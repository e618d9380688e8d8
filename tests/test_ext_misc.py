"""time and u32 (and the small metadata matches) against the real iptables/ip6tables 1.8.9."""

from __future__ import annotations

import shlex

import pytest
from tests.extcompare import mismatches

CASES4 = [
    "-A INPUT -m time --timestart 10:00", "-A INPUT -m time --timestart 08:30:15 --timestop 17:45 --weekdays Mon,Tue,Fr",
    "-A INPUT -m time ! --weekdays Sat,Sun", "-A INPUT -m time --monthdays 1,15,22,23,31",
    "-A INPUT -m time ! --monthdays 1 --kerneltz", "-A INPUT -m time --datestart 2024-01-01 --datestop 2025-06-30T12:00",
    "-A INPUT -m time --datestart 2024-02-03T04:05:06 --utc", "-A INPUT -m time --timestart 22:00 --timestop 06:00 --contiguous",
    "-A INPUT -m time --timestart 06:00 --timestop 22:00 --contiguous", "-A INPUT -m time --timestart 25:00",
    "-A INPUT -m time --timestart 10:70", "-A INPUT -m time --timestart 10:10:99", "-A INPUT -m time --timestart 10",
    "-A INPUT -m time --weekdays 0", "-A INPUT -m time --weekdays 3,Xy", "-A INPUT -m time --weekdays Monday,7",
    "-A INPUT -m time --monthdays 32", "-A INPUT -m time --datestart 1969", "-A INPUT -m time --datestart 2024-13",
    "-A INPUT -m time --datestart 2024-1-1T1:2:3x", "-A INPUT -m time --utc --kerneltz", "-A INPUT -m time",
    "-A INPUT -m u32 --u32 '0>>22&0x3C@0>>16=80'", "-A INPUT -m u32 ! --u32 '6&0xFF=1 && 0>>22&0x3C@4=0x1:0x100,7'",
    "-A INPUT -m u32 --u32 '0=1'", "-A INPUT -m u32 --u32 ''", "-A INPUT -m u32 --u32 '=1'",
    "-A INPUT -m u32 --u32 '0<1=1'", "-A INPUT -m u32 --u32 '0 x 1=1'", "-A INPUT -m u32 --u32 '0=1&2'",
    "-A INPUT -m u32 --u32 '0=1,'", "-A INPUT -m u32 --u32 '0=1 2'", "-A INPUT -m u32 --u32 '0'",
    "-A INPUT -m u32 --u32 '0=&&1=2'", "-A INPUT -m u32 --u32 '0=0x100000000'", "-A INPUT -m u32",
    "-A INPUT -m u32 --u32 ' 0 & 0xff = 1 : 5 , 9 '",
]
CASES6 = [
    "-A INPUT -m time --timestart 10:00 --weekdays Mon", "-A INPUT -m u32 --u32 '0>>28=6'",
]


@pytest.mark.kernel
@pytest.mark.parametrize(("family", "cases"), [(4, CASES4), (6, CASES6)], ids=["ipv4", "ipv6"])
def test_misc_extensions_match_the_real_tool(kernel_ns, family, cases):
    assert mismatches(kernel_ns, family, [shlex.split(c) for c in cases]) == []

BPF4 = [
    "-A INPUT -m bpf --bytecode '4,48 0 0 9,21 0 1 6,6 0 0 1,6 0 0 0'", "-A INPUT -m bpf --bytecode '1,6 0 0 0'",
    "-A INPUT -m bpf --bytecode '1,6 0 0 0,'", "-A INPUT -m bpf --bytecode '0,'", "-A INPUT -m bpf --bytecode x",
    "-A INPUT -m bpf --bytecode '2,6 0 0 0'", "-A INPUT -m bpf --bytecode '1,6 0 0 0,6 0 0 1'",
    "-A INPUT -m bpf --bytecode '1,6 x'", "-A INPUT -m bpf", "-A INPUT -m bpf --object-pinned /sys/fs/bpf/nope",
    "-A INPUT -m bpf --bytecode '65,6 0 0 0'",
]
BPF6 = ["-A INPUT -m bpf --bytecode '4,48 0 0 6,21 0 1 17,6 0 0 1,6 0 0 0'"]


@pytest.mark.kernel
@pytest.mark.parametrize(("family", "cases"), [(4, BPF4), (6, BPF6)], ids=["ipv4", "ipv6"])
def test_bpf_matches_the_real_tool(kernel_ns, family, cases):
    assert mismatches(kernel_ns, family, [shlex.split(c) for c in cases]) == []

DCCP4 = [
    "-A INPUT -p dccp -m dccp --dport 5000", "-A INPUT -p dccp --sport 1:1024 ! --dport 22",
    "-A INPUT -p dccp -m dccp --dccp-types REQUEST,response,INVALID", "-A INPUT -p dccp -m dccp ! --dccp-types DATA "
    "! --dccp-option 3", "-A INPUT -p dccp -m dccp --dccp-types BOGUS", "-A INPUT -m dccp --dport 1",
    "-A INPUT -p dccp -m dccp --dccp-option 0", "-A INPUT -p dccp -m dccp", "-A INPUT -p dccp --dport 0:65535",
    "-A INPUT -p 33 -m dccp --sport ssh",
]
DCCP6 = ["-A INPUT -p dccp -m dccp --dport 5000 --dccp-types SYNC"]


@pytest.mark.kernel
@pytest.mark.parametrize(("family", "cases"), [(4, DCCP4), (6, DCCP6)], ids=["ipv4", "ipv6"])
def test_dccp_matches_the_real_tool(kernel_ns, family, cases):
    assert mismatches(kernel_ns, family, [shlex.split(c) for c in cases]) == []
