"""Object maps (issue 12): ``counter name ip saddr map @m`` (quota, limit) count, limit and listen to the
named object the packet's key maps to; listing, JSON and errors as nft 1.0.6
(tests/data/nft/fidelity/objmap.cmds, run against the real nft by test_nft_fidelity)."""

from __future__ import annotations

import shlex

from kproxy.nftables.cli import run_nft
from kproxy.nftables.evaluate import attach
from kproxy.nftables.model import Ruleset
from kproxy.node import Node
from kproxy.packet import Packet
from test_nft_fidelity import run_steps, steps

RULES = """table ip t {
	counter c1 { }
	counter c2 { }
	quota q1 { over 500 bytes }
	limit l1 { rate 1/minute burst 2 packets }
	map m { type ipv4_addr : counter; elements = { 10.0.1.2 : "c1", 10.0.1.3 : "c2" } }
	map mq { type ipv4_addr : quota; elements = { 10.0.1.4 : "q1" } }
	map ml { type inet_service : limit; elements = { 22 : "l1" } }
	chain in {
		type filter hook input priority 0; policy accept;
		counter name ip saddr map @m
		counter name tcp dport map { 8080 : "c2" }
		quota name ip saddr map @mq drop
		limit name tcp dport map @ml accept
		tcp dport 22 drop
	}
}
"""


def node_with_rules() -> Node:
    node = Node.from_description({"name": "n", "interfaces": [{"name": "eth0", "addresses": ["10.0.1.1/24"]}]})
    rc, _, err, node.nftables = run_nft(["-f", "-"], Ruleset(), RULES)
    assert rc == 0, err
    assert attach(node) == []
    return node


def send(node: Node, src: str, dport: int, size: int = 0) -> str:
    pkt = Packet.make(src, "10.0.1.1", "tcp", 4000, dport)
    pkt.length += size
    return node.receive(pkt, "eth0").fate


def test_the_mapped_object_counts_limits_and_quotas() -> None:
    node = node_with_rules()
    for src in ("10.0.1.2", "10.0.1.2", "10.0.1.3", "10.0.1.9"):
        send(node, src, 80)
    send(node, "10.0.1.9", 8080)
    objs = node.nftables.find("ip", "t").objs
    assert objs[("counter", "c1")].values["packets"] == 2
    assert objs[("counter", "c2")].values["packets"] == 2       # one by @m, one by the anonymous map
    # quota over 500 bytes: the first packet of 10.0.1.4 (about 350 bytes) passes, the next go over
    fates = [send(node, "10.0.1.4", 80, 300) for _ in range(3)]
    assert fates == ["delivered", "dropped", "dropped"]
    assert objs[("quota", "q1")].values["used"] > 0
    # limit 1/minute burst 2: two packets to port 22 accepted, then the limit fails and the drop rule runs
    assert [send(node, "10.0.1.9", 22) for _ in range(3)] == ["delivered", "delivered", "dropped"]


def test_object_maps_list_and_fail_like_nft() -> None:
    cmds = steps("objmap.cmds")
    res = dict(zip([shlex.join(a) for a in cmds], run_steps(cmds)))
    listed = res["-a list ruleset"][1]
    assert '\tmap m { # handle 5\n\t\ttype ipv4_addr : counter\n\t\telements = { 10.0.0.1 : "c1", ' in listed
    assert "\t\tquota name ip saddr map @mq # handle 17\n" in listed    # nft names it by the map's type
    assert res["delete counter ip t c2"][2].startswith("Error: Could not process rule: Device or resource busy")
    nope = res["add element ip t m '{' 10.0.0.8 : '\"nope\"' '}'"]
    assert nope[0] == 1 and "No such file or directory\nadd element ip t m { 10.0.0.8 : \"nope\" }\n" \
        "                     ^^^^^^^^\n" in nope[2]
    assert '"map": "counter", "elem": [["10.0.0.1", "c1"]]' in res["-j list table ip j"][1]
