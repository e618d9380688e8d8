"""IPsec matches (esp, ah, policy) against the real iptables/ip6tables 1.8.9."""

from __future__ import annotations

import shlex

import pytest
from tests.extcompare import mismatches

CASES4 = [
    "-A INPUT -p esp -m esp --espspi 500", "-A INPUT -p esp -m esp ! --espspi 1:0x100", "-A INPUT -p esp -m esp",
    "-A INPUT -m esp --espspi 1", "-A INPUT -p 50 -m esp --espspi 0:4294967295",
    "-A INPUT -p ah -m ah --ahspi 500", "-A INPUT -p ah -m ah ! --ahspi 1:2", "-A INPUT -p ah -m ah",
    "-A INPUT -p ah -m ah --ahlen 1", "-A INPUT -m ah --ahspi 1",
    "-A INPUT -m policy --dir in --pol none", "-A INPUT -m policy --dir in --pol ipsec --proto esp",
    "-A FORWARD -m policy --dir out --pol ipsec --strict --reqid 1 --spi 0x10 --proto ah --mode tunnel "
    "--tunnel-src 10.0.0.0/8 --tunnel-dst 192.168.1.1 --next --proto esp",
    "-A INPUT -m policy --dir in --pol ipsec ! --reqid 5 ! --mode transport",
    "-A OUTPUT -m policy --dir in --pol none", "-A INPUT -m policy --pol none", "-A INPUT -m policy --dir up",
    "-A INPUT -m policy --dir in --pol maybe", "-A INPUT -m policy --dir in --pol none --strict",
    "-A INPUT -m policy --dir in --pol ipsec --proto tcp", "-A INPUT -m policy --dir in --pol ipsec --mode foo",
    "-A INPUT -m policy --dir in --pol ipsec --reqid 1 --reqid 2", "-A INPUT -m policy --dir in --pol ipsec --next",
    "-A INPUT -m policy --dir in --pol ipsec --reqid 1 --next --reqid 2",
    "-A INPUT -m policy --dir in --pol ipsec --strict --next --reqid 2",
    "-A INPUT -m policy --dir in --pol ipsec --mode transport --tunnel-src 1.2.3.4",
    "-A INPUT -m policy --dir in --dir out --pol none", "-A INPUT -m policy --dir in --pol ipsec --proto 108",
]
CASES6 = [
    "-A INPUT -m esp --espspi 500", "-A INPUT -p esp -m esp --espspi 500", "-A INPUT -m ah --ahspi 500",
    "-A INPUT -m ah ! --ahspi 1:2 ! --ahlen 3 --ahres", "-A INPUT -m ah --ahlen 0", "-A INPUT -m ah",
    "-A INPUT -m policy --dir in --pol ipsec --tunnel-src 2001:db8::/32 --mode tunnel",
]


@pytest.mark.kernel
@pytest.mark.parametrize(("family", "cases"), [(4, CASES4), (6, CASES6)], ids=["ipv4", "ipv6"])
def test_ipsec_extensions_match_the_real_tool(kernel_ns, family, cases):
    assert mismatches(kernel_ns, family, [shlex.split(c) for c in cases]) == []

MORE4 = [
    "-A INPUT -p 108 -m ipcomp --ipcompspi 5", "-A INPUT -p ipcomp -m ipcomp ! --ipcompspi 1:9 --compres",
    "-A INPUT -p 108 -m ipcomp", "-A INPUT -m ipcomp --ipcompspi 5",
    "-A INPUT -p tcp -m osf --genre Linux", "-A INPUT -p tcp -m osf ! --genre Windows --ttl 2 --log 1",
    "-A INPUT -m osf --genre Linux", "-A OUTPUT -p tcp -m osf --genre Linux", "-A INPUT -p tcp -m osf --ttl 3 --genre x",
    "-A INPUT -p tcp -m osf",
]
MORE6 = ["-A INPUT -p 108 -m ipcomp --ipcompspi 5", "-A INPUT -p tcp -m osf --genre Linux"]


@pytest.mark.kernel
@pytest.mark.parametrize(("family", "cases"), [(4, MORE4), (6, MORE6)], ids=["ipv4", "ipv6"])
def test_ipcomp_and_osf_match_the_real_tool(kernel_ns, family, cases):
    assert mismatches(kernel_ns, family, [shlex.split(c) for c in cases]) == []
