"""Metadata matches (cpu, devgroup, realm, cgroup, cluster, connlabel, socket) against the real
iptables/ip6tables 1.8.9."""

from __future__ import annotations

import shlex

import pytest
from tests.extcompare import mismatches

CASES4 = [
    "-A INPUT -m cpu --cpu 1", "-A INPUT -m cpu ! --cpu 0x3", "-A INPUT -m cpu", "-A INPUT -m cpu --cpu -1",
    "-A INPUT -m devgroup --src-group 1", "-A INPUT -m devgroup ! --src-group default",
    "-A FORWARD -m devgroup --src-group 0x10/0xf0 ! --dst-group 2", "-A INPUT -m devgroup --dst-group 2",
    "-A INPUT -m devgroup --src-group x", "-A INPUT -m devgroup --src-group 1/x", "-A INPUT -m devgroup",
    "-A INPUT -m devgroup --src-group 1/2x", "-A OUTPUT -m devgroup --dst-group 0/0xffffffff",
    "-A INPUT -m realm --realm 1", "-A INPUT -m realm ! --realm 3/0xff", "-A INPUT -m realm --realm cosmos",
    "-A INPUT -m realm --realm foo", "-A INPUT -m realm", "-A FORWARD -m realm --realm 0", "-t raw -A PREROUTING -m realm --realm 1",
    "-A OUTPUT -m cgroup --path /", "-A OUTPUT -m cgroup ! --cgroup 0x100001", "-A OUTPUT -m cgroup",
    "-A OUTPUT -m cgroup --path / --cgroup 1", "-A FORWARD -m cgroup --cgroup 1", "-A INPUT -m cgroup ! --path /",
    "-A INPUT -m cluster --cluster-total-nodes 2 --cluster-local-node 1 --cluster-hash-seed 0xdeadbeef",
    "-A INPUT -m cluster --cluster-total-nodes 4 ! --cluster-local-nodemask 5 --cluster-hash-seed 1",
    "-A INPUT -m cluster --cluster-total-nodes 2 --cluster-local-node 3 --cluster-hash-seed 1",
    "-A INPUT -m cluster --cluster-total-nodes 2 --cluster-local-nodemask 8 --cluster-hash-seed 1",
    "-A INPUT -m cluster --cluster-total-nodes 2 --cluster-hash-seed 1", "-A INPUT -m cluster --cluster-local-node 1",
    "-A INPUT -m cluster --cluster-total-nodes 33 --cluster-local-node 1 --cluster-hash-seed 1",
    "-A INPUT -m cluster --cluster-total-nodes 2 --cluster-local-node 1 --cluster-local-nodemask 1 --cluster-hash-seed 1",
    "-A INPUT -m connlabel --label 129",      # (a label name makes the tool warn about connlabel.conf: not modelled)
    "-A INPUT -m socket", "-A INPUT -m socket --transparent --nowildcard --restore-skmark",
    "-t mangle -A PREROUTING -m socket --nowildcard", "-A OUTPUT -m socket", "-A INPUT -m socket --restore-skmark --transparent",
]
CASES6 = [
    "-A INPUT -m cpu --cpu 1", "-A INPUT -m devgroup --src-group 1", "-A INPUT -m realm --realm 1",
    "-A OUTPUT -m cgroup --path /", "-A INPUT -m socket --transparent",
    "-A INPUT -m cluster --cluster-total-nodes 2 --cluster-local-node 1 --cluster-hash-seed 0xdeadbeef",
]


@pytest.mark.kernel
@pytest.mark.parametrize(("family", "cases"), [(4, CASES4), (6, CASES6)], ids=["ipv4", "ipv6"])
def test_metadata_extensions_match_the_real_tool(kernel_ns, family, cases):
    assert mismatches(kernel_ns, family, [shlex.split(c) for c in cases]) == []
