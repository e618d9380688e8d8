"""IPv6 extension header matches (frag, hbh, dst, rt, mh, ipv6header, eui64) against the real ip6tables
1.8.9, and iptables refusing them as the tool does."""

from __future__ import annotations

import shlex

import pytest
from tests.extcompare import mismatches

CASES6 = [
    "-A INPUT -m frag --fragid 5", "-A INPUT -m frag ! --fragid 1:100 ! --fraglen 8 --fragres --fragfirst --fragmore",
    "-A INPUT -m frag --fraglast", "-A INPUT -m frag", "-A INPUT -m frag --fragmore --fraglast",
    "-A INPUT -m hbh --hbh-len 8 --hbh-opts 1:2,5", "-A INPUT -m hbh ! --hbh-len 0", "-A INPUT -m hbh",
    "-A INPUT -m hbh --hbh-opts 0:1", "-A INPUT -m hbh --hbh-opts x", "-A INPUT -m hbh --hbh-opts 1x",
    "-A INPUT -m dst --dst-len 2 --dst-opts 4", "-A INPUT -m dst --dst-opts 1,2,3",
    "-A INPUT -m rt --rt-type 0 -j DROP", "-A INPUT -m rt ! --rt-type 2 --rt-segsleft 1:3 ! --rt-len 4",
    "-A INPUT -m rt --rt-type 0 --rt-0-res --rt-0-addrs 2001:db8::1,2001:db8::2 --rt-0-not-strict",
    "-A INPUT -m rt --rt-0-res", "-A INPUT -m rt --rt-type 1 --rt-0-addrs ::1", "-A INPUT -m rt --rt-0-not-strict",
    "-A INPUT -m rt ! --rt-segsleft 5", "-A INPUT -m rt",
    "-A INPUT -p mh -m mh --mh-type binding-update", "-A INPUT -p mh -m mh ! --mh-type 1:home-test",
    "-A INPUT -p mh -m mh --mh-type home", "-A INPUT -p mh -m mh --mh-type bogus", "-A INPUT -p mh -m mh --mh-type 5:2",
    "-A INPUT -p mh -m mh", "-A INPUT -m mh --mh-type 1", "-A INPUT -p 135 -m mh --mh-type :3",
    "-A INPUT -m ipv6header --header frag,auth --soft", "-A INPUT -m ipv6header ! --header ipv6-nonxt",
    "-A INPUT -m ipv6header --header hop-by-hop,dst,route,esp,none,protocol", "-A INPUT -m ipv6header --header tcp",
    "-A INPUT -m ipv6header --header bogus", "-A INPUT -m ipv6header --soft", "-A INPUT -m ipv6header --header 44,60",
    "-A INPUT -m eui64", "-A OUTPUT -m eui64", "-A FORWARD -m eui64 -j ACCEPT",
]
CASES4 = [
    "-A INPUT -m frag --fragid 5", "-A INPUT -m hbh", "-A INPUT -m dst", "-A INPUT -m rt --rt-type 0",
    "-A INPUT -m mh", "-A INPUT -m ipv6header --header frag", "-A INPUT -m eui64", "-A INPUT -m hl --hl-eq 1",
    "-A INPUT -j HL --hl-set 1", "-A INPUT -j DNPT --src-pfx a::/64",
]


@pytest.mark.kernel
@pytest.mark.parametrize(("family", "cases"), [(6, CASES6), (4, CASES4)], ids=["ipv6", "ipv4"])
def test_ipv6_header_extensions_match_the_real_tool(kernel_ns, family, cases):
    assert mismatches(kernel_ns, family, [shlex.split(c) for c in cases]) == []
