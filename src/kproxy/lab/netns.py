"""Throw-away network namespaces named ``kp-<purpose>-<random>``, always removed.

Every kernel test and lab runs inside namespaces made here; nothing touches the root namespace.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

PREFIX = "kp-"


class NetnsError(RuntimeError):
    pass


def kernel_lab_available() -> str | None:
    """None when namespaces can be made here, else the reason they cannot (for pytest skips)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


class Netns:
    """One named network namespace; ``run`` executes a command inside it."""

    def __init__(self, name: str) -> None:
        if not name.startswith(PREFIX):
            raise NetnsError(f"namespace names must start with {PREFIX!r}: {name}")
        self.name = name

    @classmethod
    def create(cls, purpose: str = "t") -> Netns:
        name = f"{PREFIX}{purpose}-{secrets.token_hex(3)}"[:15]
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        ns = cls(name)
        ns.run(["ip", "link", "set", "lo", "up"])
        return ns

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def run(self, argv: Sequence[str], input: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["ip", "netns", "exec", self.name, *argv], input=input, text=True,
                              capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise NetnsError(f"{' '.join(argv)} in {self.name} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def popen(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], text=True, **kw)  # type: ignore[call-overload]

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"


@contextmanager
def netns(purpose: str = "t") -> Iterator[Netns]:
    """A namespace for the duration of a ``with`` block, deleted however the block ends."""
    ns = Netns.create(purpose)
    try:
        yield ns
    finally:
        ns.delete()


def leftover_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]
