"""``kproxy doctor`` (why a Service is not reachable, with evidence) and ``kproxy graph`` (chains as a picture)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kproxy.cli.main import Ctx, cli


@cli.command("doctor")
@click.argument("service")
@click.option("--manifests", type=click.Path(exists=True),
              help="Services, EndpointSlices (and Pods, for the selector check): a file or directory.")
@click.option("--kubeconfig", default=None, help="Read the objects from the API server of this kubeconfig instead.")
@click.option("--master", default=None, help="The API server's address (overrides the kubeconfig's).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="The KubeProxyConfiguration kube-proxy runs with (its clusterCIDR, hostname, mode).")
@click.option("--hostname-override", default=None, help="This node's name (default: the config's, else the node's).")
@click.option("--backend", "backend_name", type=click.Choice(["emulated", "kernel"]), default="emulated",
              show_default=True, help="Examine the emulated node (--node), or this network namespace's kernel "
              "(captured read-only into an emulated node).")
@click.option("--legacy", is_flag=True, help="With --backend kernel: iptables-legacy instead of iptables-nft.")
@click.option("--json", "as_json", is_flag=True, help="The findings and traces as JSON, for scripts.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True),
              help="Also write one self-contained HTML page with the findings, traces and pictures.")
@click.pass_obj
def doctor_cmd(obj: Ctx, service: str, manifests: str | None, kubeconfig: str | None, master: str | None,
               config_path: str | None, hostname_override: str | None,
               backend_name: str, legacy: bool, as_json: bool, html_file: str | None) -> None:
    """Work through the "Service not reachable" checklist for SERVICE (namespace/name[:port] or address:port)
    on this node; exit 0 only when every path reaches an endpoint and nothing is wrong."""
    from kproxy.doctor.target import Case, load_objects
    from kproxy.k8s.manifests import ManifestError
    from kproxy.progress import busy
    from kproxy.proxy.config import ConfigError, ProxyConfig

    obj.read_only()
    if bool(manifests) == bool(kubeconfig or master):
        raise click.UsageError("give the objects with --manifests, or the API server with --kubeconfig/--master")
    try:
        cfg = ProxyConfig.load(config_path) if config_path else ProxyConfig()
        objs, pods = load_objects(manifests) if manifests else \
            (api_objects(kubeconfig or "", master or "", hostname_override or cfg.hostname), [])
    except (ConfigError, ManifestError) as exc:
        raise click.ClickException(str(exc)) from None
    for w in objs.warnings:
        click.echo(f"warning: {w}", err=True)
    if backend_name == "kernel":
        from kproxy.doctor.capture import CaptureError, capture_kernel
        from kproxy.node import NodeError

        try:
            with busy("doctor: reading the kernel"):
                node = capture_kernel(legacy)
        except (CaptureError, NodeError, ValueError) as exc:
            raise click.ClickException(f"cannot read the kernel: {exc}") from None
    else:
        node = obj.node
    hostname = hostname_override or cfg.hostname_override or node.name
    case = Case(node, objs, cfg, hostname, service, pods=pods, pods_known=bool(pods), cfg_given=bool(config_path))
    run_doctor(case, as_json, html_file)


def run_doctor(case: Any, as_json: bool, html_file: str | None) -> None:
    """Diagnose, print the report (text or JSON), write the HTML page, and exit 0 only when healthy."""
    from kproxy.doctor.report import diagnose, render_json, render_text
    from kproxy.doctor.target import TargetError
    from kproxy.progress import busy
    from kproxy.textio import write_text

    try:
        with busy("doctor: checking"):
            report = diagnose(case)
    except TargetError as exc:
        raise click.UsageError(str(exc)) from None
    write_text(sys.stdout, (render_json(report) if as_json else render_text(report)) + "\n")
    if html_file:
        from kproxy.doctor.html import render_html

        Path(html_file).write_text(render_html(report, case.node), encoding="utf-8", errors="replace")
    sys.exit(0 if report.healthy else 1)


def api_objects(kubeconfig: str, master: str, hostname: str) -> Any:
    """Services, EndpointSlices and Nodes as the API server lists them (one list, as the proxy's informers start)."""
    import threading

    from kproxy.k8s.source import SourceError
    from kproxy.k8s.watch import ApiSetupError, ApiSource, api_client

    try:
        source = ApiSource(api_client(kubeconfig, master), hostname, threading.Event())
    except ApiSetupError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        return source.initial(timeout=30)
    except SourceError as exc:
        raise click.ClickException(f"the API server: {exc}") from None
    finally:
        source.close()
