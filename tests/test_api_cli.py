"""``kproxy proxy`` against the local API server: upstream's flags, the HTTP servers it runs
(healthz, livez, metrics, per-Service health checks), NodeCIDR from the Node, SIGTERM."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

import kproxy.cli.commands  # noqa: F401 - registers the tool subcommands
import kproxy.cli.proxy_cmd  # noqa: F401 - registers proxy
from kproxy.cli.main import cli
from kproxy.k8s.manifests import Objects
from kproxy.proxy.healthz import HealthState, ServiceHealthServers, serve

CLUSTER = json.loads((Path(__file__).parent / "data" / "api" / "cluster.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


@pytest.fixture
def kubeconfig(api, tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(api.kubeconfig()))
    return str(path)


def test_once_through_the_api_with_node_cidr_from_the_node(kubeconfig, tmp_path):
    cfg = tmp_path / "kp.yaml"
    cfg.write_text("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
                   f"clientConnection: {{kubeconfig: {kubeconfig}}}\n"
                   "detectLocalMode: NodeCIDR\nhostnameOverride: somewhere-else\n")
    state = tmp_path / "node.json"                # --hostname-override wins over the file, as in kube-proxy
    res = CliRunner().invoke(cli, ["--node", str(state), "proxy", "--config", str(cfg),
                                   "--hostname-override", "kind-worker", "--once"])
    assert res.exit_code == 0, res.output
    saved = CliRunner().invoke(cli, ["--node", str(state), "iptables-save", "-t", "nat"]).output
    assert "! -s 10.244.1.0/24" in saved                  # the Node's podCIDR is the local range
    assert "10.244.0.4:53" in saved and "10.96.0.1/32" in saved


def test_flags_override_the_config_and_bad_values_are_one_line_errors(kubeconfig, tmp_path):
    run = CliRunner().invoke
    res = run(cli, ["--node", str(tmp_path / "n.json"), "proxy", "--kubeconfig", kubeconfig,
                    "--healthz-bind-address", "localhost:10256", "--once"])
    assert res.exit_code == 2 and "Invalid value for --healthz-bind-address: 'localhost:10256': must be a " \
                                  "valid IP" in res.output and "Traceback" not in res.output
    res = run(cli, ["--node", str(tmp_path / "n.json"), "proxy", "--kubeconfig", kubeconfig, "--manifests",
                    str(tmp_path), "--once"])
    assert res.exit_code == 2 and "--manifests reads objects from files" in res.output
    res = run(cli, ["--node", str(tmp_path / "n.json"), "proxy", "--kubeconfig", str(tmp_path / "none"), "--once"])
    assert res.exit_code == 1 and res.output.startswith(f"Error: {tmp_path / 'none'}:")
    cfg = tmp_path / "kp.yaml"                    # as kube-proxy: the file wins over --kubeconfig ...
    cfg.write_text(f"clientConnection: {{kubeconfig: {tmp_path / 'none'}}}\nhealthzBindAddress: 127.0.0.1:1\n")
    res = run(cli, ["--node", str(tmp_path / "n.json"), "proxy", "--config", str(cfg), "--kubeconfig", kubeconfig,
                    "--healthz-bind-address", "bad", "--once"])
    assert res.exit_code == 1 and res.output.splitlines() == [
        "warning: --kubeconfig, --healthz-bind-address ignored: the --config file sets them, as in kube-proxy",
        f"Error: {tmp_path / 'none'}: Invalid kube-config file. No configuration found."]
    res = run(cli, ["--node", str(tmp_path / "n.json"), "proxy", "--config", str(cfg), "--master",
                    kubeconfig_server(kubeconfig), "--once"])
    assert res.exit_code == 1 and "none" in res.output    # ... --master only overrides its server


def kubeconfig_server(path: str) -> str:
    return str(yaml.safe_load(Path(path).read_text())["clusters"][0]["cluster"]["server"])


def test_proxy_serves_and_stops_cleanly_on_sigterm(api, kubeconfig, tmp_path):
    hz, mx = free_port(), free_port()
    env = dict(os.environ, KPROXY_NODE=str(tmp_path / "node.json"))
    proc = subprocess.Popen([sys.executable, "-m", "kproxy", "proxy", "--kubeconfig", kubeconfig,
                             "--hostname-override", "kind-worker", "--healthz-bind-address", f"127.0.0.1:{hz}",
                             "--metrics-bind-address", f"127.0.0.1:{mx}"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line and not line.startswith("sync "):         # log lines may come first
            line = proc.stderr.readline()
        assert line.startswith("sync full:") and line.rstrip().endswith("ok"), line
        code, headers, body = fetch(f"http://127.0.0.1:{hz}/healthz")
        assert code == 200 and headers["Content-Type"] == "application/json"
        assert body.startswith('{"lastUpdated": "') and body.endswith(', "nodeEligible": true}')
        assert fetch(f"http://127.0.0.1:{hz}/livez")[0] == 200
        assert "kubeproxy_sync_proxy_rules_duration_seconds_count 1.0" in fetch(f"http://127.0.0.1:{mx}/metrics")[2]
        assert "kubeproxy_proxy_healthz_total{code=\"200\"} 1.0" in fetch(f"http://127.0.0.1:{mx}/metrics")[2]
        dying = copy.deepcopy(CLUSTER["nodes"][0])
        dying["metadata"]["deletionTimestamp"] = "2026-12-03T10:00:00Z"
        api.put("nodes", dying)
        deadline = time.time() + 5
        while fetch(f"http://127.0.0.1:{hz}/healthz")[0] != 503 and time.time() < deadline:
            time.sleep(0.05)
        code, _, body = fetch(f"http://127.0.0.1:{hz}/healthz")
        assert code == 503 and body.endswith('"nodeEligible": false}')
        assert fetch(f"http://127.0.0.1:{hz}/livez")[0] == 200      # livez ignores the Node
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert api.watchers() == 0 or _eventually(lambda: api.watchers() == 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _eventually(cond: Any, seconds: float = 3.0) -> bool:
    end = time.time() + seconds
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_service_health_check_servers_answer_as_upstreams():
    port = free_port()
    objs = Objects()
    svc = copy.deepcopy(CLUSTER["services"][2])
    svc["spec"]["healthCheckNodePort"] = port
    objs.add({"kind": "Service", **svc}, "t")
    for es in CLUSTER["endpointslices"]:
        objs.add({"kind": "EndpointSlice", **es}, "t")
    health = HealthState(60)
    servers = ServiceHealthServers(["127.0.0.1"], health)
    try:
        servers.sync(objs, "kind-worker", None)
        code, headers, body = fetch(f"http://127.0.0.1:{port}/")
        assert code == 200 and headers["Content-Type"] == "application/json"
        assert body == ('{\n\t"service": {\n\t\t"namespace": "web",\n\t\t"name": "ingress"\n\t},\n'
                        '\t"localEndpoints": 1,\n\t"serviceProxyHealthy": true\n}')
        servers.sync(objs, "kind-worker3", ["web/ingress"])          # no endpoint on this node
        code, _, body = fetch(f"http://127.0.0.1:{port}/healthz")
        assert code == 503 and '"localEndpoints": 0' in body
        health.queued(time.time() - 120)                              # the proxier is behind: 503
        servers.sync(objs, "kind-worker", ["web/ingress"])
        code, _, body = fetch(f"http://127.0.0.1:{port}/")
        assert code == 503 and '"localEndpoints": 1,\n\t"serviceProxyHealthy": false' in body
        objs.services["web/ingress"].external_traffic_policy = "Cluster"
        servers.sync(objs, "kind-worker", ["web/ingress"])            # no longer Local: the server closes
        with pytest.raises(urllib.error.URLError):
            fetch(f"http://127.0.0.1:{port}/")
    finally:
        servers.close()


def test_metrics_server_paths_and_disabled_servers():
    health = HealthState(60)
    srvs = serve(health, None, "127.0.0.1:0", "")
    try:
        assert len(srvs) == 1
        base = f"http://127.0.0.1:{srvs[0].server_address[1]}"
        assert fetch(base + "/nothing")[0] == 404
        code, _, body = fetch(base + "/livez")
        assert code == 200 and body.startswith('{"lastUpdated": "') and "nodeEligible" not in body
        health.node_eligible = False
        assert fetch(base + "/healthz")[0] == 503 and fetch(base + "/livez")[0] == 200
    finally:
        for s in srvs:
            s.shutdown()
            s.server_close()
