"""The nfacct match (xt_nfacct): counts each packet into a named accounting object, and matches.

The object lives in the namespace (``kproxy.netfilter.nfacct``) and must exist when the rule is
committed, as the kernel's checkentry looks it up. Objects without a quota never stop matching, so
the rule's verdict is that of the rest of the rule; kube-proxy uses it only to count.
``iptables-save`` prints the name after two blanks (libxt_nfacct prints a blank, then
``xtables_save_string`` its own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import STRING, XTOPT_MAND, XtOpt, XtOptions
from kproxy.iptables.xtutil import save_string
from kproxy.netfilter.nfacct import NAME_MAX, objects_of
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule
    from kproxy.node import Node


@register_match
class NfacctMatch(Match):
    name = "nfacct"
    OPTIONS = XtOptions("nfacct", XtOpt("nfacct-name", STRING, XTOPT_MAND, min=1, size=NAME_MAX))

    def __init__(self, acct_name: str) -> None:
        self.acct_name = acct_name

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> NfacctMatch:
        return cls(cls.OPTIONS.parse_all(opts).get("nfacct-name"))

    def check(self, node: Node) -> None:
        if objects_of(node).get(self.acct_name) is None:
            raise ExtensionError(f"xt_nfacct: accounting object `{self.acct_name}' does not exists\n",
                                 kernel_errno="No such file or directory")

    def save(self) -> str:
        return f"-m nfacct --nfacct-name  {save_string(self.acct_name)}"

    def listing(self, numeric: bool = True) -> str:
        return f"nfacct-name  {save_string(self.acct_name)}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        objects_of(ctx.node).count(self.acct_name, pkt.length)
        return True


def names_in_use(node: Node) -> set[str]:
    """The objects some iptables rule counts into (each holds a reference in the kernel)."""
    used: set[str] = set()
    for state in node.iptables.values():
        for table in state.tables.values():
            for chain in table.chains.values():
                for rule in chain.rules:
                    used.update(m.acct_name for m in rule.matches if isinstance(m, NfacctMatch))
    return used
