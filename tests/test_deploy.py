"""The container build file and the deploy/ manifests: valid, shaped as upstream's kube-proxy
DaemonSet is, and their configuration accepted by kproxy's own strict decoder and command line."""

from __future__ import annotations

import re
from pathlib import Path

import click
import yaml

from kproxy.cli.proxy_cmd import proxy_cmd
from kproxy.proxy.config import ProxyConfig

ROOT = Path(__file__).resolve().parents[1]


def docs() -> dict[str, dict]:
    loaded = list(yaml.safe_load_all((ROOT / "deploy" / "kproxy.yaml").read_text()))
    assert all(isinstance(d, dict) for d in loaded)
    by_kind = {d["kind"]: d for d in loaded}
    assert len(by_kind) == len(loaded) == 5
    return by_kind


def test_manifests_hold_what_a_kube_proxy_deployment_holds():
    assert set(docs()) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"}


def test_daemonset_runs_on_the_host_network_privileged_with_kube_proxys_mounts():
    ds = docs()["DaemonSet"]
    assert ds["apiVersion"] == "apps/v1" and ds["metadata"]["namespace"] == "kube-system"
    assert ds["spec"]["selector"]["matchLabels"] == ds["spec"]["template"]["metadata"]["labels"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["serviceAccountName"] == docs()["ServiceAccount"]["metadata"]["name"]
    (container,) = pod["containers"]
    assert container["securityContext"]["privileged"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    lock = volumes[mounts["/run/xtables.lock"]["name"]]["hostPath"]
    assert lock == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
    assert mounts["/run/xtables.lock"]["readOnly"] is False
    assert volumes[mounts["/lib/modules"]["name"]]["hostPath"]["path"] == "/lib/modules"
    assert mounts["/lib/modules"]["readOnly"] is True
    config_volume = volumes[next(m["name"] for p, m in mounts.items() if p == "/var/lib/kproxy")]
    assert config_volume["configMap"]["name"] == docs()["ConfigMap"]["metadata"]["name"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_daemonset_arguments_are_kproxy_proxy_flags_and_name_the_mounted_config():
    container = docs()["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    known = {opt for p in proxy_cmd.params if isinstance(p, click.Option) for opt in p.opts}
    for arg in container["args"]:
        assert arg.split("=", 1)[0] in known, arg
    assert "--config=/var/lib/kproxy/config.conf" in container["args"]
    assert "--dry-run" in container["args"]           # as shipped: beside kube-proxy, applying nothing
    probe = container["livenessProbe"]["httpGet"]
    cfg = ProxyConfig.from_dict(yaml.safe_load(docs()["ConfigMap"]["data"]["config.conf"]))
    assert cfg.healthz_bind_address.endswith(f":{probe['port']}") and probe["path"] == "/livez"


def test_configmap_config_decodes_strictly_and_keeps_off_kube_proxys_ports():
    text = docs()["ConfigMap"]["data"]["config.conf"]
    cfg = ProxyConfig.from_dict(yaml.safe_load(text), "config.conf")
    assert cfg.mode == "iptables"
    assert cfg.healthz_bind_address == "0.0.0.0:10356" and cfg.metrics_bind_address == "127.0.0.1:10349"


def test_rbac_grants_what_the_watch_needs():
    d = docs()
    rules = d["ClusterRole"]["rules"]

    def verbs(group: str, resource: str) -> set[str]:
        return {v for r in rules if group in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}

    assert {"list", "watch"} <= verbs("", "services")
    assert {"list", "watch"} <= verbs("discovery.k8s.io", "endpointslices")
    assert {"get", "list", "watch"} <= verbs("", "nodes")
    binding = d["ClusterRoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": d["ClusterRole"]["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": d["ServiceAccount"]["metadata"]["name"],
                                    "namespace": "kube-system"}]


def test_containerfile_is_debian_slim_with_the_netfilter_tools_and_runs_kproxy_proxy():
    text = (ROOT / "Containerfile").read_text()
    assert re.search(r"^FROM \S*debian:\S*-slim$", text, re.M)
    install = re.search(r"apt-get install[^&]*", text, re.S)
    assert install is not None
    for package in ("iptables", "nftables", "ipset", "conntrack", "iproute2"):
        assert re.search(rf"\b{package}\b", install.group(0)), package
    assert 'ENTRYPOINT ["kproxy", "proxy"]' in text
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), path
