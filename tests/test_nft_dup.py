"""``dup to ADDR`` in ip/ip6 tables (issue 12): listed, refused and read from JSON as nft 1.0.6 does
(tests/data/nft/fidelity/dup.cmds), and in the packet path a copy noted as iptables' TEE does while
the packet itself goes on."""

from __future__ import annotations

import shlex

from kproxy.netfilter.trace import render_text
from kproxy.nftables.cli import run_nft
from kproxy.nftables.evaluate import attach
from kproxy.nftables.model import Ruleset
from kproxy.node import Node
from kproxy.packet import Packet
from test_nft_fidelity import run_steps, steps

RULES = """table ip t {
	chain pre {
		type filter hook prerouting priority 0; policy accept;
		tcp dport 80 dup to 10.0.1.9 device "eth0"
		tcp dport 81 dup to ip saddr map { 10.0.1.2 : 10.0.1.8 } counter
		tcp dport 81 counter
	}
}
"""


def test_dup_sends_a_copy_and_the_packet_goes_on() -> None:
    node = Node.from_description({"name": "n", "interfaces": [{"name": "eth0", "addresses": ["10.0.1.1/24"]}]})
    rc, _, err, node.nftables = run_nft(["-f", "-"], Ruleset(), RULES)
    assert rc == 0, err
    assert attach(node) == []
    res = node.receive(Packet.make("10.0.1.2", "10.0.1.1", "tcp", 4000, 80), "eth0", trace=True)
    assert res.fate == "delivered"
    assert "dup: a copy of" in render_text(res.trace) and "is sent to 10.0.1.9 via eth0" in render_text(res.trace)
    # a map hit dups and the rule goes on; a miss breaks the rule (its counter stays)
    node.receive(Packet.make("10.0.1.2", "10.0.1.1", "tcp", 4001, 81), "eth0")
    node.receive(Packet.make("10.0.1.3", "10.0.1.1", "tcp", 4001, 81), "eth0")
    rules = node.nftables.find("ip", "t").chains["pre"].rules
    assert [rules[1].stmts[-1].packets, rules[2].stmts[-1].packets] == [1, 2]


def test_dup_lists_and_fails_like_nft() -> None:
    cmds = steps("dup.cmds")
    res = dict(zip([shlex.join(a) for a in cmds], run_steps(cmds)))
    listed = res["-a list ruleset"][1]
    assert '\t\tdup to 10.0.0.1 device "lo" # handle 3\n' in listed
    assert "\t\tdup to ip saddr map { 10.0.0.2 : 10.0.0.3 } # handle 5\n" in listed
    assert res["add rule inet u c dup to 10.0.0.1"][2].startswith("Error: unsupported family\n")
    assert res["add rule ip6 s c dup to 10.0.0.1"][2].startswith(
        "Error: Could not resolve hostname: Address family for hostname not supported\n")
    assert "Error: Interface does not exist" in res["add rule ip t c dup to 10.0.0.1 device '\"nosuch\"'"][2]
    assert '{"dup": {"addr": "10.0.0.1", "dev": "lo"}}' in res["-j list table ip j"][1]
