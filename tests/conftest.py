"""Shared fixtures: throw-away kp- network namespaces for tests that compare with the real kernel, and
a local API server holding a recorded cluster's objects."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kproxy.k8s.fakeapi import FakeAPIServer
from kproxy.lab.kernel import KernelLab, kernel_lab_reason
from kproxy.lab.netns import Netns, kernel_lab_available

API_CLUSTER = Path(__file__).parent / "data" / "api" / "cluster.json"


@pytest.fixture
def api() -> Iterator[FakeAPIServer]:
    """An API server on 127.0.0.1 (a free port) with tests/data/api/cluster.json; stopped after the test."""
    server = FakeAPIServer(bookmark_interval=0.2).start()
    try:
        yield server.load(json.loads(API_CLUSTER.read_text()))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lab() -> Iterator[KernelLab]:
    """The differential harness's kernel lab (client, node, sink namespaces), one per test module;
    skips where it cannot be built. A module may define its own ``lab`` instead."""
    reason = kernel_lab_reason()
    if reason:
        pytest.skip(reason)
    with KernelLab() as kernel_lab:
        yield kernel_lab


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
