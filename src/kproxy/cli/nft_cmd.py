"""``kproxy nft``: nft 1.0.6's command line on the emulated node's nftables ruleset."""

from __future__ import annotations

import sys

import click

from kproxy.cli.main import PASSTHROUGH, Ctx, cli, run_tool
from kproxy.node import Node


@cli.command("nft", context_settings=PASSTHROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def nft_cmd(obj: Ctx, args: tuple[str, ...]) -> None:
    """nft (1.0.6 syntax) on the emulated node's nftables ruleset; -f FILE is one atomic transaction.

    -j lists as JSON and, with -f, reads libnftables JSON; --echo prints what was added, with handles;
    -c checks only. For 'nft monitor trace', use 'kproxy trace --nft-monitor'.
    """
    from kproxy.nftables.cli import run_nft
    from kproxy.nftables.evaluate import attach, unevaluated
    from kproxy.nftables.journal import handle_counters
    from kproxy.nftables.store import node_ruleset, note_changes
    from kproxy.nftables.xtables import XtView

    argv = list(args)
    if "monitor" in [a for a in argv if not a.startswith("-")][:1]:
        raise click.UsageError("nft monitor is a live process the emulator has no use for: send packets with "
                               "'kproxy trace --nft-monitor ...' to see the lines 'nft monitor trace' prints for them")
    stdin = None
    if "-" in argv and sys.stdin is not None and not sys.stdin.isatty():
        stdin = sys.stdin.read()

    counters_moved = False

    def run(node: Node) -> tuple[int, str, str]:
        nonlocal counters_moved
        before = node_ruleset(node)
        unhooked = set(unevaluated(before))
        handles = handle_counters(before)
        # in place, under an undo journal: a copy of a big ruleset would cost ten times its loading
        rc, out, err, rs = run_nft(argv, before, stdin, set(node.interfaces), XtView(node), in_place=True,
                                   changed=lambda changes: note_changes(before, changes))
        if rc == 0:
            node.nftables = rs
            # nft itself prints nothing on stderr when it succeeds: the notice cannot mix with its output
            err += "".join(f"kproxy: note: {n}\n" for n in attach(node) if n not in unhooked)
        elif rs is not before or handle_counters(rs) != handles:
            node.nftables, counters_moved = rs, True    # a batch the kernel rejected: only its handle counters moved
        return rc, out, err

    words = [a for a in argv if not a.startswith("-")]
    reads = bool(words) and words[0] in ("list", "describe") and not {"-f", "--file", "-i"} & set(argv)
    run_tool(obj, run, mutates=not reads, what="nft", keep_failed=lambda: counters_moved)
