"""Pictures rendered by the real Graphviz (chain hierarchies, a packet's path) and doctor's HTML page opened
in headless Chromium: what is drawn is checked in the SVG and in the browser's DOM."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.test_doctor import EXAMPLES, VIP, Cluster, kp, manifests

from kproxy.cli.main import cli

SVG = "{http://www.w3.org/2000/svg}"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz (Debian package graphviz) not installed")


def svg_parts(svg: str) -> tuple[set[str], set[tuple[str, str]], str]:
    """(node names, (from, to) edges, all text) of a Graphviz SVG."""
    root = ET.fromstring(svg)
    nodes, edges = set(), set()
    for g in root.iter(f"{SVG}g"):
        title = g.find(f"{SVG}title")
        if title is None or title.text is None:
            continue
        if g.get("class") == "node":
            nodes.add(title.text)
        elif g.get("class") == "edge":
            a, _, b = title.text.partition("->")
            edges.add((a, b))
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    return nodes, edges, text


@needs_dot
def test_iptables_chain_graph(tmp_path):
    c = Cluster(tmp_path)
    c.apply(manifests())
    svc = re.search(r"-j (KUBE-SVC-\w+)", c.run("iptables-save", "-t", "nat")).group(1)
    nodes, edges, text = svg_parts(c.run("graph", "-t", "nat", "--format", "svg"))
    assert {"PREROUTING", "KUBE-SERVICES", svc, "KUBE-NODEPORTS"} <= nodes
    assert ("PREROUTING", "KUBE-SERVICES") in edges and ("KUBE-SERVICES", svc) in edges
    assert len([e for e in edges if e[0] == svc and e[1].startswith("KUBE-SEP-")]) == 2
    assert "policy ACCEPT [0:0]" in text
    dot = c.run("graph", "-t", "nat", "--format", "dot", "--chain", svc)
    assert "PREROUTING" not in dot and f'"{svc}" -> "KUBE-SEP-' in dot
    # counters on the path a packet took
    c.run("trace", "--local", "--dst", VIP, "--dport", "80")
    dot = c.run("graph", "-t", "nat", "--format", "dot")
    assert re.search(r'"KUBE-SERVICES" -> "KUBE-SVC-\w+" \[label="#\d+ \(1 pkts\)"', dot)


def test_graph_errors_are_one_line(tmp_path):
    node = str(tmp_path / "n.db")
    bad = kp(node, "graph", "-t", "nosuch")
    assert bad.exit_code == 2 and "no table 'nosuch'" in bad.output and "Traceback" not in bad.output
    bad = kp(node, "graph", "--nft", "ip nothing")
    assert bad.exit_code == 2 and "no table ip nothing" in bad.output


@needs_dot
def test_nft_table_graph_fans_out_through_maps(tmp_path):
    node = str(tmp_path / "n.db")
    data = Path(__file__).parent / "data" / "nft" / "kube_proxy.nft"
    assert kp(node, "nft", "-f", str(data)).exit_code == 0
    res = kp(node, "graph", "--nft", "ip kube-proxy", "--format", "svg")
    assert res.exit_code == 0, res.output
    nodes, edges, text = svg_parts(res.output)
    svc = "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert {"nat-prerouting", "services", "@service-ips", svc} <= nodes
    assert ("services", "@service-ips") in edges and ("@service-ips", svc) in edges
    assert ("@no-endpoint-services", "reject-chain") in edges
    assert (svc, "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80") in edges      # anonymous vmap
    assert "172.30.0.41 . tcp . 80" in text and "hook prerouting" in text
    dot = kp(node, "graph", "--nft", "kube-proxy", "--format", "dot").output
    assert re.search(r'"service-ULMVA6XW[^"]*" -> "endpoint-5OJB2KTY[^"]*" \[label="handle \d+" style=dashed\]', dot)


@needs_dot
def test_trace_picture_shows_hooks_rules_and_nat(tmp_path):
    c = Cluster(tmp_path)
    c.apply(manifests())
    svg = c.run("trace", "--iif", "eth0", "--src", "203.0.113.7", "--dst", "192.168.1.10", "--dport", "30080",
                "--format", "svg")
    root = ET.fromstring(svg)
    clusters = [g.find(f"{SVG}title").text for g in root.iter(f"{SVG}g") if g.get("class") == "cluster"]
    assert len(clusters) == 3                      # PREROUTING, FORWARD, POSTROUTING
    _, _, text = svg_parts(svg)
    for part in ("PREROUTING (in eth0)", "FORWARD (in eth0, out", "POSTROUTING (out", "nat KUBE-NODEPORTS #2",  # #1: the localhost rule (nfacct)
                 "nat: DNAT 192.168.1.10:30080 -&gt;".replace("&gt;", ">"), "FORWARDED: forwarded out of"):
        assert part in text, part
    two = c.run("trace", "--local", "--dst", VIP, "--dport", "80", "--count", "2", "--format", "dot")
    assert "cluster_packet0" in two and "cluster_packet1" in two


def chromium_dom(page: Path, tmp: Path) -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Chromium (Debian package chromium) not installed")
    out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp / 'chromium'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@needs_dot
def test_doctor_html_page_in_headless_chromium(tmp_path):
    c = Cluster(tmp_path)
    c.apply(manifests())
    c.run("iptables", "-A", "INPUT", "-s", "198.51.100.7", "-d", VIP, "-j", "DROP")
    c.run("iptables", "-P", "FORWARD", "DROP")
    page = tmp_path / "doctor.html"
    res = kp(c.node, "doctor", "default/web", "--manifests", str(c.objs), "--config",
             str(EXAMPLES / "kube-proxy.yaml"), "--html", str(page))
    assert res.exit_code == 1
    html = page.read_text()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        'xmlns:xlink="http://www.w3.org/1999/xlink"', "")           # nothing to fetch: readable offline
    assert "<script" not in html and not re.search(r"""\s(src|href)=["'](?!#)""", html)
    dom = DomSummary()
    dom.feed(chromium_dom(page, tmp_path))
    text = " ".join(dom.text)
    assert "unhealthy" in text
    assert "filter INPUT rule 5 matches the Service's destination" in text
    assert "--ctorigdst 10.96.100.20" in text
    assert "filter FORWARD policy DROP" in text
    assert dom.svgs >= 4                            # one per path (3) and the Service's chains
    assert "KUBE-SERVICES" in dom.svg_titles or any(t.startswith("KUBE-EXT-") for t in dom.svg_titles)
    assert {"user-rule", "path", "endpoints", "rules"} <= dom.checks


class DomSummary(HTMLParser):
    """What the browser built: visible text, inline SVG elements, node titles inside them, finding checks."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.svgs = 0
        self.svg_titles: set[str] = set()
        self.checks: set[str] = set()
        self._in_title = False
        self._in_svg = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg":
            self.svgs += 1
            self._in_svg += 1
        self._in_title = tag == "title" and self._in_svg > 0
        if tag == "section" and "finding" in (a.get("class") or "").split():
            self.checks.add(a.get("data-check") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._in_svg -= 1
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.svg_titles.add(data.strip())
        elif not self._in_svg:
            self.text.append(data)


def test_too_big_to_draw_is_a_one_line_error(tmp_path):
    node = str(tmp_path / "n.db")
    rules = "*filter\n" + "".join(f":C{i} - [0:0]\n" for i in range(450)) + \
        "".join(f"-A INPUT -s 10.0.{i // 250}.{i % 250}/32 -j C{i}\n" for i in range(450)) + "COMMIT\n"
    assert CliRunner().invoke(cli, ["--node", node, "iptables-restore"], input=rules).exit_code == 0
    big = kp(node, "graph", "--format", "svg")
    assert big.exit_code == 2 and "453 chains are too many to draw (at most 400)" in big.output
    assert "C449" in kp(node, "graph", "--format", "dot").output
    assert kp(node, "graph", "--chain", "C7", "--format", "dot").output.count("[label=") == 1


@needs_dot
def test_doctor_html_draws_the_nft_service_chains(tmp_path):
    from tests.test_doctor import NFT_SERVICE

    c = Cluster(tmp_path)
    c.objs.write_text(__import__("yaml").safe_dump(NFT_SERVICE))
    c.run("nft", "-f", str(Path(__file__).parent / "data" / "nft" / "kube_proxy.nft"))
    page = tmp_path / "nft.html"
    assert kp(c.node, "doctor", "ns1/svc1", "--manifests", str(c.objs), "--html", str(page)).exit_code == 0
    html = page.read_text()
    assert "<h3>service-ULMVA6XW-ns1/svc1/tcp/p80</h3>" in html
    assert html.count("<svg") == 3          # two paths and the service chain fanning out to its endpoints
