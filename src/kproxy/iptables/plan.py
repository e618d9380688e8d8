"""Parse plans: an ``-A`` rule line's shape parsed once, then replayed for every line of that shape.

A restore input repeats a handful of shapes many thousand times (kube-proxy writes
``-A KUBE-SEP-… -m comment --comment … -m tcp -p tcp -j DNAT --to-destination …`` once per endpoint).
How the general parser dispatches a line — which option belongs to the core, to which match or
to the target, and how many values each takes — depends only on the option tokens, the ``!``
flags, and the names after ``-m``, ``-p`` and ``-j``. A plan records that dispatch from one
line that parsed cleanly; a later line with the same option tokens and the same names is parsed
by running only the value parsers (addresses, interfaces, each extension's ``from_options``).

The plan never decides an error: any failure while replaying falls back to the general parser,
which reports the real tool's error for that line.
"""

from __future__ import annotations

from typing import Any

from kproxy.iptables.extension import MATCHES, TARGETS, Opt
from kproxy.iptables.model import STANDARD_VERDICTS, Net, Rule
from kproxy.iptables.parser import (
    COMMANDS,
    CORE,
    IFNAMSIZ,
    PROTO_MATCH,
    Command,
    _expand,
    _set_target,
    extension_for,
    parse_command,
    parse_nets,
)

# The tokens a shape keeps: option names and the names that change how a line dispatches. Other
# tokens (addresses, ports, comments, chain names) are blanked, so lines differing only in those
# share a plan. Options of extensions registered later are added when a plan first meets them.
_VOCAB: dict[str, str] = {t: t for t in [*COMMANDS, *CORE, "!", *MATCHES, *TARGETS, *STANDARD_VERDICTS,
                                         *PROTO_MATCH.values()]}
for _options in [*(m.OPTIONS for m in MATCHES.values()), *(t.OPTIONS for t in TARGETS.values())]:
    _VOCAB.update((f"--{o}", f"--{o}") for o in _options)
_PLANNED_CORE = frozenset("sdiopfjgm")
_MAX_PLANS = 4096
_MAX_MEMO = 50_000          # remembered extension objects per plan slot


def shape(argv: list[str]) -> tuple[str | None, ...]:
    """A line's shape: its option tokens and dispatching names in place, other tokens as None.

    Two lines of one shape dispatch alike: every token the general parser reads as an option is
    in the vocabulary (a line that parsed cleanly has no other), and values are taken by count.
    """
    return tuple(map(_VOCAB.get, argv))


class _Slot:
    """One extension of a plan: its class and where each of its options' values are in the line.

    A stateless extension is remembered per value tuple, as long as values repeat often enough
    to pay for it (kube-proxy's comments and ports do; its DNAT addresses do not)."""

    __slots__ = ("cls", "opts", "positions", "single", "memo", "misses", "hits")

    def __init__(self, cls: Any, opts: list[tuple[str, int, int, bool]]) -> None:
        self.cls = cls
        self.opts = opts
        self.positions = [p for _, s, n, _ in opts for p in range(s, s + n)]
        self.single = self.positions[0] if len(self.positions) == 1 else -1    # the usual one value
        self.memo: dict[Any, Any] | None = {} if cls.SHAREABLE else None
        self.misses = self.hits = 0

    def build(self, argv: list[str], family: int, rule: Rule) -> Any:
        memo = self.memo
        if memo is None:
            return self.cls.from_options(self._opts(argv), family, rule)
        # The key: the slot's one value itself, else the tuple of its values.
        key = argv[self.single] if self.single >= 0 else tuple([argv[p] for p in self.positions])
        ext = memo.get(key)
        if ext is not None:
            self.hits += 1
            return ext
        ext = extension_for(self.cls, self._opts(argv), family, rule)
        if not ext.stateful:
            if len(memo) >= _MAX_MEMO:          # a long-lived process sees values come and go
                memo.clear()
            memo[key] = ext
        self.misses += 1
        if self.misses >= 1024 and self.misses > 3 * self.hits:      # values hardly repeat
            self.memo = None
        return ext

    def _opts(self, argv: list[str]) -> list[Opt]:
        return [Opt(name, argv[s:s + n], inv) for name, s, n, inv in self.opts]


class RulePlan:
    """How one shape of ``-A`` line parses; ``run`` returns the Command or None (use the general parser)."""

    __slots__ = ("fixed", "chain_pos", "proto", "proto_inv", "fragment", "nets", "ifaces", "jump",
                 "jump_pos", "goto", "matches", "target")

    def __init__(self) -> None:
        self.fixed: list[tuple[int, str]] = []      # positions whose token must equal the learnt line's
        self.chain_pos = 0
        self.proto = 0
        self.proto_inv = False
        self.fragment: bool | None = None
        self.nets: list[tuple[str, int, bool]] = []
        self.ifaces: list[tuple[str, int, bool]] = []
        self.jump: str | None = None                # a standard verdict; else the chain at jump_pos
        self.jump_pos = -1
        self.goto = False
        self.matches: list[_Slot] = []
        self.target: _Slot | None = None

    @classmethod
    def learn(cls, argv: list[str], c: Command, trace: list[tuple[Any, ...]]) -> RulePlan | None:
        """The plan of a line the general parser accepted, or None when its shape is not planned."""
        if c.cmd != "A" or len(c.rules) != 1:
            return None
        plan = cls()
        rule = c.rules[0]
        plan.proto, plan.proto_inv, plan.fragment = rule.proto, rule.proto_inv, rule.fragment
        slot_opts: dict[int, list[tuple[str, int, int, bool]]] = {}
        slots: tuple[Any, ...] = ()
        for rec in trace:
            kind = rec[0]
            if kind == "cmd":
                plan.chain_pos = rec[2]
            elif kind == "slots":
                slots = rec
            elif isinstance(kind, str):
                if kind not in _PLANNED_CORE:
                    return None
                _, pos, inv = rec
                if kind in ("s", "d"):
                    plan.nets.append((kind, pos, inv))
                elif kind in ("i", "o"):
                    plan.ifaces.append((kind, pos, inv))
                elif kind in ("p", "m"):
                    plan.fixed.append((pos, argv[pos]))
                elif kind in ("j", "g"):
                    plan.goto = kind == "g"
                    if not plan.goto and (argv[pos] in STANDARD_VERDICTS or argv[pos] in TARGETS):
                        plan.fixed.append((pos, argv[pos]))
                        plan.jump = rule.jump
                    else:
                        plan.jump_pos = pos
            else:
                slot_opts.setdefault(id(kind), []).append(rec[1:])
        if not slots:
            return None
        for rec in trace:
            if not isinstance(rec[0], str):         # an extension's option, at the token before its values
                tok = argv[rec[2] - 1]
                _VOCAB.setdefault(tok, tok)
        _, matches, target = slots
        plan.matches = [_Slot(s.cls, slot_opts.get(id(s), [])) for s in matches]
        plan.target = _Slot(target.cls, slot_opts.get(id(target), [])) if target is not None else None
        return plan

    def run(self, argv: list[str], family: int, table: str) -> Command | None:
        got = self.rules(argv, family)
        if got is None:
            return None
        c = Command("A", got[0], table=table, has_rule=True)
        c.rules = got[1]
        return c

    def rules(self, argv: list[str], family: int) -> tuple[str, list[Rule]] | None:
        """The line's chain and rules, or None (the general parser then reads the line)."""
        for pos, tok in self.fixed:
            if argv[pos] != tok:
                return None
        rule = Rule(None, False, None, False, None, False, None, False, self.proto, self.proto_inv, self.fragment)
        many: dict[str, list[Net]] | None = None        # -s/-d with several addresses: one rule each
        try:
            for key, pos, inv in self.nets:
                nets = parse_nets(argv[pos], family)
                if len(nets) != 1:
                    many = many if many is not None else {}
                    many[key] = nets
                elif nets[0].prefixlen or inv:         # an uninverted 0/0 is no test at all
                    if key == "s":
                        rule.src = nets[0]
                    else:
                        rule.dst = nets[0]
                if key == "s":
                    rule.src_inv = inv
                else:
                    rule.dst_inv = inv
            for key, pos, inv in self.ifaces:
                val = argv[pos]
                if len(val) >= IFNAMSIZ or not val or " " in val or "/" in val:
                    return None             # the general parser reports it (or warns of it)
                if key == "i":
                    rule.iif, rule.iif_inv = val, inv
                else:
                    rule.oif, rule.oif_inv = val, inv
            if self.jump_pos >= 0:
                if _set_target(rule, argv[self.jump_pos], self.goto, family) is not None:
                    return None                 # a target registered after this module was loaded
            else:
                rule.jump = self.jump
            rule.matches = [s.build(argv, family, rule) for s in self.matches]
            if self.target is not None:
                rule.target = self.target.build(argv, family, rule)
        except Exception:  # noqa: BLE001 - the general parser reports this line's error
            return None
        if many is None:
            return argv[self.chain_pos], [rule]
        addrs: dict[str, list[Net]] = {k: [n] for k, n in (("s", rule.src), ("d", rule.dst)) if n is not None}
        addrs.update(many)
        return argv[self.chain_pos], _expand(rule, addrs)


_PLANS: dict[tuple[int, tuple[str | None, ...]], RulePlan | None] = {}


def parse_rule_line(argv: list[str], family: int, table: str) -> Command:
    """``parse_command`` for a restore line, through the plan of the line's shape when there is one."""
    key = (family, shape(argv))
    plan = _PLANS.get(key)
    if plan is not None:
        c = plan.run(argv, family, table)
        if c is not None:
            return c
        return parse_command(argv, family, restore=True, default_table=table)
    if key in _PLANS:                        # a shape known not to be planned
        return parse_command(argv, family, restore=True, default_table=table)
    trace: list[tuple[Any, ...]] = []
    c = parse_command(argv, family, restore=True, default_table=table, trace=trace)
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    plan = RulePlan.learn(argv, c, trace) if not c.warnings else None    # (each such line warns again)
    if plan is not None:
        key = (family, shape(argv))          # learning may have added this line's options to the vocabulary
    _PLANS[key] = plan
    return c


def planned_rules(argv: list[str], family: int) -> tuple[str, list[Rule]] | None:
    """An ``-A`` line's chain and rules through its shape's plan; None when the line has no plan or
    the plan does not fit (``parse_rule_line`` then parses it, learning or reporting)."""
    plan = _PLANS.get((family, shape(argv)))
    return plan.rules(argv, family) if plan is not None else None
