"""Parse plans must give exactly what the general parser gives, for every line, good or bad.

A plan is learnt from one line and replayed for later lines of the same shape; these tests take
every rule of the extensions corpus, learn its plan, then feed lines of that shape with other
values — valid, invalid, and values that would change the dispatch — and compare each outcome
(the rules in canonical form, or the error) with the general parser's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.test_ip6tables_kernel import RULES6

from kproxy.iptables import plan as plan_mod
from kproxy.iptables.parser import ParameterProblem, parse_command, tokenize
from kproxy.iptables.plan import parse_rule_line, shape
from kproxy.iptables.save import rule_spec

CORPUS = Path(__file__).parent / "data" / "extensions.rules"


def corpus_lines(text: str) -> list[tuple[str, list[str]]]:
    """(table, argv) of every -A line of a restore input."""
    out, table = [], "filter"
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A"):
            out.append((table, tokenize(line)))
    return out


LINES = corpus_lines(CORPUS.read_text())
LINES6 = corpus_lines(RULES6)
# Values that parse, values that do not, and values that would change how a line dispatches.
VALUES = ["10.0.0.1", "10.0.0.0/8", "1.2.3.4/32", "10.0.0.300", "10.1", "0/0", "::1", "eth0", "eth+",
          "averyveryverylongname0", "80", "65535", "65536", "0x50", "080", "1:2", "1-2", "-1", "x", "",
          "!", "!chain", "KUBE-SVC-ABC", "ACCEPT", "DNAT", "REJECT", "tcp", "udp", "6", "17", "icmp",
          "comment", "NEW,ESTABLISHED", "random", "0.5000000000", "2", "0x4000/0x4000", "LOCAL",
          "10.244.1.3:8080", "10.0.0.1-10.0.0.9", "tcp-reset", "icmp-port-unreachable", "--dport",
          "-j", "a" * 40]


def outcome(fn, argv: list[str], table: str, family: int = 4) -> tuple:
    try:
        c = fn(argv, table, family)
    except ParameterProblem as exc:
        return ("error", str(exc), exc.prefixed)
    return ("ok", c.cmd, c.chain, c.table, c.has_rule, [rule_spec(r) for r in c.rules],
            [(r.packets, r.bytes) for r in c.rules])


def general(argv: list[str], table: str, family: int = 4):
    return parse_command(argv, family, restore=True, default_table=table)


def planned(argv: list[str], table: str, family: int = 4):
    return parse_rule_line(argv, family, table)


@pytest.fixture(autouse=True)
def fresh_plans():
    plan_mod._PLANS.clear()
    yield
    plan_mod._PLANS.clear()


def test_every_corpus_line_parses_the_same_through_its_plan():
    for table, argv in LINES:
        first = outcome(planned, argv, table)          # learns the plan
        again = outcome(planned, argv, table)          # replays it
        assert first == again == outcome(general, argv, table), argv
    learnt = [p for p in plan_mod._PLANS.values() if p is not None]
    assert len(learnt) > len(LINES) // 2               # most shapes are planned, so replay is exercised


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_lines_of_a_learnt_shape_parse_like_the_general_parser(data):
    table, argv = data.draw(st.sampled_from(LINES))
    parse_rule_line(argv, 4, table)
    blanks = [i for i, t in enumerate(shape(argv)) if t is None]
    assert blanks
    variant = list(argv)
    for i in data.draw(st.lists(st.sampled_from(blanks), min_size=1, max_size=3)):
        variant[i] = data.draw(st.sampled_from(VALUES + [argv[j] for j in blanks]))
    assert outcome(planned, variant, table) == outcome(general, variant, table), (argv, variant)


V6_VALUES = ["2001:db8::1", "fd00::/8", "fd00::/129", "::", "::/0", "[fd00::5]:80", "[fd00::5]", "fe80::1%eth0",
             "10.0.0.1", "gggg::1", "echo-request", "135", "icmp6-adm-prohibited"]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_ipv6_lines_of_a_learnt_shape_parse_like_the_general_parser(data):
    table, argv = data.draw(st.sampled_from(LINES6))
    assert outcome(planned, argv, table, 6) == outcome(general, argv, table, 6)
    blanks = [i for i, t in enumerate(shape(argv)) if t is None]
    variant = list(argv)
    for i in data.draw(st.lists(st.sampled_from(blanks), min_size=1, max_size=3)):
        variant[i] = data.draw(st.sampled_from(V6_VALUES + VALUES + [argv[j] for j in blanks]))
    assert outcome(planned, variant, table, 6) == outcome(general, variant, table, 6), (argv, variant)


def test_a_bad_value_in_a_learnt_shape_gets_the_general_error():
    learn = tokenize("-A KUBE-SEP-X -s 10.0.0.1/32 -m comment --comment x -m tcp -p tcp -j DNAT --to-destination 10.0.0.1:80")
    bad = tokenize("-A KUBE-SEP-X -s 10.0.0.1/32 -m comment --comment x -m tcp -p tcp -j DNAT --to-destination 10.0.0.1:99999")
    parse_rule_line(learn, 4, "nat")
    assert shape(learn) == shape(bad)
    with pytest.raises(ParameterProblem) as got:
        parse_rule_line(bad, 4, "nat")
    with pytest.raises(ParameterProblem) as want:
        general(bad, "nat")
    assert str(got.value) == str(want.value)


def test_a_protocol_number_in_place_of_a_name_is_not_replayed_as_the_learnt_protocol():
    parse_rule_line(tokenize("-A X -p 6 --dport 80 -j ACCEPT"), 4, "filter")
    c = parse_rule_line(tokenize("-A X -p 17 --dport 80 -j ACCEPT"), 4, "filter")
    assert rule_spec(c.rules[0]) == "-p udp -m udp --dport 80 -j ACCEPT"


def test_an_unknown_option_where_a_known_one_was_learnt_is_still_refused():
    parse_rule_line(tokenize("-A X -m comment --comment hi -j ACCEPT"), 4, "filter")
    with pytest.raises(ParameterProblem, match="unknown option"):
        parse_rule_line(tokenize("-A X -m comment --nonsense hi -j ACCEPT"), 4, "filter")


def test_a_jump_to_a_chain_does_not_replay_for_a_target_or_an_inverted_name():
    parse_rule_line(tokenize("-A X -s 10.0.0.1 -j SOMECHAIN"), 4, "filter")
    c = parse_rule_line(tokenize("-A X -s 10.0.0.1 -j DROP"), 4, "filter")
    assert c.rules[0].jump == "DROP"
    c = parse_rule_line(tokenize("-A X -s 10.0.0.1 -j !x"), 4, "filter")
    assert c.rules[0].jump == "!x"          # a chain name (that iptables 1.8.9 finds missing), not an inversion


def test_repeated_values_share_one_extension_object_and_unique_ones_are_not_remembered():
    lines = [tokenize(f'-A S{i} -m comment --comment "svc{i % 10}" -j DNAT --to-destination 10.0.{i // 256}.{i % 256}')
             for i in range(3000)]
    rules = [parse_rule_line(a, 4, "nat").rules[0] for a in lines]
    assert rules[0].matches[0] is rules[10].matches[0]
    assert rules[0].target is not rules[10].target
    learnt = [p for p in plan_mod._PLANS.values() if p is not None]
    assert len(learnt) == 1
    assert learnt[0].matches[0].memo is not None       # comments repeat: remembered
    assert learnt[0].target.memo is None                # every address is new: not remembered


def test_rules_with_their_own_state_never_share_an_extension_object():
    rules = [parse_rule_line(tokenize(f"-A C{i} -m statistic --mode nth --every 2 --packet 0 -j ACCEPT"), 4, "filter")
             .rules[0] for i in range(3)]
    rules += [parse_command(tokenize("-A C -m statistic --mode nth --every 2 --packet 0 -j ACCEPT"), 4).rules[0]
              for _ in range(2)]
    assert len({id(r.matches[0]) for r in rules}) == 5
    random = [parse_rule_line(tokenize(f"-A C{i} -m statistic --mode random --probability 0.5 -j ACCEPT"), 4,
                              "filter").rules[0] for i in range(3)]
    assert len({id(r.matches[0]) for r in random}) == 1


def test_a_planned_shape_still_warns_of_a_weird_interface_name():
    """A plan learnt from ``-i eth0`` must not swallow the warning a later ``-i eth0/1`` of the same shape gets."""
    from kproxy.iptables.plan import parse_rule_line

    assert parse_rule_line(["-A", "INPUT", "-i", "eth0", "-j", "ACCEPT"], 4, "filter").warnings == []
    assert parse_rule_line(["-A", "INPUT", "-i", "eth1", "-j", "ACCEPT"], 4, "filter").warnings == []
    c = parse_rule_line(["-A", "INPUT", "-i", "eth0/1", "-j", "ACCEPT"], 4, "filter")
    assert c.warnings == ["Warning: weird character in interface `eth0/1' ('/' and ' ' are not allowed by the "
                          "kernel).\n"]
