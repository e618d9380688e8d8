"""Netfilter hooks and the ordered hook functions registered on them.

The kernel runs, at each of five hooks, every registered function in ascending priority; the
first DROP (or STOLEN) ends the packet's path, ACCEPT passes it to the next function. Users of
the hooks (conntrack, each iptables table, nftables base chains, IPVS) register here at their
real priorities, so rule languages coexist exactly as on a real node.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kproxy.packet import Packet
from kproxy.versioned import Epoch

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.netfilter.netns import NetNamespace
    from kproxy.netfilter.trace import Trace

PREROUTING, INPUT, FORWARD, OUTPUT, POSTROUTING = "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"
HOOKS = (PREROUTING, INPUT, FORWARD, OUTPUT, POSTROUTING)
# The per-device hooks (netdev family, and inet ingress): a received packet meets INGRESS before
# PREROUTING, a sent one EGRESS after POSTROUTING. Their functions are registered per IP family here
# (the node carries only IP packets) and test the device themselves.
INGRESS, EGRESS = "INGRESS", "EGRESS"

# include/uapi/linux/netfilter_ipv4.h: enum nf_ip_hook_priorities
PRI_FIRST = -(2**31)
PRI_RAW_BEFORE_DEFRAG = -450
PRI_CONNTRACK_DEFRAG = -400
PRI_RAW = -300
PRI_SELINUX_FIRST = -225
PRI_CONNTRACK = -200
PRI_MANGLE = -150
PRI_NAT_DST = -100
PRI_FILTER = 0
PRI_SECURITY = 50
PRI_NAT_SRC = 100
PRI_SELINUX_LAST = 225
PRI_CONNTRACK_HELPER = 300
PRI_CONNTRACK_CONFIRM = 2**31 - 1
PRI_LAST = 2**31 - 1

# IPVS (net/netfilter/ipvs/ip_vs_core.c): after filter on LOCAL_IN, before NAT on LOCAL_OUT.
PRI_IPVS_REPLY_LOCAL_IN = PRI_NAT_SRC - 2          # 98
PRI_IPVS_LOCAL_IN = PRI_NAT_SRC - 1                # 99
PRI_IPVS_REPLY_LOCAL_OUT = PRI_NAT_DST + 1         # -99
PRI_IPVS_LOCAL_OUT = PRI_NAT_DST + 2               # -98
PRI_IPVS_FORWARD_ICMP = 99
PRI_IPVS_FORWARD_REPLY = 100

# Which built-in chains each iptables table has, and the priority it registers at.
TABLE_HOOKS: dict[str, tuple[str, ...]] = {
    "raw": (PREROUTING, OUTPUT),
    "mangle": (PREROUTING, INPUT, FORWARD, OUTPUT, POSTROUTING),
    "nat": (PREROUTING, INPUT, OUTPUT, POSTROUTING),
    "filter": (INPUT, FORWARD, OUTPUT),
    "security": (INPUT, FORWARD, OUTPUT),
}


def table_priority(table: str, hook: str) -> int:
    """The priority an iptables table registers at for ``hook``."""
    if table == "nat":
        return PRI_NAT_DST if hook in (PREROUTING, OUTPUT) else PRI_NAT_SRC
    return {"raw": PRI_RAW, "mangle": PRI_MANGLE, "filter": PRI_FILTER, "security": PRI_SECURITY}[table]


HookFn = Callable[[Packet, "HookState"], int]


@dataclass(order=True)
class HookOp:
    """One function registered at a hook (struct nf_hook_ops)."""

    priority: int
    seq: int
    name: str = field(compare=False)
    fn: HookFn = field(compare=False)
    family: int = field(compare=False, default=4)


@dataclass(slots=True)
class HookState:
    """What a hook function knows about where the packet is (struct nf_hook_state) plus our trace."""

    hook: str
    in_dev: str
    out_dev: str
    node: NetNamespace
    trace: Trace | None = None
    now: float = 0.0
    # Set by REJECT so the path can report the fate and the node can answer.
    rejected_with: str | None = None


class HookRegistry:
    """The per-family, per-hook ordered lists of hook functions."""

    def __init__(self) -> None:
        self._ops: dict[tuple[int, str], list[HookOp]] = {}
        # The functions alone, in order, per (family, hook): what the packet path iterates.
        self.fns: dict[tuple[int, str], tuple[HookFn, ...]] = {}
        self._seq = 0
        self.version = 0          # bumped on every change: what the flow cache's replays depend on

    def _changed(self) -> None:
        self.version += 1
        Epoch.bump()
        self.fns = {key: tuple(op.fn for op in ops) for key, ops in self._ops.items() if ops}

    def register(self, family: int, hook: str, priority: int, name: str, fn: HookFn) -> HookOp:
        self._seq += 1
        # nf_hook_entries_grow puts a new function before those of equal priority: newest first.
        op = HookOp(priority, -self._seq, name, fn, family)
        bisect.insort(self._ops.setdefault((family, hook), []), op)
        self._changed()
        return op

    def unregister(self, family: int, hook: str, name: str) -> None:
        ops = self._ops.get((family, hook), [])
        ops[:] = [op for op in ops if op.name != name]
        self._changed()

    def unregister_all(self, name_prefix: str) -> None:
        for ops in self._ops.values():
            ops[:] = [op for op in ops if not op.name.startswith(name_prefix)]
        self._changed()

    def replace(self, old: HookFn, new: HookFn) -> None:
        """Put ``new`` where ``old`` is registered: a function that decides as ``old`` does (nftables' base
        chain compiled as its hook function), so nothing a cache learnt changes and no version is bumped."""
        hit = False
        for ops in self._ops.values():
            for op in ops:
                if op.fn is old:
                    op.fn, hit = new, True
        if hit:
            self.fns = {key: tuple(op.fn for op in ops) for key, ops in self._ops.items() if ops}

    def ops(self, family: int, hook: str) -> list[HookOp]:
        return self._ops.get((family, hook), [])
