"""TCP connection tracking as nf_conntrack_proto_tcp does it: the state table, the window checks, the timeouts.

The state table alone is not what the kernel does: every segment is also checked against the
sequence space both peers have shown (``tcp_in_window``: Guido van Rooij's four bounds). A segment
outside it is INVALID or ignored, and the outcome of a half-seen handshake (a SYN-ACK that skipped
conntrack, say) depends on the peers' initial sequence numbers. Packets carry their sequence
numbers, acknowledgement and window in ``Packet.seg``; a connection whose first segment had none
(a packet built by hand, ``kproxy trace``) is tracked by the state table only, as if
``nf_conntrack_tcp_be_liberal`` were set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from kproxy.packet import ACK, FIN, M32, RST, SYN, TcpSeg  # noqa: F401 - TcpSeg re-exported

ORIGINAL, REPLY = 0, 1

# Default timeouts (seconds) of a 6.x kernel.
TCP_TIMEOUTS = {"SYN_SENT": 120, "SYN_RECV": 60, "ESTABLISHED": 432000, "FIN_WAIT": 120, "CLOSE_WAIT": 60,
                "LAST_ACK": 30, "TIME_WAIT": 120, "CLOSE": 10, "SYN_SENT2": 120}
TCP_TIMEOUT_UNACK = 300      # unacknowledged data, or a picked-up connection until its first reply
TCP_TIMEOUT_RETRANS = 300    # after tcp_max_retrans retransmissions, or a zero window
TCP_MAX_RETRANS = 3
TCP_MAX_WSCALE = 14

# The TCP state table (tcp_conntracks): [dir][segment kind][state] -> state.
_S = ["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT",
      "CLOSE", "SYN_SENT2"]
_TABLE_TEXT = {
    ORIGINAL: {
        "SYN":    "sSS sSS sIG sIG sIG sIG sIG sSS sSS sS2",
        "SYNACK": "sIV sIV sSR sIV sIV sIV sIV sIV sIV sSR",
        "FIN":    "sIV sIV sFW sFW sLA sLA sLA sTW sCL sIV",
        "ACK":    "sES sIV sES sES sCW sCW sTW sTW sCL sIV",
        "RST":    "sIV sCL sCL sCL sCL sCL sCL sCL sCL sCL",
        "NONE":   "sIV sIV sIV sIV sIV sIV sIV sIV sIV sIV",
    },
    REPLY: {
        "SYN":    "sIV sS2 sIV sIV sIV sIV sIV sSS sIV sS2",
        "SYNACK": "sIV sSR sIG sIG sIG sIG sIG sIG sIG sSR",
        "FIN":    "sIV sIV sFW sFW sLA sLA sLA sTW sCL sIV",
        "ACK":    "sIV sIG sSR sES sCW sCW sTW sTW sCL sIG",
        "RST":    "sIV sCL sCL sCL sCL sCL sCL sCL sCL sCL",
        "NONE":   "sIV sIV sIV sIV sIV sIV sIV sIV sIV sIV",
    },
}
_ABBREV = {"sNO": "NONE", "sSS": "SYN_SENT", "sSR": "SYN_RECV", "sES": "ESTABLISHED", "sFW": "FIN_WAIT",
           "sCW": "CLOSE_WAIT", "sLA": "LAST_ACK", "sTW": "TIME_WAIT", "sCL": "CLOSE", "sS2": "SYN_SENT2",
           "sIV": "INVALID", "sIG": "IGNORE"}
TCP_STATES: dict[int, dict[str, dict[str, str]]] = {
    d: {k: dict(zip(_S, (_ABBREV[w] for w in row.split()), strict=True)) for k, row in rows.items()}
    for d, rows in _TABLE_TEXT.items()
}
EARLY_DROP_STATES = frozenset({"FIN_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "CLOSE_WAIT"})

# tcp_valid_flags: the FIN/SYN/RST/ACK/URG combinations a segment may carry (PSH, ECE, CWR ignored).
URG = 0x20
TCP_VALID_FLAGS = frozenset({SYN, SYN | URG, SYN | ACK, RST, RST | ACK, FIN | ACK, FIN | ACK | URG, ACK, ACK | URG})
TCP_FLAG_MASK = FIN | SYN | RST | ACK | URG

# ip_ct_tcp_state.flags and ip_ct_tcp.last_flags bits.
F_WINDOW_SCALE = 0x01
F_SACK_PERM = 0x02
F_CLOSE_INIT = 0x04
F_BE_LIBERAL = 0x08
F_DATA_UNACKNOWLEDGED = 0x10
F_MAXACK_SET = 0x20
F_EXP_CHALLENGE_ACK = 0x40
F_SIMULTANEOUS_OPEN = 0x80

MAXACKWINCONST = 66000


def tcp_flags_valid(flags: int) -> bool:
    return flags & TCP_FLAG_MASK in TCP_VALID_FLAGS


def tcp_kind(flags: int) -> str:
    """get_conntrack_index: which row of the state table a segment uses."""
    if flags & RST:
        return "RST"
    if flags & SYN:
        return "SYNACK" if flags & ACK else "SYN"
    if flags & FIN:
        return "FIN"
    if flags & ACK:
        return "ACK"
    return "NONE"


def before(a: int, b: int) -> bool:
    """Sequence-space a < b (32-bit wrap-around)."""
    return (a - b) & M32 >= 0x80000000


def after(a: int, b: int) -> bool:
    return before(b, a)


@dataclass(slots=True)
class Peer:
    """What one direction has shown (struct ip_ct_tcp_state)."""

    td_end: int = 0
    td_maxend: int = 0
    td_maxwin: int = 0
    td_maxack: int = 0
    td_scale: int = 0
    flags: int = 0

    def reset(self) -> None:
        self.td_end = self.td_maxend = self.td_maxwin = self.td_maxack = self.td_scale = 0
        self.flags &= F_BE_LIBERAL

    def options(self, seg: TcpSeg) -> None:
        """tcp_options: window scale and SACK-permitted from a SYN."""
        self.td_scale = 0
        self.flags &= F_BE_LIBERAL
        if seg.sack_perm:
            self.flags |= F_SACK_PERM
        if seg.wscale >= 0:
            self.td_scale = min(seg.wscale, TCP_MAX_WSCALE)
            self.flags |= F_WINDOW_SCALE

    def maxackwindow(self) -> int:
        return self.td_maxwin if self.td_maxwin > MAXACKWINCONST else MAXACKWINCONST


@dataclass(slots=True)
class TcpTrack:
    """A connection's TCP tracking memory (struct ip_ct_tcp). ``windowed`` is False when the first
    segment carried no sequence numbers: the window checks are then skipped."""

    # What each direction has shown; None until something is recorded when the window is not
    # tracked (then only the flags matter, and they start clear).
    seen: list[Peer] | None = None
    windowed: bool = True
    last_index: str = "NONE"
    last_dir: int = ORIGINAL
    last_seq: int = 0
    last_ack: int = 0
    last_end: int = 0
    last_win: int = 0
    last_wscale: int = 0
    last_flags: int = 0
    retrans: int = 0

    def __post_init__(self) -> None:
        if self.seen is None and self.windowed:
            self.seen = [Peer(), Peer()]

    def copy(self) -> TcpTrack:
        seen = None if self.seen is None else \
            [Peer(p.td_end, p.td_maxend, p.td_maxwin, p.td_maxack, p.td_scale, p.flags) for p in self.seen]
        return TcpTrack(seen, self.windowed, self.last_index, self.last_dir, self.last_seq, self.last_ack,
                        self.last_end, self.last_win, self.last_wscale, self.last_flags, self.retrans)

    def peers(self) -> list[Peer]:
        """Both directions' records, made when first needed."""
        seen = self.seen
        if seen is None:
            seen = self.seen = [Peer(), Peer()]
        return seen

    def peer_flags(self) -> int:
        """Both directions' flags together."""
        seen = self.seen
        return 0 if seen is None else seen[0].flags | seen[1].flags

    def to_json(self) -> list[object]:
        return [[[p.td_end, p.td_maxend, p.td_maxwin, p.td_maxack, p.td_scale, p.flags] for p in self.peers()],
                self.windowed, self.last_index, self.last_dir, self.last_seq, self.last_ack, self.last_end,
                self.last_win, self.last_wscale, self.last_flags, self.retrans]

    @classmethod
    def from_json(cls, data: list[object]) -> TcpTrack:
        seen, windowed, index, d, seq, ack, end, win, wscale, flags, retrans = data
        peers = [Peer(*p) for p in seen]  # type: ignore[attr-defined]
        return cls(peers, bool(windowed), str(index), int(d), int(seq), int(ack), int(end),  # type: ignore[call-overload]
                   int(win), int(wscale), int(flags), int(retrans))  # type: ignore[call-overload]


class TcpVerdict(NamedTuple):
    """What nf_conntrack_tcp_packet decided: ``accept`` (state moved, ``timeout`` applies), ``ignore``
    (passes, nothing changes), ``invalid`` (-NF_ACCEPT), ``reopen`` (kill the entry, look up again)."""

    action: str
    timeout: float = 0.0
    why: str = ""



def tcp_new(flags: int, seg: TcpSeg | None, loose: bool) -> TcpTrack | None:
    """tcp_new: the tracking memory of a new connection, or None when this segment cannot start one."""
    first = TCP_STATES[ORIGINAL][tcp_kind(flags)]["NONE"]
    track = TcpTrack(windowed=seg is not None)
    if first == "SYN_SENT":
        if seg is not None:
            sender = track.peers()[ORIGINAL]
            sender.td_end = sender.td_maxend = seg.end(flags)
            sender.td_maxwin = seg.window or 1
            sender.options(seg)
        return track
    if not loose or first == "INVALID":
        return None
    # Picked up in the middle: trust what this segment says, and be liberal about windows.
    sender = track.peers()[ORIGINAL]
    if seg is not None:
        sender.td_end = seg.end(flags)
        sender.td_maxwin = seg.window or 1
        sender.td_maxend = (sender.td_end + sender.td_maxwin) & M32
    sender.flags = track.peers()[REPLY].flags = F_SACK_PERM | F_BE_LIBERAL
    return track


class TcpTracker:
    """nf_conntrack_tcp_packet for one connection's segments; ``liberal`` is tcp_be_liberal,
    ``ignore_invalid_rst`` is tcp_ignore_invalid_rst."""

    def __init__(self, liberal: bool = False, ignore_invalid_rst: bool = False) -> None:
        self.liberal = liberal
        self.ignore_invalid_rst = ignore_invalid_rst

    def packet(self, track: TcpTrack, state: str, d: int, flags: int, seg: TcpSeg | None, seen_reply: bool,
               assured: bool) -> tuple[TcpVerdict, str]:
        """The verdict and the connection's new state for one segment in direction ``d``."""
        if not track.windowed:
            seg = None
        index = tcp_kind(flags)
        old = cur = state or "NONE"
        new = TCP_STATES[d][index][old]
        check_window = True
        if new == "SYN_SENT" and old in ("TIME_WAIT", "CLOSE"):
            if track.peer_flags() & F_CLOSE_INIT or \
                    (track.last_dir == d and track.last_index == "RST"):
                return TcpVerdict("reopen", why="attempt to reopen a closed connection"), old
            new = "IGNORE"
        if new == "IGNORE":
            if not self._resync(track, d, index, seg):
                self._annotate_ignored(track, old, d, index, flags, seg)
                return TcpVerdict("ignore", why=f"packet ({index}) in dir {d} ignored, state {old}"), old
            old, new = "SYN_SENT", "SYN_RECV"
        elif new == "INVALID":
            return TcpVerdict("invalid", why=f"packet ({index}) in dir {d} invalid, state {old}"), old
        elif new == "TIME_WAIT":
            if old == "LAST_ACK" and index == "ACK" and track.last_dir != d and track.last_index == "SYN" \
                    and track.last_flags & F_EXP_CHALLENGE_ACK:
                track.last_flags &= ~F_EXP_CHALLENGE_ACK
                return TcpVerdict("ignore", why="challenge-ack ignored"), old
        elif new == "SYN_SENT2":
            track.last_flags |= F_SIMULTANEOUS_OPEN
        elif new == "SYN_RECV":
            if d == REPLY and index == "ACK" and track.last_flags & F_SIMULTANEOUS_OPEN:
                new = "ESTABLISHED"
        elif new == "CLOSE" and index == "RST":
            verdict, new, check_window = self._close_rst(track, old, new, d, seg, seen_reply, assured)
            if verdict is not None:
                return verdict, old
        if check_window and seg is not None:
            result = self.in_window(track, cur, d, index, flags, seg)
            if result == "invalid":
                return self._invalid_in_window(track, d, index, assured), old
            if result == "ignore":
                return TcpVerdict("ignore", why="out of window, ignored"), old
        track.last_index, track.last_dir = index, d
        if old != new and new == "FIN_WAIT":
            track.peers()[d].flags |= F_CLOSE_INIT
        return TcpVerdict("accept", self._timeout(track, new, index)), new

    @staticmethod
    def _invalid_in_window(track: TcpTrack, d: int, index: str, assured: bool) -> TcpVerdict:
        """nf_tcp_handle_invalid: an out-of-window FIN or RST answering the other side's FIN or RST
        shortens an assured connection's life to the unacknowledged timeout (``timeout`` is that cap)."""
        if not assured or index not in ("RST", "FIN"):
            return TcpVerdict("invalid", why="out of window")
        if track.last_dir != d and track.last_index in ("FIN", "RST"):
            return TcpVerdict("invalid", TCP_TIMEOUT_UNACK, why="out of window; timeout lowered")
        track.last_index, track.last_dir = index, d
        return TcpVerdict("invalid", why="out of window")

    # ---- the special cases of the state switch -----------------------------------------------------
    @staticmethod
    def _resync(track: TcpTrack, d: int, index: str, seg: TcpSeg | None) -> bool:
        """A SYN-ACK answering a SYN we ignored: both ends are in sync, so take the SYN's annotations."""
        if not (index == "SYNACK" and track.last_index == "SYN" and track.last_dir != d and seg is not None
                and seg.ack == track.last_end):
            return False
        last = track.peers()[track.last_dir]
        last.td_end = last.td_maxend = track.last_end
        last.td_maxwin = track.last_win or 1
        last.td_scale = track.last_wscale
        track.last_flags &= ~F_EXP_CHALLENGE_ACK
        last.flags = track.last_flags
        track.peers()[d].reset()
        return True

    @staticmethod
    def _annotate_ignored(track: TcpTrack, old: str, d: int, index: str, flags: int, seg: TcpSeg | None) -> None:
        track.last_index, track.last_dir = index, d
        if seg is not None:
            track.last_seq, track.last_end, track.last_win = seg.seq, seg.end(flags), seg.window
        if index == "SYN" and d == ORIGINAL:
            track.last_flags = track.last_wscale = 0
            if seg is not None and seg.wscale >= 0:
                track.last_flags |= F_WINDOW_SCALE
                track.last_wscale = min(seg.wscale, TCP_MAX_WSCALE)
            if seg is not None and seg.sack_perm:
                track.last_flags |= F_SACK_PERM
            if old == "LAST_ACK":
                track.last_flags |= F_EXP_CHALLENGE_ACK
        if old == "SYN_SENT" and index == "ACK" and d == REPLY and seg is not None:
            track.last_ack = seg.ack

    def _close_rst(self, track: TcpTrack, old: str, new: str, d: int, seg: TcpSeg | None, seen_reply: bool,
                   assured: bool) -> tuple[TcpVerdict | None, str, bool]:
        """A RST: refuse one below the other side's acknowledged data; skip the window check for a RST
        answering a segment we let through. Returns (verdict or None, new state, check the window)."""
        if old in EARLY_DROP_STATES or seg is None:
            return None, new, False     # closing (the tuple may be reused already): no window check
        other = track.peers()[1 - d]
        established = old == "ESTABLISHED" and assured
        if other.flags & F_MAXACK_SET and track.last_index != "SYN":
            seq = seg.seq
            if seq == 0 and not established:
                return None, new, True
            if before(seq, other.td_maxack) and not self.ignore_invalid_rst:
                return TcpVerdict("invalid", why="invalid rst"), new, False
            if not established or seq == other.td_maxack:
                return None, new, True
            if track.last_index == "ACK" and track.last_dir == d and seq == track.last_end:
                return None, new, True
            new = old       # sequence not exact: keep the state, a challenge ACK may follow
        if ((seen_reply and track.last_index == "SYN") or (not assured and track.last_index == "ACK")) \
                and seg.ack == track.last_end:
            return None, new, False
        if old == "SYN_SENT" and track.last_index == "ACK" and track.last_dir == REPLY and seg.seq == track.last_ack:
            return None, new, False
        return None, new, True

    # ---- tcp_in_window ---------------------------------------------------------------------------
    def in_window(self, track: TcpTrack, state: str, d: int, index: str, flags: int, seg: TcpSeg) -> str:
        """The four bounds: ``accept``, ``ignore`` or ``invalid`` (liberal peers turn the last two into accept)."""
        sender, receiver = track.peers()[d], track.peers()[1 - d]
        seq, ack, win = seg.seq, seg.ack, seg.window
        sack = ack
        end = seg.end(flags)
        if sender.td_maxwin == 0:
            if flags & SYN:
                self._init_sender(sender, receiver, seg, end, win, d)
                if not flags & ACK:
                    return "accept"        # simultaneous open
            else:
                sender.td_end = end
                swin = (win << sender.td_scale) & M32
                sender.td_maxwin = swin or 1
                sender.td_maxend = (end + sender.td_maxwin) & M32
                if receiver.td_maxwin == 0:
                    receiver.td_end = receiver.td_maxend = sack
                elif sack == (receiver.td_end + 1) & M32:
                    receiver.td_end = (receiver.td_end + 1) & M32
        elif flags & SYN and after(end, sender.td_end) and state in ("SYN_SENT", "SYN_RECV"):
            self._init_sender(sender, receiver, seg, end, win, d)
            if d == REPLY and not flags & ACK:
                return "accept"
        if not flags & ACK or (flags & (ACK | RST) == ACK | RST and ack == 0):
            ack = sack = receiver.td_end
        if flags & RST and seq == 0 and state == "SYN_SENT":
            seq = end = sender.td_end
        if not before(seq, (sender.td_maxend + 1) & M32):
            overshot = (end - sender.td_maxend + 1) & M32
            ack_ok = after(sack, (receiver.td_end - sender.maxackwindow() - 1) & M32)
            in_recv = receiver.td_maxwin != 0 and after(end, (sender.td_end - receiver.td_maxwin - 1) & M32)
            if in_recv and ack_ok and overshot <= receiver.td_maxwin and before(sack, (receiver.td_end + 1) & M32):
                sender.td_end = end
                sender.flags |= F_DATA_UNACKNOWLEDGED
                return self._bad(sender, "ignore")
            return self._bad(sender, "invalid")
        if not before(sack, (receiver.td_end + 1) & M32):
            return self._bad(sender, "invalid")
        if receiver.td_maxwin and not after(end, (sender.td_end - receiver.td_maxwin - 1) & M32):
            return self._bad(sender, "ignore")
        if not after(sack, (receiver.td_end - sender.maxackwindow() - 1) & M32):
            return self._bad(sender, "ignore")
        if not flags & SYN:
            win = (win << sender.td_scale) & M32
        swin = (win + (sack - ack)) & M32
        if sender.td_maxwin < swin:
            sender.td_maxwin = swin
        if after(end, sender.td_end):
            sender.td_end = end
            sender.flags |= F_DATA_UNACKNOWLEDGED
        if flags & ACK:
            if not sender.flags & F_MAXACK_SET:
                sender.td_maxack = ack
                sender.flags |= F_MAXACK_SET
            elif after(ack, sender.td_maxack):
                sender.td_maxack = ack
        if receiver.td_maxwin != 0 and after(end, sender.td_maxend):
            receiver.td_maxwin = (receiver.td_maxwin + end - sender.td_maxend) & M32
        if after((sack + win) & M32, (receiver.td_maxend - 1) & M32):
            receiver.td_maxend = (sack + win + (1 if win == 0 else 0)) & M32
        if ack == receiver.td_end:
            receiver.flags &= ~F_DATA_UNACKNOWLEDGED
        if index == "ACK":
            same = (track.last_dir, track.last_seq, track.last_ack, track.last_end, track.last_win) == \
                (d, seq, ack, end, seg.window)
            if same:
                track.retrans += 1
            else:
                track.last_dir, track.last_seq, track.last_ack, track.last_end = d, seq, ack, end
                track.last_win, track.retrans = seg.window, 0
        return "accept"

    @staticmethod
    def _init_sender(sender: Peer, receiver: Peer, seg: TcpSeg, end: int, win: int, d: int) -> None:
        """tcp_init_sender: a SYN-ACK (or a SYN seen first in reply): the window scale needs both sides."""
        sender.td_end = sender.td_maxend = end
        sender.td_maxwin = win or 1
        sender.options(seg)
        if d == REPLY and not (sender.flags & F_WINDOW_SCALE and receiver.flags & F_WINDOW_SCALE):
            sender.td_scale = receiver.td_scale = 0

    def _bad(self, sender: Peer, result: str) -> str:
        return "accept" if sender.flags & F_BE_LIBERAL or self.liberal else result

    @staticmethod
    def _timeout(track: TcpTrack, new: str, index: str) -> float:
        base = TCP_TIMEOUTS[new]
        if track.retrans >= TCP_MAX_RETRANS and base > TCP_TIMEOUT_RETRANS:
            return TCP_TIMEOUT_RETRANS
        if index == "RST":
            return TCP_TIMEOUTS["CLOSE"]
        if track.peer_flags() & F_DATA_UNACKNOWLEDGED and base > TCP_TIMEOUT_UNACK:
            return TCP_TIMEOUT_UNACK
        if track.windowed and track.last_win == 0 and base > TCP_TIMEOUT_RETRANS:
            return TCP_TIMEOUT_RETRANS
        return base

