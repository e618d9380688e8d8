"""The ``kproxy`` command: tool-compatible subcommands on a persistent emulated node, and tracing.

``kproxy iptables ...``, ``kproxy iptables-save``, ``kproxy conntrack -L`` and friends take the
real tools' arguments and print what the real tools print; each call loads the node from its state
file, runs, and saves it back only when the command succeeded (so a failure changes nothing).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kproxy.node import Node, NodeError, node_file

PASSTHROUGH = {"ignore_unknown_options": True, "allow_interspersed_args": False, "help_option_names": []}


class Ctx:
    def __init__(self, node_path: str | None) -> None:
        self.path = node_file(node_path)
        self._node: Node | None = None

    @property
    def node(self) -> Node:
        if self._node is None:
            from kproxy.store import load_node

            try:
                self._node = load_node(self.path)
            except (NodeError, ValueError) as exc:
                raise click.ClickException(str(exc)) from None
        return self._node

    def save(self) -> None:
        from kproxy.store import save_node

        if self._node is not None:
            save_node(self._node, self.path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--node", "node_path", metavar="PATH", help="Node state file (default $KPROXY_NODE, else ./kproxy-node.json).")
@click.version_option(package_name="kproxy")
@click.pass_context
def cli(ctx: click.Context, node_path: str | None) -> None:
    """kproxy: netfilter, conntrack/NAT, ipset and IPVS emulated, with a kube-proxy that programs them."""
    ctx.obj = Ctx(node_path)


def run_tool(obj: Ctx, fn: Callable[[Node], tuple[int, str, str]], mutates: bool = True) -> None:
    """Run a tool-compatible command; persist the node only if it succeeded."""
    rc, out, err = fn(obj.node)
    if out:
        sys.stdout.write(out)
    if err:
        sys.stderr.write(err)
    if rc == 0 and mutates:
        obj.save()
    sys.exit(rc)


def _iptables_family(name: str) -> int:
    return 6 if name.startswith("ip6") else 4


def _make_iptables(name: str) -> None:
    @cli.command(name, context_settings=PASSTHROUGH, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @click.pass_obj
    def cmd(obj: Ctx, args: tuple[str, ...]) -> None:
        family = _iptables_family(name)
        run_tool(obj, lambda node: node.iptables_cmd(list(args), family))

    cmd.__doc__ = f"{name} with the real tool's arguments, on the emulated node."


def _make_save(name: str) -> None:
    @cli.command(name, context_settings=PASSTHROUGH, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @click.pass_obj
    def cmd(obj: Ctx, args: tuple[str, ...]) -> None:
        from kproxy.iptables.tools import run_iptables_save

        family = _iptables_family(name)
        run_tool(obj, lambda node: run_iptables_save(list(args), node.iptables[family]), mutates=False)

    cmd.__doc__ = f"{name}: print the emulated node's rules in the real tool's format."


def _make_restore(name: str) -> None:
    @cli.command(name, context_settings=PASSTHROUGH, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @click.pass_obj
    def cmd(obj: Ctx, args: tuple[str, ...]) -> None:
        from kproxy.iptables.tools import run_iptables_restore

        family = _iptables_family(name)
        stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
        run_tool(obj, lambda node: run_iptables_restore(list(args), node.iptables[family], stdin, node=node))

    cmd.__doc__ = f"{name}: load rules atomically, like the real tool (stdin or a file)."


for _name in ("iptables", "ip6tables"):
    _make_iptables(_name)
for _name in ("iptables-save", "ip6tables-save"):
    _make_save(_name)
for _name in ("iptables-restore", "ip6tables-restore"):
    _make_restore(_name)


@cli.command("conntrack", context_settings=PASSTHROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def conntrack_cmd(obj: Ctx, args: tuple[str, ...]) -> None:
    """conntrack (conntrack-tools 1.4.7 syntax) on the emulated node's connection table."""
    from kproxy.cli.conntrack_cmd import run_conntrack

    run_tool(obj, lambda node: run_conntrack(list(args), node))


@cli.command("ipset", context_settings=PASSTHROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def ipset_cmd(obj: Ctx, args: tuple[str, ...]) -> None:
    """ipset (7.17 syntax) on the emulated node's sets."""
    from kproxy.ipset.cli import run_ipset

    argv = list(args)
    stdin = None
    if argv and argv[0] == "restore" and sys.stdin is not None and not sys.stdin.isatty():
        stdin = sys.stdin.read()
    run_tool(obj, lambda node: run_ipset(argv, node.ipsets, node.now(), stdin=stdin))


@cli.command("ipvsadm", context_settings=PASSTHROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def ipvsadm_cmd(obj: Ctx, args: tuple[str, ...]) -> None:
    """ipvsadm (1.31 syntax) on the emulated node's IPVS."""
    from kproxy.ipvs.ipvsadm import run_ipvsadm

    argv = list(args)
    stdin = None
    if any(a in ("-R", "--restore") for a in argv) and sys.stdin is not None and not sys.stdin.isatty():
        stdin = sys.stdin.read()
    run_tool(obj, lambda node: run_ipvsadm(argv, node.ipvs, node.now(), stdin=stdin))


@cli.group("node")
def node_group() -> None:
    """Create, describe and reset the emulated node."""


@node_group.command("init")
@click.option("--from", "desc", type=click.Path(exists=True, dir_okay=False), help="Node description (YAML or JSON).")
@click.pass_obj
def node_init(obj: Ctx, desc: str | None) -> None:
    """Start the node afresh (default: lo, eth0 192.168.1.10/24, default route via 192.168.1.1)."""
    try:
        obj._node = Node.load_description(desc) if desc else Node.default()
    except NodeError as exc:
        raise click.ClickException(str(exc)) from None
    obj.save()
    click.echo(f"initialised {obj.path}")


@node_group.command("show")
@click.pass_obj
def node_show(obj: Ctx) -> None:
    """Interfaces, addresses, routes and sysctls of the node."""
    node = obj.node
    for iface in node.interfaces.values():
        addrs = " ".join(str(a) for a in iface.addresses)
        click.echo(f"{iface.name:<10} {'UP' if iface.up else 'DOWN':<5} {addrs}")
    for r in node.connected_routes() + node.routes:
        click.echo(f"route      {r}")
    for k, v in sorted(node.sysctls.items()):
        click.echo(f"sysctl     {k} = {v}")


# Modules that register further subcommands on ``cli`` when imported.
COMMAND_MODULES = ("kproxy.cli.commands", "kproxy.cli.proxy_cmd", "kproxy.cli.lab_cmd", "kproxy.cli.verify_cmd",
                   "kproxy.cli.nft_cmd")


def main(argv: list[str] | None = None) -> Any:
    import importlib

    for name in COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return cli.main(args=argv, prog_name="kproxy")


def kproxy_home() -> Path:
    return Path(__file__).resolve().parents[3]
