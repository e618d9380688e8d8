"""``iptables-save`` and ``iptables-restore`` command lines, with the real tools' options and errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kproxy.textio import read_text

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node

RESTORE_SHORT = {"c": "counters", "v": "verbose", "V": "version", "t": "test", "h": "help", "n": "noflush",
                 "w": "wait", "W": "wait-interval", "M": "modprobe", "T": "table", "4": "ipv4", "6": "ipv6"}
RESTORE_ARG = {"wait-interval", "modprobe", "table"}
SAVE_SHORT = {"c": "counters", "t": "table", "M": "modprobe", "f": "file", "V": "version"}
SAVE_ARG = {"table", "modprobe", "file"}


class _Usage(Exception):
    pass


def _getopt(prog: str, argv: list[str], short: dict[str, str], with_arg: set[str],
            optional: set[str] = frozenset()) -> tuple[dict[str, str | None], list[str]]:  # type: ignore[assignment]
    """GNU getopt_long as the tools use it; errors carry getopt's own wording."""
    opts: dict[str, str | None] = {}
    rest: list[str] = []
    longs = set(short.values())
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and len(a) > 2:
            name, eq, text = a[2:].partition("=")
            val: str | None = text
            cands = [n for n in longs if n.startswith(name)]
            exact: str | None = name if name in longs else (cands[0] if len(cands) == 1 else None)
            if exact is None:
                raise _Usage(f"{prog}: unrecognized option '{a}'")
            if exact in with_arg and not eq:
                if exact in optional:
                    val = None
                else:
                    i += 1
                    if i >= len(argv):
                        raise _Usage(f"{prog}: option '--{exact}' requires an argument")
                    val = argv[i]
            opts[exact] = val if (eq or exact in with_arg) else None
        elif a.startswith("-") and len(a) > 1:
            j = 1
            while j < len(a):
                ch = a[j]
                if ch not in short:
                    raise _Usage(f"{prog}: invalid option -- '{ch}'")
                name = short[ch]
                if name in with_arg:
                    val = a[j + 1:]
                    if not val and name not in optional:
                        i += 1
                        if i >= len(argv):
                            raise _Usage(f"{prog}: option requires an argument -- '{ch}'")
                        val = argv[i]
                    opts[name] = val or None
                    break
                opts[name] = None
                j += 1
        else:
            rest.append(a)
        i += 1
    return opts, rest


def _variant(family: int) -> str:
    return "iptables" if family == 4 else "ip6tables"


def run_iptables_restore(argv: list[str], state: Any, stdin: str | None, node: Node | None = None) -> tuple[int, str, str]:
    """``iptables-restore [-c] [-n] [-t] [-T table] [file]``: exit code, stdout, stderr."""
    from kproxy.iptables.restore import RestoreError, restore

    prog = f"{_variant(state.family)}-restore"
    try:
        opts, rest = _getopt(prog, argv, RESTORE_SHORT, RESTORE_ARG, optional={"wait", "wait-interval"})
    except _Usage as exc:
        return 1, "", f"{exc}\nTry `{prog} -h' for more information.\n"
    if "help" in opts:
        return 0, "", restore_usage(prog)
    if "version" in opts:
        return 0, f"{prog} v1.8.9 (nf_tables)\n", ""
    if rest:
        try:
            text = read_text(rest[0])
        except OSError as exc:
            return 1, "", f"Can't open {rest[0]}: {exc.strerror}\n"
        source = rest[0]
    else:
        text, source = stdin or "", "<stdin>"
    tables = [str(opts["table"])] if opts.get("table") else None
    echo: list[str] | None = [] if "verbose" in opts else None
    warned: list[str] = []
    try:
        restore(text, state, noflush="noflush" in opts, counters="counters" in opts, test="test" in opts,
                tables=tables, source=source, node=node, echo=echo, warnings=warned)
    except RestoreError as exc:
        return exc.rc, "".join(echo or ()), f"{exc}\n"
    return 0, "".join(echo or ()), "".join(warned)


def restore_usage(prog: str) -> str:
    """What ``iptables-restore -h`` prints (on stderr), listing the options it takes."""
    longs = ["counters", "verbose", "version", "test", "help", "noflush", "table=<TABLE>", "modprobe=<command>",
             "ipv4", "ipv6"]
    head = f"Usage: {prog} [-c] [-v] [-V] [-t] [-h] [-n] [-T table] [-M command] [-4] [-6] [file]\n"
    return head + "".join(f"\t   [ --{o}{'' if o == 'version' else ' '}]\n" for o in longs)


def run_iptables_save(argv: list[str], state: Any) -> tuple[int, str, str]:
    """``iptables-save [-c] [-t table] [-f file]``: exit code, stdout, stderr."""
    from kproxy.iptables.save import save

    prog = f"{_variant(state.family)}-save"
    try:
        opts, rest = _getopt(prog, argv, SAVE_SHORT, SAVE_ARG)
    except _Usage as exc:
        return 1, "", f"{exc}\nLook at manual page `{prog}.8' for more information.\n"
    if "version" in opts:
        return 0, f"{prog} v1.8.9 (nf_tables)\n", ""
    table = opts.get("table")
    if table is not None and table not in ("filter", "nat", "mangle", "raw", "security"):
        return 1, "", f"Table `{table}' does not exist\n"
    text = save(state, tables=[table] if table else None, counters="counters" in opts)
    if opts.get("file"):
        try:
            Path(str(opts["file"])).write_text(text)
        except OSError as exc:
            return 1, "", f"Failed to open file, error: {exc.strerror}\n"
        return 0, "", ""
    return 0, text, ""
