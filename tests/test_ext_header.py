"""Header-field extensions (dscp/DSCP, tos/TOS, ecn/ECN, ttl/TTL, hl/HL) against the real
iptables/ip6tables 1.8.9, and their effect in the packet path."""

from __future__ import annotations

import shlex

import pytest
from tests.extcompare import mismatches

CASES4 = [
    "-A INPUT -m dscp --dscp 10", "-A INPUT -m dscp ! --dscp 0x2e", "-A INPUT -m dscp --dscp-class AF41",
    "-A INPUT -m dscp ! --dscp-class ef", "-A INPUT -m dscp --dscp 64", "-A INPUT -m dscp --dscp-class XX",
    "-A INPUT -m dscp", "-A INPUT -m dscp --dscp 1 --dscp-class BE", "-A INPUT -m dscp --dscp-class CS10",
    "-t mangle -A POSTROUTING -j DSCP --set-dscp 0x2e", "-t mangle -A OUTPUT -j DSCP --set-dscp-class AF21",
    "-A INPUT -j DSCP --set-dscp 1", "-t mangle -A OUTPUT -j DSCP", "-t mangle -A OUTPUT -j DSCP --set-dscp 64",
    "-A INPUT -m tos --tos 0x10", "-A INPUT -m tos ! --tos Minimize-Delay", "-A INPUT -m tos --tos 0x08/0xff",
    "-A INPUT -m tos --tos normal-service", "-A INPUT -m tos --tos 0x100", "-A INPUT -m tos --tos foo",
    "-A INPUT -m tos --tos 8/x",
    "-t mangle -A PREROUTING -j TOS --set-tos 0x10", "-t mangle -A PREROUTING -j TOS --set-tos Maximize-Throughput",
    "-t mangle -A PREROUTING -j TOS --and-tos 0x0f", "-t mangle -A PREROUTING -j TOS --or-tos 0x04",
    "-t mangle -A PREROUTING -j TOS --xor-tos 0x01", "-t mangle -A PREROUTING -j TOS --set-tos 0x10/0x3f",
    "-t mangle -A PREROUTING -j TOS --set-tos 0x0/0x3f", "-t mangle -A PREROUTING -j TOS",
    "-t mangle -A PREROUTING -j TOS --and-tos 1 --or-tos 2",
    "-A INPUT -p tcp -m ecn --ecn-tcp-ece --ecn-tcp-cwr", "-A INPUT -p tcp -m ecn ! --ecn-tcp-cwr ! --ecn-ip-ect 2",
    "-A INPUT -m ecn --ecn-ip-ect 3", "-A INPUT -m ecn --ecn-tcp-ece", "-A INPUT -m ecn", "-A INPUT -m ecn --ecn-ip-ect 4",
    "-t mangle -A PREROUTING -p tcp -j ECN --ecn-tcp-remove", "-t mangle -A PREROUTING -p tcp -j ECN --ecn-tcp-cwr 1",
    "-t mangle -A PREROUTING -p tcp -j ECN --ecn-tcp-ece 0 --ecn-tcp-cwr 0",
    "-t mangle -A PREROUTING -j ECN --ecn-ip-ect 1", "-t mangle -A PREROUTING -j ECN",
    "-t mangle -A PREROUTING -j ECN --ecn-tcp-remove --ecn-tcp-cwr 1", "-t mangle -A PREROUTING -j ECN --ecn-tcp-remove",
    "-A INPUT -m ttl --ttl-eq 64", "-A INPUT -m ttl ! --ttl-eq 1", "-A INPUT -m ttl --ttl-lt 2",
    "-A INPUT -m ttl --ttl-gt 254", "-A INPUT -m ttl --ttl 5", "-A INPUT -m ttl", "-A INPUT -m ttl --ttl-lt 1 --ttl-gt 2",
    "-A INPUT -m ttl ! --ttl-lt 3", "-A INPUT -m ttl --ttl-eq 256",
    "-t mangle -A PREROUTING -j TTL --ttl-set 64", "-t mangle -A PREROUTING -j TTL --ttl-dec 1",
    "-t mangle -A PREROUTING -j TTL --ttl-inc 2", "-t mangle -A PREROUTING -j TTL --ttl-dec 0",
    "-t mangle -A PREROUTING -j TTL", "-A INPUT -j TTL --ttl-set 1", "-A INPUT -m hl --hl-eq 1",
    "-t mangle -A PREROUTING -j TTL --ttl-set 1 --ttl-inc 1",
]
CASES6 = [
    "-A INPUT -m dscp --dscp 10", "-t mangle -A POSTROUTING -j DSCP --set-dscp-class EF", "-A INPUT -m tos --tos 0x10",
    "-t mangle -A PREROUTING -j TOS --set-tos 0x10", "-A INPUT -m ecn --ecn-ip-ect 1",
    "-t mangle -A PREROUTING -p tcp -j ECN --ecn-tcp-remove",
    "-A INPUT -m hl --hl-eq 64", "-A INPUT -m hl ! --hl-eq 1", "-A INPUT -m hl --hl-lt 2", "-A INPUT -m hl --hl-gt 3",
    "-A INPUT -m hl --hl 255", "-A INPUT -m hl", "-A INPUT -m ttl --ttl-eq 1",
    "-t mangle -A PREROUTING -j HL --hl-set 64", "-t mangle -A PREROUTING -j HL --hl-dec 1",
    "-t mangle -A PREROUTING -j HL --hl-inc 2", "-t mangle -A PREROUTING -j HL", "-A INPUT -j HL --hl-set 1",
    "-t mangle -A PREROUTING -j TTL --ttl-set 1",
]

@pytest.mark.kernel
@pytest.mark.parametrize(("family", "cases"), [(4, CASES4), (6, CASES6)], ids=["ipv4", "ipv6"])
def test_header_extensions_match_the_real_tool(kernel_ns, family, cases):
    assert mismatches(kernel_ns, family, [shlex.split(c) for c in cases]) == []
