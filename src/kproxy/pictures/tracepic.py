"""One packet's path as a picture: a box per hook it passed (in order), inside it the tables, chains and
rules it met with their verdicts, the NAT rewrites and conntrack decisions, then its fate.
"""

from __future__ import annotations

from typing import Any

import graphviz

from kproxy.pictures.render import label

WRAP = 70
FATE_COLOURS = {"delivered": "#c9f0c3", "forwarded": "#c9f0c3"}
KIND_STYLE = {"nat": {"shape": "note", "fillcolor": "#ffe0b3"}, "conntrack": {"shape": "note", "fillcolor": "#f0f0f0"},
              "ipvs": {"shape": "note", "fillcolor": "#ffe0b3"}, "route": {"shape": "cds", "fillcolor": "#e8e0f8"},
              "packet": {"shape": "oval", "fillcolor": "#ffffff"}}


def _event_label(e: dict[str, Any]) -> str:
    k = e.get("kind")
    if k == "rule":
        verdict = e.get("verdict", "")
        tail = f"\n=> {verdict}" if verdict and verdict != "continue" else ""
        return f"{e.get('table')} {e.get('chain')} #{e.get('rule')}\n{e.get('text', '')}{tail}"
    if k == "policy":
        return f"{e.get('table')} {e.get('chain')} policy {e.get('verdict')}"
    if k == "fate":
        return f"{e.get('verdict', '').upper()}: {e.get('text', '')}"
    return f"{k}: {e.get('text', '')}"


def _style(e: dict[str, Any]) -> dict[str, str]:
    k = e.get("kind", "")
    if k == "fate":
        return {"shape": "doubleoctagon", "fillcolor": FATE_COLOURS.get(e.get("verdict", ""), "#f7c6c6")}
    if k in ("rule", "policy") and str(e.get("verdict", "")).split(" ")[0] in ("DROP", "REJECT"):
        return {"fillcolor": "#f7c6c6", "penwidth": "2"}
    return KIND_STYLE.get(k, {})


def _segments(events: list[dict[str, Any]]) -> list[tuple[dict[str, Any] | None, list[tuple[int, dict[str, Any]]]]]:
    """The events split by hook: (the hook event or None for steps between hooks, its steps)."""
    out: list[tuple[dict[str, Any] | None, list[tuple[int, dict[str, Any]]]]] = []
    for i, e in enumerate(events):
        k = e.get("kind")
        if k in ("chain", "return"):
            continue                      # implied by the rules and policies around them
        if k == "hook":
            out.append((e, []))
        elif k in ("packet", "route", "fate") or not out or out[-1][0] is None:
            out.append((None, [(i, e)]))
        else:
            out[-1][1].append((i, e))
    return out


def add_trace(g: graphviz.Digraph, events: list[dict[str, Any]], prefix: str = "e") -> None:
    """Draw one packet's events into ``g``: hooks as clusters, steps as nodes joined in order."""
    order: list[str] = []
    for n, (hook, steps) in enumerate(_segments(events)):
        if hook is None:
            for i, e in steps:
                g.node(f"{prefix}{i}", label(_event_label(e), WRAP), **_style(e))
                order.append(f"{prefix}{i}")
            continue
        detail = ", ".join(f"{d} {v}" for d, v in (hook.get("detail") or {}).items() if v)
        with g.subgraph(name=f"cluster_{prefix}_{n}") as c:
            c.attr(label=label(f"{hook.get('hook')}" + (f" ({detail})" if detail else "") + f"\n{hook.get('text', '')}"),
                   style="rounded", color="#7a8fb8", fontname="Helvetica", fontsize="10")
            if not steps:
                c.node(f"{prefix}h{n}", "(nothing registered)", shape="plaintext", style="")
                order.append(f"{prefix}h{n}")
            for i, e in steps:
                c.node(f"{prefix}{i}", label(_event_label(e), WRAP), **_style(e))
                order.append(f"{prefix}{i}")
    for a, b in zip(order, order[1:]):
        g.edge(a, b)


def trace_graph(traces: list[list[dict[str, Any]]], title: str = "packet path") -> graphviz.Digraph:
    """One picture for one or more packets (each packet its own column of steps)."""
    g = graphviz.Digraph("trace", graph_attr={"rankdir": "TB", "fontname": "Helvetica", "label": label(title),
                                               "labelloc": "t", "newrank": "true"},
                         node_attr={"shape": "box", "style": "rounded,filled", "fillcolor": "#eef3fb",
                                    "fontname": "Helvetica", "fontsize": "9"},
                         edge_attr={"arrowsize": "0.6"})
    for n, events in enumerate(traces):
        if len(traces) == 1:
            add_trace(g, events)
        else:
            with g.subgraph(name=f"cluster_packet{n}") as sub:
                sub.attr(label=f"packet {n + 1}", style="dashed")
                add_trace(sub, events, prefix=f"p{n}e")
    return g
