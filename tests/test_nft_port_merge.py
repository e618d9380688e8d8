"""nft 1.0.6 merges a rule's adjacent port matches into one comparison (rule.c stmt_reduce): two ``th``
matches become a raw ``@th,0,32`` comparison, placed where the lower port was, and the implicit
protocol match of named ports stays where nft put it. Listings (text and JSON) are compared with the
real nft in a kp- namespace; the merged comparison decides packets as the kernel's one comparison does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kproxy.nftables.cli import run_nft
from kproxy.nftables.evaluate import attach
from kproxy.nftables.model import Ruleset
from kproxy.node import Node
from kproxy.packet import Packet

RULES = """table inet t {
	set s {
		type ipv4_addr
	}
	chain c {
		th sport 1 th dport 2 accept
		th dport 2 th sport 1 accept
		th sport 1 counter th dport 2 accept
		meta l4proto tcp th sport 1 th dport 2
		th sport 1 tcp dport 2
		tcp sport 1 th dport 2
		meta l4proto udp th sport 1024 th dport 53 counter
		th dport 53 th sport 65535
		th sport 1 th dport 2 th sport 3
		th sport 1 th dport { 2, 3 }
		th sport != 1 th dport 2
		th sport != 1 th dport != 2 accept
		th dport 2 meta mark 3 th sport 1
		th sport 1 ip saddr @s th dport 2
		th sport 1 ip daddr vmap { 1.1.1.1 : accept } th dport 2
		th sport 1 th dport 2 counter th sport 3 th dport 4
		th sport 1 counter th sport 3 th dport 4
		th sport 1 counter th dport 2 counter th dport 4
		@th,0,32 0x10002 accept
		@th,16,16 53
		tcp dport 2 tcp sport 1
		udp sport 1 counter udp dport 2
		udp dport 53 counter udp sport 1
		th sport 0 th dport 0
	}
}
table ip u {
	chain c {
		th sport 1 th dport 2 accept
		ip protocol udp th sport 5 th dport 6
		th sport 1 tcp dport 2
		udp dport 53 counter udp sport 1 accept
	}
}
"""


def emulated() -> Ruleset:
    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), RULES)
    assert rc == 0, err
    return rs


@pytest.mark.kernel
def test_merged_port_matches_list_as_the_real_nft_lists_them(kernel_ns, tmp_path: Path) -> None:
    path = tmp_path / "ports.nft"
    path.write_text(RULES)
    kernel_ns.run(["nft", "-f", str(path)])
    rs = emulated()
    assert run_nft(["list", "ruleset"], rs)[1] == kernel_ns.run(["nft", "list", "ruleset"]).stdout
    real = json.loads(kernel_ns.run(["nft", "-j", "list", "ruleset"]).stdout)["nftables"][1:]
    ours = json.loads(run_nft(["-j", "list", "ruleset"], rs)[1])["nftables"][1:]
    assert ours == real
    # the listing loads again, and lists the same
    listed = run_nft(["list", "ruleset"], rs)[1]
    assert run_nft(["list", "ruleset"], run_nft(["-f", "-"], Ruleset(), listed)[3])[1] == listed


def test_two_th_matches_list_as_one_raw_comparison_where_the_lower_port_was() -> None:
    listing = run_nft(["list", "chain", "inet", "t", "c"], emulated())[1].splitlines()
    assert listing[2:5] == ["\t\t@th,0,32 0x10002 accept"] * 2 + ["\t\t@th,0,32 0x10002 counter packets 0 bytes 0 accept"]
    assert "\t\t@th,0,32 0x10002 meta l4proto tcp" in listing                 # the dependency stays behind
    assert "\t\tth sport 1 counter packets 0 bytes 0 @th,0,32 0x30004" in listing  # a lone match waits past a counter
    assert "\t\tmeta l4proto udp counter packets 0 bytes 0 udp sport 1 udp dport 53" in listing
    assert "\t\tudp sport 1 udp dport 2 counter packets 0 bytes 0" in listing


def node_with(rule: str) -> Node:
    node = Node.from_description({"name": "n", "interfaces": [{"name": "eth0", "addresses": ["192.168.1.10/24"]}]})
    script = f"table inet f {{\n\tchain in {{\n\t\ttype filter hook input priority 0; policy accept;\n\t\t{rule}\n\t}}\n}}\n"
    rc, _, err, node.nftables = run_nft(["-f", "-"], Ruleset(), script)
    assert rc == 0, err
    assert attach(node) == []
    return node


def fate(node: Node, proto: str, sport: int, dport: int) -> str:
    return node.receive(Packet.make("192.168.1.50", "192.168.1.10", proto, sport, dport), "eth0").fate


def test_the_merged_comparison_decides_as_one_comparison() -> None:
    node = node_with("th sport 1 counter th dport 2 drop")
    assert [fate(node, "udp", 1, 2), fate(node, "tcp", 1, 2), fate(node, "udp", 1, 3), fate(node, "udp", 3, 2)] == \
        ["dropped", "dropped", "delivered", "delivered"]
    # the counter now sits after the merged comparison: it counted only the two packets that matched both
    assert "@th,0,32 0x10002 counter packets 2 bytes" in run_nft(["list", "ruleset"], node.nftables)[1]
    # != of the merged range is "not both": only sport 1 with dport 2 passes, as the kernel's one comparison
    node = node_with("th sport != 1 th dport != 2 drop")
    assert [fate(node, "udp", 1, 2), fate(node, "udp", 1, 3), fate(node, "udp", 3, 2), fate(node, "udp", 3, 3)] == \
        ["delivered", "dropped", "dropped", "dropped"]
    node = node_with("@th,16,16 53 drop")
    assert (fate(node, "udp", 9, 53), fate(node, "udp", 9, 54)) == ("dropped", "delivered")


@pytest.mark.parametrize("traced", [False, True])
def test_named_merged_ports_are_still_one_comparison(traced: bool) -> None:
    """``tcp sport != 1 tcp dport != 2`` lists as two matches, but nft 1.0.6 emits one 32-bit ``cmp neq``
    (``nft --debug=netlink``): the rule holds when either port differs, in the compiled chain and in the
    interpreter a traced packet takes; a packet of another protocol never matches."""
    def fates(rule: str) -> list[str]:
        node = node_with(rule)
        return [node.receive(Packet.make("192.168.1.50", "192.168.1.10", proto, sport, dport), "eth0",
                             trace=traced).fate
                for proto, sport, dport in [("tcp", 1, 2), ("tcp", 1, 3), ("tcp", 3, 2), ("tcp", 3, 3), ("udp", 1, 3)]]

    assert fates("tcp sport != 1 tcp dport != 2 drop") == ["delivered", "dropped", "dropped", "dropped", "delivered"]
    assert fates("tcp sport != 1 counter tcp dport != 2 drop") == \
        ["delivered", "dropped", "dropped", "dropped", "delivered"]
    assert fates("tcp sport 1 tcp dport 2 drop") == ["dropped", "delivered", "delivered", "delivered", "delivered"]
    # listed as the two matches nft prints
    node = node_with("meta l4proto udp th sport != 1 th dport != 2 drop")
    assert "\t\tudp sport != 1 udp dport != 2 drop\n" in run_nft(["list", "ruleset"], node.nftables)[1]
    assert fate(node, "udp", 1, 3) == "dropped" and fate(node, "udp", 1, 2) == "delivered"


def test_a_raw_payload_match_after_a_counter_loads_again() -> None:
    # nft 1.0.6 lists a merged port match after a counter as ``counter packets 0 bytes 0 @th,0,32 ...``
    # and reads that back (checked with nft -c); a terminal-statement check must not refuse the ``@``
    rs = emulated()
    listed = run_nft(["list", "ruleset"], rs)[1]
    assert "bytes 0 @th,0,32 0x30004" in listed
    rc, _, err, again = run_nft(["-f", "-"], Ruleset(), listed)
    assert rc == 0, err
    assert run_nft(["list", "ruleset"], again)[1] == listed
