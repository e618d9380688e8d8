"""The lab: the same cluster on real kernels (kp- namespaces, real traffic) and on emulated nodes.

Both run the scenarios below and must observe the same things: which pods answer, the peer address
the server sees, drops and rejects.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kproxy.lab.cluster import LabSpec

LAB = {
    "name": "t",
    "nodes": ["node-1", "node-2"],
    "deployments": [{"name": "web", "replicas": 3, "labels": {"app": "web"}},
                    {"name": "dns", "replicas": 1, "labels": {"app": "dns"}, "nodes": ["node-2"]}],
    "services": [
        {"name": "web", "clusterIP": "10.96.0.50", "type": "NodePort", "selector": {"app": "web"},
         "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080}]},
        {"name": "web-local", "clusterIP": "10.96.0.51", "type": "NodePort", "externalTrafficPolicy": "Local",
         "selector": {"app": "web"},
         "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30081}]},
        {"name": "dns-local", "clusterIP": "10.96.0.54", "type": "NodePort", "externalTrafficPolicy": "Local",
         "selector": {"app": "dns"},
         "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30082}]},
        {"name": "dns", "clusterIP": "10.96.0.10", "selector": {"app": "dns"},
         "ports": [{"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]},
        {"name": "sticky", "clusterIP": "10.96.0.52", "selector": {"app": "web"}, "sessionAffinity": "ClientIP",
         "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
        {"name": "empty", "clusterIP": "10.96.0.53", "selector": {"app": "nothing"},
         "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    ],
}
NODE1, NODE2, CLIENT = "192.168.50.11", "192.168.50.12", "192.168.50.100"
Request = Callable[..., str]


def pod_of(line: str) -> str:
    return line.split()[0].removeprefix("pod=") if line.startswith("pod=") else line


def peer_of(line: str) -> str:
    return line.split("peer=")[1].rsplit(":", 1)[0] if "peer=" in line else ""


def scenarios(request: Request) -> dict[str, object]:
    """What a cluster shows; ``request(src, dst, port, proto="tcp", sport=0)`` returns the answer line."""
    seen: dict[str, object] = {}
    seen["clusterip_pods"] = sorted({pod_of(request("web-0", "10.96.0.50", 80)) for _ in range(40)})
    same = request("client", NODE1, 30080)
    seen["nodeport_cluster_peer_is_client"] = peer_of(same) == CLIENT
    local = [request("client", NODE1, 30081) for _ in range(16)]    # 2 local endpoints: all 16 alike has p = 3e-5
    seen["nodeport_local_pods"] = sorted({pod_of(x) for x in local})
    seen["nodeport_local_peer"] = sorted({peer_of(x) for x in local})
    seen["local_without_endpoint"] = request("client", NODE1, 30082)
    seen["local_with_endpoint"] = pod_of(request("client", NODE2, 30082))
    sticky = {pod_of(request("web-1", "10.96.0.52", 80)) for _ in range(8)}
    seen["affinity_pods"] = len(sticky)
    seen["no_endpoints"] = request("web-0", "10.96.0.53", 80)
    seen["udp_dns"] = pod_of(request("web-0", "10.96.0.10", 53, "udp"))
    return seen


def check(seen: dict[str, object]) -> None:
    assert seen["clusterip_pods"] == ["web-0", "web-1", "web-2"]         # same node and other node
    assert seen["nodeport_cluster_peer_is_client"] is False              # masqueraded
    assert seen["nodeport_local_pods"] == ["web-0", "web-2"]             # node-1's own endpoints only
    assert seen["nodeport_local_peer"] == [CLIENT]                       # client address kept
    assert seen["local_without_endpoint"] == "timeout"                   # dropped
    assert seen["local_with_endpoint"] == "dns-0"
    assert seen["affinity_pods"] == 1
    assert seen["no_endpoints"] == "refused"                             # rejected at once
    assert seen["udp_dns"] == "dns-0"


MIXED = {**LAB, "nodes": [{"name": "node-1", "mode": "ipvs"}, "node-2"]}
MIXED_NFT = {**LAB, "nodes": [{"name": "node-1", "mode": "nftables"}, "node-2"]}


@pytest.mark.parametrize("description, modes", [(LAB, ["iptables", "iptables"]),
                                                 ({**LAB, "mode": "ipvs"}, ["ipvs", "ipvs"]),
                                                 ({**LAB, "mode": "nftables"}, ["nftables", "nftables"]),
                                                 (MIXED, ["ipvs", "iptables"]), (MIXED_NFT, ["nftables", "iptables"])],
                         ids=["iptables", "ipvs", "nftables", "mixed", "mixed-nftables"])
def test_emulated_lab_scenarios(description, modes):
    """Every mode (and a cluster of both) shows the same: where IPVS differs from the iptables rules (an
    ICMP port unreachable from a virtual server without real servers instead of kube-proxy's REJECT; a
    Local NodePort without local endpoints sent to a remote one unmasqueraded, whose answer the client
    drops), the client cannot tell."""
    from kproxy.lab.emulated import EmulatedLab
    from kproxy.proxy.proxier import proxier_class

    lab = EmulatedLab(LabSpec.from_dict(description))
    lab.sync()
    assert [type(p) for p in lab.proxiers.values()] == [proxier_class(m) for m in modes]
    for node, mode in zip(lab.nodes.values(), modes, strict=True):
        assert bool(node.ipvs.services) == (mode == "ipvs")
        assert (node.nftables is not None and node.nftables.find("ip", "kube-proxy") is not None) == (mode == "nftables")
    for node in lab.nodes.values():
        node.subsystems["rng"] = __import__("random").Random(5)
    check(scenarios(lambda src, dst, port, proto="tcp", sport=0: lab.request(src, dst, port, proto, sport).line()))


# ---- the real thing ----------------------------------------------------------------------------------------------
def running_lab(tmp_path_factory, description: dict, seconds: float = 20) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """A kernel lab of ``description`` up with its kproxies synced; taken down (every namespace) after."""
    from kproxy.lab.cluster import Lab, down, start_proxies
    from kproxy.lab.kernel import kernel_lab_reason

    reason = kernel_lab_reason()
    if reason:
        pytest.skip(reason)
    import yaml

    d = tmp_path_factory.mktemp("lab")
    (d / "description.yaml").write_text(yaml.safe_dump(description))
    spec = LabSpec.from_dict(description)
    state = Lab(spec, d).up()
    try:
        start_proxies(spec, state)
        wait_for(lambda: pod_of(probe(state, "web-0", "10.96.0.50", 80)).startswith("web-"), seconds)
        yield state
    finally:
        removed = down(state)
        assert len(removed) == len(state.namespaces())


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def kernel_lab(tmp_path_factory, request) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """The lab on the real kernel, its nodes' kproxies in each proxy mode the kernel can run here."""
    description = {**LAB, "mode": request.param}
    for state in running_lab(tmp_path_factory, description):
        state.description = description      # what its emulated twin is built from
        yield state


def probe(state, src: str, dst: str, port: int, proto: str = "tcp", sport: int = 0) -> str:  # type: ignore[no-untyped-def]
    from kproxy.lab.probe import probe as real_probe

    ns = state.client if src == "client" else next(p.netns for p in state.pods if p.name == src)
    return real_probe(ns, dst, port, udp=proto == "udp", sport=sport, timeout=1.0)


def wait_for(cond: Callable[[], bool], seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError("condition not reached in time")


@pytest.mark.kernel
def test_kernel_lab_scenarios_match_the_emulated_twin(kernel_lab):
    import subprocess

    from kproxy.lab.emulated import EmulatedLab

    for ns in kernel_lab.nodes.values():       # each node's kernel holds its mode's rules, and only those
        tables = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True,
                                text=True, check=True).stdout
        assert ("table ip kube-proxy" in tables) == (kernel_lab.description["mode"] == "nftables"), tables
    seen = scenarios(lambda src, dst, port, proto="tcp", sport=0: probe(kernel_lab, src, dst, port, proto, sport))
    check(seen)
    twin = EmulatedLab(LabSpec.from_dict(kernel_lab.description))
    twin.sync()
    assert scenarios(lambda s, d, p, proto="tcp", sport=0: twin.request(s, d, p, proto, sport).line()) == seen


@pytest.mark.kernel
def test_the_cli_reports_refused_and_dropped_requests_on_the_kernel_lab(kernel_lab):
    from click.testing import CliRunner

    import kproxy.cli.lab_cmd  # noqa: F401 - registers the lab group
    from kproxy.cli.main import cli

    def lab(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(cli, ["lab", *args[:1], "--dir", kernel_lab.dir, *args[1:]])

    status = lab("status")
    assert status.exit_code == 0 and f"client  {kernel_lab.client}" in status.output
    ok = lab("curl", "web-0", "10.96.0.50:80")
    assert ok.exit_code == 0 and ok.stdout.startswith("pod=web-"), ok.output
    for target, why in (("10.96.0.53:80", "connection refused (a TCP reset or ICMP port unreachable came back: "
                                          "rejected)"),
                        ("192.168.50.11:30082", "no answer (timed out: dropped on the way)")):
        where = "web-0" if target.startswith("10.96") else "client"
        res = lab("curl", where, target)
        assert (res.exit_code, res.stdout) == (1, "")
        assert res.stderr == f"Error: {where} -> {target}/tcp: {why}\n"
    bad = lab("curl", "client", "192.168.50.11")
    assert (bad.exit_code, bad.stderr) == (1, "Error: bad target '192.168.50.11': expected IPV4:PORT (e.g. "
                                              "10.96.0.50:80)\n")


@pytest.mark.kernel
def test_stale_udp_flow_follows_a_replaced_dns_pod(kernel_lab):
    """The client keeps its source port; after its DNS pod is replaced the next query reaches the new pod."""
    from kproxy.lab.cluster import replace_pod

    first = probe(kernel_lab, "web-0", "10.96.0.10", 53, "udp", sport=40053)
    assert pod_of(first) == "dns-0"
    new = replace_pod(kernel_lab, "dns-0")
    start = time.time()
    wait_for(lambda: pod_of(probe(kernel_lab, "web-0", "10.96.0.10", 53, "udp", sport=40053)) == new.name, 15)
    # Well before conntrack's own 30 s UDP timeout: the stale entry was deleted at the sync.
    assert time.time() - start < 10


def scale_down_and_up(state) -> None:  # type: ignore[no-untyped-def]
    """Scale web to one pod and back to three: the node port answers from one pod, then from three."""
    from kproxy.lab.cluster import scale

    scale(state, "web", 1)
    wait_for(lambda: {pod_of(probe(state, "client", NODE2, 30080)) for _ in range(12)} == {"web-0"}, 20)
    scale(state, "web", 3)
    wait_for(lambda: len({pod_of(probe(state, "client", NODE2, 30080)) for _ in range(30)}) == 3, 20)


@pytest.mark.kernel
def test_scaling_changes_the_answering_pods(kernel_lab):
    scale_down_and_up(kernel_lab)


@pytest.mark.kernel
def test_a_kernel_lab_in_ipvs_mode_fails_at_start_on_a_kernel_without_ipvs(tmp_path):
    from click.testing import CliRunner

    import kproxy.cli.lab_cmd  # noqa: F401 - registers the lab group
    from kproxy.cli.main import cli
    from kproxy.lab.kernel import kernel_lab_reason

    if kernel_lab_reason():
        pytest.skip(kernel_lab_reason())
    if Path("/proc/net/ip_vs").exists():
        pytest.skip("this kernel has IPVS")
    import yaml

    desc = tmp_path / "lab.yaml"
    desc.write_text(yaml.safe_dump(MIXED))
    before = Path("/run/netns").exists() and sorted(p.name for p in Path("/run/netns").iterdir())
    res = CliRunner().invoke(cli, ["lab", "up", str(desc), "--dir", str(tmp_path / "lab")])
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr == ("Error: cannot run the lab's kproxies on this kernel: node-1: proxy mode 'ipvs': this "
                          "kernel has no IPVS (no /proc/net/ip_vs: the ip_vs module is not loaded or not built); "
                          "load it with 'modprobe -a ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh nf_conntrack' or use "
                          "--mode iptables\n")
    assert not (tmp_path / "lab").exists()
    assert (Path("/run/netns").exists() and sorted(p.name for p in Path("/run/netns").iterdir())) == before


def test_lab_description_errors_name_the_field(tmp_path):
    from kproxy.lab.cluster import LabError

    with pytest.raises(LabError, match=r"deployments\[0\].nodes: no node node-9"):
        LabSpec.from_dict({"nodes": ["a"], "deployments": [{"name": "x", "nodes": ["node-9"]}]}, "lab.yaml")
    bad = Path(tmp_path / "lab.yaml")
    bad.write_text("nodes: [a\n")
    with pytest.raises(LabError, match=r"lab.yaml:2:1"):
        LabSpec.load(bad)
