"""The seams between the packet path and its front ends: reference counts, not knowledge of rule languages.

Conntrack turns on per family while some committed rule holds a reference (nf_ct_netns_get/put, declared by
each extension), and an ipset is "in use" while rules hold references to it. ``kproxy.netfilter`` itself
imports no front end.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kproxy.ipset.cli import run_ipset
from kproxy.iptables.extension import MATCHES, TARGETS
from kproxy.node import Node
from kproxy.packet import Packet

SRC = Path(__file__).resolve().parents[1] / "src" / "kproxy"


def _ok(node: Node, argv: list[str], family: int = 4) -> None:
    rc, out, err = node.iptables_cmd(argv, family)
    assert rc == 0, err


def _tracked(node: Node, family: int = 4) -> bool:
    """Whether a new flow through the node gets a conntrack entry."""
    before = len(node.conntrack)
    src, dst = ("10.0.0.2", "192.168.1.20") if family == 4 else ("fd00::2", "fd01::20")
    node.receive(Packet.make(src, dst, "udp", 40000 + before, 53), "eth0")
    return len(node.conntrack) > before


@pytest.fixture
def node() -> Node:
    return Node.from_description({
        "interfaces": [{"name": "eth0", "addresses": ["192.168.1.10/24", "fd01::10/64"]}],
        "routes": ["default via 192.168.1.1 dev eth0"],
    })


def test_tracking_follows_the_rules_that_need_it(node: Node) -> None:
    assert node.conntrack.users == {4: 0, 6: 0}
    assert not _tracked(node)
    _ok(node, ["-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"])
    _ok(node, ["-A", "FORWARD", "-m", "state", "--state", "INVALID", "-j", "DROP"])
    assert node.conntrack.users == {4: 2, 6: 0}
    assert _tracked(node)
    _ok(node, ["-D", "FORWARD", "1"])
    assert node.conntrack.users[4] == 1
    _ok(node, ["-F", "FORWARD"])
    assert node.conntrack.users[4] == 0
    assert not _tracked(node)


def test_each_family_counts_its_own_users(node: Node) -> None:
    _ok(node, ["-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE"], family=6)
    assert node.conntrack.users == {4: 0, 6: 1}
    assert not _tracked(node, 4)


def test_notrack_and_a_bare_nat_table_take_no_reference(node: Node) -> None:
    _ok(node, ["-t", "raw", "-A", "PREROUTING", "-j", "CT", "--notrack"])
    _ok(node, ["-t", "raw", "-A", "PREROUTING", "-j", "NOTRACK"])
    _ok(node, ["-t", "nat", "-N", "EMPTY"])
    assert node.conntrack.users[4] == 0
    _ok(node, ["-t", "raw", "-A", "PREROUTING", "-j", "CT", "--zone", "1"])
    assert node.conntrack.users[4] == 1


def test_a_restore_and_a_noflush_restore_keep_the_count_exact(node: Node) -> None:
    node.iptables_restore("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC - [0:0]\n"
                          "-A PREROUTING -j KUBE-SVC\n-A KUBE-SVC -p tcp -j DNAT --to-destination 10.0.0.1:80\n"
                          "-A KUBE-SVC -p udp -j DNAT --to-destination 10.0.0.1:53\nCOMMIT\n")
    assert node.conntrack.users[4] == 2
    node.iptables_restore("*nat\n:KUBE-SVC - [0:0]\n-A KUBE-SVC -p tcp -j DNAT --to-destination 10.0.0.2:80\n"
                          "COMMIT\n", noflush=True)
    assert node.conntrack.users[4] == 1
    node.iptables_restore("*nat\nCOMMIT\n")
    assert node.conntrack.users[4] == 0


def test_a_failed_commit_takes_no_reference(node: Node) -> None:
    rc, _, _ = node.iptables_cmd(["-A", "NOSUCH", "-m", "conntrack", "--ctstate", "NEW"])
    assert rc != 0
    assert node.conntrack.users[4] == 0


def test_putting_more_than_was_taken_is_an_error(node: Node) -> None:
    node.conntrack.netns_get(4)
    node.conntrack.netns_put(4)
    with pytest.raises(ValueError):
        node.conntrack.netns_put(4)


def test_a_set_is_in_use_while_rules_hold_it(node: Node) -> None:
    assert run_ipset(["create", "S", "hash:ip"], node.ipsets, 0.0)[0] == 0
    _ok(node, ["-A", "INPUT", "-m", "set", "--match-set", "S", "src", "-j", "DROP"])
    _ok(node, ["-A", "OUTPUT", "-j", "SET", "--add-set", "S", "dst"])
    assert node.ipsets.references("S") == 2
    rc, _, err = run_ipset(["destroy", "S"], node.ipsets, 0.0)
    assert rc != 0 and "in use" in err
    _ok(node, ["-F", "INPUT"])
    assert node.ipsets.references("S") == 1
    _ok(node, ["-F", "OUTPUT"])
    assert node.ipsets.references("S") == 0
    assert run_ipset(["destroy", "S"], node.ipsets, 0.0)[0] == 0


def test_extensions_declare_what_they_hold() -> None:
    needing = {n for n, c in {**MATCHES, **TARGETS}.items() if c.NEEDS_CONNTRACK}
    assert {"conntrack", "state", "connmark", "CONNMARK", "DNAT", "SNAT", "MASQUERADE", "REDIRECT"} <= needing
    assert not {"tcp", "mark", "comment", "LOG", "MARK", "NOTRACK"} & needing
    assert MATCHES["set"].HOLDS_REFS and TARGETS["SET"].HOLDS_REFS and TARGETS["CT"].HOLDS_REFS


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            names.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module:
            names.add(n.module)
    return names


def test_the_packet_path_imports_no_front_end() -> None:
    front_ends = ("kproxy.iptables", "kproxy.ipset", "kproxy.ipvs", "kproxy.nftables", "kproxy.proxy", "kproxy.cli")
    for path in sorted((SRC / "netfilter").glob("*.py")):
        bad = {m for m in _imports(path) if m.startswith(front_ends)}
        assert not bad, f"{path.name} imports {sorted(bad)}"
