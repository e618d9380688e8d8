"""``kproxy doctor --backend kernel`` on a real kernel: a kp- namespace set up as a worker node, programmed
by ``kproxy proxy --backend kernel --once``, then the seed's problems made with the real tools (a
DNAT-blind DROP rule with iptables, a stale DNAT entry with conntrack -I); doctor reads the kernel
read-only, finds them, and passes once they are fixed as it says."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from tests.test_doctor import EXAMPLES, VIP, manifests

KPROXY = str(Path(sys.executable).parent / "kproxy")
pytestmark = pytest.mark.kernel


def worker(ns, objs: Path) -> None:
    """Links and routes of examples/node.yaml (veth pairs stand in for eth0 and the pod bridge), then kube-proxy."""
    for dev, addr in (("eth0", "192.168.1.10/24"), ("cni0", "10.244.1.1/24")):
        ns.run(["ip", "link", "add", dev, "type", "veth", "peer", "name", f"{dev}-peer"])
        ns.run(["ip", "addr", "add", addr, "dev", dev])
        ns.run(["ip", "link", "set", f"{dev}-peer", "up"])
        ns.run(["ip", "link", "set", dev, "up"])
    ns.run(["ip", "route", "add", "default", "via", "192.168.1.1", "dev", "eth0"])
    ns.run(["ip", "route", "add", "10.244.2.0/24", "via", "192.168.1.11", "dev", "eth0"])
    ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    ns.run([KPROXY, "proxy", "--backend", "kernel", "--config", str(EXAMPLES / "kube-proxy.yaml"),
            "--manifests", str(objs), "--once"])


def doctor(ns, objs: Path) -> tuple[int, dict]:
    p = ns.run([KPROXY, "doctor", "default/web", "--backend", "kernel", "--manifests", str(objs), "--config",
                str(EXAMPLES / "kube-proxy.yaml"), "--json"], check=False)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode, json.loads(p.stdout)


@pytest.fixture
def node(kernel_ns, tmp_path):
    if shutil.which("conntrack") is None and not Path("/usr/sbin/conntrack").exists():
        pytest.skip("conntrack-tools not installed")
    objs = tmp_path / "objs.yaml"
    objs.write_text(yaml.safe_dump(manifests()))
    worker(kernel_ns, objs)
    return kernel_ns, objs


def test_kernel_healthy_then_dnat_blind_drop(node):
    ns, objs = node
    rc, report = doctor(ns, objs)
    assert rc == 0, [f for f in report["findings"] if f["severity"] == "error"]
    assert report["mode"] == "iptables" and len(report["paths"]) == 3
    ns.run(["iptables", "-A", "INPUT", "-s", "198.51.100.7", "-d", VIP, "-p", "tcp", "--dport", "80", "-j", "DROP"])
    rc, report = doctor(ns, objs)
    [f] = [f for f in report["findings"] if f["check"] == "user-rule"]
    assert rc == 1 and f["evidence"][0]["text"].startswith(f"-A INPUT -s 198.51.100.7/32 -d {VIP}/32")
    fixed = f["fix"].split("iptables -t filter ", 1)[1].split(" ;")[0]
    ns.run(["iptables", *shlex.split(fixed)])
    ns.run(["iptables", "-D", "INPUT", "-s", "198.51.100.7", "-d", VIP, "-p", "tcp", "--dport", "80", "-j", "DROP"])
    assert doctor(ns, objs)[0] == 0


def test_kernel_stale_conntrack_entry(node):
    ns, objs = node
    # An established connection from a pod, DNATed to 10.244.2.7, a pod scaled away.
    ns.run(["conntrack", "-I", "-p", "tcp", "-s", "10.244.1.5", "-d", VIP, "--sport", "5555", "--dport", "80",
            "-r", "10.244.2.7", "-q", "10.244.1.5", "--reply-port-src", "8080", "--reply-port-dst", "5555",
            "--state", "ESTABLISHED", "-u", "SEEN_REPLY,ASSURED", "-t", "3600"])
    rc, report = doctor(ns, objs)
    [f] = [f for f in report["findings"] if f["check"] == "conntrack"]
    assert rc == 1 and f["severity"] == "error" and "10.244.2.7" in f["title"]
    assert f["fix"] == f"conntrack -D -p tcp --orig-dst {VIP} --reply-src 10.244.2.7"
    ns.run(shlex.split(f["fix"]))
    assert doctor(ns, objs)[0] == 0


def test_kernel_forward_policy_drop_and_endpoints_not_ready(node):
    ns, objs = node
    ns.run(["iptables", "-P", "FORWARD", "DROP"])
    rc, report = doctor(ns, objs)
    pod = next(p for p in report["paths"] if "pod default/client" in p["name"])
    assert rc == 1 and pod["stopped_at"] == "filter FORWARD policy DROP"
    ns.run(["iptables", "-P", "FORWARD", "ACCEPT"])
    objs.write_text(yaml.safe_dump(manifests(ready={"10.244.1.6": False, "10.244.2.6": False})))
    ns.run([KPROXY, "proxy", "--backend", "kernel", "--config", str(EXAMPLES / "kube-proxy.yaml"),
            "--manifests", str(objs), "--once"])
    rc, report = doctor(ns, objs)
    [f] = [f for f in report["findings"] if f["check"] == "endpoints"]
    assert rc == 1 and f["severity"] == "error" and "0 of 2" in f["title"]
    assert all("has no endpoints" in p["stopped_at"] for p in report["paths"])
    objs.write_text(yaml.safe_dump(manifests()))
    ns.run([KPROXY, "proxy", "--backend", "kernel", "--config", str(EXAMPLES / "kube-proxy.yaml"),
            "--manifests", str(objs), "--once"])
    assert doctor(ns, objs)[0] == 0
