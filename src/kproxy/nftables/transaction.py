"""An nft transaction as operations on one table, applied to a ruleset without printing and parsing it.

upstream's knftables builds a ``Transaction`` of operations carrying objects; its ``Fake`` applies them
directly and only the real backend writes ``nft -f -`` text. ``Tx`` is that for the nftables proxier:
a list of operations on one table, each a tuple ``(verb, kind, name, payload)``:

* ``("add", "table", "", SPEC)``, ``(VERB, "chain"|"set"|"map", NAME, SPEC)``: the line
  ``VERB KIND FAMILY TABLE NAME SPEC`` (``SPEC`` is "" or the text after the name, ``" { ... }"``);
  ``(ADD_FLUSH, "chain", NAME, "")`` is two lines, ``add chain`` and ``flush chain``;
* ``("add", "rule", CHAIN, (BODY, COMMENT))``: ``BODY`` is the rule's text, or one of the shapes below
  that kube-proxy writes by the hundred thousand, as a tuple of its values;
  ``("add", RULES, CHAIN, (BODY, BODY))`` is two lines, two rules without comments;
* ``("add"|"delete", "element", SET, (KEY, VALUE, COMMENT))``: key and value as text.

(The two-line operations halve the operations of a full sync: an endpoint chain is one of each.)

``text()`` prints the transaction as the proxier always wrote it (``nft -f -`` on a kernel, ``--dry-run``,
logs, the "transaction lines" metric is ``len()``), once, when something asks. ``apply`` makes the
objects of the common operations itself (a plain chain, a flush, a rule of a known shape, set elements
of plain values) with the same model classes, handles and anonymous sets the parser gives, and hands
anything else to the parser as text, in order (``tests/test_nft_transaction.py`` checks both routes
give the same ruleset). It reports an error as ``TxError``: the caller puts the table back and runs the
text through the parser, whose message is nft's.
"""

from __future__ import annotations

from socket import inet_aton, inet_ntoa
from typing import TYPE_CHECKING, Any

from kproxy.nftables import types as T
from kproxy.nftables.expr import Concat, Const, Elem, Expr, Meta, Numgen, Payload, Prefix, SetLit, Verdict
from kproxy.nftables.model import Chain, NSet, Rule, Table
from kproxy.nftables.stmt import Match, Nat, Stmt, VerdictMap, VerdictStmt

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.nftables.model import Ruleset
    from kproxy.nftables.parser import Parser

# Rule shapes (the first item of a rule body tuple) and their text, for the ``ip`` family:
JUMP = "jump"      # (JUMP, FIELD, ADDR, VERB, CHAIN):      ip FIELD ADDR VERB CHAIN
DNAT = "dnat"      # (DNAT, PROTO, ADDR, PORT):             meta l4proto PROTO dnat to ADDR:PORT
NUMGEN = "numgen"  # (NUMGEN, (CHAIN, ...)):                 numgen random mod N vmap { 0 : goto CHAIN , ... }
MASQ = "masq"      # (MASQ, DADDR, CIDR, VERB, CHAIN):       ip daddr DADDR ip saddr != CIDR VERB CHAIN
GO = "go"          # (GO, VERB, CHAIN):                      VERB CHAIN

ADD_FLUSH = "add+flush"   # the verb of a chain added and flushed
RULES = "rules"           # the kind of two rules added to one chain

Op = tuple[str, str, str, Any]
L4 = {"tcp": 6, "udp": 17, "sctp": 132}


class TxError(Exception):
    """The transaction failed (``error``: the parser's error, its lines those of ``Tx.text``); the
    caller must put the table back."""

    def __init__(self, error: Any) -> None:
        super().__init__(error.msg)
        self.error = error


def body_text(fam: str, body: Any) -> str:
    """A rule body's text: itself, or its shape printed as the proxier writes it."""
    if type(body) is str:
        return body
    shape = body[0]
    if shape == JUMP:
        return f"{fam} {body[1]} {body[2]} {body[3]} {body[4]}"
    if shape == DNAT:
        return f"meta l4proto {body[1]} dnat to {body[2]}:{body[3]}"
    if shape == NUMGEN:
        vmap = " , ".join(f"{i} : goto {c}" for i, c in enumerate(body[1]))
        return f"numgen random mod {len(body[1])} vmap {{ {vmap} }}"
    if shape == MASQ:
        return f"{fam} daddr {body[1]} {fam} saddr != {body[2]} {body[3]} {body[4]}"
    if shape == GO:
        return f"{body[1]} {body[2]}"
    raise ValueError(f"unknown rule shape {shape!r}")


def op_text(fam: str, table: str, op: Op) -> str:
    """One operation as a line of ``nft -f`` input (no newline)."""
    verb, kind, name, p = op
    if verb == ADD_FLUSH:
        return f"add chain {fam} {table} {name}\nflush chain {fam} {table} {name}"
    if kind == RULES:
        return f"add rule {fam} {table} {name} {body_text(fam, p[0])}\nadd rule {fam} {table} {name} {body_text(fam, p[1])}"
    if kind == "rule":
        body, comment = p
        text = f"add rule {fam} {table} {name} {body_text(fam, body)}"
        return text if comment is None else f'{text} comment "{comment}"'
    if kind == "element":
        key, value, comment = p
        text = f"{verb} element {fam} {table} {name} {{ {key}"
        if verb == "add":
            if comment is not None:
                text += f' comment "{comment}"'
            if value:
                text += f" : {value}"
        return text + " }"
    if kind == "table":
        return f"{verb} table {fam} {table}{p}"
    return f"{verb} {kind} {fam} {table} {name}{p}"


class Tx:
    """One transaction on ``family table``: its operations, and its text once something asks for it."""

    __slots__ = ("family", "table", "ops", "_text")

    def __init__(self, family: str, table: str, ops: list[Op] | None = None) -> None:
        self.family = family
        self.table = table
        self.ops: list[Op] = ops if ops is not None else []
        self._text: str | None = None

    def __len__(self) -> int:
        """The operations (a two-line one counts once); ``lines`` counts lines."""
        return len(self.ops)

    @property
    def lines(self) -> int:
        return len(self.ops) + sum(1 for op in self.ops if op[0] == ADD_FLUSH or op[1] == RULES)

    def text(self) -> str:
        if self._text is None:
            fam, table = self.family, self.table
            self._text = "".join(op_text(fam, table, op) + "\n" for op in self.ops)
        return self._text

    __str__ = text

    def named(self) -> tuple[set[str], set[str]]:
        """The chains and sets the transaction names (a text rule's ``@set`` too)."""
        chains: set[str] = set()
        sets: set[str] = set()
        for _, kind, name, p in self.ops:
            if kind == RULES:
                chains.add(name)
            elif kind == "chain" or kind == "rule":
                chains.add(name)
                if kind == "rule" and type(p[0]) is str and "@" in p[0]:
                    sets.update(w[1:] for w in p[0].split() if w.startswith("@"))
            elif kind != "table":
                sets.add(name)
        return chains, sets


def apply(tx: Tx, rs: Ruleset, interfaces: set[str] | None = None) -> int | None:
    """Apply ``tx`` to ``rs`` (the caller keeps what it needs to undo it); ``TxError`` on any error.
    Returns how many conntrack users (``kproxy.nftables.evaluate.conntrack_users``) the rules it
    added hold, or None when it did more than add rules to chains (flushed some, deleted some).

    Jumps are not walked for depth (the proxier's chains nest at most five deep by construction, as
    for its partial syncs)."""
    from kproxy.nftables.parser import NftError, Parser

    p = Parser("", rs, interfaces, validate_jumps=False)
    b = _Builder(p, tx)
    try:
        b.run()
        b.add_elements()
        p.sort_touched_sets()
        p.raise_recorded()
    except NftError as exc:
        raise TxError(exc) from None
    return b.ct


class _Builder:
    """Makes the model objects of one transaction's operations, in order."""

    def __init__(self, p: Parser, tx: Tx) -> None:
        self.p = p
        self.tx = tx
        self.tbl: Table | None = None
        self.pending: list[str] = []
        self.first = 1         # the line of the first operation held as text
        # Expressions and statements thousands of rules share (nothing changes one once built).
        self.shared: dict[Any, Any] = {}
        # Elements made here, per set, not added yet: added together before anything else could see them.
        self.elems: dict[str, tuple[NSet, list[Elem]]] = {}
        # Conntrack users of the rules added (a DNAT each made here; the parser's counted after it),
        # None once rules were taken away; the chains the held text adds rules to.
        self.ct: int | None = 0
        self.text_rules: set[str] = set()

    def run(self) -> None:
        """Each operation made here when it can be, else held as text for the parser; held text goes
        to the parser before the next operation made here, so everything happens in order."""
        tx = self.tx
        fam, table = tx.family, tx.table
        pending = self.pending
        if fam != "ip":
            pending.extend(op_text(fam, table, op) for op in tx.ops)
            self.ct = None
            self.flush()
            return
        self.tbl = self.p.rs.find(fam, table)
        rule = self.rule
        line = 1
        # What the last endpoint chain's rules shared with the next one's, most likely.
        last_jump: tuple[Any, ...] = ()
        last_dnat: tuple[Any, ...] = ()
        jump_match: tuple[Payload, VerdictStmt] | None = None
        dnat_parts: tuple[Match, Const] | None = None
        for op in tx.ops:
            verb, kind, name, p = op
            if pending and kind != "table":
                self.flush()
            if self.elems and not (kind == "element" and verb == "add" or kind == "rule" or kind == RULES or
                                   kind == "chain" and verb != "delete"):
                self.add_elements()
            tbl = self.tbl
            if tbl is not None:
                if kind == RULES:
                    # An endpoint chain's two rules, its hairpin jump and its DNAT, of one address.
                    chain = tbl.chains.get(name)
                    jump, dnat = p
                    if chain is not None and chain.hook is None and jump[0] == JUMP and dnat[0] == DNAT and \
                            jump[2] == dnat[2] and jump[4] in tbl.chains:
                        if (jump[1], jump[3], jump[4]) != last_jump:
                            last_jump = (jump[1], jump[3], jump[4])
                            jump_match = (self.payload(jump[1]), self.verdict_stmt(jump[3], jump[4]))
                        if (dnat[1], dnat[3]) != last_dnat:
                            last_dnat = (dnat[1], dnat[3])
                            dnat_parts = self.dnat_parts(dnat[1], dnat[3])
                        addr = ipv4(jump[2])
                        if addr is not None and dnat_parts is not None and jump_match is not None:
                            h = tbl.next_handle
                            tbl.next_handle = h + 2
                            rules = chain.rules
                            rules.append(Rule(h, [Match(jump_match[0], "==", addr), jump_match[1]], None, []))
                            rules.append(Rule(h + 1, [dnat_parts[0], Nat("dnat", addr, dnat_parts[1])], None, []))
                            if self.ct is not None:
                                self.ct += 1
                            line += 2
                            continue
                elif kind == "chain" and not p:
                    chain = tbl.chains.get(name)
                    if chain is None and (verb == ADD_FLUSH or verb == "add"):
                        h = tbl.next_handle
                        tbl.next_handle = h + 1
                        tbl.chains[name] = Chain(name, h)
                        line += 1 if verb == "add" else 2
                        continue
                    if chain is not None and verb != "delete":
                        if verb != "add":
                            if chain.rules:
                                self.ct = None
                            for r in chain.rules:
                                for anon in r.anon_sets:
                                    tbl.sets.pop(anon, None)
                            chain.rules = []
                        line += 2 if verb == ADD_FLUSH else 1
                        continue
                elif kind == "rule":
                    body, comment = p
                    if type(body) is tuple:
                        chain = tbl.chains.get(name)
                        if chain is not None and chain.hook is None and rule(tbl, chain, body, comment):
                            line += 1
                            continue
                elif kind == "element" and verb == "add" and self.element(tbl, name, p):
                    line += 1
                    continue
            self.hold(op, line)
            line += 2 if verb == ADD_FLUSH or kind == RULES else 1
        self.flush()

    def hold(self, op: Op, line: int) -> None:
        """Keep an operation as text for the parser (noting what it does to the conntrack count)."""
        verb, kind, name, p = op
        if not self.pending:
            self.first = line
        if kind == "rule" or kind == RULES:
            self.text_rules.add(name)
        elif kind == "chain" and verb != "add" or kind == "table" and "chain" in p:
            chain = self.tbl.chains.get(name) if self.tbl is not None else None
            if chain is not None and chain.rules or name in self.text_rules:
                self.ct = None
        self.pending.append(op_text(self.tx.family, self.tx.table, op))

    def flush(self) -> None:
        """The operations held as text, through the general parser, numbered as lines of ``Tx.text``
        (only the table's fixed part and uncommon rules come here)."""
        self.add_elements()
        if self.pending:
            text = "\n".join(self.pending) + "\n"
            self.pending.clear()
            tbl = self.tbl
            before = {c: len(tbl.chains[c].rules) if tbl is not None and c in tbl.chains else 0
                      for c in self.text_rules}
            self.p.toks, self.p.pos = self.p.tokens(text, self.first), 0
            from kproxy.nftables.parser import StopParsing

            try:
                self.p.commands()
            except StopParsing:
                self.p.raise_recorded()
            tbl = self.p.rs.find(self.tx.family, self.tx.table)
            if self.ct is not None and tbl is not None:
                from kproxy.nftables.evaluate import rules_conntrack_users

                for c, n in before.items():      # the parser only appended to these chains
                    chain = tbl.chains.get(c)
                    if chain is not None:
                        self.ct += rules_conntrack_users(chain.rules[n:])
            self.text_rules.clear()
            self.tbl = self.p.rs.find(self.tx.family, self.tx.table)
            if self.p.eval_errors or self.p.kernel_errors:
                self.p.raise_recorded()

    # ---- rules and elements made here; False leaves one to the parser ----------------------------
    def verdict_stmt(self, verb: str, target: str) -> VerdictStmt:
        key = ("stmt", verb, target)
        stmt = self.shared.get(key)
        if stmt is None:
            stmt = self.shared[key] = VerdictStmt(Verdict(verb, target))
        return stmt

    def payload(self, fld: str) -> Payload:
        obj = self.shared.get(fld)
        if obj is None:
            obj = self.shared[fld] = Payload("ip", fld)
        return obj

    def dnat_parts(self, proto: str, port_num: Any) -> tuple[Match, Const] | None:
        """A DNAT rule's protocol match and port, the same for every endpoint of a port."""
        key = (DNAT, proto, port_num)
        fixed = self.shared.get(key)
        if fixed is None:
            port = service(str(port_num))
            if port is None or proto not in L4:
                return None
            fixed = self.shared[key] = (Match(Meta("l4proto"), "==", Const(T.PROTO, L4[proto])), port)
        return fixed

    def rule(self, tbl: Table, chain: Chain, body: tuple[Any, ...], comment: str | None) -> bool:
        shape = body[0]
        chains = tbl.chains
        shared = self.shared
        stmts: list[Stmt]
        anon: list[str] = []
        if shape == JUMP:
            addr = ipv4(body[2])
            if addr is None or body[4] not in chains:
                return False
            stmts = [Match(self.payload(body[1]), "==", addr), self.verdict_stmt(body[3], body[4])]
        elif shape == DNAT:
            addr, fixed = ipv4(body[2]), self.dnat_parts(body[1], body[3])
            if addr is None or fixed is None:
                return False
            stmts = [fixed[0], Nat("dnat", addr, fixed[1])]
        elif shape == MASQ:
            _, daddr_text, cidr, verb, target = body
            daddr = ipv4(daddr_text)
            net = shared.get(("/", cidr))
            if net is None:
                base, _, plen = cidr.partition("/")
                net = prefix(base, plen) if plen else None
                if net is None:
                    return False
                shared["/", cidr] = net
            if daddr is None or target not in chains:
                return False
            stmts = [Match(self.payload("daddr"), "==", daddr), Match(self.payload("saddr"), "!=", net),
                     self.verdict_stmt(verb, target)]
        elif shape == GO:
            if body[2] not in chains or body[1] not in ("jump", "goto"):
                return False
            stmts = [self.verdict_stmt(body[1], body[2])]
        elif shape == NUMGEN:
            targets = body[1]
            for t in targets:
                if t not in chains:
                    return False
            if not targets:
                return False
            elems = []
            for i, t in enumerate(targets):
                k = shared.get(("numgen key", i))
                if k is None:
                    k = shared["numgen key", i] = Const(T.INTEGER, i)
                elems.append(Elem(k, Verdict("goto", t)))
            name = f"__map{tbl.anon_seq}"
            tbl.anon_seq += 1
            tbl.sets[name] = NSet(name, tbl.alloc(), True, [T.INTEGER], [T.VERDICT], ["constant", "anonymous"],
                                  anonymous=True, elems=list(elems))
            stmts, anon = [VerdictMap(Numgen("random", len(targets)), SetLit(elems))], [name]
        else:
            return False
        h = tbl.next_handle
        tbl.next_handle = h + 1
        chain.rules.append(Rule(h, stmts, comment, anon))
        if shape == DNAT and self.ct is not None:
            self.ct += 1
        return True

    def element(self, tbl: Table, name: str, p: tuple[str, str, str | None]) -> bool:
        """``add element`` of one plain key (and verdict) to a set without intervals (held until
        ``add_elements``)."""
        held = self.elems.get(name)
        if held is None:
            s = tbl.sets.get(name)
            if s is None or "interval" in s.flags or s.data is not None and s.data != [T.VERDICT]:
                return False
            held = self.elems[name] = (s, [])
        s = held[0]
        key_text, value, comment = p
        words = key_text.split(" . ")
        if len(words) != len(s.key):
            return False
        parts: list[Expr] = []
        shared = self.shared
        for dt, w in zip(s.key, words, strict=True):
            c = ipv4(w) if dt is T.IPV4 else shared.get((dt.name, w))
            if c is None:
                c = plain(dt, w)
                if c is None:
                    return False
                shared[dt.name, w] = c          # a protocol or port: one constant for every element
            parts.append(c)
        elem = Elem(parts[0] if len(parts) == 1 else Concat(parts), comment=comment)
        if s.data is not None:
            v = value.split(" ")
            if len(v) == 1 and v[0] in ("accept", "drop", "return", "continue"):
                elem.data = Verdict(v[0])
            elif len(v) == 2 and v[0] in ("jump", "goto") and v[1] in tbl.chains:
                elem.data = Verdict(v[0], v[1])
            else:
                return False
        elif value:
            return False
        held[1].append(elem)
        return True

    def add_elements(self) -> None:
        """The elements made here, added to their sets as the parser adds them."""
        for s, elems in self.elems.values():
            if elems:
                self.p.add_elements(s, SetLit(elems))
        self.elems.clear()


# ---- values, as the parser reads them when written plainly -------------------------------------------
_PLAIN: dict[tuple[str, str], Any] = {}


def ipv4(text: str) -> Const | None:
    """A dotted quad as ``inet_ntoa`` prints one (no leading zeros, no short forms); None for anything
    else (the parser then reads it)."""
    try:
        packed = inet_aton(text)
    except (OSError, UnicodeError, ValueError):
        return None
    if inet_ntoa(packed) != text:
        return None
    return Const(T.IPV4, int.from_bytes(packed, "big"))


def service(text: str) -> Const | None:
    return plain(T.SERVICE, text) if text.isdigit() else None


def plain(dt: T.DType, text: str) -> Const | None:
    """A value of a set key's type written plainly: an IPv4 address, a port or protocol number or name."""
    if dt is T.IPV4:
        return ipv4(text)
    if dt.kind in ("string", "ifindex") or not text or not (text.isalnum() or text.replace("_", "").isalnum()):
        return None
    if dt is not T.SERVICE and dt is not T.PROTO:
        return None
    key = (dt.name, text)
    value = _PLAIN.get(key)
    if value is None:
        try:
            value = dt.parse(text)
        except T.TypeError_:
            return None
        if len(_PLAIN) < 4096:
            _PLAIN[key] = value
    return Const(dt, value)


def prefix(base: str, plen: str) -> Prefix | None:
    """``ADDR/LEN`` for an IPv4 address below /32, as the parser builds it (host bits cleared)."""
    if not plen.isdigit() or not 0 <= int(plen) < 32:
        return None
    addr = ipv4(base)
    if addr is None:
        return None
    n = int(plen)
    mask = ((1 << 32) - 1) ^ ((1 << (32 - n)) - 1)
    return Prefix(Const(T.IPV4, addr.value & mask), n)
