"""nftables in the packet path against the kernel: the same ruleset in the kernel lab's node namespace and
in the emulator, the same probes; fates, arrivals at the sink, and the rules' counters must agree."""

from __future__ import annotations

import re

import pytest

from kproxy.lab.differential import EmulatedPeers, Probe, Segments
from kproxy.lab.kernel import NODE, KernelLab
from kproxy.nftables.cli import run_nft
from kproxy.nftables.evaluate import attach
from kproxy.nftables.model import Ruleset

pytestmark = pytest.mark.kernel

CASES = {
    "filter": ("""
table inet fw {
	set web {
		type inet_service
		elements = { 80, 443 }
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related counter accept
		tcp dport 8080 counter drop
		udp dport 53 counter reject
		tcp dport 9999 reject with tcp reset
		tcp dport @web counter accept
		udp dport vmap { 5353 : accept, 8080 : drop }
	}
	chain input {
		type filter hook input priority filter + 5; policy accept;
		tcp dport 443 counter drop
	}
}
""", [Probe("tcp", "10.0.2.2", 80), Probe("tcp", "10.0.2.2", 8080), Probe("udp", "10.0.2.2", 53),
      Probe("tcp", "10.0.2.2", 9999), Probe("udp", "10.0.2.2", 5353), Probe("udp", "10.0.2.2", 8080),
      Probe("tcp", "10.0.1.1", 443), Probe("tcp", "10.0.1.1", 80)]),
    "nat": ("""
table ip nat {
	map ports {
		type inet_service : inet_service
		elements = { 81 : 8080, 82 : 443 }
	}
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 198.51.100.10 tcp dport 80 counter dnat to 10.0.2.2:8080
		ip daddr 198.51.100.11 tcp dport 80 dnat to 10.0.2.2
		ip daddr 198.51.100.12 tcp dport 80 redirect to :8080
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth1" ip daddr 10.0.2.2 tcp dport 8080 counter masquerade
		oifname "eth1" udp dport 53 snat to 10.0.2.1
	}
}
""", [Probe("tcp", "198.51.100.10", 80), Probe("tcp", "198.51.100.11", 80), Probe("tcp", "198.51.100.12", 80),
      Probe("udp", "10.0.2.2", 53), Probe("tcp", "10.0.2.2", 443)]),
}


def counters(listing: str) -> list[str]:
    """Each counted rule with its packet count (byte counts depend on TCP options the emulator does not
    replay byte for byte, so the iptables differential compares packets too)."""
    return [re.sub(r" bytes \d+", "", line) for line in re.findall(r"^\t\t.*counter packets .*$", listing, re.M)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_nft_rules_decide_like_the_kernel(lab, name: str) -> None:
    script, probes = CASES[name]
    assert lab.run(NODE, "nft", "flush", "ruleset")["rc"] == 0
    loaded = lab.run(NODE, "nft", "-f", "-", input=script)
    assert loaded["rc"] == 0, loaded["err"]
    observations = [lab.probe(p.proto, p.dst, p.dport, timeout=0.08) for p in probes]
    kernel_listing = lab.run(NODE, "nft", "list", "ruleset")["out"]
    lab.run(NODE, "nft", "flush", "ruleset")

    peers = EmulatedPeers(lab, KernelLab.node_description())
    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), stdin=script)
    assert rc == 0, err
    peers.node.nftables = rs
    assert attach(peers.node) == []
    for p, obs in zip(probes, observations):
        fate, arrival = peers.probe(p, obs.sport, Segments(obs.segments))
        seen = f"{obs.seen_src}:{obs.seen_sport} -> {obs.seen_dst}:{obs.seen_dport}" if obs.at_sink else ""
        assert fate == obs.fate, (p.text(), obs.fate, fate)
        if seen:
            assert arrival == seen, (p.text(), seen, arrival)
    ours = run_nft(["list", "ruleset"], peers.node.nftables)[1]
    assert counters(ours) == counters(kernel_listing)
