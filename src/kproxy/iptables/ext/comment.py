"""The comment match: text that rides along with a rule and always matches."""

from __future__ import annotations

from typing import Any

from kproxy.iptables.extension import Match, Opt, RuleContext, register_match
from kproxy.iptables.xtutil import OptSpec, save_string, xtopt_fcheck, xtopt_parse
from kproxy.packet import Packet

MAX_COMMENT = 256           # XT_MAX_COMMENT_LEN, including the terminating NUL
OPTS = [OptSpec("comment", mand=True)]


@register_match
class CommentMatch(Match):
    SHAREABLE = True   # no per-rule state: rules with the same options share one object
    name = "comment"
    OPTIONS = {"comment": 1}

    def __init__(self, text: str) -> None:
        self.text = text

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Any) -> CommentMatch:
        if len(opts) == 1 and not opts[0].invert:      # the usual single --comment: nothing to check
            return cls(truncate(opts[0].values[0], MAX_COMMENT - 1))
        texts: list[str] = []
        seen = xtopt_parse("comment", OPTS, opts, lambda spec, o: texts.append(o.values[0]))
        xtopt_fcheck("comment", OPTS, seen)
        return cls(truncate(texts[0], MAX_COMMENT - 1))

    def save(self) -> str:
        return f"-m comment --comment {save_string(self.text)}"

    def listing(self, numeric: bool = True) -> str:
        return f"/* {self.text} */"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return True

    def redundant(self, rule: Any) -> bool:
        return True


def truncate(text: str, limit: int) -> str:
    """XTTYPE_STRING copies at most ``limit`` bytes (the kernel field is a fixed char array)."""
    raw = text.encode(errors="surrogateescape")     # undecodable input bytes stay bytes
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(errors="surrogateescape")
