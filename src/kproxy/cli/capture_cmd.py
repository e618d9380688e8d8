"""``kproxy node capture`` and ``kproxy node load``: a live node's state, or its dumps, into the node file."""

from __future__ import annotations

import click

from kproxy.cli.main import Ctx, node_group
from kproxy.node import Node
from kproxy.store.chains import gc_paused

# A big node's objects are frozen when the command ends (out of the collector's reach): the
# interpreter's last collection at exit would otherwise traverse every one of them.
FREEZE_OVER = 100_000


def _replace(obj: Ctx, node: Node) -> None:
    """The node file becomes ``node`` in one commit: a failure before this leaves it as it was."""
    obj.node = node
    obj.save()
    click.echo(f"wrote {obj.path}: {_summary(node)}")
    for warning in node.origin.get("warnings", []):     # e.g. rules of the other iptables variant, not captured
        click.echo(f"warning: {warning}", err=True)


def _summary(node: Node) -> str:
    rules = sum(len(c.rules) for fam in (4, 6) for t in node.iptables[fam].tables.values() for c in t.chains.values())
    nft = len(node.nftables.tables) if node.nftables is not None else 0
    return (f"{len(node.interfaces)} interfaces, {len(node.routes)} routes, {rules} iptables rules, "
            f"{nft} nft tables, {len(node.ipsets.sets)} ipsets, {len(node.ipvs.services)} IPVS services, "
            f"{len(node.conntrack)} connections")


@node_group.command("capture")
@click.option("--netns", metavar="NAME", help="Capture the named network namespace (ip netns exec NAME).")
@click.option("--conntrack", "with_conntrack", is_flag=True, help="Also take the conntrack table (conntrack -L).")
@click.pass_obj
def node_capture(obj: Ctx, netns: str | None, with_conntrack: bool) -> None:
    """Take a live node's interfaces, routes, sysctls, iptables, nft, ipsets and IPVS into the node file."""
    from kproxy.capture import CaptureError, build, capture

    with gc_paused(FREEZE_OVER):       # a big node is many long-lived objects: a collection would rescan them all
        try:
            node = build(capture(netns, with_conntrack))
        except CaptureError as exc:
            raise click.ClickException(str(exc)) from None
        _replace(obj, node)


@node_group.command("load")
@click.option("--name", default="node", show_default=True, help="The node's name.")
@click.option("--addr", multiple=True, metavar="FILE", help="'ip -j addr' output.")
@click.option("--route", multiple=True, metavar="FILE", help="'ip -j route' output (repeat for -4 and -6).")
@click.option("--sysctl", multiple=True, metavar="FILE", help="'sysctl KEY...' output (key = value lines).")
@click.option("--iptables", multiple=True, metavar="FILE", help="'iptables-save -c' (or without -c) output.")
@click.option("--ip6tables", multiple=True, metavar="FILE", help="'ip6tables-save -c' output.")
@click.option("--nft", multiple=True, metavar="FILE", help="'nft -j list ruleset' or 'nft list ruleset' output.")
@click.option("--ipset", multiple=True, metavar="FILE", help="'ipset save' output.")
@click.option("--ipvs", multiple=True, metavar="FILE", help="'ipvsadm -Sn' output.")
@click.option("--conntrack", multiple=True, metavar="FILE", help="'conntrack -L' output.")
@click.pass_obj
def node_load(obj: Ctx, name: str, **files: tuple[str, ...]) -> None:
    """Build the node file from dumps taken elsewhere (any subset); bad input changes nothing."""
    from kproxy.capture import CaptureError, build, read_dumps

    with gc_paused(FREEZE_OVER):
        try:
            node = build(read_dumps({k: v for k, v in files.items() if v}, name))
        except CaptureError as exc:
            raise click.ClickException(str(exc)) from None
        _replace(obj, node)

