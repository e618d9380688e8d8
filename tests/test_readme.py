"""README.md's commands run as written.

Its shell blocks are fenced ```` ```sh ```` (run on the emulated node: no root, nothing changes outside
the current directory), ```` ```sh root ```` (the kernel, the lab's namespaces) or ```` ```sh setup ````
(installing). Every ``sh`` line runs here, in order, in a scratch directory holding a copy of
``examples/``, with the venv's ``kproxy`` first on PATH as ``. .venv/bin/activate`` puts it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(.*)$")
KINDS = {"sh", "sh root", "sh setup"}


def shell_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(info string, command lines) of every fenced block, comments and blank lines left out."""
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and current is None:
            current = []
            blocks.append((m.group(1).strip(), current))
        elif m:
            current = None
        elif current is not None and line.strip() and not line.lstrip().startswith("#"):
            current.append(line)
    return blocks


def test_the_block_reader():
    text = "x\n```sh\nkproxy a   # note\n\n# only a comment\n```\n```sh root\nip netns add kp-x\n```\n"
    assert shell_blocks(text) == [("sh", ["kproxy a   # note"]), ("sh root", ["ip netns add kp-x"])]


def test_every_shell_block_says_where_it_runs():
    kinds = [kind for kind, _ in shell_blocks((ROOT / "README.md").read_text())]
    assert set(kinds) <= KINDS, set(kinds) - KINDS
    assert kinds.count("sh") >= 4 and "sh root" in kinds


def test_files_the_readme_names_exist():
    text = (ROOT / "README.md").read_text()
    named = set(re.findall(r"(?:examples|scripts|docs)/[\w.-]+", text))
    assert "examples/iptables-prod.rules" in named and "examples/probes.txt" in named
    assert {n for n in named if not (ROOT / n).exists()} == set()


def test_the_emulated_node_commands_run_as_written(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("KPROXY_NODE", None)
    lines = [line for kind, block in shell_blocks((ROOT / "README.md").read_text()) if kind == "sh" for line in block]
    assert any("iptables-restore -c < examples/iptables-prod.rules" in line for line in lines)
    outputs = []
    for line in lines:
        proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        outputs.append(proc.stdout)
    joined = "\n".join(outputs)
    assert "DNAT 10.96.0.10:53 -> " in joined                   # the trace went through kube-proxy's rules
    assert "pod=dns-0 peer=" in joined                          # the emulated lab answered
    assert not (tmp_path / "kproxy-lab" / "state.json").exists()   # and was taken down again
