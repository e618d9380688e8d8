"""The owner match (OUTPUT and POSTROUTING): the uid/gid of the socket that sent a local packet.

The packet's ``uid``/``gid`` are its socket's (None: no socket known). A forwarded packet has no
socket, so it fails every test but an inverted ``--socket-exists``; a local packet whose owner was
not given cannot be decided, which the trace says.
"""

from __future__ import annotations

import grp
import pwd
from typing import TYPE_CHECKING

from kproxy.iptables.ext.unknown import cannot_know
from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import BAD_VALUE, CUSTOM, NONE, XTOPT_INVERT, XtCall, XtOpt, XtOptions
from kproxy.iptables.xtutil import c_strtoul
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

ID_MAX = 0xFFFFFFFE          # -1 is reserved, so the highest id is one less


def _id_range(call: XtCall, lookup: str) -> tuple[int, int]:
    """A user or group name, or ``a``, ``a-b`` or ``a:b`` (owner_parse_range)."""
    try:
        n = pwd.getpwnam(call.arg).pw_uid if lookup == "user" else grp.getgrnam(call.arg).gr_gid
        return n, n
    except KeyError:
        pass
    bad = ExtensionError(BAD_VALUE.format(ext="owner", opt=call.opt, value=call.arg))
    got = c_strtoul(call.arg)
    if got is None or got[0] > ID_MAX:
        raise bad
    lo, rest = got
    hi = lo
    if rest[:1] in ("-", ":"):
        got = c_strtoul(rest[1:])
        if got is None or got[0] > ID_MAX:
            raise bad
        hi, rest = got
    if rest:
        raise bad
    return lo, hi


def _id_text(ids: tuple[int, int], numeric: bool, lookup: str) -> str:
    if ids[0] != ids[1]:
        return f"{ids[0]}-{ids[1]}"
    if not numeric:
        try:
            return pwd.getpwuid(ids[0]).pw_name if lookup == "user" else grp.getgrgid(ids[0]).gr_name
        except KeyError:
            pass
    return str(ids[0])


@register_match
class OwnerMatch(Match):
    SHAREABLE = True
    name = "owner"
    HOOKS = ("OUTPUT", "POSTROUTING")
    OPTIONS = XtOptions(
        "owner",
        XtOpt("uid-owner", CUSTOM, XTOPT_INVERT, parse=lambda call: _id_range(call, "user")),
        XtOpt("gid-owner", CUSTOM, XTOPT_INVERT, parse=lambda call: _id_range(call, "group")),
        XtOpt("socket-exists", NONE, XTOPT_INVERT),
        XtOpt("suppl-groups", NONE),
    )

    def __init__(self) -> None:
        self.uid: tuple[int, int] | None = None
        self.gid: tuple[int, int] | None = None
        self.socket = self.suppl = False
        self.inv: set[str] = set()

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> OwnerMatch:
        m = cls()
        for o in opts:      # --suppl-groups is checked against what came before it
            if o.name == "suppl-groups" and not any(p.name == "gid-owner" for p in opts[:opts.index(o)]):
                raise ExtensionError(BAD_VALUE.format(ext="owner", opt="suppl-groups",
                                                      value="you need to use --gid-owner first"))
        got = cls.OPTIONS.parse(opts, family)
        if not got.seen():
            raise ExtensionError("owner: At least one of --uid-owner, --gid-owner or --socket-exists is required")
        m.uid, m.gid = got.get("uid-owner"), got.get("gid-owner")
        m.socket, m.suppl = "socket-exists" in got, "suppl-groups" in got
        m.inv = {k for k in got.seen() if got.invert(k)}
        return m

    def _items(self, numeric: bool, labels: tuple[str, str, str, str]) -> str:
        out = []
        for key, label, value in (("socket-exists", labels[0], None), ("uid-owner", labels[1], self.uid),
                                  ("gid-owner", labels[2], self.gid), ("suppl-groups", labels[3], None)):
            present = {"socket-exists": self.socket, "suppl-groups": self.suppl}.get(key, value is not None)
            if not present:
                continue
            text = ("! " if key in self.inv else "") + label
            if value is not None:
                text += " " + _id_text(value, numeric, "user" if key == "uid-owner" else "group")
            out.append(text)
        return " ".join(out)

    def save(self) -> str:
        return "-m owner " + self._items(True, ("--socket-exists", "--uid-owner", "--gid-owner", "--suppl-groups"))

    def listing(self, numeric: bool = True) -> str:
        return self._items(numeric, ("owner socket exists", "owner UID match", "owner GID match",
                                     "incl. suppl. groups"))

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        # owner_mt: no socket (a forwarded packet) matches only an inverted --socket-exists.
        if not pkt.local:
            return self.socket and "socket-exists" in self.inv
        if self.socket and "socket-exists" in self.inv:
            return False
        for key, want, have in (("uid-owner", self.uid, pkt.uid), ("gid-owner", self.gid, pkt.gid)):
            if want is None:
                continue
            if have is None:
                return cannot_know(ctx, "owner", "the sending socket's " + key[:3])
            if (want[0] <= have <= want[1]) == (key in self.inv):
                return False
        return True
