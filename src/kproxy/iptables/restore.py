"""``iptables-restore``: load a ruleset atomically, with the real tool's errors.

Each ``*table`` block is built on a working copy (flushed, or the current table with
``--noflush``) and checked at its ``COMMIT``. Unlike the real tool, which keeps the tables
committed before a failing block, kproxy applies the whole input or nothing: a failed restore
leaves the node exactly as it was, which is what kube-proxy and the project's users rely on.
"""

from __future__ import annotations

import gc
import re
from typing import Any

from kproxy.iptables.commands import CommandError, apply, validate
from kproxy.iptables.model import Chain, Table
from kproxy.iptables.parser import TABLES, ParameterProblem, tokenize
from kproxy.iptables.plan import parse_rule_line
from kproxy.iptables.state import copy_table

VERSION = "v1.8.9 (nf_tables)"
COUNTERS_RE = re.compile(r"^\[(\d+):(\d+)\]\s*")
CHAIN_RE = re.compile(r"^:(\S+)\s+(\S+)(?:\s+\[(\d+):(\d+)\])?\s*$")


class RestoreError(Exception):
    """A failed restore; the message is the complete stderr text (without trailing newline)."""

    def __init__(self, message: str, rc: int = 1) -> None:
        super().__init__(message)
        self.rc = rc


class _Restorer:
    def __init__(self, state: Any, noflush: bool, counters: bool, tables: list[str] | None, node: Any,
                 prog: str) -> None:
        self.state = state
        self.noflush = noflush
        self.counters = counters
        self.only = tables
        self.node = node
        self.prog = prog
        self.staged: dict[str, Table] = {}
        self.table: Table | None = None
        self.skip = False
        self.delete_lines: dict[str, int] = {}

    def param_error(self, msg: str, line: int, prefixed: bool = True) -> RestoreError:
        head = f"{self.prog} {VERSION}: {msg}" if prefixed else msg
        return RestoreError(f"{head}\nError occurred at line: {line}\n"
                            f"Try `{self.prog} -h' or '{self.prog} --help' for more information.", 2)

    def start_table(self, name: str, lineno: int) -> None:
        if name not in TABLES:
            raise self.param_error(f"{self.prog}: line {lineno} table name '{name}' invalid", lineno)
        self.skip = self.only is not None and name not in self.only
        base = self.staged.get(name) or self.state.tables.get(name)
        if base is None:
            t = Table.new(name, self.state.family)
        elif self.noflush:
            t = copy_table(base)
        else:
            t = Table(name, self.state.family)
            for c in base.chains.values():
                if c.builtin:
                    t.chains[c.name] = Chain(c.name, c.policy, [], c.packets, c.bytes)
        self.table = t

    def chain_line(self, line: str, lineno: int) -> None:
        assert self.table is not None
        m = CHAIN_RE.match(line)
        if m is None:
            raise RestoreError(f"{self.prog}: line {lineno} failed")
        name, policy = m.group(1), m.group(2)
        chain = self.table.chains.get(name)
        if chain is not None and chain.builtin:
            chain = self.table.writable(name)
            if policy != "-":
                if policy not in ("ACCEPT", "DROP"):
                    raise RestoreError(f"{self.prog}: line {lineno} failed: Bad policy name.")
                chain.policy = policy
            if self.counters and m.group(3) is not None:
                chain.packets, chain.bytes = int(m.group(3)), int(m.group(4))
            elif not self.counters:
                chain.packets = chain.bytes = 0
            return
        if len(name) >= 29:
            raise self.param_error(f"Invalid chain name `{name}'", lineno)
        if chain is None:
            self.table.add_chain(Chain(name))
        else:
            self.table.writable(name).rules = []   # an existing user chain is flushed, as --noflush restores rely on

    def command_line(self, line: str, lineno: int) -> None:
        assert self.table is not None
        pkts_bytes = None
        m = COUNTERS_RE.match(line)
        if m is not None:
            pkts_bytes = (int(m.group(1)), int(m.group(2)))
            line = line[m.end():]
        try:
            argv = tokenize(line)
            c = parse_rule_line(argv, self.state.family, self.table.name)
            if c.cmd in ("L", "S", "C", "h", "V"):
                raise ParameterProblem(f"Cannot use -{c.cmd} in iptables-restore")
            if pkts_bytes is not None and self.counters:
                for r in c.rules:
                    r.packets, r.bytes = pkts_bytes
            elif not self.counters:
                for r in c.rules:
                    r.packets = r.bytes = 0
            if c.cmd == "X" and c.chain:
                self.delete_lines[c.chain] = lineno
            apply(self.table, c)
        except ParameterProblem as exc:
            raise self.param_error(str(exc), lineno, exc.prefixed) from None
        except CommandError as exc:
            if exc.kind == "resource":      # the kernel refused the rule when the batch was sent
                raise RestoreError(f"{self.prog} {VERSION}: \nline {lineno}: {str(exc).strip()}", exc.rc) from None
            raise RestoreError(f"{self.prog}: line {lineno} failed: {exc}".rstrip(), exc.rc) from None

    def commit(self, lineno: int) -> None:
        assert self.table is not None
        try:
            validate(self.table, self.node)
        except ParameterProblem as exc:
            raise self.param_error(str(exc), lineno) from None
        except CommandError as exc:
            chain = str(exc).rsplit(" ", 1)[-1]
            where = self.delete_lines.get(chain, lineno)
            raise RestoreError(f"{self.prog} {VERSION}: \nline {where}: {str(exc).strip()}", exc.rc) from None
        if not self.skip:
            self.staged[self.table.name] = self.table
        self.table = None


def restore(text: str, state: Any, noflush: bool = False, counters: bool = False, test: bool = False,
            tables: list[str] | None = None, source: str = "<stdin>", node: Any = None) -> None:
    """Apply ``iptables-restore`` input to ``state`` (an IptablesState), all or nothing.

    The cyclic garbage collector is paused meanwhile: a large ruleset allocates hundreds of
    thousands of long-lived objects, and rescanning them on every collection costs more than the parse.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        _restore(text, state, noflush, counters, test, tables, node)
    finally:
        if enabled:
            gc.enable()


def _restore(text: str, state: Any, noflush: bool, counters: bool, test: bool, tables: list[str] | None,
             node: Any) -> None:
    prog = "iptables-restore" if state.family == 4 else "ip6tables-restore"
    r = _Restorer(state, noflush, counters, tables, node, prog)
    lineno = 0
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if r.table is None:
            if line.startswith("*"):
                r.start_table(line[1:].strip(), lineno)
                continue
            raise RestoreError(f"{prog}: line {lineno} failed")
        if line == "COMMIT":
            r.commit(lineno)
        elif line.startswith(":"):
            r.chain_line(line, lineno)
        else:
            r.command_line(line, lineno)
    if r.table is not None:
        raise RestoreError(f"{prog}: COMMIT expected at line {lineno}")
    if not test and r.staged:
        state.commit(r.staged)
