"""The kernel lab with ``source: api``: one lab API server (kproxy.lab.apiserver), every node's kproxy
watching it, and the real-traffic scenarios and scaling passing through the watch path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tests.test_lab import LAB, check, probe, running_lab, scale_down_and_up, scenarios

from kproxy.k8s.fakeapi import FakeAPIServer
from kproxy.lab.apiserver import ManifestFollower
from kproxy.lab.cluster import LabError, LabSpec

API_LAB = {**LAB, "source": "api"}


def test_source_is_checked():
    assert LabSpec.from_dict(API_LAB).source == "api"
    assert LabSpec.from_dict(LAB).source == "manifests"
    with pytest.raises(LabError, match=r"<lab>: source: 'etcd' is not one of manifests, api"):
        LabSpec.from_dict({**LAB, "source": "etcd"})


def test_the_follower_turns_file_rewrites_into_api_events(tmp_path):
    path = tmp_path / "m.yaml"

    def write(*names: str) -> None:
        items = [{"kind": "Service", "metadata": {"name": n, "namespace": "default"},
                  "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80}]}} for n in names]
        path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))

    with FakeAPIServer() as api:
        follower = ManifestFollower(api, path)
        write("a", "b")
        assert follower.poll() == 2 and follower.poll() == 0
        write("b", "c")
        assert follower.poll() == 2
        assert sorted(name for _, name in api.objects["services"]) == ["b", "c"]
        assert [e.type for e in api.history] == ["ADDED", "ADDED", "ADDED", "DELETED"]


@pytest.fixture(scope="module")
def api_lab(tmp_path_factory) -> Iterator[object]:
    yield from running_lab(tmp_path_factory, API_LAB, seconds=30)


@pytest.mark.kernel
def test_nodes_watch_the_lab_api_server_and_pass_the_scenarios(api_lab):
    assert api_lab.api and api_lab.api_pid
    for node in api_lab.nodes:
        cfg = yaml.safe_load(Path(api_lab.dir, f"{node}-config.yaml").read_text())
        assert cfg["clientConnection"]["kubeconfig"] == str(Path(api_lab.dir, "kubeconfig.yaml"))
        cmdline = Path(f"/proc/{api_lab.proxies[node]}/cmdline").read_bytes().split(b"\0")
        assert b"--manifests" not in cmdline        # the objects come only from the API server
    check(scenarios(lambda src, dst, port, proto="tcp", sport=0: probe(api_lab, src, dst, port, proto, sport)))
    from click.testing import CliRunner

    import kproxy.cli.lab_cmd  # noqa: F401 - registers the lab group
    from kproxy.cli.main import cli

    status = CliRunner().invoke(cli, ["lab", "status", "--dir", api_lab.dir])
    assert f"  api     {api_lab.api}" in status.output and f"server pid {api_lab.api_pid}" in status.output


@pytest.mark.kernel
def test_scaling_reaches_the_nodes_through_watch_events(api_lab):
    scale_down_and_up(api_lab)


# ---- the emulated twin, through the same watch path ------------------------------------------------------------
def _watch_requests(lab) -> set[str]:  # type: ignore[no-untyped-def]
    """The resources some client watches on the lab's API server."""
    return {path.rsplit("/", 1)[-1] for path, query in lab.api.requests if query.get("watch") in ("true", "1", "True")}


@pytest.mark.parametrize("mode", ["iptables", "ipvs", "nftables"])
def test_emulated_nodes_watch_the_lab_api_server_and_pass_the_scenarios(mode):
    from kproxy.lab.emulated import EmulatedLab

    with EmulatedLab(LabSpec.from_dict({**API_LAB, "mode": mode})) as lab:
        lab.sync()
        assert lab.api is not None and sorted(lab.sources) == ["node-1", "node-2"]
        assert _watch_requests(lab) == {"services", "endpointslices", "nodes", "servicecidrs"}
        for name, source in lab.sources.items():           # each node lists and watches only itself
            assert [n.name for n in source.objects.nodes.values()] == [name]
        for node in lab.nodes.values():
            node.subsystems["rng"] = __import__("random").Random(5)
        check(scenarios(lambda src, dst, port, proto="tcp", sport=0: lab.request(src, dst, port, proto, sport).line()))
    assert lab.api is None and not lab.sources


def test_emulated_scaling_reaches_the_nodes_through_watch_events():
    """Scaling changes the API server's EndpointSlices; each node's watch delivers only those, so the
    nodes' syncs are partial, and the node port answers from one pod, then from three."""
    from tests.test_lab import NODE2, pod_of

    from kproxy.lab.emulated import EmulatedLab

    with EmulatedLab(LabSpec.from_dict(API_LAB)) as lab:
        lab.sync()
        syncs: list[bool] = []
        def recorded(real):  # type: ignore[no-untyped-def]
            def sync(objs, *args, **kw):  # type: ignore[no-untyped-def]
                result = real(objs, *args, **kw)
                syncs.append(result.full)
                return result
            return sync

        for proxier in lab.proxiers.values():
            proxier.sync = recorded(proxier.sync)

        def answering() -> set[str]:
            return {pod_of(lab.request("client", NODE2, 30080).line()) for _ in range(30)}

        lab.scale("web", 1)
        assert answering() == {"web-0"}
        lab.scale("web", 3)
        assert answering() == {"web-0", "web-1", "web-2"}
        assert syncs == [False] * 4                 # two nodes, two changes: partial syncs only
        modified = [e for e in lab.api.history if e.type == "MODIFIED"]
        assert modified and {e.resource for e in modified} == {"endpointslices"}
