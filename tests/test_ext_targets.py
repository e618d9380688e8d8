"""Targets (NFLOG, NFQUEUE, CLASSIFY, AUDIT, LED, SECMARK, CONNSECMARK, TEE, TPROXY, NETMAP, SYNPROXY,
TCPOPTSTRIP, IDLETIMER, HMARK, RATEEST, DNPT/SNPT) against the real iptables/ip6tables 1.8.9."""

from __future__ import annotations

import shlex

import pytest
from tests.extcompare import mismatches

CASES4 = [
    "-A INPUT -j NFLOG", "-A INPUT -j NFLOG --nflog-group 5 --nflog-prefix 'dropped: ' --nflog-size 128 "
    "--nflog-threshold 10", "-A INPUT -j NFLOG --nflog-range 64", "-A INPUT -j NFLOG --nflog-group 70000",
    "-A INPUT -j NFLOG --nflog-prefix ''",
    "-A INPUT -j NFLOG --nflog-prefix " + "p" * 70,
    "-A INPUT -j NFQUEUE", "-A INPUT -j NFQUEUE --queue-num 3 --queue-bypass",
    "-A INPUT -j NFQUEUE --queue-balance 2:5 --queue-cpu-fanout", "-A INPUT -j NFQUEUE --queue-balance 5",
    "-A INPUT -j NFQUEUE --queue-balance 5:2", "-A INPUT -j NFQUEUE --queue-cpu-fanout",
    "-A INPUT -j NFQUEUE --queue-num 1 --queue-balance 1:2", "-A INPUT -j NFQUEUE --queue-balance 1:65535",
    "-t mangle -A POSTROUTING -j CLASSIFY --set-class 1:10", "-t mangle -A POSTROUTING -j CLASSIFY --set-class 0xffff:0x1",
    "-t mangle -A POSTROUTING -j CLASSIFY --set-class 1", "-t mangle -A INPUT -j CLASSIFY --set-class 1:1",
    "-A OUTPUT -j CLASSIFY --set-class 2:3",
    "-A INPUT -j AUDIT --type accept", "-A INPUT -j AUDIT --type DROP", "-A INPUT -j AUDIT --type bogus",
    "-A INPUT -j AUDIT",
    "-A INPUT -j LED --led-trigger-id ssh", "-A INPUT -j LED --led-trigger-id 'a\"b' --led-delay 100 --led-always-blink",
    "-A INPUT -j LED --led-trigger-id x --led-delay inf", "-A INPUT -j LED --led-trigger-id 01234567890123456",
    "-A INPUT -j LED --led-trigger-id y --led-delay -5", "-A INPUT -j LED --led-trigger-id z --led-delay 0",
    "-t mangle -A INPUT -j SECMARK --selctx system_u:object_r:ssh_packet_t:s0", "-A INPUT -j SECMARK --selctx x",
    "-t mangle -A INPUT -j CONNSECMARK --save", "-t security -A INPUT -j CONNSECMARK --restore",
    "-t mangle -A INPUT -j CONNSECMARK", "-t mangle -A INPUT -j CONNSECMARK --save --restore",
    "-A INPUT -j CONNSECMARK --save",
]
CASES6 = [
    "-A INPUT -j NFLOG --nflog-group 2", "-A INPUT -j NFQUEUE --queue-num 3",
    "-t mangle -A POSTROUTING -j CLASSIFY --set-class 1:10", "-A INPUT -j AUDIT --type reject",
    "-A INPUT -j LED --led-trigger-id ssh", "-t mangle -A INPUT -j CONNSECMARK --save",
]


@pytest.mark.kernel
@pytest.mark.parametrize(("family", "cases"), [(4, CASES4), (6, CASES6)], ids=["ipv4", "ipv6"])
def test_targets_match_the_real_tool(kernel_ns, family, cases):
    assert mismatches(kernel_ns, family, [shlex.split(c) for c in cases]) == []
