"""``kproxy doctor --html``: one self-contained page (inline CSS and SVG, no scripts or external assets)
with the findings, each path's trace as text and as a picture, and the Service's chains."""

from __future__ import annotations

import re
from html import escape
from typing import Any

from kproxy.doctor.findings import Finding, PathResult, Report
from kproxy.node import Node
from kproxy.pictures.render import PictureError, inline_svg, render

STYLE = """
body{font-family:Helvetica,Arial,sans-serif;margin:2em;max-width:90em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}
.badge{padding:.2em .6em;border-radius:.3em;color:#fff;font-weight:bold}
.healthy{background:#2e7d32} .unhealthy{background:#c62828}
.finding{border-left:.4em solid #999;padding:.3em .8em;margin:.6em 0;background:#fafafa}
.finding.error{border-color:#c62828} .finding.warning{border-color:#ef6c00}
.finding.ok{border-color:#2e7d32} .finding.info{border-color:#1565c0}
.sev{font-weight:bold;text-transform:uppercase;font-size:.8em;margin-right:.5em}
.where{color:#555;font-size:.85em} pre{white-space:pre-wrap;font-size:.8em;background:#f0f0f0;padding:.4em;margin:.2em 0}
.fix{background:#fff8e1;padding:.3em .5em} .picture{overflow:auto;border:1px solid #ddd;margin:.5em 0}
.path.ok h3{color:#2e7d32} .path.stopped h3{color:#c62828}
"""


def _svg(graph: Any, prefix: str) -> str:
    """The picture inline, its element ids made unique on the page; the reason when it cannot be drawn."""
    try:
        svg = inline_svg(render(graph, "svg"))
    except PictureError as exc:
        return f"<p class='where'>(no picture: {escape(str(exc))})</p>"
    svg = re.sub(r'id="([^"]+)"', lambda m: f'id="{prefix}_{m.group(1)}"', svg)
    svg = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}_{m.group(1)}"', svg)
    return f"<div class='picture'>{svg}</div>"


def _finding(f: Finding) -> str:
    out = [f"<section class='finding {f.severity}' data-check='{escape(f.check)}'>",
           f"<div><span class='sev'>{escape(f.severity)}</span><b>{escape(f.check)}</b>: {escape(f.title)}</div>"]
    for e in f.evidence:
        where = f"<div class='where'>{escape(e.where)}</div>" if e.where else ""
        out.append(f"{where}<pre class='evidence {escape(e.kind)}'>{escape(e.text)}</pre>")
    if f.fix:
        out.append(f"<div class='fix'><b>fix:</b> {escape(f.fix)}</div>")
    out.append("</section>")
    return "\n".join(out)


def _path(n: int, p: PathResult) -> str:
    from kproxy.pictures.tracepic import trace_graph

    end = f"reached {p.reached}" if p.ok else f"stopped at {p.stopped_at}"
    return "\n".join([
        f"<section class='path {'ok' if p.ok else 'stopped'}'>",
        f"<h3>{escape(p.name)}: {escape(end)}</h3>",
        f"<div class='where'>kproxy trace {escape(p.spec)}</div>",
        _svg(trace_graph([p.events], p.name), f"path{n}"),
        f"<details><summary>trace as text</summary><pre>{escape(p.trace_text)}</pre></details>",
        "</section>"])


def _chains(report: Report, node: Node) -> str:
    """The Service's chains: from each KUBE-EXT/KUBE-SVC chain (iptables mode) or service chain (nftables
    mode) named in the rules finding."""
    from kproxy.doctor.rules import NFT_TABLE
    from kproxy.pictures.chains import iptables_graph, nft_graph

    texts = [e.text for f in report.findings if f.check == "rules" for e in f.evidence]
    nat = node.iptables[4].tables.get("nat")
    if report.mode == "iptables" and nat is not None:
        roots = sorted({m.group(0) for t in texts for m in re.finditer(r"KUBE-(?:EXT|SVC)-[A-Z0-9]{16}", t)
                        if m.group(0) in nat.chains})
        ext = [r for r in roots if r.startswith("KUBE-EXT-")]
        roots = ext + [r for r in roots if r.startswith("KUBE-SVC-") and "KUBE-EXT-" + r[9:] not in ext]
        graphs = [(r, iptables_graph(nat, 4, r)) for r in roots]
    elif report.mode == "nftables":
        table = node.nftables.find("ip", NFT_TABLE)
        roots = sorted({m.group(1) for t in texts for m in re.finditer(r"^chain (service-\S+)", t)})
        graphs = [(r, nft_graph(table, r)) for r in roots if r in table.chains]
    else:
        return ""
    return "\n".join(f"<h3>{escape(r)}</h3>" + _svg(g, f"chain{i}") for i, (r, g) in enumerate(graphs))


def render_html(report: Report, node: Node) -> str:
    state = ("healthy", "every path reaches an endpoint") if report.healthy else \
        ("unhealthy", f"{len(report.errors)} error(s); {sum(not p.ok for p in report.paths)} path(s) stopped")
    chains = _chains(report, node)
    return "\n".join([
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>kproxy doctor {escape(report.target)}</title><style>{STYLE}</style></head><body>",
        f"<h1>kproxy doctor {escape(report.target)} <span class='badge {state[0]}'>{state[0]}</span></h1>",
        f"<p>kube-proxy mode on node {escape(node.name)}: <b>{escape(report.mode)}</b>; {escape(state[1])}.</p>",
        "<h2>Findings</h2>", *(_finding(f) for f in report.findings),
        "<h2>Paths</h2>", *(_path(n, p) for n, p in enumerate(report.paths)),
        *(["<h2>The Service's chains</h2>", chains] if chains else []),
        "</body></html>", ""])
