"""One ``kproxy verify`` run: a ruleset and probes through the lab's kernel, then through the emulator
replaying the kernel's clock and random choices (``kproxy.lab.replay``), and the differences."""

from __future__ import annotations

from dataclasses import dataclass

from kproxy.lab import differential, nftdiff
from kproxy.lab.differential import Case, Disagreement, Outcome, compare
from kproxy.lab.kernel import KernelLab
from kproxy.lab.replay import Replay


@dataclass
class Verdict:
    kernel: Outcome
    emulator: Outcome
    replay: Replay
    diffs: list[Disagreement]


def verify(lab: KernelLab, case: Case, nft: bool = False, emulator_rules: str | None = None) -> Verdict:
    """The kernel first (it sends the packets, at its own pace, and draws its own dice), then the
    emulator with the same ports, sequence numbers, times and, where the rules allow, the same draws.
    ``emulator_rules`` loads other rules into the emulator (a deliberate bug, to see it reported).
    Raises what the kernel side raises when it refuses the rules."""
    side = nftdiff if nft else differential
    kernel, observations = side.run_kernel(lab, case, steps=True)
    replay = Replay.of(observations, kernel)
    emulated_case = case if emulator_rules is None else Case(emulator_rules, case.probes)
    emulated = side.run_emulator(emulated_case, [o.sport for o in observations], lab,
                                 segments=[o.segments for o in observations], replay=replay)
    return Verdict(kernel, emulated, replay, compare(case, kernel, emulated))
