"""The bpf match: a classic BPF program (as ``nfbpf_compile`` prints it) run over the packet from
its IP header, or a pinned eBPF object (which the emulator cannot run: the trace says so)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from kproxy.iptables.ext.u32 import packet_bytes
from kproxy.iptables.ext.unknown import cannot_know
from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import STRING, XtOpt, XtOptions
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

MAX_INSTR = 64
_HEAD = re.compile(r"\s*\+?(\d+)(.)", re.S)
_INSTR = re.compile(r"\s*\+?(\d+)\s+\+?(\d+)\s+\+?(\d+)\s+\+?(\d+)")
Instr = tuple[int, int, int, int]


def parse_program(text: str) -> tuple[Instr, ...]:
    """bpf_parse_string: ``N,code jt jf k,...`` with the tool's messages."""
    head = _HEAD.match(text)
    if head is None or head.group(2) != "," or int(head.group(1)) > 0xFFFF:
        raise ExtensionError("bpf: error parsing program length")
    length = int(head.group(1))
    if not length:
        raise ExtensionError("bpf: illegal zero length program")
    if length > MAX_INSTR:
        raise ExtensionError("bpf: number of instructions exceeds maximum")
    out: list[Instr] = []
    tokens = text.split(",")[1:]
    for i, token in enumerate(tokens):
        if not token and i == len(tokens) - 1:
            break
        if len(out) >= length:
            raise ExtensionError("bpf: real program length exceeds the encoded length parameter")
        m = _INSTR.match(token)
        if m is None:
            raise ExtensionError(f"bpf: error at instr {len(out)}")
        code, jt, jf, k = (int(g) for g in m.groups())
        out.append((code & 0xFFFF, jt & 0xFF, jf & 0xFF, k & 0xFFFFFFFF))
    if len(out) != length:
        raise ExtensionError("bpf: parsed program length is less than the encoded length parameter")
    return tuple(out)


def run(program: tuple[Instr, ...], data: bytes) -> int | None:
    """A classic BPF interpreter (loads, ALU, jumps, returns); None when a load runs off the packet."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    while pc < len(program):
        code, jt, jf, k = program[pc]
        pc += 1
        cls = code & 0x07
        if cls in (0x00, 0x01):                         # LD / LDX
            mode, size = code & 0xE0, code & 0x18
            if mode == 0x00:                            # IMM
                value = k
            elif mode == 0x60:                          # MEM
                value = mem[k & 15]
            elif mode == 0x80:                          # LEN
                value = len(data)
            elif mode == 0xA0 and cls == 0x01:          # MSH: 4 * (byte & 0xf)
                if k >= len(data):
                    return None
                value = (data[k] & 0xF) * 4
            else:                                       # ABS / IND
                at = k + (x if mode == 0x40 else 0)
                width = {0x00: 4, 0x08: 2, 0x10: 1}[size]
                if at + width > len(data):
                    return None
                value = int.from_bytes(data[at:at + width], "big")
            if cls == 0x00:
                a = value
            else:
                x = value
        elif cls in (0x02, 0x03):                       # ST / STX
            mem[k & 15] = a if cls == 0x02 else x
        elif cls == 0x04:                               # ALU
            operand = x if code & 0x08 else k
            op = code & 0xF0
            if op in (0x30, 0x90) and operand == 0:
                return 0
            a = {0x00: a + operand, 0x10: a - operand, 0x20: a * operand, 0x30: a // operand if operand else 0,
                 0x40: a | operand, 0x50: a & operand, 0x60: a << (operand & 31), 0x70: a >> (operand & 31),
                 0x80: -a, 0x90: a % operand if operand else 0, 0xA0: a ^ operand}.get(op, a) & 0xFFFFFFFF
        elif cls == 0x05:                               # JMP
            operand = x if code & 0x08 else k
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            hit = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand, 0x40: bool(a & operand)}.get(op, False)
            pc += jt if hit else jf
        elif cls == 0x06:                               # RET
            return (a if code & 0x18 == 0x10 else k) & 0xFFFFFFFF
        else:                                           # MISC: TAX / TXA
            if code & 0xF8 == 0x80:
                a = x
            else:
                x = a
    return 0


@register_match
class BpfMatch(Match):
    SHAREABLE = True
    name = "bpf"
    REVISION = 1
    LISTING_SPACE = ""                      # bpf_print starts with no blank
    OPTIONS = XtOptions("bpf", XtOpt("bytecode", STRING), XtOpt("object-pinned", STRING, size=512))

    def __init__(self, program: tuple[Instr, ...] | None, pinned: str | None) -> None:
        self.program, self.pinned = program, pinned

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> BpfMatch:
        got = cls.OPTIONS.parse(opts)
        program = parse_program(got.get("bytecode")) if "bytecode" in got else None
        if "object-pinned" in got:
            # bpf_obj_get on the path: the emulator has no BPF filesystem, so no object can be opened.
            raise ExtensionError("bpf: failed to get bpf object")
        if program is None:
            raise ExtensionError("bpf: one of --bytecode or --pinned is required")
        return cls(program, None)

    def _code(self, tail: str) -> str:
        assert self.program is not None
        return ",".join(f"{c} {jt} {jf} {k}" for c, jt, jf, k in self.program) + tail

    def save(self) -> str:
        if self.program is None:
            return f"-m bpf --object-pinned {self.pinned}"
        return f"-m bpf --bytecode \"{len(self.program)},{self._code('')}\""

    def listing(self, numeric: bool = True) -> str:
        if self.program is None:
            return f"match bpf pinned {self.pinned}"
        return "match bpf " + self._code("\0")         # bpf_print_code ends with a NUL character

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        if self.program is None:
            return cannot_know(ctx, "bpf", "what the pinned eBPF program decides")
        data, known = packet_bytes(pkt)
        verdict = run(self.program, data)
        if verdict is None:
            return cannot_know(ctx, "bpf", "the packet's payload") if not known else False
        return verdict != 0
