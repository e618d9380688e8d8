"""Addresses as Kubernetes reads them: IPv4 parts may carry leading zeros (``172.30.0.041``).

Go's ``net.ParseIP`` accepted leading zeros (as decimal) until Go 1.17, and objects stored since
then may still hold such addresses, so Kubernetes parses API fields with netutils'
``ParseIPSloppy``/``ParseCIDRSloppy``, the old parser. Python's ``ipaddress`` refuses them, which
used to make kproxy drop the whole Service. These helpers accept what the sloppy parsers accept
and return the canonical text kube-proxy then writes into its rules.
"""

from __future__ import annotations

import ipaddress

_BIG = 0xFFFFFF     # the old Go parser's overflow bound for one decimal part


def _dotted_quad(text: str) -> str | None:
    """``a.b.c.d`` with decimal parts of any width (leading zeros are decimal), canonical; else None."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    values = []
    for part in parts:
        if not part or not part.isascii() or not part.isdigit():
            return None
        n = 0
        for ch in part:
            n = n * 10 + ord(ch) - 48
            if n >= _BIG:
                return None
        if n > 255:
            return None
        values.append(n)
    return ".".join(map(str, values))


def _sloppy_text(text: str) -> str:
    """``text`` with any IPv4 part (alone, or at the end of an IPv6 address) in canonical form."""
    if ":" not in text:
        quad = _dotted_quad(text)
        return quad if quad is not None else text
    head, sep, tail = text.rpartition(":")
    if "." in tail:
        quad = _dotted_quad(tail)
        if quad is not None:
            return head + sep + quad
    return text


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as ``ParseIPSloppy`` reads it; ValueError when it is none."""
    if not text or text != text.strip() or "%" in text:
        raise ValueError(f"invalid IP address {text!r}")
    return ipaddress.ip_address(_sloppy_text(text))


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR as ``ParseCIDRSloppy`` reads it (host bits allowed and cleared); ValueError when it is none."""
    addr, sep, bits = text.partition("/")
    if not sep or not bits.isascii() or not bits.isdigit() or len(bits) > 3:
        raise ValueError(f"invalid CIDR address: {text}")
    ip = parse_ip(addr)
    return ipaddress.ip_network(f"{ip}/{int(bits)}", strict=False)


def canonical_ip(text: str) -> str:
    return str(parse_ip(text))


def canonical_cidr(text: str) -> str:
    return str(parse_cidr(text))
