"""What a match does when the packet model does not carry what it reads: say so in the trace.

The emulator never guesses a payload, a socket's owner or an IPsec policy: the match does not
match (so an inverted one does), and the trace names what could not be known.
"""

from __future__ import annotations

from kproxy.iptables.extension import RuleContext


def cannot_know(ctx: RuleContext, ext: str, what: str) -> bool:
    """Record that ``ext`` could not decide because ``what`` is unknown; the match is taken as failed."""
    trace = ctx.state.trace
    if trace is not None:
        trace.add("note", hook=ctx.hook, table=ctx.table, chain=ctx.chain,
                  text=f"{ext}: {what} cannot be known here; taken as not matching")
    return False


def changed(ctx: RuleContext, target: str, what: str) -> None:
    """Record what a target rewrote in the packet (``TTL 64 -> 63``)."""
    trace = ctx.state.trace
    if trace is not None:
        trace.add("note", hook=ctx.hook, table=ctx.table, chain=ctx.chain, text=f"{target}: {what}")
