"""netdev (and inet ingress) chains in the packet path: ingress before PREROUTING, egress after
POSTROUTING, only on their devices; bridge and arp chains loaded, listed and said not to run."""

from __future__ import annotations

import json

import pytest

from kproxy.lab.differential import Probe
from kproxy.netfilter.trace import render_text
from kproxy.nftables.cli import run_nft
from kproxy.nftables.evaluate import attach
from kproxy.nftables.model import Ruleset
from kproxy.node import Node
from kproxy.packet import SYN, Packet
from test_nft_eval import node_with


def tcp(src: str, dst: str, dport: int) -> Packet:
    return Packet.make(src, dst, "tcp", 40000, dport, tcp_flags=SYN)


def counters(node: Node, table: str, chain: str) -> list[int]:
    t = node.nftables.find("netdev", table)
    return [st.packets for r in t.chains[chain].rules for st in r.stmts if type(st).__name__ == "Counter"]


INGRESS = """table netdev n {
	chain in {
		type filter hook ingress device "lan0" priority filter; policy accept;
		ip daddr 198.51.100.9 counter drop
		ether type ip counter
	}
}
table ip t {
	chain pre {
		type filter hook prerouting priority raw; policy accept;
		counter
	}
}
"""


def test_ingress_runs_before_prerouting_on_its_device_only():
    node = node_with(INGRESS)
    res = node.receive(tcp("10.0.0.5", "198.51.100.9", 80), "lan0", trace=True)
    assert res.fate == "dropped" and res.hook == "INGRESS"
    assert "PREROUTING" not in render_text(res.trace)
    assert node.receive(tcp("10.0.0.5", "198.51.100.8", 80), "lan0").fate == "forwarded"
    assert counters(node, "n", "in") == [1, 1]
    # eth0 is not the chain's device: nothing counted there
    assert node.receive(tcp("192.168.1.5", "198.51.100.9", 80), "eth0").fate == "forwarded"
    assert counters(node, "n", "in") == [1, 1]
    assert node.nftables.find("ip", "t").chains["pre"].rules[0].stmts[0].packets == 2


EGRESS = """table netdev n {
	chain out {
		type filter hook egress devices = { eth0, lo } priority filter; policy accept;
		tcp dport 25 counter drop
		counter
	}
}
"""


def test_egress_runs_after_postrouting_and_on_lo():
    node = node_with(EGRESS)
    res = node.receive(tcp("10.0.0.5", "198.51.100.9", 25), "lan0", trace=True)
    assert res.fate == "dropped" and res.hook == "EGRESS"
    assert render_text(res.trace).index("POSTROUTING") < render_text(res.trace).index("EGRESS")
    assert node.receive(tcp("10.0.0.5", "198.51.100.9", 80), "lan0").fate == "forwarded"
    # to lan0: not an egress device
    assert node.receive(tcp("192.168.1.5", "10.0.0.7", 25), "eth0").fate == "forwarded"
    # a local packet to a local address leaves by lo, and meets lo's egress
    local = node.send(Packet.make("192.168.1.10", "192.168.1.10", "tcp", 40000, 25, tcp_flags=SYN))
    assert local.fate == "dropped" and local.hook == "EGRESS"
    assert counters(node, "n", "out") == [2, 1]


def test_fwd_sends_the_packet_out_of_the_device():
    node = node_with('table netdev n {\n\tchain in {\n\t\ttype filter hook ingress device "lan0" priority 0;\n'
                     '\t\ttcp dport 8080 fwd to "eth0"\n\t}\n}\n')
    res = node.receive(tcp("10.0.0.5", "10.0.0.1", 8080), "lan0", trace=True)
    assert res.fate == "forwarded" and res.out_dev == "eth0"
    assert "PREROUTING" not in render_text(res.trace)
    assert node.receive(tcp("10.0.0.5", "10.0.0.1", 22), "lan0").fate == "delivered"


def test_ether_addresses_are_said_not_known():
    node = node_with('table netdev n {\n\tchain in {\n\t\ttype filter hook ingress device "lan0" priority 0;\n'
                     '\t\tether saddr 02:00:00:00:00:01 accept\n\t}\n}\n')
    res = node.receive(tcp("10.0.0.5", "10.0.0.1", 22), "lan0", trace=True)
    assert res.fate == "dropped"
    assert "ether saddr" in render_text(res.trace) and "not evaluated by the emulator" in render_text(res.trace)


def test_inet_ingress_chain():
    node = node_with('table inet i {\n\tchain c {\n\t\ttype filter hook ingress device "eth0" priority 0;\n'
                     '\t\tip saddr 192.168.1.66 drop\n\t}\n}\n')
    assert node.receive(tcp("192.168.1.66", "192.168.1.10", 22), "eth0").fate == "dropped"
    assert node.receive(tcp("192.168.1.67", "192.168.1.10", 22), "eth0").fate == "delivered"


def test_listing_and_errors_as_nft():
    script = ("table netdev n {\n\tchain a {\n\t\ttype filter hook ingress devices = { zz, lan0, aa } priority 0;\n"
              "\t\tether type ip dup to \"eth0\"\n\t}\n}\n")
    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), stdin=script, interfaces={"eth0", "lan0"})
    assert rc == 0, err
    assert run_nft(["list", "ruleset"], rs)[1] == (
        "table netdev n {\n\tchain a {\n\t\ttype filter hook ingress devices = { aa, lan0, zz } priority filter; "
        "policy accept;\n\t\tether type ip dup to \"eth0\"\n\t}\n}\n")
    chain = json.loads(run_nft(["-j", "list", "ruleset"], rs)[1])["nftables"][2]["chain"]
    assert "dev" not in chain          # nft 1.0.6 leaves a chain's devices out of its JSON
    rc, _, err, _ = run_nft(["add", "chain", "netdev", "n", "d", "{ type filter hook ingress priority 0; }"], rs)
    assert err == ("Error: Missing `device' in this chain definition\n"
                   "add chain netdev n d { type filter hook ingress priority 0; }\n"
                   "                       ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n")
    rc, _, err, _ = run_nft(["add", "rule", "netdev", "n", "a", "fwd", "to", "nope"], rs, interfaces={"eth0"})
    assert err == "Error: Interface does not exist\nadd rule netdev n a fwd to nope\n" + " " * 27 + "^^^^\n"


def test_bridge_and_arp_chains_are_listed_and_reported():
    script = ("table bridge b {\n\tchain f {\n\t\ttype filter hook forward priority filter; policy accept;\n"
              "\t\tcounter packets 0 bytes 0\n\t}\n}\n")
    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), stdin=script)
    assert rc == 0 and run_nft(["list", "ruleset"], rs)[1] == script
    node = Node.from_description({"name": "n", "interfaces": [{"name": "eth0", "addresses": ["192.168.1.10/24"]}]})
    node.nftables = rs
    assert attach(node) == ["table bridge b chain f (hook forward) is not evaluated: the emulated node has no "
                            "bridge devices, so no packet is bridged"]


@pytest.mark.kernel
def test_netdev_ingress_and_egress_agree_with_the_kernel(lab):
    from test_nft_differential import agree

    agree(lab, """table netdev n {
	chain in {
		type filter hook ingress device "eth0" priority filter; policy accept;
		ip daddr 10.0.2.2 tcp dport 81 counter drop
		meta l4proto udp counter
	}
	chain out {
		type filter hook egress device "eth1" priority filter; policy accept;
		tcp dport 82 counter drop
		ip daddr 10.0.2.2 tcp dport 80 counter
	}
}
""", [Probe("tcp", "10.0.2.2", 80), Probe("tcp", "10.0.2.2", 81), Probe("tcp", "10.0.2.2", 82),
      Probe("udp", "10.0.2.2", 53)])


KERNEL_LISTED = """table netdev n {
	chain in {
		type filter hook ingress devices = { eth0, eth1 } priority filter + 3; policy drop;
		ether type ip counter packets 0 bytes 0 accept
		ip daddr 10.9.9.9 tcp dport 80 counter packets 0 bytes 0 drop
		vlan id 4 drop
		ether type ip dup to "eth1"
		ip saddr 10.1.1.1 fwd to "eth1"
	}

	chain out {
		type filter hook egress device "eth1" priority -5; policy accept;
		meta l4proto udp drop
	}
}
table inet i {
	chain c {
		type filter hook ingress device "eth0" priority filter; policy accept;
		ip saddr 10.0.0.0/8 counter packets 0 bytes 0
	}
}
"""


def kernel_listing(ns, script: str, *argv: str) -> str:
    ns.run(["nft", "-f", "-"], input=script)
    return ns.run(["nft", *argv, "list", "ruleset"]).stdout


@pytest.mark.kernel
@pytest.mark.parametrize("argv", [(), ("-a",), ("-j",)])
def test_netdev_listing_is_the_kernels(kernel_ns, argv):
    kernel_ns.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"])
    expected = kernel_listing(kernel_ns, KERNEL_LISTED, *argv)
    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), stdin=KERNEL_LISTED, interfaces={"eth0", "eth1"})
    assert rc == 0, err
    assert run_nft([*argv, "list", "ruleset"], rs)[1] == expected


@pytest.mark.kernel
def test_inet_and_netdev_ingress_share_the_devices_hook_in_priority_order(lab):
    from test_nft_differential import agree

    agree(lab, """table netdev n {
	chain in {
		type filter hook ingress device "eth0" priority 10; policy accept;
		counter
		tcp dport 81 counter drop
	}
}
table inet i {
	chain c {
		type filter hook ingress device "eth0" priority -10; policy accept;
		tcp dport 80 counter drop
		meta l4proto tcp counter
	}
	chain pre {
		type filter hook prerouting priority 0; policy accept;
		meta l4proto tcp counter
	}
}
""", [Probe("tcp", "10.0.2.2", 80), Probe("tcp", "10.0.2.2", 81), Probe("tcp", "10.0.2.2", 82)])


def test_kproxy_nft_notes_a_bridge_chain_once_on_stderr(tmp_path):
    from test_nft_cli import run

    node = str(tmp_path / "n.json")
    assert run(node, "add", "table", "bridge", "b").exit_code == 0
    res = run(node, "add", "chain", "bridge", "b", "f", "{ type filter hook forward priority 0; }")
    assert res.exit_code == 0 and res.stdout == ""
    assert res.stderr == ("kproxy: note: table bridge b chain f (hook forward) is not evaluated: the emulated node "
                          "has no bridge devices, so no packet is bridged\n")
    res = run(node, "add", "rule", "bridge", "b", "f", "counter")
    assert res.exit_code == 0 and res.stderr == ""            # said when the chain came, not at every command
    assert run(node, "list", "ruleset").stdout == ("table bridge b {\n\tchain f {\n\t\ttype filter hook forward "
                                                   "priority 0; policy accept;\n\t\tcounter packets 0 bytes 0\n\t}\n}\n")


def test_verify_leaves_out_counters_of_chains_that_never_run():
    from kproxy.lab.nftdiff import evaluated_counters, notes

    listing = ("table bridge b {\n\tchain f {\n\t\ttype filter hook forward priority 0; policy accept;\n"
               "\t\tcounter packets 5 bytes 300\n\t}\n}\ntable ip t {\n\tchain c {\n\t\ttype filter hook input "
               "priority 0; policy accept;\n\t\tcounter packets 2 bytes 80\n\t}\n}\n")
    assert evaluated_counters(listing) == {"table ip t chain c rule 1": 2}
    assert notes(listing) == ["table bridge b chain f (hook forward) is not evaluated: the emulated node has no "
                              "bridge devices, so no packet is bridged"]


@pytest.mark.kernel
def test_capture_keeps_netdev_devices_nft_json_leaves_out(kernel_ns):
    from kproxy.capture import build, capture

    kernel_ns.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"])
    expected = kernel_listing(kernel_ns, KERNEL_LISTED)
    node = build(capture(kernel_ns.name))
    assert run_nft(["list", "ruleset"], node.nftables)[1] == expected
    node.receive(tcp("10.1.1.1", "10.9.9.9", 80), "eth0")
    assert counters(node, "n", "in")[0] == 1                  # the captured chain runs on eth0


@pytest.mark.kernel
def test_egress_sees_nat_done_and_ingress_sees_it_not_yet(lab):
    """A DNATed connection: eth1's egress sees the new destination, eth1's ingress the endpoint's reply
    before it is un-NATed, eth0's egress the reply with the original address back."""
    from test_nft_differential import agree

    agree(lab, """table ip nat {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.0.2.9 tcp dport 80 dnat to 10.0.2.2
	}
}
table netdev n {
	chain out1 {
		type filter hook egress device "eth1" priority 0; policy accept;
		ip daddr 10.0.2.2 tcp dport 80 counter
		ip daddr 10.0.2.9 counter
	}
	chain in1 {
		type filter hook ingress device "eth1" priority 0; policy accept;
		ip saddr 10.0.2.2 tcp sport 80 counter
	}
	chain out0 {
		type filter hook egress device "eth0" priority 0; policy accept;
		ip saddr 10.0.2.9 tcp sport 80 counter
		ip saddr 10.0.2.2 counter
	}
}
""", [Probe("tcp", "10.0.2.9", 80)])


CHAIN_ERRORS = [
    ["add table ip y; add chain ip y c { type nat hook forward priority 0; }"],
    ["add table ip z", "add chain ip z d { type route hook input priority 0; }"],
    ["add table inet i", "add chain inet i c { type nat hook ingress device eth0 priority 0; }"],
    ["add table netdev n", "add chain netdev n e { type nat hook ingress device eth0 priority 0; }"],
    ["add table arp a", "add chain arp a e { type route hook output priority 0; }"],
    ["add table netdev n", "add chain netdev n d { type filter hook ingress priority 0; }"],
    ["add table netdev n", "add chain netdev n f { type filter hook ingress device eth0 priority 0; }",
     "add rule netdev n f fwd to nope"],
    ["add table netdev n", "add chain netdev n f { type filter hook ingress device eth0 priority 0; }",
     "add rule netdev n f dup to eth0 device eth1"],
    ["add table netdev n", "add chain netdev n f { type filter hook ingress device eth0 priority 0; }",
     "add rule netdev n f ct state new counter", "add rule netdev n f tcp dport 1 ct mark set 1",
     "add rule netdev n f meta l4proto tcp ct direction original"],
]


def emulated_errors(commands: list[str]) -> str:
    rs, err = Ruleset(), ""
    for cmd in commands:
        rc, _, e, after = run_nft([cmd], rs, interfaces={"eth0", "eth1", "lo"})
        err += e
        rs = after if rc == 0 else rs
    return err


def test_chain_types_the_kernel_has_for_each_family_and_hook():
    assert emulated_errors(CHAIN_ERRORS[0]) == (
        "Error: Could not process rule: Operation not supported\n" + CHAIN_ERRORS[0][0] + "\n" + " " * 16 + "^" * 55 + "\n")
    assert emulated_errors(CHAIN_ERRORS[3]).startswith("Error: Could not process rule: No such file or directory\n")


@pytest.mark.kernel
@pytest.mark.parametrize("commands", CHAIN_ERRORS, ids=lambda c: c[-1][:40])
def test_chain_errors_are_the_kernels(kernel_ns, commands):
    kernel_ns.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"])
    err = "".join(kernel_ns.run(["nft", cmd], check=False).stderr for cmd in commands)
    assert emulated_errors(commands) == err
