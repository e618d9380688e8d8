"""Node state on disk: one JSON file holds a node's devices, rules, connections, sets and IPVS.

This is what lets ``kproxy --node FILE iptables -A ...`` followed by ``kproxy --node FILE trace ...``
behave like two commands on one host. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from kproxy.node import Node, NodeError

FORMAT_VERSION = 1


def node_to_json(node: Node) -> dict[str, Any]:
    from kproxy.iptables.save import save

    data: dict[str, Any] = {"kproxy-node": FORMAT_VERSION, "description": node.describe(), "clock": node.clock}
    data["iptables"] = {str(fam): save(state, counters=True, header=False) for fam, state in node.iptables.items()
                        if state.tables}
    data["conntrack"] = node.conntrack.to_json()
    if node.ipsets is not None:
        data["ipsets"] = node.ipsets.to_json()
    if node.ipvs is not None:
        data["ipvs"] = node.ipvs.to_json()
    if node.nftables is not None:
        from kproxy.nftables.store import ruleset_to_json

        data["nftables"] = ruleset_to_json(node.nftables)
    recent = node.subsystems.get("recent")
    if recent and hasattr(recent, "to_json"):
        data["recent"] = recent.to_json()
    return data


def node_from_json(data: dict[str, Any], source: str = "<node>") -> Node:
    from kproxy.iptables.restore import restore

    if not isinstance(data, dict) or "kproxy-node" not in data:
        raise NodeError(f"{source}: not a kproxy node state file")
    node = Node.from_description(data["description"], source)
    node.clock = data.get("clock")
    if node.ipsets is not None and data.get("ipsets") is not None:
        node.ipsets.from_json(data["ipsets"])
    for fam, text in (data.get("iptables") or {}).items():
        restore(text, node.iptables[int(fam)], counters=True, source=source)
    node.conntrack.from_json(data.get("conntrack") or {})
    if node.ipvs is not None and data.get("ipvs") is not None:
        node.ipvs.from_json(data["ipvs"])
    if data.get("nftables") is not None:
        from kproxy.nftables.evaluate import attach
        from kproxy.nftables.store import ruleset_from_json

        node.nftables = ruleset_from_json(data["nftables"])
        attach(node)
    if data.get("recent") is not None:
        from kproxy.iptables.ext.recent import RecentTables  # type: ignore[attr-defined]

        node.subsystems["recent"] = RecentTables.from_json(data["recent"])
    return node


def load_node(path: str | os.PathLike[str]) -> Node:
    """The node saved at ``path``, or a fresh default node when the file does not exist yet."""
    p = Path(path)
    if not p.exists():
        return Node.default()
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise NodeError(f"{p}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
    return node_from_json(data, str(p))


def save_node(node: Node, path: str | os.PathLike[str]) -> None:
    p = Path(path)
    text = json.dumps(node_to_json(node), indent=1)
    fd, tmp = tempfile.mkstemp(prefix=".kproxy-node-", dir=str(p.parent.resolve()))
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
