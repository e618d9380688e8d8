"""Targets (NFLOG, NFQUEUE, CLASSIFY, AUDIT, LED, SECMARK, CONNSECMARK, TEE, TPROXY, NETMAP, SYNPROXY,
TCPOPTSTRIP, IDLETIMER, HMARK, RATEEST, DNPT/SNPT) against the real iptables/ip6tables 1.8.9."""

from __future__ import annotations

import random
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

# IDLETIMER labels are global to the kernel, not per namespace: a label left by another run (a
# namespace still being torn down) with the other timer type would make the kernel refuse ours.
_LABEL = f"-{random.randrange(1 << 24):x}"
MORE4 = [
    "-t mangle -A PREROUTING -j TEE --gateway 10.0.0.2", "-t mangle -A PREROUTING -j TEE --gateway 10.0.0.2 --oif eth0",
    "-A INPUT -j TEE --gateway 10.0.0.2", "-t mangle -A PREROUTING -j TEE", "-t mangle -A PREROUTING -j TEE --gateway ::1",
    "-t mangle -A PREROUTING -p tcp -j TPROXY --on-port 3128", "-t mangle -A PREROUTING -p udp -j TPROXY --on-port 53 "
    "--on-ip 127.0.0.1 --tproxy-mark 0x1/0x1", "-t mangle -A PREROUTING -p tcp -j TPROXY --on-port 80 --tproxy-mark 7",
    "-t mangle -A PREROUTING -j TPROXY --on-port 1", "-t mangle -A INPUT -p tcp -j TPROXY --on-port 1",
    "-t mangle -A PREROUTING -p tcp -j TPROXY", "-t mangle -A PREROUTING -p tcp -j TPROXY --on-port http",
    "-t nat -A PREROUTING -d 10.1.0.0/16 -j NETMAP --to 10.2.0.0/16",
    "-t nat -A POSTROUTING -s 192.168.1.7/24 -j NETMAP --to 172.16.0.9/24", "-A INPUT -j NETMAP --to 1.2.3.0/24",
    "-t nat -A INPUT -j NETMAP --to 1.2.3.4", "-t nat -A OUTPUT -j NETMAP",
    "-A INPUT -p tcp -m tcp --dport 80 -m conntrack --ctstate INVALID,UNTRACKED -j SYNPROXY --sack-perm --timestamp "
    "--wscale 7 --mss 1460", "-A FORWARD -p tcp -j SYNPROXY", "-A INPUT -j SYNPROXY --ecn", "-A OUTPUT -p tcp -j SYNPROXY",
    "-t mangle -A POSTROUTING -p tcp -j TCPOPTSTRIP --strip-options mss,sack-permitted,timestamp,7",
    "-t mangle -A POSTROUTING -p tcp -j TCPOPTSTRIP", "-t mangle -A POSTROUTING -j TCPOPTSTRIP --strip-options mss",
    "-t mangle -A POSTROUTING -p tcp -j TCPOPTSTRIP --strip-options 1",
    "-t mangle -A POSTROUTING -p tcp -j TCPOPTSTRIP --strip-options mss,2",
    "-t mangle -A POSTROUTING -p tcp -j TCPOPTSTRIP --strip-options foo", "-A INPUT -p tcp -j TCPOPTSTRIP",
    f"-A INPUT -j IDLETIMER --timeout 60 --label wlan0{_LABEL}", f"-A INPUT -j IDLETIMER --timeout 5 --label x{_LABEL} --alarm",
    f"-A INPUT -j IDLETIMER --timeout 5 --label x{_LABEL} --send_nl_msg",
    f"-A INPUT -j IDLETIMER --timeout 0 --label y{_LABEL}", "-A INPUT -j IDLETIMER --timeout 5", f"-A INPUT -j IDLETIMER --label z{_LABEL}",
    "-A INPUT -j RATEEST --rateest-name est --rateest-interval 250ms --rateest-ewmalog 0.5s",
    "-A INPUT -j RATEEST --rateest-name e2 --rateest-interval 1s --rateest-ewmalog 8s",
    "-A INPUT -j RATEEST --rateest-name e3 --rateest-interval 100us --rateest-ewmalog 1ms",
    "-A INPUT -j RATEEST --rateest-name e4 --rateest-interval 10s --rateest-ewmalog 1s",
    "-A INPUT -j RATEEST --rateest-name e5 --rateest-interval 1x --rateest-ewmalog 1s",
    "-A INPUT -j RATEEST --rateest-name e6 --rateest-interval 1s",
    # (its --new is left out: the core parser resolves --new as -N's abbreviation before any extension)
    "-A INPUT -j CLUSTERIP --hashmode sourceip --clustermac 01:00:5e:00:00:20 --total-nodes 2 --local-node 1",
    "-A INPUT -j ULOG",
]
MORE6 = [
    "-t mangle -A PREROUTING -j TEE --gateway 2001:db8::1", "-t mangle -A PREROUTING -p tcp -j TPROXY --on-port 1 "
    "--on-ip ::1", "-t nat -A PREROUTING -j NETMAP --to 2001:db8:1::/48",
    "-t mangle -A PREROUTING -d fd00::/64 -j DNPT --src-pfx fd00::/64 --dst-pfx 2001:db8::/64",
    "-t mangle -A POSTROUTING -s 2001:db8::/64 -j SNPT --src-pfx 2001:db8::/64 --dst-pfx fd00::/64",
    "-t mangle -A INPUT -j DNPT --src-pfx fd00::/64 --dst-pfx 2001:db8::/64", "-t mangle -A PREROUTING -j DNPT --src-pfx fd00::/64",
    "-t mangle -A PREROUTING -j DNPT --src-pfx fd00::1/64 --dst-pfx 2001:db8::/64",
    "-t mangle -A PREROUTING -j DNPT --src-pfx fd00::/80 --dst-pfx 2001:db8::/80", "-A INPUT -j SNPT --src-pfx a::/64 --dst-pfx b::/64",
    "-A INPUT -j TTL --ttl-set 1", "-A INPUT -j ECN --ecn-tcp-remove", "-A INPUT -j CLUSTERIP --total-nodes 2",
    "-A INPUT -p tcp -j SYNPROXY --mss 1440", "-t mangle -A POSTROUTING -p tcp -j TCPOPTSTRIP --strip-options wscale",
    f"-A INPUT -j IDLETIMER --timeout 60 --label x{_LABEL}", "-A INPUT -j RATEEST --rateest-name e --rateest-interval 1s "
    "--rateest-ewmalog 4s",
]


@pytest.mark.kernel
@pytest.mark.parametrize(("family", "cases"), [(4, MORE4), (6, MORE6)], ids=["ipv4", "ipv6"])
def test_more_targets_match_the_real_tool(kernel_ns, family, cases):
    assert mismatches(kernel_ns, family, [shlex.split(c) for c in cases]) == []

HMARK4 = [
    "-t mangle -A PREROUTING -j HMARK --hmark-tuple src,dst,sport,dport,proto --hmark-mod 4 --hmark-rnd 0xcafe",
    "-t mangle -A PREROUTING -j HMARK --hmark-src-prefix 24 --hmark-dst-prefix 16 --hmark-mod 10 --hmark-offset 100 "
    "--hmark-rnd 1", "-t mangle -A PREROUTING -j HMARK --hmark-tuple ct,src --hmark-mod 2 --hmark-rnd 3",
    "-t mangle -A PREROUTING -j HMARK --hmark-tuple spi --hmark-spi 5 --hmark-mod 2 --hmark-rnd 3",
    "-t mangle -A PREROUTING -j HMARK --hmark-sport-mask 0xff --hmark-dport 7 --hmark-proto-mask 0x1f --hmark-mod 2 "
    "--hmark-rnd 3", "-t mangle -A PREROUTING -j HMARK --hmark-tuple src --hmark-mod 2",
    "-t mangle -A PREROUTING -j HMARK --hmark-tuple src --hmark-rnd 2", "-t mangle -A PREROUTING -j HMARK --hmark-mod 2 --hmark-rnd 2",
    "-t mangle -A PREROUTING -j HMARK --hmark-tuple bogus --hmark-mod 2 --hmark-rnd 2",
    "-t mangle -A PREROUTING -j HMARK --hmark-tuple src, --hmark-mod 2 --hmark-rnd 2",
    "-t mangle -A PREROUTING -j HMARK --hmark-tuple spi,sport --hmark-mod 2 --hmark-rnd 2",
    "-t mangle -A PREROUTING -j HMARK --hmark-tuple s --hmark-mod 2 --hmark-rnd 2",
    "-t mangle -A PREROUTING -j HMARK --hmark-src-prefix 40 --hmark-mod 2 --hmark-rnd 2",
    "-t mangle -A PREROUTING -j HMARK --hmark-tuple sp,dp --hmark-mod 2 --hmark-rnd 2",
]
HMARK6 = [
    "-t mangle -A PREROUTING -j HMARK --hmark-tuple src,dst --hmark-mod 4 --hmark-rnd 1",
    "-t mangle -A PREROUTING -j HMARK --hmark-src-prefix 64 --hmark-mod 4 --hmark-rnd 1",
]


@pytest.mark.kernel
@pytest.mark.parametrize(("family", "cases"), [(4, HMARK4), (6, HMARK6)], ids=["ipv4", "ipv6"])
def test_hmark_matches_the_real_tool(kernel_ns, family, cases):
    assert mismatches(kernel_ns, family, [shlex.split(c) for c in cases]) == []
