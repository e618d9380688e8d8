"""One-line commands of the shapes kube-proxy writes by the hundred thousand, applied without the general parser.

A full sync of kube-proxy's nftables mode is mostly ``add chain``, ``flush chain``, ``add element`` and four
rule shapes (an endpoint's hairpin masquerade jump and its DNAT, a service's masquerade jump and its
``numgen`` verdict map). Such a line is split at whitespace, recognised, and applied to the ruleset with
exactly the objects, handles and anonymous sets the general parser would make
(``tests/test_nft_fastpath.py`` checks that on whole rulesets). Anything else, anything unusual about
a recognised line (a missing table, chain or jump target, a value that does not parse plainly, a base
chain), and every line once an error has been recorded, goes to the general parser, so errors are
always the general parser's. Runs of other lines are tokenized and parsed together, keeping their
line numbers; a script with ``define``, ``$`` or ``include`` is parsed whole by the general parser.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from kproxy.nftables import types as T
from kproxy.nftables.expr import Concat, Const, Elem, Expr, Meta, Numgen, Payload, Prefix, SetLit, Verdict
from kproxy.nftables.model import FAMILIES, Chain, NSet, Rule, Table
from kproxy.nftables.stmt import Match, Nat, Stmt, VerdictMap, VerdictStmt

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.nftables.parser import Parser

# A line of whitespace-separated chunks, each one token of the lexer with the chunk's text: a word it reads
# whole and keeps whole (no trailing colon, no quote, no '*'), or one of a few punctuation marks.
CHUNK = r"(?:[A-Za-z0-9_][A-Za-z0-9_./:\-]*(?<!:)|[{},:.]|!=)"
LINE = re.compile(rf"{CHUNK}(?:[ \t]+{CHUNK})*[ \t]*\n?")
OCTETS = re.compile(r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")
PUNCT = frozenset(["{", "}", ",", ":", ".", "!="])
STRINGS = re.compile(r'"[^"\n]*"')
L4 = {"tcp": 6, "udp": 17, "sctp": 132}
PLAIN: dict[tuple[str, str], object] = {}
MISSING = object()


def usable(text: str) -> bool:
    """Whether a script may take the fast path at all (variables and includes need the general parser)."""
    return "$" not in text and "define" not in text and "include" not in text


def pieces(text: str) -> Iterator[tuple[int, str, bool]]:
    """The script as (first line number, text, is one fast candidate line): runs of other lines are kept
    together, and so is a block that spans lines or a line continued with a backslash."""
    lines = text.split("\n")
    run: list[str] = []
    run_start = 1
    depth, continued = 0, False
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        whole = line if last else line + "\n"
        candidate = depth == 0 and not continued and line[:4] in ("add ", "flus") and '"' not in line \
            and "#" not in line and ";" not in line and not line.endswith("\\")
        if candidate:
            if run:
                yield run_start, "".join(run), False
                run = []
            yield i + 1, whole, True
            continue
        if not run:
            run_start = i + 1
        run.append(whole)
        bare = STRINGS.sub("", line).split("#", 1)[0]
        depth = max(0, depth + bare.count("{") - bare.count("}"))
        continued = line.endswith("\\")
    if run:
        yield run_start, "".join(run), False


class FastPath:
    """Applies recognised lines to the parser's ruleset; ``apply`` says False for anything it leaves alone."""

    def __init__(self, parser: Parser) -> None:
        self.p = parser
        self.rules: dict[str, Callable[[Table, Chain, list[str], str, int], Rule | None]] = {
            "ip": self.rule_payload_jump, "meta": self.rule_dnat, "numgen": self.rule_numgen}

    def apply(self, line: str, lineno: int) -> bool:
        p = self.p
        if p.eval_errors or p.kernel_errors:
            return False
        if LINE.fullmatch(line) is None:
            return False
        words = line.split()
        if len(words) < 5 or words[2] not in FAMILIES:
            return False
        tbl = p.rs.find(words[2], words[3])
        if tbl is None:
            return False
        verb = (words[0], words[1])
        if verb == ("add", "chain") and len(words) == 5:
            if words[4] not in tbl.chains:
                tbl.chains[words[4]] = Chain(words[4], tbl.alloc())
            return True
        if verb == ("flush", "chain") and len(words) == 5:
            chain = tbl.chains.get(words[4])
            if chain is None:
                return False
            for r in chain.rules:
                for anon in r.anon_sets:
                    tbl.sets.pop(anon, None)
            chain.rules = []
            return True
        if verb == ("add", "element"):
            return self.add_element(tbl, words[4:])
        if verb == ("add", "rule") and len(words) > 5:
            chain = tbl.chains.get(words[4])
            build = self.rules.get(words[5])
            if chain is None or chain.hook is not None or build is None or tbl.family != "ip":
                return False
            rule = build(tbl, chain, words[5:], line, lineno)
            if rule is None:
                return False
            chain.rules.append(rule)
            return True
        return False

    # ---- elements ---------------------------------------------------------------------------------
    def add_element(self, tbl: Table, words: list[str]) -> bool:
        """``add element FAMILY TABLE SET { KEY [: VERDICT] , ... }`` for a set of plain values."""
        s = tbl.sets.get(words[0])
        if s is None or "interval" in s.flags or len(words) < 4 or words[1] != "{" or words[-1] != "}":
            return False
        if s.data is not None and s.data != [T.VERDICT]:
            return False
        elems: list[Elem] = []
        i, body = 0, words[2:-1]
        while i < len(body):
            parts, i = self.key(s.key, body, i)
            if parts is None:
                return False
            elem = Elem(parts)
            if s.data is not None:
                if i >= len(body) or body[i] != ":":
                    return False
                verdict, i = self.verdict(body, i + 1)
                if verdict is None:
                    return False
                elem.data = verdict
            elems.append(elem)
            if i < len(body):
                if body[i] != "," or i + 1 == len(body):
                    return False
                i += 1
        if not elems:
            return False
        self.p.add_elements(s, SetLit(elems))
        return True

    @staticmethod
    def key(types: list[T.DType], body: list[str], i: int) -> tuple[Expr | None, int]:
        parts: list[Expr] = []
        for n, dt in enumerate(types):
            if n:
                if i >= len(body) or body[i] != ".":
                    return None, i
                i += 1
            if i >= len(body) or body[i] in PUNCT or dt.kind in ("string", "ifindex"):
                return None, i
            value = plain(dt, body[i])
            if value is None:
                return None, i
            parts.append(value)
            i += 1
        return (parts[0] if len(parts) == 1 else Concat(parts)), i

    @staticmethod
    def verdict(body: list[str], i: int) -> tuple[Verdict | None, int]:
        if i < len(body) and body[i] in ("accept", "drop", "return", "continue"):
            return Verdict(body[i]), i + 1
        if i + 1 < len(body) and body[i] in ("jump", "goto") and body[i + 1] not in PUNCT:
            return Verdict(body[i], body[i + 1]), i + 2
        return None, i

    # ---- rules ------------------------------------------------------------------------------------
    def rule_payload_jump(self, tbl: Table, chain: Chain, w: list[str], text: str, line: int) -> Rule | None:
        """``ip saddr|daddr ADDR jump|goto CHAIN`` and
        ``ip daddr ADDR tcp|udp|sctp dport PORT ip saddr != PREFIX jump|goto CHAIN``."""
        stmts: list[Stmt] = []
        i = 0
        while i + 3 < len(w) and w[i] not in ("jump", "goto"):
            m = self.match(w, i)
            if m is None:
                return None
            stmt, i = m
            stmts.append(stmt)
        if len(stmts) not in (1, 3) or i + 2 != len(w) or w[i] not in ("jump", "goto") or w[i + 1] not in tbl.chains:
            return None
        shape = [(m.left.proto, m.left.field, m.op) for m in stmts]  # type: ignore[attr-defined]
        if shape[0][0] != "ip" or shape[0][2] != "==" or len(stmts) == 3 and (
                shape[0][1] != "daddr" or shape[1][1] != "dport" or shape[2][:2] != ("ip", "saddr")):
            return None
        stmts.append(VerdictStmt(Verdict(w[i], w[i + 1])))
        return self.new_rule(tbl, stmts)

    @staticmethod
    def match(w: list[str], i: int) -> tuple[Match, int] | None:
        """``ip saddr|daddr [!=] ADDR[/LEN]`` or ``tcp|udp|sctp dport PORT`` at ``w[i]``."""
        if w[i] == "ip" and w[i + 1] in ("saddr", "daddr"):
            left: Expr = Payload("ip", w[i + 1])
        elif w[i] in L4 and w[i + 1] == "dport":
            left = Payload(w[i], "dport")
        else:
            return None
        op, j = ("!=", i + 3) if w[i + 2] == "!=" else ("==", i + 2)
        if j >= len(w):
            return None
        right = plain(left.dtype, w[j]) if left.dtype.kind != "ipv4" or "/" not in w[j] else prefix(w[j])
        if right is None or (op == "!=") != isinstance(right, Prefix):
            return None
        return Match(left, op, right), j + 1

    def rule_dnat(self, tbl: Table, chain: Chain, w: list[str], text: str, line: int) -> Rule | None:
        """``meta l4proto tcp|udp|sctp dnat to ADDR:PORT``."""
        if len(w) != 6 or w[1] != "l4proto" or w[2] not in L4 or w[3:5] != ["dnat", "to"] or w[5].count(":") != 1:
            return None
        addr, _, port = w[5].partition(":")
        a, p = plain(T.IPV4, addr), plain(T.SERVICE, port)
        if a is None or p is None:
            return None
        proto = Meta("l4proto")
        stmts: list[Stmt] = [Match(proto, "==", Const(proto.dtype, L4[w[2]])), Nat("dnat", a, p)]
        return self.new_rule(tbl, stmts)

    def rule_numgen(self, tbl: Table, chain: Chain, w: list[str], text: str, line: int) -> Rule | None:
        """``numgen random mod N vmap { 0 : goto C0 , 1 : goto C1 , ... }`` with keys 0 .. N-1 in order."""
        if len(w) < 10 or w[1] != "random" or w[2] != "mod" or not w[3].isdigit() or w[4:6] != ["vmap", "{"] \
                or w[-1] != "}":
            return None
        mod = int(w[3])
        body: list[str] = w[6:-1]
        elems: list[Elem] = []
        for k in range(0, len(body), 5):
            item = body[k:k + 5]
            if len(item) < 4 or item[:2] != [str(len(elems)), ":"] or item[2] not in ("jump", "goto") or \
                    item[3] in PUNCT or \
                    (len(item) == 5) != (k + 5 < len(body)) or len(item) == 5 and item[4] != ",":
                return None
            elems.append(Elem(Const(T.INTEGER, len(elems)), Verdict(item[2], item[3])))
        if len(elems) != mod:
            return None
        lit = SetLit(elems)
        name = f"__map{tbl.anon_seq}"
        tbl.anon_seq += 1
        tbl.sets[name] = NSet(name, tbl.alloc(), True, [T.INTEGER], [T.VERDICT], ["constant", "anonymous"],
                              anonymous=True, elems=list(elems))
        rule = self.new_rule(tbl, [VerdictMap(Numgen("random", mod), lit)], [name])
        # Where the braces are: the kernel's errors for the anonymous map point there.
        rule.anon_locs = [(line, text.index("{") + 1, text.rindex("}") + 1)]  # type: ignore[attr-defined]
        return rule

    @staticmethod
    def new_rule(tbl: Table, stmts: list[Stmt], anon: list[str] | None = None) -> Rule:
        rule = Rule(tbl.alloc(), stmts, None, anon or [])
        if not anon:
            rule.anon_locs = []  # type: ignore[attr-defined]
        return rule


def plain(dt: T.DType, text: str) -> Const | None:
    """A value written plainly (no prefix, range or symbol the general parser treats specially)."""
    if dt is T.IPV4:
        m = OCTETS.fullmatch(text)  # the usual dotted quad, read without the ipaddress module
        if m is not None and max(map(int, m.groups())) < 256:
            a, b, c, d = map(int, m.groups())
            return Const(dt, a << 24 | b << 16 | c << 8 | d)
    key = (dt.name, text)
    value = PLAIN.get(key, MISSING)
    if value is MISSING:
        try:
            value = dt.parse(text)
        except T.TypeError_:
            value = None
        if len(PLAIN) < 4096:  # ports and protocols repeat: remember a few thousand words
            PLAIN[key] = value
    return None if value is None else Const(dt, value)


def prefix(text: str) -> Prefix | None:
    """``ADDR/LEN`` for an IPv4 address, as the general parser builds it (a /32 is no prefix here)."""
    base, _, plen = text.partition("/")
    if not plen.isdigit() or not 0 <= int(plen) < 32:
        return None
    addr = plain(T.IPV4, base)
    if addr is None:
        return None
    v, n = addr.value, int(plen)
    mask = ((1 << 32) - 1) ^ ((1 << (32 - n)) - 1)
    return Prefix(Const(T.IPV4, v & mask), n)
