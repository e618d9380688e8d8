"""Targets on TCP handshakes: SYNPROXY (answers SYNs itself with cookies before the server sees the
connection) and TCPOPTSTRIP (removes TCP options). Both need ``-p tcp``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.ext.tcpmss import tcp_only
from kproxy.iptables.ext.unknown import changed
from kproxy.iptables.extension import XT_CONTINUE, ExtensionError, Opt, RuleContext, Target, register_target
from kproxy.iptables.xtoptions import NONE, STRING, UINT32, XtOpt, XtOptions
from kproxy.iptables.xtutil import c_strtoui
from kproxy.packet import ACK, NF_DROP, SYN, TCP, Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

OPTION_NAMES = (("wscale", 3), ("mss", 2), ("sack-permitted", 4), ("sack", 5), ("timestamp", 8), ("md5", 19))


@register_target
class SynproxyTarget(Target):
    SHAREABLE = True
    name = "SYNPROXY"
    HOOKS = ("INPUT", "FORWARD")
    NEEDS_CONNTRACK = True
    FLAGS = ("sack-perm", "timestamp", "wscale", "mss", "ecn")
    OPTIONS = XtOptions("SYNPROXY", XtOpt("sack-perm", NONE), XtOpt("timestamp", NONE), XtOpt("wscale", UINT32),
                        XtOpt("mss", UINT32), XtOpt("ecn", NONE))

    def __init__(self, flags: frozenset[str], wscale: int, mss: int) -> None:
        self.flags, self.wscale, self.mss = flags, wscale, mss

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> SynproxyTarget:
        got = cls.OPTIONS.parse_all(opts)
        return cls(frozenset(got.seen()), got.get("wscale", 0) & 0xFF, got.get("mss", 0) & 0xFFFF)

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return not tcp_only(rule)

    def _words(self, dash: str) -> list[str]:
        out = []
        for flag in self.FLAGS:
            if flag in self.flags:
                value = {"wscale": f" {self.wscale}", "mss": f" {self.mss}"}.get(flag, "")
                out.append(f"{dash}{flag}{value}")
        return out

    def save(self) -> str:
        return " ".join(["-j SYNPROXY", *self._words("--")])

    def listing(self, numeric: bool = True) -> str:
        return "SYNPROXY " + "".join(w + " " for w in self._words(""))

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        """synproxy_tg4: a SYN is answered with a cookie SYN/ACK and dropped; the handshake's final ACK
        would open the connection to the server. The emulator answers nothing: it reports it."""
        if pkt.tcp_flags & (SYN | ACK) == SYN:
            changed(ctx, "SYNPROXY", "SYN answered with a SYN cookie by the proxy")
            return NF_DROP
        return XT_CONTINUE


def parse_options(text: str) -> frozenset[int]:
    out: set[int] = set()
    for word in text.split(","):
        option = next((n for name, n in OPTION_NAMES if name == word), 0)
        if option == 0:
            got = c_strtoui(word, 0, 0xFF)
            if got is None:
                raise ExtensionError(f"Bad TCP option value \"{word}\"")
            option = got
        if option < 2:
            raise ExtensionError("Option value may not be 0 or 1")
        if option in out:
            raise ExtensionError(f"Option \"{word}\" already specified")
        out.add(option)
    return frozenset(out)


@register_target
class TcpoptstripTarget(Target):
    SHAREABLE = True
    name = "TCPOPTSTRIP"
    TABLES = ("mangle",)
    OPTIONS = XtOptions("TCPOPTSTRIP", XtOpt("strip-options", STRING))

    def __init__(self, options: frozenset[int]) -> None:
        self.options = options

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> TcpoptstripTarget:
        got = cls.OPTIONS.parse_all(opts)
        return cls(parse_options(got.get("strip-options")) if "strip-options" in got else frozenset())

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return not tcp_only(rule)

    def _list(self, numeric: bool) -> str:
        names = {n: name for name, n in OPTION_NAMES}
        return ",".join(str(o) if numeric or o not in names else names[o] for o in sorted(self.options))

    def save(self) -> str:
        return "-j TCPOPTSTRIP" + (f" --strip-options {self._list(True)}" if self.options else "")

    def listing(self, numeric: bool = True) -> str:
        return f"TCPOPTSTRIP options {self._list(numeric)}" if self.options else ""

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        if pkt.proto == TCP and 2 in self.options and pkt.tcp_mss:
            changed(ctx, "TCPOPTSTRIP", f"MSS option {pkt.tcp_mss} removed")
            pkt.tcp_mss = 0
        return XT_CONTINUE
