"""The files in examples/ that README.md points at are what they claim to be: the production dump is
what iptables-save prints (the real tool's and the emulator's), the verify example agrees."""

from __future__ import annotations

from pathlib import Path

import pytest

from kproxy.lab.netns import Netns
from kproxy.node import Node

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PROD = EXAMPLES / "iptables-prod.rules"


def without_comments(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


def test_the_production_dump_is_what_iptables_save_prints_back():
    node = Node.load_description(EXAMPLES / "node.yaml")
    node.iptables_restore(PROD.read_text(), counters=True)
    saved = node.iptables_save(counters=True)
    assert without_comments(saved) == without_comments(PROD.read_text())
    for chain in ("KUBE-SERVICES", "DOCKER-USER", "FLANNEL-POSTRTG", "HOST-INPUT"):   # all of it is there
        assert f":{chain} - [0:0]" in saved


@pytest.mark.kernel
def test_the_production_dump_is_what_the_real_iptables_save_prints_back(kernel_ns: Netns):
    kernel_ns.run(["iptables-nft-restore", "-c"], input=PROD.read_text())
    saved = kernel_ns.run(["iptables-nft-save", "-c"]).stdout
    assert without_comments(saved) == without_comments(PROD.read_text())


def test_the_probe_file_parses():
    from kproxy.cli.verify_cmd import parse_probes

    probes = parse_probes((EXAMPLES / "probes.txt").read_text(), "probes.txt")
    assert len(probes) == 9 and sum(p.from_node for p in probes) == 1


@pytest.mark.kernel
def test_the_verify_example_agrees():
    from click.testing import CliRunner

    import kproxy.cli.verify_cmd  # noqa: F401 - registers the command
    from kproxy.cli.main import cli
    from kproxy.lab.kernel import kernel_lab_reason

    reason = kernel_lab_reason()
    if reason:
        pytest.skip(reason)
    res = CliRunner().invoke(cli, ["verify", str(EXAMPLES / "verify.rules"), "--packets", str(EXAMPLES / "probes.txt")])
    assert res.exit_code == 0, res.output
    assert "agreement: 9 probes" in res.output
