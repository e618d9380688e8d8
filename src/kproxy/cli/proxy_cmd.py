"""``kproxy proxy`` (kube-proxy itself) and ``kproxy services`` (what it made of each Service)."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import click

from kproxy.cli.main import Ctx, cli
from kproxy.node import Node

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.k8s.objects import Node as K8sNode
    from kproxy.proxy.proxier import SyncResult


def _node_ips_kernel() -> list[str]:
    out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True).stdout
    try:
        return [a["local"] for link in json.loads(out or "[]") for a in link.get("addr_info", [])]
    except (ValueError, KeyError):
        return []


def _node_ips_emulated(node: Node) -> list[str]:
    from kproxy.packet import format_addr

    return [format_addr(a.addr, a.family) for i in node.interfaces.values() for a in i.addresses]


def build_proxier(obj: Ctx, cfg: Any, backend_name: str, legacy: bool, metrics: Any,
                  node: K8sNode | None = None, dry_run: bool = False) -> Any:
    """The proxier of the configured mode over the chosen backend; a ClickException if it cannot run.

    ``node`` is this Node as the API server has it: its podCIDR is the local range of
    ``detectLocalMode: NodeCIDR``, its addresses the node IPs where the backend has none of its own."""
    from kproxy.backends import get_backend
    from kproxy.backends.dryrun import DryRunBackend
    from kproxy.proxy.conntrack import EmulatedConntrackCleaner, KernelConntrackCleaner
    from kproxy.proxy.proxier import ModeUnavailable, proxier_class

    try:
        cls = proxier_class(cfg.mode)
    except ModeUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    pod_cidr = next((c for c in node.pod_cidrs if ":" not in c), "") if node is not None else ""
    extra: dict[str, Any] = {"pod_cidr": pod_cidr} if pod_cidr else {}
    if dry_run and cfg.mode != "iptables":
        raise click.UsageError("--dry-run compares iptables rules: it needs --mode iptables")
    try:
        if cfg.mode == "nftables":
            return _nft_proxier(obj, cls, cfg, backend_name, metrics, node, extra)
        conntrack: Any
        if backend_name == "kernel":
            backend = get_backend("kernel", legacy=legacy)
            ips = _node_ips_kernel() or (node.addresses if node is not None else [])
            conntrack = KernelConntrackCleaner()
        else:
            emulated = obj.node
            backend = get_backend("emulated", node=emulated)
            ips = _node_ips_emulated(emulated) or (node.addresses if node is not None else [])
            conntrack = EmulatedConntrackCleaner(emulated)
        if dry_run:
            backend = DryRunBackend(backend, click.echo)
            conntrack = None            # a dry run deletes no connections either
        return cls(cfg, backend, ips, metrics=metrics, conntrack=conntrack, **extra)
    except ModeUnavailable as exc:      # the backend lacks what the mode needs (a kernel without IPVS)
        raise click.ClickException(str(exc)) from None


def _nft_proxier(obj: Ctx, cls: Any, cfg: Any, backend_name: str, metrics: Any, node: K8sNode | None,
                 extra: dict[str, Any]) -> Any:
    """The nftables proxier over the emulated node's nft or this namespace's; a node whose nft lacks
    something the mode needs is refused with what it lacks."""
    from kproxy.backends.nft import EmulatedNft, KernelNft
    from kproxy.proxy.conntrack import EmulatedConntrackCleaner, KernelConntrackCleaner
    from kproxy.proxy.proxier import MetaProxier, ModeUnavailable

    if backend_name == "kernel":
        ips = _node_ips_kernel() or (node.addresses if node is not None else [])
        conntrack: Any = KernelConntrackCleaner()
    else:
        ips = _node_ips_emulated(obj.node) or (node.addresses if node is not None else [])
        conntrack = EmulatedConntrackCleaner(obj.node)
    proxiers = []
    for family in _families(ips):
        nft: Any = KernelNft(family) if backend_name == "kernel" else EmulatedNft(obj.node, family)
        missing = nft.check()
        if missing:
            raise ModeUnavailable(f"proxy mode 'nftables' cannot run here: {missing}")
        pod_cidr = extra.get("pod_cidr", "") if family == 4 else ""
        proxiers.append(cls(cfg, nft, ips, family=family, metrics=metrics, conntrack=conntrack,
                            **({"pod_cidr": pod_cidr} if pod_cidr else {})))
    return proxiers[0] if len(proxiers) == 1 else MetaProxier(*proxiers)


def _families(ips: list[str]) -> list[int]:
    """IPv4, and IPv6 too on a node with an IPv6 address beyond loopback and link-local (upstream runs
    dual-stack when the node has IPs of both families)."""
    import ipaddress

    addrs = [ipaddress.ip_address(ip) for ip in ips]
    v6 = any(a.version == 6 and not (a.is_loopback or a.is_link_local) for a in addrs)
    return [4, 6] if v6 else [4]


def _bind_address(flag: str, value: str | None, default_port: int, current: str) -> str:
    """A --*-bind-address value as upstream takes it: IP:port, or an IP (the default port); "" disables."""
    from kproxy.proxy.config import _host_port_problem

    if value is None:
        return current
    if not value:
        return ""
    if ":" not in value or value.endswith("]"):
        value = f"{value}:{default_port}"
    why = _host_port_problem(value)
    if why:
        raise click.BadParameter(f"{value!r}: {why}", param_hint=flag)
    return value


def _config_flags(cfg: Any, config_path: str | None, kubeconfig: str | None, healthz: str | None,
                  metrics: str | None) -> None:
    """Apply the flags that are fields of KubeProxyConfiguration as kube-proxy does: a --config file
    replaces them all (only --hostname-override, --master and -v stand beside it), so with one they
    are ignored, with a warning."""
    given = [name for name, value in (("--kubeconfig", kubeconfig), ("--healthz-bind-address", healthz),
                                      ("--metrics-bind-address", metrics)) if value is not None]
    if config_path:
        if given:
            click.echo(f"warning: {', '.join(given)} ignored: the --config file sets "
                       f"{'it' if len(given) == 1 else 'them'}, as in kube-proxy", err=True)
        return
    if kubeconfig:
        cfg.kubeconfig = kubeconfig
    cfg.healthz_bind_address = _bind_address("--healthz-bind-address", healthz, 10256, cfg.healthz_bind_address)
    cfg.metrics_bind_address = _bind_address("--metrics-bind-address", metrics, 10249, cfg.metrics_bind_address)


def _health_check_addresses(cfg: Any) -> list[str]:
    """Where the per-Service health check servers listen: every address (unset nodePortAddresses), or
    this host's addresses within nodePortAddresses, as upstream binds them."""
    import ipaddress

    nets = [ipaddress.ip_network(c, strict=False) for c in cfg.node_port_addresses if "/" in c]
    if not nets:
        return ["0.0.0.0"]
    return [ip for ip in _node_ips_kernel() if any(ipaddress.ip_address(ip) in n for n in nets)]


@cli.command("proxy")
@click.option("--mode", type=click.Choice(["iptables", "ipvs", "nftables"]), default=None,
              help="Proxy mode (default: the config's, else iptables).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="KubeProxyConfiguration YAML.")
@click.option("--manifests", type=click.Path(exists=True),
              help="Manifest file or directory to watch, instead of the API server.")
@click.option("--kubeconfig", default=None, help="Path to a kubeconfig file with the API server and credentials "
              "(with --config: its clientConnection.kubeconfig instead; neither: in-cluster).")
@click.option("--master", default=None, help="The address of the API server (overrides the kubeconfig's).")
@click.option("--once", is_flag=True, help="Sync once and exit.")
@click.option("--backend", "backend_name", type=click.Choice(["emulated", "kernel"]), default="emulated",
              show_default=True, help="Program the emulated node (--node) or this network namespace's kernel.")
@click.option("--legacy", is_flag=True, help="With --backend kernel: iptables-legacy instead of iptables-nft.")
@click.option("--hostname-override", default=None, help="Node name (overrides the config's hostnameOverride).")
@click.option("--healthz-bind-address", default=None,
              help="IP:port of /healthz and /livez (default 0.0.0.0:10256); empty disables.")
@click.option("--metrics-bind-address", default=None,
              help="IP:port of /metrics (default 127.0.0.1:10249); empty disables.")
@click.option("--serve/--no-serve", default=True, help="Serve /healthz and /metrics while running.")
@click.option("--dry-run", is_flag=True, help="Compute each sync against the node's rules and print the "
              "difference as a diff; apply nothing (to run beside kube-proxy).")
@click.option("-v", "--verbose", count=True)
@click.pass_obj
def proxy_cmd(obj: Ctx, mode: str | None, config_path: str | None, manifests: str | None, kubeconfig: str | None,
              master: str | None, once: bool, backend_name: str, legacy: bool, hostname_override: str | None,
              healthz_bind_address: str | None, metrics_bind_address: str | None, serve: bool, dry_run: bool,
              verbose: int) -> None:
    """Run kube-proxy: turn Services and EndpointSlices (from the API server, or manifests) into the
    mode's rules and keep them in sync."""
    from kproxy.k8s.source import ManifestSource, Source, SourceError
    from kproxy.proxy.config import ConfigError, ProxyConfig
    from kproxy.proxy.healthz import HealthState, ServiceHealthServers
    from kproxy.proxy.metrics import ProxyMetrics
    from kproxy.proxy.runner import ProxyRunner

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(message)s")
    try:
        cfg = ProxyConfig.load(config_path) if config_path else ProxyConfig()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if mode:
        cfg.mode = mode
    if hostname_override:
        cfg.hostname_override = hostname_override
    _config_flags(cfg, config_path, kubeconfig, healthz_bind_address, metrics_bind_address)
    if manifests and (kubeconfig or master):  # checked on the flags: a config's kubeconfig is harmless here
        raise click.UsageError("--manifests reads objects from files: it excludes --kubeconfig and --master")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    source: Source
    api_node = None
    if manifests:
        source = ManifestSource(manifests)
    else:
        source, api_node = _api_source(cfg, master, stop)
    metrics = ProxyMetrics()
    proxier = build_proxier(obj, cfg, backend_name, legacy, metrics, api_node, dry_run)
    health = HealthState(2 * cfg.sync_period)

    def report(result: SyncResult) -> None:
        kind = "full" if result.full else "partial"
        status = f"FAILED: {result.error.splitlines()[0]}" if result.error else "ok"
        if "elements" in result.rules:
            what = (f"{result.lines} transaction lines, {result.rules['rules']} rules + "
                    f"{result.rules['elements']} map elements")
        else:
            what = f"{result.lines} restore lines, {result.nat_rules} nat + {result.filter_rules} filter rules"
        click.echo(f"sync {kind}: {what}, {result.duration * 1000:.1f} ms, {status}", err=True)
        if backend_name == "emulated" and not result.error and not dry_run:
            from kproxy.progress import busy

            with busy("kube-proxy: saving the node"):
                obj.save()

    # A dry run beside kube-proxy leaves the health check node ports to it.
    service_health = ServiceHealthServers(_health_check_addresses(cfg), health) \
        if serve and not once and not dry_run else None
    runner = ProxyRunner(proxier, source, health, after_sync=report, metrics=metrics, service_health=service_health)
    if once:
        try:
            result = runner.sync_once()
        finally:
            source.close()
        sys.exit(1 if result.error else 0)
    servers = []
    if serve:
        from kproxy.proxy.healthz import serve as serve_http

        try:
            servers = serve_http(health, metrics, cfg.healthz_bind_address, cfg.metrics_bind_address, time.time)
        except OSError as exc:
            click.echo(f"cannot serve healthz/metrics: {exc}", err=True)
    try:
        runner.loop(stop)
    except SourceError as exc:
        if not stop.is_set():
            raise click.ClickException(str(exc)) from None
    finally:
        source.close()
        for s in servers:
            s.shutdown()
            s.server_close()
        if service_health is not None:
            service_health.close()
    if runner.restart_reason:
        raise click.ClickException(runner.restart_reason)


def _api_source(cfg: Any, master: str | None, stop: threading.Event) -> tuple[Any, Any]:
    """The API server as the source, its caches synced (and, for detectLocalMode NodeCIDR, this
    Node's podCIDR known, as upstream waits for it); this Node as the API server has it."""
    from kproxy.k8s.source import SourceError
    from kproxy.k8s.watch import ApiSetupError, ApiSource, api_client

    try:
        client = api_client(cfg.kubeconfig, master or "")
    except ApiSetupError as exc:
        raise click.ClickException(str(exc)) from None
    source = ApiSource(client, cfg.hostname, stop, resync=cfg.config_sync_period)
    try:
        objs = source.initial()
        while cfg.detect_local_mode == "NodeCIDR" and not getattr(objs.nodes.get(cfg.hostname), "pod_cidrs", None):
            if stop.is_set():
                raise SourceError("stopped while waiting for the Node's podCIDR")
            logging.getLogger("kproxy.proxy").warning("waiting for Node %s to have a podCIDR", cfg.hostname)
            source.changes(1.0)
    except SourceError as exc:
        source.close()
        if stop.is_set():
            sys.exit(0)
        raise click.ClickException(str(exc)) from None
    return source, objs.nodes.get(cfg.hostname)


@cli.command("services")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--manifests", required=True, type=click.Path(exists=True))
@click.option("--hostname-override", default=None)
@click.option("--json", "as_json", is_flag=True)
def services_cmd(config_path: str | None, manifests: str, hostname_override: str | None, as_json: bool) -> None:
    """Services with their chains, endpoints (local ones marked) and rule counts, as the proxier sees them."""
    from kproxy.k8s.manifests import ManifestError, load
    from kproxy.proxy.config import ConfigError, ProxyConfig
    from kproxy.proxy.iptables import IptablesProxier
    from kproxy.proxy.serviceports import snapshot

    try:
        cfg = ProxyConfig.load(config_path) if config_path else ProxyConfig()
        objs = load(manifests)
    except (ConfigError, ManifestError) as exc:
        raise click.ClickException(str(exc)) from None
    if hostname_override:
        cfg.hostname_override = hostname_override
    for w in objs.warnings:
        click.echo(f"warning: {w}", err=True)
    snap = snapshot(objs, cfg.hostname)
    proxier = IptablesProxier(cfg, backend=None)
    rows: list[dict[str, Any]] = []
    for key in sorted(snap.ports, key=lambda k: snap.ports[k].name_string):
        info = snap.ports[key]
        eps = snap.endpoints.get(key, [])
        sr = proxier.service_rules(info, eps)
        rows.append({"service": info.name_string, "protocol": info.protocol, "clusterIP": info.cluster_ip,
                     "port": info.port, "nodePort": info.node_port, "chains": sr.chains,
                     "endpoints": [e.text + (" (local)" if e.is_local else "") + ("" if e.ready else " (not ready)")
                                   for e in eps],
                     "rules": len(sr.rules) + sum(len(v) for v in sr.top.values())})
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        np = f" nodePort {r['nodePort']}" if r["nodePort"] else ""
        click.echo(f"{r['service']} {r['protocol']} {r['clusterIP']}:{r['port']}{np}  ({r['rules']} rules)")
        click.echo(f"  chains:    {' '.join(r['chains']) or '-'}")
        click.echo(f"  endpoints: {', '.join(r['endpoints']) or 'none'}")


@cli.command("cleanup")
@click.option("--backend", "backend_name", type=click.Choice(["emulated", "kernel"]), default="emulated",
              show_default=True)
@click.option("--legacy", is_flag=True, help="With --backend kernel: iptables-legacy instead of iptables-nft.")
@click.pass_obj
def cleanup_cmd(obj: Ctx, backend_name: str, legacy: bool) -> None:
    """Remove what kproxy's proxy modes made, and nothing else: the KUBE-* chains and the jump rules
    into them (both families; the kubelet's KUBE-FIREWALL stays, as upstream's cleanup leaves it), the nftables mode's kube-proxy tables, and the IPVS mode's virtual
    servers, kube-ipvs0 and its ipsets."""
    from kproxy.backends import BackendError, get_backend
    from kproxy.backends.nft import EmulatedNft, KernelNft
    from kproxy.proxy.ipvs import cleanup_leftovers

    lines, gone, tables = 0, {"virtual_servers": 0, "devices": 0, "ipsets": 0}, []
    for family in (4, 6):
        backend = get_backend(backend_name, node=obj.node if backend_name == "emulated" else None, family=family,
                              legacy=legacy)
        try:
            lines += backend.cleanup()  # type: ignore[attr-defined]
            for what, n in cleanup_leftovers(backend).items():   # after the rules that used its ipsets
                gone[what] += n
            nft = EmulatedNft(obj.node, family) if backend_name == "emulated" else KernelNft(family)
            if nft.delete_table():
                tables.append(f"{'ip' if family == 4 else 'ip6'} kube-proxy")
        except BackendError as exc:
            raise click.ClickException(str(exc)) from None
    if backend_name == "emulated":
        obj.save()
    click.echo(f"cleanup: {lines} restore lines, {gone['virtual_servers']} IPVS virtual servers, "
               f"{gone['devices']} devices, {gone['ipsets']} ipsets"
               + (f", nft tables {', '.join(tables)} deleted" if tables else ""))
