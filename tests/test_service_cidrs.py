"""ServiceCIDRs (networking.k8s.io/v1): parsed and validated, loaded from manifests and watched from
the API, and fed to the nftables proxier's ``cluster-ips-check`` drop rule as upstream's
ServiceCIDRConfig feeds OnServiceCIDRsChanged, a change making the next sync a full one."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from kproxy.backends.nft import EmulatedNft  # noqa: E402
from kproxy.k8s.manifests import Objects  # noqa: E402
from kproxy.k8s.objects import ObjectError, ServiceCIDR  # noqa: E402
from kproxy.k8s.source import ManifestSource  # noqa: E402
from kproxy.node import Node  # noqa: E402
from kproxy.proxy.config import ProxyConfig  # noqa: E402
from kproxy.proxy.nftables import NftablesProxier  # noqa: E402
from kproxy.proxy.runner import ProxyRunner  # noqa: E402
from test_api_watch import source, wait_for  # noqa: E402
from test_proxier_nftables import (  # noqa: E402
    NODE,
    NODE_IPS,
    assert_same_table,
    objects,
    overall_objects,
    table_of,
)

REJECT = 'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"'


def drop(*ranges: str) -> str:
    """The rule as nft 1.0.6 lists it: an anonymous set of one element becomes a plain comparison."""
    match = ranges[0] if len(ranges) == 1 else "{ " + ", ".join(ranges) + " }"
    return f'ip daddr {match} drop comment "Drop traffic to unallocated ClusterIPs"'


def service_cidr(name: str, *cidrs: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": name},
            "spec": {"cidrs": list(cidrs)}}


def proxier_without_ranges(family: int = 4, **cfg: Any) -> tuple[Node, NftablesProxier]:
    """Upstream's NewFakeProxier, except that the service ranges come from ServiceCIDR objects."""
    node = Node.from_description(NODE)
    config = ProxyConfig.from_dict({"mode": "nftables", "clusterCIDR": "10.0.0.0/8", "detectLocalMode": "ClusterCIDR",
                                    "hostnameOverride": "test-node",
                                    "nodePortAddresses": ["192.168.0.2/32", "2001:db8::1/128"],
                                    "nftables": {"minSyncPeriod": "0s"}, **cfg})
    return node, NftablesProxier(config, EmulatedNft(node, family), NODE_IPS, family=family, node_ip="192.168.0.2")


def cluster_ips_check(node: Node) -> list[str]:
    listing = table_of(node)
    block = listing.split("chain cluster-ips-check {", 1)[1].split("}\n", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


# ---- the object ----------------------------------------------------------------------------------
def test_a_service_cidr_parses_both_families() -> None:
    sc = ServiceCIDR.from_dict(service_cidr("kubernetes", "10.96.0.0/16", "fd00:10:96::/112"))
    assert sc == ServiceCIDR("kubernetes", ["10.96.0.0/16", "fd00:10:96::/112"])


@pytest.mark.parametrize(("doc", "message"), [
    (service_cidr("kubernetes"), "ServiceCIDR kubernetes: spec.cidrs: Required value: at least one CIDR required"),
    (service_cidr("x", "10.0.0.0/8", "fd00::/64", "10.1.0.0/16"), "ServiceCIDR x: spec.cidrs: Too many: 3"),
    (service_cidr("x", "10.0.0.0/8", "10.1.0.0/16"),
     "ServiceCIDR x: spec.cidrs[1]: Invalid value: '10.1.0.0/16': may specify no more than one CIDR for each"),
    (service_cidr("x", "10.0.0.1/8"),
     "ServiceCIDR x: spec.cidrs[0]: Invalid value: '10.0.0.1/8': must be in canonical form ('10.0.0.0/8')"),
    (service_cidr("x", "banana"), "ServiceCIDR x: spec.cidrs[0]: invalid CIDR 'banana'"),
    (service_cidr("Bad_Name", "10.0.0.0/8"), 'ServiceCIDR "Bad_Name": metadata.name: Invalid value'),
])
def test_an_invalid_service_cidr_is_named_with_its_field(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ObjectError) as err:
        ServiceCIDR.from_dict(doc)
    assert str(err.value).startswith(message)


def test_manifests_load_service_cidrs_and_skip_bad_ones_with_a_warning() -> None:
    objs = Objects()
    objs.add({"kind": "List", "items": [service_cidr("kubernetes", "172.30.0.0/16"),
                                        service_cidr("extra", "10.200.0.0/16", "fd00::/108"),
                                        service_cidr("bad", "10.0.0.1/8")]}, "cluster.yaml")
    assert objs.service_cidr_ranges() == ["10.200.0.0/16", "fd00::/108", "172.30.0.0/16"]
    assert objs.warnings == ["cluster.yaml: items[2]: ServiceCIDR bad: spec.cidrs[0]: Invalid value: '10.0.0.1/8': "
                             "must be in canonical form ('10.0.0.0/8')"]
    assert Objects().service_cidr_ranges() is None      # a source without ServiceCIDRs says nothing of them


# ---- the proxier -----------------------------------------------------------------------------------
def test_upstreams_overall_table_with_the_range_from_a_service_cidr() -> None:
    """TestOverallNFTablesRules, its 172.30.0.0/16 given as a ServiceCIDR object, not to the proxier."""
    node, proxier = proxier_without_ranges()
    objs = overall_objects()
    objs.add(service_cidr("kubernetes", "172.30.0.0/16", "fd00:10:96::/112"), "test")
    result = proxier.sync(objs)
    assert not result.error, result.error
    assert_same_table(node, "base_ipv4.nft", "overall.nft")


def test_a_changed_service_cidr_rewrites_the_drop_rule_in_a_full_sync() -> None:
    node, proxier = proxier_without_ranges()
    objs = overall_objects()
    objs.add(service_cidr("kubernetes", "172.30.0.0/16"), "test")
    assert proxier.sync(objs).full
    objs.dirty = set()
    assert not proxier.sync(objs).full                   # nothing changed: a partial sync
    assert objs.update_service_cidr(ServiceCIDR("second", ["10.96.0.0/12", "fd00::/108"]))
    result = proxier.sync(objs)
    assert result.full and not result.error
    assert cluster_ips_check(node)[-1:] == [drop("10.96.0.0/12", "172.30.0.0/16")]
    assert not objs.update_service_cidr(ServiceCIDR("second", ["10.96.0.0/12", "fd00::/108"]))
    assert objs.delete_service_cidr("second") and objs.delete_service_cidr("kubernetes")
    assert proxier.sync(objs).full
    assert cluster_ips_check(node) == [REJECT]            # upstream: no ranges, no rule


def test_an_ipv6_proxier_takes_only_ipv6_ranges() -> None:
    node, proxier = proxier_without_ranges(family=6)
    objs = objects(service_cidr("kubernetes", "172.30.0.0/16", "fd00:10:96::/112"))
    assert not proxier.sync(objs).error
    listing = EmulatedNft(node, 6).list_table()
    assert 'ip6 daddr fd00:10:96::/112 drop comment "Drop traffic to unallocated ClusterIPs"' in listing
    assert "172.30.0.0" not in listing


def test_a_manifest_edit_of_service_cidrs_triggers_a_sync(tmp_path: Path) -> None:
    import yaml

    ranges = tmp_path / "servicecidr.yaml"
    ranges.write_text(yaml.safe_dump(service_cidr("kubernetes", "172.30.0.0/16")))
    node, proxier = proxier_without_ranges()
    seen: list[list[str]] = []          # the chain after each sync, read in the runner's thread
    runner = ProxyRunner(proxier, ManifestSource(str(tmp_path)), after_sync=lambda _: seen.append(cluster_ips_check(node)))
    stop = threading.Event()
    thread = threading.Thread(target=runner.loop, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(seen) >= 1)
        assert seen[0][-1:] == [drop("172.30.0.0/16")]
        ranges.write_text(yaml.safe_dump(service_cidr("kubernetes", "172.31.0.0/16")))
        wait_for(lambda: seen[-1][-1:] == [drop("172.31.0.0/16")])
        ranges.unlink()
        wait_for(lambda: seen[-1] == [REJECT])
    finally:
        stop.set()
        thread.join(timeout=5)


# ---- through the API ---------------------------------------------------------------------------------
def test_the_proxier_follows_service_cidrs_through_the_watch(api) -> None:  # type: ignore[no-untyped-def]
    assert api.objects["servicecidrs"] == {}
    api.put("servicecidrs", service_cidr("kubernetes", "10.96.0.0/16"))
    node, proxier = proxier_without_ranges(hostnameOverride="kind-worker")
    src = source(api)
    seen: list[list[str]] = []
    runner = ProxyRunner(proxier, src, after_sync=lambda _: seen.append(cluster_ips_check(node)))
    stop = threading.Event()
    thread = threading.Thread(target=runner.loop, args=(stop,), daemon=True)
    thread.start()
    try:
        # the first sync does not wait for the ServiceCIDRs (nor does upstream's): they may come with a later one
        wait_for(lambda: bool(seen) and seen[-1][-1:] == [drop("10.96.0.0/16")])
        api.put("servicecidrs", service_cidr("more", "10.100.0.0/16"))
        wait_for(lambda: seen[-1][-1:] == [drop("10.96.0.0/16", "10.100.0.0/16")])
        api.delete("servicecidrs", "", "kubernetes")
        wait_for(lambda: seen[-1][-1:] == [drop("10.100.0.0/16")])
        api.delete("servicecidrs", "", "more")
        wait_for(lambda: seen[-1] == [REJECT])
        assert any(path == "/apis/networking.k8s.io/v1/servicecidrs" and q.get("watch") == "true"
                   for path, q in api.requests)
    finally:
        stop.set()
        thread.join(timeout=5)
        src.close()
