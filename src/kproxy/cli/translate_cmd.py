"""``kproxy iptables-translate`` and ``iptables-restore-translate`` (and the ip6tables ones): iptables
rules in nft syntax, as iptables 1.8.9's translators print them. They only read the node (the ipsets
a ``-m set`` rule names must exist, as the real tool asks the kernel)."""

from __future__ import annotations

import click

from kproxy.cli.main import PASSTHROUGH, Ctx, cli, run_tool


def _family(name: str) -> int:
    return 6 if name.startswith("ip6") else 4


def _make_translate(name: str, restore: bool) -> None:
    """One translator command: of a command line, or (``restore``) of an iptables-save file."""

    @cli.command(name, context_settings=PASSTHROUGH, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @click.pass_obj
    def cmd(obj: Ctx, args: tuple[str, ...]) -> None:
        from kproxy.iptables.translate import run_restore_translate, run_translate

        run = run_restore_translate if restore else run_translate
        run_tool(obj, lambda node: run(list(args), _family(name), node), mutates=False)

    cmd.__doc__ = (f"{name} -f FILE: an iptables-save file as the nft script iptables 1.8.9 translates it to."
                   if restore else
                   f"{name}: an iptables command line as the nft command iptables 1.8.9 translates it to.")


for _name in ("iptables-translate", "ip6tables-translate"):
    _make_translate(_name, restore=False)
for _name in ("iptables-restore-translate", "ip6tables-restore-translate"):
    _make_translate(_name, restore=True)
