"""nft flowtables: parsing, listing and errors as nft 1.0.6 has them, and the offload fast path.

This kernel is built without flowtables (CONFIG_NF_FLOW_TABLE unset: every flowtable is ENOENT), so
the expected listings are nft 1.0.6's print format (rule.c flowtable_print_declaration; upstream's
tests/shell dumps) and the packet path follows net/netfilter/nf_flow_table_*.c.
"""

from __future__ import annotations

import json

import pytest

from kproxy.netfilter.ctformat import format_conn
from kproxy.netfilter.trace import render_text
from kproxy.nftables.cli import run_nft
from kproxy.nftables.expr import Opts
from kproxy.nftables.model import Ruleset
from kproxy.node import Node
from kproxy.packet import ACK, FIN, SYN, Packet
from test_nft_eval import node_with

SCRIPT = """table inet f {
	flowtable ft {
		hook ingress priority filter + 1; devices = { lan0, eth0 }; counter
	}
	chain fw {
		type filter hook forward priority filter; policy accept;
		ct state established flow offload @ft
		counter
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" masquerade
	}
}
"""

LISTED = """table inet f { # handle 1
	flowtable ft { # handle 3
		hook ingress priority filter + 1
		devices = { eth0, lan0 }
		counter
	}

	chain fw { # handle 1
		type filter hook forward priority filter; policy accept;
		ct state established flow add @ft # handle 4
		counter packets 0 bytes 0 # handle 5
	}

	chain post { # handle 2
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" masquerade # handle 6
	}
}
"""


def nft(rs: Ruleset, *argv: str, stdin: str | None = None) -> tuple[int, str, str, Ruleset]:
    return run_nft(list(argv), rs, stdin=stdin)


def loaded(script: str = SCRIPT) -> Ruleset:
    rc, _, err, rs = nft(Ruleset(), "-f", "-", stdin=script)
    assert rc == 0, err
    return rs


def test_listing_with_handles_as_nft_prints_it():
    rs = loaded()
    assert nft(rs, "-a", "list", "ruleset")[1] == LISTED
    assert nft(rs, "list", "flowtables")[1] == ("table inet f {\n\tflowtable ft {\n\t\thook ingress priority filter + 1\n"
                                                "\t\tdevices = { eth0, lan0 }\n\t\tcounter\n\t}\n}\n")
    assert nft(rs, "list", "flowtable", "inet", "f", "ft")[1] == nft(rs, "list", "flowtables")[1]


def test_listing_parses_back_to_itself():
    rs = loaded()
    text = nft(rs, "list", "ruleset")[1]
    assert nft(loaded(text), "list", "ruleset")[1] == text


def test_offload_flag_and_numeric_priority():
    rs = loaded("table ip t {\n\tflowtable x {\n\t\thook ingress priority -5\n\t\tdevices = { eth0 }\n"
                "\t\tflags offload\n\t}\n}\n")
    assert nft(rs, "list", "ruleset")[1] == ("table ip t {\n\tflowtable x {\n\t\thook ingress priority filter - 5\n"
                                             "\t\tdevices = { eth0 }\n\t\tflags offload\n\t}\n}\n")


def test_json_listing():
    rs = loaded()
    items = json.loads(nft(rs, "-j", "list", "flowtables")[1])["nftables"][1:]
    assert items == [{"flowtable": {"family": "inet", "name": "ft", "table": "f", "handle": 3, "hook": "ingress",
                                    "prio": 1, "dev": ["eth0", "lan0"]}}]
    rules = [i["rule"] for i in json.loads(nft(rs, "-j", "list", "ruleset")[1])["nftables"] if "rule" in i]
    assert rules[0]["expr"][-1] == {"flow": {"op": "add", "flowtable": "@ft"}}


def test_errors():
    rs = loaded()
    rc, _, err, _ = nft(rs, "delete", "flowtable", "inet", "f", "ft")
    assert rc == 1 and err == ("Error: Could not process rule: Device or resource busy\n"
                               "delete flowtable inet f ft\n" + " " * 24 + "^^\n")
    rc, _, err, _ = nft(rs, "add", "flowtable", "inet", "f", "g", "{ devices = { eth0 }; }")
    assert rc == 1 and "Error: Could not process rule: No such file or directory" in err
    rc, _, err, _ = nft(rs, "add", "flowtable", "inet", "f", "g", "{ hook egress priority 0; devices = { eth0 }; }")
    assert rc == 1 and "Error: Could not process rule: Operation not supported" in err
    rc, _, err, _ = nft(rs, "add", "flowtable", "inet", "f", "g", "{ hook ingress priority foo; }")
    assert rc == 1 and err.startswith("Error: invalid priority expression value.\n")
    rc, _, err, _ = nft(rs, "create", "flowtable", "inet", "f", "ft", "{ hook ingress priority 1; }")
    assert rc == 1 and "File exists" in err
    rc, _, err, after = nft(rs, "add", "rule", "inet", "f", "fw", "flow", "add", "@nope")
    assert rc == 1 and err == ("Error: Could not process rule: No such file or directory\n"
                               "add rule inet f fw flow add @nope\n" + " " * 19 + "^" * 14 + "\n")
    assert after.find("inet", "f").next_handle == rs.find("inet", "f").next_handle + 1   # the rule's handle is spent
    rc, _, err, _ = nft(rs, "add", "rule", "inet", "f", "post", "flow", "add", "@ft")
    assert rc == 1 and "Operation not supported" in err      # the forward hook only
    rc, _, err, _ = nft(rs, "list", "flowtable", "inet", "f", "nope")
    assert rc == 1 and err.startswith("Error: No such file or directory\n")


def test_delete_once_unused_and_by_handle():
    rs = loaded()
    rc, _, err, rs = nft(rs, "flush", "chain", "inet", "f", "fw")
    rc, _, err, rs = nft(rs, "delete", "flowtable", "inet", "f", "handle", "3")
    assert rc == 0, err
    assert "flowtable" not in nft(rs, "list", "ruleset")[1]


def test_adding_devices_to_an_existing_flowtable():
    rs = loaded()
    rc, _, err, rs = nft(rs, "add", "flowtable", "inet", "f", "ft", "{ devices = { lan1 }; }")
    assert rc == 0, err
    assert "devices = { eth0, lan0, lan1 }" in nft(rs, "list", "flowtables")[1]


def gateway(script: str = SCRIPT) -> Node:
    return node_with(script)


def tcp(src: str, dst: str, sport: int, dport: int, flags: int) -> Packet:
    return Packet.make(src, dst, "tcp", sport, dport, tcp_flags=flags)


def handshake(node: Node) -> None:
    assert node.receive(tcp("10.0.0.5", "198.51.100.7", 40000, 443, SYN), "lan0").fate == "forwarded"
    assert node.receive(tcp("198.51.100.7", "192.168.1.10", 443, 40000, SYN | ACK), "eth0").fate == "forwarded"
    assert node.receive(tcp("10.0.0.5", "198.51.100.7", 40000, 443, ACK), "lan0").fate == "forwarded"


def fw_counter(node: Node) -> int:
    return node.nftables.find("inet", "f").chains["fw"].rules[1].stmts[0].packets


def test_established_flow_is_offloaded_and_skips_the_ip_hooks():
    node = gateway()
    handshake(node)
    seen = fw_counter(node)
    assert seen == 3
    (conn,) = node.conntrack.entries()
    assert "[OFFLOAD]" in format_conn(conn, node.now()) and "[ASSURED]" not in format_conn(conn, node.now())
    # nf_ct_offload_timeout raises a timeout under half a day to a day; ESTABLISHED's 5 days stay
    assert conn.timeout_at(node.now()) == 432000
    out = node.receive(tcp("10.0.0.5", "198.51.100.7", 40000, 443, ACK), "lan0", trace=True)
    assert out.fate == "forwarded" and out.out_dev == "eth0"
    assert (out.packet.src_str, out.packet.sport) == ("192.168.1.10", 40000)   # masqueraded still
    assert out.packet.ttl == 63
    assert fw_counter(node) == seen                          # FORWARD never saw it
    text = render_text(out.trace)
    assert "flowtable ft: offloaded" in text and "FORWARD" not in text and "POSTROUTING" not in text
    back = node.receive(tcp("198.51.100.7", "192.168.1.10", 443, 40000, ACK), "eth0")
    assert back.fate == "forwarded" and back.packet.dst_str == "10.0.0.5" and back.out_dev == "lan0"
    assert fw_counter(node) == seen
    assert conn.acct[:2] == [3, 2]       # the flowtable counter adds each offloaded packet to conntrack


def test_fin_ends_the_offload():
    node = gateway()
    handshake(node)
    (conn,) = node.conntrack.entries()
    node.receive(tcp("10.0.0.5", "198.51.100.7", 40000, 443, FIN | ACK), "lan0")
    assert fw_counter(node) == 4                              # the FIN took the normal path
    assert "[OFFLOAD]" not in format_conn(conn, node.now())


def test_packets_on_other_devices_take_the_normal_path():
    node = gateway(SCRIPT.replace("devices = { lan0, eth0 }", "devices = { eth0 }"))
    handshake(node)
    node.receive(tcp("10.0.0.5", "198.51.100.7", 40000, 443, ACK), "lan0")
    assert fw_counter(node) == 4


def test_node_file_keeps_flowtable_handles():
    from kproxy.nftables.store import ruleset_from_json, ruleset_to_json

    rs = loaded("table inet f {\n\tchain c {\n\t}\n\tflowtable ft {\n\t\thook ingress priority 0\n"
                "\t\tdevices = { eth0 }\n\t}\n}\n")
    before = nft(rs, "-a", "list", "ruleset")[1]
    assert "flowtable ft { # handle 2" in before
    assert nft(ruleset_from_json(ruleset_to_json(rs)), "-a", "list", "ruleset")[1] == before


def test_udp_flow_offloads_once_confirmed():
    node = gateway(SCRIPT.replace("ct state established flow offload @ft", "meta l4proto udp flow add @ft"))
    first = Packet.make("10.0.0.5", "198.51.100.7", "udp", 5000, 53)
    assert node.receive(first, "lan0").fate == "forwarded"          # not yet confirmed when FORWARD ran
    (conn,) = node.conntrack.entries()
    assert "[OFFLOAD]" not in format_conn(conn, node.now())
    node.receive(Packet.make("198.51.100.7", "192.168.1.10", "udp", 53, 5000), "eth0")
    assert "[OFFLOAD]" in format_conn(conn, node.now())
    assert conn.timeout_at(node.now()) == 86400                      # UDP's 30 s raised to a day
    seen = fw_counter(node)
    node.receive(Packet.make("10.0.0.5", "198.51.100.7", "udp", 5000, 53), "lan0")
    assert fw_counter(node) == seen
    node.clock += 31                                                  # no packet for the flow timeout
    node.receive(Packet.make("10.0.0.5", "198.51.100.7", "udp", 5000, 53), "lan0")
    assert fw_counter(node) == seen + 1           # the normal path again, whose rule offloads it anew
    assert node.nftables.find("inet", "f").chains["fw"].rules[0].stmts[-1].text(Opts()) == "flow add @ft"


@pytest.mark.kernel
@pytest.mark.parametrize("argv", [("-a",), ("-j",)])
def test_listing_is_the_kernels_where_it_has_flowtables(kernel_ns, argv):
    """Byte for byte with the real nft where the kernel has flowtables; this one (CONFIG_NF_FLOW_TABLE
    unset) refuses them all with ENOENT, which is checked instead."""
    kernel_ns.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "lan0"])
    loaded_here = kernel_ns.run(["nft", "-f", "-"], input=SCRIPT, check=False)
    if loaded_here.returncode != 0:
        assert "Could not process rule: No such file or directory" in loaded_here.stderr
        pytest.skip("this kernel has no flowtables (CONFIG_NF_FLOW_TABLE unset)")
    assert nft(loaded(), *argv, "list", "ruleset")[1] == kernel_ns.run(["nft", *argv, "list", "ruleset"]).stdout


def test_json_listing_reads_back():
    rs = loaded()
    doc = nft(rs, "-j", "list", "ruleset")[1]
    rc, _, err, again = nft(Ruleset(), "-j", "-f", "-", stdin=doc)
    assert rc == 0, err
    # nft -j leaves the flowtable's counter flag out, so the copy has none
    assert nft(again, "list", "ruleset")[1] == nft(rs, "list", "ruleset")[1].replace("\t\tcounter\n", "")
    bad = json.dumps({"nftables": [{"add": {"rule": {"family": "inet", "table": "f", "chain": "fw", "expr": [
        {"flow": {"op": "del", "flowtable": "@ft"}}]}}}]})
    rc, _, err, _ = nft(rs, "-j", "-f", "-", stdin=bad)
    assert rc == 1 and "Unknown flow offload statement op 'del'." in err


def test_a_device_serves_one_flowtable_of_a_table():
    rc, _, err, _ = nft(loaded(), "add", "flowtable", "inet", "f", "g", "{ hook ingress priority 0; devices = { lan0 }; }")
    assert rc == 1 and "Could not process rule: Device or resource busy" in err


def test_echo_prints_the_flowtable_as_the_monitor_does():
    rs = loaded("table inet f {\n}\n")
    rc, out, err, _ = nft(rs, "-a", "--echo", "add", "flowtable", "inet", "f", "ft",
                          "{ hook ingress priority 0; devices = { eth0 }; counter; }")
    assert rc == 0, err
    assert out.splitlines()[0] == ("add flowtable inet f ft { # handle 1 hook ingress priority filter; "
                                   "devices = { eth0 }; counter; } ")
