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
from kproxy.iptables.extension import ExtensionError, Match, Opt, Target, match_class, target_class
from kproxy.iptables.model import STANDARD_VERDICTS, Net, Rule
from kproxy.iptables.xtutil import NET4, QUAD, c_strtoui
from kproxy.nftables.types import protocols
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
        self.warnings: list[str] = []      # printed before the error


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
    warnings: list[str] = field(default_factory=list)   # printed on stderr, as the tool warns and goes on


# C isspace() and more: any character Python splits words at, so that every name saves and restores intact.
_BLANK = re.compile(r"\s")
INT_MAX = 2**31 - 1
# Target extensions iptables 1.8.9 can load: ``-N`` refuses them as chain names ("" is the standard target).
_TOOL_TARGETS = frozenset({
    "", "standard", *STANDARD_VERDICTS, "AUDIT", "CHECKSUM", "CLASSIFY", "CONNMARK", "CONNSECMARK", "CT", "DNAT",
    "DSCP", "HMARK", "IDLETIMER", "LED", "LOG", "MARK", "MASQUERADE", "NETMAP", "NFLOG", "NFQUEUE", "NOTRACK",
    "RATEEST", "REDIRECT", "REJECT", "SECMARK", "SET", "SNAT", "SYNPROXY", "TCPMSS", "TCPOPTSTRIP", "TEE", "TOS",
    "TPROXY", "TRACE"})
_FAMILY_TARGETS = {4: frozenset({"TTL", "ECN", "CLUSTERIP", "ULOG"}), 6: frozenset({"HL", "SNPT", "DNPT"})}


def valid_chain_name(name: str, family: int = 4) -> None:
    """``-N``'s checks, in the tool's order: length, first character, target names, blanks."""
    if len(name.encode(errors="surrogateescape")) >= XT_CHAIN_MAXNAMELEN:
        raise ParameterProblem(f"chain name `{name}' too long (must be under {XT_CHAIN_MAXNAMELEN} chars)")
    if name.startswith("-"):
        raise ParameterProblem("chain name not allowed to start with `-'")
    if name.startswith("!"):
        raise ParameterProblem("chain name not allowed to start with `!'")
    if name in _TOOL_TARGETS or name in _FAMILY_TARGETS[family] or target_class(name, family) is not None:
        raise ParameterProblem("chain name may not clash with target name")
    if _BLANK.search(name):
        raise ParameterProblem(f"Invalid chain name `{name}'")


def renamed_chain_name(name: str) -> None:
    """``-E``'s new name: iptables 1.8.9 checks nothing, but a name with blanks could not be saved and restored
    (the node file is iptables-save text), so it gets ``-N``'s error; an overlong name is the kernel's refusal."""
    if _BLANK.search(name):
        raise ParameterProblem(f"Invalid chain name `{name}'")


_GOOD_JUMPS: set[str] = set()       # names found valid (a dump jumps to KUBE-MARK-MASQ thousands of times)


def valid_jump_name(name: str) -> None:
    """A ``-j``/``-g`` argument that is no target: a chain name the kernel can hold."""
    if name in _GOOD_JUMPS:
        return
    if len(name.encode(errors="surrogateescape")) >= XT_CHAIN_MAXNAMELEN:
        raise ParameterProblem(f"Invalid target name `{name}' ({XT_CHAIN_MAXNAMELEN - 1} chars max)")
    if _BLANK.search(name):
        raise ParameterProblem(f"Invalid target name `{name}'")
    if len(_GOOD_JUMPS) >= 100_000:
        _GOOD_JUMPS.clear()
    _GOOD_JUMPS.add(name)


def iface_problem(name: str) -> str | None:
    """Why ``-i``/``-o`` refuses an interface name, or None. The tool only warns about a blank; it is refused
    here because the saved rule (``-i a b``) could not be restored."""
    if not name:
        return "Empty interface is likely to be undesired"
    if len(name.encode(errors="surrogateescape")) >= IFNAMSIZ:
        return f"interface name `{name}' must be shorter than IFNAMSIZ ({IFNAMSIZ - 1})"
    if _BLANK.search(name):
        return f"Invalid interface name `{name}'"
    return None


def parse_rulenum(text: str) -> int:
    """A rule number as xtables_strtoui takes it (``+1``, ``0x1`` and ``010`` included), 1..INT_MAX."""
    n = c_strtoui(text, 1, INT_MAX)
    if n is None:
        raise ParameterProblem(f"Invalid rule number `{text}'")
    return n


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
    by_name = protocols()[0]            # getprotobyname: /etc/protocols (ipcomp, ospf, ...)
    if text in by_name:
        return by_name[text]
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
# Extension values cannot hold a newline: the tool refuses it in log prefixes (calling both options
# --log-prefix); elsewhere (a comment) it is refused here, as the saved rule could not be restored.
_NEWLINE_NAMES = {"nflog-prefix": "log-prefix"}
PROTO_MATCH = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6", 132: "sctp", 136: "udplite", 33: "dccp"}


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
    The warnings printed before an error (an extension the kernel lacks) go with the error.
    """
    c = Command(table=default_table)
    try:
        return _parse_command(c, argv, family, restore, trace)
    except ParameterProblem as exc:
        exc.warnings = c.warnings
        raise


def _load_warning(c: Command, cls: Any) -> None:
    """What libxtables prints when it loads an extension whose kernel module is missing."""
    if cls.KERNEL_LACKS:
        c.warnings.append(f"Warning: Extension {cls.name} revision {cls.REVISION} not supported, "
                          "missing kernel module?\n")


def _parse_command(c: Command, argv: list[str], family: int, restore: bool,
                   trace: list[tuple[Any, ...]] | None) -> Command:
    rule = Rule()
    matches: list[_ExtSlot] = []
    target: _ExtSlot | None = None
    counters: tuple[int, int] | None = None
    invert = False
    seen: set[str] = set()
    raw_addrs: dict[str, tuple[str, bool]] = {}     # -s/-d as given: parsed after the options, as the tool does
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
            if cmd == "h":                       # the tool prints its help as soon as it meets -h
                return Command(cmd="h", table=c.table)
            if c.cmd and not (c.cmd == "L" and cmd == "Z") and not (c.cmd == "Z" and cmd == "L"):
                raise ParameterProblem(f"Cannot use -{cmd} with -{c.cmd}")
            if c.cmd in ("L", "Z") and cmd in ("L", "Z"):
                c.zero = True
                c.cmd = "L"
            else:
                c.cmd = cmd
            if trace is not None:
                trace.append(("cmd", cmd, i + 1))
            i = _command_args(c, cmd, argv, i, family)
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
                raw_addrs[key] = (val, invert)
                setattr(rule, f"{'src' if key == 's' else 'dst'}_inv", invert)
            elif key in ("i", "o"):
                _once(seen, key, "-" + key)
                problem = iface_problem(val)
                if problem is not None:
                    raise ParameterProblem(problem)
                if "/" in val:
                    c.warnings.append(f"Warning: weird character in interface `{val}' ('/' and ' ' are not allowed "
                                      "by the kernel).\n")
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
                if family == 6:
                    raise ParameterProblem("`-f' is not supported in IPv6, use -m frag instead")
                _once(seen, key, "-f")
                rule.fragment = not invert
            elif key in ("j", "g"):
                if "j" in seen or "g" in seen:
                    raise ParameterProblem("multiple -j flags not allowed")
                seen.add(key)
                target = _set_target(rule, val, key == "g", family)
                if target is not None:
                    _load_warning(c, target.cls)
            elif key == "m":
                if invert:
                    raise ParameterProblem("unexpected ! flag before --match")
                cls = match_class(val.lower() if val.lower() in PROTO_MATCH.values() else val, family)
                if cls is None:
                    raise ParameterProblem(f"Couldn't load match `{val}':No such file or directory\n")
                _load_warning(c, cls)
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
            slot, name = _owner(tok, target, matches, rule, family)
            if slot is None:
                if tok.startswith("--") and "=" not in tok and not name:
                    raise ParameterProblem(f"unknown option \"{tok}\"")     # unknown, or ambiguous with an extension's
                words = respell(tok, argv, i)
                if words is None:
                    raise ParameterProblem(f"unknown option \"{tok}\"")
                argv = [*argv[:i], *words, *argv[i + 1:]]    # getopt's bundles and --name=value, spelt out
                n = len(argv)
                if trace is not None:
                    trace.clear()                           # positions moved: this line's shape is not planned
                    trace = None
                continue
            count = slot.cls.OPTIONS.nvals[name]
            if name in slot.cls.OPTIONS.optional and (i + 1 >= n or argv[i + 1][:1] in ("-", "!")):
                count = 0       # an optional value that is not there (the next word is an option)
            vals = argv[i + 1:i + 1 + count]
            if not vals and count:
                raise ParameterProblem(f"option \"{tok}\" requires an argument")
            if not restore and count and any("\n" in v for v in vals):
                raise ParameterProblem(f"Newlines not allowed in --{_NEWLINE_NAMES.get(name, name)}")
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
    build = c.cmd in ("A", "I", "D", "R", "C") and (c.cmd != "D" or not c.rulenum or c.has_rule)
    # The extensions' final checks come first, then the addresses (-s before -d, whatever their order),
    # so "-d ! 1.2.3.4" is the tool's "Bad argument `1.2.3.4'" and "-s bad -m mark" mark's complaint.
    base = _build_rule(rule, matches, target, family) if build else None
    addrs = _parse_addrs(raw_addrs, family)
    if base is not None:
        for ext in (*base.matches, base.target):
            if ext is not None and ext.warnings:
                c.warnings.extend(ext.warnings)
        if counters is not None:
            base.packets, base.bytes = counters
        c.rules = _expand(base, addrs)
        if trace is not None:
            trace.append(("slots", matches, target))
    return c


def _command_args(c: Command, cmd: str, argv: list[str], i: int, family: int = 4) -> int:
    """Consume the chain and positional arguments of a command; return the next index."""
    i += 1
    nxt = argv[i] if i < len(argv) else None
    if cmd in ("h", "V"):
        return i
    if cmd in OPTIONAL_CHAIN and not _has_arg(argv, i):
        return i
    if nxt is None:
        raise ParameterProblem(f"option \"-{cmd}\" requires an argument")
    c.chain = nxt
    i += 1
    if cmd == "N":
        valid_chain_name(c.chain, family)
    if cmd in ("I", "R", "D", "L", "S", "Z") and _has_arg(argv, i):
        c.rulenum = parse_rulenum(argv[i])
        i += 1
    elif cmd == "R":
        raise ParameterProblem("-R requires a rule number")
    if cmd in ("P", "E"):
        if i >= len(argv):
            raise ParameterProblem(f"-{cmd} requires a {'policy' if cmd == 'P' else 'new chain name'}")
        c.arg = argv[i]
        if cmd == "E":
            renamed_chain_name(c.arg)
        i += 1
    return i


def _has_arg(argv: list[str], i: int) -> bool:
    """xs_has_arg: the next word is an optional argument unless it starts with ``-`` or ``!``."""
    return i < len(argv) and argv[i][:1] not in ("-", "!")


# iptables 1.8.9's getopt string: options taking a value, options whose value may only be attached
# (``-LFOO``), and flags. -s -d -p -j take the whole word as their value when it is attached (the tool
# reads argv[optind-1]), so ``-s10.0.0.1`` is the host ``-s10.0.0.1``, as the tool reports.
_SHORT_VALUE = frozenset("ACDRIMNEPopsdjitmcg")
_SHORT_OPTIONAL = frozenset("LSFZXhwW")
_SHORT_FLAG = frozenset("Vfbvnx46")
_WHOLE_WORD = frozenset("sdpj")
_LONG = {tok[2:]: tok for tok in [*COMMANDS, *CORE] if tok.startswith("--")}
_LONG_WHOLE_WORD = frozenset({"source", "src", "destination", "dst", "protocol", "jump"})


def respell(tok: str, argv: list[str], i: int) -> list[str] | None:
    """What getopt makes of a word the parser does not know: ``-nvL`` is ``-n -v -L``, ``-tnat`` is
    ``-t nat``, ``--table=nat`` is ``--table nat``, ``--ap`` is ``--append``. None: not an option at all;
    a ParameterProblem for a character or name getopt refuses (worded as the tool words it)."""
    if tok.startswith("--"):
        name, eq, value = tok[2:].partition("=")
        full = _LONG.get(name)
        if full is None:
            found = [t for n, t in _LONG.items() if n.startswith(name)] if name else []
            if len({CORE.get(t, COMMANDS.get(t)) for t in found}) != 1:
                return [f"--{name}", value] if eq and name else None      # an extension's --name=value
            full = found[0]
        if not eq:
            return [full]
        return [full, tok if full[2:] in _LONG_WHOLE_WORD else value]
    out: list[str] = []
    for k in range(1, len(tok)):
        ch = tok[k]
        rest = tok[k + 1:]
        if ch in _SHORT_FLAG:
            out.append(f"-{ch}")
        elif ch in _SHORT_VALUE or ch in _SHORT_OPTIONAL:
            out.append(f"-{ch}")
            if rest:
                out.append(tok if ch in _WHOLE_WORD else rest)
            return out
        else:
            # getopt reports argv[optind - 1]: this word when the bad character ends it, else the one before
            shown = tok if not rest else (argv[i - 1] if i > 0 else "iptables")
            raise ParameterProblem(f"unknown option \"{shown}\"")
    return out


def _set_target(rule: Rule, name: str, goto: bool, family: int) -> _ExtSlot | None:
    if name in STANDARD_VERDICTS:
        rule.jump, rule.goto = name, goto
        return None
    cls = None if goto else target_class(name, family)
    if cls is None:
        valid_jump_name(name)
        rule.jump, rule.goto = name, goto
        return None
    return _ExtSlot(cls)


# The core's long options, each with the option it stands for (getopt_long's ``val``).
_CORE_LONG = {tok[2:]: key for tok, (key, _) in CORE.items() if tok.startswith("--")} | \
    {tok[2:]: cmd for tok, cmd in COMMANDS.items() if tok.startswith("--")}


def _owner(tok: str, target: _ExtSlot | None, matches: list[_ExtSlot],
           rule: Rule, family: int) -> tuple[_ExtSlot | None, str]:
    """The extension an option belongs to and the option's full name, as getopt_long finds it among
    the core's options and the loaded extensions' (the newest first): an exact name, else a prefix
    of one option only. When that fails, the protocol's match is loaded and the search made again
    (``-p tcp --dport 80``). (None, NAME) when it abbreviates one core option; (None, "") for an
    unknown or ambiguous option: iptables runs getopt without its own messages, so both are its
    "unknown option"."""
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
        cls = match_class(pname, family)
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
    An abbreviation of one core option only is ``(None, its name)``: the core's getopt spells it out."""
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


def _parse_addrs(raw: dict[str, tuple[str, bool]], family: int) -> dict[str, list[Net]]:
    """-s then -d; an uninverted 0/0 is no test at all."""
    addrs: dict[str, list[Net]] = {}
    for key in ("s", "d"):
        if key in raw:
            val, invert = raw[key]
            nets = parse_nets(val, family)
            if not (len(nets) == 1 and nets[0].prefixlen == 0 and not invert):
                addrs[key] = nets
    return addrs


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
_ESCAPE = re.compile(r"\\(.)", re.S)      # inside quotes a backslash takes the next character as it is


def tokenize(line: str) -> list[str]:
    """Split a restore line like iptables-restore: whitespace, with double quotes grouping (``\\"``, ``\\\\`` escapes)."""
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
            tok = _QUOTED.sub(lambda q: _ESCAPE.sub(r"\1", q.group(1)), tok)
        out.append(tok)
    return out
