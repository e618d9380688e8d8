"""The recent match (xt_recent, revision 1): named lists of recently seen addresses, shared per node.

Lists live in ``node.subsystems["recent"]`` so that every rule naming a list sees the same entries,
as kube-proxy's ClientIP session affinity relies on (``--set`` in one chain, ``--rcheck`` in another).
The arithmetic is ``recent_mt``'s: at most 200 entries per list with the least recently updated one
evicted, a ring of time stamps per entry (32 by default, more when a rule's --hitcount needs them),
``--reap`` dropping only the least recently updated entry, and ``--rttl`` comparing the TTL seen
before forwarding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import HOST, NONE, STRING, UINT32, XTOPT_INVERT, XtOpt, XtOptions
from kproxy.packet import Packet, format_addr

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule
    from kproxy.node import Node

IP_LIST_TOT = 200          # module parameter ip_list_tot: entries per list
IP_PKT_LIST_TOT = 20       # module parameter ip_pkt_list_tot
MAX_NSTAMPS = 1 << 16      # XT_RECENT_MAX_NSTAMPS: a larger --hitcount is refused
NAME_LEN = 200             # XT_RECENT_NAME_LEN, with the NUL
MODES = ("set", "rcheck", "update", "remove")


def roundup_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


def stamp_capacity(hitcount: int) -> int:
    """nstamps_max_mask + 1 for a rule, as recent_mt_check sizes a list."""
    if IP_PKT_LIST_TOT and hitcount < IP_PKT_LIST_TOT:
        return roundup_pow2(IP_PKT_LIST_TOT)
    if hitcount:
        return roundup_pow2(hitcount)
    return 32


class RecentEntry:
    """One address in a list: its time stamps (oldest first, at most the list's capacity) and TTL."""

    __slots__ = ("stamps", "ttl")

    def __init__(self, stamps: list[float], ttl: int) -> None:
        self.stamps, self.ttl = stamps, ttl


class RecentTable:
    """One named list; ``entries`` is kept in least-recently-updated-first order (the kernel's LRU list)."""

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self.entries: dict[tuple[int, int], RecentEntry] = {}

    def grow(self, capacity: int) -> None:
        """A rule needing more stamps than the list keeps flushes it (recent_mt_check)."""
        if capacity > self.capacity:
            self.entries.clear()
            self.capacity = capacity

    def touch(self, key: tuple[int, int], entry: RecentEntry, now: float) -> None:
        """recent_entry_update: a new stamp, and the entry moves to the end of the LRU order."""
        entry.stamps.append(now)
        del entry.stamps[:-self.capacity]
        self.entries.pop(key, None)
        self.entries[key] = entry

    def create(self, key: tuple[int, int], now: float, ttl: int) -> None:
        """recent_entry_init: evict the least recently updated entry when the list is full."""
        if len(self.entries) >= IP_LIST_TOT:
            del self.entries[next(iter(self.entries))]
        self.entries[key] = RecentEntry([now], ttl)


class RecentTables:
    """All recent lists of a node, by name."""

    def __init__(self) -> None:
        self.lists: dict[str, RecentTable] = {}

    def table(self, name: str, capacity: int = 32) -> RecentTable:
        t = self.lists.get(name)
        if t is None:
            t = self.lists[name] = RecentTable(capacity)
        else:
            t.grow(capacity)
        return t

    def to_json(self) -> dict[str, Any]:
        return {name: {"capacity": t.capacity,
                       "entries": [[fam, addr, e.ttl, e.stamps] for (fam, addr), e in t.entries.items()]}
                for name, t in self.lists.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecentTables:
        rt = cls()
        for name, body in data.items():
            if isinstance(body, list):   # the first format: [[family, addr, stamps], ...]
                body = {"capacity": 32, "entries": [[f, a, 0, s] for f, a, s in body]}
            t = rt.lists[name] = RecentTable(int(body.get("capacity", 32)))
            for fam, addr, ttl, stamps in body.get("entries", []):
                t.entries[(fam, addr)] = RecentEntry([float(s) for s in stamps], ttl)
        return rt


def tables_of(node: Node) -> RecentTables:
    rt = node.subsystems.get("recent")
    if rt is None:
        rt = node.subsystems["recent"] = RecentTables()
    return rt


def s32(n: int) -> int:
    """How the tool prints the unsigned fields (``%d``)."""
    return n - (1 << 32) if n >= 1 << 31 else n


@register_match
class RecentMatch(Match):
    name = "recent"
    OPTIONS = XtOptions(
        "recent",
        *(XtOpt(m, NONE, XTOPT_INVERT, excl=tuple(x for x in MODES if x != m)) for m in MODES),
        XtOpt("seconds", UINT32, min=1), XtOpt("reap", NONE, also=("seconds",)), XtOpt("hitcount", UINT32),
        XtOpt("rttl", NONE, excl=("set", "remove")), XtOpt("name", STRING, size=NAME_LEN),
        XtOpt("rsource", NONE), XtOpt("rdest", NONE), XtOpt("mask", HOST),
    )

    def __init__(self) -> None:
        self.mode = ""
        self.invert = False
        self.seconds = 0
        self.hitcount = 0
        self.reap = self.rttl = False
        self.list_name = "DEFAULT"
        self.mask = 0xFFFFFFFF
        self.side = "source"
        self.family = 4

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> RecentMatch:
        m = cls()
        m.family = family
        got = cls.OPTIONS.parse(opts, family)
        for name in got.order:
            if name in MODES:
                m.mode, m.invert = name, got.invert(name)
            elif name in ("rsource", "rdest"):
                m.side = "source" if name == "rsource" else "dest"
        if not m.mode:
            raise ExtensionError("recent: you must specify one of `--set', `--rcheck' `--update' or `--remove'")
        cls.OPTIONS.fcheck(got)
        m.seconds, m.hitcount = got.get("seconds", 0), got.get("hitcount", 0)
        m.reap, m.rttl = "reap" in got, "rttl" in got
        m.list_name = got.get("name", m.list_name)
        m.mask = got.get("mask", (1 << 128) - 1 if family == 6 else m.mask)
        return m

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        """recent_mt_check's refusals (the tool then fails with ``RULE_APPEND failed (Invalid argument)``)."""
        if self.mode in ("set", "remove") and (self.seconds or self.hitcount or self.rttl or self.reap):
            return True
        name = self.list_name
        return self.hitcount >= MAX_NSTAMPS or name in ("", ".", "..") or "/" in name

    def check(self, node: Node) -> None:
        """The kernel creates (or resizes) the list when the rule is added."""
        tables_of(node).table(self.list_name, stamp_capacity(self.hitcount))

    def save(self) -> str:
        parts = ["-m recent", f"{'! ' if self.invert else ''}--{self.mode}"]
        if self.seconds:
            parts.append(f"--seconds {s32(self.seconds)}")
        if self.reap:
            parts.append("--reap")
        if self.hitcount:
            parts.append(f"--hitcount {s32(self.hitcount)}")
        if self.rttl:
            parts.append("--rttl")
        parts.append(f"--name {self.list_name}")
        parts.append(f"--mask {format_addr(self.mask, self.family)}")
        parts.append("--rsource" if self.side == "source" else "--rdest")
        return " ".join(parts)

    def listing(self, numeric: bool = True) -> str:
        words = {"set": "SET", "rcheck": "CHECK", "update": "UPDATE", "remove": "REMOVE"}
        parts = [f"{'! ' if self.invert else ''}recent: {words[self.mode]}"]
        if self.seconds:
            parts.append(f"seconds: {s32(self.seconds)}")
        if self.reap:
            parts.append("reap")
        if self.hitcount:
            parts.append(f"hit_count: {s32(self.hitcount)}")
        if self.rttl:
            parts.append("TTL-Match")
        parts.append(f"name: {self.list_name}")
        parts.append(f"side: {self.side}")
        parts.append(f"mask: {format_addr(self.mask, self.family)}")
        return " ".join(parts)

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        now = ctx.now
        table = tables_of(ctx.node).table(self.list_name, stamp_capacity(self.hitcount))
        key = (pkt.family, (pkt.src if self.side == "source" else pkt.dst) & self.mask)
        ttl = pkt.ttl + 1 if ctx.state.out_dev and not pkt.local else pkt.ttl   # the TTL before forwarding
        ret = self.invert
        entry = table.entries.get(key)
        if entry is not None and self.rttl and entry.ttl and ttl != entry.ttl:
            entry = None
        if entry is None:
            if self.mode == "set":
                table.create(key, now, ttl)
                ret = not ret
            return ret
        if self.mode == "set":
            ret = not ret
        elif self.mode == "remove":
            del table.entries[key]
            return not ret
        else:
            oldest = now - self.seconds
            hits = 0
            for stamp in entry.stamps:
                if self.seconds and stamp < oldest:
                    continue
                hits += 1
                if not self.hitcount or hits >= self.hitcount:
                    ret = not ret
                    break
            if self.reap:
                self._reap(table, entry, oldest, self.mode == "update" and ret)
        if self.mode == "set" or (self.mode == "update" and ret):
            table.touch(key, entry, now)
            entry.ttl = ttl
        return ret

    @staticmethod
    def _reap(table: RecentTable, working: RecentEntry, oldest: float, updating: bool) -> None:
        """recent_entry_reap: drop the least recently updated entry if its newest stamp is too old."""
        key = next(iter(table.entries))
        head = table.entries[key]
        if head is working and updating:
            return
        if head.stamps[-1] < oldest:
            del table.entries[key]
