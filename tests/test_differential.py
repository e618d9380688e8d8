"""Differential tests: the same rulesets and packets through the Linux kernel and the emulated node.

Each regression test is named after a disagreement the random cases found and the emulator fixed.
The random test runs 1,000 cases with a fixed seed and some with a fresh seed it prints; its figures
go to docs/fidelity.md (``KPROXY_FIDELITY_OUT`` names a file to write them to).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from kproxy.lab.differential import Case, Probe, run_case, run_emulator, run_kernel
from kproxy.lab.kernel import KernelLab
from kproxy.lab.randomcases import cases

pytestmark = pytest.mark.kernel


def agree(lab: KernelLab, rules: str, probes: list[Probe]) -> None:
    diffs = run_case(lab, Case(rules, probes))
    assert not diffs, "\n".join(d.text() for d in diffs)


HAND = """*raw
-A PREROUTING -d 10.96.0.99/32 -p udp -j CT --notrack
COMMIT
*mangle
-A PREROUTING -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x1/0xffffffff
-A FORWARD -m mark --mark 0x1 -j CONNMARK --save-mark
COMMIT
*nat
:KUBE-SVC - [0:0]
:KUBE-SEP - [0:0]
-A PREROUTING -d 10.96.0.10/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.244.1.3:5353
-A PREROUTING -d 10.96.0.11/32 -p tcp -m multiport --dports 80,443 -j KUBE-SVC
-A PREROUTING -d 10.96.0.12/32 -p tcp -j REDIRECT --to-ports 8080
-A KUBE-SVC -m statistic --mode nth --every 2 --packet 0 -j KUBE-SEP
-A KUBE-SVC -p tcp -j DNAT --to-destination 10.244.1.5:8080
-A KUBE-SEP -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SEP -p tcp -j DNAT --to-destination 10.244.1.4:8080
-A OUTPUT -d 10.96.0.11/32 -p tcp -j KUBE-SVC
-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE
-A POSTROUTING -s 10.0.2.1/32 -o eth1 -p udp -j SNAT --to-source 10.0.2.1
COMMIT
*filter
:KUBE-FW - [0:0]
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp -m tcp --dport 9999 -j REJECT --reject-with tcp-reset
-A FORWARD -m state --state RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -d 10.96.0.98/32 -j DROP
-A FORWARD -d 10.96.0.97/32 -j REJECT
-A FORWARD -s 10.0.1.0/24 -i eth0 -o eth1 -g KUBE-FW
-A KUBE-FW -m addrtype --dst-type LOCAL -j DROP
-A KUBE-FW -m iprange --dst-range 10.244.9.0-10.244.9.255 -j REJECT --reject-with icmp-host-prohibited
-A KUBE-FW -m connmark --mark 0x1 -j ACCEPT
-A KUBE-FW -m length --length 0:40 -j DROP
-A KUBE-FW -j RETURN
COMMIT
"""
HAND_PROBES = [Probe("udp", "10.96.0.10", 53), Probe("tcp", "10.96.0.11", 80), Probe("tcp", "10.96.0.11", 443),
               Probe("tcp", "10.96.0.11", 80), Probe("tcp", "10.96.0.12", 80), Probe("udp", "10.96.0.99", 53),
               Probe("udp", "10.96.0.98", 53), Probe("tcp", "10.96.0.97", 80), Probe("tcp", "10.244.9.9", 80),
               Probe("tcp", "10.0.1.1", 9999), Probe("tcp", "10.0.1.1", 80), Probe("udp", "10.0.2.1", 53),
               Probe("tcp", "10.244.7.7", 8080), Probe("udp", "10.244.7.7", 9999),
               Probe("tcp", "10.96.0.11", 80, from_node=True), Probe("udp", "10.244.1.3", 53, from_node=True)]


def test_hand_written_ruleset_with_every_common_match_and_target_agrees(lab):
    agree(lab, HAND, HAND_PROBES)


def test_a_bare_namespace_does_not_track_connections(lab):
    """Regression: conntrack is on only when a rule needs it (a nat rule, a conntrack match, ...)."""
    agree(lab, "*filter\n-A FORWARD -p tcp\nCOMMIT\n", [Probe("tcp", "10.244.1.3", 80), Probe("udp", "10.0.1.1", 53)])


def test_icmp_error_about_a_masqueraded_flow_is_related_and_un_nated(lab):
    """Regression: the quoted header of an ICMP error is looked up by its inverse tuple."""
    agree(lab, "*nat\n-A POSTROUTING -o eth1 -j MASQUERADE\nCOMMIT\n*filter\n"
               "-A FORWARD -m conntrack --ctstate RELATED -j ACCEPT\n-A INPUT -m conntrack --ctstate INVALID\n"
               "COMMIT\n", [Probe("udp", "10.244.7.7", 9999)])


def test_reject_answers_are_sent_through_output(lab):
    """Regression: REJECT's ICMP error or reset is a locally generated packet that OUTPUT rules count."""
    agree(lab, "*filter\n-A FORWARD -d 10.96.0.97/32 -j REJECT\n-A OUTPUT\nCOMMIT\n",
          [Probe("tcp", "10.96.0.97", 80), Probe("udp", "10.96.0.97", 53)])


def test_an_entry_whose_only_reply_is_a_reset_is_deleted(lab):
    """Regression: a SYN answered by RST leaves no conntrack entry."""
    agree(lab, "*filter\n-A FORWARD -m conntrack --ctstate NEW\nCOMMIT\n", [Probe("tcp", "10.244.7.7", 9999)])


def test_untracked_packets_skip_nat(lab):
    agree(lab, "*raw\n-A PREROUTING -p udp -j CT --notrack\nCOMMIT\n*nat\n-A PREROUTING -p udp -j DNAT "
               "--to-destination 10.244.1.3\nCOMMIT\n", [Probe("udp", "10.96.0.10", 53)])


def test_statistic_random_has_the_same_distribution_in_both(lab):
    """statistic random is not reproducible packet by packet, so compare the distributions (chi-square)."""
    rules = ("*nat\n-A PREROUTING -p udp -m statistic --mode random --probability 0.25 -j DNAT --to-destination "
             "10.244.1.3:53\n-A PREROUTING -p udp -j DNAT --to-destination 10.244.1.4:53\nCOMMIT\n")
    n = 200
    case = Case(rules, [Probe("udp", "10.96.0.10", 53)] * n)
    kernel, obs = run_kernel(lab, case)
    emulated = run_emulator(case, [o.sport for o in obs], lab)
    for side in (kernel, emulated):
        hits = sum(1 for a in side.arrivals if "10.244.1.3" in a)
        expected = n * 0.25
        chi2 = (hits - expected) ** 2 / expected + (hits - expected) ** 2 / (n - expected)
        assert chi2 < 10.83, (hits, n)       # p = 0.001 for one degree of freedom


def _random_run(lab: KernelLab, examples: int, seed_value: int | None, strategy: Any = cases,
                runner: Any = run_case) -> dict[str, object]:
    """``examples`` random cases drawn from ``strategy`` and compared with ``runner`` (the nft tests
    pass theirs); the figures, with up to 20 disagreeing cases."""
    outcomes: list[list[str]] = []
    examples_seen: list[dict[str, object]] = []
    started = time.time()

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              derandomize=seed_value is None, suppress_health_check=list(HealthCheck))
    @given(strategy())
    def run(case: Case) -> None:
        diffs = runner(lab, case)
        outcomes.append([d.what.split(" (")[0].split(":")[0] for d in diffs])
        if diffs and len(examples_seen) < 20:
            examples_seen.append({"rules": case.rules, "probes": [p.text() for p in case.probes],
                                  "differences": [d.text() for d in diffs]})

    if seed_value is not None:
        run = seed(seed_value)(run)
    run()
    kinds = Counter(k.split(" by ")[0] for o in outcomes for k in set(o))
    agreeing = sum(1 for o in outcomes if not o)
    return {"cases": len(outcomes), "agreeing": agreeing, "rate": agreeing / max(1, len(outcomes)),
            "disagreement_kinds": dict(kinds), "seconds": round(time.time() - started, 1),
            "examples": examples_seen}


def _record(name: str, result: dict[str, object]) -> None:
    out = os.environ.get("KPROXY_FIDELITY_OUT")
    if out:
        data = json.loads(Path(out).read_text()) if os.path.exists(out) else {}
        data[name] = result
        Path(out).write_text(json.dumps(data, indent=1))


# The emulator agreed with the kernel on every fixed-seed case when this was last raised
# (docs/fidelity.md). The floor leaves room for at most five cases disturbed by a loaded machine
# (a probe's 80 ms deadline missed); a real regression shows in the recorded examples.
AGREEMENT_FLOOR = 0.995


def test_random_cases_fixed_seed(lab):
    result = _random_run(lab, 1000, None)
    _record("fixed_seed", result)
    print(f"random differential cases (fixed seed): { {k: v for k, v in result.items() if k != 'examples'} }")
    assert result["cases"] >= 1000
    assert result["rate"] >= AGREEMENT_FLOOR, result


def test_random_cases_fresh_seed(lab):
    """A new seed each run (``KPROXY_SEED`` replays one, ``KPROXY_FRESH_CASES`` sets how many cases)."""
    fresh_seed_check(lab, "", _random_run)


def fresh_seed_check(lab: KernelLab, prefix: str, random_run: Any) -> None:
    fresh = int(os.environ.get("KPROXY_SEED") or random.SystemRandom().randrange(2**32))
    count = int(os.environ.get("KPROXY_FRESH_CASES", "60"))
    print(f"fresh seed: {fresh}  (replay: KPROXY_SEED={fresh} KPROXY_FRESH_CASES={count})")
    result = random_run(lab, count, fresh)
    _record(f"{prefix}fresh_seed_{fresh}", result)
    # New cases: allow one in thirty (a rare construct the fixed seed never drew, or a disturbed probe).
    assert result["agreeing"] >= result["cases"] - max(2, result["cases"] // 30), (fresh, result)


def test_verify_command_reports_agreement(tmp_path, lab):
    from click.testing import CliRunner

    import kproxy.cli.verify_cmd  # noqa: F401
    from kproxy.cli.main import cli

    rules = tmp_path / "r.rules"
    rules.write_text("*nat\n-A PREROUTING -d 10.96.0.10/32 -p udp -m udp --dport 53 -j DNAT --to-destination "
                     "10.244.1.3:53\nCOMMIT\n")
    packets = tmp_path / "p.txt"
    packets.write_text("udp 10.96.0.10 53\ntcp 10.0.1.1 80\n")
    res = CliRunner().invoke(cli, ["verify", str(rules), "--packets", str(packets)])
    assert res.exit_code == 0, res.output
    assert "forwarded 10.244.1.3:53" in res.output and "agreement: 2 probes" in res.output
    bad = tmp_path / "bad.txt"
    bad.write_text("icmp 1.2.3.4\n")
    res = CliRunner().invoke(cli, ["verify", str(rules), "--packets", str(bad)])
    assert res.exit_code == 2 and "bad.txt:1: expected" in res.output


def test_verify_refuses_clearly_without_root(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import kproxy.cli.verify_cmd  # noqa: F401
    import kproxy.lab.kernel
    from kproxy.cli.main import cli

    monkeypatch.setattr(kproxy.lab.kernel, "kernel_lab_reason", lambda: "needs root to create network namespaces")
    rules = tmp_path / "r.rules"
    rules.write_text("*filter\n-A INPUT -j ACCEPT\nCOMMIT\n")
    res = CliRunner().invoke(cli, ["verify", str(rules)])
    assert res.exit_code == 2
    assert "cannot use the kernel here: needs root" in res.output


def test_falling_off_a_goto_chain_applies_the_builtin_policy(lab):
    """Regression: a -g chain that ends (or RETURNs) with no caller left falls to the built-in chain's policy."""
    agree(lab, "*filter\n:FORWARD DROP [0:0]\n:U - [0:0]\n-A FORWARD -j U\n-A FORWARD -i eth+ -g U\nCOMMIT\n",
          [Probe("udp", "10.244.1.3", 53)])


def test_reject_answers_are_related_to_the_rejected_connection(lab):
    """Regression: REJECT's answer carries the rejected packet's conntrack entry (RELATED), so a
    "! --ctstate RELATED -j REJECT" rule does not reject its own answer."""
    agree(lab, "*filter\n-A OUTPUT -m conntrack ! --ctstate RELATED -j REJECT\nCOMMIT\n",
          [Probe("tcp", "10.0.1.1", 53, from_node=True)])


def test_a_tcp_reset_from_reject_closes_the_connection(lab):
    """Regression: REJECT --reject-with tcp-reset moves the rejected packet's connection to CLOSE
    (nf_ct_set_closing), here for a SYN-ACK the node sends to the client."""
    agree(lab, "*filter\n-A OUTPUT -s 10.0.1.0/24 -p tcp -j REJECT --reject-with tcp-reset\nCOMMIT\n",
          [Probe("tcp", "10.0.1.1", 80)])


def test_a_reset_rejected_with_an_icmp_error_is_answered(lab):
    """Regression: icmp_send answers a TCP reset (only nf_send_reset refuses to)."""
    agree(lab, "*filter\n-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j REJECT\nCOMMIT\n",
          [Probe("tcp", "10.96.0.10", 80, from_node=True)])


def test_segments_acknowledging_data_never_seen_are_judged_by_sequence_numbers(lab):
    """Regression: the SYN-ACK skips conntrack (notrack), so the client's reset acknowledges data
    conntrack never saw: tcp_in_window calls it INVALID or ignores it, depending on the server's
    initial sequence number (replayed from the capture), and the entry stays in SYN_SENT."""
    for _ in range(3):
        agree(lab, "*raw\n-A OUTPUT -j CT --notrack\nCOMMIT\n*filter\n-A INPUT -m conntrack --ctstate INVALID\n"
                   "COMMIT\n", [Probe("tcp", "10.0.1.1", 80), Probe("tcp", "10.0.2.1", 9999)])


def test_a_nat_table_without_nat_rules_does_not_turn_tracking_on(lab):
    """Regression: only a rule that needs conntrack (a NAT target, a conntrack match, ...) makes the
    namespace track connections; nat chains holding other rules do not."""
    agree(lab, "*nat\n-A PREROUTING -d 10.96.0.11/32 -j RETURN\n-A OUTPUT -p udp\nCOMMIT\n",
          [Probe("tcp", "10.96.0.10", 8080, from_node=True), Probe("udp", "10.244.1.3", 53)])


def test_ct_notrack_alone_does_not_turn_tracking_on(lab):
    """Regression (fresh seed 2854051837): xt_CT's checkentry returns before nf_ct_netns_get for
    --notrack and for NOTRACK, so a raw table of those does not make the namespace track
    connections; CT with any other option does. A SYN to the node's own closed port dropped in
    INPUT then leaves no entry."""
    probes = [Probe("tcp", "10.0.1.1", 8080, from_node=True), Probe("udp", "10.0.2.2", 53)]
    for target in ("CT --notrack", "NOTRACK", "CT --zone 1"):
        agree(lab, f"*raw\n-A OUTPUT -p udp --dport 9999 -j {target}\nCOMMIT\n*filter\n:INPUT DROP [0:0]\n"
                   "-A INPUT -p udp -j ACCEPT\nCOMMIT\n", probes)


def test_a_packet_is_untracked_from_its_ct_notrack_rule_on(lab):
    """Regression (fresh seed 608839025): CT --notrack attaches the untracked template at once, so a
    conntrack match later in the same raw chain sees UNTRACKED, not INVALID."""
    agree(lab, "*raw\n-A PREROUTING -s 10.0.1.2/32 -j CT --notrack\n-A PREROUTING -m conntrack --ctstate INVALID\n"
               "-A PREROUTING -m conntrack --ctstate UNTRACKED\nCOMMIT\n",
          [Probe("tcp", "10.0.2.2", 80), Probe("udp", "10.0.2.2", 53)])


def test_a_client_whose_ack_was_reset_sends_no_reset_on_close(lab):
    """Regression (fresh seed 608839025, peers model): when the handshake ACK is rejected with a TCP
    reset, the reset closes the client's socket before connect() returns, so its close sends no
    abortive RST for the node's rules to count."""
    agree(lab, "*filter\n-A INPUT -s 10.0.1.2/32 -p tcp --dport 9999 -m statistic --mode nth --every 2 --packet 1 "
               "-j REJECT --reject-with tcp-reset\n-A INPUT -s 10.0.1.2/32 -p tcp --dport 9999\nCOMMIT\n",
          [Probe("tcp", "10.0.2.1", 9999)])


def test_an_icmp_error_about_rejects_reset_confirms_the_rejected_connection(lab):
    """Regression (fresh seed 2128293470): a SYN rejected in FORWARD with a reset leaves no entry,
    but when OUTPUT rejects that reset with an ICMP error, the error is attached to the SYN's entry
    in the original direction and confirms it at POSTROUTING (in SYN_SENT: an unconfirmed entry is
    not moved to CLOSE)."""
    agree(lab, "*filter\n-A FORWARD -p tcp -j REJECT --reject-with tcp-reset\n-A OUTPUT -p tcp -j REJECT\n"
               "-A INPUT -m conntrack --ctstate INVALID\nCOMMIT\n",
          [Probe("tcp", "10.244.1.3", 80), Probe("tcp", "10.0.2.2", 80)])


def test_an_ack_that_skips_nat_is_reset_by_the_sink(lab):
    """Regression (fresh seed 3102542229, peers model): the handshake ACK is untracked by an nth rule,
    so it reaches the sink un-masqueraded; the sink's listener knows no such connection and answers
    with a reset, which closes the client's socket (no RST on close), and the entry stays SYN_RECV."""
    agree(lab, "*raw\n-A PREROUTING -d 10.244.1.3/32 -m statistic --mode nth --every 3 --packet 1 -j CT --notrack\n"
               "COMMIT\n*nat\n-A POSTROUTING -o eth1 -j MASQUERADE\nCOMMIT\n",
          [Probe("tcp", "10.244.1.3", 8080)])


def test_masquerade_out_through_loopback_takes_another_devices_address(lab):
    """Regression: inet_select_addr skips host-scope addresses, so a packet redirected to 127.0.0.1
    and masqueraded gets the first global address of the node (10.0.1.1 on eth0)."""
    agree(lab, "*nat\n-A OUTPUT -d 10.244.1.3/32 -j REDIRECT\n-A POSTROUTING -s 10.0.2.1/32 -j MASQUERADE\nCOMMIT\n",
          [Probe("tcp", "10.244.1.3", 8080, from_node=True)])


def test_a_reply_redirected_to_the_node_itself_meets_a_closed_port(lab):
    """Regression: the request skipped conntrack, so the node's reply is a NEW flow that nat OUTPUT
    redirects back to the node, where no socket waits: Linux answers with a port unreachable
    (RELATED, counted by the mangle rule)."""
    agree(lab, "*raw\n-A PREROUTING -p udp -j CT --notrack\nCOMMIT\n*nat\n-A OUTPUT -p udp -j REDIRECT\nCOMMIT\n"
               "*mangle\n-A OUTPUT -m conntrack --ctstate RELATED\nCOMMIT\n", [Probe("udp", "10.0.2.1", 53)])


def test_a_rejected_handshake_ack_fails_the_connect(lab):
    """Regression: the client's ACK is rejected with an ICMP error; a connect with a timeout reads
    SO_ERROR, which reports it, so the sender sees the connection refused."""
    agree(lab, "*filter\n-A INPUT -p tcp -m conntrack --ctstate ESTABLISHED -j REJECT\nCOMMIT\n",
          [Probe("tcp", "10.0.1.1", 8080)])


def test_a_datagram_refused_on_its_way_out_fails_the_send(lab):
    """Regression: a UDP datagram the node's OUTPUT rejects makes its own send() fail (EPERM); the
    ICMP error that follows is never read, so the sender sees nothing come back."""
    agree(lab, "*filter\n-A OUTPUT -p udp -m conntrack --ctstate NEW -j REJECT\nCOMMIT\n",
          [Probe("udp", "10.0.2.1", 53, from_node=True)])


def test_a_syn_ack_that_skips_conntrack_is_reset_by_the_sender(lab):
    """Regression: raw PREROUTING runs before conntrack, so --ctstate INVALID matches every packet
    there; the untracked SYN-ACK keeps the DNATed address, no socket expects it, and the sender's
    TCP answers with a reset."""
    agree(lab, "*raw\n-A PREROUTING -m conntrack --ctstate INVALID -j CT --notrack\nCOMMIT\n*nat\n"
               "-A OUTPUT -d 10.96.0.10/32 -p tcp -j DNAT --to-destination 10.244.1.3:8080\nCOMMIT\n*filter\n"
               "-A OUTPUT -p tcp\nCOMMIT\n", [Probe("tcp", "10.96.0.10", 8080, from_node=True)])


def test_rejects_reset_runs_the_nat_chains_its_connection_never_reached(lab):
    """Regression: a SYN rejected in INPUT never reached nat INPUT, so the reset REJECT sends is
    RELATED to a connection without a source binding: nat POSTROUTING runs for it (nf_nat_inet_fn
    treats RELATED like NEW; only ICMP errors are translated instead)."""
    agree(lab, "*nat\n-A POSTROUTING -d 10.0.1.2/32 -j RETURN\n-A POSTROUTING -o eth1 -p udp -j MASQUERADE\nCOMMIT\n"
               "*filter\n-A INPUT -p tcp -j REJECT --reject-with tcp-reset\nCOMMIT\n", [Probe("tcp", "10.0.1.1", 8080)])


def test_a_reply_that_nat_sends_to_the_sink_is_seen_there(lab):
    """Regression: the request skipped conntrack, so the node's reply is a NEW flow that nat OUTPUT
    DNATs towards the sink: the sink sees it (and answers with a port unreachable)."""
    agree(lab, "*raw\n-A PREROUTING -j CT --notrack\nCOMMIT\n*nat\n-A OUTPUT -j DNAT --to-destination 10.244.1.3\n"
               "COMMIT\n", [Probe("udp", "10.0.2.1", 8080)])


def test_a_syn_ack_left_masqueraded_is_reset_by_the_node_itself(lab):
    """Regression: the SYN-ACK skips conntrack, so it is not un-masqueraded and reaches the node's own
    address, where no socket waits: the node's TCP (not the client's) answers with a reset."""
    agree(lab, "*raw\n-A PREROUTING -s 10.96.0.10/32 -j CT --notrack\n-A OUTPUT -j CT --notrack\nCOMMIT\n"
               "*nat\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n", [Probe("tcp", "10.96.0.10", 53)])


def test_a_reply_from_an_unexpected_address_is_refused_by_the_sender(lab):
    """Regression: the request skipped conntrack, so the node's reply is a NEW flow that nat SNATs to
    another of the node's addresses; the client's connected socket does not take it, and the client's
    UDP answers with a port unreachable that reaches the node's INPUT."""
    agree(lab, "*raw\n-A PREROUTING -j CT --notrack\nCOMMIT\n*nat\n-A POSTROUTING -s 10.0.1.1/32 -p udp -j SNAT "
               "--to-source 10.0.2.1\nCOMMIT\n*filter\n-A INPUT -p icmp\nCOMMIT\n", [Probe("udp", "10.0.1.1", 9999)])


def test_an_echo_turned_back_to_the_sink_meets_a_closed_port(lab):
    """Regression (fresh seed 1883848945, peers model): the node's datagram is untracked, so the sink's
    echo is a NEW flow that nat PREROUTING DNATs back towards the sink, at a port nobody listens on;
    the sink answers with a port unreachable, which the node forwards (RELATED, un-DNATed)."""
    agree(lab, "*raw\n-A OUTPUT -p udp -j CT --notrack\n-A PREROUTING -i eth1 -d 10.244.0.0/16\nCOMMIT\n"
               "*nat\n-A PREROUTING -s 10.0.0.0/8 -j DNAT --to-destination 10.244.1.4\nCOMMIT\n",
          [Probe("udp", "10.244.1.3", 53, from_node=True)])
