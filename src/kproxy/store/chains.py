"""iptables chains as the node file keeps them: one row of save lines per chain, parsed on first use.

A node with 100,000 rules must answer ``iptables -S INPUT`` without parsing the other 99,990, and
``iptables -A SOMECHAIN`` must not reparse the chains it does not touch. So a loaded table holds
``StoredChain`` objects whose rules are read and parsed only when something asks for them; a
chain nobody asked for is, at commit, known unchanged without looking at it.

A chain's row is its rules as ``[packets:bytes] -A CHAIN spec`` lines, plus the run-time state of
the rules' stateful extensions (a limit bucket, an nth counter), which save lines cannot carry.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from kproxy.iptables.model import Chain, Rule
from kproxy.iptables.parser import tokenize
from kproxy.iptables.plan import parse_rule_line, planned_rules
from kproxy.iptables.restore import COUNTERS_RE
from kproxy.iptables.save import rule_parts

_RULES = Chain.__dict__["rules"]     # the slot StoredChain's property reads and fills

ChainRow = tuple[str, str | None]    # (rules text, extension state as JSON or None)


class ChainDataError(Exception):
    """A chain row that does not parse: the message says which rule and why."""


def chain_text(chain: Chain) -> ChainRow:
    """The row of a chain: its rules with counters, and its extensions' state (None when stateless)."""
    head = f"-A {chain.name}"
    lines = []
    for r in chain.rules:
        body, verdict = rule_parts(r)
        spec = f"{body} {verdict}" if body and verdict else body or verdict
        lines.append(f"[{r.packets}:{r.bytes}] {head} {spec}" if spec else f"[{r.packets}:{r.bytes}] {head}")
    state = rule_state(chain.rules)
    return "\n".join(lines), (json.dumps(state, separators=(",", ":")) if state else None)


_KEEPS_STATE: dict[type, bool] = {}       # per match class: whether it has ``state_json``


def rule_state(rules: list[Rule]) -> list[list[Any]]:
    """``[rule index, match index, state]`` for each match that keeps state between packets."""
    out: list[list[Any]] = []
    keeps = _KEEPS_STATE
    for i, r in enumerate(rules):
        for j, m in enumerate(r.matches):
            cls = type(m)
            has = keeps.get(cls)
            if has is None:
                has = keeps[cls] = getattr(cls, "state_json", None) is not None
            if has:
                value = m.state_json()     # type: ignore[attr-defined]
                if value is not None:
                    out.append([i, j, value])
    return out


def load_rule_state(rules: list[Rule], state: list[list[Any]]) -> None:
    for i, j, value in state:
        rules[i].matches[j].load_state(value)


@contextmanager
def gc_paused(freeze_over: int | None = None) -> Iterator[None]:
    """The cyclic GC off while building or walking many long-lived objects (it would rescan them all).

    ``freeze_over``: when the block leaves more new objects than this (a big ruleset loaded), they
    are frozen, moved out of the collector's generations: the first collection after the block would
    otherwise traverse every one of them (0.7 s for a 220,000-rule nft table)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze_over is not None and gc.get_count()[0] > freeze_over:
            gc.freeze()
        if paused:
            gc.enable()


def parse_chain_rows(text: str, state: str | None, family: int, table: str) -> list[Rule]:
    """The rules of a chain row (trusted to have been checked when they were committed)."""
    rules: list[Rule] = []
    if text:
        with gc_paused():
            for n, line in enumerate(text.split("\n"), 1):
                m = COUNTERS_RE.match(line)
                if m is None:
                    raise ChainDataError(f"rule {n}: no [packets:bytes] counters")
                try:
                    argv = tokenize(line[m.end():])
                    got = planned_rules(argv, family)
                    new = got[1] if got is not None else parse_rule_line(argv, family, table).rules
                except Exception as exc:     # a damaged row, whatever the parser makes of it
                    raise ChainDataError(f"rule {n}: {str(exc).strip()}") from None
                pkts, nbytes = int(m.group(1)), int(m.group(2))
                for r in new:
                    r.packets, r.bytes = pkts, nbytes
                rules.extend(new)
    if state:
        try:
            load_rule_state(rules, json.loads(state))
        except (ValueError, TypeError, IndexError, AttributeError) as exc:
            raise ChainDataError(f"extension state: {exc}") from None
    return rules


class ChainRows(Protocol):
    """Where a table's chain rows come from (the open node database)."""

    family: int
    table: str

    def row(self, name: str) -> ChainRow: ...

    def error(self, name: str, why: str) -> Exception: ...


class StoredChain(Chain):
    """A chain loaded from the node file whose rules are fetched and parsed when first read.

    ``row`` is the chain's row once fetched (what a commit compares with). ``written`` marks a
    chain whose ``row`` is new content, to be written while its rules stay unread (an append)."""

    __slots__ = ("_source", "row", "written")

    def __init__(self, name: str, policy: str | None, packets: int, nbytes: int, source: ChainRows,
                 row: ChainRow | None = None) -> None:
        # Not Chain.__init__: a big table makes tens of thousands of these for every command, and
        # the rules slot stays empty until read.
        self.name, self.policy, self.packets, self.bytes = name, policy, packets, nbytes
        self._source: ChainRows | None = source
        self.row = row
        self.written = False

    @property
    def pending(self) -> bool:
        """True while the rules have not been read: the chain is then unchanged (unless ``written``)."""
        return self._source is not None

    def stored_row(self) -> ChainRow:
        """The row, fetched if need be, without parsing it."""
        if self.row is None:
            assert self._source is not None
            self.row = self._source.row(self.name)
        return self.row

    def saved_lines(self, counters: bool) -> list[str] | None:
        """The chain's ``-A`` lines as iptables-save prints them, straight from the row while unread."""
        if self._source is None:
            return None
        text = self.stored_row()[0]
        if not text:
            return []
        lines = text.split("\n")
        if counters:
            return lines
        sub = COUNTERS_RE.sub
        return [sub("", ln, count=1) for ln in lines]

    @property
    def rules(self) -> list[Rule]:
        source = self._source
        if source is not None:
            text, state = self.stored_row()
            try:
                rules = parse_chain_rows(text, state, source.family, source.table)
            except ChainDataError as exc:
                raise source.error(self.name, str(exc)) from None
            self._source = None
            _RULES.__set__(self, rules)
        return _RULES.__get__(self)

    @rules.setter
    def rules(self, value: list[Rule]) -> None:
        self._source = None
        _RULES.__set__(self, value)
