"""One rule: its statements parsed, checked and put in the form nft lists (dependencies, anonymous sets)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from kproxy.nftables import cthelper, dup, objmap
from kproxy.nftables import exthdr as X
from kproxy.nftables import types as T
from kproxy.nftables.expr import (
    CT,
    META,
    META_BARE_IN,
    PAYLOAD,
    RAW,
    TRANSPORT,
    Binop,
    Concat,
    Const,
    Ct,
    Expr,
    Fib,
    Hash,
    MapExpr,
    Meta,
    Numgen,
    Payload,
    RawPayload,
    Rt,
    SetLit,
    SetRef,
    TcpOption,
    Verdict,
    raw_payload,
)
from kproxy.nftables.lexer import NUMBER, SCANNER_KEYWORDS, Token, is_identifier
from kproxy.nftables.model import NSet, Rule, Table
from kproxy.nftables.stmt import (
    UNIT_SIZE,
    Counter,
    FlowAdd,
    Forward,
    Log,
    Mangle,
    Match,
    Nat,
    ObjRef,
    PortsMatch,
    Queue,
    Reject,
    SetUpdate,
    Simple,
    Stmt,
    VerdictMap,
    VerdictStmt,
)

if TYPE_CHECKING:
    from kproxy.nftables.parser import Loc, NftError, Parser

OPS = {"==": "==", "!=": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">=", "eq": "==", "ne": "!=", "lt": "<",
       "gt": ">", "le": "<=", "ge": ">="}
STMT_END = ("nl", "eof")
SYMBOL = re.compile(r"[A-Za-z_.][A-Za-z0-9_/\-.]*")       # scanner.l's string
# statements after which bison's default reductions end the rule: a stray token wants the command's end
ENDS_CLEAN = (VerdictStmt, Counter, Reject, Queue, Simple)
LOG_LEVELS = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug", "audit")
WORD_OPS = {"and": "&", "or": "|", "xor": "^", "lshift": "<<", "rshift": ">>"}


class RuleBuilder:
    def __init__(self, p: Parser, tbl: Table) -> None:
        self.p = p
        self.tbl = tbl
        self.stmts: list[Stmt] = []
        self.comment: str | None = None
        self.anon: list[str] = []
        self.anon_locs: list[tuple[int, int, int]] = []
        self.l4_matched: set[str] = set()
        self.missing_obj: Token | None = None   # a named object the kernel will not find
        self.chain = ""                          # the rule's own chain
        self.invalid: Loc | None = None          # a statement the kernel refuses with EINVAL

    def error(self, msg: str, a: Token, b: Token | None = None, secondary: list[tuple[int, int, int]] | None = None):
        from kproxy.nftables.parser import NftError, loc

        return NftError(msg, loc(a, b), secondary)

    def ended(self) -> bool:
        t = self.p.peek()
        return t.kind in STMT_END or (t.kind == "punct" and t.text in (";", "}"))

    def build(self, start: Token, new_handle: bool = True, chain: str = "") -> Rule:
        from kproxy.nftables.parser import NftError

        self.chain = chain
        if self.ended():
            raise self.p.unexpected()
        p = self.p
        spans: list[tuple[int, int, int]] = []     # statements' first and last token indexes
        while not self.ended():
            first, n = p.pos, len(self.stmts)
            self.statement()
            if len(self.stmts) > n:
                spans.append((len(self.stmts) - 1, first, p.pos - 1))
                if isinstance(self.stmts[-1], ENDS_CLEAN):
                    nxt = p.peek()
                    if nxt.kind == "punct" and nxt.text not in ";}@":
                        # bison's default reductions end the rule: the command wants its end (``@`` starts
                        # a raw payload match, as in nft's own listing ``counter packets 0 bytes 0 @th,0,32 1``)
                        raise p.unexpected(nxt, "newline or semicolon" if p.in_block else
                                           "end of file or newline or semicolon")
        if len(spans) > 1:
            self.after_terminal(spans)
        if self.missing_obj is not None:
            if new_handle:
                self.tbl.alloc()  # the kernel numbered the rule before it failed to find the object
            raise self.enoent(self.missing_obj, chain)
        if self.invalid is not None:
            if new_handle:
                self.tbl.alloc()
            raise NftError("Could not process rule: Invalid argument", self.invalid)
        for s in self.stmts:
            if isinstance(s, VerdictStmt) and s.verdict.target is not None and s.verdict.target not in self.tbl.chains:
                t = getattr(s, "tok", start)
                if new_handle:
                    self.tbl.alloc()  # the kernel numbered the rule before it failed to find the chain
                raise self.enoent((t.line, t.col, t.end), chain)
        for target, where in self.vmap_targets():
            if target not in self.tbl.chains:     # the kernel's ENOENT, at the element's key
                if new_handle:
                    self.tbl.alloc()
                raise self.enoent(where, chain)
        for fib in (e for e in map(_keyed, self.stmts) if isinstance(e, Fib)):
            if fib.result != "type" and "oif" in fib.flags:     # nft_fib_init: an oif lookup by oif
                if new_handle:
                    self.tbl.alloc()
                raise NftError("Could not process rule: Invalid argument", getattr(fib, "loc", None))
        base = self.tbl.chains.get(chain)
        if base is not None and base.hook is not None and not all(self.valid_at(st, base.type, base.hook)
                                                                      for st in self.stmts):
            if new_handle:
                self.tbl.alloc()
            raise NftError("Could not process rule: Operation not supported",
                           (start.line, start.col, self.p.toks[self.p.pos - 1].end), validation=True)
        stmts = hide_dependencies(merge_ports(self.stmts), self.tbl.family)
        handle = self.tbl.alloc() if new_handle else 0
        rule = Rule(handle, stmts, self.comment, self.anon)
        rule.anon_locs = self.anon_locs  # type: ignore[attr-defined]
        return rule

    def number(self) -> Token:
        t = self.p.peek()
        if t.kind != "word" or NUMBER.fullmatch(t.text) is None:
            raise self.p.unexpected(t, "number")
        return self.p.next()

    def after_terminal(self, spans: list[tuple[int, int, int]]) -> None:
        """evaluate.c's check: a statement after a verdict is never reached."""
        from kproxy.nftables.parser import NftError, loc

        toks = self.p.toks
        for (i, a, b), (_, c, d) in zip(spans, spans[1:]):
            if isinstance(self.stmts[i], (VerdictStmt, Reject, Queue)):
                raise NftError("Statement after terminal statement has no effect", loc(toks[c], toks[d]),
                               [loc(toks[a], toks[b])], kernel=False)

    @staticmethod
    def valid_at(st: Stmt, chain_type: str | None, hook: str) -> bool:
        """Whether the kernel accepts the statement in a base chain of this type and hook."""
        if isinstance(st, FlowAdd):
            return hook == "forward"      # nft_flow_offload_validate: the forward hook only
        fib = _keyed(st)
        if isinstance(fib, Fib):
            return hook in fib_hooks(fib)
        if not isinstance(st, Nat):
            return True
        hooks = {"dnat": ("prerouting", "output"), "redirect": ("prerouting", "output"),
                 "snat": ("postrouting", "input"), "masquerade": ("postrouting",)}[st.kind]
        return chain_type == "nat" and hook in hooks

    def enoent(self, where: Token | Loc | None, chain: str) -> NftError:
        """The kernel's ENOENT for this rule (a jump target, named object or set it does not have):
        nft words it with a hint from its cache about the rule's own chain (kproxy.nftables.misspell)."""
        from kproxy.nftables.misspell import kernel_hint
        from kproxy.nftables.parser import NftError, loc

        at = loc(where) if isinstance(where, Token) else where
        err = NftError("Could not process rule: No such file or directory", at)
        rs, tbl = self.p.rs, self.tbl

        def hint() -> tuple[str, Loc] | None:
            found = kernel_hint(rs, "rule", tbl.family, tbl.name, chain) if chain else None
            return None if found is None or at is None else (found[0], at)

        err.hint = hint
        return err

    def rt(self, rt_tok: Token) -> Rt:
        """``rt [ip|ip6] classid|nexthop|mtu|ipsec``: nexthop's address family from the table, else named."""
        p = self.p
        family = p.next().text if p.at("ip", "ip6") else None
        k = p.peek()
        if k.text not in ("classid", "nexthop", "mtu", "ipsec") or k.kind != "word":
            raise p.unexpected(k)
        p.next()
        if k.text != "nexthop":
            return Rt(k.text)
        family = family or {"ip": "ip", "ip6": "ip6"}.get(self.tbl.family)
        if family is None:
            raise self.error('cannot determine ip protocol version, use "ip nexthop" or "ip6 nexthop" instead',
                             rt_tok, k)
        return Rt("nexthop", family)

    def missing_set(self, at: Token, name: Token) -> NftError:
        """nft's evaluation finds a set or map missing from its cache (evaluate.c's set_not_found)."""
        from kproxy.nftables.misspell import evaluation_message
        from kproxy.nftables.parser import NftError, loc

        return NftError(evaluation_message(self.p.rs, "set", name.text), loc(at, name), kernel=False)

    # ---- statements ---------------------------------------------------------------------------
    def statement(self) -> None:
        p = self.p
        t = p.peek()
        w = t.text if t.kind == "word" else ""
        if w in ("accept", "drop", "return", "continue"):
            p.next()
            self.stmts.append(VerdictStmt(Verdict(w)))
        elif w in ("jump", "goto"):
            p.next()
            target = p.chain_name("'{'")
            st = VerdictStmt(Verdict(w, target.text))
            st.tok = target  # type: ignore[attr-defined]
            self.stmts.append(st)
        elif w == "counter":
            kw = p.next()
            named = bool(p.accept("name"))
            if named and self.is_expr_start():
                objmap.parse(self, "counter", kw)
            elif named:
                name = p.word()
                if ("counter", name.text) not in self.tbl.objs:
                    self.missing_obj = self.missing_obj or name
                self.stmts.append(Counter(name=name.text))
            else:
                c = Counter()
                if p.accept("packets"):
                    c.packets = int(self.number().text)
                    p.expect("bytes")
                    c.bytes = int(self.number().text)
                self.stmts.append(c)
        elif w in ("limit", "quota") and p.peek(1).text == "name":
            kw = p.next()
            p.next()
            if self.is_expr_start():
                objmap.parse(self, w, kw)
                return
            name = p.word()
            if (w, name.text) not in self.tbl.objs:
                self.missing_obj = self.missing_obj or name
            self.stmts.append(ObjRef(w, name.text))
        elif w == "limit":
            p.next()
            p.expect("rate")
            self.stmts.append(p.limit_body())
        elif w == "quota":
            kw = p.next()
            quota = p.quota_body(kw)
            if quota.used * UNIT_SIZE[quota.used_unit] > quota.value * UNIT_SIZE[quota.unit] and self.invalid is None:
                self.invalid = (kw.line, kw.col, p.toks[p.pos - 1].end)    # nft_quota_do_init's EINVAL
            self.stmts.append(quota)
        elif w == "log":
            p.next()
            self.stmts.append(self.log())
        elif w == "comment":
            if not self.stmts:
                raise p.unexpected(t)       # a rule begins with a statement
            p.next()
            self.comment = self.string().text
        elif w == "notrack":
            p.next()
            self.stmts.append(Simple("notrack"))
        elif w == "queue":
            p.next()
            q = Queue()
            while p.at("num", "to", "flags", "bypass", "fanout"):
                k = p.next().text
                if k in ("num", "to"):
                    q.num = p.word().text
                elif k == "flags":
                    q.flags = p.word_list()
                else:
                    q.flags.append(k)
            self.stmts.append(q)
        elif w == "reject":
            p.next()
            self.reject(t)
        elif w in ("dnat", "snat", "masquerade", "redirect"):
            p.next()
            self.nat(t)
        elif w in ("fwd", "dup") and self.tbl.family == "netdev":
            self.forward(p.next())
        elif w == "dup":
            dup.parse(self, p.next())
        elif w == "fwd":
            p.next()
            if not p.at("to"):
                raise p.unexpected(expecting="to or ip or ip6")
            p.next()
            raise self.error("unsupported family", t, p.word())
        elif w == "flow" and p.peek(1).text in ("add", "offload"):
            self.flow_add(p.next())
        elif w in ("add", "update") and p.peek(1).text == "@":
            p.next()
            at = p.next()
            name = p.name()
            s = self.tbl.sets.get(name.text)
            if s is None:
                raise self.missing_set(at, name)
            # nft marks the set dynamic in its cache: the kernel learns it only with a set the same
            # batch creates (never from a listing being reloaded); the kernel sizes it either way
            _made_dynamic(s, id(s) in p.new_sets and not p.listed)
            p.expect("{")
            key = self.concat()
            upd = SetUpdate(w, name.text, key)
            while not p.at("}"):
                if p.accept("timeout"):
                    upd.timeout = p.time_value()
                elif p.at("limit"):
                    p.next()
                    p.expect("rate")
                    upd.stmts.append(p.limit_body())
                elif p.accept("counter"):
                    upd.stmts.append(Counter())
                else:
                    raise p.unexpected()
            p.expect("}")
            self.stmts.append(upd)
        else:
            self.expression_statement()

    def forward(self, kw: Token) -> None:
        """``fwd to DEV`` / ``dup to DEV``: nft resolves DEV to an interface index while it evaluates."""
        p = self.p
        p.expect("to")
        dev = p.word()
        if p.at("device"):
            raise self.error("cannot specify device", kw, p.toks[p.pos + 1])
        if p.interfaces is not None and dev.text not in p.interfaces:
            raise self.error("Interface does not exist", dev)
        self.stmts.append(Forward(kw.text, dev.text))

    def flow_add(self, kw: Token) -> None:
        """``flow add @ft`` / ``flow offload @ft``; the kernel finds the flowtable when it loads the rule."""
        p = self.p
        p.next()
        p.expect("@")
        name = p.word()
        if self.tbl.family not in ("ip", "ip6", "inet"):
            raise self.error("Could not process rule: Operation not supported", kw, name)
        if name.text not in self.tbl.flowtables:
            # the kernel numbered the rule before it failed to find the flowtable
            self.missing_obj = self.missing_obj or Token("word", "", kw.line, kw.col, name.end)
        self.stmts.append(FlowAdd(name.text))

    def string(self) -> Token:
        """A string argument (``log prefix``, ``comment``): at the end of the statement, bison lists the three
        kinds of string its scanner has."""
        if self.stmt_end(0):
            raise self.p.unexpected(expecting="string or quoted string or string with a trailing asterisk")
        return self.p.word()

    def log(self) -> Log:
        from kproxy.nftables.parser import NftError, loc

        p = self.p
        lg = Log()
        while p.at("prefix", "level", "group", "snaplen", "queue-threshold", "flags"):
            k = p.next().text
            if k == "prefix":
                lg.prefix = self.string().text
            elif k == "level":
                lv = p.word()
                if lv.text not in LOG_LEVELS:
                    raise NftError("invalid log level", loc(lv), parse=True)      # the parser's YYERROR
                lg.level = lv.text
            elif k == "group":
                lg.group = int(p.word().text)
            elif k == "snaplen":
                lg.snaplen = int(p.word().text)
            elif k == "queue-threshold":
                lg.threshold = int(p.word().text)
            else:
                lg.flags = log_flags(lg.flags, self.log_flag())
        return lg

    def log_flag(self) -> list[str]:
        """One ``flags`` argument of ``log`` (nft's log_flags): ``tcp sequence,options``, ``ip options``,
        ``skuid``, ``ether`` or ``all``."""
        from kproxy.nftables.lexer import is_identifier

        p = self.p

        def bad(w: Token, expecting: str = "") -> Exception:
            err = p.unexpected(w, expecting)
            if is_identifier(w):         # not a keyword: bison's "string"
                err.msg = "syntax error, unexpected string" + (f", expecting {expecting}" if expecting else "")
            return err

        t = p.next()
        if t.text == "tcp":
            out = []
            while True:
                w = p.next()
                if w.text not in ("sequence", "options"):
                    raise bad(w, "seq or options")      # bison's name for SEQUENCE is "seq"
                out.append(f"tcp {w.text}")
                if not p.accept(","):
                    return out
        if t.text == "ip":
            p.expect("options")
            return ["ip options"]
        if t.text in ("skuid", "ether", "all"):
            return [t.text]
        raise bad(t)

    def reject(self, kw: Token) -> None:
        p = self.p
        fam = self.tbl.family
        if not p.accept("with"):
            nfproto = self.last_nfproto()
            if fam == "inet" and nfproto is not None:
                # With the address family known, nft lists the ICMP flavour it chose.
                flavour = "icmp" if nfproto == "ip" else "icmpv6"
                dt = T.ICMP_CODE if nfproto == "ip" else T.ICMPV6_CODE
                self.stmts.append(Reject(flavour, Const(dt, dt.sym_by_name()["port-unreachable"])))
                return
            default = {"ip": ("icmp", "port-unreachable"), "ip6": ("icmpv6", "port-unreachable"),
                       "inet": ("icmpx", "port-unreachable"), "bridge": ("icmpx", "port-unreachable")}
            self.stmts.append(Reject(default_json=default.get(fam)))
            return
        if self.stmt_end(0):
            raise p.unexpected(expecting="icmp or icmpv6 or tcp or icmpx")
        kind = p.word()
        if kind.text == "tcp":
            p.expect("reset")
            dep = self.last_l4()
            if dep is not None and dep[0] != 6:

                raise self.error("you cannot use tcp reset with this protocol", kw, None, [dep[1]])
            if dep is None and fam == "inet":
                self.stmts.insert(0, self.l4_dependency(6))
            self.stmts.append(Reject("tcp reset"))
            return
        if kind.text not in ("icmp", "icmpv6", "icmpx"):
            raise p.unexpected(kind)
        p.accept("type")
        dt = {"icmp": T.ICMP_CODE, "icmpv6": T.ICMPV6_CODE, "icmpx": T.ICMPX_CODE}[kind.text]
        code_tok = p.peek()
        code = p.value(dt)
        assert isinstance(code, Const)
        kw_loc = [(kw.line, kw.col, kw.end)]
        if fam in ("ip", "ip6") and kind.text == "icmpx":
            raise self.error("abstracted ICMP unreachable not supported", code_tok, None, kw_loc)
        own = {"ip": "icmp", "ip6": "icmpv6"}.get(fam)
        if own is not None and kind.text != own:
            other = "ip6" if fam == "ip" else "ip"
            raise self.error(f"conflicting protocols specified: {fam} vs {other}", code_tok, None, kw_loc)
        if {"ip": "icmp", "ip6": "icmpv6", "inet": "icmpx", "bridge": "icmpx"}.get(fam) == kind.text and \
                code.value == dict(dt.symbols)["port-unreachable"]:
            # the family's default: nft lists it as a bare 'reject' (JSON says it in full)
            self.stmts.append(Reject(default_json=(kind.text, "port-unreachable")))
            return
        self.stmts.append(Reject(kind.text, code))

    def last_network(self) -> str | None:
        """The network protocol the rule fixed first: ip/ip6 payload, ``meta nfproto``, icmp or icmpv6."""
        for s in self.stmts:
            if isinstance(s, Match):
                items = s.left.items if isinstance(s.left, Concat) else [s.left]
                for e in items:
                    e = e.left if isinstance(e, Binop) else e
                    if isinstance(e, Payload) and e.proto in ("ip", "ip6", "icmp", "icmpv6"):
                        return "ip" if e.proto in ("ip", "icmp") else "ip6"
                if isinstance(s.left, Meta) and s.left.key == "nfproto" and isinstance(s.right, Const):
                    return "ip" if s.right.value == 2 else "ip6"
        return None

    def last_nfproto(self) -> str | None:
        """The address family an earlier match in the rule pins down (ip/ip6 payload or meta nfproto)."""
        for s in reversed(self.stmts):
            if isinstance(s, Match):
                e = s.left.items[0] if isinstance(s.left, Concat) else s.left
                if isinstance(e, Payload) and e.proto in ("ip", "ip6", "icmp", "icmpv6"):
                    return "ip" if e.proto in ("ip", "icmp") else "ip6"
                if isinstance(e, Meta) and e.key == "nfproto" and isinstance(s.right, Const):
                    return "ip" if s.right.value == 2 else "ip6"
        return None

    def l4_dependency(self, proto: int) -> Match:
        if self.tbl.family == "ip":
            return Match(Payload("ip", "protocol"), "==", Const(T.PROTO, proto))
        if self.tbl.family == "ip6":
            return Match(Payload("ip6", "nexthdr"), "==", Const(T.PROTO, proto))
        return Match(Meta("l4proto"), "==", Const(T.PROTO, proto))

    def last_l4(self, first: bool = False) -> tuple[int, tuple[int, int, int]] | None:
        """The transport protocol the rule has fixed so far, and where: an explicit ``meta l4proto`` /
        ``ip protocol`` match sets it anew; otherwise the first transport header matched fixes it.
        ``first``: what fixed it first, which a later explicit match does not undo for nft's conflict
        check (``ip protocol udp ip protocol tcp tcp dport 2``: "udp vs. tcp")."""
        found: tuple[int, tuple[int, int, int]] | None = None
        for s in self.stmts:
            if isinstance(s, Match) and isinstance(s.right, Const) and s.op == "==":
                lhs = s.left
                if (isinstance(lhs, Meta) and lhs.key == "l4proto") or (
                        isinstance(lhs, Payload) and (lhs.proto, lhs.field) in (("ip", "protocol"), ("ip6", "nexthdr"))):
                    if not (first and found):
                        found = (s.right.value, getattr(s, "loc", (0, 0, 0)))
                    continue
            if found is None and isinstance(s, (Match, VerdictMap)):
                items = s.key.items if isinstance(s, VerdictMap) and isinstance(s.key, Concat) else (
                    [s.key] if isinstance(s, VerdictMap) else
                    s.left.items if isinstance(s.left, Concat) else [s.left])
                for e in items:
                    e = e.left if isinstance(e, Binop) else e
                    if isinstance(e, Payload) and e.proto in TRANSPORT:
                        found = (TRANSPORT[e.proto], getattr(e, "loc", (0, 0, 0)))
                        break
        return found

    def nat(self, kw: Token) -> None:
        p = self.p
        st = Nat(kw.text)
        if kw.text in ("snat", "dnat") and self.stmt_end(0):
            raise p.unexpected()
        if p.at("ip", "ip6"):
            st.family = p.next().text
            if p.at("addr") and p.peek(1).text == "." and p.peek(2).text == "port":
                for _ in range(3):      # ``dnat ip addr . port to MAP``: nft lists it as ``dnat ip to MAP``
                    p.next()
        addr_type = T.IPV6 if (st.family == "ip6" or self.tbl.family == "ip6") else T.IPV4
        if p.accept("to"):
            if p.at(":"):
                p.next()
                port_tok = p.peek()
                st.port = p.value(T.SERVICE)
                self.check_port_dep(kw, port_tok)
            else:
                st.addr, st.port = self.nat_target(kw, addr_type)
                if isinstance(st.addr, MapExpr) and self.maps_address_and_port(st.addr):
                    st.family = st.family or ("ip6" if addr_type.kind == "ipv6" else "ip")  # nft lists it
        flags = []
        while p.at("random", "fully-random", "persistent", ","):
            t = p.next()
            if t.text != ",":
                flags.append(t.text)
        st.flags = flags
        self.stmts.append(st)

    def nat_target(self, kw: Token, dt: T.DType) -> tuple[Expr | None, Expr | None]:
        p = self.p
        t = p.peek()
        if t.kind == "word" and t.text in PAYLOAD or t.text in ("meta", "ct", "numgen", "jhash", "symhash"):
            key = self.concat()
            p.expect("map")
            data = self.map_data(key, [dt, T.SERVICE] if self.data_is_concat() else [dt])
            return MapExpr(key, data), None
        if p.accept("["):
            addr = p.value(dt)
            p.expect("]")
            if p.accept(":"):
                port_tok = p.peek()
                port = p.value(T.SERVICE)
                self.check_port_dep(kw, port_tok)
                return addr, port
            return addr, None
        t = p.word()
        text = t.text
        if dt.kind == "ipv4" and ":" in text:
            a, _, port_text = text.rpartition(":")
            col = t.col + len(a) + 1
            addr_tok = Token("word", a, t.line, t.col, col - 2)
            port_tok = Token("word", port_text, t.line, col, t.end)
            addr = p.parse_value_text(dt, addr_tok)
            port = p.parse_value_text(T.SERVICE, port_tok)
            self.check_port_dep(kw, port_tok)
            return addr, port
        addr = p.parse_value_text(dt, t)
        if p.at(":"):
            p.next()
            port_tok = p.peek()
            port = p.value(T.SERVICE)
            self.check_port_dep(kw, port_tok)
            return addr, port
        return addr, None

    def data_is_concat(self) -> bool:
        """Whether the map literal ahead maps to ``address . port`` (a ``.`` after its first ``:``)."""
        p = self.p
        i, seen_colon = 0, False
        while True:
            t = p.peek(i)
            if t.kind == "eof" or t.text in (",", "}") and seen_colon:
                return False
            if t.text == ":":
                seen_colon = True
            elif t.text == "." and seen_colon:
                return True
            i += 1

    def maps_address_and_port(self, m: MapExpr) -> bool:
        data = m.data
        elems = data.elems if isinstance(data, SetLit) else (
            self.tbl.sets[data.name].elems if isinstance(data, SetRef) and data.name in self.tbl.sets else [])
        return any(isinstance(e.data, Concat) for e in elems)

    def check_port_dep(self, kw: Token, port_tok: Token) -> None:
        dep = self.last_l4()
        if dep is None or dep[0] not in (6, 17, 132, 136, 33):
            raise self.error("transport protocol mapping is only valid after transport protocol match", port_tok,
                             None, [(kw.line, kw.col, kw.end)])

    # ---- expressions ----------------------------------------------------------------------------
    def primary(self) -> Expr:
        p = self.p
        t = p.peek()
        w = t.text
        if t.kind == "punct" and w == "@":
            return self.raw_payload()
        if t.kind != "word":
            raise p.unexpected(t)
        if w == "tcp" and p.peek(1).text == "option":
            p.next()
            p.next()
            name = p.word().text
            return TcpOption(name, p.word().text)
        if X.starts(p):
            return X.parse(p)
        if w == "rt":
            return self.rt(p.next())
        if w in PAYLOAD and p.peek(1).kind == "word" and p.peek(1).text in PAYLOAD[w]:
            p.next()
            return Payload(w, p.next().text)
        if w in PAYLOAD and self.stmt_end(1):
            raise p.unexpected(p.peek(1))       # a protocol alone: its field is missing
        if w == "meta":
            p.next()
            if self.stmt_end(0):
                raise p.unexpected()
            k = p.word()
            if k.text not in META:
                raise self.error(f"syntax error, unexpected {k.text}", k)
            return Meta(k.text)
        if w in META_BARE_IN:
            p.next()
            return Meta(w)
        if w == "l4proto":
            p.next()
            return Meta("l4proto")
        if w == "ct":
            w_tok = p.next()
            direction = p.next().text if p.at("original", "reply") else None
            family = p.next().text if p.at("ip", "ip6") else None
            if self.stmt_end(0):
                raise p.unexpected()
            k = p.word()
            if k.text not in CT or direction is not None and k.text == "helper":    # helper has no direction
                raise self.error(f"syntax error, unexpected {k.text}", k)
            if self.tbl.family == "netdev":
                # nf_ct_netns_get has no netdev family: the kernel says EPROTO for the expression
                # (for ``ct KEY set VALUE``, for the statement)
                end = p.toks[p.pos + 1] if p.at("set") else k
                raise self.error("Could not process rule: Protocol error", w_tok, end)
            return Ct(k.text, direction, family)
        if w == "fib":
            p.next()
            first = p.peek()
            flags = [p.word().text]
            while p.accept("."):
                flags.append(p.word().text)
            for pair in (("saddr", "daddr"), ("iif", "oif")):
                if set(pair) <= set(flags):
                    raise self.error(f"fib: {pair[0]} and {pair[1]} are mutually exclusive", first,
                                     p.toks[p.pos - 1])
            return Fib(flags, p.word().text)
        if w == "numgen":
            p.next()
            mode = p.word().text
            p.expect("mod")
            ng = Numgen(mode, int(p.word().text))
            if p.accept("offset"):
                ng.offset = int(p.word().text)
            return ng
        if w in ("jhash", "symhash"):
            p.next()
            inner = self.concat() if w == "jhash" else None
            p.expect("mod")
            h = Hash(w, inner, int(p.word().text))
            while p.at("seed", "offset"):
                attr = p.next().text
                setattr(h, attr, int(p.word().text, 0))
            return h
        nxt = p.peek(1)
        if w in PAYLOAD and nxt.kind == "word":
            # a protocol then no field of it (``tcp dprot``): bison stops at the field
            from kproxy.nftables.lexer import is_identifier

            expecting = {"udp": "length or checksum or sport or dport"}.get(w, "")   # bison lists up to four
            err = p.unexpected(nxt, expecting)
            if is_identifier(nxt):
                err.msg = "syntax error, unexpected string" + (f", expecting {expecting}" if expecting else "")
            raise err
        raise p.unexpected(t)

    def raw_payload(self) -> Expr:
        """``@BASE,OFFSET,LENGTH``: a header range by bit offset and length."""
        p = self.p
        p.expect("@")
        base = p.peek()
        if base.text not in ("ll", "nh", "th") or base.kind != "word":
            raise p.unexpected(base, "string or ll or nh or th" if base.kind in ("nl", "eof") else "")
        p.next()
        p.expect(",")
        offset = p.word()
        p.expect(",")
        length = p.word()
        if not (offset.text.isdigit() and length.text.isdigit()):
            raise p.unexpected(offset if not offset.text.isdigit() else length)
        return raw_payload(base.text, int(offset.text), int(length.text))

    def concat(self) -> Expr:
        p = self.p
        items = [self.located()]
        while p.at("."):
            p.next()
            items.append(self.located())
        return items[0] if len(items) == 1 else Concat(items)

    def located(self) -> Expr:
        """One concatenation item, remembering where it was written (errors point at it)."""
        first = self.p.peek()
        e = self.primary()
        last = self.p.toks[self.p.pos - 1]
        e.loc = (first.line, first.col, last.end)  # type: ignore[attr-defined]
        return self.binop(e)

    def binop(self, e: Expr) -> Expr:
        p = self.p
        while p.at("&", "|", "^", "<<", ">>", "and", "or", "xor", "lshift", "rshift"):
            op = WORD_OPS.get(p.peek().text, p.peek().text)
            p.next()
            e = Binop(op, e, p.value(e.dtype))
        return fold_bitwise(e)

    def is_expr_start(self) -> bool:
        p = self.p
        t = p.peek()
        if t.kind == "punct" and t.text == "@":
            return p.peek(1).text in ("ll", "nh", "th")
        if t.kind != "word":
            return False
        if t.text in ("meta", "ct", "numgen", "jhash", "symhash", "fib", "rt") or t.text in META_BARE_IN:
            return True
        if X.starts(p):
            return True
        return t.text in PAYLOAD and p.peek(1).text in PAYLOAD[t.text]

    def check_lookup_type(self, types: list[T.DType], ref: SetRef, lhs: tuple[Token, Token], at: Token) -> None:
        """evaluate.c's lookup check: a named set's key must have the expression's type."""
        from kproxy.nftables.parser import NftError, loc

        key = self.tbl.sets[ref.name].key
        if len(types) != 1 or len(key) != 1 or key[0].name in (types[0].name, "integer") or types[0].name == "integer":
            return
        raise NftError(f"datatype mismatch, expected {T.describe(types[0])}, expression has type {T.describe(key[0])}",
                       loc(at, self.p.toks[self.p.pos - 1]), [loc(*lhs)])

    def check_set_type(self, lhs: Expr, value: Expr, start: Token, vstart: Token) -> None:
        """evaluate.c's statement argument check: an expression's type must be the key's own (an integer
        fits any); ``ct helper set`` takes only a name (its object reference must be constant)."""
        from kproxy.nftables.parser import NftError, loc

        end = self.p.toks[self.p.pos - 1]
        if isinstance(lhs, Ct) and lhs.key == "helper" and isinstance(value, Ct) and value.key == "helper":
            raise self.error("Counter expression must be constant", vstart, end)
        have, want = value.dtype, lhs.dtype
        if isinstance(lhs, Concat) or isinstance(value, Concat) or have.name in (want.name, "integer"):
            return
        before = self.p.toks[self.p.toks.index(vstart) - 1]
        raise NftError(f"datatype mismatch: expected {T.describe(want)}, expression has type {T.describe(have)}",
                       loc(vstart, end), [(start.line, start.col, before.end + 1)])

    def ct_helper_set(self, value: Expr, start: Token) -> None:
        """``ct helper set NAME|MAP``: a reference to ``ct helper`` objects the kernel must find."""
        st = cthelper.CtHelperSet(value)
        if isinstance(value, Const):
            value.loc = (start.line, start.col, self.p.toks[self.p.pos - 1].end)  # type: ignore[attr-defined]
        elems = value.data.elems if isinstance(value, MapExpr) and isinstance(value.data, SetLit) else []
        keys = {id(getattr(e, "loc", None)): objmap.key_loc(self.p, e) for e in elems}
        for name, where in st.names():
            if (cthelper.KIND, name) not in self.tbl.objs and self.missing_obj is None:
                line, col, end = keys.get(id(where)) or where or (start.line, start.col, start.end)
                self.missing_obj = Token("word", "", line, col, end)
        self.stmts.append(st)

    def bare_value(self, k: int = 0) -> bool:
        """A word nft's grammar reads as a constant or a symbol where an expression starts."""
        t = self.p.peek(k)
        return t.kind == "string" or t.kind == "word" and (is_identifier(t) and SYMBOL.fullmatch(t.text) is not None
                                                           or NUMBER.fullmatch(t.text) is not None)

    def stmt_end(self, k: int) -> bool:
        t = self.p.peek(k)
        return t.kind in STMT_END or t.kind == "punct" and t.text in (";", "}")

    def expression_statement(self) -> None:
        p = self.p
        start = p.peek()
        if (start.kind == "string" or start.kind == "word" and start.text not in SCANNER_KEYWORDS) and self.bare_value():
            if self.stmt_end(1):
                raise p.unexpected(p.peek(1))       # a value alone: its relational's right side is missing
            if self.bare_value(1) and self.stmt_end(2):
                from kproxy.nftables.parser import NftError, loc

                # ``foo bar``: a relational of two symbols, with no type to read them by
                raise NftError("No symbol type information", loc(start), kernel=False)
        lhs = self.concat()
        lhs_end = p.toks[p.pos - 1]
        self.check_family(lhs, start)
        if isinstance(lhs, X.Exthdr) and p.at("set"):
            raise p.unexpected()        # nft 1.0.6 has no IPv6 extension header mangling
        if p.accept("set"):
            vstart = p.peek()
            if self.is_expr_start():
                value = self.concat()
                if p.accept("map"):
                    mstart = p.peek()
                    value = MapExpr(value, self.map_data(value, [lhs.dtype]))
                    if isinstance(lhs, Ct) and lhs.key == "helper" and isinstance(value.data, SetRef):
                        # nft 1.0.6 has no ct helper object maps: a named map never holds them
                        raise self.error("Expression is not a map with objects", mstart, p.toks[p.pos - 1])
                self.check_set_type(lhs, value, start, vstart)
            else:
                value = self.binop(p.value(lhs.dtype))
            if isinstance(lhs, Ct) and lhs.key == "helper" and lhs.direction is None:
                self.ct_helper_set(value, vstart)
                return
            self.stmts.append(Mangle(lhs, value))
            return
        if p.accept("vmap"):
            data = self.map_data(lhs, None)
            self.stmts.append(VerdictMap(lhs, data))
            return
        op = "=="
        explicit = False
        if p.peek().kind in ("punct", "word") and p.peek().text in OPS:
            op = OPS[p.next().text]
            explicit = True
        if isinstance(lhs, Fib) and lhs.result != "type" and p.at("exists", "missing"):
            lhs = Fib(lhs.flags, lhs.result, present=True)
            rhs: Expr = Const(T.BOOLEAN, int(p.next().text == "exists"))
        elif isinstance(lhs, X.Exthdr) and lhs.field is None and p.at("exists", "missing"):
            rhs = Const(T.BOOLEAN, int(p.next().text == "exists"))
        else:
            types = [i.dtype for i in lhs.items] if isinstance(lhs, Concat) else [lhs.dtype]
            rstart = p.peek()
            rhs = self.rhs(lhs, types)
            if (isinstance(lhs, Meta) and lhs.key in ("iif", "oif") and isinstance(rhs, Const)
                    and isinstance(rhs.value, str) and p.interfaces is not None and rhs.value not in p.interfaces):
                raise self.error("Interface does not exist", rstart)     # nft resolves the index now
            if isinstance(rhs, SetRef):
                self.check_lookup_type(types, rhs, (start, lhs_end), rstart)
        if (isinstance(lhs, Binop) and lhs.op == "^" and isinstance(lhs.right, Const) and isinstance(rhs, Const)
                and isinstance(rhs.value, int) and isinstance(lhs.right.value, int)):
            # nft lists the kernel's bitwise xor of a comparison on its other side: x ^ k == v is x == v ^ k
            rhs = Const(rhs.ctype, rhs.value ^ lhs.right.value)
            lhs = lhs.left
        if lhs.dtype.kind == "bitmask" and p.accept("/"):
            mask = self.rhs(lhs, types)
            lhs = Binop("&", lhs, mask)
            op = "=="
            explicit = True
        if (not explicit and lhs.dtype.kind == "bitmask" and isinstance(rhs, Const)
                and not isinstance(lhs, Binop)):
            op = "in"
        m = Match(lhs, op, rhs)
        m.loc = (start.line, start.col, p.toks[p.pos - 1].end)  # type: ignore[attr-defined]
        self.stmts.append(m)

    def check_family(self, lhs: Expr, start: Token) -> None:
        from kproxy.nftables.parser import NftError

        fam = self.tbl.family
        for e in lhs.items if isinstance(lhs, Concat) else [lhs]:
            if isinstance(e, Binop):
                e = e.left
            at = getattr(e, "loc", None)
            if isinstance(e, Payload) and e.proto in TRANSPORT:
                names = {v: k for k, v in TRANSPORT.items()}
                for dep in (self.last_l4(first=True), self.last_l4()):
                    if dep is not None and dep[0] != TRANSPORT[e.proto]:
                        have = names.get(dep[0], str(dep[0]))
                        raise NftError(f"conflicting protocols specified: {have} vs. {e.proto}", at)
            if isinstance(e, Payload) and fam in ("ip", "ip6") and e.proto in ("ip", "ip6") and e.proto != fam:
                raise NftError(f"conflicting protocols specified: {fam} vs. {e.proto}", at)
            if isinstance(e, Payload) and fam == "inet" and e.proto in ("ip", "ip6"):
                net = self.last_network()
                if net is not None and net != e.proto:
                    raise NftError(f"conflicting protocols specified: {net} vs. {e.proto}", at)
            if isinstance(e, X.Exthdr) and (fam == "ip" or fam == "inet" and self.last_network() == "ip"):
                raise NftError("cannot use exthdr with ip", at)
            if isinstance(e, Meta) and e.key == "nfproto" and fam != "inet":
                raise NftError("meta nfproto is only useful in the inet family", at)

    def set_ref(self) -> SetRef:
        """``@name``: a set or map of the table, by name (nft refuses one it does not know)."""
        at = self.p.next()
        name = self.p.name()
        if name.text not in self.tbl.sets:
            raise self.missing_set(at, name)
        return SetRef(name.text)

    def rhs(self, lhs: Expr, types: list[T.DType]) -> Expr:
        p = self.p
        if p.at("@"):
            return self.set_ref()
        if p.at("{"):
            first = p.peek()
            lit = p.set_literal(types, None)
            # nft folds a one-value literal into a comparison; not a concatenation's, nor a set the
            # kernel holds (a node file's listing, where a folded one has no braces).
            if len(lit.elems) == 1 and lit.elems[0].data is None and len(types) == 1 and not p.listed:
                return lit.elems[0].key
            self.anon_set(types, None, lit, first)
            return lit
        v = p.value_of(types)
        if len(types) == 1 and types[0].kind == "bitmask" and p.at(",", "|") and isinstance(v, Const):
            value = v.value
            while p.accept(",") or p.accept("|"):    # ``fin,syn`` or the constant ``fin | syn``
                w = p.value(types[0])
                assert isinstance(w, Const)
                value |= w.value
            v = Const(types[0], value)
        return v

    def vmap_targets(self) -> list[tuple[str, Any]]:
        """(chain, element key location) for each jump or goto in the rule's anonymous verdict maps."""
        return [(e.data.target, getattr(e, "key_loc", None)) for s in self.stmts
                if isinstance(s, VerdictMap) and isinstance(s.data, SetLit)
                for e in s.data.elems if isinstance(e.data, Verdict) and e.data.target is not None]

    def map_data(self, key: Expr, data: list[T.DType] | None) -> Expr:
        p = self.p
        types = [i.dtype for i in key.items] if isinstance(key, Concat) else [key.dtype]
        if p.at("@"):
            return self.set_ref()
        first = p.peek()
        lit = p.set_literal(types, [T.VERDICT] if data is None else data)
        self.anon_set(types, [T.VERDICT] if data is None else data, lit, first)
        return lit

    def anon_set(self, key: list[T.DType], data: list[T.DType] | None, lit: SetLit, first: Token) -> None:
        last = self.p.toks[self.p.pos - 1]
        self.anon_locs.append((first.line, first.col, last.end))
        prefix = "__map" if data is not None else "__set"
        name = f"{prefix}{self.tbl.anon_seq}"
        self.tbl.anon_seq += 1
        unique: dict[tuple[str, str], Any] = {}          # nft keeps one of an element given twice
        for e in lit.elems:
            unique.setdefault((repr(e.key), repr(e.data)), e)
        lit.elems = list(unique.values())
        interval = any(not isinstance(e.key, (Const, Concat)) for e in lit.elems)
        s = NSet(name, self.tbl.alloc(), data is not None, key, data, ["constant", "anonymous"] +
                 (["interval"] if interval else []), anonymous=True, elems=list(lit.elems))
        self.tbl.sets[name] = s
        self.anon.append(name)
        if interval and len(key) == 1:
            from kproxy.nftables.parser import merge_intervals

            lit.elems = merge_intervals(lit.elems, key[0])
        else:
            from kproxy.nftables.listing import elem_sort_key

            lit.elems = sorted(lit.elems, key=elem_sort_key)


LOG_FLAGS = ("tcp sequence", "tcp options", "ip options", "skuid", "ether")     # NF_LOG_* bit order


def log_flags(have: list[str], more: list[str]) -> list[str]:
    """The log flags set so far and by one more ``flags`` argument: one bitmask in nft, kept in its
    bit order, ``all`` when every bit is set."""
    got = set(have) | set(more)
    if "all" in got or got >= set(LOG_FLAGS):
        return ["all"]
    return [f for f in LOG_FLAGS if f in got]


def fold_bitwise(e: Expr) -> Expr:
    """A run of ``&``, ``|``, ``^`` with constants as nft lists it back: the kernel holds one
    bitwise (mask, xor) built as netlink_gen_bitwise builds it, and netlink_parse_bitwise_bool
    prints that as ``& mask'`` (left out when all ones), ``^ x'``, ``| o``
    (``meta mark & 0xffff0000 | 0x2`` lists as ``meta mark & 0xffff0002 | 0x00000002``)."""
    ops: list[Binop] = []
    base = e
    while isinstance(base, Binop) and base.op in ("&", "|", "^") and isinstance(base.right, Const) \
            and isinstance(base.right.value, int):
        ops.append(base)
        base = base.left
    bits = base.dtype.bits
    if not ops or isinstance(base, Binop) or not bits or bits % 8:
        return e
    ones = (1 << bits) - 1
    mask, xor = ones, 0
    for b in reversed(ops):
        v = b.right.value  # type: ignore[attr-defined]
        if b.op == "&":
            mask &= v
            xor &= v
        elif b.op == "|":
            mask &= ~v & ones
            xor |= v
        else:
            xor ^= v
    m, x, o = mask, xor, 0
    if m != ones or x:
        o = (m & x) ^ x
        x &= m
        m |= o
    ctype = ops[0].right.ctype  # type: ignore[attr-defined]
    out = base
    if m != ones:
        out = Binop("&", out, Const(ctype, m))
    if x:
        out = Binop("^", out, Const(ctype, x))
    if o:
        out = Binop("|", out, Const(ctype, o))
    if hasattr(e, "loc"):
        out.loc = e.loc  # type: ignore[attr-defined]
    return out


PORT_PROTOS = {6: "tcp", 17: "udp", 132: "sctp", 136: "udplite"}


def _dep_layer(s: Stmt, family: str) -> str | None:
    """``l4`` or ``l3`` when the statement is a protocol match nft could have inserted itself."""
    if not (isinstance(s, Match) and s.op == "==" and isinstance(s.right, Const)):
        return None
    lhs = s.left
    if isinstance(lhs, Meta) and lhs.key == "l4proto":
        return "l4"
    if isinstance(lhs, Payload) and (family, lhs.proto, lhs.field) in (("ip", "ip", "protocol"),
                                                                       ("ip6", "ip6", "nexthdr")):
        return "l4"
    if isinstance(lhs, Meta) and lhs.key == "nfproto" and family == "inet":
        return "l3"
    return None


PORT_OFFSET = {"sport": 0, "dport": 16}     # bit offsets in every transport header that has ports


def _port_span(s: Stmt) -> tuple[int, int] | None:
    """(bit offset, length) in the transport header of a ``PORTS == VALUE`` or ``!= VALUE`` match: the
    matches nft's statement reduction may merge."""
    if not (isinstance(s, Match) and s.op in ("==", "!=") and isinstance(s.right, Const)
            and isinstance(s.left, Payload)):
        return None
    e = s.left
    if isinstance(e, RawPayload):
        return (e.offset, e.length) if e.proto == "th" and e.offset % 8 == 0 and e.length % 8 == 0 else None
    if e.field in PORT_OFFSET and (e.proto == "th" or e.proto in PORT_PROTOS.values()):
        return PORT_OFFSET[e.field], 16
    return None


def _with_dependencies(stmts: list[Stmt]) -> list[Stmt]:
    """The rule as nft evaluates it: ``meta l4proto`` (in every family) before the first payload match
    of a transport protocol the rule has not fixed yet (``th`` needs none)."""
    out: list[Stmt] = []
    for st in stmts:
        if isinstance(st, Match) and isinstance(st.left, Payload) and st.left.proto in PORT_PROTOS.values() \
                and not _l4_fixed(out):
            out.append(Match(Meta("l4proto"), "==", Const(T.PROTO, TRANSPORT[st.left.proto])))
        out.append(st)
    return out


def _merge_runs(stmts: list[Stmt]) -> list[list[int]]:
    """Runs of port matches nft's stmt_reduce merges within: other statements end a run, but only once
    it holds two matches (1.0.6 keeps a lone one waiting past them); other matches neither join nor end it."""
    runs: list[list[int]] = []
    run: list[int] = []
    for i, st in enumerate(stmts):
        if not isinstance(st, (Match, VerdictMap)):
            if len(run) >= 2:
                runs.append(run)
                run = []
        elif _port_span(st) is not None:
            run.append(i)
    if len(run) >= 2:
        runs.append(run)
    return runs


def _joined(a: Match, b: Match) -> Match:
    """Two adjacent ranges compared with one operator, as one comparison of the range they make."""
    (off, la), (_, lb) = _port_span(a), _port_span(b)  # type: ignore[misc]
    assert isinstance(a.right, Const) and isinstance(b.right, Const)
    value = a.right.value << lb | b.right.value
    return Match(RawPayload("th", "raw", off, la + lb), a.op, Const(RAW, value))


def merge_ports(stmts: list[Stmt]) -> list[Stmt]:
    """nft's statement reduction (rule.c stmt_reduce, 1.0.6) of port matches: in each run, sorted by
    offset, a match of the range right after the previous one with the same operator merges into it,
    in that one's place, as a raw ``@th,OFFSET,LENGTH`` comparison up to 32 bits; the listing names it
    ``P sport A P dport B`` when the protocol is known before it (``hide_dependencies``), and leaves
    the implicit protocol match nft added where it was when the merge moved the ports away from it.
    Checked against nft 1.0.6: ``th sport 1 counter th dport 2`` lists as ``@th,0,32 0x10002 counter``,
    ``udp dport 53 counter udp sport 1`` as ``meta l4proto udp counter udp sport 1 udp dport 53``."""
    if not _merge_runs(stmts):
        return stmts
    full = _with_dependencies(stmts)
    out: list[Stmt | None] = list(full)
    merged = False
    for run in _merge_runs(full):
        order = sorted(run, key=lambda i: _port_span(full[i])[0])  # type: ignore[index]
        last = order[0]
        for i in order[1:]:
            a, b = out[last], full[i]
            assert isinstance(a, Match) and isinstance(b, Match)
            (oa, la), (ob, lb) = _port_span(a), _port_span(b)  # type: ignore[misc]
            protos = {e.proto for e in (a.left, b.left) if isinstance(e, Payload) and e.proto != "th"}
            if oa + la == ob and la + lb <= 32 and a.op == b.op and len(protos) <= 1:
                out[last], out[i], merged = _joined(a, b), None, True
            else:
                last = i
    return [st for st in out if st is not None] if merged else stmts


def _l4_fixed(stmts: list[Stmt]) -> bool:
    """Whether an earlier statement already fixed the transport protocol (no dependency is added)."""
    for st in stmts:
        if isinstance(st, Match) and isinstance(st.left, Meta) and st.left.key == "l4proto":
            return True
        if isinstance(st, Match) and isinstance(st.left, Payload) and st.left.proto in TRANSPORT:
            return True
    return False


def hide_dependencies(stmts: list[Stmt], family: str) -> list[Stmt]:
    """Drop protocol matches a later payload expression implies, as nft does when it lists a rule.

    nft remembers the last such match per layer; a payload expression of the protocol it names removes
    it, and ``th`` fields become the transport protocol already known (``udp dport``).
    """
    out: list[Stmt | None] = []
    deps: dict[str, int] = {}
    l4_name: str | None = None
    for s in stmts:
        layer = _dep_layer(s, family)
        proto = _payload_proto(s)
        if layer is not None:
            assert isinstance(s, Match) and isinstance(s.right, Const)
            deps[layer] = len(out)
            if layer == "l4":
                l4_name = PORT_PROTOS.get(s.right.value, l4_name)
        elif isinstance(s, Reject) and s.kind == "tcp reset" and family in ("ip", "ip6") and "l4" in deps:
            out[deps.pop("l4")] = None
        elif isinstance(s, Reject) and s.kind in ("icmp", "icmpv6") and family == "inet" and "l3" in deps:
            dep = out[deps["l3"]]       # an ICMP reject fixes the network: its meta nfproto goes
            if isinstance(dep, Match) and isinstance(dep.right, Const) and \
                    dep.right.value == (2 if s.kind == "icmp" else 10):
                out[deps.pop("l3")] = None
        elif isinstance(s, Match) and isinstance(s.left, X.Exthdr) and family == "inet" and "l3" in deps:
            dep = out[deps["l3"]]       # an IPv6 extension header implies meta nfproto ipv6
            if isinstance(dep, Match) and isinstance(dep.right, Const) and dep.right.value == 10:
                out[deps.pop("l3")] = None
        elif proto is not None:
            for p in _all_payload_protos(s):
                if p in PORT_PROTOS.values():
                    l4_name = p
            if proto == "th" and l4_name is not None:
                if _is_ports(s):
                    assert isinstance(s, Match)
                    out.append(_named_ports(s, l4_name, "sport"))
                    s = _named_ports(s, l4_name, "dport")
                else:
                    s = _retarget_th(s, l4_name)
                proto = l4_name
            # Every header a concatenation reads implies its protocol (``ip daddr . tcp dport``).
            for each in dict.fromkeys([proto, *_all_payload_protos(s)[1:]]):
                wants: list[tuple[str, int]] = []
                if each in TRANSPORT:
                    wants.append(("l4", TRANSPORT[each]))
                    l4_name = each if each in PORT_PROTOS.values() else l4_name
                    if each in ("icmp", "icmpv6"):      # ICMP is one network's: its nfproto goes too
                        wants.append(("l3", 2 if each == "icmp" else 10))
                elif each in ("ip", "ip6"):
                    wants.append(("l3", 2 if each == "ip" else 10))
                for want in wants:
                    if want[0] not in deps:
                        continue
                    dep = out[deps[want[0]]]
                    assert isinstance(dep, Match) and isinstance(dep.right, Const)
                    if dep.right.value == want[1]:
                        out[deps.pop(want[0])] = None
        out.append(s)
        if not isinstance(s, Match):
            deps.clear()        # nft hides a dependency across matches only (a counter in between keeps it)
    return [s for s in out if s is not None]


def fib_hooks(e: Fib) -> tuple[str, ...]:
    """The hooks nft_fib_validate allows a lookup at: a device result where there is an input device;
    an address type by the input device before routing, by the output device after it."""
    if e.result != "type":
        return "prerouting", "input", "forward"
    if "iif" in e.flags:
        return "prerouting", "input", "forward"
    if "oif" in e.flags:
        return "output", "postrouting", "forward"
    return "prerouting", "input", "forward", "output", "postrouting"


def _is_ports(s: Stmt) -> bool:
    """A merged comparison of both ports (``@th,0,32``)."""
    return isinstance(s, Match) and isinstance(s.left, RawPayload) and (s.left.offset, s.left.length) == (0, 32)


def _named_ports(s: Match, proto: str, field: str) -> Match:
    """One port of a merged ``@th,0,32`` comparison, as nft lists it once the protocol is known."""
    assert isinstance(s.right, Const)
    value = s.right.value >> 16 if field == "sport" else s.right.value & 0xFFFF
    # Still the kernel's one comparison of the 32 bits: the sport half decides, the dport half holds.
    return PortsMatch(Payload(proto, field), s.op, Const(T.SERVICE, value),
                      s.right.value if field == "sport" else None)


def _retarget_th(s: Stmt, proto: str) -> Stmt:
    """``meta l4proto udp th dport 53`` lists as ``udp dport 53`` (a verdict map's key too)."""
    left = _keyed(s)
    if not (isinstance(left, Payload) and left.field in PAYLOAD[proto]):
        return s
    if isinstance(s, Match):
        return Match(Payload(proto, left.field), s.op, s.right)
    if isinstance(s, VerdictMap):
        return VerdictMap(Payload(proto, left.field), s.data)
    return s


def _keyed(s: Stmt) -> Expr | None:
    """The expression a statement reads the packet with: a match's left side, a verdict map's key, a
    NAT map's key (nft's listing drops protocol matches that any of them implies)."""
    if isinstance(s, Match):
        return s.left
    if isinstance(s, VerdictMap):
        return s.key
    if isinstance(s, Nat) and isinstance(s.addr, MapExpr):
        return s.addr.key
    return None


def _all_payload_protos(s: Stmt) -> list[str]:
    left = _keyed(s)
    if left is None:
        return []
    items = left.items if isinstance(left, Concat) else [left]
    return [e.proto for e in (i.left if isinstance(i, Binop) else i for i in items) if isinstance(e, Payload)]


def _payload_proto(s: Stmt) -> str | None:
    left = _keyed(s)
    if left is not None:
        e = left.left if isinstance(left, Binop) else left
        if isinstance(e, Concat):
            e = e.items[0]
        if isinstance(e, Payload):
            return e.proto
    return None


DYNSET_SIZE = 65535                         # nft's size for a set a rule adds to, when it has none
FLAG_ORDER = ("constant", "dynamic", "interval", "timeout")


def _made_dynamic(s: Any, flag: bool = True) -> None:
    """A set that a rule adds to or updates gets the default size (as ``nft list`` shows it
    afterwards), and (``flag``) becomes dynamic."""
    if s.size is None:
        s.size = DYNSET_SIZE
    if flag and "dynamic" not in s.flags:
        s.flags = sorted([*s.flags, "dynamic"], key=lambda f: FLAG_ORDER.index(f) if f in FLAG_ORDER else 9)
