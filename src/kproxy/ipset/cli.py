"""``ipset`` (7.17): create, add, del, test, list, save, restore, flush, destroy, swap, rename.

Output and error texts are the tool's; a restore applies all of its lines or none (the real tool
stops at the failing line and keeps what came before it).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from kproxy.ipset.registry import IpsetRegistry
from kproxy.ipset.sets import TYPES, IpSet, IpsetError, _port, parse_uint
from kproxy.textio import read_text
from kproxy.versioned import SetMembers

PROG = "ipset v7.17"
COMMANDS = {"create": "create", "n": "create", "add": "add", "a": "add", "del": "del", "d": "del",
            "test": "test", "t": "test", "destroy": "destroy", "x": "destroy", "list": "list", "l": "list",
            "save": "save", "s": "save", "restore": "restore", "r": "restore", "flush": "flush", "f": "flush",
            "rename": "rename", "e": "rename", "swap": "swap", "w": "swap", "version": "version", "v": "version"}
# The one-letter commands of older ipset releases, still taken by 7.17 (``ipset -L``, ``ipset -N s hash:ip``).
LEGACY = {"-N": "create", "-A": "add", "-D": "del", "-T": "test", "-X": "destroy", "-L": "list", "-S": "save",
          "-R": "restore", "-F": "flush", "-E": "rename", "-W": "swap", "-V": "version", "-v": "version",
          "-H": "help", "-h": "help", "--help": "help", "help": "help", "h": "help"}
GLOBAL_FLAGS = {"-exist": "exist", "-!": "exist", "-quiet": "quiet", "-q": "quiet", "-name": "name", "-n": "name",
                "-terse": "terse", "-t": "terse", "-sorted": "sorted", "-s": "sorted", "--json": "json"}


TIMEOUT_MAX = 2147483          # seconds: what fits the kernel's msecs in an int
LIMITS = {"hashsize": 2**32 - 1, "maxelem": 2**32 - 1, "timeout": TIMEOUT_MAX, "size": 2**32 - 1}
IPSET_MAXNAMELEN = 32


class Usage(IpsetError):
    pass


def check_setname(name: str) -> None:
    if len(name.encode(errors="surrogateescape")) >= IPSET_MAXNAMELEN:
        raise IpsetError(f"Syntax error: setname '{name}' is longer than {IPSET_MAXNAMELEN - 1} characters")


def _create(reg: IpsetRegistry, args: list[str], exist: bool) -> None:
    if len(args) < 2:
        raise Usage("Missing mandatory argument: typename" if args else "Missing mandatory argument: setname")
    name, typ, opts = args[0], args[1], args[2:]
    check_setname(name)
    if typ not in TYPES:
        raise IpsetError(f"Syntax error: typename '{typ}' is unknown")
    s = IpSet(name, typ)
    i = 0
    while i < len(opts):
        key = opts[i]
        val = opts[i + 1] if i + 1 < len(opts) else None
        if key in ("counters", "comment"):
            setattr(s, key, True)
            i += 1
            continue
        if val is None:
            raise IpsetError(f"Syntax error: option '{key}' requires an argument")
        if key == "family":
            if val not in ("inet", "inet6"):
                raise IpsetError(f"Syntax error: unknown family {val}")
            s.family = val
        elif key in LIMITS:
            setattr(s, key, parse_uint(val, LIMITS[key]))
        elif key == "range" and typ == "bitmap:port":
            lo, _, hi = val.partition("-")
            a, b = _port(lo), _port(hi or lo)
            s.range = (min(a, b), max(a, b))
        elif key in ("bucketsize", "initval"):
            if key == "initval":
                s.initval = int(val, 0)
        else:
            raise IpsetError(f"Syntax error: Unknown argument: '{key}'")
        i += 2
    if typ == "bitmap:port" and s.range is None:
        raise IpsetError("Syntax error: Missing mandatory argument: range")
    if s.hashsize > 1 << 30:
        raise IpsetError("Kernel error received: Cannot allocate memory")
    s.hashsize = max(64, 1 << (s.hashsize - 1).bit_length())    # the kernel's power of two, at least 64
    s.size = max(4, s.size)
    reg.create(s, exist)


def _element_opts(s: IpSet, opts: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    i = 0
    while i < len(opts):
        key = opts[i]
        if key == "nomatch":
            out["nomatch"] = True
            i += 1
            continue
        if i + 1 >= len(opts):
            raise IpsetError(f"Syntax error: option '{key}' requires an argument")
        val = opts[i + 1]
        if key == "timeout":
            out["timeout"] = parse_uint(val, TIMEOUT_MAX)
            if s.timeout is None:
                raise IpsetError("Timeout cannot be used: set was created without timeout support")
        elif key == "comment":
            out["comment"] = val
        elif key in ("packets", "bytes"):
            out[key] = parse_uint(val, 2**64 - 1)
        else:
            raise IpsetError(f"Syntax error: Unknown argument: '{key}'")
        i += 2
    return out


def _members(s: IpSet, now: float, sort: bool) -> list[tuple[Any, Any]]:
    """Hash order is the kernel's bucket order (not reproducible); ``-sorted`` orders by element value."""
    live = s.live(now)
    return sorted(live, key=lambda ke: ke[0]) if sort else live


def list_set(s: IpSet, reg: IpsetRegistry, now: float, terse: bool = False, sort: bool = False) -> str:
    lines = [f"Name: {s.name}", f"Type: {s.type}", f"Revision: {s.revision}", f"Header: {s.header()}",
             f"Size in memory: {s.memory()}", f"References: {reg.references(s.name)}",
             f"Number of entries: {len(s.live(now))}"]
    if not terse:
        lines.append("Members:")
        lines += [s.element_text(k, e, now) for k, e in _members(s, now, sort)]
    return "\n".join(lines) + "\n"


def set_json(s: IpSet, reg: IpsetRegistry, now: float) -> dict[str, Any]:
    """``list --json``: a set's header and members, for scripts (kproxy's own option)."""
    members = []
    for k, e in _members(s, now, True):
        item: dict[str, Any] = {"element": s.format(k)}
        if s.timeout is not None:
            item["timeout"] = max(0, int(e.expires - now)) if e.expires is not None else 0
        if s.counters:
            item.update(packets=e.packets, bytes=e.bytes)
        if e.comment is not None:
            item["comment"] = e.comment
        if e.nomatch:
            item["nomatch"] = True
        members.append(item)
    header = {"family": s.family, "hashsize": s.hashsize, "maxelem": s.maxelem, "timeout": s.timeout,
              "counters": s.counters, "comment": s.comment}
    return {"name": s.name, "type": s.type, "revision": s.revision, "header": header,
            "references": reg.references(s.name), "members": members}


def save_set(s: IpSet, now: float, sort: bool = False) -> str:
    lines = [f"create {s.name} {s.type} {s.header()}"]
    lines += [f"add {s.name} {s.element_text(k, e, now)}" for k, e in _members(s, now, sort)]
    return "\n".join(lines) + "\n"


def execute(reg: IpsetRegistry, cmd: str, args: list[str], flags: set[str], now: float, out: list[str]) -> int:
    """One command on ``reg``; returns the exit status (test's 'not in set' is 1, not an error)."""
    exist = "exist" in flags
    if cmd == "create":
        _create(reg, args, exist)
    elif cmd in ("add", "del", "test"):
        if len(args) < 2:
            raise Usage("Missing mandatory argument: setname" if not args else "Missing second mandatory argument to command " + cmd)
        s = reg.need(args[0])
        key = s.parse(args[1])
        opts = _element_opts(s, args[2:])
        if cmd == "add":
            if s.type == "list:set":
                reg.need(args[1])
            s.add(key, now, opts.get("timeout"), opts.get("comment"), opts.get("nomatch", False), exist)
            if s.counters and ("packets" in opts or "bytes" in opts):   # as ipset restore sets a saved set's
                entry = s.members[key]
                entry.packets, entry.bytes = opts.get("packets", entry.packets), opts.get("bytes", entry.bytes)
        elif cmd == "del":
            s.delete(key, now, exist)
        elif s.contains(key, now, reg):
            out.append(f"Warning: {args[1]} is in set {s.name}.\n")
        else:
            out.append(f"{args[1]} is NOT in set {s.name}.\n")
            return 1
    elif cmd in ("list", "save"):
        sets = [reg.need(args[0])] if args else reg.ordered()
        if "json" in flags:
            out.append(json.dumps([set_json(s, reg, now) for s in sets], indent=1) + "\n")
        elif cmd == "save" or flags & {"output_save"}:
            out.append("".join(save_set(s, now, "sorted" in flags) for s in sets))
        elif "name" in flags:
            out.append("".join(f"{s.name}\n" for s in sets))
        else:
            out.append("\n".join(list_set(s, reg, now, "terse" in flags, "sorted" in flags) for s in sets))
    elif cmd == "flush":
        for s in ([reg.need(args[0])] if args else list(reg.sets.values())):
            s.members.clear()
    elif cmd == "destroy":
        reg.destroy(args[0] if args else None)
    elif cmd == "swap":
        if len(args) != 2:
            raise Usage("Missing second mandatory argument to command swap")
        reg.swap(args[0], args[1])
    elif cmd == "rename":
        if len(args) != 2:
            raise Usage("Missing second mandatory argument to command rename")
        reg.rename(args[0], args[1])
    elif cmd == "version":
        out.append(f"{PROG}, protocol version: 7\n")
    elif cmd == "help":
        out.append(usage())
    return 0


HELP = [("create SETNAME TYPENAME [type-specific-options]", "Create a new set"),
        ("add SETNAME ENTRY", "Add entry to the named set"), ("del SETNAME ENTRY", "Delete entry from the named set"),
        ("test SETNAME ENTRY", "Test entry in the named set"), ("destroy [SETNAME]", "Destroy a named set or all sets"),
        ("list [SETNAME]", "List the entries of a named set or all sets"),
        ("save [SETNAME]", "Save the named set or all sets to stdout"), ("restore ", "Restore a saved state"),
        ("flush [SETNAME]", "Flush a named set or all sets"), ("rename FROM-SETNAME TO-SETNAME", "Rename a set"),
        ("swap FROM-SETNAME TO-SETNAME", "Swap the contents of two sets"),
        ("help [TYPENAME]", "Print help, and settype specific help"), ("version ", "Print version information")]


def usage() -> str:
    """``ipset help``: the tool's heading, then its commands (each described in kproxy's words) and types."""
    lines = ["ipset v7.17", "", "Usage: ipset [options] COMMAND", "", "Commands:"]
    for synopsis, text in HELP:
        lines += [synopsis, f"        {text}"]
    lines += ["", "Options: -exist (-!), -quiet (-q), -sorted (-s), -name (-n), -terse (-t), -output (-o) save,",
              "         -file (-f) FILE", "", "Supported set types:", *(f"    {t}" for t in TYPES)]
    return "\n".join(lines) + "\n"


def _split(argv: list[str]) -> tuple[str, list[str], set[str]]:
    flags: set[str] = set()
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in GLOBAL_FLAGS:
            flags.add(GLOBAL_FLAGS[a])
        elif a in ("-o", "-output"):
            i += 1
            if i < len(argv) and argv[i] == "save":
                flags.add("output_save")
        elif a in ("-f", "-file"):
            i += 1
            if i < len(argv):
                flags.add("file:" + argv[i])
        else:
            rest.append(a)
        i += 1
    if not rest:
        raise Usage("No command specified: unknown argument")
    cmd = COMMANDS.get(rest[0]) or LEGACY.get(rest[0])
    if cmd is None:
        raise Usage(f"No command specified: unknown argument {rest[0]}")
    return cmd, rest[1:], flags


def run_ipset(argv: list[str], registry: IpsetRegistry, now: float, stdin: str | None = None) -> tuple[int, str, str]:
    out: list[str] = []
    try:
        cmd, args, flags = _split(argv)
        if cmd == "restore":
            text = stdin or ""
            for f in flags:
                if f.startswith("file:"):
                    try:
                        text = read_text(f[5:])
                    except OSError as exc:
                        raise IpsetError(f"Cannot open {f[5:]} for reading: {exc.strerror}") from None
            return _restore(registry, text, flags, now)
        rc = execute(registry, cmd, args, flags, now, out)
    except IpsetError as exc:
        hint = "\nTry `ipset help' for more information." if isinstance(exc, Usage) else ""
        return 1, "", f"{PROG}: {exc}{hint}\n"
    text = "".join(out)
    if cmd == "test":
        return rc, "", ("" if "quiet" in flags else text)
    return rc, text, ""


def _restore(registry: IpsetRegistry, text: str, flags: set[str], now: float) -> tuple[int, str, str]:
    import copy

    work = copy.deepcopy(registry)
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        try:
            words = shlex.split(line)
            cmd = COMMANDS.get(words[0])
            if cmd is None or cmd in ("restore", "list", "save"):
                raise IpsetError(f"Syntax error: unknown command {words[0]}")
            execute(work, cmd, words[1:], flags, now, [])
        except (IpsetError, ValueError) as exc:
            return 1, "", f"{PROG}: Error in line {n}: {exc}\n"
    registry.sets = work.sets
    SetMembers.bump()
    return 0, "", ""
