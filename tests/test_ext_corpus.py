"""Realistic dumps (home router, Docker host, VPN gateways, company firewall) using the production
extensions: each is what iptables-save / ip6tables-save 1.8.9 prints, loads, and saves back byte for
byte, here and in the kernel (kp- namespace)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.extcompare import restore_mismatch, strip_header

from kproxy.iptables.restore import restore
from kproxy.iptables.save import save
from kproxy.iptables.state import IptablesState
from kproxy.node import Node
from kproxy.packet import SYN, Packet

CORPUS = sorted((Path(__file__).parent / "data" / "corpus").glob("*.rules"))


def family_of(path: Path) -> int:
    return 6 if path.stem.endswith("6") else 4


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_each_dump_saves_back_byte_for_byte(path):
    text = path.read_text()
    state = IptablesState(family_of(path))
    restore(text, state)
    assert save(state, header=False) == text


@pytest.mark.kernel
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_each_dump_is_what_the_real_tool_saves(kernel_ns, path):
    family = family_of(path)
    prog = "iptables" if family == 4 else "ip6tables"
    kernel_ns.run(["ipset", "create", "blocked", "hash:net"], check=False)
    text = path.read_text()
    assert restore_mismatch(kernel_ns, family, text) is None
    assert strip_header(kernel_ns.run([f"{prog}-save"]).stdout) == text


def test_the_vpn_gateway_clamps_mss_and_marks_dscp_in_the_packet_path():
    node = Node.from_description({
        "name": "vpn",
        "interfaces": [{"name": "eth0", "addresses": ["198.51.100.2/24"]},
                       {"name": "tun0", "addresses": ["10.8.0.1/24"], "mtu": 1400},
                       {"name": "eth1", "addresses": ["10.30.0.1/24"]}],
        "routes": ["default via 198.51.100.1 dev eth0"],
    })
    node.iptables_restore((Path(__file__).parent / "data" / "corpus" / "vpn-gateway.rules").read_text())
    out = node.receive(Packet.make("10.30.0.5", "10.8.0.7", "tcp", 40000, 443, tcp_flags=SYN, tcp_mss=1460), "eth1")
    assert out.fate == "dropped"        # FORWARD's policy: eth1 -> tun0 is not allowed
    ok = node.receive(Packet.make("10.8.0.7", "203.0.113.9", "tcp", 40000, 443, tcp_flags=SYN, tcp_mss=1460), "tun0")
    assert ok.fate == "forwarded" and ok.packet.ttl == 64
    assert ok.packet.src_str == "198.51.100.2"          # masqueraded (policy none: no IPsec here)


def test_a_corpus_dump_survives_the_node_file(tmp_path):
    """Loaded with ``kproxy iptables-restore`` into a node file, saved back by ``kproxy iptables-save``."""
    from click.testing import CliRunner

    import kproxy.cli.commands  # noqa: F401
    from kproxy.cli.main import cli

    node = str(tmp_path / "n.json")
    text = (Path(__file__).parent / "data" / "corpus" / "vpn-gateway.rules").read_text()
    assert CliRunner().invoke(cli, ["--node", node, "iptables-restore"], input=text).exit_code == 0
    out = CliRunner().invoke(cli, ["--node", node, "iptables-save"]).output
    assert strip_header(out) == text
