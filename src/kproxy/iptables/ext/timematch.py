"""The time match: packets whose arrival time (the node's clock, as UTC unless --kerneltz) falls in a
time of day, on given weekdays or days of the month, between two dates (xt_time)."""

from __future__ import annotations

import calendar
import time
from typing import TYPE_CHECKING

from kproxy.iptables.extension import ExtensionError, Match, Opt, RuleContext, register_match
from kproxy.iptables.xtoptions import CUSTOM, NONE, XTOPT_INVERT, XtCall, XtOpt, XtOptions
from kproxy.iptables.xtutil import c_strtoul
from kproxy.packet import Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.iptables.model import Rule

WEEK_DAYS = ("", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
ALL_WEEKDAYS, ALL_MONTHDAYS = 0xFE, 0xFFFFFFFE
MAX_DAYTIME = 24 * 60 * 60 - 1
INT_MAX = 2**31 - 1


def _num(text: str) -> tuple[int, str]:
    """strtoul base 10: the number (0 when none) and the rest."""
    got = c_strtoul(text, 10)
    return got if got is not None else (0, text)


def parse_date(call: XtCall) -> int:
    """YYYY[-MM[-DD[Thh[:mm[:ss]]]]] as UTC seconds (time_parse_date)."""
    bad = ExtensionError(f"Invalid date \"{call.arg}\" specified. Should be YYYY[-MM[-DD[Thh[:mm[:ss]]]]]")
    fields = [1970, 1, 1, 0, 0, 0]
    limits = ((1970, 2038), (0, 12), (0, 31), (0, 23), (0, 59), (0, 59))
    seps = ("-", "-", "T", ":", ":", "")
    rest = call.arg
    for i, (lo, hi) in enumerate(limits):
        value, rest = _num(rest)
        if (rest[:1] not in (seps[i], "") if seps[i] else rest) or not lo <= value <= hi:
            raise bad
        fields[i] = value
        if not rest:
            break
        rest = rest[1:]
    year, month = (fields[0] - 1, 12) if fields[1] == 0 else (fields[0], fields[1])    # mktime's month -1
    return calendar.timegm((year, month, fields[2], fields[3], fields[4], fields[5], 0, 0, 0))


def parse_daytime(call: XtCall) -> int:
    """hh:mm[:ss] as seconds of the day; the message quotes the text from the part that failed."""
    s = call.arg
    hour, e = _num(s)
    if not e.startswith(":") or hour > 23:
        raise ExtensionError(f"invalid time \"{s}\" specified, should be hh:mm[:ss] format and within the boundaries")
    s = e[1:]
    minute, e = _num(s)
    second = 0
    if e[:1] not in (":", "") or minute > 59:
        raise ExtensionError(f"invalid time \"{s}\" specified, should be hh:mm[:ss] format and within the boundaries")
    if e:
        s = e[1:]
        second, e = _num(s)
        if e or second > 59:
            raise ExtensionError(f"invalid time \"{s}\" specified, should be hh:mm[:ss] format and within the "
                                 "boundaries")
    return hour * 3600 + minute * 60 + second


def _segments(arg: str, size: int) -> list[str]:
    """my_strseg: comma-separated parts, each cut to ``size`` - 1 characters."""
    return [part[:size - 1] for part in arg.split(",")] if arg else []


def parse_weekdays(call: XtCall) -> int:
    mask = 0
    for day in _segments(call.arg, 4):
        got = c_strtoul(day)
        if got is not None and not got[1] and day:
            if got[0] == 0:
                raise ExtensionError("No, the week does NOT begin with Sunday.")
            mask |= 1 << got[0] if got[0] < 32 else 0
            continue
        hits = [i for i in range(1, 8) if day[:2] == WEEK_DAYS[i][:2] and len(day) >= 2]
        if not hits:
            raise ExtensionError(f"{day} is not a valid day specifier")
        for i in hits:
            mask |= 1 << i
    return mask & 0xFFFFFFFF


def parse_monthdays(call: XtCall) -> int:
    mask = 0
    for day in _segments(call.arg, 3):
        got = c_strtoul(day)
        n, rest = got if got is not None else (0, day)
        if rest or n > 31:
            raise ExtensionError(f"{day} is not a valid day for --monthdays")
        mask |= 1 << n
    return mask & 0xFFFFFFFF


def hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def date_text(stamp: int, sep: str) -> str:
    t = time.gmtime(stamp)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}{sep}{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


def monthdays_text(mask: int, human: bool) -> str:
    out = []
    for i in range(1, 32):
        if mask >> i & 1:
            out.append(f"{i}{({1: 'st', 2: 'nd', 3: 'rd'}.get(i % 10, 'th')) if human else ''}")
    return ",".join(out)


@register_match
class TimeMatch(Match):
    SHAREABLE = True
    name = "time"
    OPTIONS = XtOptions(
        "time", XtOpt("datestart", CUSTOM, parse=parse_date), XtOpt("datestop", CUSTOM, parse=parse_date),
        XtOpt("timestart", CUSTOM, parse=parse_daytime), XtOpt("timestop", CUSTOM, parse=parse_daytime),
        XtOpt("contiguous", NONE), XtOpt("weekdays", CUSTOM, XTOPT_INVERT, parse=parse_weekdays),
        XtOpt("monthdays", CUSTOM, XTOPT_INVERT, parse=parse_monthdays), XtOpt("localtz", NONE, excl=("utc",)),
        XtOpt("utc", NONE, excl=("localtz", "kerneltz")), XtOpt("kerneltz", NONE, excl=("utc",)))

    def __init__(self) -> None:
        self.date_start, self.date_stop = 0, INT_MAX
        self.day_start, self.day_stop = 0, MAX_DAYTIME
        self.weekdays, self.monthdays = ALL_WEEKDAYS, ALL_MONTHDAYS
        self.local = self.contiguous = False

    @classmethod
    def from_options(cls, opts: list[Opt], family: int, rule: Rule) -> TimeMatch:
        got = cls.OPTIONS.parse(opts)
        m = cls()
        m.date_start, m.date_stop = got.get("datestart", 0), got.get("datestop", INT_MAX)
        m.day_start, m.day_stop = got.get("timestart", 0), got.get("timestop", MAX_DAYTIME)
        if "weekdays" in got:
            m.weekdays = got.get("weekdays") ^ (ALL_WEEKDAYS if got.invert("weekdays") else 0)
        if "monthdays" in got:
            m.monthdays = got.get("monthdays") ^ (ALL_MONTHDAYS if got.invert("monthdays") else 0)
        m.local, m.contiguous = "localtz" in got or "kerneltz" in got, "contiguous" in got
        if m.contiguous and m.day_start < m.day_stop:
            raise ExtensionError("time: --contiguous only makes sense when stoptime is smaller than starttime")
        cls.OPTIONS.fcheck(got)
        return m

    def _daytime(self) -> bool:
        return self.day_start != 0 or self.day_stop != MAX_DAYTIME

    def save(self) -> str:
        text = "-m time"
        if self._daytime():
            text += f" --timestart {hms(self.day_start)} --timestop {hms(self.day_stop)}"
        if self.monthdays != ALL_MONTHDAYS:
            text += " --monthdays " + monthdays_text(self.monthdays, False)
        if self.weekdays != ALL_WEEKDAYS:
            text += " --weekdays " + ",".join(WEEK_DAYS[i] for i in range(1, 8) if self.weekdays >> i & 1)
        if self.date_start:
            text += " --datestart " + date_text(self.date_start, "T")
        if self.date_stop:
            text += " --datestop " + date_text(self.date_stop, "T")
        return text + (" --kerneltz" if self.local else "") + (" --contiguous" if self.contiguous else "")

    def listing(self, numeric: bool = True) -> str:
        text = "TIME"
        if self._daytime():
            text += f" from {hms(self.day_start)} to {hms(self.day_stop)}"
        if self.weekdays != ALL_WEEKDAYS:
            text += " on " + ",".join(WEEK_DAYS[i] for i in range(1, 8) if self.weekdays >> i & 1)
        if self.monthdays != ALL_MONTHDAYS:
            text += " on " + monthdays_text(self.monthdays, True)
        if self.date_start:
            text += " starting from " + date_text(self.date_start, " ")
        if self.date_stop != INT_MAX:
            text += " until date " + date_text(self.date_stop, " ")
        return text + ("" if self.local else " UTC") + (" contiguous" if self.contiguous else "")

    def matches(self, pkt: Packet, ctx: RuleContext) -> bool:
        """time_mt on the node's clock (UTC; the kernel's timezone is taken as UTC too)."""
        stamp = int(ctx.now)
        if not self.date_start <= stamp <= self.date_stop:
            return False
        t = time.gmtime(stamp)
        secs = t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec
        if self.day_start < self.day_stop:
            if not self.day_start <= secs <= self.day_stop:
                return False
        elif self.day_stop < secs < self.day_start:
            return False
        if not self.weekdays >> (t.tm_wday + 1) & 1:
            return False
        return bool(self.monthdays >> t.tm_mday & 1)
