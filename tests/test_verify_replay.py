"""``kproxy verify`` judging rulesets whose outcome depends on time and on the kernel's dice.

Each case runs in throw-away kp- namespaces: the kernel side first, then the emulator replaying the
kernel's send times and, where the rules allow it, the kernel's random choices. Rate limits and
``recent`` lists must see time pass as the kernel did; ``statistic``, ``numgen`` and
``--random-fully`` must agree and say what they replayed; a deliberate emulator bug must still be
reported.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import kproxy.cli.verify_cmd  # noqa: F401 - registers the command
from kproxy.cli.main import cli
from kproxy.iptables.ext import limit as limit_ext
from kproxy.lab.differential import Case, Probe
from kproxy.lab.kernel import KernelLab, kernel_lab_reason
from kproxy.lab.verify import Verdict, verify

pytestmark = pytest.mark.kernel


def agreed(got: Verdict) -> Verdict:
    assert not got.diffs, "\n".join(d.text() for d in got.diffs)
    return got


LIMIT = """*filter
-A INPUT -p udp -m udp --dport 5353 -m limit --limit 2/sec --limit-burst 1 -j ACCEPT
-A INPUT -p udp -m udp --dport 5353 -j DROP
COMMIT
"""


def udp_to_node(n: int, pause_before_last: float) -> list[Probe]:
    probes = [Probe("udp", "10.0.1.1", 5353) for _ in range(n - 1)]
    return [*probes, Probe("udp", "10.0.1.1", 5353, pause=pause_before_last)]


def test_limit_sees_the_kernels_time(lab: KernelLab) -> None:
    # One token, one more every 0.5 s: the second datagram right after the first finds none, the
    # third, 0.7 s later, finds a new one.
    got = agreed(verify(lab, Case(LIMIT, udp_to_node(3, 0.7))))
    assert got.kernel.fates == ["delivered", "dropped", "delivered"]


def test_a_stopped_clock_would_disagree(lab: KernelLab) -> None:
    """Without the kernel's times the third datagram finds no token: the replay is what agrees."""
    from kproxy.lab import differential

    case = Case(LIMIT, udp_to_node(3, 0.7))
    kernel, observations = differential.run_kernel(lab, case)
    frozen = differential.run_emulator(case, [o.sport for o in observations], lab,
                                       segments=[o.segments for o in observations])
    assert kernel.fates == ["delivered", "dropped", "delivered"]
    assert frozen.fates == ["delivered", "dropped", "dropped"]


RECENT = """*filter
-A INPUT -p udp -m udp --dport 53 -m recent --rcheck --seconds 1 --hitcount 2 --name probes -j DROP
-A INPUT -p udp -m udp --dport 53 -m recent --set --name probes -j ACCEPT
COMMIT
"""


def test_recent_forgets_as_the_kernel_does(lab: KernelLab) -> None:
    probes = [Probe("udp", "10.0.1.1", 53) for _ in range(3)] + [Probe("udp", "10.0.1.1", 53, pause=1.3)]
    got = agreed(verify(lab, Case(RECENT, probes)))
    assert got.kernel.fates == ["delivered", "delivered", "dropped", "delivered"]


STATISTIC = """*nat
:SVC - [0:0]
-A PREROUTING -d 10.96.0.50/32 -p tcp -m tcp --dport 80 -j SVC
-A SVC -p tcp -m statistic --mode random --probability 0.33333333349 -j DNAT --to-destination 10.244.1.5:8080
-A SVC -p tcp -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 10.244.1.6:8080
-A SVC -p tcp -j DNAT --to-destination 10.244.1.7:8080
COMMIT
"""


def test_statistic_replays_the_kernels_endpoints(lab: KernelLab) -> None:
    probes = [Probe("tcp", "10.96.0.50", 80) for _ in range(8)]
    got = agreed(verify(lab, Case(STATISTIC, probes)))
    endpoints = {a.split(" -> ")[1] for a in got.kernel.arrivals}
    assert endpoints <= {"10.244.1.5:8080", "10.244.1.6:8080", "10.244.1.7:8080"}
    assert len(got.replay.notes) == 8 and all(n.startswith("replayed: probe") for n in got.replay.notes)
    assert any("nat SVC rule #" in n for n in got.replay.notes)


NUMGEN = """table ip t {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr 10.96.0.51 tcp dport 80 counter dnat to numgen random mod 3 map { 0 : 10.244.1.5, 1 : 10.244.1.6, 2 : 10.244.1.7 }
    }
}
"""


def test_numgen_replays_the_kernels_choice(lab: KernelLab) -> None:
    probes = [Probe("tcp", "10.96.0.51", 80) for _ in range(6)]
    got = agreed(verify(lab, Case(NUMGEN, probes), nft=True))
    assert all(" 2 of 0-2" in n or " 1 of 0-2" in n or " 0 of 0-2" in n for n in got.replay.notes)


MASQUERADE = """*nat
-A POSTROUTING -o eth1 -p tcp -j MASQUERADE --random-fully
-A POSTROUTING -o eth1 -p udp -j MASQUERADE --random-fully
COMMIT
"""


def test_random_fully_ports_are_the_kernels(lab: KernelLab) -> None:
    probes = [Probe("tcp", "10.244.1.5", 80), Probe("udp", "10.244.1.5", 53), Probe("tcp", "10.244.1.5", 80)]
    got = agreed(verify(lab, Case(MASQUERADE, probes)))
    for note, arrival in zip(got.replay.notes, got.kernel.arrivals, strict=True):
        port = arrival.split(" -> ")[0].rsplit(":", 1)[1]
        assert f"NAT source port {port} (drawn at random for --random-fully from 1024-65535)" in note


def test_an_emulator_bug_is_still_reported(lab: KernelLab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A limit that never runs out of tokens: no replay can hide it."""
    monkeypatch.setattr(limit_ext.LimitMatch, "matches", lambda self, pkt, ctx: True)
    got = verify(lab, Case(LIMIT, udp_to_node(3, 0.7)))
    assert [d.what for d in got.diffs][0] == "probe 2 (client -> 10.0.1.1:5353/udp) fate"


def test_a_choice_the_emulators_rules_do_not_allow_is_reported(lab: KernelLab) -> None:
    """The emulator's endpoints are not the kernel's: the kernel's choice cannot be replayed."""
    wrong = STATISTIC.replace("10.244.1.7:8080", "10.244.1.9:8080").replace("10.244.1.6:8080", "10.244.1.9:8080")
    probes = [Probe("tcp", "10.96.0.50", 80) for _ in range(8)]
    got = verify(lab, Case(STATISTIC, probes), emulator_rules=wrong)
    kernel_not_first = [i for i, a in enumerate(got.kernel.arrivals) if "10.244.1.5" not in a]
    if not kernel_not_first:
        pytest.skip("the kernel chose the first endpoint 8 times in a row (p = 1/6561)")
    i = kernel_not_first[0]
    assert f"not replayed: probe {i + 1} (client -> 10.96.0.50:80/tcp)" in "\n".join(got.replay.notes)
    assert any(d.what.startswith(f"probe {i + 1} ") for d in got.diffs)


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_verify(*args: str) -> Result:
    if kernel_lab_reason():
        pytest.skip(str(kernel_lab_reason()))
    return CliRunner().invoke(cli, ["verify", *args])


def test_the_kube_proxy_example_agrees() -> None:
    """kube-proxy's own rules: nfacct objects, statistic endpoints, --random-fully, a localhost nodeport."""
    res = run_verify(str(EXAMPLES / "iptables.rules"))
    assert res.exit_code == 0, res.output
    assert "replayed: probe" in res.output and "--random-fully" in res.output
    assert res.output.splitlines()[-1].startswith("agreement: 6 probes")


def test_the_example_on_the_example_nodes_interfaces() -> None:
    res = run_verify(str(EXAMPLES / "iptables.rules"), "--node-file", str(EXAMPLES / "node.yaml"))
    assert res.exit_code == 0, res.output


LINKED = """*nat
-A PREROUTING -i cni0 -d 10.96.0.60/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.5:8080
COMMIT
*filter
-A INPUT -i cali+ -p udp -m udp --dport 53 -j DROP
COMMIT
"""


def test_probes_arrive_through_the_interfaces_the_ruleset_names(tmp_path: Path) -> None:
    (tmp_path / "rules").write_text(LINKED)
    (tmp_path / "probes").write_text("tcp 10.96.0.60 80 via cni0\ntcp 10.96.0.60 80\n"
                                     "udp 10.0.1.1 53 via cali0\nudp 10.0.1.1 53\n")
    res = run_verify(str(tmp_path / "rules"), "--packets", str(tmp_path / "probes"))
    assert res.exit_code == 0, res.output
    fates = [line.split()[-2:] for line in res.output.splitlines() if line.startswith("client")]
    assert fates == [["forwarded", "10.244.1.5:8080"], ["forwarded", "10.96.0.60:80"], ["dropped", "dropped"],
                     ["delivered", "delivered"]]


def test_a_probe_through_an_interface_the_node_lacks_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rules").write_text(LINKED)
    (tmp_path / "probes").write_text("tcp 10.96.0.60 80 via wg0\n")
    res = run_verify(str(tmp_path / "rules"), "--packets", str(tmp_path / "probes"))
    assert res.exit_code == 2
    assert "no interface wg0 on the verify node (it has eth0, cni0, cali0 towards the client)" in res.output
