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
    """A bad option or value for an extension; the message is the real tool's one-line reason.
    ``kernel_errno`` (strerror text) when it is the kernel's checkentry that refuses, not the tool."""

    def __init__(self, message: str, kernel_errno: str = "") -> None:
        super().__init__(message)
        self.kernel_errno = kernel_errno


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
    # The families iptables 1.8.9 has the extension for (libipt_/libip6t_ ones are one family only);
    # a class of one family may share its name with the other family's class.
    FAMILIES: ClassVar[tuple[int, ...]] = (4, 6)
    # Tables and hooks where the kernel accepts the extension (None: anywhere), like xt_match/xt_target
    # .table and .hooks; outside them the rule is refused on append.
    TABLES: ClassVar[tuple[str, ...] | None] = None
    HOOKS: ClassVar[tuple[str, ...] | None] = None
    # The kernel's reason when it refuses the rule (an instance may say otherwise, e.g. a missing helper).
    ERRNO: str = "Invalid argument"
    # The extension's kernel module is missing on the reference machine (LED, CLUSTERIP, ...): the tool
    # warns when it loads the extension and the kernel refuses the rule with ENOENT.
    KERNEL_LACKS: ClassVar[bool] = False
    # What the tool printed on stderr while parsing this use of the extension (and went on).
    warnings: tuple[str, ...] = ()
    # What ``-L`` puts before the extension's text: its print function's own leading blank (bpf has none).
    LISTING_SPACE: ClassVar[str] = " "

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

    @classmethod
    @abstractmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> Target:
        """Build from parsed options. Raise ExtensionError."""

    @abstractmethod
    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        """Apply the target: NF_ACCEPT, NF_DROP, XT_CONTINUE or XT_RETURN."""


MATCHES: dict[str, type[Match]] = {}
TARGETS: dict[str, type[Target]] = {}
# Each family's extensions by (name, family): what ``-m NAME``/``-j NAME`` load in that family.
_FAMILY_MATCHES: dict[tuple[str, int], type[Match]] = {}
_FAMILY_TARGETS: dict[tuple[str, int], type[Target]] = {}


def match_class(name: str, family: int) -> type[Match] | None:
    """The match ``-m NAME`` loads in the family (None: "Couldn't load match")."""
    return _FAMILY_MATCHES.get((name, family))


def target_class(name: str, family: int) -> type[Target] | None:
    """The target ``-j NAME`` loads in the family (None: NAME is a chain)."""
    return _FAMILY_TARGETS.get((name, family))


def refusal(ext: Extension, table: str, chain: str, rule: Rule) -> str | None:
    """Why the kernel refuses the rule's use of the extension here (its errno text), or None."""
    if ext.KERNEL_LACKS:
        return "No such file or directory"
    if (ext.TABLES is not None and table not in ext.TABLES) or \
            (ext.HOOKS is not None and builtin_chain_outside(chain, ext.HOOKS)):
        return "Invalid argument"
    return ext.ERRNO if ext.kernel_refuses(rule, chain) else None


def _note_checks(cls: type[Extension]) -> None:
    if not hasattr(cls, "OPTIONS"):
        from kproxy.iptables.xtoptions import XtOptions

        cls.OPTIONS = XtOptions(cls.name)
    cls.CHECKS_NODE = cls.check is not Extension.check
    cls.CHECKS_ENTRY = cls.kernel_refuses is not Extension.kernel_refuses or cls.TABLES is not None or \
        cls.HOOKS is not None or cls.KERNEL_LACKS
    cls.HOLDS_REFS = cls.NEEDS_CONNTRACK or cls.needs_conntrack is not Extension.needs_conntrack or \
        cls.set_names is not Extension.set_names


def register_match(cls: type[Match]) -> type[Match]:
    if 4 in cls.FAMILIES or cls.name not in MATCHES:
        MATCHES[cls.name] = cls
    for family in cls.FAMILIES:
        _FAMILY_MATCHES[(cls.name, family)] = cls
    _note_checks(cls)
    return cls


def register_target(cls: type[Target]) -> type[Target]:
    if 4 in cls.FAMILIES or cls.name not in TARGETS:
        TARGETS[cls.name] = cls
    for family in cls.FAMILIES:
        _FAMILY_TARGETS[(cls.name, family)] = cls
    _note_checks(cls)
    return cls
