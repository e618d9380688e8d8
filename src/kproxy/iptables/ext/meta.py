"""Matches on what the kernel knows beside the headers: the CPU handling the packet, the devices'
groups, the socket's cgroup, the route's realm, a cluster hash, conntrack labels, and whether a
socket exists for the packet. Those the packet model does not carry are reported in the trace."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from kproxy.iptables.ext.unknown import cannot_know
from kproxy.iptables.extension import (
    ExtensionError,
    Match,
    Opt,
    RuleContext,
    builtin_chain_outside,
    register_match,
)
from kproxy.iptables.xtoptions import (
    CUSTOM,
    NONE,
    STRING,
    UINT32,
    XTOPT_INVERT,
    XTOPT_MAND,
    XtCall,
    XtOpt,
    XtOptions,
)
from kproxy.iptables.xtutil import c_strtoul, save_string
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

U32 = 0xFFFFFFFF
IN_HOOKS = ("PREROUTING", "INPUT", "FORWARD")
OUT_HOOKS = ("FORWARD", "OUTPUT", "POSTROUTING")


def lmap(path: str) -> dict[str, int]:
    """An iproute2 id map (``/etc/iproute2/group``): name to id, the first line of each name."""
    names: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split("#", 1)[0].split()
                if len(words) >= 2:
                    got = c_strtoul(words[0])
                    if got is not None and not got[1]:
                        names.setdefault(words[1], got[0])
    except OSError:
        pass
    return names


def id_name(path: str, value: int) -> str | None:
    return next((n for n, v in lmap(path).items() if v == value), None)


def val_mask_parser(path: str) -> Callable[[XtCall], tuple[int, int]]:
    """xtables_parse_val_mask: ``value[/mask]`` (numbers), else a name from the map."""
    def parse(call: XtCall) -> tuple[int, int]:
        def by_name() -> tuple[int, int]:
            value = lmap(path).get(call.arg)
            if value is None:
                raise ExtensionError(f"{call.ext}: could not map name {call.arg} to an integer value for option "
                                     f"\"--{call.opt}\".\n")
            return value, U32
        bad = ExtensionError(f"{call.ext}: bad integer value for option \"--{call.opt}\", or out of range.\n")
        got = c_strtoul(call.arg)
        if got is None or got[0] > U32:
            return by_name()
        value, rest = got
        if not rest:
            return value, U32
        if not rest.startswith("/"):
            return by_name()
        got = c_strtoul(rest[1:])
        if got is None or got[0] > U32:
            raise bad
        if got[1]:
            raise ExtensionError(f"{call.ext}: trailing garbage after value for option \"--{call.opt}\".\n")
        return value, got[0]
    return parse


def val_mask_text(value: int, mask: int, path: str | None) -> str:
    """xtables_print_val_mask."""
    if mask != U32:
        return f"0x{value:x}/0x{mask:x}"
    name = id_name(path, value) if path else None
    return name or f"0x{value:x}"


@register_match
class CpuMatch(Match):
    SHAREABLE = True
    name = "cpu"
    OPTIONS = XtOptions("cpu", XtOpt("cpu", UINT32, XTOPT_INVERT | XTOPT_MAND))

    def __init__(self, cpu: int, invert: bool) -> None:
        self.cpu, self.invert = cpu, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> CpuMatch:
        got = cls.OPTIONS.parse_all(opts)
        return cls(got.get("cpu"), got.invert("cpu"))

    def save(self) -> str:
        return f"-m cpu {'! ' if self.invert else ''}--cpu {self.cpu}"

    def listing(self, numeric: bool = True) -> str:
        return f"cpu {'! ' if self.invert else ''}{self.cpu}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        cpu = pkt.meta.get("cpu")
        if cpu is None:
            return cannot_know(ctx, "cpu", "the CPU handling the packet")
        return (cpu == self.cpu) != self.invert


GROUPS = "/etc/iproute2/group"
REALMS = "/etc/iproute2/rt_realms"


@register_match
class DevgroupMatch(Match):
    SHAREABLE = True
    name = "devgroup"
    OPTIONS = XtOptions("devgroup", XtOpt("src-group", CUSTOM, XTOPT_INVERT, parse=val_mask_parser(GROUPS)),
                        XtOpt("dst-group", CUSTOM, XTOPT_INVERT, parse=val_mask_parser(GROUPS)))

    def __init__(self) -> None:
        self.src: tuple[int, int] | None = None
        self.dst: tuple[int, int] | None = None
        self.src_inv = self.dst_inv = False

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> DevgroupMatch:
        got = cls.OPTIONS.parse(opts)
        if not got.seen():
            raise ExtensionError("devgroup match: You must specify either '--src-group' or '--dst-group'")
        m = cls()
        m.src, m.src_inv = got.get("src-group"), got.invert("src-group")
        m.dst, m.dst_inv = got.get("dst-group"), got.invert("dst-group")
        return m

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return bool(self.src and builtin_chain_outside(chain, IN_HOOKS) or
                    self.dst and builtin_chain_outside(chain, OUT_HOOKS))

    def _show(self, prefix: str, numeric: bool) -> str:
        out = []
        for word, v, inv in (("src-group", self.src, self.src_inv), ("dst-group", self.dst, self.dst_inv)):
            if v is not None:
                out.append(f"{'! ' if inv else ''}{prefix}{word} {val_mask_text(*v, None if numeric else GROUPS)}")
        return " ".join(out)

    def save(self) -> str:
        return "-m devgroup " + self._show("--", False)

    def listing(self, numeric: bool = True) -> str:
        return self._show("", numeric)

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        for v, inv, dev in ((self.src, self.src_inv, ctx.state.in_dev), (self.dst, self.dst_inv, ctx.state.out_dev)):
            if v is None:
                continue
            iface = ctx.node.interfaces.get(dev) if dev else None
            group = int(getattr(iface, "group", 0) or 0)
            if ((group & v[1]) == v[0]) == inv:
                return False
        return True


@register_match
class RealmMatch(Match):
    SHAREABLE = True
    name = "realm"
    FAMILIES = (4,)
    OPTIONS = XtOptions("realm", XtOpt("realm", CUSTOM, XTOPT_INVERT | XTOPT_MAND, parse=val_mask_parser(REALMS)))

    def __init__(self, value: int, mask: int, invert: bool) -> None:
        self.value, self.mask, self.invert = value, mask, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> RealmMatch:
        got = cls.OPTIONS.parse_all(opts)
        value, mask = got.get("realm")
        return cls(value, mask, got.invert("realm"))

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return builtin_chain_outside(chain, ("POSTROUTING", "FORWARD", "OUTPUT", "INPUT"))

    def save(self) -> str:
        return f"-m realm {'! ' if self.invert else ''}--realm {val_mask_text(self.value, self.mask, REALMS)}"

    def listing(self, numeric: bool = True) -> str:
        return f"{'! ' if self.invert else ''}realm {val_mask_text(self.value, self.mask, None if numeric else REALMS)}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        # The route's realm: the emulated routes carry none, which is realm 0.
        return ((0 & self.mask) == self.value) != self.invert


@register_match
class CgroupMatch(Match):
    SHAREABLE = True
    name = "cgroup"
    REVISION = 2
    HOOKS = ("OUTPUT", "POSTROUTING", "INPUT")
    OPTIONS = XtOptions("cgroup", XtOpt("path", STRING, XTOPT_INVERT, size=512),
                        XtOpt("cgroup", UINT32, XTOPT_INVERT))

    def __init__(self) -> None:
        self.path: str | None = None
        self.classid: int | None = None
        self.path_inv = self.classid_inv = False

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> CgroupMatch:
        got = cls.OPTIONS.parse_all(opts)
        m = cls()
        m.path, m.path_inv = got.get("path"), got.invert("path")
        m.classid, m.classid_inv = got.get("cgroup"), got.invert("cgroup")
        return m

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        # cgroup_mt_check_v2: exactly one of path and classid.
        return (self.path is None) == (self.classid is None)

    def save(self) -> str:
        text = "-m cgroup"
        if self.path is not None:
            text += f" {'! ' if self.path_inv else ''}--path {save_string(self.path)}"
        if self.classid is not None:
            text += f" {'! ' if self.classid_inv else ''}--cgroup {self.classid}"
        return text

    def listing(self, numeric: bool = True) -> str:
        text = "cgroup"
        if self.path is not None:
            text += f" {'! ' if self.path_inv else ''}{self.path}"
        if self.classid is not None:
            text += f" {'! ' if self.classid_inv else ''}{self.classid}"
        return text

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if not pkt.local:
            return False            # no socket: cgroup_mt returns false
        return cannot_know(ctx, "cgroup", "the sending socket's cgroup")


@register_match
class ClusterMatch(Match):
    SHAREABLE = True
    name = "cluster"
    NEEDS_CONNTRACK = True
    OPTIONS = XtOptions(
        "cluster", XtOpt("cluster-total-nodes", UINT32, XTOPT_MAND, min=1, max=32),
        XtOpt("cluster-local-node", UINT32, XTOPT_INVERT, min=1, max=32, excl=("cluster-local-nodemask",)),
        XtOpt("cluster-local-nodemask", UINT32, XTOPT_INVERT, min=1, max=32, excl=("cluster-local-node",)),
        XtOpt("cluster-hash-seed", UINT32, XTOPT_MAND))

    def __init__(self, total: int, mask: int, seed: int, invert: bool) -> None:
        self.total, self.mask, self.seed, self.invert = total, mask, seed, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> ClusterMatch:
        got = cls.OPTIONS.parse(opts)
        mask, invert = 0, False
        for key in got.order:
            if key == "cluster-local-node":
                mask, invert = 1 << (got.get(key) - 1), invert or got.invert(key)
            elif key == "cluster-local-nodemask":
                mask, invert = got.get(key), invert or got.invert(key)
        total = got.get("cluster-total-nodes", 0)
        seen = got.seen()
        if {"cluster-total-nodes", "cluster-local-node", "cluster-hash-seed"} <= seen:
            if mask >= 1 << total:
                raise ExtensionError("cluster match: `--cluster-local-node' must be <= `--cluster-total-nodes'")
        elif {"cluster-total-nodes", "cluster-local-nodemask", "cluster-hash-seed"} <= seen:
            if mask >= 1 << total:
                raise ExtensionError("cluster match: `--cluster-local-nodemask' too big for `--cluster-total-nodes'")
        elif not seen & {"cluster-local-node", "cluster-local-nodemask"}:
            raise ExtensionError("cluster match: `--cluster-local-node' or`--cluster-local-nodemask' is missing")
        cls.OPTIONS.fcheck(got)
        return cls(total, mask, got.get("cluster-hash-seed", 0), invert)

    def save(self) -> str:
        return (f"-m cluster {'! ' if self.invert else ''}--cluster-local-nodemask 0x{self.mask:08x} "
                f"--cluster-total-nodes {self.total} --cluster-hash-seed 0x{self.seed:08x}")

    def listing(self, numeric: bool = True) -> str:
        return (f"cluster {'!' if self.invert else ''}node_mask=0x{self.mask:08x} total_nodes={self.total} "
                f"hash_seed=0x{self.seed:08x}")

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        # xt_cluster hashes the original source address with jhash; a stable stand-in hash picks the node
        # (which node the real kernel picks is not reproduced).
        ct = pkt.ct
        src = ct.orig.src if ct is not None else pkt.src
        node = zlib.crc32(src.to_bytes(16, "big") + self.seed.to_bytes(4, "big")) % self.total
        return bool(self.mask >> node & 1) != self.invert


@register_match
class ConnlabelMatch(Match):
    SHAREABLE = True
    name = "connlabel"
    NEEDS_CONNTRACK = True
    OPTIONS = XtOptions("connlabel", XtOpt("label", STRING, XTOPT_MAND | XTOPT_INVERT, min=1), XtOpt("set", NONE))

    def __init__(self, bit: int, invert: bool, set_: bool) -> None:
        self.bit, self.invert, self.set = bit, invert, set_
        self.ERRNO = "Numerical result out of range"

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> ConnlabelMatch:
        got = cls.OPTIONS.parse_all(opts)
        label = got.get("label")
        parsed = c_strtoul(label)
        if parsed is None or parsed[1] or parsed[0] > 0x7FFFFFFF:
            raise ExtensionError(f"label '{label}' not found or invalid value")
        return cls(parsed[0], got.invert("label"), "set" in got)

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return self.bit > 127

    def save(self) -> str:
        return f"-m connlabel {'! ' if self.invert else ''}--label \"{self.bit}\"" + (" --set" if self.set else "")

    def listing(self, numeric: bool = True) -> str:
        return f"connlabel {'! ' if self.invert else ''}{self.bit}" + (" set" if self.set else "")

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        ct = pkt.ct
        if ct is None:
            return self.invert
        if self.set and not self.invert:
            ct.labels |= 1 << self.bit
            return True
        return bool(ct.labels >> self.bit & 1) != self.invert


@register_match
class SocketMatch(Match):
    SHAREABLE = True
    name = "socket"
    REVISION = 3
    HOOKS = ("PREROUTING", "INPUT")
    FLAGS = ("transparent", "nowildcard", "restore-skmark")
    OPTIONS = XtOptions("socket", *(XtOpt(f, NONE) for f in FLAGS))

    def __init__(self, flags: frozenset[str]) -> None:
        self.flags = flags

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> SocketMatch:
        return cls(frozenset(cls.OPTIONS.parse_all(opts).seen()))

    def _words(self) -> str:
        return "".join(f" --{f}" for f in self.FLAGS if f in self.flags)

    def save(self) -> str:
        return "-m socket" + self._words()

    def listing(self, numeric: bool = True) -> str:
        return "socket" + self._words()

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        """A local socket for the packet: an established connection to this node counts; listening
        sockets are not modelled, so a new connection's answer cannot be known."""
        ct = pkt.ct
        if ct is not None and pkt.ctstate == "ESTABLISHED" and ctx.node.addr_type(pkt.family, pkt.dst) == "LOCAL":
            return "transparent" not in self.flags
        return cannot_know(ctx, "socket", "whether a local socket takes this packet")
