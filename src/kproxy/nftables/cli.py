"""``nft`` (1.0.6) on a ruleset: options, one atomic transaction per invocation, errors printed as nft does."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from kproxy.iptables.translate import nft_family
from kproxy.nftables import cthelper, flowtable
from kproxy.nftables.expr import Opts
from kproxy.nftables.journal import Changes, RulesetJournal
from kproxy.nftables.json_input import JsonError
from kproxy.nftables.lexer import Token, is_identifier, token_name
from kproxy.nftables.listing import (
    chain_json,
    chain_text,
    dump_json,
    obj_json,
    obj_text,
    rule_json,
    ruleset_text,
    set_json,
    set_text,
    table_items_json,
    table_json,
    table_text,
)
from kproxy.nftables.misspell import evaluation_message
from kproxy.nftables.model import FAMILIES, Chain, Flowtable, NSet, Ruleset, Table
from kproxy.nftables.parser import NftError, Parser, loc
from kproxy.nftables.types import JSON_NUMERIC
from kproxy.nftables.xtables import XtView

USAGE = "Usage: nft [ options ] [ cmds... ]\n"
# A line that is neither blank nor a listing: the batch changes something (found without splitting a
# 460,000-line script into lines).
CHANGING_LINE = re.compile(r"^[^\S\n]*+(?!list)\S", re.M)
COMMAND_SPLIT = re.compile(r"[;\n]")
RENAME = re.compile(r"\brename\b")
COMMAND_WORDS = ("add", "create", "insert", "replace", "table", "delete", "destroy", "flush", "rename", "reset",
                 "list")


def format_error(err: NftError, source: str, text: str) -> str:
    """``FILE:LINE:COL-COL: Error: msg``, the offending line, then carets and tildes beneath it."""
    return "".join(format_one(e, source, text) for e in [err, *err.more])


def format_one(err: NftError, source: str, text: str) -> str:
    if err.primary is None:
        return f"Error: {err.msg}\n"
    line, col, end = err.primary
    prefix = f"{source}:{line}:{col}-{end}: " if source else ""
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()          # no line after the last newline: nft shows the last line it read there
    src_line = lines[min(line, len(lines)) - 1] if lines else ""
    marks = [" " if ch != "\t" else "\t" for ch in src_line]
    width = max([end] + [e for ln, _, e in err.secondary if ln == line])
    marks += [" "] * (width - len(marks))
    for ln, c, e in err.secondary:
        if ln == line:
            for i in range(c - 1, e):
                marks[i] = "~"
    for i in range(col - 1, end):
        marks[i] = "^"
    return f"{prefix}Error: {err.msg}\n{src_line}\n{''.join(marks).rstrip()}\n"


def misplaced_option(argv: list[str]) -> tuple[str, str] | None:
    """nft 1.0.6's ``nft_options_check``: an option after the first command word is refused before
    anything runs. Returns (stdout, stderr) as nft prints them: the argv echoed on stderr, and on stdout
    a caret under the command and tildes under the option. Words from the first ``{`` on are not looked
    at, and the values of ``-f``/``-I``/``-d`` (and their long forms) are skipped."""
    words = ["nft", *argv]
    skip, command, pos = False, False, 0
    for i in range(1, len(words)):
        pos += len(words[i - 1]) + 1
        w = words[i]
        if w.startswith("{"):
            break
        if skip:
            skip = False
        elif w.startswith("-"):
            if command:
                return (f"\n{'^':>4}{'~~':>{pos - 2}}\n",
                        "Error: syntax error, options must be specified before commands\n"
                        + "".join(f"{a} " for a in words))
            skip = w[1:2] in ("d", "I", "f") or w in ("--debug", "--includepath", "--file")
        else:
            command = True
    return None


def parse_args(argv: list[str]) -> tuple[Opts, dict[str, object], list[str]]:
    o = Opts()
    flags: dict[str, object] = {"json": False, "check": False, "file": None, "echo": False}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if rest or not a.startswith("-") or a == "-":
            rest.append(a)
        elif a in ("-f", "--file"):
            i += 1
            flags["file"] = argv[i] if i < len(argv) else None
        elif a.startswith("--"):
            long = {"--handle": "a", "--numeric": "n", "--stateless": "s", "--json": "j", "--check": "c",
                    "--numeric-priority": "y", "--echo": "e"}.get(a)
            if long is None:
                raise ValueError(f"nft: unrecognized option '{a}'")
            _short(long, o, flags)
        else:
            for ch in a[1:]:
                if ch == "f":
                    i += 1
                    flags["file"] = argv[i] if i < len(argv) else None
                else:
                    _short(ch, o, flags)
        i += 1
    return o, flags, rest


def _short(ch: str, o: Opts, flags: dict[str, object]) -> None:
    if ch == "a":
        o.handles = True
    elif ch == "n":
        o.numeric += 1
    elif ch == "s":
        o.stateless = True
    elif ch == "y":
        o.numeric_prio = True
    elif ch == "j":
        flags["json"] = True
    elif ch == "c":
        flags["check"] = True
    elif ch == "e":
        flags["echo"] = True
    else:
        raise ValueError(f"nft: invalid option -- '{ch}'")


def run_nft(argv: list[str], rs: Ruleset, stdin: str | None = None,
            interfaces: set[str] | None = None, xt: XtView | None = None,
            in_place: bool = False,
            changed: Callable[[Changes], None] | None = None) -> tuple[int, str, str, Ruleset]:
    """Run one nft invocation; returns (exit status, stdout, stderr, the ruleset afterwards).

    ``xt`` is the node's iptables-nft tables, which ``list`` shows beside the ruleset's own.
    ``in_place``: change ``rs`` itself under an undo journal (``kproxy.nftables.journal``) rather than
    a copy of it; a failed transaction leaves it as it was all the same (but for the handle counters
    the kernel keeps advanced), and the ruleset afterwards is ``rs``. Without it a changing command
    works on a copy, and ``rs`` is left as it was. ``--echo`` (which compares before with after) and
    ``rename`` (which changes verdicts deep in other chains' rules) work on a copy either way.
    ``changed`` is told what an in-place transaction changed (``journal.Changes``; nothing, when it
    failed or only checked)."""
    misplaced = misplaced_option(argv)
    if misplaced is not None:
        return 1, misplaced[0], misplaced[1], rs
    try:
        o, flags, rest = parse_args(argv)
    except ValueError as exc:
        return 1, "", f"{exc}\n", rs
    source = ""
    if flags["file"] is not None:
        name = str(flags["file"])
        if name == "-":
            text, source = stdin or "", "/dev/stdin"
        else:
            try:
                with open(name) as fh:
                    text = fh.read()
            except OSError as exc:
                return 1, "", f"internal:0:0-0: Error: Could not open file \"{name}\": {exc.strerror}\n", rs
            source = name
    else:
        text = " ".join(rest)
        if not text.strip():
            return 0, "", "", rs
    from_json, text_in = False, text
    if flags["json"] and flags["file"] is not None:
        try:
            lines = json_script(text)
        except JsonError as err:
            return 1, "", format_json_error(err, source, text), rs
        if lines is None and source == "/dev/stdin":
            return 0, "", "", rs  # nft read stdin for JSON; its text parser then finds it empty
        if lines is not None:
            text, from_json = "\n".join(lines), True
            json_cmds = json.loads(text_in)
    # Listing commands change nothing: they read the ruleset itself rather than a copy, which on a big
    # ruleset costs more than the listing; so do changing ones asked to work in place, with a journal.
    journal: RulesetJournal | None = None
    if read_only(text):
        work = rs
    elif in_place and not flags["echo"] and RENAME.search(text) is None:
        work, journal = rs, RulesetJournal(rs)
    else:
        work = rs.copy()
    try:
        parser = Parser(text, work, interfaces)
        parser.cmdline, parser.from_json = not source and not from_json, from_json
        parser.script()
    except NftError as err:
        passes = (2 if err.msg.endswith("Operation not supported") else 1) if err.kernel else 0
        if journal is not None:
            journal.rollback(passes)
            if changed is not None:
                changed(Changes())
        elif passes:
            rs = kept_counters(rs, work, passes)
        if from_json:
            return 1, "", "".join(f"internal:0:0-0: Error: {e.msg}\n\n" for e in [err, *err.more]), rs
        return 1, "", format_error(err, source, text), rs
    except BaseException:
        if journal is not None:         # (a bug, or an interrupt: the ruleset is left as it was all the same)
            journal.rollback()
        raise
    if flags["check"]:
        # the kernel takes the batch and aborts it: nothing changes but the handles it handed out
        if journal is not None:
            journal.rollback(1)
            if changed is not None:
                changed(Changes())
            return 0, "", "", rs
        return 0, "", "", kept_counters(rs, work, 1)
    out = []
    if CHANGING_LINE.search(text) is not None:
        work.generation += 1
    if xt is not None and parser.out.flushed:
        xt.flush(parser.out.flushed)
    if flags["echo"]:
        first = parser.first_word(COMMAND_WORDS)
        out.append(echo(rs, work, o, bool(flags["json"]), json_cmds if from_json else None, parser.rule_ops, first))
    for tbl, got in parser.out.gets:        # nft 1.0.6 answers in text even with -j
        out.append(f"table {tbl.family} {tbl.name} {{\n" + set_text(got, o) + "\n}\n")
    for verb, args in parser.out.requests:
        try:
            out.append(answer(verb, args, work, o, bool(flags["json"]), xt))
        except NftError as err:
            if journal is not None:
                journal.rollback()
            return 1, "", format_error(err, source, text), rs
        except BaseException:
            if journal is not None:
                journal.rollback()
            raise
    if journal is not None:
        changes = journal.commit()
        if changed is not None:
            changed(changes)
    return 0, "".join(out), "".join(xt.warnings) if xt is not None else "", work


def read_only(text: str) -> bool:
    """Whether every command of ``text`` is a ``list`` (a quoted ``;`` or newline only makes a piece
    that is not one, so the answer errs towards copying)."""
    if CHANGING_LINE.search(text) is not None:      # a line that starts otherwise: found at once in a script
        return False
    pieces = [p for p in COMMAND_SPLIT.split(text) if p.strip()]
    return bool(pieces) and all(p.split(None, 1)[0] == "list" for p in pieces)


def echo(before: Ruleset, after: Ruleset, o: Opts, as_json: bool, json_cmds: Any, ops: dict[int, str],
         first_verb: str | None) -> str:
    """``--echo``: the added objects (see ``kproxy.nftables.echo``)."""
    from kproxy.nftables.echo import echo_json, echo_json_input, echo_text

    if json_cmds is not None:
        return echo_json_input(json_cmds["nftables"], before, after)
    return echo_json(before, after, o) if as_json else echo_text(before, after, o, after.generation, ops, first_verb)


def json_script(text: str) -> list[str] | None:
    from kproxy.nftables.json_input import decode, script

    cmds = decode(text)
    return None if cmds is None else script(cmds)


def format_json_error(err: JsonError, source: str, text: str) -> str:
    """nft's report of a malformed JSON document: a shape error points into jansson's format string
    (line 1 of the input, at the column of the failing key), the rest are "internal"."""
    out = []
    for col, msg in err.msgs:
        if col is None:
            out.append(f"internal:0:0-0: Error: {msg}\n\n")
            continue
        out.append(f"{source}:1:{col}-{col}: Error: {msg}\n")
        if source == "/dev/stdin":
            out.append("\n")
        else:
            out.append(text.split("\n")[0] + "\n" + " " * (col - 1) + "^\n")
    return "".join(out)


def kept_counters(before: Ruleset, failed: Ruleset, passes: int) -> Ruleset:
    """After the kernel rejects a batch its handle counters stay advanced, though nothing else changed.

    A batch that fails with EOPNOTSUPP ran twice in the kernel (it asks for a module and replays the
    batch), so its handles were handed out twice.
    """
    out = before.copy()
    out.next_table_handle += passes * (failed.next_table_handle - before.next_table_handle)
    for t in out.tables:
        f = failed.find(t.family, t.name)
        if f is not None and f.handle == t.handle:
            t.next_handle += passes * max(0, f.next_handle - t.next_handle)
    return out


def listed_objects(t: Table, kind: str) -> list[Any]:
    """One table's sets, maps, chains or stateful objects of a kind, in listing order."""
    if kind in ("set", "map"):
        return [s for s in t.sets.values() if not s.anonymous and s.is_map == (kind == "map")]
    if kind == "chain":
        return list(t.chains.values())
    if kind == "flowtable":
        return list(t.flowtables.values())
    return [ob for ob in t.objs.values() if ob.kind == kind]


def listed_blocks(t: Table, kind: str, o: Opts, verb: str, as_json: bool = False) -> Any:
    """``list sets`` (chains, counters, ...) for one table: its text block, or its JSON items with ``-j``;
    ``reset`` zeroes the objects after printing them."""
    objs = listed_objects(t, kind)
    if as_json:
        items = [item_json(t, ob, o) for ob in objs]
    elif kind in ("set", "map"):
        blocks = [set_text(s, o) for s in objs]
    elif kind == "chain":
        blocks = [chain_text(t, c, o, rules=False) for c in objs]
    elif kind == "flowtable":
        blocks = [flowtable.text(ft, o) for ft in objs]
    else:
        blocks = [obj_text(ob, o) for ob in objs]
    if verb == "reset" and kind not in ("set", "map", "chain"):
        for ob in objs:     # each looked up by name to be changed (an in-place transaction's copy)
            t.objs[(ob.kind, ob.name)].values.update(packets=0, bytes=0, used=0)
    if as_json:
        return items
    if not blocks:
        # nft prints every table for sets, maps, chains, meters and flowtables, and every table holding
        # any stateful object for counters, quotas and limits, empty when none is of the kind asked for
        shown = kind in ("set", "map", "chain", "meter", "flowtable") or bool(t.objs)
        return f"table {t.family} {t.name} {{\n}}\n" if shown else ""
    return f"table {t.family} {t.name} {{\n" + "\n".join(blocks) + "\n}\n"


def item_json(t: Table, ob: Any, o: Opts) -> Any:
    """The JSON item of one set, chain (header only) or stateful object."""
    if isinstance(ob, NSet):
        return set_json(t, ob, o)
    if isinstance(ob, Chain):
        return chain_json(t, ob)
    if isinstance(ob, Flowtable):
        return flowtable.to_json(t, ob)
    return obj_json(t, ob, o)


def answer(verb: str, toks: list[Token], rs: Ruleset, o: Opts, as_json: bool, xt: XtView | None = None) -> str:
    """The output of ``list ...`` / ``reset ...``: nft's text, or its JSON document with ``-j``."""
    numeric = JSON_NUMERIC.set(as_json and o.numeric >= 1)
    try:
        if xt is not None and verb == "list":
            shown = xt_answer(toks, rs, o, xt, as_json)
            if shown is not None:
                return shown
        out = listing(verb, toks, rs, o, as_json)
        return dump_json(out) if as_json else out
    finally:
        JSON_NUMERIC.reset(numeric)


def listing(verb: str, toks: list[Token], rs: Ruleset, o: Opts, as_json: bool) -> Any:
    """One list/reset request: its text, or (``as_json``) its list of JSON items."""
    if len(toks) > 1 and toks[0].text == "ct" and toks[1].text in ("helper", "helpers"):
        # ``list ct helpers table FAMILY NAME`` (the table keyword required) / ``list ct helper F T NAME``
        kw = Token("word", "ct " + toks[1].text, toks[0].line, toks[0].col, toks[1].end)
        toks = [kw, *toks[2:]]
        if kw.text == "ct helpers" and (len(toks) < 2 or toks[1].text != "table"):
            at = toks[1] if len(toks) > 1 else Token("word", "", kw.line, kw.end + 1, kw.end + 1)
            raise NftError("syntax error, unexpected newline, expecting table", loc(at), kernel=False)
    if len(toks) > 2 and toks[0].text in ("sets", "counters", "quotas", "limits", "ct helpers") and \
            toks[1].text == "table":
        toks = [toks[0], *toks[2:]]
    if len(toks) > 1 and toks[0].text in ("chains", "maps", "meters", "flowtables") and toks[1].text not in FAMILIES:
        # nft 1.0.6 lists these by family only
        raise NftError(f"syntax error, unexpected {toks[1].text}, expecting end of file or newline or semicolon",
                       loc(toks[1]), kernel=False)
    args = [t.text for t in toks]
    what = args[0] if args else "ruleset"
    rest = args[1:]
    name_toks = toks[2:] if len(toks) > 1 and toks[1].text in FAMILIES else toks[1:]

    def missing(i: int) -> NftError:
        t = name_toks[i] if i < len(name_toks) else None
        msg = "No such file or directory"
        # nft lists a table, chain, set or map from a cache of just that one (no other name to
        # suggest); for objects its cache holds every table and object, and it says the nearest
        if t is not None and what not in ("table", "chain", "set", "map", "meter", "flowtable"):
            msg = evaluation_message(rs, "table" if i == 0 else "obj", t.text)
        return NftError(msg, loc(t) if t is not None else None)

    if what in ("table", "chain", "set", "map", "counter", "quota", "limit", "meter", "flowtable", cthelper.KIND):
        bad = next((t for t in name_toks[:2] if t.kind == "word" and not is_identifier(t)), None)
        if bad is not None:         # a keyword of nft's scanner is no name
            raise NftError(f"syntax error, unexpected {token_name(bad)}, expecting string", loc(bad), kernel=False)
    family = rest[0] if rest and rest[0] in FAMILIES else None
    names = rest[1:] if family else rest
    family = family or "ip"
    if what in ("ruleset", "tables"):
        fam = rest[0] if rest else None
        tables = [t for t in rs.tables if fam is None or t.family == fam]
        if what == "tables":
            return [table_json(t) for t in tables] if as_json else \
                "".join(f"table {t.family} {t.name}\n" for t in tables)
        return [i for t in tables for i in table_items_json(t, o)] if as_json else \
            "".join(table_text(t, o) for t in tables)
    plural = {"counters": "counter", "quotas": "quota", "limits": "limit", "sets": "set", "maps": "map",
              "chains": "chain", "meters": "meter", "flowtables": "flowtable", "ct helpers": cthelper.KIND}
    if what not in plural and what not in ("table", "chain", "set", "map", "counter", "quota", "limit", "meter",
                                            "flowtable", cthelper.KIND):
        # not a keyword of the grammar: bison's "unexpected string" at the word
        raise NftError("syntax error, unexpected string", loc(toks[0]), kernel=False)
    if what in plural and not names:
        found = [listed_blocks(t, plural[what], o, verb, as_json) for t in rs.tables
                 if not rest or t.family == rest[0]]
        return [i for items in found for i in items] if as_json else "".join(found)
    tbl = rs.find(family, names[0]) if names else None
    if tbl is None:
        raise missing(0)
    if what in plural:
        if as_json:
            return listed_blocks(tbl, plural[what], o, verb, True)
        return listed_blocks(tbl, plural[what], o, verb)       # by table as for all: empty with no objects
    if what == "table":
        return table_items_json(tbl, o) if as_json else table_text(tbl, o)
    head = f"table {tbl.family} {tbl.name} {{\n"
    found_obj: Any
    if what == "chain":
        found_obj = tbl.chains.get(names[1]) if len(names) > 1 else None
    elif what in ("set", "map"):
        found_obj = tbl.sets.get(names[1]) if len(names) > 1 else None
    elif what == "flowtable":
        found_obj = tbl.flowtables.get(names[1]) if len(names) > 1 else None
    elif what == "meter":
        found_obj = None  # the emulator keeps no meters
    else:
        found_obj = tbl.objs.get((what, names[1])) if len(names) > 1 else None
    if found_obj is None:
        raise missing(1)
    if as_json:
        out: Any = [item_json(tbl, found_obj, o)]
        if what == "chain":
            out += [rule_json(tbl, found_obj, r, o) for r in found_obj.rules]
    elif what == "chain":
        out = head + chain_text(tbl, found_obj, o) + "\n}\n"
    elif what in ("set", "map"):
        out = head + set_text(found_obj, o) + "\n}\n"
    elif what == "flowtable":
        out = head + flowtable.text(found_obj, o) + "\n}\n"
    else:
        out = head + obj_text(found_obj, o) + "\n}\n"
    if verb == "reset" and what in ("counter", "quota", "limit"):
        found_obj.values.update(packets=0, bytes=0, used=0)
    return out


def xt_answer(toks: list[Token], rs: Ruleset, o: Opts, xt: XtView, as_json: bool) -> str | None:
    """``list ruleset|tables|table|chain`` where iptables-nft's tables take part; None: not such a listing."""
    args = [t.text for t in toks]
    what, rest = (args[0], args[1:]) if args else ("ruleset", [])
    family = rest[0] if rest and rest[0] in FAMILIES else None
    names = rest[1:] if family else rest
    if what == "ruleset" and as_json:
        items = [i for k in xt.tables(family) for i in xt.items_json(k, o)]
        return dump_json(items + [i for t in rs.tables if family in (None, t.family) for i in table_items_json(t, o)])
    if what == "ruleset":
        return xt.ruleset_text(o, family) + ruleset_text(rs, o, family)
    if as_json and what not in ("table", "chain"):
        return None
    if what == "chains" and (family or not rest):
        return xt.chains_text(o, family) + answer("list", toks, rs, o, False)
    if what == "tables":
        return "".join(f"table {nft_family(k[0])} {k[1]}\n" for k in xt.tables(family)) + \
            answer("list", toks, rs, o, False)
    if what not in ("table", "chain") or not names or rs.find(family or "ip", names[0]) is not None:
        return None
    key = xt.find(family or "ip", names[0])
    if key is None:
        return None
    if what == "table":
        return dump_json(xt.items_json(key, o)) if as_json else xt.table_text(key, o)
    if len(names) > 1 and names[1] in xt.chain_names(key):
        if as_json:
            return dump_json(xt.items_json(key, o, only_chain=names[1])[1:])
        return xt.table_text(key, o, only_chain=names[1])
    return None
