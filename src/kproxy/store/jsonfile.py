"""The readable JSON form of a node: the first node file format, and today's export/import format.

Node files written before the database (format 1) are this JSON; they still load, and the first
command that changes one rewrites it as a database. ``kproxy node export`` writes the same form
with everything a node holds, so it can be read, diffed, shared and imported again.

The non-iptables state is kept as named parts (``node``, ``conntrack``, ``ipsets``, ``ipvs``,
``recent``), each a JSON value; the database stores the same parts as rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kproxy.node import Node, NodeError
from kproxy.store.lock import NodeFileError

FORMAT_VERSION = 1


def node_parts(node: Node) -> dict[str, Any]:
    """The node's state other than iptables, as JSON values by part name."""
    parts: dict[str, Any] = {"node": {"description": node.describe(), "clock": node.clock},
                             "conntrack": node.conntrack.to_json()}
    if node.ipsets is not None:
        parts["ipsets"] = node.ipsets.to_json()
    if node.ipvs is not None:
        parts["ipvs"] = node.ipvs.to_json()
    recent = node.subsystems.get("recent")
    if recent is not None and hasattr(recent, "to_json"):
        parts["recent"] = recent.to_json()
    nfacct = node.subsystems.get("nfacct")
    if nfacct is not None:
        parts["nfacct"] = nfacct.to_json()
    if node.nftables is not None:
        from kproxy.nftables.store import ruleset_to_json

        parts["nftables"] = ruleset_to_json(node.nftables)
    from kproxy.nftables.xtlayout import node_layout

    layout = node_layout(node)
    if layout.tables or layout.variant != "nft" or layout.next_handle > 1:    # (tables gone: their handles stay used)
        parts["iptables-nft"] = layout.to_json()
    return parts


def node_from_parts(parts: dict[str, Any], source: str) -> Node:
    """A node built from its description part, with the other parts loaded into its subsystems."""
    head = parts.get("node") or {}
    where = "node"
    try:
        node = Node.from_description(head["description"], source) if "description" in head else Node.default()
        node.clock = head.get("clock")
        if node.ipsets is not None and parts.get("ipsets") is not None:
            where = "ipsets"
            node.ipsets.from_json(parts["ipsets"])
        where = "conntrack"
        node.conntrack.from_json(parts.get("conntrack") or {})
        if node.ipvs is not None and parts.get("ipvs") is not None:
            where = "ipvs"
            node.ipvs.from_json(parts["ipvs"])
        if parts.get("recent") is not None:
            from kproxy.iptables.ext.recent import RecentTables

            where = "recent"
            node.subsystems["recent"] = RecentTables.from_json(parts["recent"])
        if parts.get("nfacct") is not None:
            from kproxy.netfilter.nfacct import NfacctObjects

            where = "nfacct"
            node.subsystems["nfacct"] = NfacctObjects.from_json(parts["nfacct"])
        if parts.get("nftables") is not None:
            from kproxy.nftables.evaluate import attach
            from kproxy.nftables.store import ruleset_from_json

            where = "nftables"
            node.nftables = ruleset_from_json(parts["nftables"])
            attach(node)
    except NodeError as exc:
        raise NodeFileError(str(exc)) from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise NodeFileError(f"{source}: {where}: damaged data ({type(exc).__name__}: {exc})") from None
    return node


def node_to_json(node: Node) -> dict[str, Any]:
    """Everything the node holds, in the readable form (rules as iptables-save text with counters)."""
    from kproxy.iptables.save import save
    from kproxy.store.chains import rule_state

    parts = node_parts(node)
    data: dict[str, Any] = {"kproxy-node": FORMAT_VERSION, "description": parts["node"]["description"],
                            "clock": node.clock}
    data["iptables"] = {str(fam): save(state, counters=True, header=False) for fam, state in node.iptables.items()
                        if state.tables}
    states = {str(fam): {tname: {c.name: s for c in t.chains.values() if (s := rule_state(c.rules))}
                         for tname, t in st.tables.items()} for fam, st in node.iptables.items() if st.tables}
    states = {fam: {t: cs for t, cs in tables.items() if cs} for fam, tables in states.items()}
    if any(states.values()):
        data["rule-state"] = {fam: tables for fam, tables in states.items() if tables}
    for name in ("conntrack", "ipsets", "ipvs", "recent", "nfacct", "nftables", "iptables-nft"):
        if name in parts:
            data[name] = parts[name]
    return data


def node_from_json(data: Any, source: str = "<node>") -> Node:
    """A node from its readable form; raises NodeFileError naming ``source`` and what is wrong."""
    from kproxy.iptables.restore import RestoreError, restore
    from kproxy.nftables.xtlayout import load_layout
    from kproxy.store.chains import load_rule_state

    if not isinstance(data, dict) or "kproxy-node" not in data:
        raise NodeFileError(f"{source}: not a kproxy node file (no \"kproxy-node\" format field)")
    version = data["kproxy-node"]
    if not isinstance(version, int) or version < 1:
        raise NodeFileError(f"{source}: unknown node file format version {version!r}")
    if version > FORMAT_VERSION:
        raise NodeFileError(f"{source}: node file format version {version} is newer than this kproxy reads "
                            f"({FORMAT_VERSION}); upgrade kproxy")
    parts = {name: data.get(name) for name in ("conntrack", "ipsets", "ipvs", "recent", "nfacct", "nftables",
                                              "iptables-nft")}
    parts["node"] = {"description": data.get("description"), "clock": data.get("clock")}
    node = node_from_parts(parts, source)
    try:
        for fam, text in (data.get("iptables") or {}).items():
            restore(text, node.iptables[int(fam)], counters=True, source=source)
        for fam, tables in (data.get("rule-state") or {}).items():
            for tname, chains in tables.items():
                for cname, state in chains.items():
                    load_rule_state(node.iptables[int(fam)].tables[tname].chains[cname].rules, state)
        load_layout(node, data.get("iptables-nft"))
    except RestoreError as exc:
        raise NodeFileError(f"{source}: iptables: {str(exc).splitlines()[0]}") from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise NodeFileError(f"{source}: iptables: damaged data ({type(exc).__name__}: {exc})") from None
    return node


def read_json_node(path: Path, text: str) -> Node:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NodeFileError(f"{path}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
    return node_from_json(data, str(path))
