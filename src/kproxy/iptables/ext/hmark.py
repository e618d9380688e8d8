"""The HMARK target: the packet mark set from a hash of chosen header fields (addresses masked to a
prefix, ports, SPI, protocol), modulo a number plus an offset."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

from kproxy.iptables.ext.connlimit import parse_plen
from kproxy.iptables.ext.unknown import changed
from kproxy.iptables.extension import XT_CONTINUE, ExtensionError, Opt, RuleContext, Target, register_target
from kproxy.iptables.xtoptions import CUSTOM, UINT16, UINT32, XtCall, XtOpt, XtOptions
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

# Option ids in the order of the kernel's flag bits (XT_HMARK_*).
IDS = ("hmark-src-prefix", "hmark-dst-prefix", "hmark-spi", "hmark-spi-mask", "hmark-sport", "hmark-dport",
       "hmark-sport-mask", "hmark-dport-mask", "hmark-proto-mask", "hmark-rnd", "hmark-mod", "hmark-offset", "ct")
TUPLE = {"ct": "ct", "src": "hmark-src-prefix", "dst": "hmark-dst-prefix", "sport": "hmark-sport-mask",
         "dport": "hmark-dport-mask", "proto": "hmark-proto-mask", "spi": "hmark-spi-mask"}
FULL = {"hmark-sport-mask": 0xFFFF, "hmark-dport-mask": 0xFFFF, "hmark-proto-mask": 0xFFFF, "hmark-spi-mask": 0xFFFFFFFF}
PKT = {"hmark-src-prefix", "hmark-dst-prefix", "hmark-spi-mask", "hmark-sport-mask", "hmark-dport-mask",
       "hmark-proto-mask", "hmark-sport", "hmark-dport", "hmark-spi"}


def parse_tuple(call: XtCall) -> list[str]:
    """hmark_parse_type: a comma list of prefixes of the type names (case-insensitive)."""
    out = []
    parts = call.arg.split(",")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if last and not part:
            raise ExtensionError("\"--hmark-tuple\" requires a list of types with no spaces, e.g. "
                                 "src,dst,sport,dport,proto")
        kind = next((k for k in TUPLE if part and k[:len(part)].lower() == part.lower() and len(part) <= len(k)), None)
        if kind is None:
            raise ExtensionError(f"Bad type \"{','.join(parts[i:])}\"")
        out.append(TUPLE[kind])
    return out


@register_target
class HmarkTarget(Target):
    name = "HMARK"
    OPTIONS = XtOptions(
        "HMARK", XtOpt("hmark-tuple", CUSTOM, parse=parse_tuple),
        XtOpt("hmark-src-prefix", CUSTOM, parse=parse_plen), XtOpt("hmark-dst-prefix", CUSTOM, parse=parse_plen),
        XtOpt("hmark-sport-mask", UINT16), XtOpt("hmark-dport-mask", UINT16), XtOpt("hmark-spi-mask", UINT32),
        XtOpt("hmark-sport", UINT16), XtOpt("hmark-dport", UINT16), XtOpt("hmark-spi", UINT32),
        XtOpt("hmark-proto-mask", UINT16), XtOpt("hmark-rnd", UINT32), XtOpt("hmark-mod", UINT32, min=1),
        XtOpt("hmark-offset", UINT32))

    def __init__(self, family: int, values: dict[str, Any]) -> None:
        self.family, self.values = family, values
        self.bits = 32 if family == 4 else 128

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> HmarkTarget:
        values: dict[str, Any] = {}
        bits = 32 if family == 4 else 128
        for i, o in enumerate(opts):
            got = cls.OPTIONS.parse(opts[:i + 1], family)
            if o.name == "hmark-tuple":
                for key in got.get("hmark-tuple"):
                    values[key] = bits if key.endswith("prefix") else FULL.get(key, True)
            else:
                values[o.name] = got.get(o.name)
        if "hmark-mod" not in values:
            raise ExtensionError("--hmark-mod is mandatory")
        if "hmark-rnd" not in values:
            raise ExtensionError("--hmark-rnd is mandatory")
        if "hmark-spi-mask" in values and ("hmark-sport-mask" in values or "hmark-dport-mask" in values):
            raise ExtensionError("you cannot use --hmark-spi-mask and --hmark-?port-mask,at the same time")
        if not PKT & set(values) and "ct" not in values:
            raise ExtensionError("you have to specify --hmark-tuple at least")
        for key in ("hmark-src-prefix", "hmark-dst-prefix"):
            if key in values:
                values[key] = min(values[key], bits)
        return cls(family, values)

    def _items(self, save: bool) -> list[str]:
        v = self.values
        fmt = {"hmark-sport-mask": "0x{:04x}", "hmark-dport-mask": "0x{:04x}", "hmark-spi-mask": "0x{:08x}",
               "hmark-sport": "0x{:04x}", "hmark-dport": "0x{:04x}", "hmark-spi": "0x{:08x}",
               "hmark-proto-mask": "0x{:02x}", "hmark-rnd": "0x{:08x}"}
        out = []
        for key in ("hmark-sport-mask", "hmark-dport-mask", "hmark-spi-mask", "hmark-sport", "hmark-dport",
                    "hmark-spi", "hmark-proto-mask", "hmark-rnd"):
            if key in v:
                text = fmt[key].format(v[key]) if save else f"0x{v[key]:x}"
                out.append(f"--{key} {text}" if save else f"{key[6:]} {text} ")
        return out

    def save(self) -> str:
        v = self.values
        parts = ["-j HMARK"]
        for key in ("hmark-src-prefix", "hmark-dst-prefix"):
            if key in v:
                parts.append(f"--{key} {v[key]}")
        parts += self._items(True)
        if "hmark-mod" in v:
            parts.append(f"--hmark-mod {v['hmark-mod']}")
        if "hmark-offset" in v:
            parts.append(f"--hmark-offset {v['hmark-offset']}")
        if "ct" in v:
            parts.append("--hmark-tuple ct")
        return " ".join(parts)

    def listing(self, numeric: bool = True) -> str:
        v = self.values
        text = "HMARK "
        if "hmark-mod" in v:
            text += f"mod {v['hmark-mod']} "
        if "hmark-offset" in v:
            text += f"+ 0x{v['hmark-offset']:x} "
        if "ct" in v:
            text += "ct, "
        for key, word in (("hmark-src-prefix", "src-prefix"), ("hmark-dst-prefix", "dst-prefix")):
            if key in v:
                # IPv6 prints xtables_ip6mask_to_numeric() + 1: nothing for a full mask, else the length
                shown = "" if self.family == 6 and v[key] == 128 else str(v[key])
                text += f"{word} {shown} "
        return text + "".join(self._items(False))

    def execute(self, pkt: Packet, ctx: RuleContext) -> int:
        """A stable hash of the selected fields (the kernel's jhash is not reproduced, so which mark a
        given flow gets differs from the kernel's; the range is the same)."""
        v = self.values
        width = self.bits
        words = [pkt.src >> (width - v.get("hmark-src-prefix", 0)) if "hmark-src-prefix" in v else 0,
                 pkt.dst >> (width - v.get("hmark-dst-prefix", 0)) if "hmark-dst-prefix" in v else 0,
                 (pkt.sport & v.get("hmark-sport-mask", 0)) | v.get("hmark-sport", 0),
                 (pkt.dport & v.get("hmark-dport-mask", 0)) | v.get("hmark-dport", 0),
                 pkt.proto & v.get("hmark-proto-mask", 0), v.get("hmark-rnd", 0)]
        digest = zlib.crc32(b"".join(w.to_bytes(16, "big") for w in words))
        mark = digest % v["hmark-mod"] + v.get("hmark-offset", 0)
        changed(ctx, "HMARK", f"mark 0x{pkt.mark:x} -> 0x{mark & 0xFFFFFFFF:x}")
        pkt.mark = mark & 0xFFFFFFFF
        return XT_CONTINUE
