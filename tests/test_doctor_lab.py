"""The seed's four problems on the real-kernel lab (kp- namespaces, pods answering real requests, one
kproxy per node): each is made with the real tools, shown with real traffic, found by
``kproxy lab doctor`` (exit 1, cause and evidence), fixed as doctor says, and traffic flows again."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests import test_lab
from tests.test_lab import CLIENT, NODE1, pod_of, probe, wait_for

pytestmark = pytest.mark.kernel
KPROXY = [sys.executable, "-m", "kproxy"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The cluster the tests here break and mend: test_lab's, in iptables mode, an instance of this module's own."""
    yield from test_lab.running_lab(tmp_path_factory, test_lab.LAB)


def doctor(lab, service: str = "default/web") -> tuple[int, dict]:
    p = subprocess.run([*KPROXY, "lab", "doctor", "--dir", lab.dir, "node-1", service, "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode, json.loads(p.stdout)


def node1(lab, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", lab.nodes["node-1"], *argv], check=True, capture_output=True)


def errors(report: dict, check: str) -> list[dict]:
    return [f for f in report["findings"] if f["severity"] == "error" and f["check"] == check]


def test_lab_starts_healthy(lab):
    rc, report = doctor(lab)
    assert rc == 0 and report["mode"] == "iptables"
    assert any(p["name"].startswith("from pod default/web-") for p in report["paths"])


def test_lab_problem1_drop_rule_blind_after_dnat(lab):
    node1(lab, "iptables", "-A", "INPUT", "-s", CLIENT, "-p", "tcp", "--dport", "30080", "-j", "DROP")
    assert pod_of(probe(lab, "client", NODE1, 30080)).startswith("web-")      # really: it blocks nothing
    rc, report = doctor(lab)
    [f] = errors(report, "user-rule")
    assert rc == 1 and "node port 30080" in f["title"]
    fixed = f["fix"].split("iptables -t filter ", 1)[1].split(" ;")[0]
    assert fixed == f"-I FORWARD 1 -s {CLIENT}/32 -p tcp -m conntrack --ctorigdstport 30080 -j DROP"
    node1(lab, "iptables", *shlex.split(fixed))
    node1(lab, "iptables", "-D", "INPUT", "-s", CLIENT, "-p", "tcp", "--dport", "30080", "-j", "DROP")
    try:
        assert probe(lab, "client", NODE1, 30080) == "timeout"                 # now the client is blocked
        assert doctor(lab)[0] == 0
    finally:
        node1(lab, "iptables", "-D", "FORWARD", "1")


def test_lab_problem2_nodeport_blocked(lab):
    node1(lab, "iptables", "-I", "FORWARD", "1", "-p", "tcp", "--dport", "8080", "-j", "DROP")
    try:
        assert probe(lab, "client", NODE1, 30080) == "timeout"
        rc, report = doctor(lab)
        nodeport = next(p for p in report["paths"] if "NodePort" in p["name"])
        assert rc == 1 and nodeport["stopped_at"] == "filter FORWARD #1: -A FORWARD -p tcp -m tcp --dport 8080 -j DROP"
        assert any("iptables -t filter -D FORWARD 1" in f["fix"] for f in errors(report, "path"))
    finally:
        node1(lab, "iptables", "-D", "FORWARD", "1")
    assert pod_of(probe(lab, "client", NODE1, 30080)).startswith("web-")
    assert doctor(lab)[0] == 0


def test_lab_problem3_no_ready_endpoints(lab):
    from kproxy.lab.cluster import scale

    scale(lab, "web", 0)
    try:
        wait_for(lambda: probe(lab, "client", NODE1, 30080) == "refused", 20)
        rc, report = doctor(lab)
        [f] = errors(report, "endpoints")
        assert rc == 1 and f["title"] == "default/web:http: no endpoints"
        assert all("has no endpoints" in p["stopped_at"] for p in report["paths"])
    finally:
        scale(lab, "web", 3)
    wait_for(lambda: doctor(lab)[0] == 0, 20)
    assert pod_of(probe(lab, "client", NODE1, 30080)).startswith("web-")


def test_lab_problem4_stale_udp_flow_to_a_gone_pod(lab):
    web = next(p for p in lab.pods if p.node == "node-1" and p.deployment == "web")
    node1(lab, "conntrack", "-I", "-p", "udp", "-s", web.ip, "-d", "10.96.0.10", "--sport", "40099", "--dport", "53",
          "--dst-nat", "10.244.2.99:5353", "-t", "120")
    assert probe(lab, web.name, "10.96.0.10", 53, "udp", sport=40099) == "timeout"   # the flow hangs
    rc, report = doctor(lab, "default/dns")
    [f] = errors(report, "conntrack")
    assert rc == 1 and "10.244.2.99" in f["title"]
    assert f["fix"] == "conntrack -D -p udp --orig-dst 10.96.0.10 --reply-src 10.244.2.99"
    node1(lab, *shlex.split(f["fix"]))
    assert pod_of(probe(lab, web.name, "10.96.0.10", 53, "udp", sport=40099)) == "dns-0"
    assert doctor(lab, "default/dns")[0] == 0


def test_lab_doctor_html_page(lab, tmp_path):
    page = tmp_path / "lab.html"
    p = subprocess.run([*KPROXY, "lab", "doctor", "--dir", lab.dir, "node-1", "default/web", "--html", str(page)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "healthy" in p.stdout
    assert Path(page).read_text().count("<svg") >= 3
