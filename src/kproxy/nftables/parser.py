"""A recursive-descent parser for nft scripts that applies each command to a working copy of the ruleset.

nft's grammar is keyword-driven, so one token of look-ahead decides almost everything; the handful of
places that need the data type of the left-hand side (values, ranges, prefixes) ask the expression.
Errors carry nft's positions so the caller can print them the way nft does.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from kproxy.nftables import cthelper, flowtable, objmap
from kproxy.nftables import types as T
from kproxy.nftables.expr import (
    Concat,
    Const,
    Elem,
    Expr,
    Opts,
    Prefix,
    Range,
    SetLit,
    SetRef,
    Verdict,
    parse_time,
)
from kproxy.nftables.lexer import NUMBER, LexError, Token, is_identifier, token_name, tokenize
from kproxy.nftables.model import FAMILIES, HOOKS, Chain, NSet, Obj, Rule, Ruleset, Table, named_priorities
from kproxy.nftables.stmt import (
    UNIT_SIZE,
    Counter,
    Limit,
    ObjRef,
    Quota,
    SetUpdate,
    Stmt,
    VerdictStmt,
    get_rate,
)
from kproxy.nftables.validate import culprit

Loc = tuple[int, int, int]  # line, first column, last column
OPTS = Opts()
SET_FLAGS = ("constant", "interval", "dynamic", "timeout")
BLOCK_WORDS = frozenset(("table", "chain", "set", "map", "flowtable", "counter", "quota", "limit", "helper",
                         "timeout", "expectation", "secmark", "synproxy"))
MAX_ERRORS = 10  # nft's parser_max_errors
FREEZE_OVER = 200_000  # new objects past which a script's work is frozen (see gc_paused): about 15,000 rules
# Words nft's scanner makes keywords (others are a "string" in its syntax errors); those met after a verb.
KEYWORDS = {"table", "tables", "chain", "chains", "set", "sets", "map", "maps", "rule", "ruleset", "element",
            "counter", "counters", "quota", "quotas", "limit", "limits", "flowtable", "flowtables", "meter",
            "meters", "ip", "ip6", "inet", "arp", "bridge", "netdev", "handle", "index", "position"}


class NftError(Exception):
    """An error at a position: ``primary`` gets carets, ``secondary`` ranges get tildes."""

    def __init__(self, msg: str, primary: Loc | None, secondary: list[Loc] | None = None,
                 kernel: bool | None = None, validation: bool = False, parse: bool = False) -> None:
        super().__init__(msg)
        self.msg = msg
        self.parse = parse      # found by nft's parser (an unknown datatype): recovered from as a syntax error
        self._kernel = kernel
        # found by the kernel's commit-time validation (hooks, jump depth): a batch that fails earlier,
        # as its messages are processed, is aborted before that and reports none of these
        self.validation = validation
        self.primary = primary
        self.secondary = secondary or []
        self.more: list[NftError] = []  # further errors nft reports in the same run
        # a kernel ENOENT's "did you mean" (misspell.kernel_hint), decided once the batch is in nft's cache
        self.hint: Callable[[], tuple[str, Loc] | None] | None = None

    def resolve(self) -> None:
        if self.hint is not None:
            found, self.hint = self.hint(), None
            if found is not None:
                self._kernel = self.kernel          # still the kernel's error, though worded by nft
                self.msg, self.primary = found
                self.args = (self.msg,)

    @property
    def syntax(self) -> bool:
        return self.parse or self.msg.startswith("syntax error")

    @property
    def kernel(self) -> bool:
        """Errors the kernel returns; nft only submits (and so only sees them) when evaluation passed."""
        return self._kernel if self._kernel is not None else self.msg.startswith("Could not process rule")


class StopParsing(Exception):  # noqa: N818 - not an error: the parser's recorded errors are
    """The parser gives up (syntax errors up to the end of the input, or nft's tenth): report what it has."""


def loc(a: Token, b: Token | None = None) -> Loc:
    b = b or a
    return (a.line, a.col, b.end if b.line == a.line else a.end)


VERDICTS = ("accept", "drop", "return", "continue")


@dataclass
class Output:
    """Listing requests met in a script, answered after the transaction commits."""

    requests: list[tuple[str, list[Token]]] = field(default_factory=list)
    # ``get element``: the table, and a copy of the set holding just the elements found
    gets: list[tuple[Table, NSet]] = field(default_factory=list)
    flushed: list[str | None] = field(default_factory=list)     # ``flush ruleset [FAMILY]``s, None: all


class Parser:
    def __init__(self, text: str, rs: Ruleset, interfaces: set[str] | None = None, validate_jumps: bool = True,
                 listed: bool = False) -> None:
        """``validate_jumps``: walk every base chain's jumps at the end, as the kernel validates a commit.
        Writers whose chains cannot nest or loop by construction (the nftables proxier's partial syncs
        into its own table, at most five chains deep) skip the walk, which costs the whole table.
        ``listed``: the text is a listing of sets the kernel holds (the node file), not a user's input."""
        from kproxy.nftables import fastpath

        self.text = text
        self.validate_jumps = validate_jumps
        self.listed = listed
        self.fast = fastpath.usable(text)  # then ``script`` tokenizes the lines the fast path leaves
        self.toks = [] if self.fast else self.tokens(text)
        self.pos = 0
        self.rs = rs
        self.interfaces = interfaces
        self.out = Output()
        self.new_sets: set[int] = set()   # ids of the sets this batch creates (a rule's update makes them dynamic)
        self.eval_errors: list[NftError] = []
        self.kernel_errors: list[NftError] = []
        self.syntax_errors: list[NftError] = []     # bison's, recovered from at the next separator
        self.table_errors: list[NftError] = []      # the parser's, reported once the table block ends
        self.cmdline = False                        # the script is nft's arguments, not a file
        self.in_block = False                       # rules in a chain block (not an add-rule command)
        self.depth = 0                              # blocks being parsed (table, chain, set)
        self.final = True                           # ``toks`` end where the script ends (see fastpath)
        self.from_json = False                      # the script is kproxy's text of a JSON input
        self.nl_used = False                        # the command line's final newline was taken
        self.seq = 0                                # syntax errors in the order nft finds them
        self.batch_broken = False
        self.elem_indexes: dict[int, tuple[list[Elem], dict[Any, Elem]]] = {}
        self.unsorted: dict[int, NSet] = {}

        self.rule_ops: dict[int, str] = {}  # id(rule) -> "insert" or "replace", for --echo's notifications
        # chains named by verdict-map elements, checked when the kernel would add the elements
        self.jump_elems: list[tuple[str, Loc]] = []
        # rules this script adds or replaces, in batch order, with where nft blames each
        self.added: list[tuple[Table, Rule, Loc]] = []

    @staticmethod
    def tokens(text: str, first_line: int = 1) -> list[Token]:
        try:
            return expand_defines(tokenize(text, first_line))
        except LexError as exc:
            raise NftError(str(exc), (exc.line, exc.col, exc.end)) from None

    def first_word(self, words: Collection[str]) -> str | None:
        """The script's first word that is one of ``words`` (the fast path leaves ``toks`` partial)."""
        if not self.fast:
            return next((t.text for t in self.toks if t.kind == "word" and t.text in words), None)
        for line in self.text.split("\n"):
            try:
                toks = tokenize(line)
            except LexError:
                continue
            found = next((t.text for t in toks if t.kind == "word" and t.text in words), None)
            if found is not None:
                return found
        return None

    # ---- token helpers ------------------------------------------------------------------------
    def peek(self, k: int = 0) -> Token:
        return self.toks[min(self.pos + k, len(self.toks) - 1)]

    def next(self) -> Token:
        t = self.peek()
        self.pos += 1
        return t

    def at(self, *texts: str) -> bool:
        t = self.peek()
        return t.kind in ("word", "punct") and t.text in texts

    def accept(self, text: str) -> Token | None:
        if self.at(text):
            return self.next()
        return None

    def unexpected(self, t: Token | None = None, expecting: str = "") -> NftError:
        t = t or self.peek()
        if t.kind == "eof" and self.cmdline and not self.nl_used:
            # nft's command line ends with a newline token (a file's end is the end of file)
            msg = "syntax error, unexpected newline" + (f", expecting {expecting}" if expecting else "")
            return NftError(msg, loc(t))
        msg = f"syntax error, unexpected {token_name(t)}" + (f", expecting {expecting}" if expecting else "")
        err = NftError(msg, (t.line, 1, 1) if t.kind == "eof" and self.cmdline else loc(t))
        err.at_eof = t.kind == "eof"  # type: ignore[attr-defined]
        return err

    def expect(self, text: str) -> Token:
        if not self.at(text):
            raise self.unexpected(expecting=f"'{text}'" if len(text) == 1 else text)
        return self.next()

    def word(self) -> Token:
        t = self.peek()
        if t.kind not in ("word", "string"):
            raise self.unexpected(expecting="string")
        return self.next()

    def number(self) -> Token:
        t = self.peek()
        if t.kind != "word" or NUMBER.fullmatch(t.text) is None:
            raise self.unexpected(expecting="number")
        return self.next()

    def name(self) -> Token:
        """A table's, set's, map's or object's name (nft's ``identifier``): a keyword of nft's scanner or a
        number there is a syntax error (a quoted name is taken)."""
        t = self.peek()
        if t.kind == "word" and not is_identifier(t):
            raise self.unexpected(expecting="string")
        return self.word()

    def chain_name(self, expecting: str = "string") -> Token:
        """A chain's name as nft 1.0.6 reads one (``identifier``): a scanner keyword, a number or a quoted
        string there is a syntax error."""
        t = self.peek()
        if not is_identifier(t):
            raise self.unexpected(expecting=expecting)
        return self.next()

    def skip_seps(self) -> None:
        while self.peek().kind == "nl" or self.at(";"):
            self.next()

    def end_item(self, top: bool = False) -> None:
        """An item in a block ends with a newline or semicolon (nft's grammar insists)."""
        if self.peek().kind == "nl" or self.at(";"):
            self.next()
            return
        if self.peek().kind == "eof" and (top or self.cmdline and not self.nl_used):
            self.nl_used = self.cmdline     # the command line's final newline ends this item
            return
        raise self.unexpected(expecting="end of file or newline or semicolon" if top else "newline or semicolon")

    # ---- script ---------------------------------------------------------------------------------
    def script(self) -> None:
        """Run the whole script (the cyclic GC paused: a big ruleset is many long-lived objects)."""
        from kproxy.store.chains import gc_paused

        with gc_paused(freeze_over=FREEZE_OVER):
            self.run_script()

    def run_script(self) -> None:
        try:
            if not self.fast:
                self.commands()
            else:
                from kproxy.nftables.fastpath import FastPath

                FastPath(self).run(self.text)
        except StopParsing:
            self.raise_recorded()
        self.sort_touched_sets()
        if self.validate_jumps and not self.eval_errors and not self.kernel_errors:
            from kproxy.nftables.journal import may_nest_deeper, reading

            # in place (``kproxy.nftables.journal``): only the tables the transaction may have deepened,
            # walked without copying what the walk looks up
            tables = [t for t in self.rs.tables if may_nest_deeper(t)]
            with reading(tables):
                self.kernel_errors += jump_errors(tables, self.added)
        self.raise_recorded()

    def commands(self) -> None:
        """Parse and apply the commands in ``toks``, recording evaluation errors as nft goes on past them."""
        while True:
            self.skip_seps()
            t = self.peek()
            if t.kind == "eof":
                break
            start = self.pos
            try:
                self.command()
                self.end_item(top=True)
            except NftError as err:
                self.record(err, start)

    def record(self, err: NftError, start: int) -> None:
        """Keep an evaluation error and go on to the next rule or command, as nft does. A syntax error
        is kept too and parsing goes on past the next newline or semicolon, as bison's ``error
        stmt_separator`` rule recovers in every block (nft gives up at its tenth)."""
        if err.syntax:
            self.found(err)
            if len(self.syntax_errors) >= MAX_ERRORS or not self.recover(err, start):
                raise StopParsing           # nothing to recover at: the end of the input
            return
        if err.kernel:
            self.kernel_errors.append(err)  # the kernel goes on with the batch and reports every error
            self.batch_broken = self.batch_broken or err.msg.endswith("Operation not supported")
        else:
            self.eval_errors.append(err)
        self.pos = start
        depth = 0
        while True:
            t = self.peek()
            if t.kind == "eof":
                return
            if t.kind == "punct" and t.text == "{":
                depth += 1
            elif t.kind == "punct" and t.text == "}":
                if depth == 0:
                    return
                depth -= 1
            elif depth == 0 and (t.kind == "nl" or t.kind == "punct" and t.text == ";"):
                return
            self.next()

    def found(self, err: NftError, at: tuple[int, int] | None = None) -> None:
        """Keep a syntax error with where nft's single pass meets it (a table's deferred chains are parsed
        after its other items here: the errors are put back in the script's order)."""
        if at is None:
            at = (1 << 30, 0) if getattr(err, "at_eof", False) else err.primary[:2] if err.primary else (0, 0)
        err.found_at = at  # type: ignore[attr-defined]
        self.syntax_errors.append(err)

    def recover(self, err: NftError, start: int) -> bool:
        """bison's recovery: discard from the token in error to the first newline or semicolon, then go on
        in the innermost block open at the error (kproxy skips the rest of a block opened within the item
        that failed); False at the end of the input (with nft's error there if a block is left open)."""
        at = err.primary
        i = next((k for k in range(start, len(self.toks)) if at is not None
                  and (self.toks[k].line, self.toks[k].col) >= at[:2]), self.pos)
        self.pos = max(min(i, self.pos), start)
        inner = self.open_blocks(start, self.pos)
        blocks = self.depth + inner
        separated = self.cmdline         # nft's command line ends as if with a newline
        while self.peek().kind != "eof":  # braces discarded here close nothing
            t = self.next()
            if t.kind == "nl" or t.kind == "punct" and t.text == ";":
                separated = True
                break
        while inner > 0 and self.peek().kind != "eof":
            t = self.next()
            if t.kind == "punct" and t.text in "{}":
                step = 1 if t.text == "{" else -1
                inner, blocks = inner + step, blocks + step
        self.skip_seps()
        if self.peek().kind != "eof" or not self.final:
            return True
        if blocks > 0 and separated and not getattr(err, "at_eof", False):
            eof = self.peek()
            self.found(NftError("syntax error, unexpected end of file", (eof.line, 1, 1)), (1 << 30, 0))
        return False

    def open_blocks(self, a: int, b: int) -> int:
        """The blocks (table, chain, set, object: those of nft's grammar that recover from errors, not a
        rule's anonymous sets) opened in ``toks[a:b]`` and still open at ``b``."""
        stack: list[bool] = []
        toks = self.toks
        for k in range(a, b):
            t = toks[k]
            if t.kind != "punct" or t.text not in "{}":
                continue
            if t.text == "}":
                if stack:
                    stack.pop()
                continue
            named = k > 0 and is_identifier(toks[k - 1])
            stack.append(named and any(x.kind == "word" and x.text in BLOCK_WORDS for x in toks[max(0, k - 4):k - 1]))
        return sum(stack)

    def raise_recorded(self) -> None:
        if self.syntax_errors:
            # nft evaluates what it parsed and reports that too, but submits nothing to the kernel
            ordered = sorted(self.syntax_errors, key=lambda e: e.found_at)  # type: ignore[attr-defined]
            first, *rest = ordered + self.eval_errors
            first.more = rest
            raise first
        errors = self.eval_errors or self.kernel_errors
        if not self.eval_errors and not all(e.validation for e in errors):
            errors = [e for e in errors if not e.validation]
        if errors:
            for e in errors:
                e.resolve()
            first = errors[0]
            first.more = errors[1:]
            raise first

    def family_and_name(self) -> tuple[str, Token]:
        t = self.word()
        if t.text in FAMILIES and self.peek().kind in ("word", "string"):
            return t.text, self.name()
        return "ip", t

    def command(self) -> None:
        t = self.peek()
        verb = t.text
        if verb == "table":
            self.next()
            self.cmd_add_table(create=False)
            return
        if verb in ("add", "create", "insert", "replace", "delete", "flush", "list", "reset", "rename", "get"):
            self.next()
            getattr(self, "cmd_" + verb)(t)
            return
        if is_identifier(t) or verb in FAMILIES and t.kind == "word":
            self.cmd_rule("add", t)     # nft's implicit ``add rule``: ``[FAMILY] TABLE CHAIN STATEMENTS``
            return
        raise self.unexpected()

    def find_table(self, family: str, name: Token, kind: str = "rule", obj: Token | None = None) -> Table:
        """The table, or nft's ENOENT for a command on ``kind`` (``eval``: found by nft's evaluation;
        else the kernel's, for a command on a table, chain, rule, set or obj named ``obj``)."""
        tbl = self.rs.find(family, name.text)
        if tbl is None:
            raise self.enoent(kind, family, name, obj, name, what="table")
        return tbl

    def find_chain(self, tbl: Table, name: Token, kind: str = "rule") -> Chain:
        c = tbl.chains.get(name.text)
        if c is None:
            raise self.enoent(kind, tbl.family, None, name, name, tbl.name, what="chain")
        return c

    def find_set(self, tbl: Table, name: Token, kind: str = "set") -> NSet:
        s = tbl.sets.get(name.text)
        if s is None:
            raise self.enoent(kind, tbl.family, None, name, name, tbl.name, what="set")
        return s

    def enoent(self, kind: str, family: str, ttok: Token | None, name: Token | None, at: Token | Loc,
               table: str | None = None, what: str | None = None) -> NftError:
        """nft's "No such file or directory" with its "did you mean" hint (kproxy.nftables.misspell).
        ``kind``: ``eval`` (evaluate.c: the hint decided now, about ``what`` - table, chain, set or
        obj), or the kernel's command object (cmd.c: decided when the batch's errors are reported)."""
        from kproxy.nftables import misspell

        where = at if isinstance(at, tuple) else loc(at)
        tname = ttok.text if ttok is not None else table or ""
        if kind == "eval":
            return NftError(misspell.evaluation_message(self.rs, what or "table", tname if what == "table" else
                                                        name.text if name is not None else ""), where, kernel=False)
        err = NftError("Could not process rule: No such file or directory", where)
        rs = self.rs
        ttoc = loc(ttok) if ttok is not None else where

        def hint() -> tuple[str, Loc] | None:
            found = misspell.kernel_hint(rs, kind, family, tname, name.text if name is not None else None)
            return None if found is None else (found[0], ttoc if found[1] else where)

        err.hint = hint
        return err

    # ---- add / create ---------------------------------------------------------------------------
    def cmd_add(self, verb: Token, create: bool = False) -> None:
        what = self.peek().text
        if what == "table":
            self.next()
            self.cmd_add_table(create)
        elif what == "chain":
            self.next()
            family, tname = self.family_and_name()
            name = self.chain_name()          # a syntax error: found before the table is looked up
            tbl = self.find_table(family, tname, "eval")    # found missing while evaluating
            old = tbl.chains.get(name.text)
            before = None if old is None else (old.type, old.hook, old.prio)
            chain = self.add_chain(tbl, name, create)
            # nor does it change a chain's type, hook or priority
            if not chain_type_fits(tbl.family, chain) or before not in (None, (chain.type, chain.hook, chain.prio)):
                line, col, end = loc(verb, self.toks[self.pos - 1])
                # the kernel's error points at the whole command, one column past its last token
                raise NftError("Could not process rule: Operation not supported", (line, col, end + 1))
        elif what in ("set", "map"):
            self.next()
            family, tname = self.family_and_name()
            tbl = self.find_table(family, tname, "eval")
            name = self.name()
            self.expect("{")
            self.set_block(tbl, name, what == "map", create)
        elif what == "element":
            self.next()
            family, tname = self.family_and_name()
            try:
                tbl = self.find_table(family, tname, "eval")
                s = self.find_set(tbl, self.name(), "eval")
            except NftError as err:
                if not err.syntax:
                    self.unclosed_literal()
                raise
            lit = self.set_literal(s.key, s.data, s)
            self.check_jumps(tbl)
            objmap.check_elements(self, tbl, s, lit.elems)
            if create:
                self.check_new_elements(s, lit)
            self.add_elements(s, lit)
            self.follow_on(verb, command=True)
        elif what in ("counter", "quota", "limit") or what == "ct" and self.peek(1).text == "helper":
            self.next()
            kind = cthelper.KIND if what == "ct" and self.next() else what
            family, tname = self.family_and_name()
            tbl = self.find_table(family, tname, "eval")
            name = self.name()
            self.object(tbl, kind, name)
            if kind == cthelper.KIND and not cthelper.known(tbl.objs[(kind, name.text)]):
                # the kernel's ENOENT for the whole command (nft's location takes in the newline too)
                raise NftError("Could not process rule: No such file or directory",
                               (verb.line, verb.col, self.toks[self.pos - 1].end + 1))
        elif what == "flowtable":
            self.next()
            family, tname = self.family_and_name()
            tbl = self.find_table(family, tname, "eval")
            name = self.name()
            self.expect("{")
            flowtable.parse_block(self, tbl, name, create)
        else:
            if what == "rule":
                self.next()
            self.cmd_rule("add", verb)

    def cmd_create(self, verb: Token) -> None:
        self.cmd_add(verb, create=True)

    def cmd_add_table(self, create: bool) -> None:
        family, name = self.family_and_name()
        if family not in FAMILIES:
            raise NftError(f"unknown address family '{family}'", loc(name))
        tbl = self.rs.find(family, name.text)
        if tbl is None:
            tbl = Table(family, name.text, self.rs.next_table_handle)
            self.rs.next_table_handle += 1
            self.rs.tables.append(tbl)
        elif create:
            raise NftError("Could not process rule: File exists", loc(name))
        if self.accept("{"):
            self.table_block(tbl)

    def table_block(self, tbl: Table) -> None:
        self.depth += 1
        try:
            self.table_items(tbl)
        finally:
            self.depth -= 1

    def table_items(self, tbl: Table) -> None:
        deferred: list[tuple[Chain, int]] = []
        while True:
            self.skip_seps()
            if self.peek().text == "}" and self.peek().kind == "punct":
                close = self.next()
                for err in self.table_errors:
                    self.found(err, (close.line, close.col))
                self.table_errors = []
                break
            at = self.pos
            try:
                self.table_item(tbl, deferred)
                self.end_item()
            except NftError as err:
                try:
                    self.record(err, at)
                except StopParsing:
                    self.deferred_syntax(tbl, deferred)     # nft met them on its way to the end
                    raise
        for ob in tbl.objs.values():
            if not ob.handle:
                ob.handle = tbl.alloc()
        for s in tbl.sets.values():
            if not s.handle:
                s.handle = tbl.alloc()
        for ft in tbl.flowtables.values():
            if not ft.handle:
                ft.handle = tbl.alloc()
        try:
            self.check_jumps(tbl)
        except NftError as err:
            self.record(err, self.pos)
        # nft adds a table's chains, then objects and sets, and only then the rules (handles follow).
        for chain, start in deferred:
            self.pos, saved = start, self.pos
            self.chain_rules(tbl, chain)
            self.pos = saved

    def deferred_syntax(self, tbl: Table, deferred: list[tuple[Chain, int]]) -> None:
        """The syntax errors in the rules of a table block's chains, when the input ends in the block."""
        for chain, start in deferred:
            self.pos = start
            try:
                self.chain_rules(tbl, chain)
            except StopParsing:
                pass

    def table_item(self, tbl: Table, deferred: list[tuple[Chain, int]]) -> None:
        t = self.next()
        if t.text == "flags":
            flag = self.word()      # 1.0.6 knows one table flag, and no list of them
            if flag.text != "dormant":
                raise NftError(f"unknown table option {flag.text}", loc(flag), parse=True)
            tbl.flags = [flag.text]
        elif t.text == "comment":
            tbl.comment = self.word().text
        elif t.text == "chain":
            name = self.chain_name()
            chain = self.add_chain(tbl, name, False, defer_rules=deferred)
            if not chain_type_fits(tbl.family, chain):
                raise NftError("Could not process rule: Operation not supported", loc(name))
        elif t.text in ("set", "map"):
            name = self.name()
            self.expect("{")
            self.set_block(tbl, name, t.text == "map", False, defer=True)
        elif t.text in ("counter", "quota", "limit"):
            self.object(tbl, t.text, self.name(), defer=True)
        elif t.text == "ct" and self.accept("helper"):
            name = self.name()
            self.object(tbl, cthelper.KIND, name, defer=True)
            if not cthelper.known(tbl.objs[(cthelper.KIND, name.text)]):
                raise NftError("Could not process rule: No such file or directory", loc(name))
        elif t.text == "flowtable":
            name = self.name()
            self.expect("{")
            flowtable.parse_block(self, tbl, name, False, defer=True)
        else:
            raise self.unexpected(t)

    def word_list(self) -> list[str]:
        out = [self.word().text]
        while self.accept(","):
            out.append(self.word().text)
        return out

    def add_chain(self, tbl: Table, name: Token, create: bool,
                  defer_rules: list[tuple[Chain, int]] | None = None) -> Chain:
        chain = tbl.chains.get(name.text)
        if chain is None:
            chain = Chain(name.text, tbl.alloc())
            tbl.chains[name.text] = chain
        elif create:
            raise NftError("Could not process rule: File exists", loc(name))
        if not self.accept("{"):
            return chain
        self.chain_header(tbl, chain)
        if defer_rules is not None:
            defer_rules.append((chain, self.pos))
            self.skip_block()
        else:
            self.chain_rules(tbl, chain)
        return chain

    def skip_block(self) -> None:
        depth = 1
        while depth:
            t = self.next()
            if t.kind == "eof":
                raise self.unexpected(t)
            if t.kind == "punct" and t.text == "{":
                depth += 1
            elif t.kind == "punct" and t.text == "}":
                depth -= 1

    def chain_header(self, tbl: Table, chain: Chain) -> None:
        """``type ... hook ... priority ...; policy ...;`` and ``comment``, before the rules."""
        while True:
            self.skip_seps()
            t = self.peek()
            if t.text == "type" and t.kind == "word":
                self.next()
                ctype = self.word()
                if ctype.text not in ("filter", "nat", "route"):
                    raise NftError("unknown chain type", loc(ctype))
                if ctype.text != "filter" and tbl.family not in ("ip", "ip6", "inet"):
                    # the kernel has no such chain type for the family
                    raise NftError("Could not process rule: No such file or directory", loc(ctype))
                self.expect("hook")
                hook = self.word()
                if hook.text not in HOOKS[tbl.family]:
                    raise NftError(f"unknown chain hook {hook.text}", loc(hook))
                devices: list[str] = []
                if self.accept("device"):
                    devices = [self.word().text]
                elif self.accept("devices"):
                    self.expect("=")
                    self.expect("{")
                    devices = [self.word().text]
                    while self.accept(","):
                        devices.append(self.word().text)
                    self.expect("}")
                kw = self.expect("priority")
                chain.prio = self.priority(tbl.family, hook.text, kw)
                if hook.text in ("ingress", "egress") and not devices:
                    raise NftError("Missing `device' in this chain definition", loc(t, self.toks[self.pos - 1]))
                # the kernel keeps the devices; nft lists them sorted
                chain.type, chain.hook, chain.devices = ctype.text, hook.text, sorted(devices)
                self.end_item()
            elif t.text == "policy" and t.kind == "word":
                self.next()
                pol = self.word()
                if pol.text not in ("accept", "drop") or pol.kind != "word":
                    what = "string" if is_identifier(pol) else token_name(pol)
                    raise NftError(f"syntax error, unexpected {what}, expecting accept or drop or '$'", loc(pol))
                chain.policy = pol.text
                self.end_item()
            elif t.text == "comment" and t.kind == "word" and self.peek(1).kind == "string":
                self.next()
                chain.comment = self.word().text
                self.end_item()
            else:
                return

    def priority(self, family: str, hook: str, kw: Token) -> int:
        t = self.word()
        names = named_priorities(family, hook)
        if t.text in names:
            base = names[t.text]
        else:
            try:
                base = int(t.text, 0)
            except ValueError:
                raise NftError("invalid priority expression value in this context.", loc(kw, t)) from None
            return base
        if self.at("+", "-"):
            sign = self.next().text
            n = self.word()
            return base + int(n.text) if sign == "+" else base - int(n.text)
        if self.peek().kind == "word" and self.peek().text.startswith("-"):
            return base + int(self.next().text)
        return base

    def chain_rules(self, tbl: Table, chain: Chain) -> None:
        self.in_block, was = True, self.in_block
        self.depth += 1
        try:
            self.chain_block(tbl, chain)
        finally:
            self.in_block = was
            self.depth -= 1

    def chain_block(self, tbl: Table, chain: Chain) -> None:
        while True:
            self.skip_seps()
            if self.accept("}"):
                return
            start = self.peek()
            at = self.pos
            try:
                rule = self.rule(tbl, start, chain=chain.name)
                chain.rules.append(rule)
                self.added.append((tbl, rule, loc(start, self.toks[self.pos - 1])))
                self.follow_on(start, rule=rule)
                self.end_item()
            except NftError as err:
                self.record(err, at)

    def follow_on(self, start: Token, command: bool = False, rule: Rule | None = None) -> None:
        """Once the kernel said EOPNOTSUPP in a batch, it says so for every later rule and element too
        (a rule's anonymous sets first, at their braces)."""
        if self.batch_broken:
            msg = "Could not process rule: Operation not supported"
            for where in getattr(rule, "anon_locs", []):
                self.kernel_errors.append(NftError(msg, where, validation=True))
            where = self.command_loc(start) if command else loc(start, self.toks[self.pos - 1])
            raise NftError("Could not process rule: Operation not supported", where, validation=True)

    # ---- sets, maps, objects ------------------------------------------------------------------
    def set_block(self, tbl: Table, name: Token, is_map: bool, create: bool, defer: bool = False) -> None:
        if ":" in name.text and name.kind == "word":
            # nft's scanner ends a name at a colon (kproxy's reads on, for IPv6 addresses)
            col = name.col + name.text.index(":")
            raise NftError("syntax error, unexpected colon, expecting '{'", (name.line, col, col))
        existing = tbl.sets.get(name.text)
        if existing is not None and create:
            raise NftError("Could not process rule: File exists", loc(name))
        s = existing or NSet(name.text, 0, is_map, [])
        if existing is None:
            self.new_sets.add(id(s))
        was = None if existing is None else ([d.name for d in s.key], [d.name for d in s.data or []])
        pending: list[tuple[Token, SetLit]] = []
        typed: list[bool] = []      # the block declares the key itself (nft allocates a new set for it)
        while True:
            self.skip_seps()
            t = self.peek()
            if self.accept("}"):
                break
            at = self.pos
            self.depth += 1
            try:
                self.set_item(tbl, s, t, is_map, pending, typed)
            except NftError as err:
                if not err.syntax:
                    raise
                self.record(err, at)
            finally:
                self.depth -= 1
        if not typed:
            # the parser's error, in turn with its syntax errors: at the block from its brace to its last
            # word (in a table block, at the name)
            last = self.toks[self.pos - 2]
            brace = self.toks[self.toks.index(name) + 1]
            nokey = NftError("set definition does not specify key", loc(name) if defer else
                             (brace.line, brace.col, last.end if last.line == brace.line else brace.end), parse=True)
            if defer:
                self.table_errors.append(nokey)
            else:
                self.found(nokey, (self.toks[self.pos - 1].line, self.toks[self.pos - 1].col))
            return
        if was is not None and was != ([d.name for d in s.key], [d.name for d in s.data or []]):
            # the kernel's, for a set declared again with other types (the batch, and this copy, are dropped)
            raise NftError("Could not process rule: File exists", loc(name))
        if existing is None:
            s.handle = 0 if defer else tbl.alloc()
            tbl.sets[name.text] = s
        if not defer:  # in a table block the block's chains come first: table_block checks then
            self.check_jumps(tbl)
        for _, lit in pending:
            objmap.check_elements(self, tbl, s, lit.elems)
            self.add_elements(s, lit)

    def set_item(self, tbl: Table, s: NSet, t: Token, is_map: bool, pending: list[tuple[Token, SetLit]],
                 typed: list[bool]) -> None:
        """One line of a set or map block (``typed``: a type or typeof line parsed)."""
        self.next()
        if t.text == "type":        # the set has its types once the whole line parsed
            key = [self.dtype()]
            while self.accept("."):
                key.append(self.dtype())
            data = s.data
            if is_map:
                self.expect(":")
                if self.accept("verdict"):
                    data = [T.VERDICT]
                elif self.peek().text in T.OBJ_REFS:
                    data = [T.OBJ_REFS[self.next().text]]
                else:
                    data = [self.dtype()]
                    while self.accept("."):
                        data.append(self.dtype())
            elif not self.at(";") and self.peek().kind != "nl":
                raise self.unexpected(expecting="newline or semicolon or .")
            s.key, s.data = key, data
            typed.append(True)
        elif t.text == "typeof":
            self.typeof(tbl, s, is_map)
            typed.append(True)
        elif t.text == "flags":
            s.flags = self.word_list()
            bad = next((w for w in self.toks[self.pos - 2 * len(s.flags) + 1:self.pos:2]
                        if w.text not in SET_FLAGS), None)
            if bad is not None:
                raise self.unexpected(bad, "constant or interval or dynamic or timeout")
        elif t.text == "timeout":
            s.timeout = self.time_value()
        elif t.text == "gc-interval":
            s.gc_interval = self.time_value()
        elif t.text == "size":
            s.size = int(self.number().text)
        elif t.text == "policy":
            pol = self.peek()
            if pol.text not in ("memory", "performance") or pol.kind != "word":
                raise self.unexpected(pol, "memory or performance")
            s.policy = self.next().text
        elif t.text == "comment":
            s.comment = self.word().text
        elif t.text == "auto-merge":
            s.auto_merge = True
            return  # nft's grammar wants no separator after auto-merge or elements
        elif t.text == "elements":
            self.expect("=")
            start = self.peek()
            if not s.key:                   # nft reads them untyped; the set is refused without a key
                self.expect("{")
                self.skip_block()
                return
            pending.append((start, self.set_literal(s.key, s.data, s)))
            return
        else:
            raise self.unexpected(t)
        self.end_item()

    def typeof(self, tbl: Table, s: NSet, is_map: bool) -> None:
        """``typeof ip daddr . tcp dport [: meta mark]``: the key (and data) types are those of the expressions,
        and the set lists them as written."""
        from kproxy.nftables.rules import RuleBuilder

        rb = RuleBuilder(self, tbl)

        def exprs() -> list[Expr]:
            out = [rb.primary()]
            while self.accept("."):
                out.append(rb.primary())
            return out

        key = exprs()
        s.key = [e.dtype for e in key]
        text = " . ".join(e.text(OPTS) for e in key)
        if is_map:
            self.expect(":")
            data = exprs()
            s.data = [e.dtype for e in data]
            text += " : " + " . ".join(e.text(OPTS) for e in data)
        s.typeof = text

    def check_jumps(self, tbl: Table) -> None:
        """Verdict-map elements may only jump to chains the table has by then (the kernel's ENOENT)."""
        pending, self.jump_elems = self.jump_elems, []
        for target, where in pending:
            if target not in tbl.chains:
                raise NftError("Could not process rule: No such file or directory", where)

    def dtype(self) -> T.DType:
        t = self.peek()
        if t.kind == "word" and not is_identifier(t) and t.text not in ("mark", "dscp", "ecn", "classid"):
            raise self.unexpected(t)        # a keyword of nft's scanner is no type_identifier
        t = self.word()
        dt = T.SET_TYPES.get(t.text)
        if dt is None:
            raise NftError(f"unknown datatype {t.text}", loc(t), parse=True)    # the parser's YYERROR
        return dt

    def time_value(self) -> int:
        t = self.word()
        ms = parse_time(t.text)
        if ms is None:
            raise NftError("Wrong time format, expecting ...", loc(t))
        return ms

    def object(self, tbl: Table, kind: str, name: Token, defer: bool = False) -> None:
        obj = tbl.objs.get((kind, name.text))
        if obj is None:
            obj = Obj(kind, name.text, 0 if defer else tbl.alloc())
            defaults: dict[str, dict[str, Any]] = {"counter": {"packets": 0, "bytes": 0},
                                                   "quota": {"value": 0, "unit": "bytes"},
                                                   "limit": {"rate": 0, "per": "second"}}
            obj.values = cthelper.defaults(tbl) if kind == cthelper.KIND else dict(defaults[kind])
            tbl.objs[(kind, name.text)] = obj
        if not self.accept("{"):
            return
        while True:
            self.skip_seps()
            if self.accept("}"):
                return
            if self.accept("comment"):
                obj.comment = self.word().text
            elif kind == cthelper.KIND:
                cthelper.body_item(self, obj)
            elif kind == "counter":
                self.expect("packets")
                obj.values["packets"] = int(self.word().text)
                self.expect("bytes")
                obj.values["bytes"] = int(self.word().text)
            elif kind == "quota":
                q = self.quota_body()
                obj.values = {"value": q.value, "unit": q.unit, "over": q.over, "used": q.used,
                              "used_unit": q.used_unit}
            else:
                self.expect("rate")
                lim = self.limit_body()
                obj.values = {"rate": lim.rate, "per": lim.per, "burst": lim.burst, "unit": lim.unit,
                              "burst_unit": lim.burst_unit, "over": lim.over}
            if not self.at("}"):  # a counter/quota/limit body needs no separator before its brace
                self.end_item()

    def unclosed_literal(self) -> None:
        """Elements of a set nft does not find: a literal the input ends in is its parser's error first."""
        depth = 0
        for t in self.toks[self.pos:]:
            if t.kind == "punct" and t.text in "{}":
                depth += 1 if t.text == "{" else -1
                if depth == 0:
                    return
            elif t.kind == "eof" and depth > 0:
                raise NftError("syntax error, unexpected end of file, expecting comma or '}'", (t.line, 1, 1))

    def check_new_elements(self, s: NSet, lit: SetLit) -> None:
        """``create element``: the kernel's EEXIST, at the key, for an element the set holds."""
        if "interval" in s.flags and len(s.key) == 1:
            bits = s.key[0].bits or 32
            held = {tuple(span(e, bits)) for e in s.elems}
            found = next((e for e in lit.elems if tuple(span(e, bits)) in held), None)
        else:
            index = self.elem_index(s)
            found = next((e for e in lit.elems if elem_identity(e.key) in index), None)
        if found is not None:
            raise NftError("Could not process rule: File exists", objmap.key_loc(self, found))

    def add_elements(self, s: NSet, lit: SetLit) -> None:
        if "interval" in s.flags and len(s.key) > 1:
            for e in lit.elems:
                if pipapo_clash(s.elems, e, s.key):
                    raise NftError("Could not process rule: File exists", getattr(e, "loc", None))
        if "interval" in s.flags and len(s.key) == 1:
            bits = s.key[0].bits or 32
            new = lit.elems
            if not s.auto_merge:
                old = {tuple(span(e, bits)): e for e in s.elems}
                for e in sorted(lit.elems, key=lambda e: span(e, bits)):
                    lo, hi = span(e, bits)
                    if (lo, hi) not in old and any(lo <= ohi and olo <= hi for olo, ohi in old):
                        raise NftError("interval overlaps with an existing one", getattr(e, "loc", None))
                new = [e for e in lit.elems if tuple(span(e, bits)) not in old]
            s.elems = merge_intervals(s.elems + new, s.key[0], s.auto_merge)
        else:
            # The first of equal keys stays; the list is put in nft's order once, at the end of the script
            # (``sort_touched_sets``), so a script of many ``add element`` commands is not quadratic.
            index = self.elem_index(s)
            for e in lit.elems:
                ident = elem_identity(e.key)
                if ident not in index:
                    index[ident] = e
                    s.elems.append(e)
            self.unsorted[id(s)] = s

    def elem_index(self, s: NSet) -> dict[Any, Elem]:
        """The set's elements by identity, kept while this parser appends to the same list."""
        held = self.elem_indexes.get(id(s))
        if held is None or held[0] is not s.elems or len(held[1]) != len(s.elems):
            index: dict[Any, Elem] = {}
            for e in s.elems:
                index.setdefault(elem_identity(e.key), e)
            s.elems = list(index.values())
            held = (s.elems, index)
            self.elem_indexes[id(s)] = held
        return held[1]

    def sort_touched_sets(self) -> None:
        from kproxy.nftables.listing import elem_sort_key

        for s in self.unsorted.values():
            s.elems.sort(key=elem_sort_key)  # stable: of equal keys, the earlier stays first
        self.unsorted.clear()

    def limit_body(self) -> Limit:
        over = bool(self.accept("over"))
        t = self.peek()
        if t.kind != "word" or not t.text[:1].isdigit():
            raise self.unexpected(expecting="number")
        self.next()
        if "/" not in t.text and (self.peek().kind in ("nl", "eof") or self.at(";", "}")):
            raise self.unexpected(expecting="/ or string or bytes")
        if "/" in t.text:
            rate, _, per = t.text.partition("/")
            if per not in ("second", "minute", "hour", "day", "week"):
                # nft's scanner reads NUM '/' and then a word that is no time unit
                c = t.col + len(rate) + 1
                raise NftError(f"syntax error, unexpected {'string' if per else 'end of file'}",
                               (t.line, c, c + len(per) - 1))
            lim = Limit(int(rate), per, 5, over=over)
            if self.accept("burst"):
                lim.burst = int(self.word().text)
                self.expect("packets")
            return lim
        unit_tok = self.word()
        u, _, per = unit_tok.text.partition("/")
        value, unit = get_rate(int(t.text) * UNIT_SIZE[self.data_unit(u, t, unit_tok)])
        lim = Limit(value, per, 0, unit=unit, over=over)
        lim.burst_unit = "bytes"
        if self.accept("burst"):
            n = self.word()
            b = self.word()
            lim.burst, lim.burst_unit = get_rate(int(n.text) * UNIT_SIZE[self.data_unit(b.text, n, b)])
        return lim

    def data_unit(self, text: str, start: Token, end: Token) -> str:
        """datatype.c's data_unit_parse: a unit that starts with bytes, kbytes or mbytes (nft compares
        only that much); anything else, gbytes too, is its "Wrong rate format" over the construct."""
        for unit in ("bytes", "kbytes", "mbytes"):
            if text.startswith(unit):
                return unit
        raise NftError("Wrong rate format", loc(start, end))

    def quota_body(self, start: Token | None = None) -> Quota:
        """``[over|until] N UNIT [used N UNIT]``; ``start``: where nft's error for a bad unit begins
        (the ``quota`` keyword of a statement; in an object's block its mode, else the token before)."""
        mode = self.peek()
        over = bool(self.accept("over"))
        if not over and self.accept("until"):   # nft's explicit form of the default mode
            over = False
        elif not over:
            mode = start or self.toks[self.pos - 1]
        start = start or mode
        v = self.word()
        unit_tok = self.word()
        used: tuple[int, str] | None = None
        if self.at("used"):
            kw = self.next()
            n = self.word()
            u = self.word()
            used = get_rate(int(n.text) * UNIT_SIZE[self.data_unit(u.text, kw, u)])   # bison reduces it first
        value = int(v.text) * UNIT_SIZE[self.data_unit(unit_tok.text, start, self.toks[self.pos - 1])]
        q = Quota(*get_rate(value), over)
        if used is not None:
            q.used, q.used_unit = used
        return q

    # ---- rules ----------------------------------------------------------------------------------
    def syntax_check_rule(self, family: str) -> None:
        """Parse the rule of a command whose table or chain is missing into a scratch table: nft parses
        the whole script before it looks anything up, so a syntax error there comes first."""
        if self.from_json:
            return              # nft's JSON parser has its own errors: kproxy's text of it has none to find
        at = self.pos
        if self.at("position", "handle", "index"):
            self.next()
            self.next()
        scratch = Table(family, "", 0)
        try:
            self.rule(scratch, self.peek(), chain="")
        except NftError as err:
            if err.syntax:
                raise
        finally:
            self.pos = at

    def cmd_rule(self, op: str, verb: Token) -> None:
        family, tname = self.family_and_name()
        name = self.chain_name()
        # a position or index is looked up in nft's cache, which finds a missing chain itself
        how = "eval" if op != "replace" and self.at("position", "index") else "rule"
        try:
            tbl = self.find_table(family, tname, how, name)
            chain = self.find_chain(tbl, name, how)
        except NftError:
            self.syntax_check_rule(family)
            raise
        position: tuple[str, int] | None = None
        pos_tok = self.peek()
        if op == "replace" and not self.at("handle"):
            raise self.unexpected(pos_tok, "handle")
        if self.at("position", "handle", "index"):
            kind = self.next().text
            num = self.number()
            position = (kind, int(num.text))
            # nft points at the number of ``handle N`` and at the whole ``position N``/``index N``.
            pos_tok = num if kind == "handle" else Token("word", "", pos_tok.line, pos_tok.col, num.end)
        start = self.peek()
        if op == "replace":
            assert position is not None
            idx = self.rule_index(chain, position[1], pos_tok)
            rule = self.rule(tbl, start, new_handle=False, chain=chain.name)
            rule.handle = chain.rules[idx].handle
            chain.rules[idx] = rule
            self.rule_ops[id(rule)] = "replace"
            self.added.append((tbl, rule, self.command_loc(verb)))
            return
        missing: NftError | None = None
        if position is None:
            idx = 0 if op == "insert" else len(chain.rules)
        elif position[0] == "index":
            # nft turns an index into the handle of the rule there, in userspace, after evaluating
            # the rule: an index with no rule is its error, and nothing reaches the kernel.
            if position[1] >= len(chain.rules):
                self.rule(tbl, start, new_handle=False, chain=chain.name)
                raise NftError("Could not process rule: No such file or directory", loc(pos_tok), kernel=False)
            idx = position[1] if op == "insert" else position[1] + 1
        else:
            try:
                idx = self.rule_index(chain, position[1], pos_tok)
            except NftError as err:
                missing, idx = err, 0
            idx = idx if op == "insert" else idx + 1
        # The kernel looks the position up before it gives the new rule a handle.
        rule = self.rule(tbl, start, new_handle=missing is None, chain=chain.name)
        if missing is not None:
            raise missing
        chain.rules.insert(idx, rule)
        if op == "insert":
            self.rule_ops[id(rule)] = op
        self.added.append((tbl, rule, self.command_loc(verb)))
        self.follow_on(verb, command=True, rule=rule)

    def command_loc(self, verb: Token) -> Loc:
        """Where nft blames a command the kernel refused: from its verb to the end of its line,
        newline included."""
        line, col, end = loc(verb, self.toks[self.pos - 1])
        return line, col, end + 1

    def rule_index(self, chain: Chain, handle: int, at: Token) -> int:
        for i, r in enumerate(chain.rules):
            if r.handle == handle:
                return i
        raise NftError("Could not process rule: No such file or directory", loc(at))

    def cmd_insert(self, verb: Token) -> None:
        self.accept("rule")
        self.cmd_rule("insert", verb)

    def cmd_replace(self, verb: Token) -> None:
        self.expect("rule")
        self.cmd_rule("replace", verb)

    def rule(self, tbl: Table, start: Token, new_handle: bool = True, chain: str = "") -> Rule:
        from kproxy.nftables.rules import RuleBuilder

        return RuleBuilder(self, tbl).build(start, new_handle, chain)

    # ---- delete / flush / list / reset ---------------------------------------------------------
    def cmd_delete(self, verb: Token) -> None:
        if self.peek().kind in ("nl", "eof") or self.at(";"):
            raise self.unexpected()
        what = self.word()
        if what.text == "table":
            if self.peek().text in FAMILIES and self.peek(1).text == "handle" or self.at("handle"):
                family = self.next().text if not self.at("handle") else "ip"
                self.next()
                n = self.number()
                tbl = next((t for t in self.rs.tables if t.family == family and str(t.handle) == n.text), None)
                if tbl is None:
                    raise NftError("Could not process rule: No such file or directory", loc(n))
            else:
                family, name = self.family_and_name()
                tbl = self.find_table(family, name, "table")
            self.rs.tables.remove(tbl)
        elif what.text == "chain":
            family, tname = self.family_and_name()
            how = "chain" if not self.at("handle") else "plain"     # by handle: no name to suggest for
            name = self.chain_name("handle or string") if how == "chain" else self.word()
            tbl = self.find_table(family, tname, how, name)
            if how == "plain":
                name = self.by_handle(tbl.chains, self.number())
            chain = self.find_chain(tbl, name, how)
            if any(jumps_to(c, chain.name) for c in tbl.chains.values() if c is not chain) or any(
                    isinstance(e.data, Verdict) and e.data.target == chain.name
                    for st in tbl.sets.values() if st.data == [T.VERDICT] for e in st.elems):
                # a rule's jump or a verdict map's element holds the chain
                raise NftError("Could not process rule: Device or resource busy", loc(name))
            del tbl.chains[name.text]
        elif what.text == "rule":
            family, tname = self.family_and_name()
            name = self.chain_name()
            tbl = self.find_table(family, tname, "rule", name)
            chain = self.find_chain(tbl, name, "rule")
            self.expect("handle")
            n = self.number()
            if not any(r.handle == int(n.text) for r in chain.rules):      # with cmd.c's hint about the chain
                raise self.enoent("rule", tbl.family, None, name, n, tbl.name)
            idx = self.rule_index(chain, int(n.text), n)
            rule = chain.rules.pop(idx)
            for anon in rule.anon_sets:
                tbl.sets.pop(anon, None)
        elif what.text in ("set", "map"):
            family, tname = self.family_and_name()
            if what.text == "map" and self.at("handle"):
                raise self.unexpected(expecting="string")       # nft 1.0.6 deletes no map by handle
            by_handle = what.text == "set" and self.accept("handle") is not None
            name = self.number() if by_handle else self.name()
            tbl = self.find_table(family, tname, "plain" if by_handle else "set", name)
            if by_handle:
                name = self.by_handle({k: v for k, v in tbl.sets.items() if not v.anonymous}, name)
            self.find_set(tbl, name, "set")
            if any(refers_to_set(r, name.text) for c in tbl.chains.values() for r in c.rules):
                raise NftError("Could not process rule: Device or resource busy", loc(name))
            del tbl.sets[name.text]
        elif what.text == "element":
            family, tname = self.family_and_name()
            if self.at("handle"):
                raise self.unexpected(expecting="string")
            tbl = self.find_table(family, tname, "eval")
            s = self.find_set(tbl, self.name(), "eval")
            lit = self.set_literal(s.key, None, s)
            have = {repr(e.key) for e in s.elems}
            for e in lit.elems:
                if repr(e.key) not in have:
                    where = getattr(e, "loc", None)
                    if "interval" in s.flags:   # nft checks interval sets against its cache itself
                        raise NftError("element does not exist", where, kernel=False)
                    raise NftError("Could not process rule: No such file or directory", where)
            gone = {repr(e.key) for e in lit.elems}
            s.elems = [e for e in s.elems if repr(e.key) not in gone]
        elif what.text in ("counter", "quota", "limit") or what.text == "ct" and self.accept("helper"):
            kind = cthelper.KIND if what.text == "ct" else what.text
            family, tname = self.family_and_name()
            if kind == cthelper.KIND and self.at("handle"):
                raise self.unexpected(expecting="string")       # nor a ct helper
            by_handle = self.accept("handle") is not None
            name = self.number() if by_handle else self.name()
            tbl = self.find_table(family, tname, "plain" if by_handle else "obj", name)
            if by_handle:
                name = self.by_handle({k[1]: v for k, v in tbl.objs.items() if k[0] == kind}, name)
            if (kind, name.text) not in tbl.objs:
                raise self.enoent("obj", family, None, name, name, tbl.name)
            if any(refers_to_obj(r, kind, name.text) for c in tbl.chains.values() for r in c.rules) or \
                    objmap.uses(tbl, kind, name.text):
                raise NftError("Could not process rule: Device or resource busy", loc(name))
            del tbl.objs[(kind, name.text)]
        elif what.text == "flowtable":
            family, tname = self.family_and_name()
            flowtable.delete(self, self.find_table(family, tname, "plain"))
        else:
            raise self.unexpected(what)

    @staticmethod
    def by_handle(objects: dict[str, Any], n: Token) -> Token:
        """``delete KIND ... handle N``: the named object's name (at N's place), or the kernel's ENOENT at N."""
        found = next((name for name, ob in objects.items() if str(ob.handle) == n.text), None)
        if found is None:
            raise NftError("Could not process rule: No such file or directory", loc(n))
        return Token(n.kind, found, n.line, n.col, n.end)

    def cmd_flush(self, verb: Token) -> None:
        if self.peek().kind in ("nl", "eof") or self.at(";"):
            raise self.unexpected()
        what = self.word()
        if what.text == "ruleset":
            family = self.word().text if self.peek().kind == "word" and self.peek().text in FAMILIES else None
            self.rs.tables = [t for t in self.rs.tables if family is not None and t.family != family]
            self.out.flushed.append(family)
        elif what.text == "table":
            family, name = self.family_and_name()
            tbl = self.find_table(family, name, "plain")
            # each object looked up by name before it changes, and the dictionaries kept (an in-place
            # transaction's journal copies what is looked up: kproxy.nftables.journal)
            chains, sets = tbl.chains, tbl.sets
            for cname in list(chains):
                chains[cname].rules = []
            for sname in [k for k, s in sets.items() if s.anonymous]:
                del sets[sname]
            for sname in list(sets):
                sets[sname].elems = []
        elif what.text == "chain":
            family, tname = self.family_and_name()
            name = self.chain_name()
            tbl = self.find_table(family, tname, "plain")
            chain = self.find_chain(tbl, name, "plain")
            for r in chain.rules:
                for anon in r.anon_sets:
                    tbl.sets.pop(anon, None)
            chain.rules = []
        elif what.text in ("set", "map"):
            family, tname = self.family_and_name()
            tbl = self.find_table(family, tname, "eval")
            self.find_set(tbl, self.name(), "eval").elems = []
        else:
            raise self.unexpected(what)

    def cmd_list(self, verb: Token) -> None:
        args: list[Token] = []
        while self.peek().kind in ("word", "string"):
            args.append(self.next())
        if not args:
            raise self.unexpected()
        if len(args) == 1 and args[0].text in ("table", "chain", "set", "map", "counter", "quota", "limit",
                                                 "flowtable", "meter"):
            raise self.unexpected(expecting="string")
        extra = 1 + (len(args) > 1 and args[1].text in FAMILIES)
        if args[0].text == "ruleset" and len(args) > extra:
            raise self.unexpected(args[extra], "end of file or newline or semicolon")
        if len(args) >= 3 and args[0].text == "chain" and not is_identifier(args[-1]):
            raise self.unexpected(args[-1], "string")
        self.out.requests.append(("list", args))

    def cmd_get(self, verb: Token) -> None:
        """``get element [FAMILY] TABLE SET { KEYS }``: the elements holding the keys (an interval's
        element for a value inside it), or the kernel's ENOENT for the whole command."""
        if not self.at("element"):
            raise self.unexpected(expecting="element")
        self.next()
        family, tname = self.family_and_name()
        tbl = self.find_table(family, tname, "eval")
        s = self.find_set(tbl, self.name(), "eval")
        lit = self.set_literal(s.key, None, s)
        found: list[Elem] = []
        for e in lit.elems:
            hit = next((h for h in s.elems if holds(h, e, s)), None)
            if hit is None:
                raise NftError("Could not process rule: No such file or directory",
                               (verb.line, verb.col, self.toks[self.pos - 1].end + 1))
            if hit not in found:
                found.append(hit)
        # an interval set's in the order asked for, others' in the set's order (as nft 1.0.6 prints them)
        got = dataclasses.replace(s, elems=found if "interval" in s.flags else [h for h in s.elems if h in found])
        self.out.gets.append((tbl, got))

    def cmd_rename(self, verb: Token) -> None:
        """``rename chain [FAMILY] TABLE CHAIN NEWNAME``: the chain keeps its handle, rules and place, and
        every jump to it follows (the kernel's rules point at the chain, not at its name)."""
        self.expect("chain")
        family, tname = self.family_and_name()
        old, new = self.chain_name(), self.chain_name()
        tbl = self.find_table(family, tname, "eval")
        chain = tbl.chains.get(old.text)
        if chain is None:  # nft's cache lookup fails before anything reaches the kernel
            raise self.enoent("eval", family, None, old, old, what="chain")
        if new.text in tbl.chains:  # the kernel refuses; nft blames the whole command, its end included
            line, col, end = loc(verb, new)
            raise NftError("Could not process rule: File exists", (line, col, end + 1))
        chain.name = new.text
        tbl.chains = {new.text if k == old.text else k: c for k, c in tbl.chains.items()}
        for v in verdicts(tbl):
            if v.target == old.text:
                v.target = new.text

    def cmd_reset(self, verb: Token) -> None:
        if not self.at("counter", "counters", "quota", "quotas"):  # nft 1.0.6 resets nothing else
            t = self.peek()
            err = self.unexpected(expecting="counter or counters or quotas or quota")
            if t.kind == "word" and t.text not in KEYWORDS:
                err.msg = "syntax error, unexpected string, expecting counter or counters or quotas or quota"
            raise err
        args: list[Token] = []
        while self.peek().kind in ("word", "string"):
            args.append(self.next())
        names = args[2:] if len(args) > 2 and args[1].text in FAMILIES else args[1:]
        family = args[1].text if len(args) > 2 and args[1].text in FAMILIES else "ip"
        tbl = self.rs.find(family, names[0].text) if len(names) == 2 else None
        if tbl is not None and args[0].text in ("counter", "quota") and (args[0].text, names[1].text) not in tbl.objs:
            # the kernel's ENOENT, which nft blames on the whole command (no attribute to point at)
            raise NftError("Could not process rule: No such file or directory", self.command_loc(verb))
        self.out.requests.append(("reset", args))

    # ---- values -------------------------------------------------------------------------------
    def set_literal(self, key: list[T.DType], data: list[T.DType] | None, s: NSet | None = None) -> SetLit:
        self.expect("{")
        lit = SetLit()
        while True:
            self.skip_seps()
            if self.accept("}"):
                return lit
            start = self.peek()
            k = self.value_of(key)
            elem = Elem(k)
            key_loc = loc(start, self.toks[self.pos - 1])
            while self.at("timeout", "expires", "comment", "counter"):
                w = self.next().text
                if w == "comment":
                    elem.comment = self.word().text
                elif w == "counter":
                    elem.counter = True
                else:
                    setattr(elem, w, self.time_value())
            if data is not None:
                self.expect(":")
                elem.data = self.verdict() if data == [T.VERDICT] else self.value_of(data)
                if isinstance(elem.data, Verdict) and elem.data.target is not None:
                    if s is not None:
                        self.jump_elems.append((elem.data.target, key_loc))
                    elem.key_loc = key_loc  # type: ignore[attr-defined]  # an anonymous vmap's rule checks it
            elif self.at(":"):
                raise self.unexpected()
            if s is not None and isinstance(k, (Prefix, Range)) and "interval" not in s.flags:
                what = "prefix" if isinstance(k, Prefix) else "range"
                raise NftError(f"You must add 'flags interval' to your set declaration if you want to add {what}"
                               " elements",
                               loc(start, self.toks[self.pos - 1]))
            elem.loc = loc(start, self.toks[self.pos - 1])  # type: ignore[attr-defined]
            lit.elems.append(elem)
            self.skip_seps()
            if not self.accept(","):
                self.skip_seps()
                end = self.peek()
                if end.kind == "eof":       # newlines are no tokens in braces: the input just ends
                    raise NftError("syntax error, unexpected end of file, expecting comma or '}'", (end.line, 1, 1))
                if not self.at("}"):
                    raise self.unexpected(expecting="comma or '}'")
                self.next()
                return lit

    def verdict(self) -> Verdict:
        t = self.word()
        if t.text in VERDICTS:
            return Verdict(t.text)
        if t.text in ("jump", "goto"):
            return Verdict(t.text, self.chain_name("string or '$'").text)
        raise self.unexpected(t)

    def value_of(self, types: list[T.DType]) -> Expr:
        parts = [self.value(types[0])]
        for dt in types[1:]:
            self.expect(".")
            parts.append(self.value(dt))
        return parts[0] if len(parts) == 1 else Concat(parts)

    def value(self, dt: T.DType) -> Expr:
        t = self.peek()
        if self.accept("("):
            v = self.value(dt)
            while self.accept("|"):
                w = self.value(dt)
                assert isinstance(v, Const) and isinstance(w, Const)
                v = Const(dt, v.value | w.value)
            self.expect(")")
            return v
        if t.kind == "string":
            self.next()
            return Const(dt, dt.parse(t.text) if dt.kind in ("string", "ifindex") else t.text)
        if t.kind != "word":
            raise self.unexpected(t)
        self.next()
        return self.parse_value_text(dt, t)

    def parse_value_text(self, dt: T.DType, t: Token) -> Expr:
        text = t.text
        if dt.kind in ("string", "ifindex"):
            return Const(dt, dt.parse(text))
        try:
            return Const(dt, dt.parse(text))
        except T.TypeError_:
            pass
        if len(text) > 1 and text.endswith("-") and NUMBER.fullmatch(text[:-1]) and self.toks[self.pos - 1] is t:
            raise self.unexpected(self.peek())      # a range with no upper end: nft's scanner reads NUM DASH
        if "/" in text and dt.kind in ("ipv4", "ipv6", "int", "mark", "hex"):
            base, _, plen = text.rpartition("/")
            bits = dt.bits or 32
            try:
                v = dt.parse(base)
                n = int(plen, 16) if plen[:2].lower() == "0x" else int(plen)   # nft reads it with strtoul
            except (T.TypeError_, ValueError):
                raise self.bad_value(dt, t) from None
            if n > bits:
                raise NftError(f"Prefix length {n} is invalid for type of {bits} bits width", loc(t))
            mask = ((1 << bits) - 1) ^ ((1 << (bits - n)) - 1)
            if n == bits:
                return Const(dt, v)
            return Prefix(Const(dt, v & mask), n)
        if "-" in text:
            for i, ch in enumerate(text):
                if ch == "-" and i:
                    try:
                        lo, hi = dt.parse(text[:i]), dt.parse(text[i + 1:])
                    except T.TypeError_:
                        continue
                    if lo > hi:
                        raise NftError("Range has zero or negative size", loc(t))
                    return Range(Const(dt, lo), Const(dt, hi))
        raise self.bad_value(dt, t)

    def bad_value(self, dt: T.DType, t: Token) -> NftError:
        if dt.kind == "service":
            if t.text.isdigit():
                return NftError("Service out of range", loc(t))
            return NftError("Could not resolve service: Servname not found in nft services list", loc(t))
        if dt.kind == "ipv4" and ":" in t.text:
            try:
                ipaddress.IPv6Address(t.text)
            except ValueError:
                pass
            else:       # getaddrinfo(AF_INET) on an IPv6 literal
                return NftError("Could not resolve hostname: Address family for hostname not supported", loc(t))
        if dt.kind == "ipv4":
            return NftError("Could not resolve hostname: Name or service not known", loc(t))
        if dt.kind == "ipv6" and T.NUMBER_RE.sub("", t.text).strip(".") == "" and t.text.count(".") == 3:
            # getaddrinfo(AF_INET6) on an IPv4 literal
            return NftError("Could not resolve hostname: Address family for hostname not supported", loc(t))
        if dt.kind == "proto":
            return NftError("Could not resolve protocol name", loc(t))
        if (dt.name in T.HEX_SYMBOLS or dt.kind in ("int", "hex", "rtsym") and dt.bits) and T.NUMBER_RE.fullmatch(t.text):
            # a number past a symbol type's integer base: integer_type_parse's range error
            return NftError(f"Value {t.text} exceeds valid range 0-{(1 << dt.bits) - 1}", loc(t))
        desc = {"icmp_type": "ICMP type", "ct_state": "conntrack state", "mark": "packet mark",
                "inet_service": "internet network service", "dscp": dt.desc, "ecn": dt.desc,
                "mh_type": dt.desc, "boolean": "boolean type",
                "realm": dt.desc, "devgroup": dt.desc}.get(dt.name, dt.name)
        return NftError(f"Could not parse {desc}", loc(t))


# The hooks each chain type registers for (nft_chain_nat, nft_chain_route); filter takes any hook.
TYPE_HOOKS = {"nat": ("prerouting", "input", "output", "postrouting"), "route": ("output",)}


def chain_type_fits(family: str, c: Chain) -> bool:
    """Whether the kernel takes a base chain of this type at its hook (else EOPNOTSUPP)."""
    return c.type in (None, "filter") or c.hook in TYPE_HOOKS.get(str(c.type), ())


def refers_to_set(rule: Rule, name: str) -> bool:
    """Whether a rule looks a named set or map up (``@name``, ``vmap @name``, ``map @name``, ``add @name``)."""
    todo: list[object] = list(rule.stmts)
    while todo:
        x = todo.pop()
        if isinstance(x, SetRef) and x.name == name or isinstance(x, SetUpdate) and x.set_name == name:
            return True
        if isinstance(x, (Stmt, Expr)):
            todo += [v for v in vars(x).values() if isinstance(v, (Stmt, Expr))]
            todo += [i for v in vars(x).values() if isinstance(v, list) for i in v]
    return False


def refers_to_obj(rule: Rule, kind: str, name: str) -> bool:
    """Whether a rule uses a named stateful object (``counter name "x"``, ``quota name "x"``, ...): the
    kernel refuses to delete an object a rule holds."""
    return any(isinstance(x, Counter) and kind == "counter" and x.name == name
               or isinstance(x, ObjRef) and x.kind == kind and x.name == name
               or kind == cthelper.KIND and cthelper.uses(x, name) for x in rule.stmts)


def verdicts(tbl: Table) -> list[Verdict]:
    """Every verdict in a table's rules, anonymous and named verdict maps: where chain names are kept."""
    out: list[Verdict] = []
    lits: list[Expr] = []
    for c in tbl.chains.values():
        for r in c.rules:
            for st in r.stmts:
                if isinstance(st, VerdictStmt):
                    out.append(st.verdict)
                lits += [e for e in vars(st).values() if isinstance(e, Expr)]
    elems = [e for s in tbl.sets.values() for e in s.elems]
    elems += [e for lit in lits if isinstance(lit, SetLit) for e in lit.elems]
    out += [e.data for e in elems if isinstance(e.data, Verdict)]
    return out


def jumps_to(chain: Chain, target: str) -> bool:
    for r in chain.rules:
        for s in r.stmts:
            if isinstance(s, VerdictStmt) and s.verdict.target == target:
                return True
    return False


def jump_errors(tables: list[Table], added: list[tuple[Table, Rule, Loc]]) -> list[NftError]:
    """The kernel's EMLINK for tables whose jumps nest too deep or loop: at the rule that made its table
    invalid and at every rule the batch adds to that table after it; without position when the table
    was invalid before any of them."""
    msg = "Could not process rule: Too many links"
    blamed: list[tuple[int, NftError]] = []
    for tbl in tables:
        mine = [(i, rule, where) for i, (t, rule, where) in enumerate(added) if t is tbl]
        first = culprit(tbl, [rule for _, rule, _ in mine])
        if first == -1:
            blamed.append((-1, NftError(msg, None, validation=True)))
        elif first is not None:
            blamed += [(i, NftError(msg, where, validation=True)) for i, _, where in mine[first:]]
    return [err for _, err in sorted(blamed, key=lambda b: b[0])]


def elem_identity(k: Expr) -> Any:
    """What makes two element keys of one set the same element: their values (cheaper than their repr)."""
    if type(k) is Const:
        return ("c", k.value)
    if type(k) is Concat and all(type(i) is Const for i in k.items):
        return ("k", tuple(i.value for i in k.items))  # type: ignore[attr-defined]
    return ("r", repr(k))


def span(e: Elem, bits: int) -> tuple[int, int]:
    """The first and last value an interval element covers."""
    k = e.key
    if isinstance(k, Prefix):
        lo = k.base.value
        return lo, lo | ((1 << (bits - k.length)) - 1)
    if isinstance(k, Range):
        return k.lo.value, k.hi.value
    assert isinstance(k, Const)
    return k.value, k.value


def holds(held: Elem, e: Elem, s: NSet) -> bool:
    """Whether the set's element ``held`` holds the key ``e`` asks for (equal, or inside an interval)."""
    if "interval" not in s.flags:
        return elem_identity(held.key) == elem_identity(e.key)
    if len(s.key) > 1:
        mine, theirs = concat_spans(e, s.key), concat_spans(held, s.key)
        return mine is not None and theirs is not None and all(
            lo <= a and b <= hi for (a, b), (lo, hi) in zip(mine, theirs))
    bits = s.key[0].bits or 32
    (a, b), (lo, hi) = span(e, bits), span(held, bits)
    return lo <= a and b <= hi


def concat_spans(e: Elem, types: list[T.DType]) -> list[tuple[Any, Any]] | None:
    """Each field's first and last value in a concatenated interval element (None: not concatenated)."""
    if not isinstance(e.key, Concat):
        return None
    out: list[tuple[Any, Any]] = []
    for item, dt in zip(e.key.items, types):
        if isinstance(item, (Prefix, Range, Const)) and not isinstance(getattr(item, "value", 0), str):
            out.append(span(Elem(item), dt.bits or 32))
        else:
            v = getattr(item, "value", None)
            out.append((v, v))
    return out


def pipapo_clash(held: list[Elem], new: Elem, types: list[T.DType]) -> bool:
    """nft_pipapo_insert: the new element's first or last key falls in an element the set holds that is
    not the very same one (the kernel's EEXIST)."""
    mine = concat_spans(new, types)
    if mine is None:
        return False
    first, last = [lo for lo, _ in mine], [hi for _, hi in mine]
    for e in held:
        theirs = concat_spans(e, types)
        if theirs is None or theirs == mine:
            continue
        for point in (first, last):
            if all(lo <= v <= hi for v, (lo, hi) in zip(point, theirs)):
                return True
    return False


def merge_intervals(elems: list[Elem], dt: T.DType, auto_merge: bool = True) -> list[Elem]:
    """Sort interval elements; overlaps are an error unless the set auto-merges (then adjacent ones join too)."""
    spans: list[list[int]] = []
    owners: list[Elem] = []
    bits = dt.bits or 32
    for e in elems:
        owners.append(e)
    # nft walks the new elements (newest first, then stably sorted by start) comparing each with the one
    # before; exact duplicates are dropped, any other overlap is a conflict reported on the later one.
    order = sorted(range(len(owners) - 1, -1, -1), key=lambda i: span(owners[i], bits)[0])
    prev: int | None = None
    for i in order:
        lo, hi = span(owners[i], bits)
        if prev is not None:
            plo, phi = span(owners[prev], bits)
            if (plo, phi) == (lo, hi):
                prev = i
                continue
            if lo <= phi and not auto_merge:
                raise NftError("conflicting intervals specified", getattr(owners[i], "loc", None),
                               [getattr(owners[prev], "loc", (0, 0, 0))])
        spans.append([lo, hi, i])
        prev = i
    if not auto_merge:
        return [owners[i] if isinstance(owners[i].key, Const) else
                Elem(span_expr(lo, hi, dt, bits), owners[i].data, owners[i].timeout, owners[i].expires,
                     owners[i].comment) for lo, hi, i in spans]
    merged: list[list[int]] = []
    for lo, hi, _ in spans:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [Elem(span_expr(lo, hi, dt, bits)) for lo, hi in merged]


def span_expr(lo: int, hi: int, dt: T.DType, bits: int) -> Expr:
    if lo == hi:
        return Const(dt, lo)
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0 and dt.kind in ("ipv4", "ipv6"):
        return Prefix(Const(dt, lo), bits - size.bit_length() + 1)
    return Range(Const(dt, lo), Const(dt, hi))


def expand_defines(toks: list[Token]) -> list[Token]:
    """``define name = value`` and ``$name``: substitute the value's tokens where the variable is used."""
    out: list[Token] = []
    defines: dict[str, list[Token]] = {}
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.kind == "word" and t.text in ("define", "redefine") and (not out or out[-1].kind == "nl"):
            name = toks[i + 1]
            j = i + 3
            body = []
            while toks[j].kind not in ("nl", "eof") and not (toks[j].kind == "punct" and toks[j].text == ";"):
                body.append(toks[j])
                j += 1
            defines[name.text] = body
            i = j
            continue
        if t.kind == "punct" and t.text == "$" and i + 1 < len(toks):
            name = toks[i + 1]
            var, colon, tail = name.text.partition(":")
            if var not in defines:
                from kproxy.nftables.misspell import nearest

                near = nearest(var, ((d, d) for d in defines))     # parser_bison.y's symbol_lookup_fuzzy
                hint = f"; did you mean identifier \u2018{near}\u2019?" if near is not None else ""
                raise NftError(f"unknown identifier '{var}'{hint}", (name.line, name.col, name.col + len(var) - 1))
            out.extend(defines[var])
            if colon:
                c = name.col + len(var)
                out.append(Token("punct", ":", name.line, c, c))
                out.append(Token("word", tail, name.line, c + 1, name.end))
            i += 2
            continue
        out.append(t)
        i += 1
    return out
