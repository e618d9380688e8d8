"""The short ways a big dump takes through restore and save must give what the long ways give.

An ``-A`` line of a planned shape goes from its plan straight to the table (``planned_rules``,
``_Restorer.append_rules``); save remembers the text of shared extension objects, addresses,
protocols and quoted strings; comments with one text are one object. Each test compares with the
general path or states the exact result.
"""

from __future__ import annotations

import pytest

from kproxy.iptables import plan as plan_mod
from kproxy.iptables.ext.comment import CommentMatch
from kproxy.iptables.extension import Opt
from kproxy.iptables.model import Rule
from kproxy.iptables.parser import ParameterProblem, parse_command, tokenize
from kproxy.iptables.plan import parse_rule_line, planned_rules
from kproxy.iptables.restore import RestoreError
from kproxy.iptables.save import format_rule, rule_spec
from kproxy.iptables.xtutil import save_string
from kproxy.node import Node


@pytest.fixture(autouse=True)
def fresh_plans():
    plan_mod._PLANS.clear()
    yield
    plan_mod._PLANS.clear()


def _general(line: str, table: str = "filter", family: int = 4) -> list[str]:
    c = parse_command(tokenize(line), family, restore=True, default_table=table)
    return [rule_spec(r) for r in c.rules]


@pytest.mark.parametrize("value", ["10.0.0.1,10.0.0.2", "0/0,10.0.0.1", "10.0.0.0/8,0.0.0.0/0", "0/0", "1.2.3.4/32"])
@pytest.mark.parametrize("inv", ["", "! "])
def test_address_lists_through_a_plan_give_the_general_parsers_rules(value: str, inv: str) -> None:
    parse_rule_line(tokenize(f"-A X {inv}-s 10.9.9.9/32 -d 10.8.8.8 -p tcp -m tcp --dport 80 -j ACCEPT"), 4, "filter")
    line = f"-A X {inv}-s {value} -d 10.8.8.8,10.7.7.7 -p tcp -m tcp --dport 80 -j ACCEPT"
    try:
        want: object = _general(line)
    except ParameterProblem as exc:
        want = str(exc)
    got = planned_rules(tokenize(line), 4)
    if isinstance(want, str):
        assert got is None                   # the general parser then reports the error
    else:
        assert got is not None and got[0] == "X"
        assert [rule_spec(r) for r in got[1]] == want
        assert len({id(r) for r in got[1]}) == len(got[1])


def test_an_unplanned_shape_is_not_replayed() -> None:
    assert planned_rules(tokenize("-A X -s 10.0.0.1 -j ACCEPT"), 4) is None
    parse_rule_line(tokenize("-A X -s 10.0.0.1 -j ACCEPT"), 4, "filter")
    got = planned_rules(tokenize("-A Y -s 10.0.0.2 -j ACCEPT"), 4)
    assert got is not None and got[0] == "Y" and [rule_spec(r) for r in got[1]] == ["-s 10.0.0.2/32 -j ACCEPT"]


DUMP = """*filter
:INPUT ACCEPT [3:4]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:A - [0:0]
[1:2] -A A -s 10.0.0.1/32 -m comment --comment "one rule" -j ACCEPT
[3:40] -A A -s 10.0.0.2/32 -m comment --comment "one rule" -j ACCEPT
[5:60] -A A -s 10.0.0.3/32,10.0.0.4/32 -m comment --comment two -j DROP
-A A -s 10.0.0.5/32 -m comment --comment "no counters" -j ACCEPT
COMMIT
"""


@pytest.mark.parametrize("counters", [True, False])
def test_counters_of_planned_lines(counters: bool) -> None:
    node = Node.default()
    node.iptables_restore(DUMP, 4, counters=counters)
    rules = node.iptables[4].tables["filter"].chains["A"].rules
    want = [(1, 2), (3, 40), (5, 60), (5, 60), (0, 0)] if counters else [(0, 0)] * 5
    assert [(r.packets, r.bytes) for r in rules] == want
    assert [format_rule("A", r) for r in rules] == [
        '-A A -s 10.0.0.1/32 -m comment --comment "one rule" -j ACCEPT',
        '-A A -s 10.0.0.2/32 -m comment --comment "one rule" -j ACCEPT',
        "-A A -s 10.0.0.3/32 -m comment --comment two -j DROP",
        "-A A -s 10.0.0.4/32 -m comment --comment two -j DROP",
        '-A A -s 10.0.0.5/32 -m comment --comment "no counters" -j ACCEPT']
    assert rules[0].matches[0] is rules[1].matches[0]       # one object per comment text


def test_errors_of_planned_lines_name_the_line() -> None:
    text = DUMP.replace("[3:40] -A A", "[3:40] -A B")
    node = Node.default()
    with pytest.raises(RestoreError) as got:
        node.iptables_restore(text, 4, counters=True)
    assert str(got.value) == "iptables-restore: line 7 failed: No chain/target/match by that name."
    assert node.iptables[4].tables.get("filter") is None or not node.iptables[4].tables["filter"].chains.get("A")
    bad = DUMP.replace("[3:40] -A A -s 10.0.0.2/32", "[3:40] -A A -s 10.0.0.999/32")
    with pytest.raises(RestoreError) as got:
        Node.default().iptables_restore(bad, 4, counters=True)
    assert "host/network `10.0.0.999' not found\nError occurred at line: 7" in str(got.value)


def test_the_kernels_checks_still_run_on_planned_lines() -> None:
    text = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A INPUT -i eth0 -p tcp -m tcp --dport 22 -j ACCEPT\n"
            "-A OUTPUT -i eth1 -p tcp -m tcp --dport 23 -j ACCEPT\nCOMMIT\n")
    with pytest.raises(RestoreError) as got:
        Node.default().iptables_restore(text, 4)
    assert "Can't use -i with OUTPUT" in str(got.value) and "line: 6" in str(got.value)
    dnat = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A INPUT -m comment --comment a -j MARK --set-xmark 0x1/0xffffffff\n"
            "-A INPUT -m comment --comment b -j DNAT --to-destination 10.0.0.1\nCOMMIT\n")
    with pytest.raises(RestoreError) as got:
        Node.default().iptables_restore(dnat, 4)
    assert "line 6" in str(got.value) and "RULE_APPEND failed (Invalid argument)" in str(got.value)


def test_test_and_verbose_restores_still_take_the_general_path() -> None:
    from kproxy.iptables.restore import restore

    node = Node.default()
    node.iptables_restore(DUMP, 4, counters=True)            # learns the shapes
    echo: list[str] = []
    fresh = Node.default()
    restore(DUMP, fresh.iptables[4], counters=True, node=fresh, echo=echo)
    assert len(echo) == 4 and "10.0.0.4" in echo[2] and "/* no counters */" in echo[3]     # -v: one per line
    test = Node.default()
    restore(DUMP.replace(":A - [0:0]\n", ""), test.iptables[4], counters=True, node=test, test=True)
    assert "filter" not in test.iptables[4].tables or not test.iptables[4].tables["filter"].chains.get("A")


@pytest.mark.parametrize("value, want", [("abc", "abc"), ("a b", '"a b"'), ('a"b', '"a\\"b"'), ("a\\b", '"a\\\\b"'),
                                         ("it's", '"it\\\'s"'), ("", '""'), ("ns/svc:http", '"ns/svc:http"')])
def test_save_string_remembers_what_it_quoted(value: str, want: str) -> None:
    assert save_string(value) == want
    assert save_string(value) == want


def test_comments_of_one_text_are_one_object_and_save_alike() -> None:
    a = CommentMatch.from_options([Opt("comment", ["x y"])], 4, Rule())
    b = CommentMatch.from_options([Opt("comment", ["x y"])], 4, Rule())
    c = CommentMatch.from_options([Opt("comment", ["x z"])], 4, Rule())
    assert a is b and a is not c
    r1, r2 = Rule(matches=[a], jump="ACCEPT"), Rule(matches=[c], jump="ACCEPT")
    assert format_rule("C", r1) == '-A C -m comment --comment "x y" -j ACCEPT'
    assert format_rule("C", r2) == '-A C -m comment --comment "x z" -j ACCEPT'
    assert format_rule("C", r1, counters=True) == '[0:0] -A C -m comment --comment "x y" -j ACCEPT'


def test_only_shared_stateless_extensions_have_their_text_remembered() -> None:
    from kproxy.iptables import save

    nth = parse_command(tokenize("-A C -m statistic --mode nth --every 2 --packet 0 -j ACCEPT"), 4).rules[0]
    rnd = parse_command(tokenize("-A C -m statistic --mode random --probability 0.5 -j ACCEPT"), 4).rules[0]
    assert format_rule("C", nth) == "-A C -m statistic --mode nth --every 2 --packet 0 -j ACCEPT"
    assert format_rule("C", rnd) == "-A C -m statistic --mode random --probability 0.50000000000 -j ACCEPT"
    assert id(nth.matches[0]) not in save._EXT_TEXT           # its own state: printed afresh each time
    assert save._EXT_TEXT[id(rnd.matches[0])][0] is rnd.matches[0]


def test_node_file_text_check() -> None:
    from kproxy.store.database import _db

    assert _db("plain") == "plain"
    assert _db("café") == "café"
    assert _db("bad\udcff") == b"bad\xff"
    assert _db(None) is None


def test_owned_items_of_a_json_document() -> None:
    from kproxy.capture import _owned

    owned = {("ip", "filter")}
    assert _owned({"table": {"family": "ip", "name": "filter"}}, owned)
    assert _owned({"chain": {"family": "ip", "table": "filter", "name": "INPUT"}}, owned)
    assert not _owned({"chain": {"family": "ip", "table": "nat", "name": "INPUT"}}, owned)
    assert not _owned({"chain": {"family": "ip", "table": "filter"}}, set())
    assert not _owned({"chain": "x"}, owned)
    assert not _owned({"a": {}, "b": {}}, owned)
    assert not _owned(["table"], owned)
