"""Conntrack zones set by nft (``ct zone set``, from a map, per direction) before the conntrack lookup:
the first template wins, connections are found only in their zone, ``ct zone`` matches them, and
``conntrack -L`` shows ``zone=``, ``zone-orig=`` or ``zone-reply=`` where conntrack-tools 1.4.7 puts it.
Checked against the kernel: the same ruleset and packets in the kernel lab and in the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

import test_differential
from kproxy.lab.differential import Probe
from kproxy.lab.kernel import KernelLab
from kproxy.netfilter.ctformat import format_conn
from kproxy.nftables.cli import run_nft
from kproxy.nftables.evaluate import attach
from kproxy.nftables.model import Ruleset
from kproxy.node import Node
from kproxy.packet import Packet
from test_nft_differential import agree
from test_nft_fib import lists_like_the_real_nft

ZONES = """table inet z {
	chain raw_pre {
		type filter hook prerouting priority raw; policy accept;
		udp dport 53 ct zone set 3
		udp sport 53 ct zone set 3
		tcp dport 80 ct zone set meta mark map { 0 : 4 }
		tcp sport 80 ct zone set meta mark map { 0 : 4 }
		udp dport 5000 ct original zone set 6
		ct zone set 9
	}
	chain forward {
		type filter hook forward priority 0; policy accept;
		ct zone 3 counter
		ct zone 4 counter
		ct zone 9 counter
		ct original zone 6 counter
		ct reply zone 6 counter
		ct zone 0 counter
	}
}
"""




@pytest.mark.kernel
def test_zones_decide_and_list_like_the_kernel(lab: KernelLab) -> None:
    agree(lab, ZONES, [Probe("udp", "10.0.2.2", 53), Probe("tcp", "10.0.2.2", 80), Probe("udp", "10.0.2.2", 5000),
                       Probe("udp", "10.0.2.2", 5001)])


@pytest.mark.kernel
def test_zone_rules_list_like_the_real_nft(kernel_ns, tmp_path: Path) -> None:
    assert "ct zone set meta mark map { 0x00000000 : 4 }" in lists_like_the_real_nft(kernel_ns, tmp_path / "z.nft",
                                                                                     ZONES)


def test_a_connection_is_found_only_in_its_zone() -> None:
    node = Node.from_description({"name": "n", "interfaces": [{"name": "eth0", "addresses": ["10.0.1.1/24"]}]})
    script = ("table ip z {\n\tchain pre {\n\t\ttype filter hook prerouting priority raw; policy accept;\n"
              "\t\tmeta mark 1 ct zone set 1\n\t\tmeta mark 2 ct original zone set 2\n\t\tct zone set 7\n\t}\n}\n")
    rc, _, err, node.nftables = run_nft(["-f", "-"], Ruleset(), script)
    assert rc == 0, err
    assert attach(node) == []

    def send(mark: int, sport: int = 4000) -> Packet:
        pkt = Packet.make("10.0.1.2", "10.0.1.1", "udp", sport, 53)
        pkt.mark = mark
        node.receive(pkt, "eth0")
        return pkt

    first = send(1)
    assert first.ct is not None and first.ct.zone == 1 and first.ctstate == "NEW"
    assert send(1).ct is first.ct                       # same zone: the same connection
    other = send(0)                                     # the same tuple, zone 7 (the first template wins)
    assert other.ctstate == "NEW" and other.ct is not first.ct and other.ct.zone == 7
    directional = send(2, 4001)
    assert directional.ct is not None
    lines = [format_conn(c, node.now()) for c in node.conntrack.entries()]
    assert [line.split(" mark=")[1] for line in lines] == ["0 zone=1 use=1", "0 zone=7 use=1", "0 use=1"]
    assert "sport=4001 dport=53 zone-orig=2 [UNREPLIED]" in lines[2]


IPTABLES_ZONES = """*raw
-A PREROUTING -p udp --dport 53 -j CT --zone 3
-A PREROUTING -p udp --sport 53 -j CT --zone 3
-A PREROUTING -p udp --dport 5000 -j CT
-A PREROUTING -p udp -j CT --zone 9
COMMIT
*filter
-A FORWARD -m conntrack --ctstate NEW -j ACCEPT
COMMIT
"""


@pytest.mark.kernel
def test_iptables_ct_zones_track_like_the_kernel(lab: KernelLab) -> None:
    """The CT target's template: its zone for the lookup, the first template winning (the reply of the
    port 5000 flow gets zone 9 and starts a connection of its own, as in the kernel)."""
    test_differential.agree(lab, IPTABLES_ZONES, [Probe("udp", "10.0.2.2", 53), Probe("udp", "10.0.2.2", 5000),
                                                  Probe("udp", "10.0.2.2", 5001)])
