"""``kproxy graph``: the chain hierarchy of an iptables table or an nft table as a picture (SVG or DOT)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from kproxy.cli.main import Ctx, cli

MAX_DRAWN = 400       # chains in an SVG: beyond this dot takes minutes and the picture is unreadable


def emit(graph: Any, fmt: str, output: str | None) -> None:
    """Render ``graph`` and write it to ``output`` (or standard output); a one-line error otherwise."""
    from kproxy.pictures.render import PictureError, render

    try:
        text = render(graph, fmt)
    except PictureError as exc:
        raise click.ClickException(str(exc)) from None
    if output is None or output == "-":
        click.echo(text, nl=not text.endswith("\n"))
    else:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)


def draw(build: Callable[[int | None], Any], fmt: str, output: str | None) -> None:
    """Build the picture (at most MAX_DRAWN chains for SVG) and emit it; a one-line error when it is too big."""
    from kproxy.pictures.render import PictureError

    try:
        graph = build(MAX_DRAWN if fmt == "svg" else None)
    except PictureError as exc:
        raise click.UsageError(str(exc)) from None
    emit(graph, fmt, output)


@cli.command("graph")
@click.option("-t", "--table", "table", default=None, help="iptables table to draw (default: filter).")
@click.option("--nft", "nft_table", default=None, metavar="[FAMILY] TABLE",
              help="Draw this nft table instead (\"ip kube-proxy\", or a name: family ip).")
@click.option("-6", "ipv6", is_flag=True, help="The ip6tables table.")
@click.option("--chain", default=None, help="Only the chains reachable from this one.")
@click.option("--format", "fmt", type=click.Choice(["svg", "dot"]), default="svg", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), help="Write here (default stdout).")
@click.pass_obj
def graph_cmd(obj: Ctx, table: str | None, nft_table: str | None, ipv6: bool, chain: str | None, fmt: str,
              output: str | None) -> None:
    """Draw a table's chain hierarchy: jumps (solid), gotos (dashed), verdict maps, rule counts, counters."""
    from kproxy.pictures.chains import iptables_graph, nft_graph

    obj.read_only()
    node = obj.node
    if nft_table is not None:
        if table is not None:
            raise click.UsageError("-t and --nft exclude each other")
        nft_family, _, name = nft_table.rpartition(" ")
        nft_family = nft_family.strip() or "ip"
        ruleset = getattr(node, "nftables", None)
        t = ruleset.find(nft_family, name) if ruleset is not None else None
        if t is None:
            raise click.UsageError(f"--nft: no table {nft_family} {name} on the node")
        if chain is not None and chain not in t.chains:
            raise click.UsageError(f"--chain: no chain {chain} in table {nft_family} {name}")
        draw(lambda most: nft_graph(t, chain, most), fmt, output)
        return
    family = 6 if ipv6 else 4
    name = table or "filter"
    tbl = node.iptables[family].tables.get(name)
    if tbl is None:
        if name not in ("filter", "nat", "mangle", "raw", "security"):
            raise click.UsageError(f"-t: no table {name!r}")
        raise click.UsageError(f"-t {name}: the table does not exist on this node yet (no rule has used it)")
    if chain is not None and chain not in tbl.chains:
        raise click.UsageError(f"--chain: no chain {chain} in table {name}")
    draw(lambda most: iptables_graph(tbl, family, chain, most), fmt, output)
