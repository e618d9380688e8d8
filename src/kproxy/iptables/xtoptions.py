"""Extension option tables and their one parser: libxtables' ``struct xt_option_entry`` and ``xtoptions.c``.

Each extension declares its options once, as an ``XtOptions`` table of ``XtOpt`` entries: the name,
the value type (with its range or length), the flags (``XTOPT_INVERT``, ``XTOPT_MAND``,
``XTOPT_MULTI``) and the ``also``/``excl`` relations. From that one declaration the argv parser
knows which options an extension takes, how many values each consumes and how long names are
abbreviated, and ``XtOptions.parse`` makes every generic check with libxtables' exact messages
(an option twice, ``!`` where not allowed, a value out of range, a missing mandatory option...).
The extension's ``from_options`` keeps only what is its own: building itself from the parsed values
and the cross-option checks libxtables leaves to an extension's final check.

Entries sharing an ``id`` are one option under several names (``--sport``/``--source-port``); the
messages name the first entry of the id, as libxtables looks entries up by id.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kproxy.iptables.extension import ExtensionError, Opt
from kproxy.iptables.model import Net
from kproxy.iptables.xtutil import C_SPACE, c_strtoui, c_strtoul, service_port

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

# Entry flags (libxtables' XTOPT_*).
XTOPT_INVERT = 1      # ``!`` may precede the option
XTOPT_MAND = 2        # the option must be given
XTOPT_MULTI = 4       # the option may be given more than once

# Value types (libxtables' XTTYPE_*; CHOICE and CUSTOM are this module's).
NONE = "none"                 # no value
UINT8, UINT16, UINT32 = "uint8", "uint16", "uint32"     # one base-0 number in [min, max]
UINT16RC, UINT32RC = "uint16rc", "uint32rc"             # ``a``, ``a:b``, ``a:``, ``:b``
STRING = "string"             # text with a minimum/maximum length, truncated to ``size`` - 1 bytes
MARKMASK32 = "markmask32"     # ``value[/mask]``
PORT = "port"                 # one port: a number or a service name
PORTRC = "portrc"             # a port range, each side a number or a service name
HOST = "host"                 # an address of the family (a name is looked up), as an int
HOSTMASK = "hostmask"         # an address with an optional ``/prefix`` or ``/mask``, as a Net
CHOICE = "choice"             # one word of ``choices``
CUSTOM = "custom"             # the extension's own ``parse`` reads the value(s)

_UINT_MAX = {UINT8: 0xFF, UINT16: 0xFFFF, UINT32: 0xFFFFFFFF, UINT16RC: 0xFFFF, UINT32RC: 0xFFFFFFFF}
BAD_VALUE = "{ext}: Bad value for \"--{opt}\" option: \"{value}\""      # xtables_param_act XTF_BAD_VALUE


@dataclass(slots=True)
class XtCall:
    """What an entry's ``parse`` gets, as libxtables' ``struct xt_option_call``: the extension and
    option names (for messages), the option's values, and the family and rule being parsed."""

    ext: str
    opt: str
    values: list[str]
    family: int
    rule: Any               # the rule being built (None when options are parsed outside one)

    @property
    def arg(self) -> str:
        return self.values[0]

    def error(self, template: str) -> ExtensionError:
        return ExtensionError(template.format(ext=self.ext, opt=self.opt, value=self.arg))


@dataclass(frozen=True, slots=True)
class XtOpt:
    """One ``xt_option_entry``."""

    name: str
    type: str = NONE
    flags: int = 0
    id: str = ""                      # entries with one id are one option (default: the name)
    min: int = 0                      # numbers: the range; STRING: the minimum length
    max: int | None = None            # numbers: the range (default: the type's); STRING: the maximum length
    size: int = 0                     # STRING: the kernel field's size (the text is cut to size - 1 bytes)
    choices: tuple[str, ...] = ()     # CHOICE: the words, compared case-insensitively, returned as written here
    bad: str = BAD_VALUE              # CHOICE: the message for another word
    also: tuple[str, ...] = ()        # ids that must be given with it
    excl: tuple[str, ...] = ()        # ids that cannot be given with it
    nvals: int = -1                   # argv values it takes (default: 0 for NONE, else 1)
    once: str = ""                    # the message for a second use, when not the table's
    optional: bool = False            # the value is taken only when the next word is no option (rateest)
    parse: Callable[[XtCall], Any] | None = None    # CUSTOM: the value from the call

    @property
    def key(self) -> str:
        return self.id or self.name

    @property
    def count(self) -> int:
        return self.nvals if self.nvals >= 0 else 0 if self.type == NONE else 1


class XtParsed:
    """The options given to one extension: each id's value and ``!``, and the ids in the order given."""

    __slots__ = ("values", "inverted", "order")

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.inverted: dict[str, bool] = {}
        self.order: list[str] = []

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def invert(self, key: str) -> bool:
        return self.inverted.get(key, False)

    def seen(self) -> set[str]:
        return set(self.values)

    @property
    def last(self) -> str:
        """The id given last: for extensions whose options all write one field, the one that counts."""
        return self.order[-1]


ONCE = "{ext}: option \"--{opt}\" can only be used once.\n"
LEGACY_ONCE = "Only one `--{opt}' allowed"          # what extensions with their own parse function say


class XtOptions:
    """An extension's option table; ``ext`` is the name its messages start with, ``once`` the message
    for an option given twice (extensions still on libxtables' old parse interface have their own)."""

    def __init__(self, ext: str, *entries: XtOpt, once: str = ONCE) -> None:
        self.ext = ext
        self.once = once
        self.entries = entries
        self.by_name = {e.name: e for e in entries}
        self.first: dict[str, XtOpt] = {}         # each id's first entry: the name messages use
        for e in entries:
            self.first.setdefault(e.key, e)
        rank = {key: i for i, key in enumerate(self.first)}
        # The relations in id order, as xtables_options_fcheck walks their bits.
        self.relations = {key: (sorted(e.also, key=rank.__getitem__), sorted(e.excl, key=rank.__getitem__))
                          for key, e in self.first.items()}
        self.nvals = {e.name: e.count for e in entries}
        self.optional = frozenset(e.name for e in entries if e.optional)

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def parse(self, opts: list[Opt], family: int = 4, rule: Rule | None = None) -> XtParsed:
        """xtables_option_parse for each option in order: once, invertible, then the value."""
        got = XtParsed()
        ext = self.ext
        for o in opts:
            entry = self.by_name[o.name]
            key = entry.key
            head = self.first[key]
            if key in got.values and not head.flags & XTOPT_MULTI:
                raise ExtensionError((head.once or self.once).format(ext=ext, opt=head.name))
            if o.invert and not head.flags & XTOPT_INVERT:
                raise ExtensionError(f"{ext}: option \"--{head.name}\" cannot be inverted.\n")
            got.values[key] = value(entry, XtCall(ext, head.name, o.values, family, rule))
            got.inverted[key] = o.invert
            got.order.append(key)
        return got

    def fcheck(self, got: XtParsed) -> None:
        """xtables_options_fcheck, after the extension's own final check: mandatory, also, excl, in table order."""
        ext = self.ext
        for key, entry in self.first.items():
            name = entry.name
            if key not in got.values:
                if entry.flags & XTOPT_MAND:
                    raise ExtensionError(f"{ext}: option \"--{name}\" must be specified\n")
                continue
            also, excl = self.relations[key]
            for other in also:
                if other not in got.values:
                    raise ExtensionError(f"{ext}: option \"--{name}\" also requires \"--{self.first[other].name}\".\n")
            for other in excl:
                if other in got.values:
                    raise ExtensionError(f"{ext}: option \"--{name}\" cannot be used together with "
                                         f"\"--{self.first[other].name}\".\n")

    def parse_required(self, opts: list[Opt], missing: str, family: int = 4, rule: Rule | None = None) -> XtParsed:
        """``parse``, the final check of an extension that needs at least one option (``missing`` is its
        message), then ``fcheck``."""
        got = self.parse(opts, family, rule)
        if not got.values:
            raise ExtensionError(missing)
        self.fcheck(got)
        return got

    def parse_all(self, opts: list[Opt], family: int = 4, rule: Rule | None = None) -> XtParsed:
        """``parse`` then ``fcheck``, for an extension with no final check of its own."""
        got = self.parse(opts, family, rule)
        self.fcheck(got)
        return got


def value(entry: XtOpt, call: XtCall) -> Any:
    """The entry's value from the call, by type (xtopt_subparse)."""
    kind = entry.type
    if kind == NONE:
        return True
    if kind == CUSTOM:
        assert entry.parse is not None, entry.name
        return entry.parse(call)
    text = call.arg
    if kind in (UINT8, UINT16, UINT32):
        return xtopt_uint(text, call.ext, call.opt, entry.min, _UINT_MAX[kind] if entry.max is None else entry.max)
    if kind in (UINT16RC, UINT32RC):
        return xtopt_uint_range(text, call.ext, call.opt, _UINT_MAX[kind] if entry.max is None else entry.max)
    if kind == STRING:
        return xtopt_string(text, entry.min, entry.max or 0, entry.size)
    if kind == MARKMASK32:
        return xtopt_markmask(text, call.ext, call.opt)
    if kind == PORT:
        return getportbyname(text)
    if kind == PORTRC:
        return xtopt_portrc(text, call.ext, call.opt)
    if kind == HOST:
        return xtopt_host(text, call.family)
    if kind == HOSTMASK:
        return xtopt_hostmask(call)
    if kind == CHOICE:
        word = text.lower()
        for choice in entry.choices:
            if choice.lower() == word:
                return choice
        raise call.error(entry.bad)
    raise AssertionError(f"unknown option type {kind}")


# ---- the value types ----------------------------------------------------------------------------
def xtopt_uint(text: str, ext: str, opt: str, minimum: int = 0, maximum: int = 0xFFFFFFFF) -> int:
    """XTTYPE_UINT8/16/32: one base-0 number in range."""
    n = c_strtoui(text, minimum, maximum)
    if n is None:
        raise ExtensionError(f"{ext}: bad value for option \"--{opt}\", or out of range ({minimum}-{maximum}).\n")
    return n


def xtopt_uint_range(text: str, ext: str, opt: str, maximum: int = 0xFFFF) -> tuple[int, int]:
    """XTTYPE_UINT16RC/UINT32RC: ``a``, ``a:b``, ``a:``, ``:b`` (empty sides are 0 and max; no order check)."""
    values: list[int] = []
    rest = text
    while True:
        if len(values) == 2:
            raise ExtensionError(f"{ext}: Too many components for option \"--{opt}\" (max: 2)\n")
        if rest == "" or rest.startswith(":"):
            value, tail = (maximum if len(values) == 1 else 0), rest
        else:
            got = c_strtoul(rest)
            if got is None or got[0] > maximum:
                raise ExtensionError(f"{ext}: bad value for option \"--{opt}\" near \"{rest}\", "
                                     f"or out of range (0-{maximum}).\n")
            value, tail = got
            if tail and not tail.startswith(":"):
                raise ExtensionError(f"{ext}: Argument to \"--{opt}\" has unexpected characters near \"{tail}\".\n")
        values.append(value)
        if not tail:
            break
        rest = tail[1:]
    return values[0], values[-1]


def xtopt_markmask(text: str, ext: str, opt: str) -> tuple[int, int | None]:
    """XTTYPE_MARKMASK32: ``value[/mask]``, base-0 numbers (the mask None when not given)."""
    bad = ExtensionError(f"{ext}: bad integer value for option \"--{opt}\", or out of range.\n")
    got = c_strtoul(text)
    if got is None or got[0] > 0xFFFFFFFF:
        raise bad
    value, rest = got
    mask = None
    if rest.startswith("/"):
        got = c_strtoul(rest[1:])
        if got is None or got[0] > 0xFFFFFFFF:
            raise bad
        mask, rest = got
    if rest:
        raise ExtensionError(f"{ext}: trailing garbage after value for option \"--{opt}\".\n")
    return value, mask


def xtopt_string(text: str, minimum: int = 0, maximum: int = 0, size: int = 0) -> str:
    """XTTYPE_STRING: the length checks, then the copy into a ``size``-byte field (at most size - 1 bytes)."""
    length = len(text.encode(errors="surrogateescape"))     # undecodable input bytes count as bytes
    if minimum and length < minimum:
        raise ExtensionError(f"Argument must have a minimum length of {minimum} characters\n")
    if maximum and length > maximum:
        raise ExtensionError(f"Argument must have a maximum length of {maximum} characters\n")
    return truncate(text, size - 1) if size else text


def truncate(text: str, limit: int) -> str:
    """At most ``limit`` bytes of ``text`` (the kernel field is a fixed char array); undecodable
    input bytes stay bytes."""
    raw = text.encode(errors="surrogateescape")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(errors="surrogateescape")


def getportbyname(text: str) -> int:
    """xtables_getportbyname (XTTYPE_PORT): getaddrinfo's service, so decimal digits (kept to 16 bits)
    or a service name of any protocol."""
    port = service_port(text, None)
    if port is not None:
        return port
    s = text.lstrip(C_SPACE)
    s = s[1:] if s.startswith("+") else s
    if s.isascii() and s.isdigit():
        return int(s) & 0xFFFF
    raise ExtensionError(f"Port \"{text}\" does not resolve to anything.\n")


def xtopt_portrc(text: str, ext: str, opt: str) -> tuple[int, int]:
    """XTTYPE_PORTRC: at most two ports split by ``:``, empty ones meaning 0 and 65535; no order check."""
    parts = text.split(":")
    if len(parts) > 2:
        raise ExtensionError(f"{ext}: Too many components for option \"--{opt}\" (max: 2)\n")
    lo = getportbyname(parts[0]) if parts[0] else 0
    if len(parts) == 1:
        return lo, lo
    return lo, getportbyname(parts[1]) if parts[1] else 0xFFFF


def xtopt_host(text: str, family: int) -> int:
    """XTTYPE_HOST: getaddrinfo of the family, so ``24`` is 0.0.0.24 and a name is looked up."""
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    if not text:
        raise ExtensionError("getaddrinfo: Name or service not known\n")
    try:
        info = socket.getaddrinfo(text, None, fam, 0, 0, socket.AI_NUMERICHOST)
    except socket.gaierror:
        try:
            info = socket.getaddrinfo(text, None, fam)
        except socket.gaierror as exc:
            raise ExtensionError(f"getaddrinfo: {exc.strerror}\n") from None
    return int.from_bytes(socket.inet_pton(fam, str(info[0][4][0])), "big")


def xtopt_hostmask(call: XtCall) -> Net:
    """XTTYPE_HOSTMASK: a host and an optional prefix length (more than the family's is all of it) or
    dotted mask (its bits counted)."""
    family = call.family
    addr, slash, mask = call.arg.partition("/")
    bits = 32 if family == 4 else 128
    ip = xtopt_host(addr, family)
    prefix = bits
    if slash:
        got = c_strtoul(mask, 10)
        if got is not None and not got[1]:
            prefix = min(got[0], bits)
        else:
            try:
                prefix = bin(int(ipaddress.ip_address(mask))).count("1")
            except ValueError:
                raise ExtensionError(f"{call.ext}: bad value for option \"--{call.opt}\", neither a valid network "
                                     f"mask nor valid CIDR (0-{bits}).\n") from None
    m = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
    return Net(family, ip & m, prefix)


def two_args(call: XtCall) -> list[str]:
    """The values of an option taking two (``--match-set NAME FLAGS``): the second must not look like an option."""
    if len(call.values) < 2 or call.values[1][:1] in ("-", "!"):
        raise ExtensionError(f"--{call.opt} requires two args.")
    return call.values
