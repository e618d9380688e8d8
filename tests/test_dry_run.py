"""kproxy proxy --dry-run: each sync computed against the node's rules and printed as a diff, nothing applied."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tests.test_proxier_iptables import NODE, endpoints, objects, service

from kproxy.backends.dryrun import DryRunBackend, named_chains, owned_restore_input
from kproxy.backends.emulated import EmulatedBackend
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.iptables import IptablesProxier
from saves import rules_of

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _proxier(backend: object) -> IptablesProxier:
    cfg = ProxyConfig.from_dict({"clusterCIDR": "10.0.0.0/16", "hostnameOverride": "node-a"})
    return IptablesProxier(cfg, backend, ["192.168.0.2"])


def test_owned_restore_input_keeps_only_kube_chains():
    text = ("*nat\n:PREROUTING ACCEPT [3:180]\n:KUBE-SVC-X - [5:300]\n:DOCKER - [0:0]\n"
            "-A PREROUTING -j KUBE-SVC-X\n-A DOCKER -j RETURN\n-A KUBE-SVC-X -j DOCKER\nCOMMIT\n")
    assert owned_restore_input(text) == "*nat\n:KUBE-SVC-X - [0:0]\n-A KUBE-SVC-X -j DOCKER\nCOMMIT\n"


def test_named_chains_per_table():
    text = "*filter\n:A - [0:0]\n-A B -j A\nCOMMIT\n*nat\n:C - [0:0]\n-X D\nCOMMIT\n"
    assert named_chains(text) == {"filter": {"A", "B"}, "nat": {"C", "D"}}


class CountingSaves(EmulatedBackend):
    saves = 0

    def save(self, table: str) -> str:
        CountingSaves.saves += 1
        return super().save(table)


def test_dry_run_prints_what_would_change_and_changes_nothing():
    node = Node.from_description(NODE)
    real = _proxier(EmulatedBackend(node))
    docs = [service("web", "172.30.0.41"), endpoints("web", ("10.0.1.5", "node-a"))]
    assert not real.sync(objects(*docs)).error
    before = rules_of(node.iptables_save())
    printed: list[str] = []
    dry = _proxier(DryRunBackend(CountingSaves(node), printed.append))
    objs = objects(*docs)
    assert not dry.sync(objs).error
    assert printed == []                              # the same rules: nothing to say
    moved = [service("web", "172.30.0.41"), endpoints("web", ("10.0.1.6", "node-a"))]
    objs.dirty = set()
    objs.add(moved[1], "test")
    CountingSaves.saves = 0
    result = dry.sync(objs)
    assert not result.error and not result.full
    assert CountingSaves.saves == 0                   # a partial sync reads its chains, not the tables
    diff = "\n".join(printed)
    assert "--- node" in diff and "+++ kproxy" in diff
    assert "--to-destination 10.0.1.6:80" in diff and "-A KUBE-SEP-" in diff and "10.0.1.5" in diff
    assert rules_of(node.iptables_save()) == before


def test_dry_run_on_an_empty_node_reports_the_jumps_it_would_insert():
    node = Node.from_description(NODE)
    printed: list[str] = []
    assert not _proxier(DryRunBackend(EmulatedBackend(node), printed.append)).sync(objects()).error
    text = "\n".join(printed)
    assert "# would run: iptables -t nat -I PREROUTING -m comment --comment kubernetes service portals " \
           "-j KUBE-SERVICES" in text
    assert "+-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000" in text
    assert "KUBE" not in node.iptables_save()


@pytest.mark.kernel
def test_kernel_dry_run_leaves_the_namespace_as_it_was(kernel_ns, tmp_path):
    kproxy = [sys.executable, "-m", "kproxy", "proxy", "--backend", "kernel", "--config",
              str(EXAMPLES / "kube-proxy.yaml"), "--once"]
    done = kernel_ns.run([*kproxy, "--manifests", str(EXAMPLES / "manifests.yaml")], check=False)
    assert done.returncode == 0, done.stderr
    before = kernel_ns.run(["iptables-save"]).stdout
    moved = tmp_path / "moved.yaml"
    moved.write_text((EXAMPLES / "manifests.yaml").read_text().replace("10.244.1.3", "10.244.1.33"))
    dry = kernel_ns.run([*kproxy, "--dry-run", "--manifests", str(moved)], check=False)
    assert dry.returncode == 0, dry.stderr
    assert "+-A KUBE-SEP-" in dry.stdout and "--to-destination 10.244.1.33:53" in dry.stdout
    assert "-s 10.244.1.3/32" in dry.stdout          # the rule it would remove
    after = kernel_ns.run(["iptables-save"]).stdout

    def body(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if not ln.startswith("#")]

    assert body(after) == body(before)


def test_chain_diff_shows_only_the_chains_that_differ():
    from kproxy.backends.dryrun import chain_diff

    before = "*nat\n:KUBE-A - [0:0]\n:KUBE-B - [0:0]\n-A KUBE-A -j RETURN\n-A KUBE-B -j KUBE-A\nCOMMIT\n"
    after = "*nat\n:KUBE-A - [0:0]\n:KUBE-C - [0:0]\n-A KUBE-A -j RETURN\n-A KUBE-C -j KUBE-A\nCOMMIT\n"
    assert chain_diff(before, after).splitlines() == [
        "--- node nat KUBE-B", "+++ kproxy nat KUBE-B", "@@ -1,2 +0,0 @@", "-:KUBE-B - [0:0]", "--A KUBE-B -j KUBE-A",
        "--- node nat KUBE-C", "+++ kproxy nat KUBE-C", "@@ -0,0 +1,2 @@", "+:KUBE-C - [0:0]", "+-A KUBE-C -j KUBE-A"]
    assert chain_diff(before, before) == ""
