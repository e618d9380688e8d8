"""``kproxy proxy`` (kube-proxy itself) and ``kproxy services`` (what it made of each Service)."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import click

from kproxy.cli.main import Ctx, cli
from kproxy.node import Node
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


def build_proxier(obj: Ctx, cfg: Any, backend_name: str, legacy: bool, metrics: Any) -> Any:
    """The proxier of the configured mode over the chosen backend; a ClickException if it cannot run."""
    from kproxy.backends import get_backend
    from kproxy.proxy.conntrack import EmulatedConntrackCleaner, KernelConntrackCleaner
    from kproxy.proxy.proxier import ModeUnavailable, proxier_class

    try:
        cls = proxier_class(cfg.mode)
    except ModeUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    try:
        if backend_name == "kernel":
            backend = get_backend("kernel", legacy=legacy)
            return cls(cfg, backend, _node_ips_kernel(), metrics=metrics, conntrack=KernelConntrackCleaner())
        node = obj.node
        backend = get_backend("emulated", node=node)
        return cls(cfg, backend, _node_ips_emulated(node), metrics=metrics, conntrack=EmulatedConntrackCleaner(node))
    except ModeUnavailable as exc:      # the backend lacks what the mode needs (a kernel without IPVS)
        raise click.ClickException(str(exc)) from None


@cli.command("proxy")
@click.option("--mode", type=click.Choice(["iptables", "ipvs", "nftables"]), default=None,
              help="Proxy mode (default: the config's, else iptables).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="KubeProxyConfiguration YAML.")
@click.option("--manifests", required=True, type=click.Path(exists=True), help="Manifest file or directory to watch.")
@click.option("--once", is_flag=True, help="Sync once and exit.")
@click.option("--backend", "backend_name", type=click.Choice(["emulated", "kernel"]), default="emulated",
              show_default=True, help="Program the emulated node (--node) or this network namespace's kernel.")
@click.option("--legacy", is_flag=True, help="With --backend kernel: iptables-legacy instead of iptables-nft.")
@click.option("--hostname-override", default=None, help="Node name (overrides the config's hostnameOverride).")
@click.option("--serve/--no-serve", default=True, help="Serve /healthz and /metrics while running.")
@click.option("-v", "--verbose", count=True)
@click.pass_obj
def proxy_cmd(obj: Ctx, mode: str | None, config_path: str | None, manifests: str, once: bool, backend_name: str,
              legacy: bool, hostname_override: str | None, serve: bool, verbose: int) -> None:
    """Run kube-proxy: turn Services and EndpointSlices into the mode's rules and keep them in sync."""
    from kproxy.proxy.config import ConfigError, ProxyConfig
    from kproxy.proxy.healthz import HealthState
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
    metrics = ProxyMetrics()
    proxier = build_proxier(obj, cfg, backend_name, legacy, metrics)
    health = HealthState(2 * cfg.sync_period)

    def report(result: SyncResult) -> None:
        kind = "full" if result.full else "partial"
        status = f"FAILED: {result.error.splitlines()[0]}" if result.error else "ok"
        click.echo(f"sync {kind}: {result.lines} restore lines, {result.nat_rules} nat + {result.filter_rules} "
                   f"filter rules, {result.duration * 1000:.1f} ms, {status}", err=True)
        if backend_name == "emulated" and not result.error:
            obj.save()

    runner = ProxyRunner(proxier, manifests, health, after_sync=report)
    if once:
        result = runner.sync_once()
        sys.exit(1 if result.error else 0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    servers = []
    if serve:
        from kproxy.proxy.healthz import serve as serve_http

        try:
            servers = serve_http(health, metrics, cfg.healthz_bind_address, cfg.metrics_bind_address, time.time)
        except OSError as exc:
            click.echo(f"cannot serve healthz/metrics: {exc}", err=True)
    try:
        runner.loop(stop)
    finally:
        for s in servers:
            s.shutdown()


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
    """Remove every chain and jump rule kproxy made (KUBE-*), and nothing else."""
    from kproxy.backends import BackendError, get_backend

    backend = get_backend(backend_name, node=obj.node if backend_name == "emulated" else None, legacy=legacy)
    try:
        lines = backend.cleanup()  # type: ignore[attr-defined]
    except BackendError as exc:
        raise click.ClickException(str(exc)) from None
    if backend_name == "emulated":
        obj.save()
    click.echo(f"cleanup: {lines} restore lines")
