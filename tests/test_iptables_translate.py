"""``kproxy iptables-translate`` / ``iptables-restore-translate`` against iptables 1.8.9's own translators.

Every case runs the real tool (skipped where it is not installed) and ours on the same arguments and
compares exit status, stdout and stderr byte for byte (the restore form's timestamps aside). The
kube-proxy dump test loads the translation into an emulated node with ``kproxy nft -f`` and sends
the same packets through it and through the node holding the original iptables rules.
"""

from __future__ import annotations

import os
import random
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from kproxy.ipset.cli import run_ipset
from kproxy.iptables.translate import run_restore_translate, run_translate
from kproxy.nftables.cli import run_nft
from kproxy.nftables.evaluate import attach
from kproxy.nftables.store import node_ruleset
from kproxy.node import Node
from kproxy.packet import SYN, Packet

ROOT = Path(__file__).resolve().parents[1]
SBIN = "/usr/sbin"
TOOLS = {4: f"{SBIN}/iptables-translate", 6: f"{SBIN}/ip6tables-translate"}
RESTORE_TOOLS = {4: f"{SBIN}/iptables-restore-translate", 6: f"{SBIN}/ip6tables-restore-translate"}
STAMP = re.compile(r"(# (?:Translated by \S+ v1\.8\.9|Completed) on ).*")

needs_tool = pytest.mark.skipif(not os.path.exists(TOOLS[4]), reason="iptables 1.8.9's translators are not installed")


def real(argv: list[str], netns: str | None = None) -> tuple[int, str, str]:
    """The real tool, run by its bare name (it prints the name it was run by)."""
    argv = [os.path.basename(argv[0]), *argv[1:]]
    cmd = ["ip", "netns", "exec", netns, *argv] if netns else argv
    env = {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:{SBIN}"}
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    return r.returncode, r.stdout, r.stderr


def rule_argv(line: str) -> list[str]:
    argv = shlex.split(line)
    return argv if argv[0] == "-t" else ["-A", "INPUT", *argv]


def unstamped(result: tuple[int, str, str]) -> tuple[int, str, str]:
    rc, out, err = result
    return rc, STAMP.sub(r"\1DATE", out), err


RULES4 = [
    '-p tcp -m tcp',
    '-p tcp -m tcp --dport 80',
    '-p tcp --sport 1:1024 ! --dport 22',
    '-p tcp ! --sport 0:100',
    '-p tcp --dport 0:65535',
    '-p tcp --dport :100',
    '-p tcp --dport 100:',
    '-p tcp --syn',
    '-p tcp ! --syn',
    '-p tcp --tcp-flags SYN,ACK SYN',
    '-p tcp ! --tcp-flags ALL NONE',
    '-p tcp --tcp-flags ALL ALL',
    '-p tcp --tcp-flags FIN,SYN,RST,ACK SYN --dport 80',
    '-p tcp --tcp-option 2',
    '-p tcp ! --tcp-option 2',
    '-p udp --dport 53',
    '-p udp -m udp --sport 53 --dport 1000:2000',
    '-p udp ! --dport 53',
    '-p sctp --dport 80',
    '-p sctp --sport 80 ! --dport 1:2',
    '-p tcp -m multiport --dports 80,443',
    '-p tcp -m multiport --sports 80,443:500',
    '-p tcp -m multiport ! --dports 80,443',
    '-p udp -m multiport --ports 80,443',
    '-p tcp -m multiport --dports 80',
    '-p sctp -m multiport --dports 80,81',
    '-m mark --mark 0x1',
    '-m mark --mark 0x1/0xff',
    '-m mark ! --mark 0x1/0xff',
    '-m mark --mark 0/0x4000',
    '-m connmark --mark 0x1',
    '-m connmark ! --mark 0x1/0xff',
    '-m comment --comment hello',
    '-m comment --comment "hello world"',
    '-m comment --comment "a\\"b"',
    '-m comment --comment "it\'s"',
    '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain"',
    '-m conntrack --ctstate NEW',
    '-m conntrack --ctstate NEW,ESTABLISHED',
    '-m conntrack ! --ctstate NEW',
    '-m conntrack --ctstate INVALID',
    '-m conntrack --ctstate UNTRACKED',
    '-m conntrack --ctstate DNAT',
    '-m conntrack --ctstate SNAT,DNAT',
    '-m conntrack --ctstate NEW,DNAT',
    '-m conntrack --ctproto tcp',
    '-m conntrack ! --ctproto 17',
    '-m conntrack --ctorigsrc 10.0.0.1',
    '-m conntrack --ctorigdst 10.0.0.0/8',
    '-m conntrack ! --ctreplsrc 10.0.0.1',
    '-m conntrack --ctrepldst 10.0.0.1',
    '-m conntrack --ctorigsrcport 80',
    '-m conntrack --ctorigdstport 80:90',
    '-m conntrack ! --ctreplsrcport 80',
    '-m conntrack --ctrepldstport 80',
    '-m conntrack --ctstatus ASSURED',
    '-m conntrack --ctstatus SEEN_REPLY,ASSURED',
    '-m conntrack ! --ctstatus CONFIRMED',
    '-m conntrack --ctstatus EXPECTED',
    '-m conntrack --ctstatus NONE',
    '-m conntrack --ctexpire 10',
    '-m conntrack --ctexpire 10:20',
    '-m conntrack ! --ctexpire 10:20',
    '-m conntrack --ctdir ORIGINAL',
    '-m conntrack --ctdir REPLY',
    '-m conntrack --ctstate NEW --ctproto tcp --ctorigdstport 80 --ctdir REPLY',
    '-m state --state NEW',
    '-m state ! --state INVALID',
    '-m state --state ESTABLISHED,RELATED',
    '-m state --state UNTRACKED',
    '-m addrtype --src-type LOCAL',
    '-m addrtype ! --dst-type LOCAL',
    '-m addrtype --src-type LOCAL,UNICAST',
    '-m addrtype --dst-type LOCAL --limit-iface-in',
    '-m addrtype --src-type LOCAL --limit-iface-out',
    '-m addrtype --src-type UNSPEC --dst-type BROADCAST',
    '-m addrtype --dst-type MULTICAST,ANYCAST,BLACKHOLE,UNREACHABLE,PROHIBIT,THROW,NAT,XRESOLVE',
    '-p icmp --icmp-type echo-request',
    '-p icmp -m icmp --icmp-type 8',
    '-p icmp --icmp-type 3/4',
    '-p icmp ! --icmp-type echo-reply',
    '-p icmp --icmp-type any',
    '-p icmp --icmp-type 3',
    '-p icmp --icmp-type destination-unreachable',
    '-p icmp --icmp-type fragmentation-needed',
    '-m limit --limit 5/sec',
    '-m limit --limit 5/min --limit-burst 10',
    '-m limit --limit 1/hour',
    '-m limit --limit 3/day',
    '-m limit',
    '-m limit --limit 10/s --limit-burst 1',
    '-m statistic --mode random --probability 0.5',
    '-m statistic --mode random --probability 0.33333333349',
    '-m statistic --mode random ! --probability 0.5',
    '-m statistic --mode nth --every 3',
    '-m statistic --mode nth --every 3 --packet 1',
    '-m statistic --mode nth ! --every 3 --packet 1',
    '-m iprange --src-range 10.0.0.1-10.0.0.5',
    '-m iprange ! --dst-range 10.0.0.1-10.0.0.5',
    '-m iprange --src-range 10.0.0.1-10.0.0.5 --dst-range 1.1.1.1-1.1.1.2',
    '-m mac --mac-source 00:11:22:33:44:55',
    '-m mac ! --mac-source 00:11:22:33:44:55',
    '-m pkttype --pkt-type unicast',
    '-m pkttype ! --pkt-type broadcast',
    '-m pkttype --pkt-type multicast',
    '-m pkttype --pkt-type host',
    '-m length --length 100',
    '-m length --length 100:200',
    '-m length ! --length 100:200',
    '-m length --length :200',
    '-j ACCEPT',
    '-j DROP',
    '-j RETURN',
    '-j FOO',
    '-g FOO',
    '-j MARK --set-mark 0x1',
    '-j MARK --set-xmark 0x4000/0x4000',
    '-j MARK --and-mark 0xff',
    '-j MARK --or-mark 0x4',
    '-j MARK --xor-mark 0x3',
    '-j MARK --set-xmark 0x5/0x7',
    '-j MARK --set-mark 0x1/0xff',
    '-j CONNMARK --set-mark 0x1',
    '-j CONNMARK --set-mark 0x1/0xff',
    '-j CONNMARK --set-xmark 0x1/0xff',
    '-j CONNMARK --and-mark 0xff',
    '-j CONNMARK --or-mark 0xff',
    '-j CONNMARK --xor-mark 0xff',
    '-j CONNMARK --save-mark',
    '-j CONNMARK --save-mark --mask 0xff',
    '-j CONNMARK --save-mark --nfmask 0xff --ctmask 0xf0',
    '-j CONNMARK --restore-mark',
    '-j CONNMARK --restore-mark --mask 0xff',
    '-j CONNMARK --restore-mark --nfmask 0xff --ctmask 0xf0',
    '-j CONNMARK --restore-mark --ctmask 0xff',
    '-j LOG',
    '-j LOG --log-prefix "foo: "',
    '-j LOG --log-level 4',
    '-j LOG --log-level debug --log-prefix x',
    '-j LOG --log-tcp-sequence',
    '-j LOG --log-tcp-options --log-ip-options',
    '-j LOG --log-uid',
    '-j LOG --log-macdecode',
    '-j LOG --log-level 7 --log-tcp-sequence --log-tcp-options --log-ip-options --log-uid --log-macdecode',
    '-j LOG --log-prefix "a\\"b"',
    '-j TRACE',
    '-j REJECT',
    '-j REJECT --reject-with icmp-port-unreachable',
    '-j REJECT --reject-with icmp-net-unreachable',
    '-j REJECT --reject-with icmp-host-unreachable',
    '-j REJECT --reject-with icmp-proto-unreachable',
    '-j REJECT --reject-with icmp-net-prohibited',
    '-j REJECT --reject-with icmp-host-prohibited',
    '-j REJECT --reject-with icmp-admin-prohibited',
    '-p tcp -j REJECT --reject-with tcp-reset',
    '-j REJECT --reject-with tcp-reset',
    '-j CT --notrack',
    '-j CT --zone 1',
    '-j NOTRACK',
    '-t raw -A PREROUTING -j CT --notrack',
    '-t nat -A PREROUTING -j DNAT --to-destination 10.0.0.1',
    '-t nat -A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.1:80',
    '-t nat -A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.1:80-90',
    '-t nat -A PREROUTING -j DNAT --to-destination 10.0.0.1-10.0.0.9',
    '-t nat -A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.1-10.0.0.9:80-90',
    '-t nat -A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.1:80 --random',
    '-t nat -A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.1:80 --persistent',
    '-t nat -A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.1:80 --random --persistent',
    '-t nat -A PREROUTING -p tcp -m tcp -j DNAT --to-destination 10.0.0.1:80',
    '-t nat -A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.1:80-90/85',
    '-t nat -A POSTROUTING -j SNAT --to-source 1.1.1.1',
    '-t nat -A POSTROUTING -p udp -j SNAT --to-source 1.1.1.1:1000-2000 --random-fully',
    '-t nat -A POSTROUTING -j SNAT --to-source 1.1.1.1-1.1.1.5 --persistent',
    '-t nat -A POSTROUTING -j MASQUERADE',
    '-t nat -A POSTROUTING -j MASQUERADE --random',
    '-t nat -A POSTROUTING -j MASQUERADE --random-fully',
    '-t nat -A POSTROUTING -p tcp -j MASQUERADE --to-ports 1000-2000',
    '-t nat -A POSTROUTING -p tcp -j MASQUERADE --to-ports 1000',
    '-t nat -A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE --random-fully',
    '-t nat -A PREROUTING -j REDIRECT',
    '-t nat -A PREROUTING -p tcp -j REDIRECT --to-ports 8080',
    '-t nat -A PREROUTING -p tcp -j REDIRECT --to-ports 8080-8090 --random',
    '-t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 8080',
    '-m comment --comment foo -j ACCEPT',
    '-m comment --comment foo -p tcp --dport 80 -m comment --comment bar -j DROP',
    '-s 10.0.0.0/8 -d 10.1.0.0/16 -i eth0 -p tcp -f --dport 80 -m mark --mark 1 -j ACCEPT',
    '-s 0.0.0.0/8',
    '-p icmp --icmp-type 1',
    '-p icmp --icmp-type 6',
    '-p icmp --icmp-type timestamp-request',
    '-p icmp ! --icmp-type any',
    '-p icmp --icmp-type 3/0:255',
    '-p tcp -m multiport --ports 80,443:500',
    '-p tcp -m multiport ! --ports 80',
    '-p tcp -m multiport --dports 80:90',
    '-p udplite -m multiport --dports 80,81',
    '-j LOG --log-tcp-sequence --log-tcp-options',
    '-j LOG --log-level 0',
    '-j LOG --log-level 3 --log-uid --log-ip-options',
    '-j LOG --log-level 4 --log-prefix "p" --log-macdecode',
    '-t nat -A POSTROUTING -p tcp -j SNAT --to-source 1.1.1.1:10-20 --random --random-fully --persistent',
    '-t nat -A POSTROUTING -p tcp -j SNAT --to-source 1.1.1.1 --random --persistent',
    '-t nat -A POSTROUTING -j MASQUERADE --random --random-fully',
    '-t nat -A PREROUTING -p tcp -j DNAT --to-destination :80',
    '-t nat -A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.1:80 --random --persistent',
    '-m addrtype --src-type THROW',
    '-m addrtype ! --src-type LOCAL,UNICAST',
    '-m addrtype --dst-type LOCAL,BLACKHOLE --limit-iface-out',
    '-m pkttype --pkt-type otherhost',
    '-m pkttype ! --pkt-type multicast',
    '-p tcp --tcp-option 2 --syn',
    '-p tcp --dport 80 --tcp-option 2 --tcp-flags ALL SYN,ACK --sport 1',
    '-p tcp --tcp-flags NONE NONE',
    '-p tcp --tcp-flags SYN NONE',
    '-p tcp --tcp-flags ALL FIN,URG,PSH',
    '-p udp --sport 0:65535 --dport 5',
    '-p sctp --dport 0:65535',
    '-p sctp ! --sport 1 --dport 2',
    '-m conntrack --ctstate SNAT',
    '-m conntrack ! --ctstate DNAT',
    '-m conntrack ! --ctstate SNAT,DNAT,NEW',
    '-m conntrack --ctstate NEW,ESTABLISHED,RELATED,INVALID,UNTRACKED',
    '-m conntrack --ctstatus EXPECTED,SEEN_REPLY,ASSURED,CONFIRMED',
    '-m conntrack ! --ctstatus NONE',
    '-m conntrack --ctorigsrc 10.0.0.0/24 --ctorigdst 10.0.0.1 ! --ctreplsrc 1.1.1.0/30 --ctrepldst 2.2.2.2/31',
    '-m conntrack --ctorigsrcport 1:2 --ctorigdstport 3 --ctreplsrcport 4 --ctrepldstport 5:6 --ctexpire 7',
    '-m conntrack --ctproto 6 --ctdir ORIGINAL',
    '-m conntrack ! --ctproto 6 --ctdir REPLY --ctstatus ASSURED',
    '-m state --state NEW,RELATED,ESTABLISHED,INVALID,UNTRACKED',
    '-m comment --comment first -m comment --comment second',
    '-m mark --mark 0xffffffff',
    '-m mark --mark 5/5',
    '-m mark ! --mark 0',
    '-m connmark --mark 0/0xffff0000',
    '-j CONNMARK --set-mark 0',
    '-j CONNMARK --set-xmark 0/0',
    '-j CONNMARK --and-mark 0',
    '-j CONNMARK --save-mark --nfmask 0xff --ctmask 0xff',
    '-j CONNMARK --restore-mark --nfmask 0xf --ctmask 0xf',
    '-j MARK --set-mark 0',
    '-j MARK --set-xmark 0/0',
    '-j MARK --and-mark 0',
    '-j MARK --or-mark 0',
    '-j MARK --set-xmark 0xffffffff/0xffffffff',
    '-m length --length 0:65535',
    '-m length --length 5:5',
    '-m iprange --src-range 1.1.1.1-1.1.1.1',
    '-m limit --limit 1/s --limit-burst 10000',
    '-m limit --limit 7/min',
    '-m limit --limit 100000/sec',
    '-m limit --limit 2/day',
    '-m statistic --mode random --probability 1',
    '-m statistic --mode random --probability 0',
    '-m statistic --mode nth --every 1 --packet 0',
    '-m statistic --mode nth --every 10 --packet 9',
    '-i eth0 -s 1.2.3.4 -m comment --comment "x" -m mark --mark 1 -p udp --dport 53 -m conntrack --ctstate NEW -j MARK --or-mark 0x4000',
    '! -i + -j ACCEPT',
    '-i eth+ ! -s 10.0.0.0/8 ! -d 10.0.0.0/16 ! -p udp -j DROP',
    '-t mangle -A OUTPUT -o lo -j MARK --set-mark 1',
    '-t mangle -A POSTROUTING -o eth0 ! -f -j ACCEPT',
    '-t raw -A OUTPUT -p udp -j NOTRACK',
    '-t nat -A PREROUTING -j DROP',
    '-t nat -A OUTPUT -o eth0 -j RETURN',
    '-t nat -A POSTROUTING -i eth0 -j RETURN',
    '-t filter -A FORWARD -i a -o b -j ACCEPT',
    '-t security -A INPUT -j ACCEPT',
    '-p tcp -m tcp --dport 80 -m tcp --sport 5',
    '-p 6 --dport 80',
    '-p TCP --dport 80',
    '-p udp -m multiport --dports 53 -j ACCEPT',
]

RULES4 += ["-m limit --limit 3/s --limit-burst 0", "-m limit --limit 1/m", "-m limit --limit 1000/s",
           "-j REJECT --reject-with port-unreach", "-j REJECT --reject-with tcp-rst", "-j LOG --log-level panic"]
RULES6 = [
    "-p icmpv6 -m icmpv6 --icmpv6-type 128", "-p ipv6-icmp -m icmp6 ! --icmpv6-type echo-reply",
    "-j REJECT --reject-with port-unreach", "-j REJECT --reject-with no-route", "-m length --length 1280:65535",
    '-p udp ! --sport 53',
    '-p udp ! --sport 53 ! --dport 54',
    '-p tcp ! --dport 22',
    '-p udp --dport 53',
    '-p tcp --syn',
    '-p icmpv6 --icmpv6-type echo-request',
    '-p icmpv6 ! --icmpv6-type 128',
    '-p icmpv6 --icmpv6-type 1/3',
    '-p icmpv6 --icmpv6-type destination-unreachable',
    '-p icmpv6 --icmpv6-type neighbour-solicitation',
    '-p ipv6-icmp -m icmp6 --icmpv6-type router-advertisement',
    '-p tcp -m multiport --dports 80,443',
    '-m addrtype --src-type LOCAL',
    '-m conntrack --ctorigsrc 2001:db8::1',
    '-m conntrack --ctorigdst 2001:db8::/64',
    '-m iprange --src-range 2001:db8::1-2001:db8::5',
    '-m mark --mark 0x1',
    '-m comment --comment x',
    '-m statistic --mode random --probability 0.5',
    '-m length --length 100',
    '-m limit --limit 5/sec',
    '-m pkttype --pkt-type broadcast',
    '-m mac --mac-source 00:11:22:33:44:55',
    '-j REJECT',
    '-j REJECT --reject-with icmp6-no-route',
    '-j REJECT --reject-with icmp6-adm-prohibited',
    '-j REJECT --reject-with icmp6-addr-unreachable',
    '-j REJECT --reject-with icmp6-port-unreachable',
    '-j REJECT --reject-with tcp-reset',
    '-j REJECT --reject-with icmp6-policy-fail',
    '-j REJECT --reject-with icmp6-reject-route',
    '-j LOG --log-prefix x',
    '-j CT --notrack',
    '-j MARK --set-mark 1',
    '-t nat -A PREROUTING -j DNAT --to-destination 2001:db8::1',
    '-t nat -A PREROUTING -p tcp -j DNAT --to-destination [2001:db8::1]:80',
    '-t nat -A PREROUTING -p tcp -j DNAT --to-destination [2001:db8::1]:80-90',
    '-t nat -A PREROUTING -j DNAT --to-destination 2001:db8::1-2001:db8::9',
    '-t nat -A PREROUTING -p tcp -j DNAT --to-destination [2001:db8::1-2001:db8::9]:80',
    '-t nat -A POSTROUTING -j SNAT --to-source 2001:db8::1',
    '-t nat -A POSTROUTING -j MASQUERADE',
    '-t nat -A POSTROUTING -p tcp -j MASQUERADE --to-ports 10',
    '-t nat -A PREROUTING -p tcp -j REDIRECT --to-ports 8080',
    '-s 2001:db8::/64 -d ::1 -i eth0 -p tcp --dport 80',
    '-s ::/0',
    '! -s ::/0',
    '-p 47',
    '-p all',
    '-f',
    '-p icmpv6 --icmpv6-type packet-too-big',
    '-p icmpv6 --icmpv6-type no-route',
    '-p icmpv6 --icmpv6-type echo-reply',
    '-p icmpv6 --icmpv6-type router-solicitation',
    '-p icmpv6 --icmpv6-type neighbour-advertisement',
    '-p icmpv6 --icmpv6-type redirect',
    '-p icmpv6 --icmpv6-type time-exceeded',
    '-p icmpv6 --icmpv6-type parameter-problem',
    '-p icmpv6 --icmpv6-type 2',
    '-p udp -m multiport --ports 53,54:60',
    '-m addrtype ! --dst-type LOCAL --limit-iface-in',
    '-m conntrack --ctstate NEW --ctorigsrc 2001:db8::/48 ! --ctrepldst ::1',
    '-m iprange ! --dst-range ::1-::5 --src-range fe80::1-fe80::2',
    '-m pkttype --pkt-type otherhost',
    '-t nat -A POSTROUTING -p udp -j SNAT --to-source [2001:db8::1-2001:db8::2]:100-200 --random-fully --persistent',
    '-t nat -A PREROUTING -p tcp -j DNAT --to-destination [::1]:80 --persistent',
    '-t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 99',
    '-t nat -A OUTPUT -p tcp -j DROP',
    '-j LOG --log-level 6 --log-prefix "v6: " --log-tcp-sequence',
    '-t filter -A FORWARD -i eth0 -o eth1 -s ::/0 -d ::1/128 -j ACCEPT',
    '-s 2001:db8::1,2001:db8::2 -d ::1,::2 -j DROP',
    '-p tcp --tcp-flags SYN,RST,ACK,FIN SYN -m comment --comment "x" -j MARK --set-mark 1',
]


@needs_tool
@pytest.mark.parametrize("line", RULES4)
def test_ipv4_rule_translates_as_iptables_translate_does(line):
    argv = rule_argv(line)
    assert run_translate(argv, 4) == real([TOOLS[4], *argv])


@needs_tool
@pytest.mark.parametrize("line", RULES6)
def test_ipv6_rule_translates_as_ip6tables_translate_does(line):
    argv = rule_argv(line)
    assert run_translate(argv, 6) == real([TOOLS[6], *argv])


# Rules with a part that has no nft form are echoed commented out, each ``!`` left empty; several
# source addresses print ``nft `` once each before the comment.
UNTRANSLATABLE = [
    "-A INPUT -m recent --set", "-A INPUT -m recent --name foo --rcheck --seconds 60",
    "-A INPUT ! -s 1.2.3.4 -m recent --set", "-A INPUT -m physdev ! --physdev-out eth+",
    "-A INPUT -m physdev --physdev-in eth0 --physdev-is-in", "-A INPUT -m physdev --physdev-is-bridged",
    "-A INPUT -m ipvs --ipvs", "-A INPUT -m ipvs --vproto tcp", "-A INPUT -j QUEUE",
    "-A INPUT -p icmp --icmp-type 3/4", "-A INPUT -p icmp --icmp-type fragmentation-needed",
    "-A INPUT -p icmp --icmp-type 15", "-A INPUT -j CT --zone 1",
    "-A INPUT -j CONNMARK --save-mark --nfmask 0xff --ctmask 0xf0", "-A INPUT -j CONNMARK --restore-mark --ctmask 0xff",
    "-t nat -A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.1:80-90/85",
    "-A INPUT -m comment --comment \"a b\" -m recent --set",
    "-A INPUT -s 1.1.1.1,2.2.2.2 -m recent --set", "-A INPUT -d 1.1.1.1,2.2.2.2 -m recent --set",
    "-A INPUT -s 1.1.1.1,2.2.2.2,3.3.3.3 -d 4.4.4.4,5.5.5.5 -m recent --set",
    "-A INPUT -s 1.1.1.1,2.2.2.2 -d 3.3.3.3,4.4.4.4 -j ACCEPT",
    "-A INPUT -s 1.1.1.1,2.2.2.2 --desti 3.3.3.3,4.4.4.4 -m recent --set",
    "-A INPUT -s 1.1.1.1,1.1.1.1 -d 3.3.3.3,4.4.4.4",
]
UNTRANSLATABLE6 = ["-A INPUT -p icmpv6 --icmpv6-type 1/3", "-A INPUT -p icmpv6 --icmpv6-type 130",
                   "-A INPUT -s ::1,::2 -m recent --set", "-A INPUT -s ::1,::2 -d ::3,::4 -j DROP"]


@needs_tool
@pytest.mark.parametrize(("family", "line"), [(4, x) for x in UNTRANSLATABLE] + [(6, x) for x in UNTRANSLATABLE6])
def test_untranslatable_rules_are_echoed_as_the_tool_echoes_them(family, line):
    argv = shlex.split(line)
    assert run_translate(argv, family) == real([TOOLS[family], *argv])


# Random combinations of header tests, matches and targets (a fixed seed and a fresh one).
HEAD = ["-s 10.0.0.0/8", "! -s 10.1.2.3", "-d 192.168.0.1", "! -d 1.0.0.0/255.0.0.0", "-i eth0", "! -i veth+", "-f",
        "! -f", "-s 0.0.0.0/0"]
PROTO = ["-p tcp", "-p udp --dport 53", "-p tcp --sport 1:2 ! --dport 3", "-p tcp --syn", "-p tcp ! --tcp-flags SYN,ACK ACK",
         "-p udp ! --sport 5 --dport 6", "-p sctp --dport 7", "-p icmp --icmp-type echo-request",
         "-p tcp -m multiport --dports 1,2:3", "-p udp -m multiport ! --sports 4", "-p tcp -m tcp --tcp-option 8",
         "! -p tcp", "-p 47", "-p icmp --icmp-type 3/1", "-p tcp -m multiport --ports 5,6"]
MATCH = ["-m mark --mark 0x1/0xf", "-m connmark ! --mark 2", "-m comment --comment \"hello world\"",
         "-m conntrack --ctstate NEW,RELATED", "-m conntrack ! --ctstatus ASSURED --ctdir REPLY", "-m state --state INVALID",
         "-m addrtype --dst-type LOCAL", "-m addrtype ! --src-type BROADCAST,MULTICAST --limit-iface-in",
         "-m limit --limit 10/min --limit-burst 3", "-m statistic --mode random --probability 0.25",
         "-m statistic --mode nth --every 4 --packet 2", "-m iprange --src-range 1.1.1.1-1.1.1.9",
         "-m mac ! --mac-source aa:bb:cc:dd:ee:ff", "-m pkttype --pkt-type broadcast", "-m length ! --length 10:20",
         "-m recent --rcheck", "-m physdev --physdev-is-bridged", "-m conntrack --ctorigdst 10.0.0.0/16 --ctorigdstport 80"]
TARGET = ["-j ACCEPT", "-j DROP", "-j RETURN", "-j FOO", "-g FOO", "-j MARK --set-xmark 0x4000/0x4000",
          "-j CONNMARK --save-mark", "-j LOG --log-prefix \"x: \" --log-level 6", "-j REJECT --reject-with icmp-host-prohibited",
          "-j TRACE", "-j CT --notrack", "", "-j QUEUE", "-j CONNMARK --set-mark 5", "-j MARK --set-mark 3"]


@needs_tool
@pytest.mark.parametrize("seed", [20261207, random.randrange(1 << 30)])
def test_random_rules_translate_as_the_tool(seed):
    rng = random.Random(seed)
    for _ in range(120):
        parts = rng.sample(HEAD, rng.randint(0, 2)) + rng.sample(PROTO, rng.randint(0, 1)) + \
            rng.sample(MATCH, rng.randint(0, 3))
        rng.shuffle(parts)
        argv = ["-A", "INPUT", *shlex.split(" ".join([*parts, rng.choice(TARGET)]))]
        assert run_translate(argv, 4) == real([TOOLS[4], *argv]), (seed, argv)


# Commands other than -A/-I, and the errors and exit statuses.
COMMANDS = [
    "-I INPUT -j ACCEPT", "-I INPUT 3 -j ACCEPT", "-N FOO", "-X FOO", "-X", "-F INPUT", "-F", "-L", "-t nat -L",
    "-D INPUT -j ACCEPT", "-D INPUT 3", "-P INPUT DROP", "-E A B", "-Z", "-S", "-R INPUT 1 -j ACCEPT",
    "-C INPUT -j ACCEPT", "-V", "", "-A INPUT -m foo", "-A INPUT -p tcp --dport x", "-A INPUT -s 1.2.3.4 -s 2.3.4.5",
    "-A INPUT -o eth0", "-t nat -A PREROUTING -j DROP", "-t bogus -A INPUT", "-A INPUT --bogus",
    "-A INPUT -m statistic --mode nth --every 3", "-A INPUT ! ! -s 1.1.1.1", "-A INPUT -j",
    "-t nat -A POSTROUTING -i eth0 -j RETURN", "-A INPUT -m set --match-set nosuch src",
    "-A INPUT -j SET --add-set nosuch src", "-t nat -A PREROUTING -c 1 2 -j ACCEPT", "-w -A INPUT -j ACCEPT",
    "-v -A INPUT -j ACCEPT", "-n -L", "-L INPUT", "-S INPUT", "-F FOO", "-N",
    "--append INPUT --protocol tcp --destination-port 80 --jump ACCEPT", "-A INPUT -m tcp -p tcp --dport=80",
    "-I INPUT 0 -j ACCEPT", "-A INPUT -m comment --comment", "-A INPUT -i eth0/1",
]


@needs_tool
@pytest.mark.parametrize("line", COMMANDS)
def test_commands_and_errors_as_iptables_translate(line):
    argv = shlex.split(line)
    assert run_translate(argv, 4) == real([TOOLS[4], *argv])


@needs_tool
@pytest.mark.parametrize("line", ["-N FOO", "-F", "-X", "-P INPUT DROP", "-A INPUT -f", "-t nat -L"])
def test_ip6tables_translate_commands(line):
    argv = shlex.split(line)
    assert run_translate(argv, 6) == real([TOOLS[6], *argv])


# iptables-restore-translate: the framing, the chains' types, hooks and priorities, and its errors.
RESTORE_FILES = {
    "every-builtin-chain": "".join(
        f"*{t}\n" + "".join(f":{c} DROP [1:2]\n" for c in chains.split(",")) + "COMMIT\n"
        for t, chains in (("filter", "INPUT,FORWARD,OUTPUT"), ("nat", "PREROUTING,INPUT,OUTPUT,POSTROUTING"),
                          ("mangle", "PREROUTING,INPUT,FORWARD,OUTPUT,POSTROUTING"), ("raw", "PREROUTING,OUTPUT"),
                          ("security", "INPUT,FORWARD,OUTPUT"))),
    "rules": "# Generated by x\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [3:4]\n:FOO - [0:0]\n-A INPUT -j FOO\n"
             "-A FOO -m recent --set\n-A FOO -p tcp -m tcp --dport 80 -j REJECT\nCOMMIT\n*nat\n"
             ":PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n",
    "order-and-commands": "*nat\n:B - [0:0]\n:OUTPUT ACCEPT [5:6]\n# comment\n\n:A - [0:0]\n"
                          ":POSTROUTING ACCEPT [0:0]\n[3:4] -A A -s 1.1.1.1,2.2.2.2 -j B\n"
                          "-A B -m comment --comment \"x y\" -m recent --set\n"
                          "-A B -m comment --comment \"x y\" -j ACCEPT\n-I B -j RETURN\n-I B 2 -j RETURN\n-N C\n"
                          "-X C\n-F B\n-F\n-X\n-L\nCOMMIT\n",
    "delete-fails": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n-D INPUT -j ACCEPT\nCOMMIT\n",
    "policy-fails": "*filter\n:INPUT ACCEPT [0:0]\n-P INPUT DROP\nCOMMIT\n",
    "rename-fails": "*filter\n:B - [0:0]\n-E B C\nCOMMIT\n",
    "no-commit": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n",
    "bad-match": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m foo -j ACCEPT\nCOMMIT\n",
    "bad-table": "*foo\n:INPUT ACCEPT [0:0]\nCOMMIT\n",
    "rule-before-table": "-A INPUT -j ACCEPT\n",
    "no-policy-counters": "*filter\n:INPUT ACCEPT\n:X BAD [0:0]\n:INPUT2 DROP [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n",
    "bad-port": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport x\nCOMMIT\n",
    "table-option": "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -t nat -j ACCEPT\nCOMMIT\n",
    "nat-drop": "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j DROP\nCOMMIT\n",
    "device": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -o eth0 -j ACCEPT\nCOMMIT\n",
    "twice": "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT DROP [0:0]\nCOMMIT\n",
    "untranslatable": "*filter\n:INPUT ACCEPT [0:0]\n[5:6] -A INPUT ! -s 1.1.1.1 -m recent --set\n"
                      "-A INPUT -s 1.1.1.1,2.2.2.2 -m recent --set\n-A INPUT -j QUEUE\n"
                      "-A INPUT -m comment --comment \"a \\\"b\\\" c\" -j ACCEPT\nCOMMIT\n",
    "raw-security": "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -j CT --notrack\n"
                    "-A OUTPUT -j NOTRACK\nCOMMIT\n*security\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
    "weird-interface": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -i eth0/1 -j ACCEPT\nCOMMIT\n",
    "mark-comment": "\n\n# hi\n*mangle\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j MARK --set-mark 1 -m comment --comment x\n"
                    "-A OUTPUT -j MARK --set-mark 1\nCOMMIT\n# done\n",
}


@needs_tool
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("name", sorted(RESTORE_FILES))
def test_restore_translate_as_the_tool(tmp_path, name, family):
    path = tmp_path / f"{name}.rules"
    path.write_text(RESTORE_FILES[name])
    assert unstamped(run_restore_translate(["-f", str(path)], family)) == \
        unstamped(real([RESTORE_TOOLS[family], "-f", str(path)]))


RESTORE_RULES = [
    "-A INPUT -p tcp --dport 80 -j ACCEPT", "-A FOO -m recent --set", "-I INPUT -s 1.1.1.1,2.2.2.2 -j DROP", "-N BAR",
    "-X BAR", "-F", "-F INPUT", "-A INPUT -o eth0", "-D INPUT 1", "-A INPUT -s ::1 -j FOO",
    "-A INPUT -m mark --mark 1 -j MARK --set-mark 2 -m comment --comment \"c d\"", "-A OUTPUT -j DROP",
    "-A PREROUTING -j DNAT --to-destination 1.1.1.1", "-A POSTROUTING -j MASQUERADE", "[1:2] -A INPUT -j ACCEPT",
    "-A INPUT -j RETURN", "-A INPUT ! -p udp -j QUEUE", "-P INPUT DROP", "-L"]
RESTORE_CHAINS = [":INPUT ACCEPT [0:0]", ":FOO - [0:0]", ":PREROUTING DROP [1:1]", ":OUTPUT ACCEPT",
                  ":POSTROUTING ACCEPT [0:0]", ":BAR - [0:0]"]


@needs_tool
@pytest.mark.parametrize("seed", [20261207, random.randrange(1 << 30)])
def test_random_restore_files_translate_as_the_tool(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "r.rules"
    for _ in range(80):
        lines = []
        for table in rng.sample(["filter", "nat", "mangle", "raw", "security"], rng.randint(1, 3)):
            lines += [f"*{table}", *rng.sample(RESTORE_CHAINS, rng.randint(0, 3))]
            lines += [rng.choice(RESTORE_RULES) for _ in range(rng.randint(0, 4))]
            lines += ["COMMIT"] if rng.random() < 0.9 else []
        path.write_text("\n".join(lines) + "\n")
        family = rng.choice([4, 6])
        assert unstamped(run_restore_translate(["-f", str(path)], family)) == \
            unstamped(real([RESTORE_TOOLS[family], "-f", str(path)])), (seed, lines)


@needs_tool
@pytest.mark.parametrize("argv", [[], ["-V"], ["-f", "/nonexistent/x.rules"], ["-f", "-"], ["x.rules"],
                                  ["--file=/nonexistent"], ["-f"], ["-h"], ["--help"], ["--bogus"],
                                  ["-f", "/nonexistent", "-V"]])
def test_restore_translate_arguments(argv):
    assert run_restore_translate(argv, 4) == real([RESTORE_TOOLS[4], *argv])


@needs_tool
@pytest.mark.parametrize("dump", ["iptables.rules", "iptables-prod.rules", "verify.rules"])
def test_kube_proxy_dumps_translate_as_the_tool(dump):
    path = str(ROOT / "examples" / dump)
    assert unstamped(run_restore_translate(["-f", path], 4)) == unstamped(real([RESTORE_TOOLS[4], "-f", path]))


def test_the_translation_is_stamped_at_both_ends(tmp_path):
    path = tmp_path / "r"
    path.write_text("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
    rc, out, _ = run_restore_translate(["-f", str(path)], 4, now=0)
    stamp = __import__("time").ctime(0)
    assert rc == 0 and out.splitlines()[0] == f"# Translated by iptables-restore-translate v1.8.9 on {stamp}"
    assert out.splitlines()[-1] == f"# Completed on {stamp}"


def test_the_kproxy_commands_read_the_node_file(tmp_path):
    """The CLI commands: the ipsets a rule names are looked up on the node; nothing is written."""
    from click.testing import CliRunner

    import kproxy.cli.translate_cmd  # noqa: F401
    from kproxy.cli.main import cli

    node = str(tmp_path / "n.json")
    runner = CliRunner()
    assert runner.invoke(cli, ["--node", node, "ipset", "create", "foo", "hash:ip"]).exit_code == 0
    before = Path(node).read_bytes()
    res = runner.invoke(cli, ["--node", node, "iptables-translate", "-A", "INPUT", "-m", "set", "--match-set", "foo",
                              "src", "-p", "tcp", "--dport", "80"])
    assert (res.exit_code, res.output) == (0, "nft # -A INPUT -m set --match-set foo src -p tcp --dport 80 \n")
    res = runner.invoke(cli, ["--node", node, "ip6tables-translate", "-A", "INPUT", "-p", "tcp", "--dport", "80"])
    assert (res.exit_code, res.output) == (0, "nft 'add rule ip6 filter INPUT tcp dport 80 counter'\n")
    rules = tmp_path / "r.rules"
    rules.write_text("*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j MASQUERADE --random-fully\nCOMMIT\n")
    res = runner.invoke(cli, ["--node", node, "iptables-restore-translate", "-f", str(rules)])
    assert res.exit_code == 0
    assert res.output.splitlines()[1:4] == [
        "add table ip nat", "add chain ip nat POSTROUTING { type nat hook postrouting priority 100; policy accept; }",
        "add rule ip nat POSTROUTING counter masquerade fully-random"]
    assert Path(node).read_bytes() == before


# ---- ipsets: the translator needs the named set to exist (in the kernel; here on the node) -------
SET_CASES = ["-m set --match-set foo src", "-m set ! --match-set foo dst,src",
             "-m set --match-set foo src --return-nomatch", "-m set --match-set foo src ! --update-counters",
             "-m set --match-set foo src --packets-gt 5", "-j SET --add-set foo src --exist --timeout 10",
             "-j SET --del-set foo dst,src", "-m set --match-set nosuch src"]


def node_with_sets() -> Node:
    node = Node.from_description({"name": "n", "interfaces": [{"name": "eth0", "addresses": ["192.0.2.1/24"]}]})
    rc, _, err = run_ipset(["create", "foo", "hash:ip"], node.ipsets, 0.0)
    assert rc == 0, err
    return node


@pytest.mark.kernel
@needs_tool
def test_set_rules_need_the_set_and_are_not_translated(kernel_ns):
    kernel_ns.run(["ipset", "create", "foo", "hash:ip"])
    node = node_with_sets()
    kernel_ns.run(["ipset", "create", "foo6", "hash:net", "family", "inet6"])
    run_ipset(["create", "foo6", "hash:net", "family", "inet6"], node.ipsets, 0.0)
    for family in (4, 6):
        for line in [*SET_CASES, "-m set --match-set foo6 src", "-j SET --add-set foo6 dst"]:
            argv = rule_argv(line)
            assert run_translate(argv, family, node) == real([TOOLS[family], *argv], kernel_ns.name), line


def test_set_rules_without_the_tool():
    node = node_with_sets()
    assert run_translate(rule_argv("-m set --match-set foo src"), 4, node) == \
        (0, "nft # -A INPUT -m set --match-set foo src \n", "")
    rc, out, err = run_translate(rule_argv("-m set --match-set nosuch src"), 4, node)
    assert (rc, out) == (2, "") and "Set nosuch doesn't exist." in err


# ---- a kube-proxy dump, translated, loaded with nft -f, routes packets as the original ----------
PACKETS = [  # (source, destination, protocol, destination port, arriving on)
    ("10.244.1.5", "10.96.100.20", "tcp", 80, "cni0"),      # ClusterIP, three endpoints picked at random
    ("192.168.1.50", "192.168.1.10", "tcp", 30080, "eth0"),  # NodePort from outside: masqueraded
    ("10.244.1.5", "10.96.0.10", "udp", 53, "cni0"),         # DNS over UDP
    ("10.244.1.5", "10.96.0.10", "tcp", 53, "cni0"),         # DNS over TCP
    ("10.244.1.5", "10.96.200.1", "tcp", 8080, "cni0"),      # a Service without endpoints: rejected
    ("192.168.1.50", "10.96.0.1", "tcp", 443, "eth0"),       # from outside the cluster: masqueraded
    ("10.244.1.5", "10.244.2.9", "tcp", 22, "cni0"),         # not a Service: routed untouched
    ("192.168.1.50", "192.168.1.10", "tcp", 22, "eth0"),     # to the node itself (ssh)
    ("8.8.8.8", "192.168.1.10", "tcp", 10250, "eth0"),       # the host firewall (prod): dropped from outside
    ("192.168.1.50", "192.168.1.10", "tcp", 10250, "eth0"),  # ... accepted from the node network
    ("192.168.1.50", "192.168.1.10", "icmp", 0, "eth0"),     # echo request under a limit
    ("192.168.1.11", "192.168.1.10", "udp", 8472, "eth0"),   # flannel VXLAN, untracked
    ("8.8.8.8", "192.168.1.10", "tcp", 9100, "eth0"),        # Docker's published port
    ("10.244.1.5", "192.168.1.10", "udp", 53, "cni0"),       # a pod asking the node
    ("10.244.1.5", "8.8.8.8", "tcp", 443, "cni0"),           # a pod going out: masqueraded by flannel
]


def fates(node: Node, rounds: int, packets: list[tuple[str, str, str, int, str]] = PACKETS) -> list[tuple[object, ...]]:
    """What becomes of each packet (new connections, the node's random source seeded alike)."""
    node.subsystems["rng"] = random.Random(7)
    node.clock = 1000.0
    out = []
    for i in range(rounds):
        for src, dst, proto, dport, dev in packets:
            extra = {"tcp_flags": SYN} if proto == "tcp" else {"icmp_type": 8} if proto == "icmp" else {}
            pkt = Packet.make(src, dst, proto, 40000 + i, dport, **extra)
            res = node.receive(pkt, dev)
            p = res.packet
            out.append((res.fate, res.out_dev, p.src_str, p.sport, p.dst_str, p.dport, res.reject_with))
    return out


def kube_node() -> Node:
    return Node.from_description(yaml.safe_load((ROOT / "examples" / "node.yaml").read_text()))


def nft_node(script: str) -> tuple[int, str, Node]:
    node = kube_node()
    rc, _, err, rs = run_nft(["-f", "-"], node_ruleset(node), script, set(node.interfaces))
    if rc == 0:
        node.nftables = rs
        assert attach(node) == []
    return rc, err, node


@pytest.mark.parametrize("dump", ["iptables.rules", "iptables-prod.rules"])
def test_kube_proxy_dump_translation_routes_packets_as_the_original(tmp_path, dump):
    # iptables-translate 1.8.9 drops ``-p tcp`` when an option-less ``-m tcp`` follows it, so the raw
    # dump's ``dnat to ADDR:PORT`` rules have no protocol and nft refuses them, as the real nft does.
    original = (ROOT / "examples" / dump).read_text()
    path = tmp_path / "kube.rules"
    path.write_text(original)
    rc, script, _ = run_restore_translate(["-f", str(path)], 4)
    assert rc == 0
    rc, err, _ = nft_node(script)
    assert rc == 1 and "Error: transport protocol mapping is only valid after transport protocol match" in err
    # Without those option-less matches (the same rules to iptables) the translation loads.
    same = re.sub(r" -m (tcp|udp) -j DNAT", " -j DNAT", original)
    path.write_text(same)
    rc, script, _ = run_restore_translate(["-f", str(path)], 4)
    assert rc == 0 and "ip protocol tcp counter dnat to 10.244.1.6:8080" in script and "\n# -t" not in script
    rc, err, translated = nft_node(script)
    assert rc == 0, err
    iptables_node = kube_node()
    iptables_node.iptables_restore(same)
    ours, theirs = fates(translated, 4), fates(iptables_node, 4)
    assert ours == theirs
    # The packets did meet the rules: DNAT to several endpoints, masquerade, a reject.
    assert {f[4] for f in theirs if f[5] == 8080} >= {"10.244.1.6", "10.244.2.6"}
    assert any(f[0] == "rejected" for f in theirs) and any(f[2] == "10.244.1.1" for f in theirs)
    assert {f[0] for f in theirs} >= {"forwarded", "delivered", "rejected"}


KUBE6 = """*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-1 - [0:0]
:KUBE-SEP-2 - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-SERVICES -d fd00:96::10/128 -p tcp -m comment --comment "ns/a:http cluster IP" --dport 80 -j KUBE-SVC-A
-A KUBE-SVC-A ! -s fd00:244::/64 -d fd00:96::10/128 -p tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-A -m statistic --mode random --probability 0.5 -j KUBE-SEP-1
-A KUBE-SVC-A -j KUBE-SEP-2
-A KUBE-SEP-1 -p tcp -j DNAT --to-destination [fd00:244::6]:8080
-A KUBE-SEP-2 -p tcp -j DNAT --to-destination [fd00:244:0:2::6]:8080
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -d fd00:96::99/128 -p tcp -m tcp --dport 80 -j REJECT --reject-with icmp6-port-unreachable
-A FORWARD -m conntrack --ctstate INVALID -j DROP
COMMIT
"""
NODE6 = {"name": "w6", "interfaces": [{"name": "eth0", "addresses": ["2001:db8::10/64"]},
                                      {"name": "cni0", "addresses": ["fd00:244::1/64"]}],
         "routes": ["::/0 via 2001:db8::1 dev eth0", "fd00:244:0:2::/64 via 2001:db8::11 dev eth0"]}
PACKETS6 = [("fd00:244::5", "fd00:96::10", "tcp", 80, "cni0"), ("2001:db8::50", "fd00:96::10", "tcp", 80, "eth0"),
            ("fd00:244::5", "fd00:96::99", "tcp", 80, "cni0"), ("fd00:244::5", "2001:db8::77", "tcp", 22, "cni0")]


def test_ipv6_kube_proxy_rules_translated_route_packets_as_the_originals(tmp_path):
    path = tmp_path / "kube6.rules"
    path.write_text(KUBE6)
    rc, script, _ = run_restore_translate(["-f", str(path)], 6)
    assert rc == 0 and "meta l4proto tcp counter dnat to [fd00:244::6]:8080" in script
    translated = Node.from_description(NODE6)
    rc, _, err, rs = run_nft(["-f", "-"], node_ruleset(translated), script, set(translated.interfaces))
    assert rc == 0, err
    translated.nftables = rs
    assert attach(translated) == []
    original = Node.from_description(NODE6)
    original.iptables_restore(KUBE6, family=6)
    ours, theirs = fates(translated, 4, PACKETS6), fates(original, 4, PACKETS6)
    assert ours == theirs
    assert {f[4] for f in theirs if f[5] == 8080} == {"fd00:244::6", "fd00:244:0:2::6"}
    assert any(f[6] == "icmp6-port-unreachable" for f in theirs) and any(f[2] == "2001:db8::10" for f in theirs)
    if os.path.exists(RESTORE_TOOLS[6]):
        assert unstamped((rc, script, "")) == unstamped(real([RESTORE_TOOLS[6], "-f", str(path)]))


@pytest.mark.kernel
@needs_tool
def test_the_real_nft_refuses_the_raw_kube_proxy_translation_too(kernel_ns, tmp_path):
    path = tmp_path / "kube.nft"
    rc, script, _ = run_restore_translate(["-f", str(ROOT / "examples" / "iptables.rules")], 4)
    path.write_text(script)
    theirs = kernel_ns.run(["nft", "-c", "-f", str(path)], check=False)
    _, err, _ = nft_node(script)
    assert theirs.returncode == 1 and theirs.stderr.replace(str(path), "/dev/stdin") == err
    # The translation of the same rules without the option-less matches loads in the real nft too.
    same = tmp_path / "same.rules"
    same.write_text(re.sub(r" -m (tcp|udp) -j DNAT", " -j DNAT", (ROOT / "examples" / "iptables.rules").read_text()))
    rc, script, _ = run_restore_translate(["-f", str(same)], 4)
    path.write_text(script)
    loaded = kernel_ns.run(["nft", "-f", str(path)], check=False)
    assert (rc, loaded.returncode, loaded.stderr) == (0, 0, "")


@needs_tool
@pytest.mark.parametrize("body", ["-N BAR\n-P INPUT DROP", "-N BAR\n-A INPUT -j ACCEPT\n-P INPUT DROP",
                                  "-N BAR\n-X BAR\n-P INPUT DROP", "-N BAR\n-F\n-P INPUT DROP",
                                  "-N BAR\n-D INPUT 1", "-N BAR\n-Z", "-N BAR\n-E BAR BAZ",
                                  "-N BAR\nCOMMIT\n*nat\n-N FOO\n-I PREROUTING -j ACCEPT\n-P INPUT ACCEPT",
                                  "-N BAR\n-A INPUT -j ACCEPT\n-N BAR\n-P INPUT DROP",
                                  ":BAR - [0:0]\n-N BAR\n-P INPUT DROP", "-A INPUT -j BAR\n-N BAR\n-P INPUT DROP",
                                  "-N BAR\nCOMMIT\n*mangle\n-A OUTPUT -j DROP\n-N BAR\n-P INPUT DROP"])
def test_restore_failure_carries_the_errno_a_new_chain_left(tmp_path, body):
    """iptables 1.8.9's translator appends strerror(ENOENT) to 'line N failed' after a -N, until a rule command."""
    path = tmp_path / "r.rules"
    path.write_text(f"*filter\n{body}\nCOMMIT\n")
    assert unstamped(run_restore_translate(["-f", str(path)], 4)) == \
        unstamped(real([RESTORE_TOOLS[4], "-f", str(path)]))
