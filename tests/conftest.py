"""Shared fixtures: throw-away kp- network namespaces for tests that compare with the real kernel."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kproxy.lab.netns import Netns, kernel_lab_available


@pytest.fixture
def kernel_ns() -> Iterator[Netns]:
    """A fresh kp- namespace, deleted after the test; skips where namespaces cannot be made."""
    reason = kernel_lab_available()
    if reason:
        pytest.skip(reason)
    if shutil.which("iptables-restore") is None and not Path("/usr/sbin/iptables-restore").exists():
        pytest.skip("iptables is not installed")
    ns = Netns.create("test")
    try:
        yield ns
    finally:
        ns.delete()
