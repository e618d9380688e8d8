"""The subsystems of an emulated node, wired onto its hooks at the kernel's priorities.

This is what a network namespace's pernet initialisation is to the kernel: the packet path
(``kproxy.netfilter``) knows hooks, conntrack and NAT only; the front ends (iptables, ipset, IPVS,
later nftables) are attached here, above it, and take conntrack and set references themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node

FAMILIES = (4, 6)


def attach(node: Node) -> None:
    """Give ``node`` conntrack and NAT, then its front ends: ipsets, iptables (both families), IPVS."""
    from kproxy.ipset.registry import IpsetRegistry
    from kproxy.iptables.evaluator import IptablesEngine
    from kproxy.iptables.state import IptablesState
    from kproxy.ipvs.ipvs import Ipvs
    from kproxy.netfilter.conntrack import Conntrack
    from kproxy.netfilter.nat import Nat

    node.conntrack = Conntrack(node)
    node.conntrack.register(FAMILIES)
    node.nat = Nat(node)
    node.ipsets = IpsetRegistry()          # before the rules that take references to sets
    node.iptables = {}
    node.subsystems["iptables_engines"] = {}
    for fam in FAMILIES:
        state = IptablesState(fam)
        node.iptables[fam] = state
        engine = IptablesEngine(node, state, fam)
        engine.register()
        node.subsystems["iptables_engines"][fam] = engine
    node.ipvs = Ipvs()
    node.ipvs.attach(node)
    from kproxy.nftables.xtlayout import node_layout

    node_layout(node)            # which iptables chains exist in nf_tables, as iptables-nft creates them
