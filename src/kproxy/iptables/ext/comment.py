"""The comment match: text that rides along with a rule and always matches."""

from __future__ import annotations

from typing import Any

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtutil import save_string
from kproxy.packet import Packet

MAX_COMMENT = 256


@register_match
class CommentMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "comment"
    OPTIONS = {"comment": 1}

    def __init__(self, text: str) -> None:
        self.text = text

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> CommentMatch:
        if not opts:
            raise ExtensionError("comment: option \"--comment\" must be specified")
        text = opts[-1].values[0]
        if len(text) >= MAX_COMMENT:
            raise ExtensionError(f"comment: option \"--comment\" value is too long (maximum {MAX_COMMENT - 1})")
        return cls(text)

    def save(self) -> str:
        return f"-m comment --comment {save_string(self.text)}"

    def listing(self, numeric: bool = True) -> str:
        return f"/* {self.text} */"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return True

    def redundant(self, rule: Any) -> bool:
        return True
