"""Wiring: the subsystems of an emulated node, registered on its hooks at the kernel's priorities."""

from __future__ import annotations

from typing import Any

from kproxy.netfilter.hooks import (
    INPUT,
    OUTPUT,
    POSTROUTING,
    PREROUTING,
    PRI_CONNTRACK,
    PRI_CONNTRACK_CONFIRM,
)

FAMILIES = (4, 6)


def attach(node: Any) -> None:
    """Give ``node`` conntrack, NAT, iptables (both families), ipsets and IPVS, hooked in."""
    from kproxy.iptables.evaluator import IptablesEngine
    from kproxy.iptables.state import IptablesState
    from kproxy.netfilter.conntrack import Conntrack
    from kproxy.netfilter.nat import Nat

    node.conntrack = Conntrack(node)
    node.nat = Nat(node)
    for fam in FAMILIES:
        for hook in (PREROUTING, OUTPUT):
            node.hooks.register(fam, hook, PRI_CONNTRACK, "conntrack:in", node.conntrack.in_hook)
        for hook in (INPUT, POSTROUTING):
            node.hooks.register(fam, hook, PRI_CONNTRACK_CONFIRM, "conntrack:confirm", node.conntrack.confirm_hook)
    node.iptables = {}
    node.subsystems["iptables_engines"] = {}
    for fam in FAMILIES:
        state = IptablesState(fam)
        node.iptables[fam] = state
        engine = IptablesEngine(node, state, fam)
        engine.register()
        node.subsystems["iptables_engines"][fam] = engine
    _attach_optional(node)


def _attach_optional(node: Any) -> None:
    try:
        from kproxy.ipset.registry import IpsetRegistry
    except ImportError:  # pragma: no cover - during bring-up
        node.ipsets = None
    else:
        node.ipsets = IpsetRegistry()
        node.ipsets.rule_refs = lambda name: _set_rule_refs(node, name)
    try:
        from kproxy.ipvs.ipvs import Ipvs
    except ImportError:  # pragma: no cover - during bring-up
        node.ipvs = None
    else:
        node.ipvs = Ipvs()
        node.ipvs.attach(node)


def _set_rule_refs(node: Any, name: str) -> int:
    """How many iptables rules use the set ``name`` (a set match or a SET target)."""
    n = 0
    for st in node.iptables.values():
        for t in st.tables.values():
            for c in t.chains.values():
                for r in c.rules:
                    exts = [*r.matches, r.target] if r.target is not None else r.matches
                    n += sum(1 for e in exts if getattr(e, "set_name", None) == name)
    return n
