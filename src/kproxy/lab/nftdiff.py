"""Differential runs for nftables: one nft ruleset and the same probes through the kernel and the emulator.

The iptables runs (``kproxy.lab.differential``) supply the probes, the peers that answer them and the
comparison; here the ruleset is an ``nft -f`` script, loaded into the lab's node namespace with the
real nft (after ``nft flush ruleset``) and into the emulated node with ``kproxy nft``'s parser. The
per-rule counters are the ``counter packets N`` of each counted rule in ``nft list ruleset``. A
script the kernel refuses must be refused by the emulator too, and the other way round.
"""

from __future__ import annotations

from typing import Any

from kproxy.lab.differential import (
    Case,
    Disagreement,
    EmulatedPeers,
    Outcome,
    compare,
    emulate,
    probe_kernel,
)
from kproxy.lab.kernel import NODE, KernelLab, Observation
from kproxy.lab.parsers import nft_rule_counters
from kproxy.lab.replay import Replay
from kproxy.nftables.cli import run_nft
from kproxy.nftables.evaluate import NOT_EVALUATED, attach, unevaluated
from kproxy.nftables.model import Ruleset


class NftRefused(Exception):
    """nft -f refused the script (the kernel's nft or the emulator's): its error output."""


def load_kernel(lab: KernelLab, script: str) -> None:
    """Replace the lab node's whole nft ruleset with ``script`` and forget its connections."""
    lab.run(NODE, "nft", "flush", "ruleset")
    lab.flush()
    loaded = lab.run(NODE, "nft", "-f", "-", input=script)
    if loaded["rc"] != 0:
        raise NftRefused(loaded["err"].strip())
    lab.flush()


def run_kernel(lab: KernelLab, case: Case, steps: bool = False) -> tuple[Outcome, list[Observation]]:
    """``steps`` also reads the counters after each probe (a replay matches the kernel's draws by them)."""
    load_kernel(lab, case.rules)
    out, observations = probe_kernel(lab, case, kernel_counters if steps else None)
    out.counters = kernel_counters(lab)
    return out, observations


def evaluated_counters(listing: str) -> dict[str, int]:
    """The rule counters of ``nft list ruleset`` the emulator can be held to: those of bridge and arp
    tables are left out, as their chains never run on the emulated node (the kernel's count ARP)."""
    return {k: n for k, n in nft_rule_counters(listing).items() if not k.startswith(UNEVALUATED)}


UNEVALUATED = tuple(f"table {family} " for family in NOT_EVALUATED)


def kernel_counters(lab: KernelLab) -> dict[str, int]:
    return evaluated_counters(lab.run(NODE, "nft", "list", "ruleset")["out"])


def emulator_counters(peers: EmulatedPeers) -> dict[str, int]:
    return evaluated_counters(run_nft(["list", "ruleset"], peers.node.nftables)[1])


def load_emulator(peers: EmulatedPeers, script: str) -> None:
    node = peers.node
    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), stdin=script, interfaces=set(node.interfaces))
    if rc != 0:
        raise NftRefused(err.strip())
    node.nftables = rs
    attach(node)        # bridge and arp chains stay unhooked: ``unevaluated`` names them for the user


def run_emulator(case: Case, sports: list[int], lab: KernelLab | None = None,
                 description: dict[str, Any] | None = None,
                 segments: list[list[dict[str, Any]]] | None = None, replay: Replay | None = None) -> Outcome:
    def load() -> EmulatedPeers:
        peers = EmulatedPeers(lab, description or (lab or KernelLab).node_description())
        load_emulator(peers, case.rules)
        return peers

    return emulate(load, emulator_counters, case, sports, segments, replay)


def notes(script: str) -> list[str]:
    """The chains of ``script`` the emulated node loads but never runs, each with why."""
    rc, _, _, rs = run_nft(["-f", "-"], Ruleset(), stdin=script)
    return unevaluated(rs) if rc == 0 else []


def emulator_refusal(script: str, description: dict[str, Any] | None = None) -> str | None:
    """Why the emulator refuses ``script`` on the node ``description`` gives (None when it loads)."""
    try:
        load_emulator(EmulatedPeers(None, description or KernelLab.node_description()), script)
    except NftRefused as exc:
        return str(exc)
    return None


def run_case(lab: KernelLab, case: Case, refusals: list[str] | None = None) -> list[Disagreement]:
    """Kernel first (it picks the source ports), then the emulator with the same ports; the differences.

    ``refusals`` collects the kernel's error for each script both sides refuse (they agree on it)."""
    try:
        kernel, observations = run_kernel(lab, case)
    except NftRefused as exc:
        refused = emulator_refusal(case.rules)
        if refused is not None and refusals is not None:
            refusals.append(str(exc))
        return [] if refused is not None else [Disagreement("nft -f", str(exc), "accepted")]
    refused = emulator_refusal(case.rules)
    if refused is not None:
        return [Disagreement("nft -f", "accepted", refused)]
    emulator = run_emulator(case, [o.sport for o in observations], lab, segments=[o.segments for o in observations])
    return compare(case, kernel, emulator)
