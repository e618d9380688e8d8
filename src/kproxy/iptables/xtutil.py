"""Parsing and printing helpers shared by the extensions (libxtables' equivalents)."""

from __future__ import annotations

import socket

from kproxy.iptables.extension import ExtensionError, Opt

PROTO_FOR_SERVICES = {6: "tcp", 17: "udp", 132: "sctp", 33: "dccp", 136: "udplite"}
NO_QUOTE = set("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_port(text: str, proto: int = 6) -> int:
    """A port number or service name, as xtables_parse_port takes it."""
    if text.isdigit():
        n = int(text)
        if n <= 65535:
            return n
    else:
        try:
            return socket.getservbyname(text, PROTO_FOR_SERVICES.get(proto, "tcp"))
        except OSError:
            pass
    raise ExtensionError(f"invalid port/service `{text}' specified")


def parse_port_range(text: str, proto: int = 6) -> tuple[int, int]:
    """``80``, ``1:1024``, ``1024:`` or ``:1024``."""
    if ":" not in text:
        p = parse_port(text, proto)
        return p, p
    lo_s, hi_s = text.split(":", 1)
    lo = parse_port(lo_s, proto) if lo_s else 0
    hi = parse_port(hi_s, proto) if hi_s else 65535
    if lo > hi:
        raise ExtensionError("invalid portrange (min > max) specified")
    return lo, hi


def port_name(port: int, proto: int, numeric: bool) -> str:
    if numeric:
        return str(port)
    try:
        return socket.getservbyport(port, PROTO_FOR_SERVICES.get(proto, "tcp"))
    except OSError:
        return str(port)


def save_string(value: str) -> str:
    """xtables_save_string: bare when only safe characters, else double-quoted with escapes."""
    if value and all(ch in NO_QUOTE for ch in value):
        return value
    out = []
    for ch in value:
        if ch in "\"\\'":
            out.append("\\")
        out.append(ch)
    return '"' + "".join(out) + '"'


def parse_uint(text: str, what: str, maximum: int = 0xFFFFFFFF) -> int:
    try:
        n = int(text, 0)
    except ValueError:
        raise ExtensionError(f"Bad {what} value \"{text}\"") from None
    if not 0 <= n <= maximum:
        raise ExtensionError(f"Bad {what} value \"{text}\"")
    return n


def parse_mark_mask(text: str, what: str = "mark") -> tuple[int, int | None]:
    value, slash, mask = text.partition("/")
    v = parse_uint(value, what)
    return v, (parse_uint(mask, what) if slash else None)


def one(opts: list[Opt], name: str) -> Opt | None:
    """The option ``name`` if given once; a second time is the tool's error."""
    found = [o for o in opts if o.name == name]
    if len(found) > 1:
        raise ExtensionError(f"Only one `--{name}' allowed")
    return found[0] if found else None


def inv(opt: Opt | None) -> str:
    return "! " if opt is not None and opt.invert else ""


def no_invert(opt: Opt, ext: str) -> None:
    if opt.invert:
        raise ExtensionError(f"{ext}: unexpected `!' with --{opt.name}")
