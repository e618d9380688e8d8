"""The lines kube-proxy writes by the hundred thousand, applied without the general parser.

A full sync of kube-proxy's nftables mode is mostly ``add chain``, ``flush chain``, ``add element`` and four
rule shapes (an endpoint's hairpin masquerade jump and its DNAT, a service's masquerade jump and its
``numgen`` verdict map); an endpoint chain's four lines come together. One regular expression finds
these lines in the script, written as kube-proxy writes them (single spaces), and captures their words;
each is applied with exactly the objects, handles and anonymous sets the general parser would make
(``tests/test_nft_fastpath.py`` checks that on whole rulesets). Anything else, anything unusual about
a recognised line (a missing table, chain or jump target, a value that does not parse plainly, a base
chain), a line inside another command (an open block, a continuation), and every line once an error
has been recorded, goes to the general parser, so errors are always the general parser's. The text
between recognised lines is tokenized and parsed in runs, keeping its line numbers; a script with
``define``, ``$`` or ``include`` is parsed whole by the general parser.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from socket import inet_aton
from typing import TYPE_CHECKING, Any

from kproxy.nftables import types as T
from kproxy.nftables.expr import Concat, Const, Elem, Expr, Meta, Numgen, Payload, Prefix, SetLit, Verdict
from kproxy.nftables.lexer import NUMBER, SCANNER_KEYWORDS
from kproxy.nftables.model import Chain, NSet, Rule, Table
from kproxy.nftables.stmt import Match, Nat, Stmt, VerdictMap, VerdictStmt

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.nftables.parser import Parser

OCTETS = re.compile(r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")
PUNCT = frozenset(["{", "}", ",", ":", ".", "!="])
L4 = {"tcp": 6, "udp": 17, "sctp": 132}
PLAIN: dict[tuple[str, str], object] = {}
MISSING = object()


def _line_shapes() -> re.Pattern[str]:
    """One pattern for every recognised line, its words captured; the shared beginnings are written once
    and names are matched without backtracking, so a line costs one pass of the regular expression engine."""
    name = r"[A-Za-z0-9_][A-Za-z0-9_./:\-]*+(?<!:)"
    # An address is matched as ``ipv4`` reads one (no leading zeros); one written otherwise leaves the line
    # to the general parser.
    octet = r"(?:0|[1-9][0-9]{0,2})"
    v4, fam = rf"{octet}\.{octet}\.{octet}\.{octet}", "(?:ip|ip6|inet|arp|bridge|netdev)"
    rules = {
        "RJ": rf"ip (?P<rj_k>saddr|daddr) (?P<rj_a>{v4}) (?P<rj_v>jump|goto) (?P<rj_x>{name})",
        "RM": rf"ip daddr (?P<rm_a>{v4}) (?:(?P<rm_p>tcp|udp|sctp) dport (?P<rm_n>[0-9]+) )?"
              rf"ip saddr != (?P<rm_s>{v4})/(?P<rm_l>[0-9]+) (?P<rm_v>jump|goto) (?P<rm_x>{name})",
        "RD": rf"meta l4proto (?P<rd_p>tcp|udp|sctp) dnat to (?P<rd_a>{v4}):(?P<rd_n>[0-9]+)",
        "RN": r"numgen random mod (?P<rn_m>[0-9]+) vmap \{ (?P<rn_b>[^{}\n]*) \}",
    }
    rule = rf"rule ip (?P<rt>{name}) (?P<rc>{name}) (?:" + "|".join(f"(?P<{k}>{v})" for k, v in rules.items()) + ")"
    add = {
        # kube-proxy's endpoint chain, declared, flushed and filled: four lines, one match
        "EP": rf"chain ip (?P<ep_t>{name}) (?P<ep_c>{name})\nflush chain ip (?P=ep_t) (?P=ep_c)\n"
              rf"add rule ip (?P=ep_t) (?P=ep_c) ip saddr (?P<ep_a>{v4}) (?P<ep_v>jump|goto) (?P<ep_x>{name})\n"
              rf"add rule ip (?P=ep_t) (?P=ep_c) meta l4proto (?P<ep_p>tcp|udp|sctp) dnat to (?P<ep_d>{v4}):"
              rf"(?P<ep_n>[0-9]+)",
        # an endpoint chain's hairpin jump and DNAT, as two lines after the chain was declared
        "ER": rf"rule ip (?P<er_t>{name}) (?P<er_c>{name}) ip saddr (?P<er_a>{v4}) (?P<er_v>jump|goto) "
              rf"(?P<er_x>{name})\nadd rule ip (?P=er_t) (?P=er_c) meta l4proto (?P<er_p>tcp|udp|sctp) dnat to "
              rf"(?P<er_d>{v4}):(?P<er_n>[0-9]+)",
        "ACF": rf"chain (?P<acf_f>{fam}) (?P<acf_t>{name}) (?P<acf_c>{name})\nflush chain (?P=acf_f) (?P=acf_t) "
               rf"(?P=acf_c)",
        "AC": rf"chain (?P<ac_f>{fam}) (?P<ac_t>{name}) (?P<ac_c>{name})",
        "AE": rf"element (?P<ae_f>{fam}) (?P<ae_t>{name}) (?P<ae_s>{name}) \{{ (?P<ae_b>[^{{}}\n]*) \}}",
    }
    adds = "|".join(f"(?P<{k}>{v})" for k, v in add.items())
    flush = rf"(?P<FC>chain (?P<fc_f>{fam}) (?P<fc_t>{name}) (?P<fc_c>{name}))"
    return re.compile(rf"^(?:add (?:{adds}|{rule})|flush {flush})[ \t]*+(?:\n|\Z)", re.M)


SHAPES = _line_shapes()
# An element list's words: separated by spaces, and a comma ends a word too ("80 : goto x, 81 : drop").
ELEM_WORDS = re.compile(r",|[^ ,]+")
WORD = r"[A-Za-z0-9_][A-Za-z0-9_./:\-]*+(?<!:)"  # a word the lexer reads whole and keeps whole
# Element-list text whose every word (as ELEM_WORDS splits it) is punctuation or a WORD.
PLAIN_WORDS = re.compile(rf"(?:[ ,]|(?:[{{}}:.]|!=|{WORD})(?![^ ,]))*")
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_./:\-]*+(?<!:)"
VMAP_ITEM = re.compile(rf"(0|[1-9][0-9]*) : (jump|goto) ({_NAME})")  # ``findall`` reads a body VMAP_BODY matched
VMAP_BODY = re.compile(rf"(?:0|[1-9][0-9]*) : (?:jump|goto) {_NAME}(?: ?, (?:0|[1-9][0-9]*) : (?:jump|goto) {_NAME})*")
STRINGS = re.compile(r'"[^"\n]*"')


def usable(text: str) -> bool:
    """Whether a script may take the fast path at all (variables and includes need the general parser)."""
    return "$" not in text and "define" not in text and "include" not in text


# The groups of each line shape that capture a table's, a set's or a chain's name.
NAME_GROUPS = {"RJ": ("rt", "rc", "rj_x"), "RM": ("rt", "rc", "rm_x"), "RD": ("rt", "rc"), "RN": ("rt", "rc"),
               "EP": ("ep_t", "ep_c", "ep_x"), "ER": ("er_t", "er_c", "er_x"), "ACF": ("acf_t", "acf_c"),
               "AC": ("ac_t", "ac_c"), "AE": ("ae_t", "ae_s"), "FC": ("fc_t", "fc_c")}


def plain_names(m: re.Match[str]) -> bool:
    """Whether every name the line holds is one nft's grammar takes as a name (a keyword or a number is a
    syntax error, which the general parser reports). Every NUMBER starts with a digit, and only a digit
    sorts before ``:`` among a name's first characters."""
    for name in m.group(*NAME_GROUPS[m.lastgroup]):  # type: ignore[index]
        if name in SCANNER_KEYWORDS or name[0] <= "9" and NUMBER.fullmatch(name) is not None:
            return False
    return True


class FastPath:
    """Applies recognised lines to the parser's ruleset; each handler says False for a line it leaves alone."""

    def __init__(self, parser: Parser) -> None:
        self.p = parser
        # Keys, protocol and port constants and jump verdicts that thousands of rules write alike are one
        # object each (nothing changes an expression once built): fewer objects for the GC to walk.
        self.shared: dict[object, Any] = {}
        self.saddr = self.shared["saddr"] = Payload("ip", "saddr")
        self.numgen_keys: list[Const] = []  # key N of every numgen map
        self.numgen_texts: list[str] = []   # and how it is written

    def run(self, text: str) -> None:
        """Apply the script: recognised lines here, the text between them through the general parser.

        A recognised line joins the text before it when that text leaves a block open or ends with a
        continuation (it is then inside another command), and when applying it would not give exactly
        what the general parser gives."""
        p = self.p
        self.text, self.line_pos, self.line = text, 0, 1  # a line-number cursor (see ``line_at``)
        gap = scanned = 0  # start of the pending general text; how far its depth is known
        depth, continued = 0, False
        handlers, names_ok = HANDLERS, plain_names
        for m in SHAPES.finditer(text):
            start = m.start()
            if gap < start:
                bare = STRINGS.sub("", text[scanned:start])
                depth = max(0, depth + sum(part.count("{") - part.count("}")
                                           for part in (ln.split("#", 1)[0] for ln in bare.split("\n"))))
                continued = text.endswith("\\\n", scanned, start)
                scanned = start
                if depth or continued:
                    continue
                p.toks, p.pos = p.tokens(text[gap:start], self.line_at(gap)), 0
                p.final = False         # the script goes on past these tokens' end
                p.commands()
                p.final = True
                gap = start
            if not (p.eval_errors or p.kernel_errors or p.syntax_errors) and names_ok(m) and handlers[m.lastgroup](self, m):
                gap = scanned = m.end()
        if gap < len(text):
            p.toks, p.pos = p.tokens(text[gap:], self.line_at(gap)), 0
            p.commands()

    def line_at(self, pos: int) -> int:
        """The line number at offset ``pos`` of the script, counted from the offset asked for last:
        offsets asked for grow, so the whole script's line numbers cost one pass."""
        if pos >= self.line_pos:
            self.line += self.text.count("\n", self.line_pos, pos)
        else:
            self.line -= self.text.count("\n", pos, self.line_pos)
        self.line_pos = pos
        return self.line

    def one(self, key: object, make: Callable[[], Any]) -> Any:
        """The shared object for ``key``, made by ``make`` the first time."""
        obj = self.shared.get(key)
        if obj is None:
            obj = self.shared[key] = make()
        return obj

    def service(self, text: str) -> Const | None:
        """The port ``text`` (shared: ports repeat); None when it is not a plain one."""
        port = self.shared.get(("port", text), MISSING)
        if port is MISSING:
            port = plain(T.SERVICE, text)
            if port is not None:
                port = self.one(port.value, lambda: port)
            self.shared["port", text] = port
        return port

    def table(self, family: str, name: str) -> Table | None:
        return self.p.rs.find(family, name)

    def add_chain(self, m: re.Match[str]) -> bool:
        tbl = self.table(m["ac_f"], m["ac_t"])
        if tbl is None:
            return False
        if m["ac_c"] not in tbl.chains:
            tbl.chains[m["ac_c"]] = Chain(m["ac_c"], tbl.alloc())
        return True

    def flush_chain(self, m: re.Match[str]) -> bool:
        tbl = self.table(m["fc_f"], m["fc_t"])
        chain = tbl.chains.get(m["fc_c"]) if tbl is not None else None
        if tbl is None or chain is None:
            return False
        flush(tbl, chain)
        return True

    def add_flush_chain(self, m: re.Match[str]) -> bool:
        """``add chain`` then ``flush chain`` of the same chain."""
        tbl = self.table(m["acf_f"], m["acf_t"])
        if tbl is None:
            return False
        chain = tbl.chains.get(m["acf_c"])
        if chain is None:
            tbl.chains[m["acf_c"]] = Chain(m["acf_c"], tbl.alloc())
        else:
            flush(tbl, chain)
        return True

    def endpoint_chain(self, m: re.Match[str]) -> bool:
        """An endpoint chain declared, flushed and given its hairpin jump and its DNAT: what the four lines
        do one by one, checked before anything is changed (else all four go to the general parser).
        Written for speed: a 10,000-Service sync has 100,000 of these."""
        tbl = self.table("ip", m["ep_t"])
        if tbl is None:
            return False
        name, target, a, d = m.group("ep_c", "ep_x", "ep_a", "ep_d")
        chains = tbl.chains
        chain = chains.get(name)
        addr, port = ipv4(a), self.service(m["ep_n"])
        to = addr if d == a else ipv4(d)  # the endpoint's own address, usually
        if addr is None or to is None or port is None or chain is not None and chain.hook is not None or \
                target not in chains and target != name:
            return False
        if chain is None:
            chain = chains[name] = Chain(name, tbl.alloc())
        else:
            flush(tbl, chain)
        self.endpoint_pair(tbl, chain, addr, m["ep_v"], target, m["ep_p"], to, port)
        return True

    def endpoint_rules(self, m: re.Match[str]) -> bool:
        """An endpoint chain's hairpin jump and its DNAT, two lines (as the proxier writes them after
        declaring every chain): what the two lines do one by one, checked before anything is changed."""
        tbl = self.table("ip", m["er_t"])
        chain = tbl.chains.get(m["er_c"]) if tbl is not None else None
        addr, port = ipv4(m["er_a"]), self.service(m["er_n"])
        to = addr if m["er_d"] == m["er_a"] else ipv4(m["er_d"])
        if tbl is None or chain is None or chain.hook is not None or addr is None or to is None or port is None \
                or m["er_x"] not in tbl.chains:
            return False
        self.endpoint_pair(tbl, chain, addr, m["er_v"], m["er_x"], m["er_p"], to, port)
        return True

    def endpoint_pair(self, tbl: Table, chain: Chain, addr: Const, kind: str, target: str, proto: str, to: Const,
                      port: Const) -> None:
        """An endpoint chain's two rules: ``ip saddr ADDR jump|goto TARGET`` and ``meta l4proto PROTO dnat to
        TO:PORT``, with the next two handles of the table."""
        h = tbl.next_handle
        tbl.next_handle = h + 2
        chain.rules += (Rule(h, [Match(self.saddr, "==", addr), self.verdict_stmt(kind, target)], None, []),
                        Rule(h + 1, [self.l4proto_match(proto), Nat("dnat", to, port)], None, []))

    def jump_stmts(self, field: str, addr: Const, kind: str, target: str) -> list[Stmt]:
        return [Match(self.one(field, lambda: Payload("ip", field)), "==", addr), self.verdict_stmt(kind, target)]

    def verdict_stmt(self, kind: str, target: str) -> VerdictStmt:
        """``jump CHAIN``: one statement for every rule that writes it (statements, like expressions,
        are not changed once built; 100,000 endpoint chains jump to mark-for-masquerade)."""
        stmt = self.shared.get(("stmt", kind, target))
        if stmt is None:
            stmt = self.shared["stmt", kind, target] = VerdictStmt(self.one((kind, target), lambda: Verdict(kind, target)))
        return stmt

    def l4proto_match(self, proto_name: str) -> Match:
        """``meta l4proto tcp|udp|sctp`` (shared)."""
        match = self.shared.get(("l4proto", proto_name))
        if match is None:
            proto = self.one("l4proto", lambda: Meta("l4proto"))
            match = self.shared["l4proto", proto_name] = Match(proto, "==", Const(proto.dtype, L4[proto_name]))
        return match

    def dnat_stmts(self, proto_name: str, addr: Const, port: Const) -> list[Stmt]:
        return [self.l4proto_match(proto_name), Nat("dnat", addr, port)]

    def rule_chain(self, m: re.Match[str]) -> tuple[Table, Chain] | None:
        """The table and regular chain of an ``add rule ip TABLE CHAIN ...`` line (base chains check their
        statements against their hook: the general parser does that)."""
        tbl = self.table("ip", m["rt"])
        chain = tbl.chains.get(m["rc"]) if tbl is not None else None
        if tbl is None or chain is None or chain.hook is not None:
            return None
        return tbl, chain

    def add_rule(self, tc: tuple[Table, Chain], stmts: list[Stmt], anon: list[str] | None = None) -> Rule:
        tbl, chain = tc
        rule = Rule(tbl.alloc(), stmts, None, anon or [])
        chain.rules.append(rule)
        return rule

    # ---- elements ---------------------------------------------------------------------------------
    def add_element(self, m: re.Match[str]) -> bool:
        """``add element FAMILY TABLE SET { KEY [: VERDICT] , ... }`` for a set of plain values."""
        tbl = self.table(m["ae_f"], m["ae_t"])
        s = tbl.sets.get(m["ae_s"]) if tbl is not None else None
        if tbl is None or s is None or "interval" in s.flags or s.data is not None and s.data != [T.VERDICT]:
            return False
        elems: list[Elem] = []
        text = m["ae_b"]
        if PLAIN_WORDS.fullmatch(text) is None:
            return False
        i, body = 0, ELEM_WORDS.findall(text)
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
        if s.data is not None:
            chains = tbl.chains
            for e in elems:
                target = e.data.target  # type: ignore[union-attr]
                if target is not None and target not in chains:
                    return False  # a jump to a chain the table lacks: the kernel's error, from the general parser
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
    def rule_jump(self, m: re.Match[str]) -> bool:
        """``ip saddr|daddr ADDR jump|goto CHAIN`` (an endpoint's hairpin masquerade)."""
        tc = self.rule_chain(m)
        addr = ipv4(m["rj_a"])
        if tc is None or addr is None or m["rj_x"] not in tc[0].chains:
            return False
        self.add_rule(tc, self.jump_stmts(m["rj_k"], addr, m["rj_v"], m["rj_x"]))
        return True

    def rule_masquerade(self, m: re.Match[str]) -> bool:
        """``ip daddr ADDR [tcp dport PORT] ip saddr != PREFIX jump CHAIN`` (a service's masquerade rule;
        upstream names the port, the proxier here leaves it out for a single-port Service)."""
        tc = self.rule_chain(m)
        addr, cidr = ipv4(m["rm_a"]), prefix(m["rm_s"], m["rm_l"])
        if tc is None or addr is None or cidr is None or m["rm_x"] not in tc[0].chains:
            return False
        stmts: list[Stmt] = [Match(self.one("daddr", lambda: Payload("ip", "daddr")), "==", addr)]
        if m["rm_p"] is not None:
            port = self.service(m["rm_n"])
            if port is None:
                return False
            dport = self.one((m["rm_p"], "dport"), lambda: Payload(m["rm_p"], "dport"))
            stmts.append(Match(dport, "==", port))
        stmts += [Match(self.one("saddr", lambda: Payload("ip", "saddr")), "!=", self.one(("/", m["rm_s"], m["rm_l"]), lambda: cidr)),
                  self.verdict_stmt(m["rm_v"], m["rm_x"])]
        self.add_rule(tc, stmts)
        return True

    def rule_dnat(self, m: re.Match[str]) -> bool:
        """``meta l4proto tcp|udp|sctp dnat to ADDR:PORT`` (an endpoint's DNAT)."""
        tc = self.rule_chain(m)
        addr, port = ipv4(m["rd_a"]), self.service(m["rd_n"])
        if tc is None or addr is None or port is None:
            return False
        self.add_rule(tc, self.dnat_stmts(m["rd_p"], addr, port))
        return True

    def numgen_key(self, n: int) -> Const:
        """Key ``n`` of a numgen map: every Service's map has keys 0 .. N-1, one constant each."""
        keys = self.numgen_keys
        while len(keys) <= n:
            self.numgen_texts.append(str(len(keys)))
            keys.append(Const(T.INTEGER, len(keys)))
        return keys[n]

    def rule_numgen(self, m: re.Match[str]) -> bool:
        """``numgen random mod N vmap { 0 : goto C0 , 1 : goto C1 , ... }`` with keys 0 .. N-1 in order."""
        tc = self.rule_chain(m)
        if tc is None:
            return False
        tbl = tc[0]
        mod = int(m["rn_m"])
        body = m["rn_b"]
        if VMAP_BODY.fullmatch(body) is None:
            return False
        items = VMAP_ITEM.findall(body)
        if len(items) != mod:
            return False
        chains = tbl.chains
        self.numgen_key(mod - 1)
        for (key, _, target), text in zip(items, self.numgen_texts):
            # a jump to a chain the table lacks is the kernel's error, from the general parser
            if key != text or target not in chains or target in SCANNER_KEYWORDS or \
                    target[0] <= "9" and NUMBER.fullmatch(target) is not None:
                return False
        elems = [Elem(key, Verdict(kind, target)) for key, (_, kind, target) in zip(self.numgen_keys, items)]
        name = f"__map{tbl.anon_seq}"
        tbl.anon_seq += 1
        tbl.sets[name] = NSet(name, tbl.alloc(), True, [T.INTEGER], [T.VERDICT], ["constant", "anonymous"],
                              anonymous=True, elems=list(elems))
        rule = self.add_rule(tc, [VerdictMap(Numgen("random", mod), SetLit(elems))], [name])
        # Where the braces are: the kernel's errors for the anonymous map point there.
        rule.anon_locs = [(self.line_at(m.start()), m.start("rn_b") - m.start() - 1, m.end("rn_b") - m.start() + 2)]  # type: ignore[attr-defined]
        return True


# Each line shape's handler (unbound: a FastPath holding its own bound methods would be a reference
# cycle, left for the collector, or kept forever once a big load freezes what it made).
HANDLERS: dict[str | None, Callable[[FastPath, re.Match[str]], bool]] = {
    "EP": FastPath.endpoint_chain, "ER": FastPath.endpoint_rules, "ACF": FastPath.add_flush_chain, "AC": FastPath.add_chain,
    "FC": FastPath.flush_chain, "RJ": FastPath.rule_jump, "RM": FastPath.rule_masquerade, "RD": FastPath.rule_dnat,
    "RN": FastPath.rule_numgen, "AE": FastPath.add_element}


def flush(tbl: Table, chain: Chain) -> None:
    """``flush chain``: its rules go, and with them their anonymous sets."""
    for r in chain.rules:
        for anon in r.anon_sets:
            tbl.sets.pop(anon, None)
    chain.rules = []


def ipv4(text: str) -> Const | None:
    """A dotted quad without leading zeros (as SHAPES and OCTETS match one), read without the ipaddress
    module; None for an octet over 255."""
    try:
        return Const(T.IPV4, int.from_bytes(inet_aton(text), "big"))
    except OSError:
        return None


def plain(dt: T.DType, text: str) -> Const | None:
    """A value written plainly (no prefix, range or symbol the general parser treats specially)."""
    if dt is T.IPV4 and OCTETS.fullmatch(text) is not None:
        return ipv4(text)  # None for an octet over 255
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


def prefix(base: str, plen: str) -> Prefix | None:
    """``ADDR/LEN`` for an IPv4 address, as the general parser builds it (a /32 is no prefix here)."""
    if not 0 <= int(plen) < 32:
        return None
    addr = plain(T.IPV4, base)
    if addr is None:
        return None
    v, n = addr.value, int(plen)
    mask = ((1 << 32) - 1) ^ ((1 << (32 - n)) - 1)
    return Prefix(Const(T.IPV4, v & mask), n)
