"""The lab is a library the CLI uses, never the other way round; its worker needs nothing but Python."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import kproxy.lab

LAB = Path(kproxy.lab.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (inside functions too); relative imports resolved."""
    package = "kproxy.lab"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


def test_the_scan_sees_every_kind_of_import(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import kproxy.cli.main\nfrom kproxy.cli import commands\ndef f():\n"
                   "    from kproxy.cli.conntrack_cmd import format_conn\nfrom ..cli import lab_cmd\n")
    assert {"kproxy.cli.main", "kproxy.cli.commands", "kproxy.cli.conntrack_cmd", "kproxy.cli.lab_cmd"} <= \
        imported_modules(src)
    assert "kproxy.cli" in imported_modules(src)


def test_nothing_under_lab_imports_the_cli():
    files = sorted(LAB.rglob("*.py"))
    assert LAB / "worker.py" in files and LAB / "kernel.py" in files
    offenders = {f"{f.relative_to(LAB)}: {m}" for f in files for m in imported_modules(f)
                 if m == "kproxy.cli" or m.startswith("kproxy.cli.")}
    assert not offenders


def test_the_worker_imports_only_the_standard_library():
    mods = imported_modules(LAB / "worker.py")
    roots = {m.split(".")[0] for m in mods}
    assert roots - {"__future__"} <= set(sys.stdlib_module_names), roots - set(sys.stdlib_module_names)
