"""nftables in the packet path: base chains at their hooks and priorities, beside iptables and conntrack."""

from __future__ import annotations

import pytest

from kproxy.netfilter.trace import render_text
from kproxy.nftables.cli import run_nft
from kproxy.nftables.evaluate import attach
from kproxy.nftables.model import Ruleset
from kproxy.node import Node
from kproxy.packet import ACK, SYN, Packet


def node_with(script: str) -> Node:
    node = Node.from_description({
        "name": "gw",
        "interfaces": [{"name": "eth0", "addresses": ["192.168.1.10/24"]},
                       {"name": "lan0", "addresses": ["10.0.0.1/24"]}],
        "routes": ["default via 192.168.1.1 dev eth0"],
        "sysctls": {"net.ipv4.ip_forward": "1"},
    })
    node.clock = 1000.0
    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), stdin=script)
    assert rc == 0, err
    node.nftables = rs
    assert attach(node) == []
    return node


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = SYN) -> Packet:
    return Packet.make(src, dst, "tcp", sport, dport, tcp_flags=flags)


FIREWALL = """
table inet fw {
	set blocked {
		type ipv4_addr
		flags interval
		elements = { 203.0.113.0/24 }
	}
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		ip saddr @blocked counter drop
		tcp dport vmap { 22 : jump ssh, 80 : accept }
		tcp dport 25 reject with tcp reset
		udp dport 53 accept
	}
	chain ssh {
		ip saddr 192.168.1.0/24 accept
		return
	}
}
"""


def test_filter_chain_policy_sets_vmaps_and_jumps():
    node = node_with(FIREWALL)
    assert node.receive(tcp("192.168.1.50", "192.168.1.10", 40000, 22), "eth0").fate == "delivered"
    assert node.receive(tcp("198.51.100.9", "192.168.1.10", 40000, 22), "eth0").fate == "dropped"  # ssh returns
    assert node.receive(tcp("198.51.100.9", "192.168.1.10", 40001, 80), "eth0").fate == "delivered"
    res = node.receive(tcp("198.51.100.9", "192.168.1.10", 40002, 25), "eth0")
    assert (res.fate, res.reject_with, res.hook) == ("rejected", "tcp-reset", "INPUT")
    assert node.receive(tcp("203.0.113.7", "192.168.1.10", 40003, 80), "eth0").fate == "dropped"
    assert node.receive(Packet.make("198.51.100.9", "192.168.1.10", "udp", 5353, 53), "eth0").fate == "delivered"
    # The counter of the rule that dropped the blocked address counted its one packet.
    listing = run_nft(["list", "chain", "inet", "fw", "input"], node.nftables)[1]
    assert "ip saddr @blocked counter packets 1 bytes 60 drop" in listing


def test_established_replies_pass_by_conntrack_state():
    node = node_with(FIREWALL)
    out = node.send(tcp("192.168.1.10", "198.51.100.9", 41000, 443))
    assert out.fate == "forwarded"
    reply = node.receive(tcp("198.51.100.9", "192.168.1.10", 443, 41000, SYN | ACK), "eth0")
    assert reply.fate == "delivered" and reply.ctstate == "ESTABLISHED"


def test_dnat_and_masquerade_make_the_conntrack_entry_iptables_would():
    node = node_with("""
table ip nat {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "eth0" tcp dport 8080 dnat to 10.0.0.5:80
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" masquerade
	}
}
""")
    res = node.receive(tcp("198.51.100.9", "192.168.1.10", 40000, 8080), "eth0")
    assert res.fate == "forwarded" and res.out_dev == "lan0"
    assert (res.packet.dst_str, res.packet.dport) == ("10.0.0.5", 80)
    (entry,) = node.conntrack.entries()
    assert entry.reply.src == Packet.make("10.0.0.5", "1.1.1.1").src and entry.reply.sport == 80
    out = node.receive(tcp("10.0.0.5", "198.51.100.9", 33000, 443), "lan0")
    assert out.fate == "forwarded" and out.packet.src_str == "192.168.1.10"


def test_nft_and_iptables_both_decide_in_priority_order():
    node = node_with("""
table ip early {
	chain input {
		type filter hook input priority -10; policy accept;
		tcp dport 22 accept
	}
}
""")
    assert node.iptables_cmd(["-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "DROP"])[0] == 0
    # nft's accept ends only its own chain; iptables' filter table still drops the packet.
    res = node.receive(tcp("192.168.1.50", "192.168.1.10", 40000, 22), "eth0")
    assert res.fate == "dropped" and res.hook == "INPUT"


def test_conntrack_references_follow_the_rules():
    node = node_with(FIREWALL)
    assert node.conntrack.users == {4: 1, 6: 1}   # one ``ct state`` match in an inet table
    rc, _, _, rs = run_nft(["flush", "ruleset"], node.nftables)
    node.nftables = rs
    attach(node)
    assert node.conntrack.users == {4: 0, 6: 0}


def test_unevaluated_expression_drops_and_says_why():
    node = node_with("""
table ip t {
	chain input {
		type filter hook input priority 0; policy accept;
		meta cpu 1 drop
	}
}
""")
    res = node.receive(tcp("192.168.1.50", "192.168.1.10", 40000, 22), "eth0", trace=True)
    assert res.fate == "dropped"
    assert "meta cpu is not evaluated by the emulator: drop" in render_text(res.trace)


def test_families_without_a_hook_are_reported():
    node = node_with("table ip t {\n}\n")
    script = ("table bridge br {\n\tchain fw {\n\t\ttype filter hook forward priority 0;\n\t}\n}\n"
              "table arp a {\n\tchain in {\n\t\ttype filter hook input priority 0;\n\t}\n}\n"
              "table netdev nd {\n\tchain ing {\n\t\ttype filter hook ingress device lo priority 0;\n\t}\n}\n")
    rc, _, _, rs = run_nft(["-f", "-"], node.nftables, stdin=script)
    assert rc == 0
    node.nftables = rs
    assert attach(node) == [
        "table bridge br chain fw (hook forward) is not evaluated: the emulated node has no bridge devices, "
        "so no packet is bridged",
        "table arp a chain in (hook input) is not evaluated: the emulated node does not model ARP, and arp "
        "chains see only ARP packets"]


def test_dynamic_set_learns_sources_and_lists_them():
    node = node_with("""
table inet guard {
	set seen {
		type ipv4_addr
		size 65535
		flags dynamic,timeout
		timeout 1m
	}
	chain input {
		type filter hook input priority filter; policy accept;
		ip saddr @seen drop
		tcp dport 23 add @seen { ip saddr }
	}
}
""")
    assert node.receive(tcp("198.51.100.9", "192.168.1.10", 40000, 23), "eth0").fate == "delivered"
    assert node.receive(tcp("198.51.100.9", "192.168.1.10", 40001, 80), "eth0").fate == "dropped"
    assert node.receive(tcp("198.51.100.10", "192.168.1.10", 40001, 80), "eth0").fate == "delivered"
    listing = run_nft(["list", "set", "inet", "guard", "seen"], node.nftables)[1]
    assert "elements = { 198.51.100.9 }" in listing   # (expiry countdowns are not modelled)


# nft merges a rule's port matches into one comparison where the lower port was (checked against nft 1.0.6).
@pytest.mark.parametrize("rule, listed", [
    ("th dport 53 udp sport 1", "udp sport 1 udp dport 53"),
    ("ip saddr 0.0.0.0 th dport 53 udp sport 1", "ip saddr 0.0.0.0 udp sport 1 udp dport 53"),
    ("tcp dport 80 tcp sport 1", "tcp sport 1 tcp dport 80"),
    ("th dport 53 counter udp sport 1", "counter packets 0 bytes 0 udp sport 1 udp dport 53"),
    ("udp dport 53 counter udp sport 1 accept", "meta l4proto udp counter packets 0 bytes 0 udp sport 1 udp dport 53 accept"),
    ("th dport 53 udp dport 1", "th dport 53 udp dport 1"),
    ("th dport 53 udp sport != 1", "th dport 53 udp sport != 1"),
    ("ip daddr 2.2.2.2 ip saddr 1.1.1.1", "ip daddr 2.2.2.2 ip saddr 1.1.1.1"),
])
def test_port_matches_merge_as_nft_merges_them(rule, listed):
    from kproxy.nftables.cli import run_nft
    from kproxy.nftables.model import Ruleset

    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), f"table ip t {{\n chain c {{\n  {rule}\n }}\n}}\n")
    assert rc == 0, err
    assert run_nft(["list", "ruleset"], rs)[1].splitlines()[2] == f"\t\t{listed}"
