"""Progress on a terminal only, and only for work that lasts: scripts and quick commands see nothing."""

from __future__ import annotations

import io
import time

from click.testing import CliRunner

from kproxy.progress import busy


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_long_work_on_a_terminal_shows_a_spinner_then_clears_it():
    out = Tty()
    with busy("iptables-restore", stream=out, delay=0.05) as p:
        time.sleep(0.4)
        p.step("iptables-restore: saving the node")
        time.sleep(0.3)
    text = out.getvalue()
    assert "iptables-restore" in text and "saving the node" in text
    assert "\x1b[" in text                       # drawn with terminal controls, removed at the end (transient)


def test_quick_work_on_a_terminal_shows_nothing():
    out = Tty()
    with busy("nft", stream=out, delay=1.0):
        time.sleep(0.01)
    time.sleep(0.05)
    assert out.getvalue() == ""


def test_nothing_when_not_a_terminal():
    out = io.StringIO()
    with busy("kube-proxy: syncing the rules", stream=out, delay=0) as p:
        p.step("more")
        time.sleep(0.05)
    assert out.getvalue() == ""


def test_restore_output_unchanged_when_piped(tmp_path):
    from kproxy.cli.main import cli

    node = str(tmp_path / "n.db")
    res = CliRunner().invoke(cli, ["--node", node, "iptables-restore"], input="*filter\n-A INPUT -j ACCEPT\nCOMMIT\n")
    assert res.exit_code == 0 and res.output == ""
