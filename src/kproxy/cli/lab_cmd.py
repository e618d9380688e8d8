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


def _state(directory: str):
    from kproxy.lab.cluster import LabError, LabState

    try:
        return LabState.load(directory)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None


@lab_group.command("up")
@click.argument("description", type=click.Path(exists=True, dir_okay=False))
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True, help="Where the lab keeps its state.")
@click.option("--no-proxy", is_flag=True, help="Build the cluster without starting kproxy on the nodes.")
@click.option("--emulated", is_flag=True,
              help="Build the cluster on emulated nodes (no root); status, curl, scale and down use it.")
def lab_up(description: str, directory: str, no_proxy: bool, emulated: bool) -> None:
    """Create the cluster in DESCRIPTION (nodes, deployments, services)."""
    from kproxy.lab.cluster import Lab, LabError, LabSpec, modes_unavailable, start_proxies
    from kproxy.lab.netns import kernel_lab_available
    from kproxy.progress import busy

    try:
        spec = LabSpec.load(description)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    if Path(directory, "state.json").exists():
        raise click.ClickException(f"a lab is already up in {directory} (kproxy lab down --dir {directory})")
    if emulated:
        from kproxy.lab.emulated import EmulatedLab

        try:
            with busy("lab: building the emulated cluster"), EmulatedLab(spec) as twin:
                twin.sync()              # (through the lab's API server and each node's watch with source: api)
        except LabError as exc:
            raise click.ClickException(str(exc)) from None
        _print_status(twin.save(directory, Path(description).read_text()))
        return
    reason = kernel_lab_available()
    if reason:
        raise click.ClickException(f"cannot build a kernel lab here: {reason} (try --emulated)")
    reason = "" if no_proxy else modes_unavailable(spec)
    if reason:
        raise click.ClickException(f"cannot run the lab's kproxies on this kernel: {reason}")
    try:
        with busy("lab: building the namespaces, pods and routes"):
            state = Lab(spec, directory).up()
    except (LabError, subprocess.CalledProcessError, OSError) as exc:
        raise click.ClickException(f"cannot build the lab: {_one_line(exc)}") from None
    Path(directory, "description.yaml").write_text(Path(description).read_text())
    if not no_proxy:
        try:
            with busy("lab: starting kproxy on the nodes"):
                start_proxies(spec, state)
        except BaseException as exc:
            from kproxy.lab.cluster import down

            down(state)
            if isinstance(exc, OSError | subprocess.SubprocessError):
                raise click.ClickException(f"cannot start kproxy on the nodes: {_one_line(exc)}") from None
            raise
    _print_status(state)
    if not no_proxy:
        from kproxy.lab.cluster import wait_for_proxies

        try:
            wait_for_proxies(state)
        except LabError as exc:
            hint = f"the lab stays up for a look (kproxy lab down --dir {directory})"
            raise click.ClickException(f"{exc}; {hint}") from None


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return f"{' '.join(map(str, exc.cmd))}: {err.strip() or f'exit status {exc.returncode}'}"
    return " ".join(str(exc).split())


def _print_status(state) -> None:
    click.echo(f"{'emulated lab' if state.emulated else 'lab'} {state.name} in {state.dir}")
    if state.client:
        click.echo(f"  client  {state.client}")
    if state.api:
        click.echo(f"  api     {state.api:<29} server pid {state.api_pid}")
    for node, ns in state.nodes.items():
        pid = state.proxies.get(node)
        where = "(emulated)" if state.emulated else ns
        click.echo(f"  node    {node:<12} {where:<16} kproxy pid {pid}" if pid else f"  node    {node:<12} {where}")
    for p in state.pods:
        click.echo(f"  pod     {p.namespace}/{p.name:<12} {p.ip:<15} on {p.node:<10} {p.netns}".rstrip())


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


def _target_ns(state, where: str) -> str:
    if where == "client":
        return state.client
    if where in state.nodes:
        return state.nodes[where]
    return _pod(state, where).netns


def _pod(state, where: str):
    for p in state.pods:
        if where in (p.name, f"{p.namespace}/{p.name}"):
            return p
    raise click.ClickException(f"no client, node or pod called {where!r}")


@lab_group.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True)
@click.argument("where")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec(directory: str, where: str, argv: tuple[str, ...]) -> None:
    """Run a command in the client, a node or a pod (e.g. `kproxy lab exec node-1 iptables-save`)."""
    state = _state(directory)
    if state.emulated:
        raise click.ClickException(f"the lab in {directory} is emulated: it has no namespaces to run commands in")
    ns = _target_ns(state, where)
    sys.exit(subprocess.run(["ip", "netns", "exec", ns, *argv]).returncode)


@lab_group.command("curl")
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True)
@click.option("--udp", is_flag=True, help="Send one UDP datagram instead of an HTTP GET.")
@click.option("--sport", type=click.IntRange(0, 65535), default=0,
              help="Source port to bind (keeps a UDP flow's tuple).")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True)
@click.argument("where")
@click.argument("target")
def lab_curl(directory: str, udp: bool, sport: int, count: int, where: str, target: str) -> None:
    """From WHERE (client, node or pod) to TARGET (ip:port); prints the answering pod and the peer it saw.

    A request that is refused, times out or fails is reported on stderr, and the exit status is 1.
    """
    from kproxy.lab.probe import failure, parse_target

    try:
        host, port = parse_target(target)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    state = _state(directory)
    send = _emulated_sender(state, where, udp) if state.emulated else _kernel_sender(state, where, udp)
    failed = 0
    for _ in range(count):
        answer = send(host, port, sport)
        why = failure(answer)
        if why is None:
            click.echo(answer)
        else:
            failed += 1
            click.echo(f"Error: {where} -> {target}/{'udp' if udp else 'tcp'}: {why}", err=True)
    if failed:
        sys.exit(1)


def _kernel_sender(state, where: str, udp: bool):
    from kproxy.lab.probe import probe

    ns = _target_ns(state, where)
    return lambda host, port, sport: probe(ns, host, port, udp=udp, sport=sport)


def _emulated_sender(state, where: str, udp: bool):
    from kproxy.lab.cluster import LabError
    from kproxy.lab.emulated import EmulatedLab

    if where in state.nodes:
        raise click.ClickException("an emulated lab sends from the client or a pod, not from a node")
    src = where if where == "client" else _pod(state, where).name
    try:
        twin = EmulatedLab.reopen(state)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    proto = "udp" if udp else "tcp"
    return lambda host, port, sport: twin.request(src, host, port, proto, sport).line()


@lab_group.command("doctor")
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="The findings and traces as JSON.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), help="Also write the HTML page here.")
@click.argument("node")
@click.argument("service")
def lab_doctor(directory: str, as_json: bool, html_file: str | None, node: str, service: str) -> None:
    """kproxy doctor for SERVICE on NODE: the node's kernel (or emulated twin), the lab's objects and pods."""
    import yaml

    from kproxy.lab.cluster import LabError, LabSpec, manifests, pod_objects, proxy_config

    state = _state(directory)
    if node not in state.nodes:
        raise click.ClickException(f"no node called {node!r} in the lab (its nodes: {', '.join(state.nodes)})")
    try:
        spec = LabSpec.load(Path(state.dir, "description.yaml"))
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    objects = Path(state.dir, "doctor-objects.yaml")
    objects.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List",
                                       "items": manifests(spec, state) + pod_objects(state)}, sort_keys=False))
    config = Path(state.dir, f"{node}-doctor-config.yaml")
    config.write_text(proxy_config(spec, node))
    if state.emulated:
        _doctor_emulated(state, node, service, objects, config, as_json, html_file)
    flags = ["--json"] * as_json + (["--html", str(Path(html_file).resolve())] if html_file else [])
    argv = [sys.executable, "-m", "kproxy", "doctor", service, "--backend", "kernel", "--manifests", str(objects),
            "--config", str(config), *flags]
    sys.exit(subprocess.run(["ip", "netns", "exec", state.nodes[node], *argv]).returncode)


def _doctor_emulated(state, node: str, service: str, objects: Path, config: Path, as_json: bool,
                     html_file: str | None) -> None:
    from kproxy.cli.doctor_cmd import run_doctor
    from kproxy.doctor.target import Case, load_objects
    from kproxy.lab.cluster import LabError
    from kproxy.lab.emulated import EmulatedLab
    from kproxy.proxy.config import ProxyConfig

    try:
        twin = EmulatedLab.reopen(state)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    objs, pods = load_objects(str(objects))
    case = Case(twin.nodes[node], objs, ProxyConfig.load(config), node, service, pods=pods, pods_known=True,
                cfg_given=True)
    run_doctor(case, as_json, html_file)


@lab_group.command("scale")
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True)
@click.argument("deployment")
@click.argument("replicas", type=int)
def lab_scale(directory: str, deployment: str, replicas: int) -> None:
    """Change a deployment's replicas; pods come and go and the EndpointSlices follow."""
    from kproxy.lab.cluster import LabError, scale
    from kproxy.lab.emulated import scale_emulated

    state = _state(directory)
    try:
        if state.emulated:
            scale_emulated(state, deployment, replicas)
        else:
            scale(state, deployment, replicas)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{deployment} scaled to {replicas}")


@lab_group.command("down")
@click.option("--dir", "directory", default=DEFAULT_DIR, show_default=True)
def lab_down(directory: str) -> None:
    """Stop the lab's processes and delete all its namespaces."""
    from kproxy.lab.cluster import down

    state = _state(directory)
    removed = down(state)
    click.echo(f"removed emulated lab {state.name}" if state.emulated else f"removed {len(removed)} namespaces")
