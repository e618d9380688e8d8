"""``kproxy lab``: a cluster of kp- network namespaces with real traffic, or its emulated twin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

from kproxy.cli.main import cli

DEFAULT_DIR = "kproxy-lab"


@cli.group("lab")
def lab_group() -> None:
    """Build and use a multi-node cluster of network namespaces (root needed), or --emulated."""


def _state(directory: str):  # type: ignore[no-untyped-def]
    from kproxy.lab.cluster import LabError, LabState

    try:
        return LabState.load(directory)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None


@lab_group.command("up")
@click.argument("description", type=click.Path(exists=True, dir_okay=False))
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True, help="Where the lab keeps its state.")
@click.option("--no-proxy", is_flag=True, help="Build the cluster without starting kproxy on the nodes.")
@click.option("--emulated", is_flag=True, help="Run the description on emulated nodes and print what each check sees.")
def lab_up(description: str, directory: str, no_proxy: bool, emulated: bool) -> None:
    """Create the cluster in DESCRIPTION (nodes, deployments, services)."""
    from kproxy.lab.cluster import Lab, LabError, LabSpec, start_proxies
    from kproxy.lab.netns import kernel_lab_available

    try:
        spec = LabSpec.load(description)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    if emulated:
        from kproxy.lab.emulated import EmulatedLab

        twin = EmulatedLab(spec)
        twin.sync()
        for pod in twin.state.pods:
            click.echo(f"pod {pod.namespace}/{pod.name:<12} {pod.ip:<15} on {pod.node}")
        click.echo(f"emulated lab {spec.name}: {len(twin.nodes)} nodes synced")
        return
    reason = kernel_lab_available()
    if reason:
        raise click.ClickException(f"cannot build a kernel lab here: {reason} (try --emulated)")
    if Path(directory, "state.json").exists():
        raise click.ClickException(f"a lab is already up in {directory} (kproxy lab down --dir {directory})")
    state = Lab(spec, directory).up()
    Path(directory, "description.yaml").write_text(Path(description).read_text())
    if not no_proxy:
        try:
            start_proxies(spec, state)
        except BaseException:
            from kproxy.lab.cluster import down

            down(state)
            raise
    _print_status(state)


def _print_status(state) -> None:  # type: ignore[no-untyped-def]
    click.echo(f"lab {state.name} in {state.dir}")
    click.echo(f"  client  {state.client}")
    for node, ns in state.nodes.items():
        pid = state.proxies.get(node)
        click.echo(f"  node    {node:<12} {ns:<16} kproxy pid {pid}" if pid else f"  node    {node:<12} {ns}")
    for p in state.pods:
        click.echo(f"  pod     {p.namespace}/{p.name:<12} {p.ip:<15} on {p.node:<10} {p.netns}")


@lab_group.command("status")
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def lab_status(directory: str, as_json: bool) -> None:
    """The lab's namespaces, pods and kproxy processes."""
    from dataclasses import asdict

    state = _state(directory)
    if as_json:
        click.echo(json.dumps(asdict(state), indent=1))
    else:
        _print_status(state)


def _target_ns(state, where: str) -> str:  # type: ignore[no-untyped-def]
    if where == "client":
        return state.client
    if where in state.nodes:
        return state.nodes[where]
    for p in state.pods:
        if where in (p.name, f"{p.namespace}/{p.name}"):
            return p.netns
    raise click.ClickException(f"no client, node or pod called {where!r}")


@lab_group.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True)
@click.argument("where")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec(directory: str, where: str, argv: tuple[str, ...]) -> None:
    """Run a command in the client, a node or a pod (e.g. `kproxy lab exec node-1 iptables-save`)."""
    ns = _target_ns(_state(directory), where)
    sys.exit(subprocess.run(["ip", "netns", "exec", ns, *argv]).returncode)


@lab_group.command("curl")
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True)
@click.option("--udp", is_flag=True, help="Send one UDP datagram instead of an HTTP GET.")
@click.option("--sport", type=int, default=0, help="Source port to bind (keeps a UDP flow's tuple).")
@click.option("--count", type=int, default=1, show_default=True)
@click.argument("where")
@click.argument("target")
def lab_curl(directory: str, udp: bool, sport: int, count: int, where: str, target: str) -> None:
    """From WHERE (client, node or pod) to TARGET (ip:port); prints the answering pod and the peer it saw."""
    from kproxy.lab.probe import probe

    ns = _target_ns(_state(directory), where)
    host, _, port = target.rpartition(":")
    for _ in range(count):
        click.echo(probe(ns, host, int(port), udp=udp, sport=sport))


@lab_group.command("scale")
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True)
@click.argument("deployment")
@click.argument("replicas", type=int)
def lab_scale(directory: str, deployment: str, replicas: int) -> None:
    """Change a deployment's replicas; pods come and go and the EndpointSlices follow."""
    from kproxy.lab.cluster import LabError, scale

    try:
        scale(_state(directory), deployment, replicas)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{deployment} scaled to {replicas}")


@lab_group.command("down")
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True)
def lab_down(directory: str) -> None:
    """Stop the lab's processes and delete all its namespaces."""
    from kproxy.lab.cluster import down

    removed = down(_state(directory))
    click.echo(f"removed {len(removed)} namespaces")
