"""The IP header's TOS byte (IPv6: traffic class): the dscp, tos and ecn matches and the DSCP, TOS
and ECN targets. DSCP is the top six bits, ECN the low two (``pkt.tos``); the targets are mangle-only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kproxy.iptables.ext.unknown import changed
from kproxy.iptables.extension import (
    XT_CONTINUE,
    ExtensionError,
    Match,
    Opt,
    RuleContext,
    Target,
    register_match,
    register_target,
)
from kproxy.iptables.xtoptions import CUSTOM, NONE, UINT8, XTOPT_INVERT, XTOPT_MAND, XtCall, XtOpt, XtOptions
from kproxy.iptables.xtutil import c_strtoul
from kproxy.packet import CWR, ECE, TCP, Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

DS_CLASSES = (("CS0", 0x00), ("CS1", 0x08), ("CS2", 0x10), ("CS3", 0x18), ("CS4", 0x20), ("CS5", 0x28),
              ("CS6", 0x30), ("CS7", 0x38), ("BE", 0x00), ("AF11", 0x0A), ("AF12", 0x0C), ("AF13", 0x0E),
              ("AF21", 0x12), ("AF22", 0x14), ("AF23", 0x16), ("AF31", 0x1A), ("AF32", 0x1C), ("AF33", 0x1E),
              ("AF41", 0x22), ("AF42", 0x24), ("AF43", 0x26), ("EF", 0x2E))
TOS_SYMBOLS = (("Minimize-Delay", 0x10), ("Maximize-Throughput", 0x08), ("Maximize-Reliability", 0x04),
               ("Minimize-Cost", 0x02), ("Normal-Service", 0x00))


def class_to_dscp(call: XtCall) -> int:
    """class_to_dscp: the first class the argument begins with, case-insensitively (so ``AF411`` is AF41)."""
    for name, value in DS_CLASSES:
        if call.arg[:len(name)].upper() == name:
            return value
    raise ExtensionError(f"Invalid DSCP value `{call.arg}'")


def tos_mask_parser(call: XtCall) -> tuple[int, int]:
    """XTTYPE_TOSMASK: ``value[/mask]`` (mask 0xff when not given), else a symbol (its value, mask 0x3f)."""
    got = c_strtoul(call.arg)
    if got is None or got[0] > 0xFF:
        for name, value in TOS_SYMBOLS:
            if call.arg.lower() == name.lower():
                return value, 0x3F
        raise ExtensionError(f"Symbolic name \"{call.arg}\" is unknown")
    value, rest = got
    mask = 0xFF
    if rest.startswith("/"):
        got = c_strtoul(rest[1:])
        if got is None or got[0] > 0xFF:
            raise ExtensionError(f"Illegal value: \"{call.arg}\"")
        mask, rest = got
    if rest:
        raise ExtensionError(f"Illegal value: \"{call.arg}\"")
    return value, mask


def tos_symbol(value: int, mask: int) -> str | None:
    if mask != 0x3F:
        return None
    return next((name for name, v in TOS_SYMBOLS if v == value), None)


def set_tos(pkt: Packet, ctx: RuleContext, target: str, tos: int) -> None:
    if tos != pkt.tos:
        changed(ctx, target, f"tos 0x{pkt.tos:02x} -> 0x{tos:02x}")
        pkt.tos = tos


@register_match
class DscpMatch(Match):
    SHAREABLE = True
    name = "dscp"
    OPTIONS = XtOptions("dscp", XtOpt("dscp", UINT8, XTOPT_INVERT, max=0x3F, excl=("dscp-class",)),
                        XtOpt("dscp-class", CUSTOM, XTOPT_INVERT, excl=("dscp",), parse=class_to_dscp))

    def __init__(self, dscp: int, invert: bool) -> None:
        self.dscp, self.invert = dscp, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> DscpMatch:
        got = cls.OPTIONS.parse_required(opts, "DSCP match: Parameter --dscp is required")
        key = got.last
        return cls(got.get(key), any(got.invert(k) for k in got.seen()))

    def save(self) -> str:
        return f"-m dscp {'! ' if self.invert else ''}--dscp 0x{self.dscp:02x}"

    def listing(self, numeric: bool = True) -> str:
        return f"DSCP match {'!' if self.invert else ''}0x{self.dscp:02x}"

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return ((pkt.tos >> 2) == self.dscp) != self.invert


@register_target
class DscpTarget(Target):
    SHAREABLE = True
    name = "DSCP"
    TABLES = ("mangle",)
    OPTIONS = XtOptions("DSCP", XtOpt("set-dscp", UINT8, max=0x3F, excl=("set-dscp-class",)),
                        XtOpt("set-dscp-class", CUSTOM, excl=("set-dscp",), parse=class_to_dscp))

    def __init__(self, dscp: int) -> None:
        self.dscp = dscp

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> DscpTarget:
        got = cls.OPTIONS.parse_required(opts, "DSCP target: Parameter --set-dscp is required")
        return cls(got.get(got.last))

    def save(self) -> str:
        return f"-j DSCP --set-dscp 0x{self.dscp:02x}"

    def listing(self, numeric: bool = True) -> str:
        return f"DSCP set 0x{self.dscp:02x}"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        set_tos(pkt, ctx, "DSCP", (pkt.tos & 0x03) | (self.dscp << 2))
        return XT_CONTINUE


@register_match
class TosMatch(Match):
    SHAREABLE = True
    name = "tos"
    REVISION = 1
    OPTIONS = XtOptions("tos", XtOpt("tos", CUSTOM, XTOPT_INVERT | XTOPT_MAND, parse=tos_mask_parser))

    def __init__(self, value: int, mask: int, invert: bool) -> None:
        self.value, self.mask, self.invert = value, mask, invert

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> TosMatch:
        got = cls.OPTIONS.parse_all(opts)
        value, mask = got.get("tos")
        return cls(value, mask, got.invert("tos"))

    def save(self) -> str:
        return f"-m tos {'! ' if self.invert else ''}--tos 0x{self.value:02x}/0x{self.mask:02x}"

    def listing(self, numeric: bool = True) -> str:
        symbol = None if numeric else tos_symbol(self.value, self.mask)
        return f"tos match{'!' if self.invert else ''}" + (f" {symbol}" if symbol else
                                                            f"0x{self.value:02x}/0x{self.mask:02x}")

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return ((pkt.tos & self.mask) == self.value) != self.invert


@register_target
class TosTarget(Target):
    SHAREABLE = True
    name = "TOS"
    REVISION = 1
    TABLES = ("mangle",)
    OPTIONS = XtOptions("TOS", XtOpt("set-tos", CUSTOM, excl=("and-tos", "or-tos", "xor-tos"),
                                     parse=tos_mask_parser),
                        XtOpt("and-tos", UINT8, excl=("set-tos", "or-tos", "xor-tos")),
                        XtOpt("or-tos", UINT8, excl=("set-tos", "and-tos", "xor-tos")),
                        XtOpt("xor-tos", UINT8, excl=("set-tos", "and-tos", "or-tos")))

    def __init__(self, value: int, mask: int) -> None:
        self.value, self.mask = value, mask

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> TosTarget:
        got = cls.OPTIONS.parse_required(opts, "TOS: An action is required")
        key = got.last
        v = got.get(key)
        value, mask = {"set-tos": v, "and-tos": (0, ~v & 0xFF) if key == "and-tos" else None,
                       "or-tos": (v, v), "xor-tos": (v, 0)}[key]
        return cls(value, mask)

    def save(self) -> str:
        return f"-j TOS --set-tos 0x{self.value:02x}/0x{self.mask:02x}"

    def listing(self, numeric: bool = True) -> str:
        if not numeric:
            symbol = tos_symbol(self.value, self.mask)
            if symbol:
                return f" TOS set{symbol}"      # tos_try_print_symbolic's prefix and blank, in that order
            if self.value == 0:
                return f"TOS and 0x{~self.mask & 0xFF:02x}"
            if self.value == self.mask:
                return f"TOS or 0x{self.value:02x}"
            if self.mask == 0:
                return f"TOS xor 0x{self.value:02x}"
        return f"TOS set 0x{self.value:02x}/0x{self.mask:02x}"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        set_tos(pkt, ctx, "TOS", (pkt.tos & ~self.mask & 0xFF) ^ self.value)
        return XT_CONTINUE


@register_match
class EcnMatch(Match):
    SHAREABLE = True
    name = "ecn"
    OPTIONS = XtOptions("ecn", XtOpt("ecn-tcp-cwr", NONE, XTOPT_INVERT), XtOpt("ecn-tcp-ece", NONE, XTOPT_INVERT),
                        XtOpt("ecn-ip-ect", UINT8, XTOPT_INVERT, max=3))

    def __init__(self) -> None:
        self.ece: bool | None = None    # None: not tested, else whether inverted
        self.cwr: bool | None = None
        self.ect: int | None = None
        self.ect_inv = False

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> EcnMatch:
        got = cls.OPTIONS.parse(opts)
        if not got.seen():
            raise ExtensionError("ECN match: some option required")
        m = cls()
        m.ece = got.invert("ecn-tcp-ece") if "ecn-tcp-ece" in got else None
        m.cwr = got.invert("ecn-tcp-cwr") if "ecn-tcp-cwr" in got else None
        m.ect, m.ect_inv = got.get("ecn-ip-ect"), got.invert("ecn-ip-ect")
        return m

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        # ecn_mt_check: the TCP bits need -p tcp.
        return (self.ece is not None or self.cwr is not None) and (rule.proto != TCP or rule.proto_inv)

    def save(self) -> str:
        text = "-m ecn"
        for word, inv in (("ece", self.ece), ("cwr", self.cwr)):
            if inv is not None:
                text += f" {'! ' if inv else ''}--ecn-tcp-{word}"
        if self.ect is not None:
            text += f" {'! ' if self.ect_inv else ''}--ecn-ip-ect {self.ect}"
        return text

    def listing(self, numeric: bool = True) -> str:
        text = "ECN match"
        for word, inv in (("ECE", self.ece), ("CWR", self.cwr)):
            if inv is not None:
                text += f" {'!' if inv else ''}{word}"
        if self.ect is not None:
            text += f" {'!' if self.ect_inv else ''}ECT={self.ect}"
        return text

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if self.ect is not None and ((pkt.tos & 3) == self.ect) == self.ect_inv:
            return False
        for bit, inv in ((ECE, self.ece), (CWR, self.cwr)):
            if inv is not None and (pkt.proto != TCP or bool(pkt.tcp_flags & bit) == inv):
                return False
        return True


@register_target
class EcnTarget(Target):
    SHAREABLE = True
    name = "ECN"
    FAMILIES = (4,)
    TABLES = ("mangle",)
    OPTIONS = XtOptions("ECN", XtOpt("ecn-tcp-remove", NONE, excl=("ecn-tcp-cwr", "ecn-tcp-ece")),
                        XtOpt("ecn-tcp-cwr", UINT8, max=1, excl=("ecn-tcp-remove",)),
                        XtOpt("ecn-tcp-ece", UINT8, max=1, excl=("ecn-tcp-remove",)),
                        XtOpt("ecn-ip-ect", UINT8, max=3))

    def __init__(self) -> None:
        self.ece: int | None = None
        self.cwr: int | None = None
        self.ect: int | None = None

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> EcnTarget:
        got = cls.OPTIONS.parse_required(opts, "ECN target: An operation is required")
        t = cls()
        if "ecn-tcp-remove" in got:
            t.ece = t.cwr = 0
        t.ece = got.get("ecn-tcp-ece", t.ece)
        t.cwr = got.get("ecn-tcp-cwr", t.cwr)
        t.ect = got.get("ecn-ip-ect")
        return t

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        return (self.ece is not None or self.cwr is not None) and (rule.proto != TCP or rule.proto_inv)

    def _remove(self) -> bool:
        return self.ece == 0 and self.cwr == 0 and self.ect is None

    def save(self) -> str:
        if self._remove():
            return "-j ECN --ecn-tcp-remove"
        text = "-j ECN"
        for word, v in (("ece", self.ece), ("cwr", self.cwr), ("ip-ect", self.ect)):
            if v is not None:
                text += f" --ecn-{'tcp-' if word != 'ip-ect' else ''}{word} {v}"
        return text

    def listing(self, numeric: bool = True) -> str:
        if self._remove():
            return "ECN TCP remove"
        text = "ECN"
        for word, v in (("ECE", self.ece), ("CWR", self.cwr), ("ECT codepoint", self.ect)):
            if v is not None:
                text += f" {word}={v}"
        return text

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        if self.ect is not None:
            set_tos(pkt, ctx, "ECN", (pkt.tos & ~3) | self.ect)
        if pkt.proto == TCP:
            for bit, v in ((ECE, self.ece), (CWR, self.cwr)):
                if v is not None:
                    pkt.tcp_flags = (pkt.tcp_flags | bit) if v else (pkt.tcp_flags & ~bit)
        return XT_CONTINUE
