"""The checklist questions about the objects and the node: Service and selector, endpoints, externalTraffic
Policy Local, stale conntrack entries and the sysctls Services depend on.

Each check appends ``Finding``s to the report; none of them sends a packet (``paths`` does that).
"""

from __future__ import annotations

from kproxy.doctor.findings import ERROR, INFO, OK, WARN, Finding, Report
from kproxy.doctor.target import Case
from kproxy.netfilter.conntrack import Conn
from kproxy.netfilter.ctformat import format_conn
from kproxy.packet import format_addr

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}
CONNTRACK_NEAR_FULL = 0.9
# TCP states of a connection that still carries data: one pinned to a gone endpoint hangs. Attempts that
# were never answered (SYN_SENT) and connections closing down (TIME_WAIT, LAST_ACK, CLOSE) hang nobody.
LIVE_TCP = frozenset({"ESTABLISHED", "SYN_RECV", "FIN_WAIT", "CLOSE_WAIT"})


def check_service(case: Case, report: Report) -> None:
    """1. Is the Service defined correctly: a cluster IP, the ports, a selector that matches pods?"""
    svc = case.service
    if svc is None:
        report.add(Finding("service", ERROR, case.problem or f"no Service matches {case.target}",
                           fix="check the name and namespace (kubectl get svc -A), or the address and port"))
        return
    where = f"Service {svc.key}"
    if svc.type == "ExternalName" or svc.headless:
        report.add(Finding("service", INFO, f"{where} is {'ExternalName' if svc.type == 'ExternalName' else 'headless'}"
                           ": kube-proxy programs nothing for it (DNS answers with the pods or the name)")
                   .add("object", f"spec.clusterIP: {svc.cluster_ips[0] if svc.cluster_ips else '(none)'}", where))
        return
    f = report.add(Finding("service", OK, f"{where}: type {svc.type}, cluster IP {svc.cluster_ips[0]}"))
    f.add("object", "spec.ports: " + ", ".join(
        f"{p.name or '-'} {p.port}/{p.protocol} -> {p.target_port}" + (f" nodePort {p.node_port}" if p.node_port else "")
        for p in svc.ports), where)
    if case.problem:
        f.severity, f.title = ERROR, case.problem
        return
    if not case.ports:
        report.add(Finding("service", WARN, f"{where} has no IPv4 cluster IP: doctor examines IPv4 only, so "
                           "nothing was checked").add("object", f"spec.clusterIPs: {', '.join(svc.cluster_ips)}", where))
    _check_selector(case, report)


def _check_selector(case: Case, report: Report) -> None:
    svc = case.service
    assert svc is not None
    where = f"Service {svc.key}"
    text = ",".join(f"{k}={v}" for k, v in sorted(svc.selector.items()))
    if not svc.selector:
        sev = WARN if not case.objs.slices_for(svc.key) else INFO
        report.add(Finding("selector", sev, f"{where} has no selector: its EndpointSlices are managed by hand",
                           fix="create an EndpointSlice labelled kubernetes.io/service-name=" + svc.name
                           if sev == WARN else "").add("object", "spec.selector: (none)", where))
        return
    if not case.pods_known:
        report.add(Finding("selector", INFO, f"selector {text}: no Pod objects in the manifests to match it against")
                   .add("object", f"spec.selector: {text}", where))
        return
    same_ns = [p for p in case.pods if p.namespace == svc.namespace]
    chosen = [p for p in same_ns if all(p.labels.get(k) == v for k, v in svc.selector.items())]
    if not chosen:
        f = report.add(Finding("selector", ERROR, f"selector {text} matches no pod in namespace {svc.namespace}",
                               fix="fix spec.selector or the pods' labels so they agree"))
        f.add("object", f"spec.selector: {text}", where)
        for p in same_ns[:5]:
            labels = ",".join(f"{k}={v}" for k, v in sorted(p.labels.items())) or "(no labels)"
            f.add("object", f"pod {p.key} has labels {labels}", f"Pod {p.key} metadata.labels")
        return
    f = report.add(Finding("selector", OK, f"selector {text} matches {len(chosen)} pod(s)"))
    f.add("object", f"spec.selector: {text}", where)
    for p in chosen:
        state = {True: "Ready", False: "not Ready", None: "readiness unknown"}[p.ready]
        f.add("object", f"pod {p.key} {p.ip or '(no IP)'} on {p.node_name or '?'}: {p.phase or '?'}, {state}",
              f"Pod {p.key} status")


def check_endpoints(case: Case, report: Report) -> None:
    """2. Are there endpoints: ready, serving, terminating, and which are on this node?"""
    svc = case.service
    if svc is None or not case.ports:
        return
    slices = case.objs.slices_for(svc.key)
    for info, eps in case.ports:
        name = info.name_string
        ready = [e for e in eps if e.ready]
        if not eps:
            f = report.add(Finding("endpoints", ERROR, f"{name}: no endpoints",
                                   fix="no EndpointSlice lists a pod for this port: check the selector, that the "
                                   "pods run, and that the port name matches the Service's"))
            for es in slices:
                f.add("object", f"EndpointSlice {es.key}: ports {[p.name for p in es.ports]}, "
                      f"{len(es.endpoints)} endpoint(s)", f"EndpointSlice {es.key}")
            continue
        sev = OK if len(ready) == len(eps) else (WARN if ready else ERROR)
        title = f"{name}: {len(ready)} of {len(eps)} endpoint(s) ready"
        fix = ""
        if sev != OK:
            title += " (readiness failing: endpoints come and go as the probe flaps)"
            fix = ("the pods' readiness probes fail: kubectl describe pod <pod> | grep -A5 Readiness, and the "
                   "events; kube-proxy removes a not-ready endpoint from the rules")
        f = report.add(Finding("endpoints", sev, title, fix=fix))
        for es in slices:
            for i, ep in enumerate(es.endpoints):
                if not ep.addresses:
                    continue
                cond = f"ready={str(ep.ready).lower()} serving={str(ep.serving).lower()} " \
                       f"terminating={str(ep.terminating).lower()}"
                node = ep.node_name or "?"
                here = " (this node)" if ep.node_name == case.hostname else ""
                f.add("object", f"{ep.addresses[0]} on {node}{here}: {cond}",
                      f"EndpointSlice {es.key} endpoints[{i}].conditions")
        if info.internal_local and not any(e.is_local and e.ready for e in eps):
            report.add(Finding("traffic-policy", WARN,
                               f"{name}: internalTrafficPolicy Local and no ready endpoint on this node "
                               f"({case.hostname}): pods and processes here get no answer from the cluster IP",
                               fix="run a pod of the Service on this node, or use internalTrafficPolicy Cluster")
                       .add("object", "spec.internalTrafficPolicy: Local", f"Service {svc.key}"))
        if info.external_policy_local and not any(e.is_local and (e.ready or (e.serving and e.terminating))
                                                  for e in eps):
            report.add(Finding("traffic-policy", WARN,
                               f"{name}: externalTrafficPolicy Local and no endpoint on this node ({case.hostname}): "
                               "external traffic to this node is dropped",
                               fix="expected on nodes without a pod (the load balancer's health check on "
                               f"healthCheckNodePort {info.health_check_node_port} steers away from them); send "
                               "external traffic to a node that runs one, or use externalTrafficPolicy Cluster")
                       .add("object", "spec.externalTrafficPolicy: Local", f"Service {svc.key}"))


def _live_endpoints(case: Case) -> dict[tuple[str, str], set[tuple[str, int]]]:
    """(protocol, "vip:port" or "nodeport:N") -> the endpoints traffic may still go to."""
    out: dict[tuple[str, str], set[tuple[str, int]]] = {}
    for info, eps in case.ports:
        live = {(e.ip, e.port) for e in eps if e.ready or (e.serving and e.terminating)}
        for ip in (info.cluster_ip, *info.external_ips, *info.lb_vips):
            out[(info.protocol, f"{ip}:{info.port}")] = live
        if info.node_port:
            out[(info.protocol, f"nodeport:{info.node_port}")] = live
    return out


def check_conntrack(case: Case, report: Report) -> None:
    """Problem 4: connections to the Service still pinned (DNAT in conntrack) to endpoints that are gone."""
    if case.service is None or not case.ports:
        return
    live = _live_endpoints(case)
    local = set(case.node_ips())
    now = case.node.now()
    stale: list[tuple[Conn, str, str]] = []
    total = 0
    protos = {v: k for k, v in PROTO_NUMBERS.items()}
    for conn in case.node.conntrack.entries(now):
        proto = protos.get(conn.orig.proto)
        if proto is None or conn.orig.family != 4 or (proto == "tcp" and conn.tcp_state not in LIVE_TCP):
            continue
        dst = format_addr(conn.orig.dst, 4)
        key = (proto, f"{dst}:{conn.orig.dport}")
        if key not in live and dst in local:
            key = (proto, f"nodeport:{conn.orig.dport}")
        if key not in live:
            continue
        total += 1
        target = (format_addr(conn.reply.src, 4), conn.reply.sport)
        if target != (dst, conn.orig.dport) and target not in live[key]:
            stale.append((conn, proto, dst))
    if not stale:
        if total:
            report.add(Finding("conntrack", OK, f"{total} tracked connection(s) to the Service, all to live endpoints"))
        return
    gone = sorted({format_addr(c.reply.src, 4) for c, _, _ in stale})
    f = report.add(Finding("conntrack", ERROR,
                           f"{len(stale)} connection(s) still go to endpoint(s) that are gone ({', '.join(gone)}): "
                           "their packets hang until the entries expire",
                           fix="; ".join(f"conntrack -D -p {p} --orig-dst {d} --reply-src {format_addr(c.reply.src, 4)}"
                                         for c, p, d in _unique(stale))))
    for conn, _, _ in stale:
        f.add("conntrack", format_conn(conn, now), "conntrack -L")


def _unique(stale: list[tuple[Conn, str, str]]) -> list[tuple[Conn, str, str]]:
    seen: dict[tuple[str, str, int], tuple[Conn, str, str]] = {}
    for c, p, d in stale:
        seen.setdefault((p, d, c.reply.src), (c, p, d))
    return list(seen.values())


def _sysctl(case: Case, name: str) -> str | None:
    return case.node.sysctls.get(name)


def check_sysctls(case: Case, report: Report) -> None:
    """The kernel settings that break Services when wrong."""
    node = case.node
    fwd = _sysctl(case, "net.ipv4.ip_forward") or "0"
    remote = any(not e.is_local for _, eps in case.ports for e in eps) or any(
        e.ip not in case.node_ips() for _, eps in case.ports for e in eps)
    if fwd != "1":
        report.add(Finding("sysctl", ERROR if remote else WARN,
                           "net.ipv4.ip_forward=0: the node does not forward, so packets DNATed to a pod are dropped",
                           fix="sysctl -w net.ipv4.ip_forward=1").add("sysctl", f"net.ipv4.ip_forward = {fwd}"))
    nodeports = [i for i, _ in case.ports if i.node_port]
    if nodeports:
        rl = _sysctl(case, "net.ipv4.conf.all.route_localnet") or "0"
        if rl != "1":
            report.add(Finding("sysctl", INFO, f"net.ipv4.conf.all.route_localnet={rl}: localhost:{nodeports[0].node_port} "
                               "(a NodePort on 127.0.0.1) does not work from this node",
                               fix="use the node's own address, or sysctl -w net.ipv4.conf.all.route_localnet=1")
                       .add("sysctl", f"net.ipv4.conf.all.route_localnet = {rl}"))
    bridges = [i.name for i in node.interfaces.values() if i.name.startswith(("cni", "cbr", "docker", "br"))]
    bnf = _sysctl(case, "net.bridge.bridge-nf-call-iptables")
    if bnf == "0" and bridges:
        report.add(Finding("sysctl", ERROR,
                           f"net.bridge.bridge-nf-call-iptables=0 with bridge {bridges[0]}: pod-to-Service traffic "
                           "between pods on the same bridge skips iptables (no DNAT back, replies go astray)",
                           fix="modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1")
                   .add("sysctl", "net.bridge.bridge-nf-call-iptables = 0"))
    count, limit = len(node.conntrack), node.conntrack.max_entries
    if limit and count >= CONNTRACK_NEAR_FULL * limit:
        report.add(Finding("sysctl", ERROR, f"conntrack table {count}/{limit} entries: new connections are dropped "
                           "when it is full (kernel: nf_conntrack: table full, dropping packet)",
                           fix="raise net.netfilter.nf_conntrack_max (and the hash size), or find who opens so many")
                   .add("sysctl", f"net.netfilter.nf_conntrack_count = {count}")
                   .add("sysctl", f"net.netfilter.nf_conntrack_max = {limit}"))
