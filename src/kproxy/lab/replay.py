"""Replaying the kernel's run on the emulator: its clock, and its dice.

The kernel side of a differential run takes real time between probes and draws at random where the
rules say so (``-m statistic --mode random``, ``numgen random``, ``meta random``, the ports of
``--random``/``--random-fully`` and of source NAT on a taken port). The emulator replays the same
probes with its clock set to the moment the kernel's probe was sent, so ``limit``, ``hashlimit``,
``recent`` and conntrack timeouts see the same elapsed time; and instead of drawing its own numbers it
looks for draws that lead to the outcome the kernel had: a port drawn for NAT is taken from the
addresses the sink saw (when the rule's range holds it), and the node's random source is scripted,
each draw a choice (0 or all ones for random bits, each value for ``randrange``), searched depth
first until the probe ends as the kernel's did. When no choice does, the emulator's rules cannot
produce what the kernel did, and that probe is reported as differing; otherwise the report says which
choice was replayed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.lab.differential import Case, EmulatedPeers, Outcome

MAX_TRIES = 256          # scripts tried for one probe before its outcome counts as not allowed


class ScriptedRng(random.Random):
    """The node's random source, answering each draw from a script of choices (0 past its end) and
    recording how many choices each draw had."""

    def __init__(self) -> None:
        super().__init__(0)
        self.script: list[int] = []
        self.sizes: list[int] = []

    def start(self, script: list[int]) -> None:
        self.script, self.sizes = script, []

    def _choose(self, n: int) -> int:
        i = len(self.sizes)
        self.sizes.append(n)
        return self.script[i] if i < len(self.script) and self.script[i] < n else 0

    def getrandbits(self, k: int) -> int:
        """All zeros (under any probability: a hit) or all ones (over it: a miss)."""
        return (1 << k) - 1 if self._choose(2) else 0

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        if stop is None:
            start, stop = 0, start
        return start + step * self._choose(len(range(start, stop, step)))

    def drawn(self) -> list[int]:
        """The choices this probe's draws took."""
        return [self._pick(i) for i in range(len(self.sizes))]

    def _pick(self, i: int) -> int:
        return self.script[i] if i < len(self.script) and self.script[i] < self.sizes[i] else 0


def next_script(drawn: list[int], sizes: list[int]) -> list[int] | None:
    """The next script depth first after the one that drew ``drawn`` (None when all were tried)."""
    for j in range(len(drawn) - 1, -1, -1):
        if drawn[j] + 1 < sizes[j]:
            return [*drawn[:j], drawn[j] + 1]
    return None


@dataclass
class Replay:
    """What the emulator replays of the kernel's run beyond the packets themselves."""

    times: list[float]                  # when each probe was sent, in seconds after the first
    kernel: Outcome | None = None       # steer the random choices to these fates and arrivals
    scripts: list[list[int]] = field(default_factory=list)   # the choices found, per probe
    notes: list[str] = field(default_factory=list)           # what was replayed, per probe that drew
    unmatched: set[int] = field(default_factory=set)         # probes whose kernel outcome no draws give

    @classmethod
    def of(cls, observations: list[Any], kernel: Outcome | None) -> Replay:
        start = observations[0].sent_at if observations else 0.0
        return cls([o.sent_at - start for o in observations], kernel)

    def hint(self, i: int) -> tuple[int, int] | None:
        """The kernel's source and destination ports for probe ``i`` as the sink saw them."""
        if self.kernel is None or not self.kernel.arrivals[i]:
            return None
        src, dst = self.kernel.arrivals[i].split(" -> ")
        return int(src.rsplit(":", 1)[1]), int(dst.rsplit(":", 1)[1])


Play = Callable[[list[list[int]], int], tuple["EmulatedPeers", "Outcome"]]


def steer(case: Case, replay: Replay, play: Play) -> None:
    """Find, probe by probe, the draws that end each probe as it ended on the kernel.

    ``play(scripts, n)`` runs the first ``n`` probes on a fresh emulated node with those scripts."""
    for i in range(len(case.probes)):
        found = _search(replay, play, i)
        if found is None:
            replay.unmatched.add(i)
        replay.scripts.append(found or [])


def _search(replay: Replay, play: Play, i: int) -> list[int] | None:
    """The first script (depth first) that gives probe ``i`` the kernel's fate and arrival and leaves
    the kernel's counters; failing the counters, the first that gives the fate and arrival."""
    kernel = replay.kernel
    assert kernel is not None
    script: list[int] | None = []
    first = None
    for _ in range(MAX_TRIES):
        if script is None:
            break
        peers, out = play([*replay.scripts, script], i + 1)
        rng = peers.node.subsystems["rng"]
        if (out.fates[i], out.arrivals[i]) == (kernel.fates[i], kernel.arrivals[i]):
            if not kernel.steps or out.counters == kernel.steps[i]:
                return list(rng.drawn())
            first = first if first is not None else list(rng.drawn())
        script = next_script(rng.drawn(), rng.sizes)
    return first


def note_choices(replay: Replay, peers: EmulatedPeers, i: int, text: str) -> None:
    """Say what probe ``i`` replayed of the kernel's choices: the draws, the rules that drew and where
    they sent the packet, the NAT ports taken from the kernel; or that no draws give its outcome."""
    if i in replay.unmatched and replay.kernel is not None:
        what = replay.kernel.arrivals[i] or replay.kernel.fates[i]
        replay.notes.append(f"not replayed: probe {i + 1} ({text}): the kernel's outcome ({what}) is not one the "
                            "emulator's rules allow")
        return
    rng = peers.node.subsystems.get("rng")
    drawn = list(zip(rng.drawn(), rng.sizes, strict=True)) if isinstance(rng, ScriptedRng) else []
    ports = peers.node.nat.replayed
    if not drawn and not ports:
        return
    trace = peers.trace
    rules = [f"{e.table} {e.chain} rule #{e.rule} chose {e.verdict}" for e in (trace.events if trace else ())
             if e.kind == "rule" and _draws(e.text) and e.verdict not in ("", "continue")]
    said = [f"random draws {', '.join(_choice(c, n) for c, n in drawn)}"] if drawn else []
    replay.notes.append(f"replayed: probe {i + 1} ({text}): " + "; ".join([*said, *rules, *(f"NAT {p}" for p in ports)]))


def _choice(c: int, n: int) -> str:
    return ("hit", "miss")[c] if n == 2 else f"{c} of 0-{n - 1}"


def _draws(rule: str) -> bool:
    return any(w in rule for w in ("statistic --mode random", "numgen random", "meta random"))
