"""What every proxier mode shares: change tracking, local-traffic detection, mode selection, failed inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kproxy.cli.main import cli
from kproxy.k8s.manifests import Objects, load
from kproxy.proxy.changes import ChangeTracker
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.localdetect import LocalDetector
from kproxy.proxy.proxier import ModeUnavailable, proxier_class

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SVC = """apiVersion: v1
kind: List
items:
- {kind: Service, metadata: {name: web, namespace: d}, spec: {clusterIP: 10.96.0.5, ports: [{name: h, port: 80}]}}
- {kind: Service, metadata: {name: db, namespace: d}, spec: {clusterIP: 10.96.0.6, ports: [{name: p, port: 5432}]}}
- kind: EndpointSlice
  metadata: {name: web-1, namespace: d, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints: [{addresses: [%s], nodeName: n}]
  ports: [{name: h, port: 8080}]
- kind: EndpointSlice
  metadata: {name: db-1, namespace: d, labels: {kubernetes.io/service-name: db}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.0.20], nodeName: m}]
  ports: [{name: p, port: 5432}]
"""


def _objects(tmp_path: Path, web_ip: str, previous: Objects | None = None) -> Objects:
    path = tmp_path / "m.yaml"
    path.write_text(SVC % web_ip)
    objs = load(str(path))
    if previous is not None:
        objs.dirty = objs.changes_since(previous)
    return objs


def test_the_tracker_hands_each_sync_only_what_changed(tmp_path: Path) -> None:
    tracker = ChangeTracker(ProxyConfig(hostname_override="n"))
    first = _objects(tmp_path, "10.244.0.7")
    changes = tracker.update(first, full=True)
    assert changes.changed == {"d/web", "d/db"} and changes.ports_set_changed
    assert not changes.before.ports and len(changes.after.ports) == 2
    tracker.commit()

    second = _objects(tmp_path, "10.244.0.8", first)
    changes = tracker.update(second, full=False)
    assert changes.changed == {"d/web"} and set(changes.recomputed) == {"d/web"}
    assert not changes.ports_set_changed
    (key,) = changes.before.endpoints
    assert [e.text for e in changes.before.endpoints[key]] == ["10.244.0.7:8080"]
    assert [e.text for e in changes.after.endpoints[key]] == ["10.244.0.8:8080"]
    assert changes.after.endpoints[key][0].is_local          # nodeName n is this node

    tracker.rollback()                                        # that sync failed: it is still to do
    third = _objects(tmp_path, "10.244.0.8", first)
    assert tracker.update(third, full=False).changed == {"d/web"}
    tracker.commit()
    again = _objects(tmp_path, "10.244.0.8", third)
    again.dirty = {"d/web", "d/db"}                           # marked, but nothing differs
    changes = tracker.update(again, full=False)
    assert changes.changed == set() and not changes.recomputed


def test_a_deleted_service_is_a_change_with_an_empty_after(tmp_path: Path) -> None:
    tracker = ChangeTracker(ProxyConfig(hostname_override="n"))
    objs = _objects(tmp_path, "10.244.0.7")
    tracker.update(objs, full=True)
    tracker.commit()
    objs.delete_service("d/db")
    changes = tracker.update(objs, full=False)
    assert changes.changed == {"d/db"} and changes.recomputed == {"d/db": {}}
    assert [k[0] for k in changes.before.ports] == ["d/db"] and not changes.after.ports
    assert "d/db" not in tracker.ports


@pytest.mark.parametrize("cfg, family, local, not_local, local_nft, not_local_nft", [
    ({"clusterCIDR": "10.244.0.0/16,fd00::/48"}, 4, ["-s", "10.244.0.0/16"], ["!", "-s", "10.244.0.0/16"],
     ["ip", "saddr", "10.244.0.0/16"], ["ip", "saddr", "!=", "10.244.0.0/16"]),
    ({"clusterCIDR": "10.244.0.0/16,fd00::/48"}, 6, ["-s", "fd00::/48"], ["!", "-s", "fd00::/48"],
     ["ip6", "saddr", "fd00::/48"], ["ip6", "saddr", "!=", "fd00::/48"]),
    ({"detectLocalMode": "BridgeInterface", "detectLocal": {"bridgeInterface": "cbr0"}}, 4,
     ["-i", "cbr0"], ["!", "-i", "cbr0"], ["iifname", '"cbr0"'], ["iifname", "!=", '"cbr0"']),
    ({"detectLocalMode": "InterfaceNamePrefix", "detectLocal": {"interfaceNamePrefix": "veth"}}, 4,
     ["-i", "veth+"], ["!", "-i", "veth+"], ["iifname", '"veth*"'], ["iifname", "!=", '"veth*"']),
])
def test_the_local_detector_speaks_iptables_and_nftables(cfg, family, local, not_local, local_nft, not_local_nft):
    d = LocalDetector(ProxyConfig.from_dict(cfg), family)
    assert (d.if_local, d.if_not_local, d.if_local_nft, d.if_not_local_nft) == (local, not_local, local_nft,
                                                                                not_local_nft)
    assert d.implemented


def test_node_cidr_mode_without_a_pod_cidr_detects_nothing() -> None:
    d = LocalDetector(ProxyConfig.from_dict({"detectLocalMode": "NodeCIDR"}), 4)
    assert not d.implemented and d.if_local_nft == []


def test_the_mode_picks_the_proxier_and_an_unavailable_one_is_an_error() -> None:
    from kproxy.proxy.iptables import IptablesProxier

    assert proxier_class("iptables") is IptablesProxier
    assert proxier_class("") is IptablesProxier          # upstream's default on Linux
    with pytest.raises(ModeUnavailable, match="unknown proxy mode 'userspace'"):
        proxier_class("userspace")


def _run(node: str, *args: str):  # type: ignore[no-untyped-def]
    import kproxy.cli.proxy_cmd  # noqa: F401

    return CliRunner().invoke(cli, ["--node", node, *args])


@pytest.mark.parametrize("mode", ["ipvs", "nftables"])
def test_a_mode_that_is_not_available_fails_at_start_and_changes_nothing(tmp_path: Path, mode: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every mode is built now; a build without one (taken out of the registry) refuses it at start."""
    from kproxy.proxy import proxier

    monkeypatch.delitem(proxier.MODES, mode)
    node = str(tmp_path / "n.json")
    assert _run(node, "node", "init").exit_code == 0
    before = Path(node).read_bytes()
    res = _run(node, "proxy", "--mode", mode, "--manifests", str(EXAMPLES / "manifests.yaml"), "--once")
    assert res.exit_code != 0 and f"proxy mode '{mode}' is not available" in res.output
    cfg = tmp_path / "kp.yaml"
    cfg.write_text(f"apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: {mode}\n")
    res = _run(node, "proxy", "--config", str(cfg), "--manifests", str(EXAMPLES / "manifests.yaml"), "--once")
    assert res.exit_code != 0 and "is not available" in res.output
    assert Path(node).read_bytes() == before


def test_manifests_that_fail_to_parse_fail_the_sync_and_keep_the_rules(tmp_path: Path) -> None:
    node = str(tmp_path / "n.json")
    assert _run(node, "node", "init", "--from", str(EXAMPLES / "node.yaml")).exit_code == 0
    args = ["proxy", "--config", str(EXAMPLES / "kube-proxy.yaml"), "--once"]
    assert _run(node, *args, "--manifests", str(EXAMPLES / "manifests.yaml")).exit_code == 0
    def rules_now() -> list[str]:
        return [ln for ln in _run(node, "iptables-save").output.splitlines() if not ln.startswith("#")]

    rules = rules_now()
    assert any("KUBE-SVC-" in ln for ln in rules)
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Service\nmetadata: {name: x\n")
    res = _run(node, *args, "--manifests", str(broken))
    assert res.exit_code != 0 and "cannot read manifests" in res.output
    assert rules_now() == rules


def test_syncs_freeze_what_they_leave_and_a_full_sync_collects_frozen_cycles() -> None:
    """After a sync its objects are out of the collector's generations (no 400 ms collection in the next
    change); cyclic garbage frozen by partial syncs goes at a full sync once the frozen set doubled."""
    import gc
    import weakref

    from kproxy.proxy import proxier

    class Cycle:
        me: object

    try:
        with proxier.gc_paused():
            c = Cycle()
            c.me = c
            ref = weakref.ref(c)
            del c
        assert gc.get_freeze_count() > 0 and ref() is not None     # frozen: not collected yet
        filler = [[] for _ in range(150_000)]                        # enough frozen to be worth a collection
        with proxier.gc_paused():
            pass
        proxier._FROZEN[0] = 0
        with proxier.gc_paused(full=True):
            pass
        assert ref() is None and gc.get_freeze_count() >= len(filler)
    finally:
        gc.unfreeze()
