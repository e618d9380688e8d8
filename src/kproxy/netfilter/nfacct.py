"""Extended accounting objects (nfnetlink_acct): named packet and byte counters of a network namespace.

Rules count into an object with ``-m nfacct --nfacct-name NAME``; the ``nfacct`` tool adds, lists,
reads (optionally resetting) and deletes objects. As in the kernel, an object must exist before a
rule names it, an object a rule uses cannot be deleted (EBUSY), adding an existing name fails with
EBUSY, and ``flush`` deletes the objects no rule uses. Kube-proxy's iptables mode counts two things
this way and exports them as metrics.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kproxy.versioned import Epoch

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.netfilter.netns import NetNamespace

NAME_MAX = 32           # NFACCT_NAME_MAX, including the terminating NUL


class NfacctError(OSError):
    """An nfnetlink_acct request the kernel refuses; ``errno`` says why, as the kernel's reply does."""

    def __init__(self, code: int) -> None:
        super().__init__(code, os.strerror(code))


@dataclass
class AcctObject:
    name: str
    pkts: int = 0
    bytes: int = 0

    def line(self) -> str:
        """The object as ``nfacct list`` prints it (libnetfilter_acct's plain format)."""
        return f"{{ pkts = {self.pkts:020d}, bytes = {self.bytes:020d} }} = {self.name};"


class NfacctObjects:
    """The namespace's accounting objects, in creation order (the kernel's list order).

    Adding or deleting an object bumps the configuration ``Epoch`` (a learnt flow counts into the
    objects that existed when it was learnt); while ``recording`` is a list, every object a packet
    is counted into is appended to it (the flow cache's recording, see ``kproxy.flowcache``)."""

    def __init__(self) -> None:
        self.objects: dict[str, AcctObject] = {}
        self.recording: list[AcctObject] | None = None

    def __iter__(self) -> Iterator[AcctObject]:
        return iter(list(self.objects.values()))

    def get(self, name: str) -> AcctObject | None:
        return self.objects.get(name)

    def add(self, name: str) -> AcctObject:
        if not name or len(name.encode(errors="surrogateescape")) >= NAME_MAX:
            raise NfacctError(errno.EINVAL)
        if name in self.objects:
            raise NfacctError(errno.EBUSY)
        obj = self.objects[name] = AcctObject(name)
        Epoch.bump()
        return obj

    def ensure(self, name: str) -> AcctObject:
        """The object, created when missing (what kube-proxy's nfacct runner does)."""
        return self.objects.get(name) or self.add(name)

    def read(self, name: str, reset: bool = False) -> AcctObject:
        obj = self.objects.get(name)
        if obj is None:
            raise NfacctError(errno.ENOENT)
        shown = AcctObject(obj.name, obj.pkts, obj.bytes)
        if reset:
            obj.pkts = obj.bytes = 0
        return shown

    def delete(self, name: str, in_use: set[str]) -> None:
        if name not in self.objects:
            raise NfacctError(errno.ENOENT)
        if name in in_use:
            raise NfacctError(errno.EBUSY)
        del self.objects[name]
        Epoch.bump()

    def flush(self, in_use: set[str]) -> None:
        """Delete every object no rule uses (the others stay, without an error)."""
        for name in list(self.objects):
            if name not in in_use:
                del self.objects[name]
                Epoch.bump()

    def count(self, name: str, length: int) -> None:
        obj = self.objects.get(name)
        if obj is not None:
            obj.pkts += 1
            obj.bytes += length
            if self.recording is not None:
                self.recording.append(obj)

    def to_json(self) -> list[list[Any]]:
        return [[o.name, o.pkts, o.bytes] for o in self.objects.values()]

    @classmethod
    def from_json(cls, data: list[list[Any]]) -> NfacctObjects:
        store = cls()
        for name, pkts, nbytes in data:
            store.objects[str(name)] = AcctObject(str(name), int(pkts), int(nbytes))
        Epoch.bump()
        return store


def objects_of(node: NetNamespace) -> NfacctObjects:
    store = node.subsystems.get("nfacct")
    if store is None:
        store = node.subsystems["nfacct"] = NfacctObjects()
    return store



_NAMED = re.compile(r"--nfacct-name\s+(\S+)")


def ensure_named(node: NetNamespace, save_text: str) -> None:
    """Make the accounting objects an ``iptables-save`` dump's rules name (the kernel it came from had
    them, or it would have refused the rules), so the dump restores on this node too. Their counts
    are not in the dump: they start at zero."""
    store = objects_of(node)
    for name in named_in(save_text):
        store.ensure(name)


def named_in(save_text: str) -> list[str]:
    """The accounting objects an ``iptables-save`` dump's rules name, each once."""
    return [name.strip('"') for name in dict.fromkeys(_NAMED.findall(save_text))]
