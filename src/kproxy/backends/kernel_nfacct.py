"""The kernel's accounting objects over nfnetlink (NFNL_SUBSYS_ACCT), as the ``nfacct`` tool talks to it.

Debian's ``nfacct`` package is not always installed, and kube-proxy itself speaks netlink, so this
module does too: add (ensure), read and delete objects of the current network namespace. Run as
``python -m kproxy.backends.kernel_nfacct ensure|get|delete NAME`` it does one request and prints
``NAME PKTS BYTES`` (get), which is how the kernel backend reaches a namespace (``ip netns exec``).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ACCT = 7
MSG_NEW, MSG_GET, MSG_DEL = 0, 1, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE = 0x1, 0x4, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
ATTR_NAME, ATTR_PKTS, ATTR_BYTES = 1, 2, 3


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _request(msg: int, flags: int, name: str) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0) + _attr(ATTR_NAME, name.encode() + b"\0")
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ACCT << 8) | msg, NLM_F_REQUEST | flags, 1, 0) + body


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    at = 0
    while at + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, at)
        if size < 4:
            break
        out[kind & 0x3FFF] = data[at + 4:at + size]
        at += (size + 3) & ~3
    return out


def _talk(msg: int, flags: int, name: str) -> dict[int, bytes]:
    """One request; the object's attributes for a get, {} for an acknowledged change. OSError on refusal."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        sock.send(_request(msg, flags, name))
        found: dict[int, bytes] = {}
        while True:
            data = sock.recv(65536)
            at = 0
            while at + 16 <= len(data):
                size, kind = struct.unpack_from("=IH", data, at)
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, at + 16)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return found
                if kind == NLMSG_DONE:
                    return found
                found = _attrs(data[at + 20:at + size])
                if not flags & NLM_F_ACK:
                    return found
                at += (size + 3) & ~3


def ensure(name: str) -> None:
    """Create the object unless it exists (an existing one answers EBUSY, which is fine here)."""
    try:
        _talk(MSG_NEW, NLM_F_ACK | NLM_F_CREATE, name)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise


def get(name: str) -> tuple[int, int]:
    """(packets, bytes) counted into the object."""
    attrs = _talk(MSG_GET, NLM_F_ACK, name)
    pkts = struct.unpack(">Q", attrs[ATTR_PKTS])[0] if ATTR_PKTS in attrs else 0
    nbytes = struct.unpack(">Q", attrs[ATTR_BYTES])[0] if ATTR_BYTES in attrs else 0
    return pkts, nbytes


def delete(name: str) -> None:
    _talk(MSG_DEL, NLM_F_ACK, name)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("ensure", "get", "delete"):
        print("usage: python -m kproxy.backends.kernel_nfacct ensure|get|delete NAME", file=sys.stderr)
        return 2
    op, name = argv
    try:
        if op == "ensure":
            ensure(name)
        elif op == "delete":
            delete(name)
        else:
            pkts, nbytes = get(name)
            print(name, pkts, nbytes)
    except OSError as exc:
        print(f"nfacct {op} {name}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
