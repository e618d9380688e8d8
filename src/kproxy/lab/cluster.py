"""A Kubernetes cluster of network namespaces on one machine, with real traffic.

Topology (every namespace named ``kp-<lab>-<role>``, all removed by ``down``):

    client (192.168.50.100) ─┐
                             ├─ fabric (bridge br0)
    node-1 eth0 .11 ─────────┤        each node: ip_forward, routes to the other nodes' pod CIDRs
    node-2 eth0 .12 ─────────┘        each pod:  eth0 10.244.N.K/32, default via 10.244.N.1 onlink
                                      node side: veth with 10.244.N.1/32 and a /32 route per pod

Pods are routed, not bridged (as Calico does), so every pod packet crosses the node's netfilter
path: kube-proxy's rules see it without br_netfilter. Each pod runs ``kproxy.lab.server``; each
node can run one kproxy process syncing its own namespace (a DaemonSet of one per node).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kproxy.lab.netns import Netns
from kproxy.yamlfile import load_yaml


class LabError(ValueError):
    """A bad lab description (the message names the field) or a failed lab operation."""


@dataclass
class DeploymentSpec:
    name: str
    namespace: str = "default"
    replicas: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    tcp: list[int] = field(default_factory=lambda: [8080])
    udp: list[int] = field(default_factory=lambda: [5353])
    nodes: list[str] = field(default_factory=list)   # placement; empty = round robin over all nodes


SOURCES = ("manifests", "api")
API_PORT = 6443


@dataclass
class LabSpec:
    name: str
    nodes: list[str]
    services: list[dict[str, Any]]
    deployments: list[DeploymentSpec]
    network: str = "192.168.50.0/24"
    cluster_cidr: str = "10.244.0.0/16"
    modes: dict[str, str] = field(default_factory=dict)    # node name -> proxy mode (absent: iptables)
    source: str = "manifests"     # how node kproxies get objects: a watched file, or ``api``: the lab's API server

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LabSpec:
        return cls.from_dict(read_description(path), str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<lab>") -> LabSpec:
        if not isinstance(data, dict):
            raise LabError(f"{source}: a lab description must be a mapping")
        nodes = data.get("nodes")
        if not isinstance(nodes, list) or not nodes or len(nodes) > 9:
            raise LabError(f"{source}: nodes: a list of 1 to 9 node names")
        names = [str(n["name"] if isinstance(n, dict) and "name" in n else n) for n in nodes]
        default = _mode(data.get("mode", "iptables"), f"{source}: mode")
        modes = {name: _mode(n.get("mode", default), f"{source}: nodes[{i}].mode") if isinstance(n, dict) else default
                 for i, (name, n) in enumerate(zip(names, nodes, strict=True))}
        network = _network(data.get("network", "192.168.50.0/24"), f"{source}: network", 25)
        cluster_cidr = _network(data.get("clusterCIDR", "10.244.0.0/16"), f"{source}: clusterCIDR",
                                24 - (len(names)).bit_length())
        deps = [_deployment(d, f"{source}: deployments[{i}]", names)
                for i, d in enumerate(data.get("deployments") or [])]
        services = list(data.get("services") or [])
        for i, svc in enumerate(services):
            _check_service(svc, f"{source}: services[{i}]")
        objects_from = str(data.get("source", "manifests"))
        if objects_from not in SOURCES:
            raise LabError(f"{source}: source: {objects_from!r} is not one of {', '.join(SOURCES)}")
        return cls(str(data.get("name", "lab")), names, services, deps, network, cluster_cidr, modes,
                   objects_from)

    def mode(self, node: str) -> str:
        """The proxy mode of ``node``'s kproxy."""
        return self.modes.get(node, "iptables")

    def node_ip(self, index: int) -> str:
        return str(ipaddress.ip_network(self.network)[11 + index])

    def api_ip(self) -> str:
        """Where the lab's API server listens (``source: api``), on the nodes' network."""
        return str(ipaddress.ip_network(self.network)[5])

    def client_ip(self) -> str:
        return str(ipaddress.ip_network(self.network)[100])

    def pod_cidr(self, index: int) -> str:
        base = ipaddress.ip_network(self.cluster_cidr)
        return str(list(base.subnets(new_prefix=24))[index + 1])


def read_description(path: str | os.PathLike[str]) -> Any:
    """A lab description file's YAML; a LabError (file:line:col for syntax) when it is missing or malformed."""
    if not Path(path).is_file():
        raise LabError(f"{path}: no lab description there")
    return load_yaml(path, LabError)


def _network(value: Any, where: str, max_prefixlen: int) -> str:
    """An IPv4 network with room for what the lab puts in it (node and client addresses, pod /24s)."""
    try:
        net = ipaddress.IPv4Network(str(value))
    except ValueError:
        raise LabError(f"{where}: {value!r} is not an IPv4 network (ADDRESS/PREFIX)") from None
    if net.prefixlen > max_prefixlen:
        raise LabError(f"{where}: {net} is too small for this lab (/{max_prefixlen} or larger)")
    return str(net)


def _mode(value: Any, where: str) -> str:
    """A proxy mode this kproxy has (the lab runs every node's kproxy in its mode)."""
    from kproxy.proxy.proxier import MODES

    if value not in MODES:
        names = sorted(MODES)
        raise LabError(f"{where}: {value!r} is not a proxy mode ({', '.join(names[:-1])} or {names[-1]})")
    return str(value)


def _address(value: Any, where: str) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise LabError(f"{where}: {value!r} is not an IPv4 address") from None


def _number(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise LabError(f"{where}: {value!r} is not a number")
    n = int(value)
    if not low <= n <= high:
        raise LabError(f"{where}: {n} is out of range ({low} to {high})")
    return n


def _ports(value: Any, where: str) -> list[int]:
    if not isinstance(value, list):
        raise LabError(f"{where}: a list of ports")
    return [_number(p, f"{where}[{i}]", 1, 65535) for i, p in enumerate(value)]


def _deployment(d: Any, where: str, nodes: list[str]) -> DeploymentSpec:
    if not isinstance(d, dict) or "name" not in d:
        raise LabError(f"{where}: needs a name")
    placed = [str(n) for n in d.get("nodes", [])]
    for n in placed:
        if n not in nodes:
            raise LabError(f"{where}.nodes: no node {n}")
    labels = d.get("labels") or {"app": d["name"]}
    if not isinstance(labels, dict):
        raise LabError(f"{where}.labels: a mapping of label names to values")
    return DeploymentSpec(str(d["name"]), str(d.get("namespace", "default")),
                          _number(d.get("replicas", 1), f"{where}.replicas", 0, 200),
                          {str(k): str(v) for k, v in labels.items()},
                          _ports(d.get("tcp", [8080]), f"{where}.tcp"), _ports(d.get("udp", [5353]), f"{where}.udp"),
                          placed)


def _check_service(svc: Any, where: str) -> None:
    """A Service as ``manifests`` turns it into objects: every address and port it reads must be valid."""
    if not isinstance(svc, dict) or "name" not in svc or "clusterIP" not in svc:
        raise LabError(f"{where}: needs name and clusterIP")
    _address(svc["clusterIP"], f"{where}.clusterIP")
    for key in ("externalIPs",):
        for i, a in enumerate(svc.get(key) or []):
            _address(a, f"{where}.{key}[{i}]")
    if "loadBalancerIP" in svc:
        _address(svc["loadBalancerIP"], f"{where}.loadBalancerIP")
    ports = svc.get("ports") or []
    if not isinstance(ports, list):
        raise LabError(f"{where}.ports: a list of ports")
    for i, p in enumerate(ports):
        at = f"{where}.ports[{i}]"
        if not isinstance(p, dict) or "port" not in p:
            raise LabError(f"{at}: needs a port")
        _number(p["port"], f"{at}.port", 1, 65535)
        _number(p.get("targetPort", p["port"]), f"{at}.targetPort", 1, 65535)
        if "nodePort" in p:
            _number(p["nodePort"], f"{at}.nodePort", 1, 65535)
        if p.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            raise LabError(f"{at}.protocol: {p.get('protocol')!r} is not TCP, UDP or SCTP")


@dataclass
class Pod:
    name: str
    namespace: str
    deployment: str
    node: str
    ip: str
    labels: dict[str, str]
    netns: str = ""
    host_if: str = ""
    pid: int = 0


@dataclass
class LabState:
    """What ``up`` made, persisted so that ``status``, ``exec`` and ``down`` find it."""

    name: str
    dir: str
    fabric: str = ""
    client: str = ""
    nodes: dict[str, str] = field(default_factory=dict)       # node name -> namespace
    pods: list[Pod] = field(default_factory=list)
    proxies: dict[str, int] = field(default_factory=dict)      # node name -> kproxy pid
    next_pod: int = 1                                            # pod namespace/veth numbers are never reused
    used_ips: list[str] = field(default_factory=list)            # nor are pod addresses (a new pod is a new IP)
    emulated: bool = False                                       # ``up --emulated``: no namespaces, no processes
    api: str = ""                                                # the API server's namespace (``source: api``)
    api_pid: int = 0

    def save(self) -> None:
        Path(self.dir, "state.json").write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> LabState:
        p = Path(directory, "state.json")
        if not p.exists():
            raise LabError(f"no lab in {directory} (run `kproxy lab up` first)")
        try:
            data = json.loads(p.read_text())
            data["pods"] = [Pod(**pd) for pd in data.get("pods", [])]
            return cls(**data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise LabError(f"{p}: not a lab state file ({exc})") from None

    def namespaces(self) -> list[str]:
        return [n for n in [self.client, self.api, *self.nodes.values(), *(p.netns for p in self.pods), self.fabric]
                if n]


def placements(spec: LabSpec) -> list[tuple[DeploymentSpec, int, str]]:
    """Which node each replica runs on: the deployment's nodes in turn, else round robin over all nodes."""
    out = []
    rr = 0
    for dep in spec.deployments:
        for k in range(dep.replicas):
            node = dep.nodes[k % len(dep.nodes)] if dep.nodes else spec.nodes[rr % len(spec.nodes)]
            rr += 1
            out.append((dep, k, node))
    return out


def _ip(*argv: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {proc.stderr.strip()}")


def _sysctl(ns: str, key: str, value: str) -> None:
    Netns(ns).run(["sysctl", "-qw", f"{key}={value}"])


class Lab:
    """Builds, inspects and tears down a lab; every namespace it makes is recorded before use."""

    def __init__(self, spec: LabSpec, directory: str | os.PathLike[str]) -> None:
        self.spec = spec
        self.dir = Path(directory)
        self.id = secrets.token_hex(2)
        self.state = LabState(spec.name, str(self.dir))

    def _ns(self, role: str) -> str:
        name = f"kp-{self.id}-{role}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        _ip("link", "set", "lo", "up", ns=name)
        return name

    def up(self) -> LabState:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._build()
        except BaseException:
            down(self.state)
            raise
        self.state.save()
        return self.state

    def _build(self) -> None:
        s, st = self.spec, self.state
        st.fabric = self._ns("fab")
        st.save()
        _ip("link", "add", "br0", "type", "bridge", ns=st.fabric)
        _ip("link", "set", "br0", "up", ns=st.fabric)
        st.client = self._ns("client")
        st.save()
        self._attach(st.client, "cl", s.client_ip())
        prefix = ipaddress.ip_network(s.network).prefixlen
        if s.source == "api":
            st.api = self._ns("api")
            st.save()
            self._attach(st.api, "api", s.api_ip(), prefix)
        for i, node in enumerate(s.nodes):
            ns = self._ns(f"n{i + 1}")
            st.nodes[node] = ns
            st.save()
            self._attach(ns, f"n{i + 1}", s.node_ip(i), prefix)
            _sysctl(ns, "net.ipv4.ip_forward", "1")
            for j, _other in enumerate(s.nodes):
                if j != i:
                    _ip("route", "add", s.pod_cidr(j), "via", s.node_ip(j), ns=ns)
            # Everything else (Service IPs without endpoints, the outside world) leaves towards the client.
            _ip("route", "add", "default", "via", s.client_ip(), ns=ns)
        self._place_pods()
        st.save()

    def _attach(self, ns: str, tag: str, addr: str, prefix: int = 24) -> None:
        fab = self.state.fabric
        _ip("link", "add", f"v-{tag}", "type", "veth", "peer", "name", "eth0", "netns", ns, ns=fab)
        _ip("link", "set", f"v-{tag}", "master", "br0", "up", ns=fab)
        _ip("addr", "add", f"{addr}/{prefix}", "dev", "eth0", ns=ns)
        _ip("link", "set", "eth0", "up", ns=ns)

    def _place_pods(self) -> None:
        for dep, k, node in placements(self.spec):
            self.add_pod(dep, k, node)

    def add_pod(self, dep: DeploymentSpec, k: int, node: str) -> Pod:
        st = self.state
        idx = self.spec.nodes.index(node)
        used = {p.ip for p in st.pods} | set(st.used_ips)
        cidr = ipaddress.ip_network(self.spec.pod_cidr(idx))
        host = next(h for h in list(cidr.hosts())[9:] if str(h) not in used)
        gw = str(cidr[1])
        pod = Pod(f"{dep.name}-{k}", dep.namespace, dep.name, node, str(host), dict(dep.labels))
        st.used_ips.append(str(host))
        n = st.next_pod
        st.next_pod += 1
        pod.netns = self._ns(f"p{n}")
        pod.host_if = f"vp{n}"
        st.pods.append(pod)
        st.save()
        node_ns = st.nodes[node]
        _ip("link", "add", pod.host_if, "type", "veth", "peer", "name", "eth0", "netns", pod.netns, ns=node_ns)
        _ip("addr", "add", f"{gw}/32", "dev", pod.host_if, ns=node_ns)
        _ip("link", "set", pod.host_if, "up", ns=node_ns)
        _ip("route", "add", f"{pod.ip}/32", "dev", pod.host_if, ns=node_ns)
        _ip("addr", "add", f"{pod.ip}/32", "dev", "eth0", ns=pod.netns)
        _ip("link", "set", "eth0", "up", ns=pod.netns)
        _ip("route", "add", gw, "dev", "eth0", ns=pod.netns)
        _ip("route", "add", "default", "via", gw, "dev", "eth0", ns=pod.netns)
        argv = [sys.executable, "-m", "kproxy.lab.server", "--name", pod.name]
        for p in dep.tcp:
            argv += ["--tcp", str(p)]
        for p in dep.udp:
            argv += ["--udp", str(p)]
        proc = subprocess.Popen(["ip", "netns", "exec", pod.netns, *argv], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        pod.pid = proc.pid
        st.save()
        return pod


def down(state: LabState) -> list[str]:
    """Stop every process the lab started and delete its namespaces; returns the namespaces removed."""
    for pid in [*(p.pid for p in state.pods), *state.proxies.values(), state.api_pid]:
        if pid:
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
    removed = []
    for ns in state.namespaces():
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid_text in pids:
            try:
                os.kill(int(pid_text), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        if subprocess.run(["ip", "netns", "del", ns], capture_output=True).returncode == 0:
            removed.append(ns)
    state_file = Path(state.dir, "state.json")
    if state_file.exists():
        state_file.unlink()
    return removed


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def manifests(spec: LabSpec, state: LabState) -> list[dict[str, Any]]:
    """Services as described and the EndpointSlices the endpoint controller would make for the pods."""
    objs: list[dict[str, Any]] = []
    for svc in spec.services:
        ns = str(svc.get("namespace", "default"))
        ports = []
        for p in svc.get("ports") or []:
            port = {"name": p.get("name", ""), "port": int(p["port"]), "protocol": p.get("protocol", "TCP"),
                    "targetPort": p.get("targetPort", p["port"])}
            if "nodePort" in p:
                port["nodePort"] = int(p["nodePort"])
            ports.append(port)
        body: dict[str, Any] = {"type": svc.get("type", "ClusterIP"), "clusterIP": svc["clusterIP"],
                                "clusterIPs": [svc["clusterIP"]], "ipFamilies": ["IPv4"], "ports": ports,
                                "selector": dict(svc.get("selector") or {})}
        for key in ("externalTrafficPolicy", "internalTrafficPolicy", "sessionAffinity", "externalIPs",
                    "healthCheckNodePort", "sessionAffinityConfig", "loadBalancerSourceRanges"):
            if key in svc:
                body[key] = svc[key]
        obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
                               "metadata": {"name": svc["name"], "namespace": ns}, "spec": body}
        if "loadBalancerIP" in svc:
            obj["status"] = {"loadBalancer": {"ingress": [{"ip": svc["loadBalancerIP"]}]}}
        objs.append(obj)
        pods = [p for p in state.pods if p.namespace == ns and _matches(body["selector"], p.labels)]
        eps = [{"addresses": [p.ip], "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": p.node, "targetRef": {"kind": "Pod", "name": p.name, "namespace": ns}} for p in pods]
        slice_ports = [{"name": p["name"], "port": int(p["targetPort"]), "protocol": p["protocol"]} for p in ports]
        objs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": f"{svc['name']}-lab", "namespace": ns,
                                  "labels": {"kubernetes.io/service-name": svc["name"]}},
                     "addressType": "IPv4", "endpoints": eps, "ports": slice_ports})
    for i, node in enumerate(spec.nodes):
        objs.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
                     "spec": {"podCIDR": spec.pod_cidr(i), "podCIDRs": [spec.pod_cidr(i)]},
                     "status": {"addresses": [{"type": "InternalIP", "address": spec.node_ip(i)}]}})
    return objs


def pod_objects(state: LabState) -> list[dict[str, Any]]:
    """The lab's pods as Pod objects (running and ready): what ``kproxy lab doctor`` matches selectors against."""
    return [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": p.name, "namespace": p.namespace,
                                                           "labels": dict(p.labels)},
             "spec": {"nodeName": p.node},
             "status": {"podIP": p.ip, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
            for p in state.pods]


def write_manifests(spec: LabSpec, state: LabState) -> Path:
    """Write the cluster's objects where every node's kproxy watches them (atomically)."""
    path = Path(state.dir, "manifests.yaml")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": manifests(spec, state)},
                                  sort_keys=False))
    os.replace(tmp, path)
    return path


def proxy_config(spec: LabSpec, node: str, kubeconfig: str = "") -> str:
    """The KubeProxyConfiguration each node's kproxy runs with (``kubeconfig``: it watches the lab's API server)."""
    cfg: dict[str, Any] = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
                           "mode": spec.mode(node), "clusterCIDR": spec.cluster_cidr, "hostnameOverride": node,
                           "syncPeriod": "30s", "minSyncPeriod": "200ms",
                           "metricsBindAddress": "127.0.0.1:10249", "healthzBindAddress": "127.0.0.1:10256"}
    if kubeconfig:
        cfg["clientConnection"] = {"kubeconfig": kubeconfig}
    return yaml.safe_dump(cfg, sort_keys=False)


def modes_unavailable(spec: LabSpec) -> str:
    """Why this machine's kernel cannot run the nodes' proxy modes ("" when it can): the same words
    ``kproxy proxy`` says at start. Only looks (at /proc/net/ip_vs, nft's version and features), so
    nothing is built in vain."""
    from kproxy.backends.kernel import KernelBackend
    from kproxy.backends.nft import KernelNft

    why = []
    ipvs_nodes = [n for n in spec.nodes if spec.mode(n) == "ipvs"]
    if ipvs_nodes and KernelBackend().ipvs_unavailable():
        why.append(f"{', '.join(ipvs_nodes)}: proxy mode 'ipvs': {KernelBackend().ipvs_unavailable()}")
    nft_nodes = [n for n in spec.nodes if spec.mode(n) == "nftables"]
    missing = KernelNft().check() if nft_nodes else ""
    if missing:
        why.append(f"{', '.join(nft_nodes)}: proxy mode 'nftables' cannot run here: {missing}")
    return "; ".join(why)


def start_api_server(spec: LabSpec, state: LabState, manifests_path: Path, timeout: float = 15.0) -> str:
    """Start the lab's API server in its namespace, following ``manifests_path``; returns the path of
    the kubeconfig that points the nodes' kproxies at it, once it listens."""
    log_path = Path(state.dir, "apiserver.log")
    log = open(log_path, "w")  # noqa: SIM115 - handed to the child
    argv = [sys.executable, "-m", "kproxy.lab.apiserver", "--manifests", str(manifests_path),
            "--host", spec.api_ip(), "--port", str(API_PORT)]
    proc = subprocess.Popen(["ip", "netns", "exec", state.api, *argv], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    state.api_pid = proc.pid
    state.save()
    deadline = time.monotonic() + timeout
    while "serving " not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"the lab's API server did not start (see {log_path})")
        time.sleep(0.05)
    url = f"http://{spec.api_ip()}:{API_PORT}"
    kubeconfig = Path(state.dir, "kubeconfig.yaml")
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": url}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
        "users": [{"name": "lab", "user": {"token": "lab"}}]}, sort_keys=False))
    return str(kubeconfig)


def start_proxies(spec: LabSpec, state: LabState) -> None:
    """One kproxy per node, in the node's namespace, syncing the kernel there from the shared manifests
    (or, with ``source: api``, from the lab's API server, which follows them)."""
    manifests_path = write_manifests(spec, state)
    kubeconfig = start_api_server(spec, state, manifests_path) if spec.source == "api" else ""
    for node, ns in state.nodes.items():
        cfg = Path(state.dir, f"{node}-config.yaml")
        cfg.write_text(proxy_config(spec, node, kubeconfig))
        log = open(Path(state.dir, f"{node}-kproxy.log"), "w")  # noqa: SIM115 - handed to the child
        source = [] if kubeconfig else ["--manifests", str(manifests_path)]
        argv = [sys.executable, "-m", "kproxy", "--node", str(Path(state.dir, f"{node}-state.json")), "proxy",
                "--backend", "kernel", "--config", str(cfg), *source]
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        state.proxies[node] = proc.pid
    state.save()


def wait_for_proxies(state: LabState, timeout: float = 30.0) -> None:
    """Return once every node's kproxy has synced its kernel (its log reports the first sync), so the
    next command meets the Services' rules; a LabError naming the node whose sync failed or never came."""
    deadline = time.monotonic() + timeout
    pending = set(state.proxies)
    while pending:
        for node in sorted(pending):
            log = Path(state.dir, f"{node}-kproxy.log")
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            synced = [line for line in lines if line.startswith("sync ")]
            if synced and synced[0].endswith(", ok"):
                pending.discard(node)
            elif synced or (lines and time.monotonic() > deadline):
                raise LabError(f"kproxy on {node} failed: {(synced or lines)[-1]} (see {log})")
        if pending and time.monotonic() > deadline:
            raise LabError(f"kproxy on {', '.join(sorted(pending))} did not sync within {timeout:g} s "
                           f"(see {state.dir}/NODE-kproxy.log)")
        if pending:
            time.sleep(0.1)


def scale(state: LabState, deployment: str, replicas: int) -> None:
    """Add or remove pods of a deployment and rewrite the manifests the node kproxies watch."""
    spec = LabSpec.load(Path(state.dir, "description.yaml"))
    dep = next((d for d in spec.deployments if d.name == deployment), None)
    if dep is None:
        raise LabError(f"no deployment {deployment}")
    if replicas < 0:
        raise LabError("replicas must be 0 or more")
    lab = Lab(spec, state.dir)
    lab.state = state
    lab.id = state.fabric.split("-")[1]
    mine = [p for p in state.pods if p.deployment == deployment]
    for pod in mine[replicas:]:
        _stop_pod(pod, state)
        state.pods.remove(pod)
    existing = {p.name for p in state.pods}
    k = 0
    while len([p for p in state.pods if p.deployment == deployment]) < replicas:
        if f"{dep.name}-{k}" not in existing:
            targets = dep.nodes or spec.nodes
            lab.add_pod(dep, k, targets[k % len(targets)])
        k += 1
    state.save()
    if state.proxies:
        write_manifests(spec, state)


def _stop_pod(pod: Pod, state: LabState) -> None:
    node_ns = state.nodes.get(pod.node)
    if node_ns and pod.host_if:
        subprocess.run(["ip", "-n", node_ns, "link", "del", pod.host_if], capture_output=True)
    if pod.pid:
        try:
            os.killpg(pod.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    subprocess.run(["ip", "netns", "del", pod.netns], capture_output=True)


def replace_pod(state: LabState, name: str) -> Pod:
    """Delete a pod and start its replacement (a new name and address), as a Deployment does."""
    spec = LabSpec.load(Path(state.dir, "description.yaml"))
    pod = next((p for p in state.pods if p.name == name), None)
    if pod is None:
        raise LabError(f"no pod {name}")
    dep = next(d for d in spec.deployments if d.name == pod.deployment)
    lab = Lab(spec, state.dir)
    lab.state = state
    lab.id = state.fabric.split("-")[1]
    _stop_pod(pod, state)
    state.pods.remove(pod)
    existing = {p.name for p in state.pods} | {name}
    k = 0
    while f"{dep.name}-{k}" in existing:
        k += 1
    new = lab.add_pod(dep, k, pod.node)
    state.save()
    if state.proxies:
        write_manifests(spec, state)
    return new
