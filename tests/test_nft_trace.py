"""nft tracing: ``meta nftrace set 1`` marks the packet, nft rules show in ``kproxy trace``, and
``kproxy trace --nft-monitor`` prints the lines the real ``nft monitor trace`` prints (checked field by
field against nft 1.0.6 watching packets sent between two kp- namespaces)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.test_nft_compat import require_nft

from kproxy.cli.main import cli
from kproxy.lab.netns import Netns

RULESET = """table ip filter {
	chain pre {
		type filter hook prerouting priority -350; policy accept;
		ip daddr 192.168.1.99 drop
		meta nftrace set 1
	}
	chain input {
		type filter hook input priority filter; policy drop;
		ip saddr 192.168.1.9 drop
		jump sub
		udp dport 5353 counter goto sub2
		icmp type echo-request accept
	}
	chain sub {
		tcp dport 22 accept
		udp dport 7 return
	}
	chain sub2 {
		udp dport 1 accept
	}
}
table inet other {
	chain input {
		type filter hook input priority filter + 10; policy accept;
		meta l4proto tcp counter
	}
}
"""
PACKETS = (["-p", "tcp", "--dport", "22"], ["-p", "udp", "--dport", "5353"])


def kproxy(node: Path, *args: str, stdin: str | None = None):
    import kproxy.cli.commands  # noqa: F401
    import kproxy.cli.nft_cmd  # noqa: F401

    return CliRunner().invoke(cli, ["--node", str(node), *args], input=stdin)


def our_monitor(tmp_path: Path) -> list[str]:
    node = tmp_path / "node.db"
    assert kproxy(node, "nft", "-f", "-", stdin=RULESET).exit_code == 0
    lines: list[str] = []
    for spec in PACKETS:
        res = kproxy(node, "trace", "--nft-monitor", "--iif", "eth0", "-s", "192.168.1.2", "-d", "192.168.1.10",
                     *spec)
        assert res.exit_code == 0, res.output
        lines += res.output.splitlines()
    return lines


def test_monitor_lines_follow_the_packet_through_the_chains(tmp_path: Path) -> None:
    lines = our_monitor(tmp_path)
    ids = {ln.split()[2] for ln in lines}
    assert len(ids) == 2 and all(re.fullmatch(r"[0-9a-f]{8}", i) for i in ids)  # one trace id per packet
    body = [ln.split(" ", 3)[3] for ln in lines]
    assert body[:3] == [
        'ip filter pre packet: iif "eth0" ip saddr 192.168.1.2 ip daddr 192.168.1.10 ip dscp cs0 ip ecn not-ect '
        "ip ttl 64 ip id 0 ip length 60 tcp sport 40000 tcp dport 22 tcp flags == syn tcp window 64240 ",
        "ip filter pre rule meta nftrace set 1 (verdict continue)",
        "ip filter pre policy accept "]
    # the rule before nftrace was set is not traced; jump, accept in the called chain, the inet table's
    # own packet line (with ip protocol), its counter rule (counters as when the monitor started), policy
    assert [b for b in body[3:] if "packet:" not in b][:5] == [
        "ip filter input rule jump sub (verdict jump sub)",
        "ip filter sub rule tcp dport 22 accept (verdict accept)",
        "inet other input rule meta l4proto tcp counter packets 0 bytes 0 (verdict continue)",
        "inet other input policy accept ",
        "ip filter pre rule meta nftrace set 1 (verdict continue)"]
    assert "ip protocol tcp ip length 60" in body[6]
    assert body[-3:] == ["ip filter input rule jump sub (verdict jump sub)",
                         "ip filter input rule udp dport 5353 counter packets 0 bytes 0 goto sub2 (verdict goto sub2)",
                         "ip filter input policy drop "]


def test_trace_shows_nft_rules_beside_iptables_ones(tmp_path: Path) -> None:
    node = tmp_path / "node.db"
    assert kproxy(node, "nft", "-f", "-", stdin=RULESET).exit_code == 0
    assert kproxy(node, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT").exit_code == 0
    out = kproxy(node, "trace", "--iif", "eth0", "-s", "192.168.1.2", "-d", "192.168.1.10", "-p", "tcp",
                 "--dport", "22").output
    assert "  ip filter pre #2: meta nftrace set 1\n" in out
    assert "  ip filter input #2: jump sub  => jump sub\n" in out
    assert "  ip filter sub #1: tcp dport 22 accept  => accept\n" in out
    assert "  filter   INPUT #1: -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT  => ACCEPT\n" in out
    # a packet nft never marked reaches no monitor
    quiet = kproxy(node, "trace", "--nft-monitor", "--iif", "eth0", "-s", "192.168.1.2", "-d", "192.168.1.99",
                   "-p", "udp", "--dport", "9")
    assert (quiet.exit_code, quiet.output) == (0, "")


def test_nft_monitor_says_where_tracing_is() -> None:
    res = kproxy(Path("unused.db"), "nft", "monitor", "trace")
    assert res.exit_code == 2 and "kproxy trace --nft-monitor" in res.output


# ---- against the kernel -------------------------------------------------------------------------
MASKED = ("ip id", "ip length", "udp length", "tcp sport", "udp sport", "tcp window")


def shape(line: str) -> str:
    """A monitor line with what differs between any two runs masked: the trace id, the link layer and
    payload (the emulator has neither), and the header values a real stack picks (ids, ports, lengths)."""
    line = re.sub(r"^trace id [0-9a-f]{8} ", "trace id X ", line)
    line = re.sub(r" ether saddr \S+ ether daddr \S+", "", line)
    line = re.sub(r" @th,\d+,\d+ 0x[0-9a-f]+", "", line)
    for name in MASKED:
        line = re.sub(rf"\b{name} \d+", f"{name} N", line)
    return line


SEND = """
import socket
s = socket.socket()
s.settimeout(1)
try:
    s.connect(("192.168.1.10", 22))
except OSError:
    pass
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"hello", ("192.168.1.10", 5353))
"""


@pytest.mark.kernel
def test_monitor_lines_like_nft_monitor_trace(tmp_path: Path) -> None:
    require_nft()
    peer, node = Netns.create("nftt"), Netns.create("nftt")
    try:
        node.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "kpv-peer", "netns", peer.name])
        node.run(["ip", "addr", "add", "192.168.1.10/24", "dev", "eth0"])
        node.run(["ip", "link", "set", "eth0", "up"])
        peer.run(["ip", "addr", "add", "192.168.1.2/24", "dev", "kpv-peer"])
        peer.run(["ip", "link", "set", "kpv-peer", "up"])
        node.run(["nft", "-f", "-"], input=RULESET)
        monitor = node.popen(["nft", "monitor", "trace"], stdout=-1, stderr=-1)
        try:
            time.sleep(0.5)
            peer.run(["python3", "-c", SEND])
            time.sleep(0.5)
        finally:
            monitor.terminate()
        real = monitor.communicate(timeout=10)[0].splitlines()
    finally:
        peer.delete()
        node.delete()
    assert real, "nft monitor trace printed nothing"
    assert [shape(ln) for ln in our_monitor(tmp_path)] == [shape(ln) for ln in real]
