"""The verify node's interfaces: named by the ruleset, or described by a node file (no kernel needed)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from kproxy.cli.verify_cmd import parse_probes, probes_from_rules
from kproxy.lab.differential import Probe
from kproxy.lab.kernel import HarnessError
from kproxy.lab.links import input_interface, named_interfaces, topology_for, topology_from_node
from kproxy.yamlfile import load_yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

RULES = """*filter
-A INPUT -i cali+ -p udp -m udp --dport 53 -j DROP
-A FORWARD ! -i eth0 -o cni0 -j ACCEPT
-A FORWARD -i cni0 -d 10.96.0.61/32 -p tcp -m tcp --dport 443 -j REJECT --reject-with tcp-reset
-A INPUT -i lo -j ACCEPT
COMMIT
"""


def test_the_interfaces_a_ruleset_names() -> None:
    assert named_interfaces(RULES) == ["cali0", "eth0", "cni0"]
    assert named_interfaces('add rule ip t c iifname "ens*" oifname != "wg0" accept\n') == ["ens0", "wg0"]
    assert input_interface("-A FORWARD ! -i eth0 -o cni0 -j ACCEPT") == ""
    assert input_interface('iifname "vxlan.calico" accept') == "vxlan.calico"


def test_each_named_interface_becomes_a_link_with_its_own_subnet() -> None:
    topo = topology_for(RULES)
    assert topo.links == (("cali0", "10.0.10.1/24"), ("cni0", "10.0.11.1/24"))
    assert (topo.client_on("cni0"), topo.client_dev_for("cni0")) == ("10.0.11.2", "kpc1")
    names = [i["name"] for i in topo.node_description()["interfaces"]]
    assert names == ["eth0", "eth1", "cali0", "cni0"]


def test_probes_from_rules_arrive_through_the_interface_the_rule_matches() -> None:
    probes = probes_from_rules(RULES, links=("cali0", "cni0"))
    assert probes == [Probe("tcp", "10.96.0.61", 443, via="cni0")]


def test_a_node_file_shapes_the_lab() -> None:
    topo = topology_from_node(load_yaml(EXAMPLES / "node.yaml"), "node.yaml")
    assert (topo.node_in, topo.node_in_addr, topo.client) == ("cni0", "10.244.1.1", "10.244.1.2")
    assert (topo.node_out, topo.node_out_addr, topo.sink, topo.out_prefixlen) == ("eth0", "192.168.1.10",
                                                                                 "192.168.1.1", 24)


def test_a_node_file_with_one_interface_is_refused() -> None:
    with pytest.raises(HarnessError, match="needs two interfaces with IPv4 addresses, found 1"):
        topology_from_node({"interfaces": [{"name": "eth0", "addresses": ["10.0.0.1/24"]}]}, "n.yaml")


def test_probe_files_name_the_interface_and_the_pause() -> None:
    probes = parse_probes("udp 10.0.1.1 53 via cni0\nsleep 0.5\ntcp 10.96.0.1 443 from-node\n", "p")
    assert probes == [Probe("udp", "10.0.1.1", 53, via="cni0"), Probe("tcp", "10.96.0.1", 443, True, 0.5)]
    with pytest.raises(click.UsageError, match="^p:1: expected"):
        parse_probes("udp 10.0.1.1 53 via\n", "p")
