"""``nfacct`` (1.0.2) on the emulated node: add, delete, get, list, flush accounting objects.

Output is libnetfilter_acct's plain format (``{ pkts = ..., bytes = ... } = NAME;``, 20-digit
counters); refusals are the tool's ``nfacct v1.0.2: netlink error: <strerror>`` with exit status 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.ext.nfacct import names_in_use
from kproxy.netfilter.nfacct import NfacctError, objects_of

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node

PROG = "nfacct v1.0.2"
USAGE = f"""{PROG}: utility for the Netfilter extended accounting infrastructure
Usage: nfacct command [name [options]]

Commands:
  list [reset]\t\tList the accounting object table (and reset)
  add object-name\tAdd new accounting object to table
  delete object-name\tDelete existing accounting object
  get object-name\tGet existing accounting object
  flush\t\t\tFlush accounting object table
  version\t\tDisplay version and disclaimer
  help\t\t\tDisplay this help message
"""
NAMED = ("add", "delete", "get")
READS = ("list", "get", "version", "help")


def nfacct_reads(argv: list[str]) -> bool:
    """Whether the command leaves the node as it is (a list or get without ``reset``)."""
    return bool(argv) and argv[0] in READS and "reset" not in argv[1:]


def _fail(msg: str) -> tuple[int, str, str]:
    return 1, "", f"{PROG}: {msg}\n"


def run_nfacct(argv: list[str], node: Node) -> tuple[int, str, str]:
    """One nfacct invocation: (exit status, stdout, stderr)."""
    if not argv:
        return _fail("missing command")
    cmd, rest = argv[0], argv[1:]
    if cmd == "help":
        return 0, USAGE, ""
    if cmd == "version":
        return 0, f"{PROG}\n", ""
    store = objects_of(node)
    if cmd in NAMED and not rest:
        return _fail("missing object name")
    try:
        if cmd == "list":
            reset = rest[:1] == ["reset"]
            return 0, "".join(store.read(o.name, reset).line() + "\n" for o in store), ""
        if cmd == "get":
            return 0, store.read(rest[0], rest[1:2] == ["reset"]).line() + "\n", ""
        if cmd == "add":
            store.add(rest[0])
        elif cmd == "delete":
            store.delete(rest[0], names_in_use(node))
        elif cmd == "flush":
            store.flush(names_in_use(node))
        else:
            return _fail(f"Unknown command: {cmd}")
    except NfacctError as exc:
        return _fail(f"netlink error: {exc.strerror}")
    return 0, "", ""
