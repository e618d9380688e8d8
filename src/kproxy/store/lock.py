"""One writer at a time per node file, waiting as ``iptables -w`` waits for xtables.lock.

The real tools serialise through the kernel: iptables through /run/xtables.lock (without ``-w``
a busy lock is an error, exit 4), the netlink tools (conntrack, ipset, ipvsadm) through the
kernel's mutex, which simply waits. A node file does the same with its database's write lock (or,
for an old JSON node file, an flock on it); readers never take it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

RESOURCE_PROBLEM = 4      # iptables' exit status for a busy lock
LOCK_HELD = "Another app is currently holding the xtables lock. "


class NodeFileError(Exception):
    """A node file that cannot be used (damaged, newer, not a node file): one line naming the file."""


class LockBusy(Exception):
    """The node file's write lock stayed held for longer than the command was willing to wait."""

    def __init__(self, message: str, rc: int = RESOURCE_PROBLEM) -> None:
        super().__init__(message)
        self.rc = rc


@dataclass(frozen=True)
class Wait:
    """How long a writer waits for the lock: ``seconds`` None waits for ever; 0 does not wait.

    As iptables 1.8.9 waits (an alarm around a blocking flock), the lock is taken as soon as it is
    free, and a bounded wait ends with the tool's message. ``-W`` (the old polling interval) is
    deprecated there and ignored.
    """

    seconds: float | None = None

    def busy(self) -> LockBusy:
        if self.seconds == 0:
            return LockBusy(f"{LOCK_HELD}Perhaps you want to use the -w option?")
        return LockBusy(f"{LOCK_HELD}Stopped waiting after {int(self.seconds or 0)}s.")


FOREVER = Wait()
POLL = 0.005          # seconds between tries of a lock that cannot block with a timeout (flock)


def acquire(try_once: Callable[[], bool], wait: Wait, block: Callable[[], None]) -> None:
    """Take a lock with ``try_once`` (True when taken), following ``wait``; ``block`` waits for ever."""
    if wait.seconds is None:
        block()
        return
    deadline = time.monotonic() + wait.seconds
    while not try_once():
        if time.monotonic() >= deadline:
            raise wait.busy()
        time.sleep(POLL)


class WaitOptionError(Exception):
    """``-W`` without ``-w``: the tool's parameter problem (exit 2)."""


def iptables_wait(argv: list[str], restore: bool = False) -> tuple[Wait, list[str]]:
    """The ``-w [SECONDS]`` of an iptables command line, and the warnings the tool prints for ``-W``.

    Raises WaitOptionError for ``-W`` without ``-w``, as iptables 1.8.9 refuses it (iptables-restore
    ignores ``-W`` silently).
    """
    seconds: float | None = 0.0
    warnings: list[str] = []
    interval = False
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("-w", "--wait") or tok.startswith("--wait="):
            seconds = None
            value = tok.partition("=")[2] if "=" in tok else (argv[i + 1] if i + 1 < len(argv) else "")
            if value.isdigit():
                seconds = float(value)
                i += 0 if "=" in tok else 1
        elif tok in ("-W", "--wait-interval") or tok.startswith("--wait-interval="):
            if not restore:
                warnings.append("Ignoring deprecated --wait-interval option.")
                interval = True
            i += 0 if "=" in tok else 1
        i += 1
    if interval and seconds == 0:
        raise WaitOptionError("--wait-interval only makes sense with --wait")
    return Wait(seconds), warnings
