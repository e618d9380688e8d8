"""The comment match: text that rides along with a rule and always matches."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.extension import Match, Opt, RuleContext, Xlate, register_match
from kproxy.iptables.xtoptions import STRING, XTOPT_MAND, XtOpt, XtOptions, truncate
from kproxy.iptables.xtutil import save_string
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

MAX_COMMENT = 256           # XT_MAX_COMMENT_LEN, including the terminating NUL
# One object per comment text: a dump names each Service in the rules of several shapes and chains,
# and the parser's own sharing keys on the rule's protocol and each shape's values.
_SHARED: dict[str, CommentMatch] = {}


@register_match
class CommentMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "comment"
    OPTIONS = XtOptions("comment", XtOpt("comment", STRING, XTOPT_MAND, size=MAX_COMMENT))

    def __init__(self, text: str) -> None:
        self.text = text

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> CommentMatch:
        if len(opts) == 1 and not opts[0].invert:      # the usual single --comment: nothing to check
            value = opts[0].values[0]
            shared = _SHARED.get(value) if cls is CommentMatch else None
            if shared is None:
                shared = cls(truncate(value, MAX_COMMENT - 1))
                if cls is CommentMatch:
                    if len(_SHARED) >= 100_000:
                        _SHARED.clear()
                    _SHARED[value] = shared
            return shared
        return cls(cls.OPTIONS.parse_all(opts).get("comment"))

    def save(self) -> str:
        return f"-m comment --comment {save_string(self.text)}"

    def listing(self, numeric: bool = True) -> str:
        return f"/* {self.text} */"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return True

    def redundant(self, rule: Rule) -> bool:
        return True

    def translate(self, xl: Xlate) -> str:
        """The comment goes after the verdict, so it is handed to the rule; the last one wins."""
        xl.comment = self.text
        return ""

