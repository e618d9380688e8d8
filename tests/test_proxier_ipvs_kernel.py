"""The IPVS mode against this machine's kernel: it has no IPVS, so the mode must refuse to start and
change nothing; its ipsets and iptables rules are checked on the kernel by themselves."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.test_proxier_ipvs import NODE, endpoints, objects, service

from kproxy.backends.emulated import EmulatedBackend
from kproxy.backends.kernel import KernelBackend
from kproxy.lab.netns import Netns
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.ipvs import IPSETS, IpvsProxier

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.skipif(os.path.exists("/proc/net/ip_vs"), reason="this kernel has IPVS")


def _state(ns: Netns) -> tuple[str, str]:
    save = ns.run(["iptables-nft-save"]).stdout
    sets = ns.run(["ipset", "list", "-n"]).stdout
    return "\n".join(line for line in save.splitlines() if not line.startswith("#")), sets


def test_kernel_backend_without_ipvs_fails_at_start_and_changes_nothing(kernel_ns: Netns, tmp_path: Path) -> None:
    before = _state(kernel_ns)
    proc = kernel_ns.run([sys.executable, "-m", "kproxy", "--node", str(tmp_path / "n.json"), "proxy",
                          "--backend", "kernel", "--mode", "ipvs", "--once", "--no-serve",
                          "--manifests", str(EXAMPLES / "manifests.yaml")], check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "Error: proxy mode 'ipvs': this kernel has no IPVS (no /proc/net/ip_vs: the ip_vs module is not loaded or "
        "not built); load it with 'modprobe -a ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh nf_conntrack' or use --mode "
        "iptables"]
    assert _state(kernel_ns) == before
    assert "Traceback" not in proc.stderr


class SetsAndRulesOnKernel(EmulatedBackend):
    """IPVS, the dummy device and sysctls on the emulated node; ipsets and iptables on a kernel namespace."""

    def __init__(self, node: Node, ns: Netns) -> None:
        super().__init__(node)
        self.kernel = KernelBackend(netns=ns.name)

    def __getattribute__(self, name: str) -> Any:
        if name in ("restore", "save", "ensure_chain", "ensure_rule", "delete_rule", "ipset_restore", "ipset_entries"):
            return getattr(object.__getattribute__(self, "kernel"), name)
        return object.__getattribute__(self, name)


def _without_counters(save: str) -> list[str]:
    return [line.split(" [")[0] if line.startswith(":") else line for line in save.splitlines()
            if not line.startswith("#")]


def _docs(loc_endpoint: str) -> list[dict]:
    return [service("web", "10.20.30.41", type="LoadBalancer", nodePort=3001, lb="1.2.3.4",
                    loadBalancerSourceRanges=["192.168.0.0/16"], externalIPs=["50.60.70.81"]),
            endpoints("web", ("10.0.1.5", "node-a"), ("10.0.2.5", "node-b")),
            service("loc", "10.20.30.42", type="NodePort", nodePort=3002, externalTrafficPolicy="Local",
                    healthCheckNodePort=30000, proto="UDP"),
            endpoints("loc", (loc_endpoint, "node-a"), proto="UDP"),
            service("sctp", "10.20.30.43", type="NodePort", nodePort=3003, proto="SCTP"),
            endpoints("sctp", ("10.0.2.7", "node-b"), proto="SCTP")]


def _same(ns: Netns, kernel: IpvsProxier, emulated: Node) -> None:
    for table in ("nat", "filter"):
        assert _without_counters(ns.run(["iptables-nft-save", "-t", table]).stdout) == \
            _without_counters(emulated.iptables_save(tables=[table])), table
    for name, typ, _ in IPSETS:
        assert f"Type: {typ}\n" in ns.run(["ipset", "list", name]).stdout
        s = emulated.ipsets.get(name)
        assert s is not None
        assert kernel.backend.ipset_entries(name) == {s.format(k) for k in s.members}, name


def test_sets_and_rules_are_what_the_kernel_accepts_and_shows(kernel_ns: Netns) -> None:
    """The same objects through a proxier whose ipsets and rules go to the kernel and one wholly on the
    emulated node: iptables-save and the set members agree, after a full and after a partial sync."""
    cfg = {"mode": "ipvs", "clusterCIDR": "10.0.0.0/16", "hostnameOverride": "node-a"}
    node, emulated = Node.from_description(NODE), Node.from_description(NODE)
    on_kernel = IpvsProxier(ProxyConfig.from_dict(cfg), SetsAndRulesOnKernel(node, kernel_ns), ["192.168.0.2"])
    reference = IpvsProxier(ProxyConfig.from_dict(cfg), EmulatedBackend(emulated), ["192.168.0.2"])
    for loc in ("10.0.1.6", "10.0.1.9"):
        for proxier in (on_kernel, reference):
            result = proxier.sync(objects(*_docs(loc)))
            assert not result.error, result.error
        _same(kernel_ns, on_kernel, emulated)
    assert "10.0.1.9,udp:80,10.0.1.9" in on_kernel.backend.ipset_entries("KUBE-LOOP-BACK")
