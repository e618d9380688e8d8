"""The lab's emulated twin: the same cluster description on emulated nodes, with packets walked between them.

Each node is a ``Node`` shaped like its kernel counterpart in ``kproxy.lab.cluster`` (eth0 on the
node network, one routed veth per pod), synced by its proxier (the node's mode: iptables or ipvs) from
the same manifests. A request leaves a pod or the external client, crosses every node's packet path it meets (forwarded
out of eth0 to the next node, or out of a pod's veth to that pod), and the pod that receives it
answers with what it saw, exactly as ``kproxy.lab.server`` does on the kernel lab. The reply walks
back through the same nodes, so conntrack un-NATs it as the kernel would.
With ``source: api`` the lab's objects are served by a FakeAPIServer in this process and each
node's proxier syncs from its own API watch (``ApiSource``), as each kernel node's kproxy does.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kproxy.lab.cluster import LabError, LabSpec, LabState, Pod, manifests, placements, read_description
from kproxy.node import Node
from kproxy.packet import ACK, SYN, TCP, UDP, Packet, format_addr, parse_addr

MAX_HOPS = 8
API_TIMEOUT = 30.0
# Labels that keep a Service (and its slices) from kube-proxy's watch (watch.PROXY_LABEL_SELECTOR).
UNPROXIED_LABELS = frozenset({"service.kubernetes.io/headless", "service.kubernetes.io/service-proxy-name"})


@dataclass
class Answer:
    """What the client observed: the pod that answered and the peer it saw, or why nothing came back."""

    ok: bool
    pod: str = ""
    peer: str = ""
    error: str = ""

    def line(self) -> str:
        """The same one-line answer ``kproxy.lab.probe`` gives on the kernel lab."""
        if self.ok:
            return f"pod={self.pod} peer={self.peer}"
        if self.error.startswith("rejected"):
            return "refused"
        if self.error.startswith(("dropped", "reply not un-NATed")):
            return "timeout"            # an answer from an address the client never asked is no answer
        return f"error: {self.error}"


class EmulatedLab:
    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec
        self.state = LabState(spec.name, "")
        self.nodes: dict[str, Node] = {}
        self.node_by_ip: dict[int, str] = {}
        self.proxiers: dict[str, Any] = {}
        self.api: Any = None                       # the lab's API server (``source: api``), once started
        self.sources: dict[str, Any] = {}          # each node's API watch
        self._publisher: Any = None                # keeps the API server's objects equal to the lab's
        self._sport = 40000
        for i, name in enumerate(spec.nodes):
            self.nodes[name] = self._node(i, name)
            self.node_by_ip[parse_addr(spec.node_ip(i))[1]] = name
        self._place_pods()

    def _node(self, i: int, name: str) -> Node:
        prefix = ipaddress.ip_network(self.spec.network).prefixlen
        routes = [f"{self.spec.pod_cidr(j)} via {self.spec.node_ip(j)} dev eth0"
                  for j in range(len(self.spec.nodes)) if j != i] + [f"default via {self.spec.client_ip()} dev eth0"]
        node = Node.from_description({"name": name,
                                      "interfaces": [{"name": "eth0", "addresses": [f"{self.spec.node_ip(i)}/{prefix}"]}],
                                      "routes": routes, "sysctls": {"net.ipv4.ip_forward": "1"}})
        node.clock = 1_000_000.0
        return node

    def _place_pods(self) -> None:
        from kproxy.node import Address, Interface, parse_route

        placed = {p.name for p in self.state.pods}
        for dep, k, node in placements(self.spec):
            if f"{dep.name}-{k}" in placed:
                continue
            idx = self.spec.nodes.index(node)
            cidr = ipaddress.ip_network(self.spec.pod_cidr(idx))
            used = {p.ip for p in self.state.pods}
            host = next(h for h in list(cidr.hosts())[9:] if str(h) not in used)
            taken = {p.host_if for p in self.state.pods}
            host_if = next(f"vp{n}" for n in range(1, len(taken) + 2) if f"vp{n}" not in taken)
            pod = Pod(f"{dep.name}-{k}", dep.namespace, dep.name, node, str(host), dict(dep.labels), host_if=host_if)
            self.state.pods.append(pod)
            n = self.nodes[node]
            n.add_interface(Interface(pod.host_if, [Address.parse(f"{cidr[1]}/32")]))
            n.routes.append(parse_route(f"{pod.ip}/32 dev {pod.host_if}"))

    def _remove_pod(self, pod: Pod) -> None:
        """The pod gone: nothing routes to its veth any more (the device itself may stay)."""
        routes = self.nodes[pod.node].routes
        for route in [r for r in routes if r.dev == pod.host_if]:
            routes.remove(route)
        self.state.pods.remove(pod)

    # ---- control plane ----------------------------------------------------------------------
    def sync(self) -> None:
        """Run each node's proxier (its ``mode``) over the lab's objects, as the per-node kproxy does:
        from the manifests, or (``source: api``) from what the node's watch of the lab's API server
        delivered, so the scenarios pass through the watch path as on the kernel lab."""
        from kproxy.k8s.manifests import Objects

        if self.spec.source == "api":
            self._publish()
            for i, name in enumerate(self.nodes):
                self._sync_node(i, name, self._watched(name))
            return
        objs = Objects()
        for obj in manifests(self.spec, self.state):
            objs.add(obj, "lab")
        for i, name in enumerate(self.nodes):
            self._sync_node(i, name, objs)

    def _sync_node(self, i: int, name: str, objs: Any) -> None:
        """One sync of node ``name``'s proxier (made on the first; later ones reuse it, so a watched
        node syncs only what its events changed)."""
        from kproxy.backends.emulated import EmulatedBackend
        from kproxy.backends.nft import EmulatedNft
        from kproxy.lab.cluster import proxy_config
        from kproxy.proxy.config import ProxyConfig
        from kproxy.proxy.proxier import proxier_class

        if name not in self.proxiers:
            cfg = ProxyConfig.from_dict(yaml.safe_load(proxy_config(self.spec, name)))
            ips = [self.spec.node_ip(i)] + [str(ipaddress.ip_network(self.spec.pod_cidr(i))[1])]
            # The nftables mode writes nft transactions, the others iptables-restore input (and IPVS).
            node = self.nodes[name]
            backend = EmulatedNft(node) if cfg.mode == "nftables" else EmulatedBackend(node)
            self.proxiers[name] = proxier_class(cfg.mode)(cfg, backend, ips)
        result = self.proxiers[name].sync(objs)
        if result.error:
            raise LabError(f"sync of {name} failed: {result.error}")

    def _publish(self) -> None:
        """Start the lab's API server (in this process, on the loopback) and make it hold the lab's objects."""
        from kproxy.k8s.fakeapi import FakeAPIServer
        from kproxy.lab.apiserver import Publisher, keyed

        if self.api is None:
            self.api = FakeAPIServer().start()
            self._publisher = Publisher(self.api)
        self._publisher.publish(keyed(manifests(self.spec, self.state)))

    def _watched(self, name: str) -> Any:
        """Node ``name``'s objects as its API watch has them, once the watch has caught up with the server."""
        from kproxy.k8s.source import SourceError
        from kproxy.k8s.watch import ApiSource, api_client

        assert self.api is not None
        source = self.sources.get(name)
        if source is None:
            source = self.sources[name] = ApiSource(api_client(master=self.api.url), name)
        deadline = time.monotonic() + API_TIMEOUT
        try:
            source.initial(timeout=API_TIMEOUT)
        except SourceError as exc:
            raise LabError(f"{name}: {exc}") from None
        while not caught_up(self.api, source, name):
            if time.monotonic() > deadline:
                raise LabError(f"{name}: the API watch did not catch up within {API_TIMEOUT:g} s")
            time.sleep(0.005)
        return source.current()

    def scale(self, deployment: str, replicas: int) -> None:
        """Change a deployment's replicas: its pods come and go, and the nodes sync (through their
        watch with ``source: api``)."""
        dep = next((d for d in self.spec.deployments if d.name == deployment), None)
        if dep is None:
            raise LabError(f"no deployment {deployment}")
        if replicas < 0:
            raise LabError("replicas must be 0 or more")
        dep.replicas = replicas
        wanted = {f"{d.name}-{k}": node for d, k, node in placements(self.spec)}
        for pod in [p for p in self.state.pods if wanted.get(p.name) != p.node]:
            self._remove_pod(pod)
        self._place_pods()
        self.sync()

    def close(self) -> None:
        """Stop the nodes' watches and the lab's API server (``source: api``)."""
        for source in self.sources.values():
            source.close()
        self.sources.clear()
        if self.api is not None:
            self.api.stop()
            self.api = self._publisher = None

    def __enter__(self) -> EmulatedLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- persisted, for the later ``kproxy lab`` commands -------------------------------------------
    def save(self, directory: str | Path, description: str) -> LabState:
        """Keep the lab in ``directory``: its description (what it is rebuilt from) and its state."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        Path(directory, "description.yaml").write_text(description)
        self.state.dir = str(directory)
        self.state.emulated = True
        self.state.nodes = {name: "" for name in self.nodes}
        self.state.save()
        return self.state

    @classmethod
    def reopen(cls, state: LabState) -> EmulatedLab:
        """The lab ``save`` kept, rebuilt from its description and synced (conntrack starts empty)."""
        lab = cls(LabSpec.load(Path(state.dir, "description.yaml")))
        lab.sync()
        return lab

    # ---- data plane -------------------------------------------------------------------------
    def pod(self, name: str) -> Pod:
        for p in self.state.pods:
            if p.name == name:
                return p
        raise KeyError(name)

    def request(self, src: str, dst: str, dport: int, proto: str = "tcp", sport: int = 0) -> Answer:
        """A request from a pod (by name) or ``client`` to ``dst:dport``, and the answer it gets."""
        self._sport += 1
        if sport:
            self._sport, keep = sport, self._sport
        pnum = TCP if proto == "tcp" else UDP
        if src == "client":
            src_ip = self.spec.client_ip()
        else:
            src_ip = self.pod(src).ip
        pkt = Packet.make(src_ip, dst, pnum, self._sport, dport, tcp_flags=SYN if pnum == TCP else 0)
        if sport:
            self._sport = keep
        orig_dst, orig_dport = pkt.dst, pkt.dport
        where = self._entry(src, pkt)
        if where is None:
            return Answer(False, error="no route from client")
        got = self._walk(pkt, where)
        if isinstance(got, Answer):
            return got
        pod, seen = got
        reply = Packet(src=seen.dst, dst=seen.src, proto=pnum, sport=seen.dport, dport=seen.sport,
                       tcp_flags=(SYN | ACK) if pnum == TCP else 0)
        back = self._walk(reply, (pod.node, pod.host_if))
        peer = f"{format_addr(seen.src)}:{seen.sport}"
        if isinstance(back, Answer):
            return Answer(False, pod.name, peer, error=f"reply lost: {back.error}")
        _, final = back
        if final.src != orig_dst or final.sport != orig_dport:
            return Answer(False, pod.name, peer, error="reply not un-NATed")
        return Answer(True, pod.name, peer)

    def _entry(self, src: str, pkt: Packet) -> tuple[str, str] | None:
        if src == "client":
            node = self.node_by_ip.get(pkt.dst)
            if node is None:
                return None
            return node, "eth0"
        pod = self.pod(src)
        return pod.node, pod.host_if

    def _walk(self, pkt: Packet, where: tuple[str, str]) -> Answer | tuple[Any, Packet]:
        """Carry ``pkt`` node to node until a pod or the client receives it."""
        node_name, iif = where
        for _ in range(MAX_HOPS):
            node = self.nodes[node_name]
            res = node.receive(pkt, iif)
            if res.fate in ("dropped", "rejected"):
                return Answer(False, error=f"{res.fate} on {node_name} in {res.hook}"
                              + (f" ({res.reject_with})" if res.reject_with else ""))
            if res.fate != "forwarded":
                return Answer(False, error=f"{res.fate} on {node_name}")
            out = res.packet
            if res.out_dev != "eth0":
                pod = next((p for p in self.state.pods if p.node == node_name and p.host_if == res.out_dev), None)
                if pod is None or parse_addr(pod.ip)[1] != out.dst:
                    return Answer(False, error=f"no pod behind {res.out_dev}")
                return pod, out
            if format_addr(out.dst) == self.spec.client_ip():
                return "client", out
            hop = parse_addr(res.gateway)[1] if res.gateway else out.dst
            nxt = self.node_by_ip.get(hop)
            if nxt is None:
                return Answer(False, error=f"left {node_name} towards {format_addr(hop)}")
            pkt = _fresh(out)
            node_name, iif = nxt, "eth0"
        return Answer(False, error="routing loop")


WATCHED = (("Service", "services"), ("EndpointSlice", "endpointslices"), ("Node", "nodes"))


def served(api: Any, node: str) -> dict[str, dict[str, str]]:
    """What node ``node``'s watch should hold, by kind: each object's resourceVersion by its
    ``namespace/name`` (proxied Services and their slices, and the node's own Node object)."""
    out: dict[str, dict[str, str]] = {}
    with api.cond:
        for kind, resource in WATCHED:
            out[kind] = {}
            for (ns, name), obj in api.objects[resource].items():
                meta = obj["metadata"]
                seen = name == node if kind == "Node" else not UNPROXIED_LABELS & set(meta.get("labels") or {})
                if seen:
                    out[kind][f"{ns}/{name}"] = meta["resourceVersion"]
    return out


def caught_up(api: Any, source: Any, node: str) -> bool:
    """Whether each of ``source``'s reflectors holds what the server holds for it (every object at the
    server's resourceVersion, none that went). A reflector queues its events as it stores them, so
    the source's next ``current()`` applies them all."""
    want = served(api, node)
    for r in source.reflectors:
        with r.lock:
            have = {key: obj["metadata"].get("resourceVersion") for key, obj in r.store.items()}
        if have != want[r.kind]:
            return False
    return True


def _fresh(p: Packet) -> Packet:
    """The packet as the next node receives it: headers kept, this node's skb state gone."""
    return Packet(src=p.src, dst=p.dst, proto=p.proto, sport=p.sport, dport=p.dport, family=p.family,
                  tcp_flags=p.tcp_flags, icmp_type=p.icmp_type, icmp_code=p.icmp_code, icmp_id=p.icmp_id,
                  length=p.length, ttl=p.ttl)     # (a forwarding node decremented it already)


def scale_emulated(state: LabState, deployment: str, replicas: int) -> LabState:
    """Change a deployment's replicas in the kept description, and the kept state with it."""
    if replicas < 0:
        raise LabError("replicas must be 0 or more")
    path = Path(state.dir, "description.yaml")
    data = read_description(path)
    deps = data.get("deployments") if isinstance(data, dict) else None
    dep = next((d for d in deps or [] if isinstance(d, dict) and d.get("name") == deployment), None)
    if dep is None:
        raise LabError(f"no deployment {deployment}")
    dep["replicas"] = replicas
    text = yaml.safe_dump(data, sort_keys=False)
    return EmulatedLab(LabSpec.from_dict(data, str(path))).save(state.dir, text)
