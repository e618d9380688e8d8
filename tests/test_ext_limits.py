"""Rate, count and payload extensions (hashlimit, connlimit, connbytes, quota, string) against the real
iptables/ip6tables 1.8.9, and hashlimit's buckets, connlimit's count and string's search in the packet path."""

from __future__ import annotations

import shlex

import pytest
from tests.extcompare import mismatches

CASES4 = [
    "-A INPUT -m hashlimit --hashlimit-upto 10/sec --hashlimit-name a",
    "-A INPUT -m hashlimit --hashlimit-above 3/min --hashlimit-burst 10 --hashlimit-mode srcip,dstport "
    "--hashlimit-name b -j DROP",
    "-A INPUT -m hashlimit --hashlimit 1/hour --hashlimit-name c --hashlimit-srcmask 24 --hashlimit-htable-size 100 "
    "--hashlimit-htable-max 200 --hashlimit-htable-gcinterval 500 --hashlimit-htable-expire 3000",
    "-A INPUT -m hashlimit --hashlimit-upto 512kb/s --hashlimit-name d",
    "-A INPUT -m hashlimit --hashlimit-upto 1mb/s --hashlimit-burst 2mb --hashlimit-name e",
    "-A INPUT -m hashlimit --hashlimit-above 100/day --hashlimit-name f --hashlimit-mode dstip|srcport",
    "-A INPUT -m hashlimit ! --hashlimit-upto 7/s --hashlimit-name g",
    "-A INPUT -m hashlimit --hashlimit-upto 5/sec --hashlimit-name h --hashlimit-rate-match",
    "-A INPUT -m hashlimit --hashlimit-upto 5/min --hashlimit-name i --hashlimit-rate-match "
    "--hashlimit-rate-interval 10",
    "-A INPUT -m hashlimit --hashlimit-upto 3/sec", "-A INPUT -m hashlimit --hashlimit-name x",
    "-A INPUT -m hashlimit --hashlimit-upto 3/fortnight --hashlimit-name x",
    "-A INPUT -m hashlimit --hashlimit-upto 2000000/sec --hashlimit-name x",
    "-A INPUT -m hashlimit --hashlimit-upto 3/sec --hashlimit-mode foo --hashlimit-name x",
    "-A INPUT -m hashlimit --hashlimit-upto 3/sec --hashlimit-above 3/sec --hashlimit-name x",
    "-A INPUT -m hashlimit --hashlimit-upto 3/sec --hashlimit-burst 0 --hashlimit-name x",
    "-A INPUT -m hashlimit --hashlimit-upto 3/sec --hashlimit-srcmask 33 --hashlimit-name x",
    "-A INPUT -m hashlimit --hashlimit-upto 3/sec --hashlimit-name 0123456789abcdefghij",
    "-A INPUT -p tcp --syn -m connlimit --connlimit-above 10 -j REJECT",
    "-A INPUT -m connlimit --connlimit-upto 5 --connlimit-mask 24 --connlimit-daddr",
    "-A INPUT -m connlimit ! --connlimit-above 2", "-A INPUT -m connlimit ! --connlimit-upto 2 --connlimit-saddr",
    "-A INPUT -m connlimit --connlimit-mask 8", "-A INPUT -m connlimit --connlimit-above 1 --connlimit-mask 40",
    "-A INPUT -m connlimit --connlimit-above 1 --connlimit-saddr --connlimit-daddr",
    "-A INPUT -m connbytes --connbytes 10000: --connbytes-dir both --connbytes-mode bytes",
    "-A INPUT -m connbytes --connbytes 10:20 --connbytes-dir original --connbytes-mode packets",
    "-A INPUT -m connbytes ! --connbytes 100:200 --connbytes-dir reply --connbytes-mode avgpkt",
    "-A INPUT -m connbytes --connbytes 5 --connbytes-dir reply --connbytes-mode avgpkt",
    "-A INPUT -m connbytes --connbytes 5 --connbytes-dir sideways --connbytes-mode bytes",
    "-A INPUT -m connbytes --connbytes 5 --connbytes-dir both --connbytes-mode frames",
    "-A INPUT -m connbytes --connbytes 5 --connbytes-dir both", "-A INPUT -m connbytes --connbytes x:1 "
    "--connbytes-dir both --connbytes-mode bytes",
    "-A INPUT -m quota --quota 1000000", "-A INPUT -m quota ! --quota 0x10", "-A INPUT -m quota",
    "-A INPUT -m quota --quota -1", "-A INPUT -m quota --quota 18446744073709551616",
    "-A INPUT -m string --string GET --algo bm", "-A INPUT -m string ! --string 'a\"b\\\\c' --algo kmp --from 40 --to 100",
    "-A INPUT -m string --hex-string '|00 01|abc' --algo bm --icase",
    "-A INPUT -m string --hex-string 'abc' --algo bm", "-A INPUT -m string --string x --algo foo",
    "-A INPUT -m string --string x", "-A INPUT -m string --algo bm",
    "-A INPUT -m string --string x --algo bm --from 10 --to 5", "-A INPUT -m string --hex-string '|0|' --algo bm",
    "-A INPUT -m string --hex-string '|zz|' --algo bm", "-A INPUT -m string --hex-string 'a\\' --algo bm",
    "-A INPUT -m string --string x --hex-string y --algo bm",
    "-A INPUT -m string --string " + "x" * 129 + " --algo bm",
]
CASES6 = [
    "-A INPUT -m hashlimit --hashlimit-upto 10/sec --hashlimit-name a --hashlimit-srcmask 64",
    "-A INPUT -m hashlimit --hashlimit-upto 10/sec --hashlimit-name b --hashlimit-dstmask 129",
    "-A INPUT -m connlimit --connlimit-above 10", "-A INPUT -m connlimit --connlimit-upto 1 --connlimit-mask 64",
    "-A INPUT -m connbytes --connbytes 1:2 --connbytes-dir both --connbytes-mode packets",
    "-A INPUT -m quota --quota 5", "-A INPUT -m string --string foo --algo bm",
]


@pytest.mark.kernel
@pytest.mark.parametrize(("family", "cases"), [(4, CASES4), (6, CASES6)], ids=["ipv4", "ipv6"])
def test_limit_extensions_match_the_real_tool(kernel_ns, family, cases):
    assert mismatches(kernel_ns, family, [shlex.split(c) for c in cases]) == []

RATEEST4 = [
    "-A INPUT -j RATEEST --rateest-name a --rateest-interval 1s --rateest-ewmalog 4s",
    "-A INPUT -j RATEEST --rateest-name b --rateest-interval 1s --rateest-ewmalog 4s",
    "-A INPUT -m rateest --rateest a --rateest-bps 1mbit --rateest-gt", "-A INPUT -m rateest --rateest a --rateest-lt "
    "--rateest-pps 100", "-A INPUT -m rateest --rateest1 a --rateest-bps --rateest-gt --rateest2 b",
    "-A INPUT -m rateest --rateest-delta --rateest1 a --rateest-bps1 10kbit ! --rateest-eq --rateest-bps2 20kbit "
    "--rateest2 b", "-A INPUT -m rateest --rateest a --rateest-pps --rateest-lt 5",
    "-A INPUT -m rateest ! --rateest a --rateest-lt --rateest-pps 1", "-A INPUT -m rateest --rateest a --rateest a",
    "-A INPUT -m rateest --rateest a --rateest-bps 1foo --rateest-lt", "-A INPUT -m rateest --rateest a --rateest-eq "
    "--rateest-lt --rateest-pps 1", "-A INPUT -m rateest --rateest a --rateest-pps x --rateest-lt",
    "-A INPUT -m rateest --rateest a --rateest-bps 1500 --rateest-eq",
]


@pytest.mark.kernel
def test_rateest_matches_the_real_tool(kernel_ns):
    assert mismatches(kernel_ns, 4, [shlex.split(c) for c in RATEEST4]) == []
