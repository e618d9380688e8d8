"""Byte-compatibility with nft 1.0.6: the same script loaded into the real nft (in a fresh kp- namespace)
and into kproxy must list identically (``list ruleset``, ``-a``, ``-j``) and fail identically."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from kproxy.lab.netns import Netns, kernel_lab_available
from kproxy.nftables.cli import run_nft
from kproxy.nftables.model import Ruleset

DATA = Path(__file__).parent / "data" / "nft"
CORPUS = sorted(p.name for p in DATA.glob("*.nft"))
LISTINGS = (["list", "ruleset"], ["-a", "list", "ruleset"], ["-j", "list", "ruleset"], ["-s", "list", "ruleset"],
            ["-nn", "list", "ruleset"], ["-y", "list", "ruleset"])


def require_nft() -> None:
    """Skip where the real nft cannot be run in a namespace of our own."""
    reason = kernel_lab_available()
    if reason:
        pytest.skip(reason)
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed")


@pytest.fixture(scope="module")
def real_nft():
    """Run the real nft on a script in a fresh kp- namespace; returns a function (script) -> outputs."""
    require_nft()

    def run(path: Path, listings: tuple[list[str], ...] = LISTINGS) -> tuple[int, str, list[str]]:
        ns = Netns.create("nft")
        try:
            load = ns.run(["nft", "-f", str(path)], check=False)
            outs = [ns.run(["nft", *args], check=False).stdout for args in listings]
            return load.returncode, load.stderr, outs
        finally:
            ns.delete()

    return run


def ours(path: Path, listings: tuple[list[str], ...] = LISTINGS) -> tuple[int, str, list[str]]:
    rc, _, err, rs = run_nft(["-f", str(path)], Ruleset(), interfaces={"lo"})
    return rc, err, [run_nft(args, rs)[1] for args in listings]


@pytest.mark.kernel
@pytest.mark.parametrize("name", CORPUS)
def test_corpus_lists_like_nft(real_nft, name: str) -> None:
    path = DATA / name
    rc, err, outs = real_nft(path)
    assert rc == 0, err
    my_rc, my_err, my_outs = ours(path)
    assert my_rc == 0, my_err
    for args, theirs, mine in zip(LISTINGS, outs, my_outs):
        assert mine == theirs, f"nft {' '.join(args)} differs for {name}"


def test_corpus_is_realistic() -> None:
    """The corpus covers what the byte tests claim: every family kind of ruleset, maps, vmaps, NAT."""
    text = "".join((DATA / n).read_text() for n in CORPUS)
    for needle in ("vmap", "numgen", "dnat", "snat", "masquerade", "flags interval", "timeout", "quota",
                   "limit rate", "define", "ct state", "reject with", "comment", "ip6"):
        assert needle in text, needle


ERRORS = sorted(p.name for p in (DATA / "errors").glob("*.nft"))


@pytest.mark.kernel
@pytest.mark.parametrize("name", ERRORS)
def test_errors_like_nft(real_nft, name: str) -> None:
    """Malformed or failing scripts: same message, position, carets and exit status; nothing applied."""
    path = DATA / "errors" / name
    rc, err, outs = real_nft(path, (["list", "ruleset"],))
    my_rc, my_err, my_outs = ours(path, (["list", "ruleset"],))
    assert (my_rc, my_err) == (rc, err)
    assert my_outs == outs


@pytest.mark.kernel
def test_command_sequence_like_nft(real_nft) -> None:
    """Commands one invocation at a time (add/insert by position and index, replace, delete, flush, list
    variants, -n/-nn/-y/-s/-j): each step's output, errors and exit status match the real nft's."""
    steps = [ln for ln in (DATA / "sequence.cmds").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    ns = Netns.create("nft")
    rs = Ruleset()
    try:
        for step in steps:
            argv = [a.replace("tests/data/nft/", f"{DATA}/") for a in shlex.split(step)]
            real = ns.run(["nft", *argv], check=False)
            rc, out, err, rs = run_nft(argv, rs, interfaces={"lo"})
            assert (rc, out, err) == (real.returncode, real.stdout, real.stderr), step
    finally:
        ns.delete()
