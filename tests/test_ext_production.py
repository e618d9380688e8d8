"""Production-node extensions (tcpmss/TCPMSS, CHECKSUM, rpfilter, helper, owner) against the real
iptables/ip6tables 1.8.9: each command line's status, output and error, then every listing and save."""

from __future__ import annotations

import shlex

import pytest
from tests.extcompare import mismatches

CASES4 = [
    "-A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
    "-t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1400",
    "-t mangle -A POSTROUTING -p tcp -j TCPMSS --set-mss 1400 --clamp-mss-to-pmtu",
    "-A INPUT -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
    "-A INPUT -p tcp -j TCPMSS", "-A INPUT -p udp -j TCPMSS --set-mss 1", "-A INPUT -j TCPMSS --set-mss 65516",
    "-A INPUT -p tcp -j TCPMSS --set-mss 65515", "-A INPUT -p tcp -j TCPMSS --set-mss 0x10",
    "-A INPUT -p tcp -m tcpmss --mss 1000:1500", "-A INPUT -p tcp -m tcpmss ! --mss 536",
    "-A INPUT -m tcpmss --mss 1", "-A INPUT -p tcp -m tcpmss --mss 5:3", "-A INPUT -p tcp -m tcpmss",
    "-A INPUT -p tcp -m tcpmss --mss 70000", "-A INPUT -p tcp -m tcpmss --mss 1:",
    "-t mangle -A POSTROUTING -p udp --dport 68 -j CHECKSUM --checksum-fill",
    "-A INPUT -j CHECKSUM --checksum-fill", "-t mangle -A INPUT -j CHECKSUM",
    "-t raw -A PREROUTING -m rpfilter", "-t raw -A PREROUTING -m rpfilter --invert -j DROP",
    "-t mangle -A PREROUTING -m rpfilter --loose --validmark --accept-local --invert",
    "-t mangle -A PREROUTING -m rpfilter --invert --loose", "-A INPUT -m rpfilter", "-t raw -A OUTPUT -m rpfilter",
    "-t raw -A PREROUTING -m rpfilter --loose --loose",
    "-t raw -A PREROUTING -p tcp --dport 21 -j CT --helper ftp", "-t raw -A PREROUTING -j CT --helper ftp",
    "-t raw -A PREROUTING -p udp -j CT --helper ftp", "-t raw -A PREROUTING ! -p tcp -j CT --helper ftp",
    "-t raw -A PREROUTING -p udp -j CT --helper sip", "-t raw -A PREROUTING -p tcp -j CT --helper sip",
    "-t raw -A PREROUTING -p tcp -j CT --helper amanda", "-t raw -A PREROUTING -p udp -j CT --helper RAS",
    "-t raw -A PREROUTING -p tcp -j CT --helper h245", "-t raw -A PREROUTING -p tcp -j CT --helper nosuch",
    "-t raw -A PREROUTING -p udp -j CT --timeout x", "-t raw -A PREROUTING -p udp -j CT --ctevents new,bogus",
    "-t raw -A PREROUTING -p udp -j CT --ctevents destroy,new --expevents new --zone-orig mark",
    "-t raw -A PREROUTING -p udp -j CT --zone-reply 5 --zone 3", "-t raw -A PREROUTING -p udp -j CT --zone x",
    "-t raw -A OUTPUT -j CT --notrack --zone 7", "-t mangle -A PREROUTING -j CT --notrack",
    "-A INPUT -m helper --helper ftp", "-A INPUT -m helper ! --helper sip", "-A INPUT -m helper --helper \"\"",
    "-A INPUT -m helper", "-A INPUT -m helper --helper 0123456789012345678901234567890123",
    "-A OUTPUT -m owner --uid-owner 0", "-A OUTPUT -m owner ! --uid-owner 1000-2000 -j DROP",
    "-A OUTPUT -m owner --gid-owner 5:7 --suppl-groups", "-A OUTPUT -m owner --suppl-groups --gid-owner 5",
    "-A OUTPUT -m owner ! --socket-exists", "-A OUTPUT -m owner --socket-exists --uid-owner root --gid-owner root",
    "-A INPUT -m owner --uid-owner 0", "-A OUTPUT -m owner", "-A OUTPUT -m owner --uid-owner nosuchuser",
    "-A OUTPUT -m owner --uid-owner 4294967295", "-A OUTPUT -m owner --uid-owner 1-",
    "-A OUTPUT -m owner --uid-owner 65534",
]
CASES6 = [
    "-A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
    "-A INPUT -p tcp -j TCPMSS --set-mss 65496", "-A INPUT -p tcp -j TCPMSS --set-mss 65495",
    "-A INPUT -p tcp -m tcpmss --mss 1220", "-t mangle -A POSTROUTING -p udp -j CHECKSUM --checksum-fill",
    "-t raw -A PREROUTING -m rpfilter --invert -j DROP", "-A OUTPUT -m owner --uid-owner 0 --gid-owner 0",
    "-A INPUT -m helper --helper ftp",
]

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize(("family", "cases"), [(4, CASES4), (6, CASES6)], ids=["ipv4", "ipv6"])
def test_production_extensions_match_the_real_tool(kernel_ns, family, cases):
    assert mismatches(kernel_ns, family, [shlex.split(c) for c in cases]) == []

# getopt_long's abbreviations over the new extensions' options: unique prefixes are taken, ambiguous
# ones are the tool's "unknown option", and an exact name wins over longer ones it begins.
ABBREV4 = [
    "-A INPUT -m hashlimit --hashlimit-up 5/sec --hashlimit-na a", "-A INPUT -m hashlimit --hashlimit-a 5/sec --hashlimit-n b",
    "-A INPUT -m hashlimit --hashlimit 5/sec --hashlimit-name c", "-A INPUT -m hashlimit --hashlimit-h 5 --hashlimit 1/s",
    "-A FORWARD -p tcp --syn -j TCPMSS --clamp", "-A FORWARD -p tcp --syn -j TCPMSS --set 1400",
    "-A INPUT -m time --times 10:00", "-A INPUT -m time --timesta 10:00 --timesto 11:00 --week Mon",
    "-A OUTPUT -m owner --uid 0 --gid 0", "-A OUTPUT -m owner --s", "-A OUTPUT -m owner --so",
    "-A INPUT -m connlimit --connlimit-a 2", "-A INPUT -m connlimit --connlimit-u 2 --connlimit-m 24",
    "-A INPUT -m string --str x --al bm", "-A INPUT -m string --s x --algo bm", "-A INPUT -m dscp --dscp-c EF",
    "-A INPUT -m dscp --d 1", "-t raw -A PREROUTING -m rpfilter --l --v --a --i",
    "-A INPUT -m ttl --ttl-e 3", "-A INPUT -m ttl --ttl-l 3", "-A INPUT -m u32 --u 0=1",
]


@pytest.mark.kernel
def test_new_options_abbreviate_as_getopt_long_does(kernel_ns):
    assert mismatches(kernel_ns, 4, [shlex.split(c) for c in ABBREV4]) == []

RESTORE_CASES = [
    "*raw\n-A PREROUTING -p udp -j CT --helper ftp\nCOMMIT\n",
    "*filter\n-A INPUT -j LED --led-trigger-id x\nCOMMIT\n",
    "*filter\n-A INPUT -j LED --led-trigger-id x --led-delay -1\nCOMMIT\n",
    "*filter\n-A INPUT -p tcp -j TCPMSS --clamp-mss-to-pmtu\nCOMMIT\n",
    "*filter\n-A INPUT -m hashlimit --hashlimit-upto 1/s\nCOMMIT\n",
    "*filter\n-A INPUT -j NFLOG --nflog-range 5\n-A INPUT -j NFLOG --nflog-range 6\nCOMMIT\n",
    "*filter\n-A INPUT -m connlabel --label 200\nCOMMIT\n",
    "*filter\n-A INPUT -m icmp6 --icmpv6-type 1\nCOMMIT\n",
]


@pytest.mark.kernel
@pytest.mark.parametrize("text", RESTORE_CASES)
def test_restore_warnings_and_refusals_match_the_real_tool(kernel_ns, text):
    from kproxy.iptables.state import IptablesState
    from kproxy.iptables.tools import run_iptables_restore

    theirs = kernel_ns.run(["iptables-restore"], input=text, check=False)
    assert run_iptables_restore([], IptablesState(4), text) == (theirs.returncode, theirs.stdout, theirs.stderr)

PARTIAL_RESTORES = [
    "*nat\n-A PREROUTING -j ACCEPT\nCOMMIT\n*filter\n-A INPUT -j NOPE\nCOMMIT\n",
    "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n*nat\n-A NOPE -j ACCEPT\nCOMMIT\n",
    "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n*nat\n-A PREROUTING -j DNAT\nCOMMIT\n",
    "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n*nat\n-A PREROUTING -p udp -j REJECT\nCOMMIT\n",
    "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n*mangle\n-A INPUT -j ACCEPT\n",
]


@pytest.mark.kernel
@pytest.mark.parametrize("text", PARTIAL_RESTORES)
def test_a_failing_restore_keeps_earlier_commits_as_the_real_tool(kernel_ns, text):
    from tests.extcompare import strip_header

    from kproxy.iptables.state import IptablesState
    from kproxy.iptables.tools import run_iptables_restore, run_iptables_save

    state = IptablesState(4)
    theirs = kernel_ns.run(["iptables-restore"], input=text, check=False)
    assert run_iptables_restore([], state, text) == (theirs.returncode, theirs.stdout, theirs.stderr)
    assert strip_header(run_iptables_save([], state)[1]) == strip_header(kernel_ns.run(["iptables-save"]).stdout)

COUNTER_RESTORES = [
    (["-c"], "*filter\n:INPUT ACCEPT\n-A INPUT -j ACCEPT\nCOMMIT\n"),
    (["-c"], "*filter\n:INPUT DROP [5:6]\n[1:2] -A INPUT -j ACCEPT\nCOMMIT\n"),
    (["-c"], "*filter\n:INPUT ACCEPT [x:1]\nCOMMIT\n"), (["-c"], "*filter\n:INPUT - \nCOMMIT\n"),
    (["-c"], "*filter\n:FOO - \nCOMMIT\n"), ([], "*filter\n:INPUT ACCEPT\nCOMMIT\n"),
    (["-c"], "*filter\n[1:2 -A INPUT -j ACCEPT\nCOMMIT\n"), ([], "*filter\n[1:2 -A INPUT -j ACCEPT\nCOMMIT\n"),
    (["-c"], "*filter\n[x:y] -A INPUT -j ACCEPT\nCOMMIT\n"),
]


@pytest.mark.kernel
@pytest.mark.parametrize(("opts", "text"), COUNTER_RESTORES)
def test_restore_counters_are_checked_as_the_real_tool(kernel_ns, opts, text):
    from kproxy.iptables.state import IptablesState
    from kproxy.iptables.tools import run_iptables_restore

    theirs = kernel_ns.run(["iptables-restore", *opts], input=text, check=False)
    assert run_iptables_restore(opts, IptablesState(4), text) == (theirs.returncode, theirs.stdout, theirs.stderr)

TEST_RESTORES = [
    "*filter\n-A INPUT -j NOPE\nCOMMIT\n", "*filter\n-A NOPE -j ACCEPT\nCOMMIT\n", "*mangle\n-A INPUT -j REJECT\nCOMMIT\n",
    "*nat\n-A PREROUTING -j DNAT\nCOMMIT\n", "*filter\n-X NOPE\nCOMMIT\n", "*filter\n-D INPUT -j ACCEPT\nCOMMIT\n",
    "*filter\n:FOO - [0:0]\n-A INPUT -j FOO\nCOMMIT\n", "*filter\n-A INPUT -j ACCEPT\n",
]


@pytest.mark.kernel
@pytest.mark.parametrize("text", TEST_RESTORES)
def test_restore_test_mode_only_parses_as_the_real_tool(kernel_ns, text):
    from kproxy.iptables.state import IptablesState
    from kproxy.iptables.tools import run_iptables_restore

    theirs = kernel_ns.run(["iptables-restore", "--test"], input=text, check=False)
    state = IptablesState(4)
    assert run_iptables_restore(["--test"], state, text) == (theirs.returncode, theirs.stdout, theirs.stderr)
    assert not any(r for t in state.tables.values() for c in t.chains.values() for r in c.rules)
