"""The contract between the iptables front end and its match and target extensions.

Like libxtables, the argv/restore parser knows only the core options (-s -d -i -o -p -f -j -g -m);
everything after ``-m NAME`` or ``-j NAME`` is handed to that extension as a list of ``Opt``.
Each extension class registers itself by name, parses its options, prints itself exactly as
``iptables-save`` and ``iptables -L`` do, and evaluates itself against a packet.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule
    from kproxy.iptables.xtoptions import XtOptions
    from kproxy.netfilter.hooks import HookState
    from kproxy.node import Node
    from kproxy.packet import Packet

# Target results besides NF_ACCEPT (1) and NF_DROP (0): continue with the next rule, or return
# from the current chain (xt_standard verdicts XT_CONTINUE / XT_RETURN).
XT_CONTINUE = -1
XT_RETURN = -2


class ExtensionError(ValueError):
    """A bad option or value for an extension; the message is the real tool's one-line reason."""


@dataclass(slots=True)
class Opt:
    """One option given to an extension: ``! --dport 80`` is ``Opt("dport", ["80"], True)``."""

    name: str
    values: list[str]
    invert: bool = False


@dataclass(slots=True)
class RuleContext:
    """Where a rule is being evaluated: table, chain, and the hook state (which holds the node)."""

    state: HookState
    table: str
    chain: str
    family: int = 4

    @property
    def node(self) -> Any:
        return self.state.node

    @property
    def hook(self) -> str:
        return self.state.hook

    @property
    def now(self) -> float:
        return self.state.now


BUILTIN_CHAINS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def builtin_chain_outside(chain: str, hooks: tuple[str, ...]) -> bool:
    """A built-in chain whose hook an extension is not valid at (user chains are checked by reachability)."""
    return chain in BUILTIN_CHAINS and chain not in hooks


@dataclass(slots=True)
class Xlate:
    """What an extension's ``translate`` may need besides itself: the rule's family and ip header
    part (multiport names the rule's protocol), and the rule's comment, which the comment match
    sets because ``iptables-translate`` prints it after the verdict."""

    family: int = 4
    rule: Rule | None = None
    comment: str | None = None

    @property
    def proto(self) -> int:
        return self.rule.proto if self.rule is not None else 0


class Extension(ABC):
    """What matches and targets share: their options, canonical forms and the kernel's checks.

    ``OPTIONS`` is the extension's option table (``kproxy.iptables.xtoptions``), declared once: the
    argv parser reads which options it takes and how many values each consumes, and ``from_options``
    parses them through it. What the extension can do is declared too, never inferred from its
    class: ``NEEDS_CONNTRACK``/``needs_conntrack``, ``set_names``, ``Match.inline`` and ``translate``.
    """

    name: ClassVar[str]
    OPTIONS: ClassVar[XtOptions]          # an empty table when a registered class declares none
    REVISION: ClassVar[int] = 0
    # Rules parsed with the same options may share one object, unless that object is ``stateful``.
    SHAREABLE: ClassVar[bool] = False
    stateful: bool = False
    # Whether the class has a ``check`` / ``kernel_refuses`` of its own (set when registered), so
    # a restore of 100,000 rules calls them only where they can refuse something.
    CHECKS_NODE: ClassVar[bool] = False
    CHECKS_ENTRY: ClassVar[bool] = False
    # Whether a rule using the extension turns connection tracking on for its family (the kernel's
    # checkentry calling nf_ct_netns_get); an instance may decide otherwise (CT --notrack does not).
    NEEDS_CONNTRACK: ClassVar[bool] = False
    # Whether rules using the class can hold any reference at all (set when registered), so counting
    # a 100,000-rule table's references asks only the extensions that may hold one.
    HOLDS_REFS: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> Extension:
        """Build from parsed options; ``rule`` is the rule being built (for -p checks). Raise ExtensionError."""

    @abstractmethod
    def save(self) -> str:
        """The canonical ``iptables-save`` fragment, including ``-m NAME`` or ``-j NAME``."""

    @abstractmethod
    def listing(self, numeric: bool = True) -> str:
        """What ``iptables -L`` appends in the options column (e.g. ``tcp dpt:80``, ``to:10.0.0.1:80``)."""

    def check(self, node: Node) -> None:
        """Validate against the node when the table is committed (e.g. a named set exists); raise ExtensionError."""
        return None

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        """True when the kernel's checkentry would refuse the rule in ``chain`` (EINVAL on append)."""
        return False

    def needs_conntrack(self) -> bool:
        """Whether this rule's use of the extension holds a conntrack reference while committed."""
        return self.NEEDS_CONNTRACK

    def set_names(self) -> tuple[str, ...]:
        """The ipsets the extension holds a reference to while committed ("Set is in use")."""
        return ()

    def translate(self, xl: Xlate) -> str | None:
        """The nft expression ``iptables-translate`` prints for this use of the extension ("" for
        none); None where it has no translation (the tool then prints the rule commented out)."""
        return None


class Match(Extension):
    """A match extension (``-m NAME``); ``-p tcp --dport 80`` loads the protocol's match implicitly."""

    @classmethod
    @abstractmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> Match:
        """Build from parsed options. Raise ExtensionError."""

    @abstractmethod
    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        """Whether the packet matches, as the kernel's xt match function decides."""

    def index_key(self) -> tuple[str, Any] | None:
        """An exact, non-inverted field this match requires (e.g. ``("dport", 80)``), for compiled lookups."""
        return None

    def redundant(self, rule: Rule) -> bool:
        """True when the match can never fail for a packet that passed the rule's ip header checks
        (a comment; ``-p tcp -m tcp`` with no options), so the compiled rule may skip it."""
        return False

    def inline(self) -> tuple[str, tuple[Any, ...]] | None:
        """The test as a Python expression over ``p`` (the packet) and ``c`` (the context), with
        ``{}`` where each of the given constants goes, for compiled chains; None to be called.

        A declaration of the class that defines ``matches``: a subclass that changes ``matches``
        declares its own ``inline`` (or None), as the compiler trusts whatever this returns."""
        return None


class Target(Extension):
    """A target extension (``-j NAME`` for anything but ACCEPT/DROP/RETURN/QUEUE and user chains)."""

    # Tables and hooks where the target is allowed (None: anywhere), like xt_target.table/hooks.
    TABLES: ClassVar[tuple[str, ...] | None] = None
    HOOKS: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    @abstractmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> Target:
        """Build from parsed options. Raise ExtensionError."""

    @abstractmethod
    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        """Apply the target: NF_ACCEPT, NF_DROP, XT_CONTINUE or XT_RETURN."""


MATCHES: dict[str, type[Match]] = {}
TARGETS: dict[str, type[Target]] = {}


def _note_checks(cls: type[Extension]) -> None:
    if not hasattr(cls, "OPTIONS"):
        from kproxy.iptables.xtoptions import XtOptions

        cls.OPTIONS = XtOptions(cls.name)
    cls.CHECKS_NODE = cls.check is not Extension.check
    cls.CHECKS_ENTRY = cls.kernel_refuses is not Extension.kernel_refuses
    cls.HOLDS_REFS = cls.NEEDS_CONNTRACK or cls.needs_conntrack is not Extension.needs_conntrack or \
        cls.set_names is not Extension.set_names


def register_match(cls: type[Match]) -> type[Match]:
    MATCHES[cls.name] = cls
    _note_checks(cls)
    return cls


def register_target(cls: type[Target]) -> type[Target]:
    TARGETS[cls.name] = cls
    _note_checks(cls)
    return cls
