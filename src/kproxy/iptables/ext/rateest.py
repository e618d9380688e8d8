"""The rateest match: compares the rates measured by RATEEST estimators (bytes or packets per second),
one against a value or two against each other. Parsed as libxt_rateest's own getopt code does: the
rate after --rateest-bps/--rateest-pps is optional and taken only when the next word is no option."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from kproxy.iptables.ext.unknown import cannot_know
from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import NONE, STRING, XTOPT_INVERT, XTOPT_MULTI, XtOpt, XtOptions
from kproxy.iptables.xtutil import c_strtoui
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

SUFFIXES = {"bit": 1.0, "kibit": 1024.0, "kbit": 1000.0, "mibit": 1024.0**2, "mbit": 1e6, "gibit": 1024.0**3,
            "gbit": 1e9, "tibit": 1024.0**4, "tbit": 1e12, "bps": 8.0, "kibps": 8.0 * 1024, "kbps": 8000.0,
            "mibps": 8.0 * 1024**2, "mbps": 8e6, "gibps": 8.0 * 1024**3, "gbps": 8e9, "tibps": 8.0 * 1024**4,
            "tbps": 8e12}
_FLOAT = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
ANY = XTOPT_MULTI | XTOPT_INVERT          # the extension checks repeats and "!" itself, with its own words
NAMES = ("rateest1", "rateest", "rateest2")
RATES = ("rateest-bps1", "rateest-pps1", "rateest-bps2", "rateest-pps2", "rateest-bps", "rateest-pps")
MODES = ("rateest-lt", "rateest-gt", "rateest-eq")


def parse_rate(text: str) -> int:
    """rateest_get_rate: bits per second with an optional unit, kept as bytes per second."""
    m = _FLOAT.match(text)
    if m is None:
        raise ExtensionError(f"rateest: could not parse rate `{text}'")
    value, unit = float(m.group(0)), text[m.end():]
    if unit:
        scale = SUFFIXES.get(unit.lower())
        if scale is None:
            raise ExtensionError(f"rateest: could not parse rate `{text}'")
        value *= scale
    return int(value / 8.0) & 0xFFFFFFFF


def rate_text(rate: int, numeric: bool) -> str:
    bits = rate * 8.0
    if numeric:
        return str(rate)
    if bits >= 1e9:
        return f"{bits / 1e6:.0f}Mbit"
    if bits >= 1e6:
        return f"{bits / 1e3:.0f}Kbit"
    return f"{bits:.0f}bit"


@register_match
class RateestMatch(Match):
    name = "rateest"
    OPTIONS = XtOptions("rateest", *(XtOpt(n, STRING, ANY) for n in NAMES),
                        *(XtOpt(n, STRING, ANY, optional=True) for n in RATES),
                        XtOpt("rateest-delta", NONE, ANY), *(XtOpt(n, NONE, ANY) for n in MODES))

    def __init__(self) -> None:
        self.name1 = self.name2 = ""
        self.delta = self.bps = self.pps = self.rel = self.invert = False
        self.bps1 = self.bps2 = self.pps1 = self.pps2 = 0
        self.mode = ""

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> RateestMatch:
        m = cls()
        seen: set[str] = set()
        for o in opts:
            m._option(o, seen)
        if not m.name1 and not m.rel and not seen:
            raise ExtensionError("rateest match: you need to specify some flags")
        return m

    def _option(self, o: Opt, seen: set[str]) -> None:
        """rateest_parse for one option: its "!" and repeat checks, then its value."""
        key = {"rateest": "rateest1", "rateest-bps": "rateest-bps2", "rateest-pps": "rateest-pps2"}.get(o.name, o.name)
        word = key[:-1] if key[-1] in "12" and key.startswith("rateest-") else key
        if key in MODES:
            if key in seen:
                raise ExtensionError("rateest: can't specify lt/gt/eq twice")
            self.mode, self.invert = key[8:], self.invert or o.invert
        else:
            if o.invert:
                raise ExtensionError(f"rateest: {'rateest' if key in NAMES else word} can't be inverted")
            if key in seen:
                raise ExtensionError(f"rateest: can't specify --{key} twice")
        seen.add(key)
        value = o.values[0] if o.values else None
        if key == "rateest1":
            self.name1 = (value or "")[:15]
        elif key == "rateest2":
            self.name2, self.rel = (value or "")[:15], True
        elif key == "rateest-delta":
            self.delta = True
        elif key.startswith("rateest-bps"):
            self.bps = True
            if value is not None:
                setattr(self, "bps" + key[-1], parse_rate(value))
        elif key.startswith("rateest-pps"):
            self.pps = True
            if value is not None:
                n = c_strtoui(value, 0, 0xFFFFFFFF)
                if n is None:
                    raise ExtensionError(f"rateest: could not parse pps `{value}'")
                setattr(self, "pps" + key[-1], n)

    def _mode(self, prefix: str) -> str:
        return f"{' !' if self.invert else ''} {prefix}{self.mode}" if self.mode else ""

    def _save_rate(self, word: str, r1: int, r2: int, numeric: bool) -> str:
        if self.delta:
            text = f" --rateest-{word}1 {rate_text(r1, numeric)}{self._mode('--rateest-')} --rateest-{word}2"
        else:
            text = f"{self._mode('--rateest-')} --rateest-{word}"
        if not self.rel or self.delta:
            text += f" {rate_text(r2, numeric)}"
        return text

    def _rates(self) -> str:
        return (self._save_rate("bps", self.bps1, self.bps2, False) if self.bps else "") + \
            (self._save_rate("pps", self.pps1, self.pps2, True) if self.pps else "")

    def save(self) -> str:
        text = "-m rateest" + (" --rateest-delta" if self.delta else "")
        if self.rel:
            return text + f" --rateest1 {self.name1}{self._rates()} --rateest2 {self.name2}"
        return text + f" --rateest {self.name1}{self._rates()}"

    def listing(self, numeric: bool = True) -> str:
        text = f"rateest match {self.name1}" + (" delta" if self.delta else "")
        absolute = not self.rel
        if self.bps:
            text += " bps" + (f" {rate_text(self.bps1, numeric)}" if self.delta else "")
            if absolute:
                text += f" {rate_text(self.bps2, numeric)}{self._mode('')}"
        if self.pps:
            text += " pps" + (f" {self.pps1}" if self.delta else "")
            if absolute:
                text += f"{self._mode('')} {self.pps2}"
        if self.rel:
            text += f"{self._mode('')} {self.name2}"
            if self.bps:
                text += " bps" + (f" {rate_text(self.bps2, numeric)}" if self.delta else "")
            if self.pps:
                text += " pps" + (f" {self.pps2}" if self.delta else "")
        return text

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        return cannot_know(ctx, "rateest", "the estimators' rates (no estimator runs in the emulator)")
