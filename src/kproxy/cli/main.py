"""The ``kproxy`` command: tool-compatible subcommands on a persistent emulated node, and tracing.

``kproxy iptables ...``, ``kproxy iptables-save``, ``kproxy conntrack -L`` and friends take the
real tools' arguments and print what the real tools print. Each call opens the node file: a
command that only reads (``-L``, ``-S``, ``iptables-save``, ``conntrack -L``, ``ipset list``,
``ipvsadm -L``) reads a consistent snapshot and never writes or creates the file; one that may
change the node takes the node file's write lock (waiting as the real tool would, see
``kproxy.store.lock``) and commits only when it succeeded (so a failure changes nothing).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kproxy.node import Node, NodeError, node_file
from kproxy.store.lock import FOREVER, LockBusy, NodeFileError, Wait
from kproxy.textio import read_stdin, write_text

PASSTHROUGH = {"ignore_unknown_options": True, "allow_interspersed_args": False, "help_option_names": []}


class Ctx:
    """The node file of this invocation; ``node`` opens it (to write unless ``read_only`` was called)."""

    def __init__(self, node_path: str | None) -> None:
        self.path = node_file(node_path)
        self.writing = True
        self.wait = FOREVER
        self._session: Any = None

    def read_only(self) -> None:
        """This command only reads: a snapshot, no lock, no file created."""
        self.writing = False

    @property
    def session(self) -> Any:
        if self._session is None:
            from kproxy.store.session import NodeSession

            self._session = NodeSession(self.path, self.writing, self.wait)
        return self._session

    @property
    def node(self) -> Node:
        try:
            return self.session.node
        except (NodeError, NodeFileError) as exc:
            raise click.ClickException(str(exc)) from None
        except LockBusy as exc:
            sys.stderr.write(f"{exc}\n")
            sys.exit(exc.rc)

    @node.setter
    def node(self, node: Node) -> None:
        try:
            self.session.node = node
        except (NodeError, NodeFileError) as exc:
            raise click.ClickException(str(exc)) from None

    def save(self) -> None:
        """Commit the node (a command that succeeded)."""
        from kproxy.store.session import Retry

        if self._session is None:
            return
        try:
            self._session.commit()
        except Retry:
            raise click.ClickException(f"{self.path}: created by another command meanwhile; run again") from None
        except NodeFileError as exc:
            raise click.ClickException(str(exc)) from None

    def reset(self) -> None:
        """Drop the session without writing (to run the command again on a fresh read)."""
        if self._session is not None:
            self._session.close()
            self._session = None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--node", "node_path", metavar="PATH", help="Node state file (default $KPROXY_NODE, else ./kproxy-node.json).")
@click.version_option(package_name="kproxy")
@click.pass_context
def cli(ctx: click.Context, node_path: str | None) -> None:
    """kproxy: netfilter, conntrack/NAT, ipset and IPVS emulated, with a kube-proxy that programs them."""
    ctx.obj = Ctx(node_path)
    ctx.call_on_close(ctx.obj.reset)


def run_tool(obj: Ctx, fn: Callable[[Node], tuple[int, str, str]], mutates: bool = True,
             wait: Wait = FOREVER, what: str = "", keep_failed: Callable[[], bool] | None = None,
             keeps_nft: bool = False) -> None:
    """Run a tool-compatible command; persist the node only if it succeeded and may have changed it,
    or, when ``keep_failed`` says so after a failure, what the failure left (the kernel's handle
    counters stay advanced after it rejects an nft batch). ``keeps_nft``: the command never touches
    the nft ruleset (iptables, ipset, ipvsadm...), whose saved form is then written back as loaded
    rather than printed again.

    A command run on a fresh node while another created the node file runs again on that file,
    so no change is lost. ``what`` names long work (a restore) to show progress for on a terminal."""
    from kproxy.progress import busy
    from kproxy.store.session import Retry

    obj.writing, obj.wait = mutates, wait
    with busy(what or "working") as progress:
        while True:
            progress.step(f"{what}: loading the node" if what else "loading the node")
            node = obj.node
            progress.step(what or "working")
            rc, out, err = fn(node)
            if not mutates or rc != 0 and not (keep_failed is not None and keep_failed()):
                break
            if keeps_nft and node.nftables is not None:
                from kproxy.nftables.store import note_changes

                note_changes(node.nftables)
            progress.step(f"{what}: saving the node" if what else "saving the node")
            try:
                obj.session.commit()
            except Retry:
                obj.reset()
                continue
            except NodeFileError as exc:
                raise click.ClickException(str(exc)) from None
            break
    obj.reset()
    if out:
        write_text(sys.stdout, out)
    if err:
        write_text(sys.stderr, err)
    sys.exit(rc)


def _iptables_family(name: str) -> int:
    return 6 if name.startswith("ip6") else 4


def iptables_reads(argv: list[str], family: int) -> bool:
    """Whether an iptables command line only reads (-L without -Z, -S, -C, -h, -V; or does not parse)."""
    from kproxy.iptables.parser import parse_command

    try:
        c = parse_command(argv, family)
    except Exception:            # it fails before touching anything (and says why when run)
        return True
    return c.cmd in ("S", "C", "h", "V") or (c.cmd == "L" and not c.zero)


def _lock_wait(prog: str, argv: list[str], restore: bool = False) -> Wait:
    """How long this iptables command waits for the node file's lock; ``-W`` warned about as the tool does."""
    from kproxy.iptables.commands import VERSION
    from kproxy.store.lock import WaitOptionError, iptables_wait

    try:
        wait, warnings = iptables_wait(argv, restore)
    except WaitOptionError as exc:
        sys.stderr.write(f"Ignoring deprecated --wait-interval option.\n{prog} {VERSION}: {exc}\n\n"
                         f"Try `{prog} -h' or '{prog} --help' for more information.\n")
        sys.exit(2)
    for line in warnings:
        sys.stderr.write(line + "\n")
    return wait


def _make_iptables(name: str) -> None:
    @cli.command(name, context_settings=PASSTHROUGH, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @click.pass_obj
    def cmd(obj: Ctx, args: tuple[str, ...]) -> None:
        from kproxy.store.append import fast_append

        family = _iptables_family(name)
        argv = list(args)

        def run(node: Node) -> tuple[int, str, str]:
            done = fast_append(node, argv, family)
            return done if done is not None else node.iptables_cmd(argv, family)

        run_tool(obj, run, mutates=not iptables_reads(argv, family), wait=_lock_wait(name, argv), keeps_nft=True)

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
        stdin = None if sys.stdin is None or sys.stdin.isatty() else read_stdin()
        testing = any(a in ("-t", "--test") for a in args)
        run_tool(obj, lambda node: run_iptables_restore(list(args), node.iptables[family], stdin, node=node),
                 mutates=not testing, wait=_lock_wait(name, list(args), restore=True), what=name, keeps_nft=True)

    cmd.__doc__ = f"{name}: load rules atomically, like the real tool (stdin or a file)."


for _name in ("iptables", "ip6tables"):
    _make_iptables(_name)
for _name in ("iptables-save", "ip6tables-save"):
    _make_save(_name)
for _name in ("iptables-restore", "ip6tables-restore"):
    _make_restore(_name)


def conntrack_reads(argv: list[str]) -> bool:
    """-L, -G and -C only read (unless -L zeroes counters with -z)."""
    from kproxy.cli.conntrack_cmd import COMMANDS, FLAG_OPTS

    cmds = {COMMANDS[a] for a in argv if a in COMMANDS}
    return bool(cmds) and cmds <= {"L", "G", "C"} and not any(a in FLAG_OPTS for a in argv)


@cli.command("conntrack", context_settings=PASSTHROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def conntrack_cmd(obj: Ctx, args: tuple[str, ...]) -> None:
    """conntrack (conntrack-tools 1.4.7 syntax) on the emulated node's connection table."""
    from kproxy.cli.conntrack_cmd import run_conntrack

    run_tool(obj, lambda node: run_conntrack(list(args), node), mutates=not conntrack_reads(list(args)),
             keeps_nft=True)


@cli.command("nfacct", context_settings=PASSTHROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def nfacct_cmd(obj: Ctx, args: tuple[str, ...]) -> None:
    """nfacct (1.0.2 syntax): the emulated node's extended accounting objects."""
    from kproxy.cli.nfacct_cmd import nfacct_reads, run_nfacct

    run_tool(obj, lambda node: run_nfacct(list(args), node), mutates=not nfacct_reads(list(args)), keeps_nft=True)


def ipset_reads(argv: list[str]) -> bool:
    from kproxy.ipset.cli import IpsetError, _split

    try:
        cmd = _split(argv)[0]
    except IpsetError:
        return True
    return cmd in ("list", "save", "test", "version")


@cli.command("ipset", context_settings=PASSTHROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def ipset_cmd(obj: Ctx, args: tuple[str, ...]) -> None:
    """ipset (7.17 syntax) on the emulated node's sets."""
    from kproxy.ipset.cli import run_ipset

    argv = list(args)
    stdin = None
    if argv and argv[0] == "restore" and sys.stdin is not None and not sys.stdin.isatty():
        stdin = read_stdin()
    run_tool(obj, lambda node: run_ipset(argv, node.ipsets, node.now(), stdin=stdin), mutates=not ipset_reads(argv),
             what="ipset " + (argv[0] if argv else ""), keeps_nft=True)


def ipvsadm_reads(argv: list[str]) -> bool:
    from kproxy.ipvs.ipvs import IpvsError
    from kproxy.ipvs.ipvsadm import _parse

    try:
        cmd = _parse(argv)[0]
    except IpvsError:
        return True
    return cmd in ("", "list", "save", "help", "version")


@cli.command("ipvsadm", context_settings=PASSTHROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def ipvsadm_cmd(obj: Ctx, args: tuple[str, ...]) -> None:
    """ipvsadm (1.31 syntax) on the emulated node's IPVS."""
    from kproxy.ipvs.ipvsadm import run_ipvsadm

    argv = list(args)
    stdin = None
    if any(a in ("-R", "--restore") for a in argv) and sys.stdin is not None and not sys.stdin.isatty():
        stdin = read_stdin()
    run_tool(obj, lambda node: run_ipvsadm(argv, node.ipvs, node.now(), stdin=stdin),
             mutates=not ipvsadm_reads(argv), what="ipvsadm", keeps_nft=True)


@cli.group("node")
def node_group() -> None:
    """Create, describe, reset, export and import the emulated node."""


@node_group.command("init")
@click.option("--from", "desc", type=click.Path(exists=True, dir_okay=False), help="Node description (YAML or JSON).")
@click.pass_obj
def node_init(obj: Ctx, desc: str | None) -> None:
    """Start the node afresh (default: lo, eth0 192.168.1.10/24, default route via 192.168.1.1)."""
    from kproxy.textio import utf8_text

    try:
        if desc:
            utf8_text(desc, "the node description")
        fresh = Node.load_description(desc) if desc else Node.default()
    except (NodeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    obj.node = fresh
    obj.save()
    click.echo(f"initialised {obj.path}")


@node_group.command("export")
@click.argument("file", required=False, type=click.Path(dir_okay=False, allow_dash=True))
@click.pass_obj
def node_export(obj: Ctx, file: str | None) -> None:
    """Write everything the node holds as readable JSON (to FILE, or standard output)."""
    from kproxy.node import dump_json
    from kproxy.store.jsonfile import node_to_json

    obj.read_only()
    try:
        text = dump_json(node_to_json(obj.node)) + "\n"
    except NodeFileError as exc:
        raise click.ClickException(str(exc)) from None
    if file in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(file).write_text(text)   # type: ignore[arg-type]


@node_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.pass_obj
def node_import(obj: Ctx, file: str) -> None:
    """Replace the whole node with one exported by ``node export`` (or an old JSON node file)."""
    from kproxy.progress import busy
    from kproxy.store.jsonfile import read_json_node

    data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    try:
        if data.startswith(b"SQLite format 3\0"):
            raise NodeFileError(f"{file}: a node database, not an export: use it with --node, or export it first")
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise NodeFileError(f"{file}: not a JSON node export ({exc.reason} at byte {exc.start})") from None
        with busy("node import: reading"):
            fresh = read_json_node(Path(file), text)
    except NodeFileError as exc:
        raise click.ClickException(str(exc)) from None
    with busy("node import: saving"):
        obj.node = fresh
        obj.save()


@node_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="The node's description as JSON, for scripts.")
@click.pass_obj
def node_show(obj: Ctx, as_json: bool) -> None:
    """Interfaces, addresses, routes and sysctls of the node."""
    obj.read_only()
    node = obj.node
    if as_json:
        import json

        desc = node.describe()
        desc["connected_routes"] = [str(r) for r in node.connected_routes()]
        click.echo(json.dumps(desc, indent=1))
        return
    for iface in node.interfaces.values():
        addrs = " ".join(str(a) for a in iface.addresses)
        click.echo(f"{iface.name:<10} {'UP' if iface.up else 'DOWN':<5} {addrs}")
    for r in node.connected_routes() + node.routes:
        click.echo(f"route      {r}")
    for k, v in sorted(node.sysctls.items()):
        click.echo(f"sysctl     {k} = {v}")


# Modules that register further subcommands on ``cli`` when imported.
COMMAND_MODULES = ("kproxy.cli.commands", "kproxy.cli.proxy_cmd", "kproxy.cli.lab_cmd", "kproxy.cli.verify_cmd",
                   "kproxy.cli.nft_cmd", "kproxy.cli.translate_cmd", "kproxy.cli.doctor_cmd", "kproxy.cli.graph_cmd",
                   "kproxy.cli.capture_cmd")


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
