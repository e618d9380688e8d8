"""The iptables data model: tables of chains of rules, with the kernel's counters.

This is what ``iptables-restore`` builds, ``iptables-save`` prints, the argv commands edit, and the
evaluator compiles into the engine's executable form.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kproxy.iptables.extension import Match, Target
from kproxy.layered import cow_copy
from kproxy.netfilter.hooks import TABLE_HOOKS

STANDARD_VERDICTS = ("ACCEPT", "DROP", "RETURN", "QUEUE")


class Net(NamedTuple):
    """An address with prefix length (``-s 10.0.0.0/8``); matching is ``addr & mask == net``.

    A named tuple rather than a frozen dataclass: a restore builds one per ``-s``/``-d``, and a
    tuple is built several times faster."""

    family: int
    addr: int
    prefixlen: int

    @property
    def bits(self) -> int:
        return 32 if self.family == 4 else 128

    @property
    def mask(self) -> int:
        return ((1 << self.bits) - 1) ^ ((1 << (self.bits - self.prefixlen)) - 1)

    def contains(self, addr: int) -> bool:
        return (addr & self.mask) == self.addr


@dataclass(eq=False, slots=True)
class Rule:
    """One rule: the ip header part, the extension matches in order, and a verdict or target.

    ``jump`` holds a standard verdict (ACCEPT, DROP, RETURN, QUEUE) or a user chain's name;
    ``goto`` marks ``-g``. ``target`` holds an extension target (DNAT, MARK, ...). At most one
    of ``jump`` and ``target`` is set; neither means the rule only counts.
    """

    src: Net | None = None
    src_inv: bool = False
    dst: Net | None = None
    dst_inv: bool = False
    iif: str | None = None
    iif_inv: bool = False
    oif: str | None = None
    oif_inv: bool = False
    proto: int = 0            # 0 = all
    proto_inv: bool = False
    fragment: bool | None = None   # -f (True), ! -f (False), absent (None)
    matches: list[Match] = field(default_factory=list)
    jump: str | None = None
    goto: bool = False
    target: Target | None = None
    packets: int = 0
    bytes: int = 0


def rule_fields(rule: Rule) -> tuple[Any, ...]:
    """Everything a rule holds, its extensions by class and state: two rules with equal fields
    behave, print and count alike (used to check rules built without the parser)."""
    def ext(e: Any) -> tuple[Any, ...]:
        state = vars(e) if hasattr(e, "__dict__") else {k: getattr(e, k) for k in getattr(e, "__slots__", ())}
        return type(e), sorted(state.items())

    return (rule.src, rule.src_inv, rule.dst, rule.dst_inv, rule.iif, rule.iif_inv, rule.oif, rule.oif_inv,
            rule.proto, rule.proto_inv, rule.fragment, [ext(m) for m in rule.matches], rule.jump, rule.goto,
            ext(rule.target) if rule.target is not None else None, rule.packets, rule.bytes)


CONNTRACK_USE = "conntrack"


def rule_uses(r: Rule) -> list[str]:
    """What a committed rule holds a reference to, as its extensions declare: ``CONNTRACK_USE`` for
    each extension that turns tracking on, and ``set:NAME`` for each ipset it names."""
    out: list[str] = []
    exts: list[Any] = [*r.matches, r.target] if r.target is not None else r.matches
    for e in exts:
        if not e.HOLDS_REFS:
            continue
        if e.needs_conntrack():
            out.append(CONNTRACK_USE)
        out.extend("set:" + name for name in e.set_names())
    return out


@dataclass(eq=False, slots=True)
class Chain:
    """A chain; built-in chains have a ``policy`` (ACCEPT or DROP) and counters for it."""

    name: str
    policy: str | None = None
    rules: list[Rule] = field(default_factory=list)
    packets: int = 0
    bytes: int = 0

    @property
    def builtin(self) -> bool:
        return self.policy is not None


@dataclass(eq=False, slots=True)
class Table:
    """One table of one family (``filter``, ``nat``, ...) with its chains in creation order."""

    name: str
    family: int = 4
    chains: MutableMapping[str, Chain] = field(default_factory=dict)
    # Copy-on-write working copies: chains already private to this copy (None: all of them), and the
    # chains deleted since the copy was made (checked for remaining references at commit).
    owned: set[str] | None = None
    deleted: set[str] = field(default_factory=set)
    base: Table | None = None              # the committed table a working copy was made from
    refs: MutableMapping[str, int] | None = None    # jumps and gotos per target chain, kept incrementally
    uses: dict[str, int] | None = None     # conntrack and set references (``rule_uses``), likewise

    def jump_counts(self) -> MutableMapping[str, int]:
        """How many rules target each chain; derived from the base table's counts for copy-on-write copies."""
        if self.refs is None:
            self._count()
        assert self.refs is not None
        return self.refs

    def use_counts(self) -> dict[str, int]:
        """The references the table's rules hold while committed (``rule_uses``), kept like ``jump_counts``."""
        if self.uses is None:
            self._count()
        assert self.uses is not None
        return self.uses

    def _count(self) -> None:
        """Both counts (those not known yet) in one walk: over every rule, or, for a copy-on-write
        copy, over the chains it changed only, from the base table's counts."""
        want_refs, want_uses = self.refs is None, self.uses is None
        refs: MutableMapping[str, int] = {}
        uses: dict[str, int] = {}
        if self.owned is None or self.base is None:
            walk: list[tuple[Chain | None, int]] = [(c, 1) for c in self.chains.values()]
        else:
            base = self.base
            if want_refs:
                refs = cow_copy(base.jump_counts())     # copy-on-write: costs what changes
            if want_uses:
                uses = dict(base.use_counts())
            walk = [(chain, sign) for name in self.owned | self.deleted
                    for chain, sign in ((base.chains.get(name), -1), (self.chains.get(name), 1))]
        for chain, sign in walk:
            if chain is None:
                continue
            for r in chain.rules:
                j = r.jump
                if want_refs and j is not None:
                    refs[j] = refs.get(j, 0) + sign
                if want_uses:
                    t = r.target
                    if (t is not None and t.HOLDS_REFS) or any(m.HOLDS_REFS for m in r.matches):
                        for k in rule_uses(r):
                            uses[k] = uses.get(k, 0) + sign
        if want_refs:
            self.refs = refs
        if want_uses:
            self.uses = uses

    def writable(self, name: str) -> Chain:
        """The chain ``name`` ready to be changed: cloned first when it is still shared with the committed table."""
        c = self.chains[name]
        if self.owned is None or name in self.owned:
            return c
        c = Chain(c.name, c.policy, list(c.rules), c.packets, c.bytes)
        self.chains[name] = c
        self.owned.add(name)
        return c

    def flush(self, name: str) -> Chain:
        """Chain ``name`` emptied, made private to this copy without copying the rules it had."""
        c = self.chains[name]
        if self.owned is None or name in self.owned:
            c.rules = []
            return c
        c = Chain(c.name, c.policy, [], c.packets, c.bytes)
        self.chains[name] = c
        self.owned.add(name)
        return c

    def add_chain(self, chain: Chain) -> None:
        self.chains[chain.name] = chain
        if self.owned is not None:
            self.owned.add(chain.name)
        self.deleted.discard(chain.name)

    def remove_chain(self, name: str) -> None:
        del self.chains[name]
        self.deleted.add(name)
        if self.owned is not None:
            self.owned.discard(name)

    @classmethod
    def new(cls, name: str, family: int = 4) -> Table:
        """A fresh table with its built-in chains, policies ACCEPT, as the kernel registers it."""
        if name not in TABLE_HOOKS:
            raise ValueError(f"can't initialize iptables table `{name}': Table does not exist (do you need to insmod?)")
        t = cls(name, family)
        for hook in TABLE_HOOKS[name]:
            t.chains[hook] = Chain(hook, "ACCEPT")
        return t

    def references(self, chain: str) -> int:
        """How many rules jump or go to ``chain`` (what ``-L`` prints as references)."""
        return self.jump_counts().get(chain, 0)
