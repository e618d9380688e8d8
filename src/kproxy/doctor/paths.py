"""Checklist steps 5-6 done with packets: from a pod on this node, from the node itself, and from outside
through each NodePort, externalIP and load-balancer IP, each down the one packet path
(``kproxy.netfilter.path``) with a trace, ending at an endpoint or at the exact rule that stops it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from kproxy.cli.packets import PacketSpec
from kproxy.doctor.findings import ERROR, OK, Finding, PathResult, Report
from kproxy.doctor.rules import stopping_rule_fix
from kproxy.doctor.target import Case
from kproxy.netfilter.path import DROPPED, REJECTED, Result, output, receive
from kproxy.netfilter.trace import Trace, render_text
from kproxy.proxy.serviceports import EndpointInfo, ServicePortInfo

OUTSIDE_CLIENT = "203.0.113.7"        # TEST-NET-3: an address from outside the cluster
FIRST_SPORT = 61000                   # source ports doctor's packets use (clear of real clients' entries)
POD_BRIDGES = ("cni", "cbr", "docker", "br-", "weave", "flannel", "cilium")


@dataclass
class Probe:
    name: str
    spec: PacketSpec


def _pod_client(case: Case, eps: list[EndpointInfo]) -> tuple[str, str] | None:
    """(name, address) of a pod on this node to send from: a Pod object (one that is not the Service's own
    endpoint first; else an endpoint, whose packets may come back to itself), else an address on the pod bridge."""
    endpoint_ips = {e.ip for e in eps}
    here = sorted((p for p in case.pods if p.node_name == case.hostname and p.ip), key=lambda p: p.ip in endpoint_ips)
    if here:
        return f"pod {here[0].key}", here[0].ip
    for iface in case.node.interfaces.values():
        if iface.name.startswith(POD_BRIDGES):
            for a in iface.addresses:
                if a.family == 4 and a.prefixlen <= 30:
                    net = ipaddress.ip_network(f"{ipaddress.ip_address(a.addr)}/{a.prefixlen}", strict=False)
                    ip = str(net.network_address + min(200, net.num_addresses - 2))
                    return f"a pod on {iface.name} ({ip})", ip
    return None


def _outside_dev(case: Case) -> tuple[str, str] | None:
    """The interface outside traffic arrives on (the default route's) and this node's address there."""
    route = case.node.route(4, int(ipaddress.ip_address(OUTSIDE_CLIENT)))
    if route.type != "unicast" or route.dev is None:
        return None
    primary = case.node.primary_address(route.dev)
    if primary is None:
        return None
    return route.dev, str(ipaddress.ip_address(primary))


def probes(case: Case, info: ServicePortInfo, eps: list[EndpointInfo]) -> list[Probe]:
    """The packets that should reach an endpoint of this Service port."""
    proto, port = info.protocol, info.port
    out: list[Probe] = []
    pod = _pod_client(case, eps)
    if pod is not None:
        route = case.node.route(4, int(ipaddress.ip_address(pod[1])))
        if route.type == "unicast" and route.dev:
            out.append(Probe(f"from {pod[0]} to cluster IP {info.cluster_ip}:{port}",
                             PacketSpec(pod[1], info.cluster_ip, proto, dport=port, iif=route.dev)))
    out.append(Probe(f"from the node itself to cluster IP {info.cluster_ip}:{port}",
                     PacketSpec("", info.cluster_ip, proto, dport=port, local=True)))
    outside = _outside_dev(case)
    if outside is not None:
        dev, addr = outside
        src = OUTSIDE_CLIENT
        if info.lb_source_ranges:
            src = str(next(iter(ipaddress.ip_network(info.lb_source_ranges[0]).hosts()), OUTSIDE_CLIENT))
        if info.node_port:
            out.append(Probe(f"from outside via NodePort {addr}:{info.node_port}",
                             PacketSpec(OUTSIDE_CLIENT, addr, proto, dport=info.node_port, iif=dev)))
        for ip in info.external_ips:
            out.append(Probe(f"from outside via externalIP {ip}:{port}",
                             PacketSpec(OUTSIDE_CLIENT, ip, proto, dport=port, iif=dev)))
        for ip in info.lb_vips:
            out.append(Probe(f"from outside via load balancer {ip}:{port}",
                             PacketSpec(src, ip, proto, dport=port, iif=dev)))
    return out


def spec_text(spec: PacketSpec, sport: int) -> str:
    where = "--local" if spec.local else f"--iif {spec.iif}"
    src = f" --src {spec.src}" if spec.src else ""
    return f"{where}{src} --dst {spec.dst} -p {spec.proto} --sport {sport} --dport {spec.dport}"


def send(case: Case, spec: PacketSpec, sport: int) -> Result:
    trace = Trace()
    pkt = spec.packet(sport)
    if spec.local:
        pkt.src = 0
        return output(case.node, pkt, trace)
    return receive(case.node, pkt, spec.iif or "", trace)


def stopping_event(res: Result) -> dict[str, object] | None:
    """The rule (or chain policy) whose verdict ended the packet."""
    assert res.trace is not None
    for e in reversed(res.trace.events):
        if e.kind in ("rule", "policy") and e.verdict.split(" ")[0] in ("DROP", "REJECT"):
            return e.as_dict()
    return None


def run_paths(case: Case, report: Report) -> None:
    if case.service is None:
        return
    sport = FIRST_SPORT
    for info, eps in case.ports:
        targets = {e.text for e in eps}
        for probe in probes(case, info, eps):
            res = send(case, probe.spec, sport)
            assert res.trace is not None
            end = f"{res.packet.dst_str}:{res.packet.dport}"
            reached = end if end in targets and res.fate in ("forwarded", "delivered") else ""
            path = PathResult(probe.name, spec_text(probe.spec, sport), res.fate, res.summary(), reached,
                              events=[e.as_dict() for e in res.trace.events], trace_text=render_text(res.trace))
            sport += 1
            report.paths.append(path)
            if not reached:
                report.add(_failure(path, res, f"-p {probe.spec.proto} --dport {probe.spec.dport}"))
    if report.paths and all(p.ok for p in report.paths):
        f = report.add(Finding("paths", OK, f"all {len(report.paths)} path(s) reach an endpoint"))
        for p in report.paths:
            f.add("trace", f"{p.name}: {p.summary}", f"kproxy trace {p.spec}")


def _failure(path: PathResult, res: Result, accept: str) -> Finding:
    stop = stopping_event(res) if res.fate in (DROPPED, REJECTED) else None
    if stop is not None:
        path.stopped_at = f"{stop.get('table')} {stop.get('chain')}" + (
            f" #{stop.get('rule')}: {stop.get('text')}" if stop.get("kind") == "rule" else f" policy {stop.get('verdict')}")
        title = f"{path.name}: {res.fate} by {path.stopped_at}"
        fix = stopping_rule_fix(stop, accept)
    elif res.fate in (DROPPED, REJECTED):
        path.stopped_at = f"{res.hook}: {res.reason or res.fate}"
        title = f"{path.name}: {res.summary()}"
        fix = "see the sysctl findings" if "forward" in res.reason or "martian" in res.reason else ""
    else:
        path.stopped_at = "no DNAT: " + res.summary()
        title = f"{path.name}: never reached an endpoint ({res.summary()}): no rule translated the Service address"
        fix = "kube-proxy's rules for this Service are missing: see the rules finding"
    f = Finding("path", ERROR, title, fix=fix)
    if stop is not None and stop.get("kind") == "rule":
        f.add("rule", str(stop.get("text")), f"{stop.get('table')} {stop.get('chain')} #{stop.get('rule')}")
    f.add("trace", path.trace_text, f"kproxy trace {path.spec}")
    return f
