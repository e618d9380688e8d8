"""``fib`` lookups that give a device (``oif``, ``oifname``, ``exists`` / ``missing``), evaluated from
the node's routes as nft_fib4_eval does, and listed (text and JSON) as nft 1.0.6 lists them. Checked
against the kernel: the same ruleset in the kernel lab's node namespace and in the emulator, the same
packets, the same rule counters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kproxy.lab.differential import Probe
from kproxy.lab.kernel import KernelLab
from kproxy.nftables.cli import run_nft
from kproxy.nftables.model import Ruleset
from test_nft_differential import agree

LISTED = """table inet f {
	chain pre {
		type filter hook prerouting priority filter; policy accept;
		fib daddr oif missing counter packets 0 bytes 0
		fib saddr . iif oif missing drop
		fib daddr oif exists counter packets 0 bytes 0
		fib daddr oif "lo" counter packets 0 bytes 0
		fib daddr oifname "lo" counter packets 0 bytes 0
		fib daddr oifname != "veth0" counter packets 0 bytes 0
		fib saddr . iif oif != 0 counter packets 0 bytes 0
		fib daddr . iif type local counter packets 0 bytes 0
		fib daddr oif vmap { "lo" : accept }
		fib daddr oifname "eth*" counter packets 0 bytes 0
	}
}
"""

DECIDING = """table inet t {
	chain pre {
		type filter hook prerouting priority 0; policy accept;
		fib daddr oif "eth1" counter
		fib daddr oif missing counter
		fib daddr oifname "eth0" counter
		fib saddr . iif oif missing counter
		fib saddr . iif oif "eth0" counter
		fib saddr oifname "eth1" counter
		fib daddr oif exists counter
		fib daddr oif != 0 counter
	}
	chain forward {
		type filter hook forward priority 0; policy accept;
		fib daddr . iif oif missing counter
		fib saddr . iif oif exists counter
		fib daddr oifname vmap { "eth1" : accept }
		counter drop
	}
	chain input {
		type filter hook input priority 0; policy accept;
		fib daddr oif missing counter
		fib saddr . iif oifname "eth0" counter
	}
}
"""




@pytest.mark.kernel
def test_fib_device_lookups_decide_like_the_kernel(lab: KernelLab) -> None:
    agree(lab, DECIDING, [Probe("udp", "10.0.2.2", 53), Probe("tcp", "10.0.2.2", 80), Probe("udp", "10.0.1.1", 53),
                          Probe("udp", "10.0.2.1", 53), Probe("udp", "192.0.2.9", 53)])


@pytest.mark.kernel
def lists_like_the_real_nft(kernel_ns, path: Path, script: str) -> str:
    """Load ``script`` into the namespace and the emulator; the listings (text and JSON) must agree.
    Returns the listing."""
    path.write_text(script)
    kernel_ns.run(["nft", "-f", str(path)])
    rc, _, err, rs = run_nft(["-f", str(path)], Ruleset())
    assert rc == 0, err
    listing = run_nft(["list", "ruleset"], rs)[1]
    assert listing == kernel_ns.run(["nft", "list", "ruleset"]).stdout
    real = json.loads(kernel_ns.run(["nft", "-j", "list", "ruleset"]).stdout)["nftables"][1:]
    assert json.loads(run_nft(["-j", "list", "ruleset"], rs)[1])["nftables"][1:] == real
    return listing


def test_fib_device_lookups_list_like_the_real_nft(kernel_ns, tmp_path: Path) -> None:
    assert lists_like_the_real_nft(kernel_ns, tmp_path / "fib.nft", LISTED) == LISTED


HOOKS = """table inet t {
	chain out {
		type filter hook output priority 0; policy accept;
		fib daddr . oif type local counter
		fib daddr type local counter
		fib daddr . iif oif exists counter
	}
	chain post {
		type filter hook postrouting priority 0; policy accept;
		fib daddr oif "lo" counter
	}
}
"""
REFUSED = {
    "hooks": HOOKS,
    "oif-by-oif": HOOKS.replace("fib daddr type local counter", 'fib daddr . oif oifname "lo" counter'),
    "exclusive": HOOKS.replace("fib daddr type local", "fib saddr . daddr type local").replace(
        "fib daddr . iif oif exists", "fib daddr . iif . oif oif exists"),
}


@pytest.mark.kernel
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_fib_lookups_are_refused_where_nft_refuses_them(kernel_ns, tmp_path: Path, name: str) -> None:
    """nft's own checks (mutually exclusive flags), then the kernel's: an oif lookup keyed by the output
    device (EINVAL at the expression), and lookups at hooks that lack the device (EOPNOTSUPP at the rule)."""
    path = tmp_path / f"{name}.nft"
    path.write_text(REFUSED[name])
    real = kernel_ns.run(["nft", "-f", str(path)], check=False)
    rc, _, err, _ = run_nft(["-f", str(path)], Ruleset())
    assert (rc, err) == (real.returncode, real.stderr) and rc == 1


def test_missing_and_exists_are_what_the_route_lookup_found() -> None:
    from kproxy.nftables.evaluate import attach
    from kproxy.node import Node
    from kproxy.packet import Packet

    node = Node.from_description({"name": "n", "interfaces": [{"name": "eth0", "addresses": ["10.0.1.1/24"]},
                                                              {"name": "eth1", "addresses": ["10.0.2.1/24"]}],
                                  "sysctls": {"net.ipv4.ip_forward": "1"}})
    rc, _, err, node.nftables = run_nft(["-f", "-"], Ruleset(), DECIDING)
    assert rc == 0, err
    assert attach(node) == []
    for dst in ("10.0.2.2", "10.0.1.1", "192.0.2.9"):
        node.receive(Packet.make("10.0.1.2", dst, "udp", 40000, 53), "eth0")
    listing = run_nft(["list", "chain", "inet", "t", "pre"], node.nftables)[1]
    counts = [int(line.split("packets ")[1].split()[0]) for line in listing.splitlines() if "packets" in line]
    # to the sink: eth1; to the node's own address: a local route, no device; nowhere: no route
    assert counts == [1, 2, 0, 0, 3, 0, 1, 1]
