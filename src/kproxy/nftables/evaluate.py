"""nftables in the packet path: each base chain a hook function at its hook and priority, beside iptables.

Rules are interpreted statement by statement, as nft_do_chain runs expressions: a match that fails ends
the rule, a verdict ends the chain (jump/goto push or replace it), and the base chain's policy decides
when its rules run out. NAT statements bind through the node's NAT core, so a connection NATed here is
the same conntrack entry iptables' NAT would make. Work is done only for packets that reach a hook where
a base chain is registered; a node without nftables tables pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from kproxy.netfilter import offload
from kproxy.netfilter.hooks import EGRESS, INGRESS, HookFn, HookState
from kproxy.netfilter.nat import NatRange, jhash
from kproxy.nftables import cthelper, dup, objmap
from kproxy.nftables import exthdr as X
from kproxy.nftables.expr import (
    TRANSPORT,
    Binop,
    Concat,
    Const,
    Ct,
    Elem,
    Expr,
    Fib,
    Hash,
    MapExpr,
    Meta,
    Numgen,
    Opts,
    Payload,
    Prefix,
    Range,
    RawPayload,
    SetLit,
    SetRef,
    Verdict,
)
from kproxy.nftables.model import Chain, NSet, Rule, Ruleset, Table
from kproxy.nftables.stmt import (
    Counter,
    FlowAdd,
    Forward,
    Limit,
    Mangle,
    Match,
    Nat,
    ObjRef,
    PortsMatch,
    Quota,
    Reject,
    SetUpdate,
    Simple,
    Stmt,
    VerdictMap,
    VerdictStmt,
)
from kproxy.nftables.trace import ChainTrace
from kproxy.packet import NF_ACCEPT, NF_DROP, NF_STOLEN, TCP, Packet, format_addr
from kproxy.versioned import Epoch

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node

HOOK_NAMES = {"prerouting": "PREROUTING", "input": "INPUT", "forward": "FORWARD", "output": "OUTPUT",
              "postrouting": "POSTROUTING", "ingress": INGRESS, "egress": EGRESS}
FAMILIES = {"ip": (4,), "ip6": (6,), "inet": (4, 6), "netdev": (4, 6)}
# Why a family's chains never run on the emulated node (they are loaded and listed all the same).
NOT_EVALUATED = {"bridge": "the emulated node has no bridge devices, so no packet is bridged",
                 "arp": "the emulated node does not model ARP, and arp chains see only ARP packets"}
CT_STATE_BITS = {"INVALID": 1, "ESTABLISHED": 2, "RELATED": 4, "NEW": 8, "UNTRACKED": 64}
PKTTYPE = {"unicast": 0, "host": 0, "broadcast": 1, "multicast": 2}
PORT_PROTOS = {6, 17, 132, 136}
REJECT_KIND = {("icmp", 0): "icmp-net-unreachable", ("icmp", 1): "icmp-host-unreachable",
               ("icmp", 3): "icmp-port-unreachable", ("icmp", 2): "icmp-proto-unreachable",
               ("icmp", 9): "icmp-net-prohibited", ("icmp", 10): "icmp-host-prohibited",
               ("icmp", 13): "icmp-admin-prohibited", ("icmpv6", 0): "icmp6-no-route",
               ("icmpv6", 1): "icmp6-adm-prohibited", ("icmpv6", 3): "icmp6-addr-unreachable",
               ("icmpv6", 4): "icmp6-port-unreachable"}
NAME_PREFIX = "nft:"

# Verdict signals inside the interpreter (besides NF_ACCEPT / NF_DROP).
CONTINUE, RETURN, NO_MATCH = -1, -2, -3
VERDICT_NAMES = {NF_ACCEPT: "accept", NF_DROP: "drop", RETURN: "return", CONTINUE: "continue"}


class Unsupported(Exception):
    """An expression the packet path does not evaluate yet: said plainly instead of matching wrongly."""


def attach(node: Node, ct_users: dict[int, int] | None = None) -> list[str]:
    """(Re)register the node's nftables base chains on its hooks; returns the chains left unhooked, with why.

    ``ct_users``: the ruleset's conntrack users per family when the caller already knows them (a
    transaction that touched a few chains), sparing a walk over every rule."""
    node.hooks.unregister_all(NAME_PREFIX)
    node.subsystems["nftables_runners"] = []
    for name, fam, hook in node.subsystems.pop("nftables_nat_lookups", []):
        node.nat.unregister_lookup(fam, hook, name)
    rs: Ruleset | None = node.nftables
    skipped: list[str] = []
    take_conntrack_refs(node, rs, ct_users)
    if rs is None:
        return skipped
    for t in rs.tables:
        if t.flowtables and "dormant" not in t.flags:
            hook_flowtables(node, t)
        for c in [c for c in t.chains.values() if c.hook is not None]:  # the base chains
            if t.family not in FAMILIES or c.hook not in HOOK_NAMES:
                skipped.append(not_evaluated(t, c))
                continue
            if "dormant" in t.flags:
                continue
            runner = ChainRunner(node, t, c)
            node.subsystems.setdefault("nftables_runners", []).append(runner)
            engine = on_devices(runner.hook, c) if c.devices else runner.hook
            if engine is runner.hook:
                runner.compiled.install = partial(reinstall, node)
            name = f"{NAME_PREFIX}{t.family}:{t.name}:{c.name}"
            for fam in FAMILIES[t.family]:
                hook = HOOK_NAMES[str(c.hook)]
                if c.type == "nat":
                    node.nat.register_lookup(fam, hook, c.prio, name, engine)
                    node.subsystems.setdefault("nftables_nat_lookups", []).append((name, fam, hook))
                else:
                    node.hooks.register(fam, hook, c.prio, name, engine)
    return skipped


def reinstall(node: Node, old: HookFn, new: HookFn) -> None:
    """A base chain's hook function ``new`` where ``old`` is registered, at a hook or as a nat chain."""
    node.hooks.replace(old, new)
    node.nat.replace_lookup(old, new)


def not_evaluated(t: Table, c: Chain) -> str:
    why = NOT_EVALUATED.get(t.family, f"the emulated node has no {t.family} {c.hook} hook")
    return f"table {t.family} {t.name} chain {c.name} (hook {c.hook}) is not evaluated: {why}"


def unevaluated(rs: Ruleset | None) -> list[str]:
    """What ``attach`` would leave unhooked, without attaching: the notices the commands print."""
    if rs is None:
        return []
    return [not_evaluated(t, c) for t in rs.tables for c in t.chains.values()
            if c.base and (t.family not in FAMILIES or c.hook not in HOOK_NAMES)]


def hook_flowtables(node: Node, t: Table) -> None:
    """Each flowtable's fast path at the INGRESS hook of its devices, at its priority."""
    for ft in t.flowtables.values():
        fn = offload.ingress_hook(ft.devices, ft.counter, ft.name)
        for fam in FAMILIES[t.family]:
            node.hooks.register(fam, INGRESS, ft.prio or 0, f"{NAME_PREFIX}{t.family}:{t.name}:flowtable:{ft.name}", fn)


def on_devices(fn: HookFn, c: Chain) -> HookFn:
    """A netdev (or inet ingress) chain's hook function: it runs only for its devices, as the kernel
    registers it on each device's own hook."""
    devices, ingress = frozenset(c.devices), c.hook == "ingress"

    def hook(pkt: Packet, state: HookState) -> int:
        return fn(pkt, state) if (state.in_dev if ingress else state.out_dev) in devices else NF_ACCEPT

    return hook


def forget_compiled(node: Node) -> None:
    """The node's nft tables were changed in place: the compiled chains must be built again."""
    for runner in node.subsystems.get("nftables_runners", []):
        runner.compiled.forget()
    Epoch.bump()    # what the flow cache learnt through the old chains and sets no longer holds


def conntrack_users(rs: Ruleset | None) -> dict[int, int]:
    """Per family, how many expressions need connection tracking (each takes nf_ct_netns_get at load)."""
    out = {4: 0, 6: 0}
    for t in rs.tables if rs is not None else []:
        # A nat base chain alone takes no reference (nf_nat_register_fn registers hooks only): an
        # empty nat chain leaves the namespace untracked, as the kernel lab shows.
        n = sum([chain_conntrack_users(c) for c in t.chains.values()])
        for fam in FAMILIES.get(t.family, ()):
            out[fam] += n
    return out


def chain_conntrack_users(c: Chain | None) -> int:
    """What one chain adds to ``conntrack_users`` (0 for a chain that is not there)."""
    return 0 if c is None else rules_conntrack_users(c.rules)


def rules_conntrack_users(rules: list[Rule]) -> int:
    """What some rules add to ``conntrack_users``."""
    n = 0
    for r in rules:
        for st in r.stmts:
            # the common statements decided here, without a call (a big ruleset has 500,000)
            kind = type(st)
            if kind is Nat or kind is not VerdictStmt and (
                    kind is not Match or type(st.left) in NESTED or type(st.right) in NESTED  # type: ignore[attr-defined]
            ) and _needs_ct(st):
                n += 1
    return n


NESTED = frozenset([Ct, Concat, Binop])  # expressions that hold conntrack or hold expressions


def _needs_ct(st: Stmt) -> bool:
    kind = type(st)
    if kind is Nat:
        return True
    if kind is VerdictStmt or kind is Match and type(st.left) not in NESTED and type(st.right) not in NESTED:  # type: ignore[attr-defined]
        return False  # the common statements, decided without building a work list
    if isinstance(st, Nat):
        return True
    parts: list[Expr] = []
    if isinstance(st, Match):
        parts = [st.left, st.right]
    elif isinstance(st, (Mangle,)):
        parts = [st.key, st.value]
    elif isinstance(st, VerdictMap):
        parts = [st.key]
    while parts:
        e = parts.pop()
        if isinstance(e, Ct):
            return True
        if isinstance(e, Concat):
            parts += e.items
        elif isinstance(e, Binop):
            parts += [e.left, e.right]
    return False


def take_conntrack_refs(node: Node, rs: Ruleset | None, want: dict[int, int] | None = None) -> None:
    """Hold exactly as many conntrack references as the current ruleset needs (released as rules go)."""
    held: dict[int, int] = node.subsystems.setdefault("nftables_ct_refs", {4: 0, 6: 0})
    if want is None:
        want = conntrack_users(rs)
    for fam in (4, 6):
        if want[fam] > held[fam]:
            node.conntrack.netns_get(fam, want[fam] - held[fam])
        elif want[fam] < held[fam]:
            node.conntrack.netns_put(fam, held[fam] - want[fam])
        held[fam] = want[fam]


def exact_index(s: NSet) -> dict[Any, Elem] | None:
    """A named set's elements by value when every key is exact (constants, or concatenations of
    them): a lookup is then one dict access, not a walk (kube-proxy's maps hold an element per
    Service). Rebuilt when the element list is replaced or grows; None for sets with ranges,
    prefixes or wildcards."""
    cached = s.__dict__.get("_exact")
    if cached is not None and cached[0] is s.elems and cached[1] == len(s.elems):
        return cached[2]
    index: dict[Any, Elem] | None = {}
    for e in s.elems:
        value = exact_value(e.key)
        if value is None or index is None:
            index = None
            break
        index.setdefault(value, e)
    s.__dict__["_exact"] = (s.elems, len(s.elems), index)
    return index


def exact_value(k: Expr) -> Any:
    """What a packet's value must equal to find this key (a tuple for a concatenation); None when the
    key matches more than one value."""
    consts = k.items if isinstance(k, Concat) else [k]
    values = []
    for c in consts:
        if not isinstance(c, Const) or isinstance(c.value, str) and c.value.endswith("*"):
            return None
        try:
            hash(c.value)
        except TypeError:
            return None
        values.append(c.value)
    return tuple(values) if isinstance(k, Concat) else values[0]


class ChainRunner:
    """The hook function of one base chain."""

    def __init__(self, node: Node, table: Table, chain: Chain) -> None:
        self.node = node
        self.table = table
        self.chain = chain
        self.counters: dict[int, int] = {}
        self.traced: ChainTrace | None = None  # while a traced packet runs: where its events go
        self.at: tuple[Chain, Rule, int] | None = None
        self.jumped = False
        from kproxy.nftables.compiled import Compiler

        self.compiled = Compiler(self)
        self.hook = self.compiled.entry(self.run_base)  # what the hook calls: this, without the method call
        self.limits = TokenBuckets()
        self.obj_limits: dict[int, Limit] = {}      # id(limit object) -> the bucket's statement

    def __call__(self, pkt: Packet, state: HookState) -> int:
        return self.hook(pkt, state)

    def run_base(self, pkt: Packet, state: HookState) -> int:
        """The base chain for a traced packet (``hook`` takes the compiled chain for the others)."""
        if self.table.family == "ip" and pkt.family != 4 or self.table.family == "ip6" and pkt.family != 6:
            return NF_ACCEPT
        self.traced = ChainTrace(self.table) if state.trace is not None else None
        try:
            verdict = self.run_chain(self.chain, pkt, state, 0)
        except Unsupported as exc:
            # Say so rather than guess: the packet stops here, and the trace tells why.
            if state.trace is not None:
                state.trace.add("nft", hook=state.hook, text=f"{exc} is not evaluated by the emulator: drop")
            return NF_DROP
        if verdict in (CONTINUE, RETURN):
            if self.traced is not None:
                self.traced.event(state, pkt, "policy", self.chain, self.chain.policy)
            return NF_DROP if self.chain.policy == "drop" else NF_ACCEPT
        return verdict

    def run_chain(self, chain: Chain, pkt: Packet, state: HookState, depth: int) -> int:
        if state.trace is None:
            return self.compiled.chain(chain)(pkt, state, depth)
        return self.interpret_chain(chain, pkt, state, depth)

    def interpret_chain(self, chain: Chain, pkt: Packet, state: HookState, depth: int) -> int:
        """The chain run statement by statement (for traced packets, and the reference for ``compiled``)."""
        if depth > 16:
            return NF_DROP  # the kernel refuses loops at load time; never reached with a valid ruleset
        if self.traced is not None:
            return self.run_chain_traced(chain, pkt, state, depth, self.traced)
        for rule in chain.rules:
            verdict = self.run_rule(rule, pkt, state, depth)
            if verdict == CONTINUE:
                continue
            return verdict
        return RETURN

    def run_chain_traced(self, chain: Chain, pkt: Packet, state: HookState, depth: int, traced: ChainTrace) -> int:
        """``run_chain`` recording, as nft_trace_notify does, each rule that matched and its verdict."""
        for i, rule in enumerate(chain.rules, 1):
            self.at = (chain, rule, i)
            verdict = self.run_rule(rule, pkt, state, depth, NO_MATCH)
            if verdict == NO_MATCH:
                continue
            if self.jumped:
                self.jumped = False  # the jump's own event was recorded when it was taken
            else:
                traced.event(state, pkt, "rule", chain, VERDICT_NAMES.get(verdict, "continue"), rule, i)
            if verdict != CONTINUE:
                return verdict
        return RETURN

    def run_rule(self, rule: Rule, pkt: Packet, state: HookState, depth: int, no_match: int = CONTINUE) -> int:
        for st in rule.stmts:
            verdict = self.run_stmt(st, pkt, state, depth)
            if verdict is None:
                return no_match  # a match failed: next rule
            if verdict != CONTINUE:
                return verdict
        return CONTINUE

    # ---- statements ---------------------------------------------------------------------------
    def run_stmt(self, st: Stmt, pkt: Packet, state: HookState, depth: int) -> int | None:
        """CONTINUE to go on with the rule, None when a match failed, else the rule's verdict."""
        if isinstance(st, Match):
            return CONTINUE if self.matches(st, pkt, state) else None
        if isinstance(st, VerdictStmt):
            return self.verdict(st.verdict, pkt, state, depth)
        if isinstance(st, Counter):
            if st.name is not None:
                ob = self.table.objs.get(("counter", st.name))
                if ob is not None:
                    ob.values["packets"] += 1
                    ob.values["bytes"] += pkt.length
            else:
                st.packets += 1
                st.bytes += pkt.length
                rec = state.trace
                if rec is not None and rec.counted is not None:
                    rec.counted.append(("nft", st))   # the flow cache's recording: replayed by counting it
            return CONTINUE
        if isinstance(st, VerdictMap):
            found = self.lookup(st.data, self.value(st.key, pkt, state))
            if isinstance(found, Verdict):
                return self.verdict(found, pkt, state, depth)
            return None     # a miss is NFT_BREAK: the rest of the rule does not run
        if isinstance(st, Mangle):
            return self.mangle(st, pkt, state)
        if isinstance(st, Nat):
            return self.nat(st, pkt, state)
        if isinstance(st, Reject):
            if st.kind == "tcp reset" and pkt.proto != TCP:
                # nft always puts a transport protocol match before it, which the parser may have
                # folded into the reject (as the listing hides it): a packet of another protocol
                # does not match the rule.
                return None
            state.rejected_with = self.reject_kind(st, pkt)
            return NF_DROP
        if isinstance(st, SetUpdate):
            self.update_set(st, pkt, state)
            return CONTINUE
        if isinstance(st, Forward):
            return self.forward(st, pkt, state)
        if isinstance(st, objmap.ObjMap):
            name = self.value(st.map, pkt, state)
            if name is None:
                return None     # no element for the key: NFT_BREAK
            return self.run_stmt(Counter(name=str(name)) if st.kind == "counter" else ObjRef(st.kind, str(name)),
                                 pkt, state, depth)
        if isinstance(st, ObjRef) and st.kind == "limit":
            ob = self.table.objs.get(("limit", st.name))
            if ob is None:
                return CONTINUE
            lim = self.obj_limits.get(id(ob))
            if lim is None:
                v = ob.values
                lim = self.obj_limits[id(ob)] = Limit(v["rate"], v["per"], v.get("burst", 0 if v.get("unit") else 5),
                                                      v.get("unit"), v.get("burst_unit", "bytes"), bool(v.get("over")))
            return None if self.limits.over(lim, pkt.length, self.node.now()) != lim.over else CONTINUE
        if isinstance(st, dup.Dup):
            to = self.value(st.addr, pkt, state)
            if to is None:
                return None     # a map without the key breaks the rule
            if state.trace is not None:   # nft_dup_ipv4_eval, as iptables' TEE: a clone routed to the address
                via = f" via {st.dev}" if st.dev is not None else ""
                state.trace.add("note", hook=state.hook, text=f"dup: a copy of {pkt.describe()} is sent to "
                                f"{format_addr(int(to), 6 if self.table.family == 'ip6' else 4)}{via}")
            return CONTINUE
        if isinstance(st, cthelper.CtHelperSet):
            name = self.value(st.value, pkt, state)
            if name is None:
                return None     # a map without the key breaks the rule
            cthelper.assign(self.table.objs.get((cthelper.KIND, str(name))), pkt)
            return CONTINUE
        if isinstance(st, FlowAdd):
            offload.flow_add(pkt, state)
            return CONTINUE
        if isinstance(st, Simple) and st.word == "notrack":
            if pkt.ct is None:      # nft_notrack_eval: a packet conntrack already took is left alone
                pkt.notrack = True
            return CONTINUE
        if isinstance(st, Quota):
            return None if quota_exceeded(st, pkt.length) != st.over else CONTINUE
        if isinstance(st, Limit):
            return None if self.limits.over(st, pkt.length, self.node.now()) != st.over else CONTINUE
        if isinstance(st, ObjRef) and st.kind == "quota":
            ob = self.table.objs.get(("quota", st.name))
            if ob is None:
                return CONTINUE
            v = ob.values
            q = Quota(v["value"], v["unit"], bool(v.get("over")), v.get("used", 0), v.get("used_unit", "bytes"))
            exceeded = quota_exceeded(q, pkt.length)
            v.update(used=q.used, used_unit=q.used_unit)
            return None if exceeded != q.over else CONTINUE
        # log and the other statements without a verdict
        return CONTINUE

    def forward(self, st: Forward, pkt: Packet, state: HookState) -> int:
        """``dup to DEV`` sends a copy out of DEV and goes on; ``fwd to DEV`` sends the packet itself
        (nf_fwd_netdev_egress: straight to the device's transmit, skipping its egress hook)."""
        from kproxy.netfilter.path import FORWARDED, Result

        if state.trace is not None:
            state.trace.add("note", hook=state.hook, text=f"{st.kind} to {st.dev}: {pkt.describe()} sent out of {st.dev}")
        if st.kind == "dup":
            return CONTINUE
        pkt.oif = st.dev
        res = Result(FORWARDED, pkt, state.hook, st.dev, trace=state.trace)
        if state.trace is not None:
            state.trace.add("fate", hook=state.hook, verdict=res.fate, text=res.summary())
        pkt.meta["reinjected"] = res
        return NF_STOLEN

    def update_set(self, st: SetUpdate, pkt: Packet, state: HookState) -> None:
        """``add @s { key }`` / ``update @s { key ... }``: the packet's key becomes an element of the set."""
        s = self.table.sets.get(st.set_name)
        v = self.value(st.key, pkt, state)
        if s is None or v is None or self.lookup(SetRef(st.set_name), v) is not None:
            return
        parts = v if isinstance(v, tuple) else (v,)
        consts = [Const(dt, x) for dt, x in zip(s.key, parts)]
        key: Expr = consts[0] if len(consts) == 1 else Concat(list(consts))
        s.elems.append(Elem(key, timeout=st.timeout))

    def verdict(self, v: Verdict, pkt: Packet, state: HookState, depth: int) -> int:
        if v.kind == "accept":
            return NF_ACCEPT
        if v.kind == "drop":
            return NF_DROP
        if v.kind == "return":
            return RETURN
        if v.kind == "continue":
            return CONTINUE
        target = self.table.chains.get(v.target or "")
        if target is None:
            return NF_DROP
        if self.traced is not None and self.at is not None:
            chain, rule, number = self.at
            self.traced.event(state, pkt, "rule", chain, f"{v.kind} {v.target}", rule, number)
        result = self.run_chain(target, pkt, state, depth + 1)
        self.jumped = self.traced is not None
        if result == RETURN:
            # A jump comes back to the next rule; a goto returns to where the calling chain was called.
            return CONTINUE if v.kind == "jump" else RETURN
        return result

    def mangle(self, st: Mangle, pkt: Packet, state: HookState) -> int | None:
        value = self.value(st.value, pkt, state)
        if value is None:
            return None     # the value's expression broke the rule (a map without the key, no ct entry)
        key = st.key
        if isinstance(key, Meta) and key.key == "mark":
            pkt.mark = int(value) & 0xFFFFFFFF
        elif isinstance(key, Ct) and key.key == "mark":
            if pkt.ct is not None:      # nft_ct_set_eval: no entry (before conntrack, untracked): nothing
                pkt.ct.mark = int(value) & 0xFFFFFFFF
        elif isinstance(key, Ct) and key.key == "zone":
            # nft_ct_set_zone_eval: a template carrying the zone, for the lookup still to come; a packet
            # already attached (tracked, or templated by an earlier ``ct zone set``) keeps its own
            if pkt.ct is None and not pkt.zone_dir:
                pkt.zone = int(value) & 0xFFFF
                pkt.zone_dir = {"original": 1, "reply": 2}.get(key.direction or "", 3)
        elif isinstance(key, Meta) and key.key == "nftrace":
            pkt.trace = bool(int(value) & 1)  # skb->nf_trace, the bit iptables' TRACE sets too
        else:
            raise Unsupported(f"{key.text(_OPTS)} set")
        return CONTINUE

    def nat(self, st: Nat, pkt: Packet, state: HookState) -> int | None:
        node = self.node
        mapped: Any = None
        if isinstance(st.addr, MapExpr):
            # The key is evaluated once (a numgen key counts every evaluation).
            mapped = self.lookup(st.addr.data, self.value(st.addr.key, pkt, state))
            if mapped is None:
                return None     # nft_lookup misses: NFT_BREAK, the rule does not apply
        fam = pkt.family
        if st.kind == "masquerade":
            route = node.route(fam, pkt.dst)
            nexthop = route.gateway if route.gateway is not None else pkt.dst
            addr = node.source_address_for(fam, state.out_dev, nexthop)
            lo = hi = addr
            if addr is None:
                return NF_DROP
        elif st.kind == "redirect":
            addr = (0x7F000001 if fam == 4 else 1) if state.hook == "OUTPUT" else node.primary_address(state.in_dev,
                                                                                                        fam)
            if addr is None:
                return NF_DROP
            lo = hi = addr
        elif mapped is not None:
            lo, hi = mapped_range(mapped.items[0] if isinstance(mapped, Concat) else mapped)
        else:
            lo, hi = self.nat_range(st.addr, pkt, state)
        plo, phi = self.nat_range(st.port, pkt, state)
        if isinstance(mapped, Concat) and plo is None:          # address . port
            plo, phi = mapped_range(mapped.items[1])
        rng = NatRange(lo, hi, plo, phi, "random" in st.flags, "fully-random" in st.flags,
                       "persistent" in st.flags)
        manip = "SRC" if st.kind in ("snat", "masquerade") else "DST"
        verdict: int = node.nat.setup(pkt, rng, manip, state)
        return verdict

    def nat_range(self, e: Expr | None, pkt: Packet, state: HookState) -> tuple[int | None, int | None]:
        """A NAT statement's address or port part as (low, high): a range, one value, or none given."""
        if e is None:
            return None, None
        if isinstance(e, Range):
            return e.lo.value, e.hi.value
        v = self.value(e, pkt, state)
        return v, v

    def reject_kind(self, st: Reject, pkt: Packet) -> str:
        if st.kind == "tcp reset":
            return "tcp-reset"
        if st.kind in ("icmp", "icmpv6") and st.code is not None:
            return REJECT_KIND.get((st.kind, st.code.value), "icmp-port-unreachable")
        if st.kind == "icmpx" and st.code is not None:
            icmpx = {0: ("net-unreachable", "no-route"), 1: ("port-unreachable", "port-unreachable"),
                     2: ("host-unreachable", "addr-unreachable"), 3: ("admin-prohibited", "adm-prohibited")}
            v4, v6 = icmpx[st.code.value]
            return f"icmp-{v4}" if pkt.family == 4 else f"icmp6-{v6}"
        return "icmp-port-unreachable" if pkt.family == 4 else "icmp6-port-unreachable"

    # ---- matches --------------------------------------------------------------------------------
    def matches(self, m: Match, pkt: Packet, state: HookState) -> bool:
        if type(m) is PortsMatch:
            # nft's one comparison of both ports, listed as two matches: the sport half decides.
            if m.ports is None:
                return True
            if self.value(m.left, pkt, state) is None:
                return False    # the packet is not of the protocol the ports are named by
            return (pkt.sport << 16 | pkt.dport == m.ports) == (m.op == "==")
        left = m.left
        if isinstance(left, Binop) and left.op == "&":
            v = self.value(left.left, pkt, state)
            mask = self.value(left.right, pkt, state)
            if v is None or mask is None:
                return False
            v &= mask
        else:
            v = self.value(left, pkt, state)
        if v is None:
            return False  # the implicit protocol dependency did not hold
        right = m.right
        if m.op == "in":
            assert isinstance(right, Const)
            return bool(v & right.value)
        if isinstance(right, (SetLit, SetRef)):
            hit = self.lookup(right, v) is not None
            return hit if m.op == "==" else not hit
        ok = self.compare(v, m.op, right, pkt, state)
        return ok

    def compare(self, v: Any, op: str, right: Expr, pkt: Packet, state: HookState) -> bool:
        if isinstance(right, Prefix):
            hit = self.in_prefix(v, right)
            return hit if op == "==" else not hit
        if isinstance(right, Range):
            hit = right.lo.value <= v <= right.hi.value
            return hit if op == "==" else not hit
        r = self.value(right, pkt, state)
        if isinstance(v, str) and isinstance(r, str) and r.endswith("*"):
            hit = v.startswith(r[:-1])
            return hit if op == "==" else not hit
        if op == "==":
            return bool(v == r)
        if op == "!=":
            return bool(v != r)
        if r is None:
            return False
        return bool({"<": v < r, ">": v > r, "<=": v <= r, ">=": v >= r}[op])

    @staticmethod
    def in_prefix(v: int, p: Prefix) -> bool:
        bits = p.base.ctype.bits or 32
        return v >> (bits - p.length) == p.base.value >> (bits - p.length)

    def lookup(self, where: Expr, v: Any) -> Any:
        """The element (or its data) a value finds in an anonymous or named set; None when absent."""
        if v is None:
            return None
        if isinstance(where, SetLit):
            elems = where.elems
        else:
            named = self.named(where)
            index = exact_index(named)
            if index is not None:
                e = index.get(v)
                return None if e is None else e.data if e.data is not None else e
            elems = named.elems
        for e in elems:
            if self.elem_has(e, v):
                return e.data if e.data is not None else e
        return None

    def named(self, where: Expr) -> NSet:
        assert isinstance(where, SetRef)
        return self.table.sets[where.name]

    def elem_has(self, e: Elem, v: Any) -> bool:
        k = e.key
        if isinstance(k, Concat):
            return isinstance(v, tuple) and len(v) == len(k.items) and all(
                self.key_has(i, x) for i, x in zip(k.items, v))
        return self.key_has(k, v)

    def key_has(self, k: Expr, v: Any) -> bool:
        if isinstance(k, Prefix):
            return self.in_prefix(v, k)
        if isinstance(k, Range):
            return bool(k.lo.value <= v <= k.hi.value)
        if isinstance(k, Const):
            if isinstance(k.value, str) and k.value.endswith("*"):
                return isinstance(v, str) and v.startswith(k.value[:-1])
            return bool(k.value == v)
        return False

    # ---- values -----------------------------------------------------------------------------------
    def value(self, e: Expr, pkt: Packet, state: HookState) -> Any:
        if isinstance(e, Const):
            return e.value
        if isinstance(e, Payload):
            return payload(e, pkt)
        if isinstance(e, Meta):
            return self.meta(e.key, pkt, state)
        if isinstance(e, Ct):
            return ct_value(e, pkt)
        if isinstance(e, Concat):
            parts = tuple(self.value(i, pkt, state) for i in e.items)
            return None if None in parts else parts
        if isinstance(e, Binop):
            a, b = self.value(e.left, pkt, state), self.value(e.right, pkt, state)
            if a is None or b is None:
                return None
            return BINOPS[e.op](a, b)
        if isinstance(e, Numgen):
            if e.mode == "inc":
                n = self.counters.get(id(e), 0)
                self.counters[id(e)] = n + 1
                return n % e.mod + e.offset
            from kproxy.iptables.ext.statistic import node_rng

            return node_rng(self.node).randrange(e.mod) + e.offset   # the node's one random source
        if isinstance(e, Hash):
            if e.kind == "jhash" and e.expr is not None and e.seed is not None:
                data = register_bytes(e.expr, self.value(e.expr, pkt, state))
                return None if data is None else (jhash(data, e.seed) * e.mod >> 32) + e.offset
            # symhash and an unseeded jhash use a seed the kernel draws at random: any spread will do.
            inner = self.value(e.expr, pkt, state) if e.expr is not None else (pkt.src, pkt.dst, pkt.sport, pkt.dport)
            return hash((inner, e.seed)) % e.mod + e.offset
        if isinstance(e, Fib):
            return self.fib(e, pkt, state)
        if isinstance(e, X.Exthdr):
            return X.value(e, pkt)
        if isinstance(e, MapExpr):
            found = self.lookup(e.data, self.value(e.key, pkt, state))
            return self.value(found, pkt, state) if isinstance(found, Expr) and not isinstance(found, Elem) else None
        raise Unsupported(e.text(_OPTS))

    def meta(self, key: str, pkt: Packet, state: HookState) -> Any:
        if key == "l4proto":
            return pkt.proto
        if key == "nfproto":
            return 2 if pkt.family == 4 else 10
        if key == "protocol":
            return 0x0800 if pkt.family == 4 else 0x86DD
        if key in ("iifname", "iif"):
            return state.in_dev or None
        if key in ("oifname", "oif"):
            return state.out_dev or None
        if key == "mark":
            return pkt.mark
        if key == "length":
            return pkt.length
        if key == "pkttype":
            return PKTTYPE.get(pkt.pkttype, 3)
        if key in ("skuid", "skgid"):
            return pkt.meta.get(key[2:]) if pkt.local else None
        if key == "nftrace":
            return int(pkt.trace)
        if key == "random":     # the node's one random source, which -m statistic draws from too
            from kproxy.iptables.ext.statistic import node_rng

            return node_rng(self.node).getrandbits(32)
        raise Unsupported(f"meta {key}")

    def fib(self, e: Fib, pkt: Packet, state: HookState) -> Any:
        if e.flags[0] not in ("daddr", "saddr"):
            raise Unsupported(e.text(_OPTS))
        if e.result != "type":
            return fib_result(e, fib_device(self.node, e, pkt, state))
        addr = pkt.dst if e.flags[0] == "daddr" else pkt.src
        if self.node.is_local(pkt.family, addr):
            return 2
        if pkt.family == 4 and addr in self.node._broadcast[4]:
            return 3
        if pkt.family == 4 and addr >> 28 == 0xE or pkt.family == 6 and addr >> 120 == 0xFF:
            return 5
        return 1


def fib_device(node: Any, e: Fib, pkt: Packet, state: HookState) -> str:
    """nft_fib4_eval / nft_fib6_eval: the device the route to the address (daddr, or saddr for a
    reverse-path check) leaves by; "" when there is none: no route, a local, unreachable or blackhole
    route, or (with ``iif`` / ``oif``) a route that does not use the packet's own device. A packet
    looped back arrives at prerouting from its own device."""
    if state.hook == "PREROUTING" and state.in_dev == "lo":
        return "lo"
    res = node.route(pkt.family, pkt.dst if e.flags[0] == "daddr" else pkt.src)
    dev = res.dev if res.type == "unicast" else ""
    own = state.in_dev if "iif" in e.flags else state.out_dev if "oif" in e.flags else ""
    if own and dev != own:
        return ""
    return dev


def fib_result(e: Fib, dev: str) -> Any:
    """The register nft_fib_store_result fills: presence, the index (0 when none; kproxy names devices)
    or the name (zeros when none)."""
    if e.present:
        return int(bool(dev))
    if e.result == "oif":
        return dev or 0
    return dev


BYTE_UNIT = {"bytes": 1, "kbytes": 1 << 10, "mbytes": 1 << 20, "gbytes": 1 << 30}
PER_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def quota_exceeded(q: Quota, length: int) -> bool:
    """nft_overquota: the packet's bytes are consumed first, then the quota is exceeded once the
    consumption reaches it. The listing's ``used`` is the consumption capped at the quota."""
    limit = q.value * BYTE_UNIT.get(q.unit, 1)
    consumed = min(limit, q.used * BYTE_UNIT.get(q.used_unit, 1) + length)
    q.used, q.used_unit = consumed, "bytes"
    while q.used and q.used % 1024 == 0 and q.used_unit != "mbytes":      # get_rate: mbytes at most
        q.used //= 1024
        q.used_unit = {"bytes": "kbytes", "kbytes": "mbytes"}[q.used_unit]
    return consumed >= limit


class TokenBuckets:
    """nft_limit's token buckets, one per limit statement, in nanoseconds of the node's clock: a
    packet costs unit/rate (bytes: unit*len/rate); the bucket starts full and holds burst packets'
    worth (bytes: unit*(rate+burst)/rate); a packet the bucket cannot pay for is over the limit."""

    def __init__(self) -> None:
        self.state: dict[int, tuple[int, int]] = {}      # id(statement) -> (tokens, last)

    def over(self, lim: Limit, length: int, now: float) -> bool:
        nsecs = PER_SECONDS.get(lim.per, 1) * 1_000_000_000
        if lim.unit is None:
            cost, tokens_max = nsecs // lim.rate, nsecs // lim.rate * (lim.burst or 5)
        else:
            rate = lim.rate * BYTE_UNIT.get(lim.unit, 1)
            burst = lim.burst * BYTE_UNIT.get(lim.burst_unit, 1)
            cost, tokens_max = nsecs * length // rate, nsecs * (rate + burst) // rate
        t_now = int(now * 1_000_000_000)
        tokens, last = self.state.get(id(lim), (tokens_max, t_now))
        tokens = min(tokens_max, tokens + t_now - last)
        if tokens >= cost:
            self.state[id(lim)] = (tokens - cost, t_now)
            return False
        self.state[id(lim)] = (tokens, t_now)
        return True


BINOPS: dict[str, Callable[[int, int], int]] = {"&": lambda a, b: a & b, "|": lambda a, b: a | b,
                                                "^": lambda a, b: a ^ b, "<<": lambda a, b: a << b,
                                                ">>": lambda a, b: a >> b}


def mapped_range(found: Any) -> tuple[int | None, int | None]:
    """A NAT map entry's address (or port) as a range: a range element, or one value."""
    if isinstance(found, Range):
        return found.lo.value, found.hi.value
    if isinstance(found, Const):
        return found.value, found.value
    raise Unsupported("a NAT map entry that is neither a value nor a range")


def register_bytes(e: Expr, v: Any) -> bytes | None:
    """A value as nft_jhash reads it from the registers: header fields and conntrack addresses and
    ports in network order, meta and other conntrack keys in host (little-endian) order; each part of
    a concatenation padded to a 32-bit register."""
    if v is None:
        return None
    if isinstance(e, Concat):
        parts = [register_bytes(i, x) for i, x in zip(e.items, v)]
        if any(p is None for p in parts):
            return None
        return b"".join(p.ljust(-(-len(p) // 4) * 4, b"\0") for p in parts if p is not None)
    size = max(1, (e.dtype.bits + 7) // 8)
    if isinstance(v, str):
        return v.encode().ljust(size, b"\0")
    network = isinstance(e, Payload) or isinstance(e, Ct) and e.key in ("saddr", "daddr", "proto-src", "proto-dst")
    return int(v).to_bytes(size, "big" if network else "little")


def payload(e: Payload, pkt: Packet) -> Any:
    """A header field, or None when the packet does not have that header (nft's implicit dependency)."""
    if isinstance(e, RawPayload):
        return raw_value(e, pkt)
    proto, fld = e.proto, e.field
    if proto == "ether":
        if fld != "type":
            raise Unsupported(f"ether {fld} (the emulated node's packets carry no Ethernet addresses)")
        return 0x0800 if pkt.family == 4 else 0x86DD
    if proto == "vlan":
        return None        # the node's packets are never VLAN-tagged: no VLAN header to read
    if proto in ("ip", "ip6"):
        if pkt.family != (4 if proto == "ip" else 6):
            return None
        return {"saddr": pkt.src, "daddr": pkt.dst, "protocol": pkt.proto, "nexthdr": pkt.nexthdr, "ttl": pkt.ttl,
                "hoplimit": pkt.ttl, "length": pkt.length}.get(fld)
    if proto == "th":
        return (pkt.sport if fld == "sport" else pkt.dport) if pkt.proto in PORT_PROTOS else None
    if TRANSPORT.get(proto) != pkt.proto:
        return None
    if fld in ("sport", "dport"):
        return pkt.sport if fld == "sport" else pkt.dport
    if fld == "flags":
        return pkt.tcp_flags
    if fld == "type":
        return pkt.icmp_type
    if fld == "code":
        return pkt.icmp_code
    if fld == "id":
        return pkt.icmp_id
    return None


def raw_value(e: RawPayload, pkt: Packet) -> Any:
    """A raw range of the transport header's first 32 bits (the ports: what nft's merges make);
    None when the packet has no ports."""
    if e.proto != "th" or e.offset + e.length > 32 or e.length <= 0:
        raise Unsupported(e.text(_OPTS))
    if pkt.proto not in PORT_PROTOS:
        return None
    ports = pkt.sport << 16 | pkt.dport
    return ports >> (32 - e.offset - e.length) & ((1 << e.length) - 1)


def ct_value(e: Ct, pkt: Packet) -> Any:
    conn = pkt.ct
    if e.key == "state":
        # Before conntrack has seen the packet (a chain below priority -200) nft_ct_get finds no
        # entry and no untracked mark: INVALID, as the kernel lab shows.
        return CT_STATE_BITS.get(pkt.ctstate or "INVALID", 64) if not pkt.notrack else 64
    if conn is None:
        return None
    if e.key == "direction":
        return pkt.ctdir
    if e.key == "zone":
        return conn.zone if e.direction is None else conn.zone_id(0 if e.direction == "original" else 1)
    if e.key in ("mark", "status"):
        return getattr(conn, e.key)
    if e.key == "helper":
        # nft_ct_get_eval: the helper of the connection's master (an expected, RELATED connection), as
        # the helper match; the emulated conntrack records one only where a caller set master_helper
        return getattr(conn, "master_helper", None) or None
    if e.key in ("saddr", "daddr", "proto-src", "proto-dst"):
        tup = conn.orig if (e.direction or "original") == "original" else conn.reply
        attr = {"saddr": "src", "daddr": "dst", "proto-src": "sport", "proto-dst": "dport"}[e.key]
        return getattr(tup, attr, None)
    raise Unsupported(e.text(_OPTS))


_OPTS = Opts()
