"""Parsing and printing helpers shared by the extensions (libxtables' equivalents)."""

from __future__ import annotations

import re
import socket
from functools import lru_cache
from pathlib import Path

from kproxy.iptables.extension import ExtensionError
from kproxy.packet import PROTO_NAMES

PROTO_FOR_SERVICES = {6: "tcp", 17: "udp", 132: "sctp", 33: "dccp", 136: "udplite"}
NO_QUOTE = set("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_BARE = re.compile(r"[-_0-9a-zA-Z]+")
_ESCAPED = re.compile(r"[\"\\']")


@lru_cache(maxsize=1)
def _protocol_names() -> dict[int, str]:
    """getprotobynumber's names: /etc/protocols where the system has one, else the common ones."""
    names = dict(PROTO_NAMES)
    try:
        text = Path("/etc/protocols").read_text()
    except OSError:
        return names
    seen: set[int] = set()
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[1].isdigit() and int(words[1]) not in seen:
            seen.add(int(words[1]))
            names[int(words[1])] = words[0]
    return names


def proto_word(proto: int) -> str:
    """A protocol as the translators print it: its /etc/protocols name, else its number."""
    return _protocol_names().get(proto, str(proto))


C_SPACE = " \t\n\v\f\r"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
QUAD = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")     # a plain dotted quad (no leading zeros), parsed in C
NET4 = re.compile(rf"({_OCTET}(?:\.{_OCTET}){{3}})(?:/(3[0-2]|[12]?[0-9]))?")   # with a plain prefix length


def c_strtoul(text: str, base: int = 0) -> tuple[int, str] | None:
    """C ``strtoumax`` as xtables_strtoul_base calls it: (value, unparsed rest), or None for no number.

    Leading blanks and a ``+`` are allowed, a ``-`` is refused (xtables checks for it); base 0 takes
    ``0x`` hex and leading-zero octal, so ``0x50`` is 80 and ``080`` is not a number at all.
    """
    if base in (0, 10) and text.isdigit() and text.isascii() and (text[0] != "0" or len(text) == 1):
        return int(text), ""                # the plain decimal every rule has
    s = text.lstrip(C_SPACE)
    if s.startswith("-"):
        return None
    if s.startswith("+"):
        s = s[1:]
    if base in (0, 16) and s[:2].lower() == "0x" and len(s) > 2 and s[2] in "0123456789abcdefABCDEF":
        s, base = s[2:], 16
    elif base == 0:
        base = 8 if s.startswith("0") else 10
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"[:base]
    n = 0
    while n < len(s) and s[n].lower() in digits:
        n += 1
    if n == 0:
        return None
    return int(s[:n], base), s[n:]


def c_strtoui(text: str, minimum: int, maximum: int, base: int = 0) -> int | None:
    """xtables_strtoui with no end pointer: the whole string is one number within [minimum, maximum]."""
    got = c_strtoul(text, base)
    if got is None or got[1] or not minimum <= got[0] <= maximum:
        return None
    return got[0]


def service_port(name: str, proto: str | None) -> int | None:
    """getservbyname: the port of a service name for ``proto`` (any protocol when None)."""
    if not name or name[0] in C_SPACE:
        return None
    try:
        return socket.getservbyname(name, proto) if proto else socket.getservbyname(name)
    except OSError:
        return None


def parse_port(text: str, proto: int = 6) -> int:
    """A service name or number, as xtables_parse_port takes it: the service first, then base-0 digits."""
    port = service_port(text, PROTO_FOR_SERVICES.get(proto, "tcp"))
    if port is None:
        port = c_strtoui(text, 0, 65535)
    if port is None:
        raise ExtensionError(f"invalid port/service `{text}' specified")
    return port


def port_name(port: int, proto: int, numeric: bool) -> str:
    if numeric:
        return str(port)
    try:
        return socket.getservbyport(port, PROTO_FOR_SERVICES.get(proto, "tcp"))
    except OSError:
        return str(port)


_SAVED_STRINGS: dict[str, str] = {}      # a dump repeats each comment in several rules


def save_string(value: str) -> str:
    """xtables_save_string: bare when only safe characters, else double-quoted with escapes."""
    text = _SAVED_STRINGS.get(value)
    if text is None:
        if _BARE.fullmatch(value):          # regular expressions: a save of 100,000 comments calls this
            text = value
        elif '"' in value or "\\" in value or "'" in value:
            text = '"' + _ESCAPED.sub(r"\\\g<0>", value) + '"'
        else:
            text = f'"{value}"'
        if len(_SAVED_STRINGS) >= 50_000:
            _SAVED_STRINGS.clear()
        _SAVED_STRINGS[value] = text
    return text


def numeric_to_ipaddr(text: str) -> int | None:
    """xtables_numeric_to_ipaddr: up to four base-0 bytes, missing trailing ones zero (``10.1`` is 10.1.0.0)."""
    parts = text[:19].split(".")
    if len(parts) > 4:
        return None
    value = 0
    for part in parts:
        byte = c_strtoui(part, 0, 255)
        if byte is None:
            return None
        value = value << 8 | byte
    return value << 8 * (4 - len(parts))


def numeric_to_ip6addr(text: str) -> int | None:
    """xtables_numeric_to_ip6addr: inet_pton(AF_INET6)."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError):
        return None


def c_strtoul16(text: str) -> tuple[int, int]:
    """strtoul(text, &end, 16) for one MAC byte: (value, characters consumed); nothing parsed is (0, 0)."""
    s = text.lstrip(C_SPACE)
    i = len(text) - len(s)
    neg = s.startswith("-")
    if s[:1] in "+-" and s:
        s, i = s[1:], i + 1
    if s[:2].lower() == "0x" and len(s) > 2 and s[2] in "0123456789abcdefABCDEF":
        s, i = s[2:], i + 2
    n = 0
    while n < len(s) and s[n] in "0123456789abcdefABCDEF":
        n += 1
    if n == 0:
        return 0, 0
    v = int(s[:n], 16)
    return (-v if neg else v), i + n


def parse_ethermac(text: str) -> str | None:
    """XTTYPE_ETHERMAC: six hex bytes split by ``:``, each at most two characters (empty ones are 0)."""
    out = []
    rest = text
    for i in range(6):
        v, used = c_strtoul16(rest)
        end = rest[used:]
        if used > 2 or (i < 5 and not end.startswith(":")) or (i == 5 and end):
            return None
        out.append(v & 0xFF)
        rest = end[1:]
    return ":".join(f"{b:02x}" for b in out)
