"""Backends own only kproxy's chains: a user's rules survive syncs and cleanup, in the kernel and emulated."""

from __future__ import annotations

import pytest

from kproxy.backends.kernel import KernelBackend, owned_cleanup_input
from kproxy.iptables.restore import restore
from kproxy.iptables.save import save
from kproxy.iptables.state import IptablesState
from kproxy.k8s.manifests import Objects

USER = """*filter
:USER-CHAIN - [0:0]
-A INPUT -s 10.9.9.9/32 -j USER-CHAIN
-A USER-CHAIN -p icmp -j ACCEPT
COMMIT
*nat
-A POSTROUTING -o eth0 -j ACCEPT
COMMIT
"""
KPROXY = """*filter
:KUBE-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
-A KUBE-SERVICES -d 10.96.0.9/32 -p tcp -m comment --comment "ns/svc has no endpoints" -j REJECT
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-X - [0:0]
-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-X
-A KUBE-SVC-X -p tcp -j DNAT --to-destination 10.244.1.2:80
COMMIT
"""
JUMPS = [("filter", "INPUT", ["-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]),
         ("filter", "FORWARD", ["-j", "KUBE-FORWARD"]),
         ("nat", "PREROUTING", ["-j", "KUBE-SERVICES"])]


def test_cleanup_input_removes_only_owned_chains_and_their_jumps():
    text = owned_cleanup_input(USER.replace("COMMIT", "-A INPUT -j KUBE-X\nCOMMIT", 1).replace(
        "*filter\n", "*filter\n:KUBE-X - [0:0]\n"))
    assert text.splitlines() == ["*filter", "-D INPUT -j KUBE-X", ":KUBE-X - [0:0]", "-X KUBE-X", "COMMIT"]


@pytest.mark.kernel
def test_kernel_backend_sync_and_cleanup_leave_user_rules(kernel_ns):
    for table in ("filter", "nat"):
        kernel_ns.run(["iptables", "-t", table, "-L", "-n"])
    kernel_ns.run(["iptables-restore"], input=USER)
    before = kernel_ns.run(["iptables-save"]).stdout
    be = KernelBackend(netns=kernel_ns.name)
    if "KUBE" in before:  # pragma: no cover - a fresh namespace has none
        pytest.fail("fresh namespace already has KUBE chains")
    be.restore(KPROXY)
    for table, chain, args in JUMPS:
        assert be.ensure_rule(table, chain, args) is False
        assert be.ensure_rule(table, chain, args) is True
    synced = be.save_all()
    assert "-A USER-CHAIN -p icmp -j ACCEPT" in synced and "KUBE-SVC-X" in synced
    be.cleanup()
    after = kernel_ns.run(["iptables-save"]).stdout

    def body(t: str) -> list[str]:
        return [ln for ln in t.splitlines() if not ln.startswith("#")]

    assert body(after) == body(before)


def test_emulated_cleanup_leaves_the_same_as_the_kernel_would():
    from kproxy.backends.emulated import EmulatedBackend

    class FakeNode:
        def __init__(self) -> None:
            self.iptables = {4: IptablesState(4)}

        def iptables_restore(self, text, family=4, noflush=False, counters=False):
            restore(text, self.iptables[family], noflush=noflush, counters=counters)

        def iptables_save(self, family=4, counters=False, tables=None):
            return save(self.iptables[family], tables=tables, counters=counters)

        def iptables_cmd(self, argv, family=4):
            from kproxy.iptables.commands import run_iptables

            return run_iptables(argv, self.iptables[family], family)

    node = FakeNode()
    node.iptables_restore(USER)
    before = save(node.iptables[4], header=False)
    be = EmulatedBackend(node)
    be.restore(KPROXY)
    for table, chain, args in JUMPS:
        be.ensure_rule(table, chain, args)
    assert "KUBE-SVC-X" in save(node.iptables[4], header=False)
    be.cleanup()
    assert save(node.iptables[4], header=False) == before


KUBELET = """*filter
:KUBE-FIREWALL - [0:0]
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
COMMIT
*nat
:KUBE-MARK-DROP - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000
COMMIT
"""


def test_cleanup_input_leaves_the_kubelets_chains_and_jumps():
    text = owned_cleanup_input(KUBELET.replace(":KUBE-FIREWALL - [0:0]\n", ":KUBE-FIREWALL - [0:0]\n:KUBE-SERVICES - [0:0]\n")
                               .replace("-A OUTPUT -j KUBE-FIREWALL\n", "-A OUTPUT -j KUBE-FIREWALL\n"
                                        "-A OUTPUT -j KUBE-SERVICES\n-A KUBE-FIREWALL -j KUBE-SERVICES\n"))
    assert text.splitlines() == ["*filter", "-D OUTPUT -j KUBE-SERVICES", "-D KUBE-FIREWALL -j KUBE-SERVICES",
                                 ":KUBE-SERVICES - [0:0]", "-X KUBE-SERVICES", "COMMIT"]
    assert owned_cleanup_input(KUBELET) == ""


def _iptables_mode_objects() -> Objects:
    svc = {"kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"clusterIP": "10.96.0.10", "type": "NodePort",
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]}}
    eps = {"kind": "EndpointSlice", "metadata": {"name": "web-1", "namespace": "default",
                                                 "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True}}]}
    objs = Objects()
    objs.add(svc, "test")
    objs.add(eps, "test")
    return objs


def _kube_lines(save_text: str) -> list[str]:
    return sorted(ln for ln in save_text.splitlines() if "KUBE-" in ln)


def _sync(backend: object) -> None:
    """One Service synced by the iptables mode into ``backend``."""
    from kproxy.proxy.config import ProxyConfig
    from kproxy.proxy.iptables import IptablesProxier

    proxier = IptablesProxier(ProxyConfig.from_dict({"clusterCIDR": "10.244.0.0/16"}), backend, ["192.168.0.2"])
    result = proxier.sync(_iptables_mode_objects())
    assert not result.error, result.error
    assert "KUBE-SVC-" in backend.save_all()  # type: ignore[attr-defined]


def _sync_and_cleanup(backend: object) -> None:
    _sync(backend)
    backend.cleanup()  # type: ignore[attr-defined]


# What upstream's CleanupLeftovers leaves of a synced iptables mode: the kubelet's firewall chain
# (the rule the proxier ensures in it) and the jumps into it.
LEFT_BY_CLEANUP = sorted([":KUBE-FIREWALL - [0:0]", "-A INPUT -j KUBE-FIREWALL", "-A OUTPUT -j KUBE-FIREWALL",
                          '-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment '
                          '"block incoming localnet connections" -m conntrack ! --ctstate '
                          'RELATED,ESTABLISHED,DNAT -j DROP'])


@pytest.mark.kernel
def test_kernel_cleanup_leaves_kube_firewall_as_upstream_does(kernel_ns):
    be = KernelBackend(netns=kernel_ns.name)
    _sync_and_cleanup(be)
    assert _kube_lines(kernel_ns.run([be.iptables_save]).stdout) == LEFT_BY_CLEANUP


def test_emulated_cleanup_leaves_kube_firewall_as_upstream_does():
    from kproxy.backends.emulated import EmulatedBackend
    from kproxy.node import Node

    node = Node.from_description({"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]}]})
    be = EmulatedBackend(node)
    _sync_and_cleanup(be)
    assert _kube_lines(node.iptables_save()) == LEFT_BY_CLEANUP


@pytest.mark.kernel
def test_the_cleanup_command_on_the_kernel_leaves_kube_firewall_and_user_rules(kernel_ns, tmp_path):
    """``kproxy cleanup --backend kernel`` run inside the namespace: kproxy's chains go, the kubelet's
    KUBE-FIREWALL (with its jumps) and a user's rules stay."""
    import sys

    be = KernelBackend(netns=kernel_ns.name)
    kernel_ns.run(["iptables-restore", "--noflush"], input=USER)
    _sync(be)
    out = kernel_ns.run([sys.executable, "-m", "kproxy", "--node", str(tmp_path / "n.json"), "cleanup",
                         "--backend", "kernel"], timeout=120)
    assert out.stdout.startswith("cleanup: "), out.stdout
    saved = kernel_ns.run([be.iptables_save]).stdout
    assert _kube_lines(saved) == LEFT_BY_CLEANUP
    assert "-A USER-CHAIN -p icmp -j ACCEPT" in saved and "-A POSTROUTING -o eth0 -j ACCEPT" in saved


@pytest.mark.kernel
def test_kernel_backend_sets_route_localnet_for_localhost_node_ports_in_its_namespace(kernel_ns):
    """Upstream's iptables NewProxier sets net.ipv4.conf.all.route_localnet=1 when localhost NodePorts
    are on (a DNATed packet from 127.0.0.1 must be routed off the node); the kernel backend sets it in
    its own namespace and nowhere else, and leaves it alone when localhost NodePorts are off."""
    from kproxy.proxy.config import ProxyConfig
    from kproxy.proxy.iptables import IptablesProxier

    def value() -> str:
        return kernel_ns.run(["sysctl", "-n", "net.ipv4.conf.all.route_localnet"]).stdout.strip()

    assert value() == "0"
    IptablesProxier(ProxyConfig.from_dict({"nodePortAddresses": ["192.168.0.0/16"]}),
                    KernelBackend(netns=kernel_ns.name))
    assert value() == "0"
    IptablesProxier(ProxyConfig.from_dict({}), KernelBackend(netns=kernel_ns.name))
    assert value() == "1"
