"""Targets that label packets for other subsystems: CLASSIFY (the tc class, skb->priority), SECMARK
and CONNSECMARK (the SELinux security mark, on the packet and its connection), AUDIT (an audit
record) and LED (blink an LED trigger). They change no verdict; the labels go to ``pkt.meta``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from kproxy.iptables.ext.unknown import changed
from kproxy.iptables.extension import XT_CONTINUE, ExtensionError, Opt, RuleContext, Target, register_target
from kproxy.iptables.xtoptions import NONE, STRING, XTOPT_MAND, XtOpt, XtOptions
from kproxy.iptables.xtutil import c_strtoul
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

_HEX = re.compile(r"\s*[+-]?(?:0[xX])?([0-9a-fA-F]+)")


def scan_hex(text: str) -> tuple[int, str] | None:
    """sscanf's %x: blanks, an optional 0x, hex digits (kept to 32 bits); None when there are none."""
    m = _HEX.match(text)
    if m is None:
        return None
    return int(m.group(1), 16) & 0xFFFFFFFF, text[m.end():]


@register_target
class ClassifyTarget(Target):
    SHAREABLE = True
    name = "CLASSIFY"
    HOOKS = ("POSTROUTING", "FORWARD", "OUTPUT")
    OPTIONS = XtOptions("CLASSIFY", XtOpt("set-class", STRING, XTOPT_MAND))

    def __init__(self, major: int, minor: int) -> None:
        self.major, self.minor = major, minor

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> ClassifyTarget:
        got = cls.OPTIONS.parse_all(opts)
        text = got.get("set-class")
        first = scan_hex(text)
        second = scan_hex(first[1][1:]) if first is not None and first[1].startswith(":") else None
        if first is None or second is None:
            raise ExtensionError(f"Bad class value \"{text}\"")
        return cls(first[0] & 0xFFFF, second[0] & 0xFFFF)

    def save(self) -> str:
        return f"-j CLASSIFY --set-class {self.major:04x}:{self.minor:04x}"

    def listing(self, numeric: bool = True) -> str:
        return f"CLASSIFY set {self.major:x}:{self.minor:x}"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        pkt.meta["priority"] = self.major << 16 | self.minor
        changed(ctx, "CLASSIFY", f"tc class {self.major:x}:{self.minor:x}")
        return XT_CONTINUE


@register_target
class AuditTarget(Target):
    SHAREABLE = True
    name = "AUDIT"
    TYPES = ("accept", "drop", "reject")
    OPTIONS = XtOptions("AUDIT", XtOpt("type", STRING, XTOPT_MAND))

    def __init__(self, kind: str) -> None:
        self.kind = kind

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> AuditTarget:
        got = cls.OPTIONS.parse_all(opts)
        kind = got.get("type").lower()
        if kind not in cls.TYPES:
            raise ExtensionError(f"Bad action type value \"{got.get('type')}\"")
        return cls(kind)

    def save(self) -> str:
        return f"-j AUDIT --type {self.kind}"

    def listing(self, numeric: bool = True) -> str:
        return f"AUDIT {self.kind}"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        changed(ctx, "AUDIT", f"audit record ({self.kind})")
        return XT_CONTINUE


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@register_target
class LedTarget(Target):
    name = "LED"
    KERNEL_LACKS = True
    OPTIONS = XtOptions("LED", XtOpt("led-trigger-id", STRING, XTOPT_MAND, max=27 - 11),
                        XtOpt("led-delay", STRING), XtOpt("led-always-blink", NONE))

    def __init__(self, trigger: str, delay: int, blink: bool) -> None:
        self.trigger, self.delay, self.blink = trigger, delay, blink

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> LedTarget:
        got = cls.OPTIONS.parse_all(opts)
        delay = 0
        if "led-delay" in got:
            text = got.get("led-delay")
            if text[:3].lower() == "inf":
                delay = -1
            else:
                n = c_strtoul(text)
                if n is None or n[1] or n[0] > 0xFFFFFFFF:
                    raise ExtensionError("Delay value must be within range 0..4294967295")
                delay = n[0] - (1 << 32) if n[0] >= 1 << 31 else n[0]
        return cls(got.get("led-trigger-id"), delay, "led-always-blink" in got)

    def save(self) -> str:
        text = f"-j LED --led-trigger-id {quoted(self.trigger)}"
        if self.delay > 0:
            text += f" --led-delay {self.delay}"
        elif self.delay == -1:
            text += " --led-delay inf"
        return text + (" --led-always-blink" if self.blink else "")

    def listing(self, numeric: bool = True) -> str:
        text = f"led-trigger-id:{quoted(self.trigger)} led-delay:" + ("inf" if self.delay == -1 else f"{self.delay}ms")
        return text + (" led-always-blink" if self.blink else "")

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        return XT_CONTINUE


@register_target
class SecmarkTarget(Target):
    SHAREABLE = True
    name = "SECMARK"
    REVISION = 1
    TABLES = ("mangle", "security")
    OPTIONS = XtOptions("SECMARK", XtOpt("selctx", STRING, XTOPT_MAND, size=256))

    ERRNO = "No such file or directory"

    def __init__(self, ctx_text: str) -> None:
        self.selctx = ctx_text

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> SecmarkTarget:
        return cls(cls.OPTIONS.parse_all(opts).get("selctx"))

    def kernel_refuses(self, rule: Rule, chain: str) -> bool:
        # secmark_tg_check: the context must map to an id, which needs an LSM (SELinux) this node lacks.
        return True

    def save(self) -> str:
        return f"-j SECMARK --selctx {self.selctx}"

    def listing(self, numeric: bool = True) -> str:
        return f"SECMARK selctx {self.selctx}"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        return XT_CONTINUE


@register_target
class ConnsecmarkTarget(Target):
    SHAREABLE = True
    name = "CONNSECMARK"
    TABLES = ("mangle", "security")
    NEEDS_CONNTRACK = True
    OPTIONS = XtOptions("CONNSECMARK", XtOpt("save", NONE, excl=("restore",)), XtOpt("restore", NONE, excl=("save",)))

    def __init__(self, mode: str) -> None:
        self.mode = mode

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> ConnsecmarkTarget:
        got = cls.OPTIONS.parse_required(opts, "CONNSECMARK target: parameter required")
        return cls(got.last)

    def save(self) -> str:
        return f"-j CONNSECMARK --{self.mode}"

    def listing(self, numeric: bool = True) -> str:
        return f"CONNSECMARK {self.mode}"

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        ct = pkt.ct
        if ct is not None:
            if self.mode == "save" and pkt.meta.get("secmark") and not ct.secmark:
                ct.secmark = pkt.meta["secmark"]
            elif self.mode == "restore" and ct.secmark and not pkt.meta.get("secmark"):
                pkt.meta["secmark"] = ct.secmark
        return XT_CONTINUE
