"""The chain hierarchy of one iptables table or nft table: which chain jumps (solid) or goes (dashed)
to which, by which rules, with rule counts and counters; nft verdict maps fan out through a map node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import graphviz

from kproxy.iptables.model import STANDARD_VERDICTS, Table
from kproxy.pictures.render import PictureError, label


def _graph(name: str) -> graphviz.Digraph:
    g = graphviz.Digraph(name, graph_attr={"rankdir": "LR", "fontname": "Helvetica", "label": label(name),
                                           "labelloc": "t"},
                         node_attr={"shape": "box", "style": "rounded,filled", "fillcolor": "#eef3fb",
                                    "fontname": "Helvetica", "fontsize": "10"},
                         edge_attr={"fontname": "Helvetica", "fontsize": "9"})
    return g


def node_id(name: str) -> str:
    """A node name the binding will not split at ``:`` (its node:port syntax): IPv6 endpoint chains have colons."""
    return name.replace(":", "%3A")


def _chain_node(g: graphviz.Digraph, name: str, rules: int, base: str) -> None:
    """A chain: its name and rule count; a base (built-in) chain stands out with its hook or policy."""
    text = f"{name}\n{rules} rule{'s' if rules != 1 else ''}" + (f"\n{base}" if base else "")
    attrs = {"fillcolor": "#fde9c8", "penwidth": "2"} if base else {}
    g.node(node_id(name), label(text), **attrs)


def _reachable(edges: dict[str, list[str]], roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        c = todo.pop()
        if c not in seen:
            seen.add(c)
            todo.extend(edges.get(c, []))
    return seen


def _limit(keep: set[str], most: int | None, root: str | None) -> None:
    if most is not None and len(keep) > most:
        many = f"more than {most} chains reachable from {root}" if root else f"{len(keep)} chains"
        raise PictureError(f"{many} are too many to draw (at most {most}): pick a chain further down "
                           "with --chain (e.g. a KUBE-SVC-... chain), or take --format dot")


def iptables_graph(table: Table, family: int = 4, root: str | None = None, most: int | None = None) -> graphviz.Digraph:
    """One iptables table; ``root`` keeps only the chains reachable from that chain; PictureError beyond
    ``most`` chains."""
    jumps: dict[tuple[str, str, bool], list[tuple[int, int]]] = {}
    if root is None:
        _limit(set(table.chains), most, root)
    keep: set[str] = set()
    todo = [root] if root else list(table.chains)
    while todo:               # from the root only: a chain's rules are read only when it is drawn
        name = todo.pop()
        if name in keep or name not in table.chains:
            continue
        keep.add(name)
        _limit(keep, most, root)
        for n, rule in enumerate(table.chains[name].rules, 1):
            if rule.jump and rule.jump not in STANDARD_VERDICTS:
                jumps.setdefault((name, rule.jump, rule.goto), []).append((n, rule.packets))
                todo.append(rule.jump)
    g = _graph(f"{'ip6tables' if family == 6 else 'iptables'} -t {table.name}" + (f" from {root}" if root else ""))
    for chain in table.chains.values():
        if chain.name in keep:
            base = f"policy {chain.policy} [{chain.packets}:{chain.bytes}]" if chain.builtin else ""
            _chain_node(g, chain.name, len(chain.rules), base)
    for (src, dst, goto), uses in jumps.items():
        if src not in keep:
            continue
        text = ",".join(f"#{n}" for n, _ in uses[:6]) + ("..." if len(uses) > 6 else "")
        pkts = sum(p for _, p in uses)
        if pkts:
            text += f" ({pkts} pkts)"
        g.edge(node_id(src), node_id(dst), label(text), style="dashed" if goto else "solid",
               penwidth="2" if pkts else "1")
    return g


def _walk(obj: Any) -> Iterator[Any]:
    """Every expression and statement inside an nft rule (depth first)."""
    yield obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _walk(getattr(obj, f.name))
    elif isinstance(obj, list | tuple):
        for item in obj:
            yield from _walk(item)


def _rule_targets(rule: Any) -> Iterator[tuple[str, str, str]]:
    """(kind, target, how) of a rule: jump/goto verdicts, and vmaps through a named map (kind "map")."""
    from kproxy.nftables.expr import SetRef, Verdict
    from kproxy.nftables.stmt import VerdictMap

    for node in _walk(rule.stmts):
        if isinstance(node, VerdictMap) and isinstance(node.data, SetRef):
            yield "map", node.data.name, "vmap"
        elif isinstance(node, Verdict) and node.kind in ("jump", "goto") and node.target:
            yield node.kind, node.target, ""


def _nft_counted(chain: Any) -> str:
    """The packets its rules' counters saw ("" when it has no counters)."""
    from kproxy.nftables.stmt import Counter

    counters = [st for rule in chain.rules for st in rule.stmts if isinstance(st, Counter) and st.name is None]
    return f"counters: {sum(c.packets for c in counters)} pkts" if counters else ""


def nft_graph(table: Any, root: str | None = None, most: int | None = None) -> graphviz.Digraph:
    """One nft table (``kproxy.nftables.model.Table``): chains, jumps/gotos and verdict maps."""
    from kproxy.nftables.expr import Opts, Verdict

    opts = Opts()
    edges: list[tuple[str, str, str, str]] = []
    succ: dict[str, list[str]] = {}
    maps: dict[str, list[tuple[str, str, str]]] = {}
    for chain in table.chains.values():
        for rule in chain.rules:
            for kind, target, _ in _rule_targets(rule):
                node = f"@{target}" if kind == "map" else target
                edges.append((chain.name, node, f"handle {rule.handle}", kind))
                succ.setdefault(chain.name, []).append(node)
    for s in table.sets.values():
        if not s.is_map:
            continue
        for e in s.elems:
            if isinstance(e.data, Verdict) and e.data.target:
                maps.setdefault(s.name, []).append((e.key.text(opts), e.data.target, e.data.kind))
                succ.setdefault(f"@{s.name}", []).append(e.data.target)
    keep = _reachable(succ, [root]) if root else set(table.chains) | {f"@{m}" for m in maps}
    _limit(keep, most, root)
    g = _graph(f"nft table {table.family} {table.name}" + (f" from {root}" if root else ""))
    for chain in table.chains.values():
        if chain.name in keep:
            base = f"type {chain.type} hook {chain.hook} priority {chain.prio}\npolicy {chain.policy}" if chain.base else ""
            pkts = _nft_counted(chain)
            _chain_node(g, chain.name, len(chain.rules), "\n".join(x for x in (base, pkts) if x))
    for name, elems in maps.items():
        if f"@{name}" in keep:
            g.node(f"@{name}", label(f"map @{name}\n{len(elems)} elements"), shape="cylinder", fillcolor="#e4f5e1")
            for key, target, kind in elems:
                g.edge(f"@{name}", node_id(target), label(key), style="dashed" if kind == "goto" else "solid")
    for src, dst, text, kind in edges:
        if src in keep:
            g.edge(node_id(src), node_id(dst), label(text), style="dashed" if kind == "goto" else "solid")
    return g
