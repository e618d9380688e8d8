"""The iptables command line: options, rule specifications and their errors, as iptables 1.8.9 parses them.

Both ``iptables ARGS`` and each line of ``iptables-restore`` input go through ``parse_command``.
Like libxtables, only the core options are known here; options after ``-m NAME`` or ``-j NAME``
belong to that extension, and an unknown option after ``-p tcp`` loads the protocol's match
implicitly (``-p tcp --dport 80`` saves as ``-p tcp -m tcp --dport 80``).
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from kproxy.iptables import ext as _ext  # noqa: F401  (registers every extension)
from kproxy.iptables.extension import MATCHES, TARGETS, ExtensionError, Match, Opt, Target
from kproxy.iptables.model import STANDARD_VERDICTS, Net, Rule
from kproxy.iptables.xtutil import NET4, QUAD
from kproxy.packet import PROTO_NUMBERS

XT_CHAIN_MAXNAMELEN = 29
IFNAMSIZ = 16
TABLES = ("filter", "nat", "mangle", "raw", "security")


class ParameterProblem(ValueError):
    """A bad command line (xtables PARAMETER_PROBLEM, exit status 2)."""

    def __init__(self, message: str, usage_hint: bool = True, prefixed: bool = True) -> None:
        super().__init__(message)
        self.usage_hint = usage_hint
        self.prefixed = prefixed


COMMANDS = {
    "-A": "A", "--append": "A", "-C": "C", "--check": "C", "-D": "D", "--delete": "D",
    "-I": "I", "--insert": "I", "-R": "R", "--replace": "R", "-L": "L", "--list": "L",
    "-S": "S", "--list-rules": "S", "-F": "F", "--flush": "F", "-Z": "Z", "--zero": "Z",
    "-N": "N", "--new-chain": "N", "--new": "N", "-X": "X", "--delete-chain": "X",
    "-P": "P", "--policy": "P", "-E": "E", "--rename-chain": "E", "-h": "h", "--help": "h",
    "-V": "V", "--version": "V",
}
# Commands whose chain argument is optional, and which take a rule number.
OPTIONAL_CHAIN = {"L", "S", "F", "Z", "X"}


@dataclass
class Command:
    """One parsed iptables invocation."""

    cmd: str = ""
    chain: str = ""
    rulenum: int = 0
    arg: str = ""                 # the policy for -P, the new name for -E
    table: str = "filter"
    rules: list[Rule] = field(default_factory=list)
    numeric: bool = False
    verbose: bool = False
    exact: bool = False
    line_numbers: bool = False
    zero: bool = False            # -L -Z together
    has_rule: bool = False        # a rule specification was given (-D/-C by spec)


def valid_chain_name(name: str) -> None:
    if len(name) >= XT_CHAIN_MAXNAMELEN:
        raise ParameterProblem(f"chain name `{name}' too long (must be under {XT_CHAIN_MAXNAMELEN} chars)")
    if name.startswith("-"):
        raise ParameterProblem("chain name not allowed to start with `-'")
    if name.startswith("!"):
        raise ParameterProblem("chain name not allowed to start with `!'")
    if not name:
        raise ParameterProblem("empty chain name is not allowed")


def parse_nets(text: str, family: int) -> list[Net]:
    """``-s``/``-d`` values: comma-separated addresses, each with an optional prefix or dotted mask."""
    if "," not in text:
        return [parse_net(text, family)]
    return [parse_net(part, family) for part in text.split(",")]


def parse_net(text: str, family: int) -> Net:
    if family == 4:
        got = NET4.fullmatch(text)
        if got is not None:                     # a plain dotted quad with an optional plain prefix
            quad, plen = got.groups()
            prefix = int(plen) if plen is not None else 32
            ip = int.from_bytes(socket.inet_aton(quad), "big")
            return Net(4, ip & (0xFFFFFFFF ^ ((1 << (32 - prefix)) - 1)), prefix)
    addr, slash, mask = text.partition("/")
    bits = 32 if family == 4 else 128
    ip = _inet_addr(addr, family)
    if not slash:
        prefix = bits
    elif mask.isdigit():
        prefix = int(mask)
        if prefix > bits:
            raise ParameterProblem(f"invalid mask `{mask}' specified")
    else:
        try:
            m = int(ipaddress.ip_address(mask))
        except ValueError:
            raise ParameterProblem(f"invalid mask `{mask}' specified") from None
        prefix = bin(m).count("1")
    mask_int = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
    return Net(family, ip & mask_int, prefix)


def _inet_addr(text: str, family: int) -> int:
    """An address as the tool's resolver takes it (inet_aton forms like ``0`` or ``10.1`` included)."""
    if family == 4:
        if QUAD.fullmatch(text):
            return int.from_bytes(socket.inet_aton(text), "big")
        parts = text.split(".")
        if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts):
            a, b, c, d = (int(p) for p in parts)
            return a << 24 | b << 16 | c << 8 | d
    try:
        ip = ipaddress.ip_address(text)
        if ip.version == family:
            return int(ip)
    except ValueError:
        if family == 4 and text and all(ch.isdigit() or ch == "." for ch in text):
            try:
                return int.from_bytes(socket.inet_aton(text), "big")
            except OSError:
                pass
    raise ParameterProblem(f"host/network `{text}' not found")


def parse_protocol(text: str, family: int) -> int:
    key = text.lower()
    if key in PROTO_NUMBERS:
        return PROTO_NUMBERS[key]
    if key.isdigit() and int(key) <= 255:
        return int(key)
    raise ParameterProblem(f"unknown protocol \"{text}\" specified")


# Core options: name -> (canonical, takes a value).
CORE = {
    "-s": ("s", True), "--source": ("s", True), "--src": ("s", True),
    "-d": ("d", True), "--destination": ("d", True), "--dst": ("d", True),
    "-i": ("i", True), "--in-interface": ("i", True), "-o": ("o", True), "--out-interface": ("o", True),
    "-p": ("p", True), "--protocol": ("p", True), "-f": ("f", False), "--fragment": ("f", False),
    "-j": ("j", True), "--jump": ("j", True), "-g": ("g", True), "--goto": ("g", True),
    "-m": ("m", True), "--match": ("m", True), "-t": ("t", True), "--table": ("t", True),
    "-n": ("n", False), "--numeric": ("n", False), "-v": ("v", False), "--verbose": ("v", False),
    "-x": ("x", False), "--exact": ("x", False), "--line-numbers": ("line", False),
    "-c": ("c", True), "--set-counters": ("c", True), "-w": ("w", False), "--wait": ("w", False),
    "-W": ("W", True), "--wait-interval": ("W", True), "--modprobe": ("M", True),
    "-4": ("4", False), "--ipv4": ("4", False), "-6": ("6", False), "--ipv6": ("6", False),
}
PROTO_MATCH = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6", 132: "sctp", 136: "udplite"}


# Each extension loaded gets the next number: getopt_long sees the newest one's options first.
_LOADS = itertools.count()


class _ExtSlot:
    """An extension being parsed: its class, the options given to it so far, and when it was loaded."""

    __slots__ = ("cls", "opts", "order")

    def __init__(self, cls: type[Match] | type[Target]) -> None:
        self.cls = cls
        self.opts: list[Opt] = []
        self.order = next(_LOADS)


def _once(seen: set[str], key: str, flag: str) -> None:
    if key in seen:
        raise ParameterProblem(f"multiple {flag} flags not allowed")
    seen.add(key)


def parse_command(argv: list[str], family: int = 4, restore: bool = False,
                  default_table: str = "filter", trace: list[tuple[Any, ...]] | None = None) -> Command:
    """Parse one iptables invocation (without the program name); raise ParameterProblem.

    ``trace``, when given, receives where each option and value was taken from: what
    ``kproxy.iptables.plan`` needs to parse later lines of the same shape without this loop.
    """
    c = Command(table=default_table)
    rule = Rule()
    matches: list[_ExtSlot] = []
    target: _ExtSlot | None = None
    counters: tuple[int, int] | None = None
    invert = False
    seen: set[str] = set()
    addrs: dict[str, list[Net]] = {}
    i = 0
    n = len(argv)
    # (No closures over i or seen here: a closure would turn them into cell variables, slower on
    # every access in this loop, which runs for every rule of a restore.)
    while i < n:
        tok = argv[i]
        if tok == "!":
            if invert:
                raise ParameterProblem("multiple consecutive ! not allowed")
            invert = True
            i += 1
            continue
        cmd = COMMANDS.get(tok)
        if cmd is not None:
            if c.cmd and not (c.cmd == "L" and cmd == "Z") and not (c.cmd == "Z" and cmd == "L"):
                raise ParameterProblem(f"Cannot use -{cmd} with -{c.cmd}")
            if c.cmd in ("L", "Z") and cmd in ("L", "Z"):
                c.zero = True
                c.cmd = "L"
            else:
                c.cmd = cmd
            if trace is not None:
                trace.append(("cmd", cmd, i + 1))
            i = _command_args(c, cmd, argv, i)
            continue
        core = CORE.get(tok)
        if core is not None:
            key, takes = core
            if takes:
                i += 1
                if i >= n:
                    raise ParameterProblem(f"option \"{tok}\" requires an argument")
                val = argv[i]
            else:
                val = ""
            if trace is not None:
                trace.append((key, i, invert))
            if key in ("s", "d"):
                _once(seen, key, "-" + key)
                nets = parse_nets(val, family)
                if not (len(nets) == 1 and nets[0].prefixlen == 0 and not invert):
                    addrs[key] = nets
                setattr(rule, f"{'src' if key == 's' else 'dst'}_inv", invert)
            elif key in ("i", "o"):
                _once(seen, key, "-" + key)
                if len(val) >= IFNAMSIZ:
                    raise ParameterProblem(f"interface name `{val}' must be shorter than {IFNAMSIZ} characters")
                if key == "i":
                    rule.iif, rule.iif_inv = val, invert
                else:
                    rule.oif, rule.oif_inv = val, invert
            elif key == "p":
                _once(seen, key, "-p")
                rule.proto = parse_protocol(val, family)
                rule.proto_inv = invert
                if rule.proto == 0 and invert:
                    raise ParameterProblem("rule would never match protocol")
            elif key == "f":
                _once(seen, key, "-f")
                rule.fragment = not invert
            elif key in ("j", "g"):
                if "j" in seen or "g" in seen:
                    raise ParameterProblem("multiple -j flags not allowed")
                seen.add(key)
                target = _set_target(rule, val, key == "g")
            elif key == "m":
                if invert:
                    raise ParameterProblem("unexpected ! flag before --match")
                cls = MATCHES.get(val.lower() if val.lower() in PROTO_MATCH.values() else val)
                if cls is None:
                    raise ParameterProblem(f"Couldn't load match `{val}':No such file or directory\n")
                matches.append(_ExtSlot(cls))
            elif key == "t":
                if restore:
                    raise ParameterProblem("The -t option cannot be used in iptables-restore.\n")
                if val not in TABLES:
                    raise ParameterProblem(f"can't initialize iptables table `{val}': Table does not exist "
                                           "(do you need to insmod?)", usage_hint=False)
                c.table = val
            elif key == "n":
                c.numeric = True
            elif key == "v":
                c.verbose = True
            elif key == "x":
                c.exact = True
            elif key == "line":
                c.line_numbers = True
            elif key == "c":
                i += 1
                if i >= n:
                    raise ParameterProblem("-c requires packet and byte counter")
                try:
                    counters = (int(val), int(argv[i]))
                except ValueError:
                    raise ParameterProblem("-c packet counter not numeric") from None
            elif key == "w" and i + 1 < n and argv[i + 1].isdigit():
                i += 1
            invert = False
            i += 1
            continue
        if tok.startswith("-") and len(tok) > 1:
            slot, name = _owner(tok, target, matches, rule)
            if slot is None:
                raise ParameterProblem(f"unknown option \"{tok}\"")
            count = slot.cls.OPTIONS.nvals[name]
            vals = argv[i + 1:i + 1 + count]
            if not vals and count:
                raise ParameterProblem(f"option \"{tok}\" requires an argument")
            slot.opts.append(Opt(name, vals, invert))
            if trace is not None:
                trace.append((slot, name, i + 1, count, invert))
            invert = False
            i += 1 + count
            continue
        raise ParameterProblem(f"Bad argument `{tok}'", prefixed=False)
    if invert:
        raise ParameterProblem("Bad argument `!'", prefixed=False)
    if not c.cmd:
        raise ParameterProblem("no command specified")
    c.has_rule = bool(seen & {"s", "d", "i", "o", "p", "f", "j", "g"}) or bool(matches)
    if c.cmd in ("A", "I", "D", "R", "C") and (c.cmd != "D" or not c.rulenum or c.has_rule):
        base = _build_rule(rule, matches, target, family)
        if counters is not None:
            base.packets, base.bytes = counters
        c.rules = _expand(base, addrs)
        if trace is not None:
            trace.append(("slots", matches, target))
    return c


def _command_args(c: Command, cmd: str, argv: list[str], i: int) -> int:
    """Consume the chain and positional arguments of a command; return the next index."""
    i += 1
    nxt = argv[i] if i < len(argv) else None
    if cmd in ("h", "V"):
        return i
    positional = nxt is not None and not nxt.startswith("-") and nxt != "!"
    if cmd in OPTIONAL_CHAIN and not positional:
        return i
    if nxt is None:
        raise ParameterProblem(f"option \"-{cmd}\" requires an argument")
    c.chain = nxt  # type: ignore[assignment]
    i += 1
    if cmd == "N":
        valid_chain_name(c.chain)
    if cmd in ("I", "R", "D", "L", "S", "Z") and i < len(argv) and argv[i].isdigit():
        c.rulenum = int(argv[i])
        if c.rulenum < 1 and cmd in ("I", "R", "D"):
            raise ParameterProblem("Invalid rule number `0'")
        i += 1
    elif cmd in ("R",):
        raise ParameterProblem("-R requires a rule number")
    if cmd in ("P", "E"):
        if i >= len(argv):
            raise ParameterProblem(f"-{cmd} requires a {'policy' if cmd == 'P' else 'new chain name'}")
        c.arg = argv[i]
        if cmd == "E":
            valid_chain_name(c.arg)
        i += 1
    return i


def _set_target(rule: Rule, name: str, goto: bool) -> _ExtSlot | None:
    if goto:
        valid_chain_name(name)
        rule.jump, rule.goto = name, True
        return None
    if name in STANDARD_VERDICTS:
        rule.jump = name
        return None
    cls = TARGETS.get(name)
    if cls is None:
        if name.startswith("-") or name.startswith("!"):
            valid_chain_name(name)
        rule.jump = name
        return None
    return _ExtSlot(cls)


# The core's long options, each with the option it stands for (getopt_long's ``val``).
_CORE_LONG = {tok[2:]: key for tok, (key, _) in CORE.items() if tok.startswith("--")} | \
    {tok[2:]: cmd for tok, cmd in COMMANDS.items() if tok.startswith("--")}


def _owner(tok: str, target: _ExtSlot | None, matches: list[_ExtSlot],
           rule: Rule) -> tuple[_ExtSlot | None, str]:
    """The extension an option belongs to and the option's full name, as getopt_long finds it among
    the core's options and the loaded extensions' (the newest first): an exact name, else a prefix
    of one option only. When that fails, the protocol's match is loaded and the search made again
    (``-p tcp --dport 80``). (None, "") for an unknown or ambiguous option: iptables runs getopt
    without its own messages, so both are its "unknown option"."""
    if not tok.startswith("--"):
        return None, ""
    name = tok[2:]
    slots = [target, *reversed(matches)] if target is not None else [*reversed(matches)]
    if target is not None and matches and matches[-1].order > target.order:
        slots.sort(key=lambda s: -s.order)
    found = _resolve(name, slots)
    if found is not None:
        return found
    pname = PROTO_MATCH.get(rule.proto)
    if pname is not None and not rule.proto_inv:
        cls = MATCHES.get(pname)
        if cls is not None and not any(s.cls is cls for s in matches):
            slot = _ExtSlot(cls)
            found = _resolve(name, [slot, *slots])
            if found is not None and found[0] is slot:
                matches.append(slot)
                return found
    return None, ""


def _resolve(name: str, slots: list[_ExtSlot]) -> tuple[_ExtSlot | None, str] | None:
    """getopt_long's search: an exact name (the first in table order), else the one option that
    ``name`` begins (several names of one option count once); None when there is none or several.
    An abbreviation of a core option is left to the core (None here: the core parser has no
    abbreviations yet)."""
    for slot in slots:
        if name in slot.cls.OPTIONS.by_name:
            return slot, name
    found: tuple[_ExtSlot | None, str] | None = None
    ident: tuple[Any, ...] = ()
    for long, key in _CORE_LONG.items():
        if long.startswith(name):
            if found is not None and ident != ("core", key):
                return None
            found, ident = (None, long), ("core", key)
    for slot in slots:
        for entry in slot.cls.OPTIONS.entries:
            if entry.name.startswith(name):
                if found is not None and ident != (slot.order, entry.key):
                    return None
                found, ident = (slot, entry.name), (slot.order, entry.key)
    if found is None or found[0] is None:
        return None
    return found


# Stateless extensions with the same options are one object shared by every rule that uses them
# (a kube-proxy dump repeats "-m tcp --dport 80" and its comments thousands of times).
_SHARED: dict[tuple[Any, ...], Any] = {}
_SHARED_MAX = 200_000


def _extension(slot: _ExtSlot, family: int, rule: Rule) -> Any:
    return extension_for(slot.cls, slot.opts, family, rule)


def extension_for(cls: Any, opts: list[Opt], family: int, rule: Rule) -> Any:
    """The extension ``cls`` parsed from ``opts`` for ``rule``; one shared object per option set when it is stateless."""
    if not cls.SHAREABLE:
        return cls.from_options(opts, family, rule)
    key = (cls, family, rule.proto, rule.proto_inv, tuple([(o.name, *o.values, o.invert) for o in opts]))
    ext = _SHARED.get(key)
    if ext is None:
        ext = cls.from_options(opts, family, rule)
        if not ext.stateful:
            if len(_SHARED) >= _SHARED_MAX:
                _SHARED.clear()
            _SHARED[key] = ext
    return ext


def _build_rule(rule: Rule, matches: list[_ExtSlot], target: _ExtSlot | None, family: int) -> Rule:
    try:
        rule.matches = [_extension(slot, family, rule) for slot in matches]
        if target is not None:
            rule.target = _extension(target, family, rule)
    except ExtensionError as exc:
        raise ParameterProblem(str(exc)) from None
    return rule


def _expand(base: Rule, addrs: dict[str, list[Net]]) -> list[Rule]:
    """One rule per source x destination address, as ``-s a,b`` adds several rules."""
    srcs: list[Net | None] = [*addrs["s"]] if "s" in addrs else [None]
    dsts: list[Net | None] = [*addrs["d"]] if "d" in addrs else [None]
    out = []
    for s in srcs:
        for d in dsts:
            r = base if len(srcs) * len(dsts) == 1 else clone_rule(base)
            r.src, r.dst = s, d
            out.append(r)
    return out


def clone_rule(r: Rule) -> Rule:
    return Rule(r.src, r.src_inv, r.dst, r.dst_inv, r.iif, r.iif_inv, r.oif, r.oif_inv, r.proto, r.proto_inv,
                r.fragment, list(r.matches), r.jump, r.goto, r.target, r.packets, r.bytes)


_TOKEN = re.compile(r'(?:"(?:[^"\\]|\\.)*"?|[^\s"])+')
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"?')


def tokenize(line: str) -> list[str]:
    """Split a restore line like iptables-restore: whitespace, with double quotes grouping (``\\"`` escapes)."""
    if '"' not in line:
        return line.split()
    if line.count('"') == 2 and "\\" not in line:
        # The common case (one quoted comment), without the regular expression.
        pre, _, rest = line.partition('"')
        inner, _, post = rest.partition('"')
        if (not pre or pre[-1] in " \t") and (not post or post[0] in " \t"):
            return [*pre.split(), inner, *post.split()]
    out = []
    for m in _TOKEN.finditer(line):
        tok = m.group()
        if '"' in tok:
            tok = _QUOTED.sub(lambda q: q.group(1).replace('\\"', '"'), tok)
        out.append(tok)
    return out
