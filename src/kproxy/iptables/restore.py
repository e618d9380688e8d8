"""``iptables-restore``: load a ruleset atomically, with the real tool's errors.

Each ``*table`` block is built on a working copy (flushed, or the current table with
``--noflush``) and checked at its ``COMMIT``. Unlike the real tool, which keeps the tables
committed before a failing block, kproxy applies the whole input or nothing: a failed restore
leaves the node exactly as it was, which is what kube-proxy and the project's users rely on.
"""

from __future__ import annotations

import gc
import re
from typing import TYPE_CHECKING, Any

from kproxy.iptables.commands import (
    OPERATION,
    CommandError,
    apply,
    check_rule,
    too_many_links,
    validate,
    verbose_echo,
    writable_chain,
)
from kproxy.iptables.jumps import first_too_deep, too_deep
from kproxy.iptables.model import Chain, Rule, Table, rule_fields
from kproxy.iptables.parser import TABLES, ParameterProblem, parse_command, tokenize
from kproxy.iptables.plan import parse_rule_line, planned_rules
from kproxy.iptables.state import copy_table

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node

VERSION = "v1.8.9 (nf_tables)"
Prepared = dict[int, tuple[str, list[Rule]]]     # first line of a run -> (chain, its rules)
COUNTERS_RE = re.compile(r"^\[(\d+):(\d+)\]\s*")
_NOT_CHAINS = frozenset({None, "ACCEPT", "DROP", "RETURN", "QUEUE"})
CHAIN_RE = re.compile(r"^:(\S+)\s+(\S+)(?:\s+\[(\d+):(\d+)\])?\s*$")
POLICY_COUNTERS_RE = re.compile(r"\[\s*\+?\d+:\s*\+?\d+\]")        # sscanf("[%llu:%llu]")


class RestoreError(ValueError):
    """A failed restore; the message is the complete stderr text (without trailing newline)."""

    def __init__(self, message: str, rc: int = 1) -> None:
        super().__init__(message)
        self.rc = rc


class _Restorer:
    def __init__(self, state: Any, noflush: bool, counters: bool, tables: list[str] | None, node: Node | None,
                 prog: str, prepared: Prepared | None = None, verify: bool = False) -> None:
        self.state = state
        self.prepared = prepared
        self.verify = verify
        self.noflush = noflush
        self.counters = counters
        self.only = tables
        self.node = node
        self.prog = prog
        self.staged: dict[str, Table] = {}
        self.table: Table | None = None
        self.skip = False
        self.delete_lines: dict[str, int] = {}
        self.checked_lines: dict[int, int] = {}     # id of a rule the kernel checks at commit -> its line
        self.echo: list[str] | None = None      # -v: what the tool prints as it goes
        self.jumps: list[tuple[int, str, Rule]] = []     # (line, chain, rule) of each jump to a user chain
        self.events: list[tuple[str, str, str]] = []      # what iptables-nft creates, for IptablesState.note
        self.warnings: list[str] = []           # what the tool printed on stderr as it parsed (and went on)
        self.test = False                       # --test: lines are parsed, nothing is checked against tables

    def warn(self, lines: list[str]) -> None:
        """Keep the lines' warnings; an extension's load warning is printed once, when first loaded."""
        for text in lines:
            if not (text.startswith("Warning: Extension ") and text in self.warnings):
                self.warnings.append(text)

    def param_error(self, msg: str, line: int, prefixed: bool = True) -> RestoreError:
        head = f"{self.prog} {VERSION}: {msg}" if prefixed else msg
        return RestoreError(f"{head}\nError occurred at line: {line}\n"
                            f"Try `{self.prog} -h' or '{self.prog} --help' for more information.", 2)

    def start_table(self, name: str, lineno: int) -> None:
        if name not in TABLES:
            raise self.param_error(f"{self.prog}: line {lineno} table name '{name}' invalid", lineno)
        self.skip = self.only is not None and name not in self.only
        if not self.skip:
            self.events.append((name, "*noflush" if self.noflush else "*", ""))
        base = self.staged.get(name) or self.state.tables.get(name)
        if self.echo is not None and base is not None and not self.skip and not self.noflush:
            self.echo += [f"Flushing chain `{n}'\n" for n in base.chains]
            self.echo += [f"Deleting chain `{n}'\n" for n, ch in base.chains.items() if not ch.builtin]
        if base is None:
            t = Table.new(name, self.state.family)
        elif self.noflush:
            t = copy_table(base)
        else:
            t = Table(name, self.state.family)
            # iptables-nft deletes the table and builds it again: a built-in chain the input does not
            # declare is back to ACCEPT with zero counters; iptables-legacy keeps its policy and counters.
            legacy = self.node is not None and self.node.iptables_variant() == "legacy"
            for c in base.chains.values():
                if c.builtin:
                    t.chains[c.name] = Chain(c.name, c.policy, [], c.packets, c.bytes) if legacy else Chain(c.name, "ACCEPT")
        self.table = t

    def chain_line(self, line: str, lineno: int) -> None:
        assert self.table is not None
        parts = line[1:].split()
        counts: tuple[int, int] | None = (0, 0)
        if self.counters and parts and (builtin := self.table.chains.get(parts[0])) is not None and \
                builtin.builtin and not (len(parts) >= 3 and POLICY_COUNTERS_RE.fullmatch(parts[2])):
            raise self.param_error(f"invalid policy counters for chain '{parts[0]}'", lineno)
        if len(parts) == 3 and parts[1] == "-" and parts[2] == "[0:0]":    # a user chain, as savers write it
            name, policy = parts[0], "-"
        else:
            m = CHAIN_RE.match(line)
            if m is None:
                raise RestoreError(f"{self.prog}: line {lineno} failed")
            name, policy = m.group(1), m.group(2)
            counts = (int(m.group(3)), int(m.group(4))) if m.group(3) is not None else None
        chain = self.table.chains.get(name)
        self.events.append((self.table.name, ":", name))
        if chain is not None and chain.builtin:
            chain = self.table.writable(name)
            if policy != "-":
                if policy not in ("ACCEPT", "DROP"):
                    raise RestoreError(f"{self.prog}: line {lineno} failed: Bad policy name.")
                chain.policy = policy
            if self.counters and counts is not None:
                chain.packets, chain.bytes = counts
            elif not self.counters:
                chain.packets = chain.bytes = 0
            return
        if len(name) >= 29:
            raise self.param_error(f"Invalid chain name `{name}'", lineno)
        if chain is None:
            self.table.add_chain(Chain(name))
        else:
            self.table.flush(name)   # an existing user chain is flushed, as --noflush restores rely on

    def command_line(self, line: str, lineno: int) -> None:
        assert self.table is not None
        pkts_bytes = None
        if line[0] == "[":
            end = line.find("]")
            pkts, colon, nbytes = line[1:end].partition(":")
            if end > 0 and colon and pkts.isdecimal() and nbytes.isdecimal():     # COUNTERS_RE, the short way
                pkts_bytes = (int(pkts), int(nbytes))
                line = line[end + 1:]
            else:
                # The tool turns "[pkts:bytes]" into "-c pkts bytes": its checks then give the errors.
                if end < 0:
                    raise self.param_error(f"Bad line {lineno}: need ]", lineno)
                line = f"-c {pkts or '0'} {nbytes or '0'} {line[end + 1:]}"
        table = self.table
        argv = tokenize(line)
        if not self.test and self.echo is None:
            got = planned_rules(argv, self.state.family)
            if got is not None:         # most lines: an -A line of a shape seen before
                try:
                    self.append_rules(table, got[0], got[1], pkts_bytes, lineno)
                except (ParameterProblem, CommandError) as exc:
                    raise self.line_error(exc, lineno) from None
                return
        try:
            c = parse_rule_line(argv, self.state.family, table.name)
            if c.cmd == "A" and not c.warnings and not self.test and self.echo is None:
                self.append_rules(table, c.chain, c.rules, pkts_bytes, lineno)
                return
            if c.warnings:
                self.warn(c.warnings)
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
            if self.test:
                return          # --test parses only: chains, rules and the kernel's checks are not consulted
            if self.echo is not None and not self.skip:
                self.echo.append(verbose_echo(self.table, c, verbose=True))
            apply(self.table, c)
            self.events.append((self.table.name, c.cmd, f"{c.chain}\0{c.arg}" if c.cmd == "E" else c.chain))
            if c.cmd in OPERATION:
                for r in c.rules:
                    if r.jump not in _NOT_CHAINS:
                        self.jumps.append((lineno, c.chain, r))
                    if any(m.CHECKS_NODE for m in r.matches):
                        self.checked_lines[id(r)] = lineno
        except (ParameterProblem, CommandError) as exc:
            raise self.line_error(exc, lineno) from None

    def append_rules(self, table: Table, name: str, rules: list[Rule], pkts_bytes: tuple[int, int] | None,
                     lineno: int) -> None:
        """An ``-A`` line's rules into the table: what ``apply`` does for it, and the restore's bookkeeping."""
        if not self.counters:
            for r in rules:
                r.packets = r.bytes = 0
        elif pkts_bytes is not None:
            for r in rules:
                r.packets, r.bytes = pkts_bytes
        chain = writable_chain(table, name)
        for r in rules:
            check_rule(table, name, r)
            if r.jump not in _NOT_CHAINS:
                self.jumps.append((lineno, name, r))
            for m in r.matches:
                if m.CHECKS_NODE:
                    self.checked_lines[id(r)] = lineno
                    break
        chain.rules.extend(rules)
        self.events.append((table.name, "A", name))

    def line_error(self, exc: ParameterProblem | CommandError, lineno: int) -> RestoreError:
        if isinstance(exc, ParameterProblem):
            self.warn(exc.warnings)
            err = self.param_error(str(exc), lineno, exc.prefixed)
        elif exc.kind == "resource":      # the kernel refused the rule when the batch was sent
            err = RestoreError(f"{self.prog} {VERSION}: \nline {lineno}: {str(exc).strip()}", exc.rc)
        else:
            err = RestoreError(f"{self.prog}: line {lineno} failed: {exc}".rstrip(), exc.rc)
        if self.warnings:
            err = RestoreError("".join(self.warnings) + str(err), err.rc)
        return err

    def prepared_run(self, run: tuple[str, list[Rule]], lineno: int, lines: list[str]) -> int:
        """Append the rules prepared for the ``-A`` lines from ``lineno`` on; return the last line they cover."""
        assert self.table is not None
        name, rules = run
        at = lineno
        table = self.table
        try:
            chain = writable_chain(table, name)
            for rule in rules:
                if self.verify:
                    self._verify(lines[at - 1].strip(), at, name, rule)
                check_rule(table, name, rule)
                if rule.jump not in _NOT_CHAINS:
                    self.jumps.append((at, name, rule))
                at += 1
        except (ParameterProblem, CommandError) as exc:
            raise self.line_error(exc, at) from None
        chain.rules.extend(rules)
        self.events += [(table.name, "A", name)] * len(rules)     # one per rule: each takes a handle
        return lineno + len(rules) - 1

    def _verify(self, line: str, lineno: int, chain: str, rule: Rule) -> None:
        """A prepared rule must be exactly what its line parses to."""
        assert self.table is not None
        try:
            want = parse_command(tokenize(line), self.state.family, restore=True, default_table=self.table.name)
            same = want.cmd == "A" and want.chain == chain and [rule_fields(r) for r in want.rules] == \
                [rule_fields(rule)]
        except ParameterProblem:
            same = False
        if not same:
            raise RestoreError(f"{self.prog}: line {lineno}: the prepared rule differs from the line's own")

    def commit(self, lineno: int) -> None:
        assert self.table is not None
        if self.test:
            self.table = None
            return
        try:
            validate(self.table, self.node)
        except ParameterProblem as exc:
            raise self.param_error(str(exc), lineno) from None
        except CommandError as exc:
            chain = str(exc).rsplit(" ", 1)[-1]
            where = self.checked_lines.get(id(exc.rule), 0) or self.delete_lines.get(chain, lineno)
            raise RestoreError(f"{self.prog} {VERSION}: \nline {where}: {str(exc).strip()}", exc.rc) from None
        if self.jumps and too_deep(self.table):
            blame = first_too_deep(self.table, self.jumps)
            where, chain = blame if blame is not None else (lineno, "?")
            refused = too_many_links("RULE_APPEND", chain)
            raise RestoreError(f"{self.prog} {VERSION}: \nline {where}: {str(refused).strip()}", refused.rc)
        self.jumps = []
        if not self.skip:
            self.staged[self.table.name] = self.table
        self.table = None


def restore(text: str, state: Any, noflush: bool = False, counters: bool = False, test: bool = False,
            tables: list[str] | None = None, source: str = "<stdin>", node: Node | None = None,
            prepared: Prepared | None = None, verify_prepared: bool = False, echo: list[str] | None = None,
            warnings: list[str] | None = None) -> None:
    """Apply ``iptables-restore`` input to ``state`` (an IptablesState), each table at its COMMIT: a
    failure keeps the tables committed before it, as the tool does.

    ``prepared`` maps the first line of a run of ``-A`` lines of one chain to (chain, rules) already
    built for them by the caller (the proxier, ``kproxy.proxy.prepared``): those lines are applied
    without being parsed again.
    ``verify_prepared`` parses them anyway and fails the restore if a prepared rule differs.
    ``echo``, when given, receives what ``iptables-restore -v`` prints (nothing with --noflush or --test, as 1.8.9).
    ``warnings``, when given, receives what the tool prints on stderr while it succeeds (an error's
    message already starts with them).

    The cyclic garbage collector is paused meanwhile: a large ruleset allocates hundreds of
    thousands of long-lived objects, and rescanning them on every collection costs more than the parse.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        _restore(text, state, noflush, counters, test, tables, node, prepared, verify_prepared,
                 echo if not (noflush or test) else None, warnings)
    finally:
        if enabled:
            gc.enable()


def _restore(text: str, state: Any, noflush: bool, counters: bool, test: bool, tables: list[str] | None,
             node: Node | None, prepared: Prepared | None, verify: bool, echo: list[str] | None,
             warnings: list[str] | None = None) -> None:
    prog = "iptables-restore" if state.family == 4 else "ip6tables-restore"
    r = _Restorer(state, noflush, counters, tables, node, prog, prepared, verify)
    r.echo = echo
    r.test = test
    lineno = 0
    lines = text.split("\n")
    skip_to = 0
    try:
        for lineno, raw in enumerate(lines, 1):
            if lineno <= skip_to:                         # covered by a prepared run
                continue
            line = raw.strip()
            if not line:
                continue
            first = line[0]
            if first == "-" and r.table is not None:      # most lines: a rule
                run = prepared.get(lineno) if prepared is not None else None
                if run is not None:
                    skip_to = r.prepared_run(run, lineno, lines)
                else:
                    r.command_line(line, lineno)
                continue
            if first == "#":
                continue
            if r.table is None:
                if first == "*":
                    r.start_table(line[1:].strip(), lineno)
                    continue
                raise RestoreError(f"{prog}: line {lineno} failed")
            if line == "COMMIT":
                r.commit(lineno)
            elif first == ":":
                r.chain_line(line, lineno)
            else:
                r.command_line(line, lineno)
        if r.table is not None:
            raise RestoreError(f"{prog}: COMMIT expected at line {lineno}")
    except RestoreError:
        # Each COMMIT is its own transaction (iptables-nft sends one batch per table, legacy one
        # replace): the tables committed before the failing line stay applied, except with --test.
        if not test and r.staged:
            state.note = [e for e in r.events if e[0] in r.staged]
            state.commit(r.staged)
        raise
    if warnings is not None:
        warnings.extend(r.warnings)
    if not test and r.staged:
        state.note = [e for e in r.events if e[0] in r.staged]
        state.commit(r.staged)
