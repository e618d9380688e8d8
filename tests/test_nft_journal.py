"""Transactions applied in place with an undo journal: a failure leaves the table as it was, and the
objects the packet path holds are never changed under it."""

from __future__ import annotations

import copy

import pytest

from kproxy.nftables.cli import run_nft
from kproxy.nftables.journal import MISSING, JournalDict, apply_in_place, named_objects
from kproxy.nftables.model import Ruleset
from kproxy.nftables.parser import NftError, Parser

BASE = """add table ip kube-proxy
add chain ip kube-proxy a
add chain ip kube-proxy b
add rule ip kube-proxy a ip daddr 10.0.0.1 drop
add map ip kube-proxy m { type ipv4_addr : verdict ; }
add element ip kube-proxy m { 10.0.0.1 : goto a }
"""


def ruleset() -> Ruleset:
    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), BASE)
    assert rc == 0, err
    return rs


def listing(rs: Ruleset) -> str:
    return run_nft(["list", "ruleset"], rs)[1]


def test_journal_dict_remembers_first_values_and_rolls_back() -> None:
    d = JournalDict(a=1, b=2)
    d.begin()
    d["a"] = 10
    d["a"] = 11
    del d["b"]
    d.setdefault("c", 3)
    d.pop("zz", None)
    assert d.journal == {"a": 1, "b": 2, "c": MISSING, "zz": MISSING}
    d.rollback()
    assert d == {"a": 1, "b": 2} and d.journal is None
    assert copy.deepcopy(d) == d and isinstance(copy.deepcopy(d), JournalDict)


def test_named_objects() -> None:
    text = ("add table ip kube-proxy\nflush chain ip kube-proxy a\nadd rule ip kube-proxy a update @s { ip saddr }\n"
            "delete element ip kube-proxy m { 1.2.3.4 }\n")
    assert named_objects(text, "ip", "kube-proxy") == ({"a"}, {"s", "m"})
    assert named_objects("add chain ip other x\n", "ip", "kube-proxy") is None
    assert named_objects("delete table ip kube-proxy\n", "ip", "kube-proxy") is None


def test_a_failing_transaction_is_undone_and_live_objects_are_untouched() -> None:
    rs = ruleset()
    before = listing(rs)
    t = rs.find("ip", "kube-proxy")
    live_a, live_m = t.chains["a"], t.sets["m"]
    rules_a, elems_m = list(live_a.rules), list(live_m.elems)
    text = ("flush chain ip kube-proxy a\nadd rule ip kube-proxy a ip daddr 10.0.0.2 accept\n"
            "add chain ip kube-proxy c\ndelete chain ip kube-proxy b\n"
            "add element ip kube-proxy m { 10.0.0.2 : drop }\nadd element ip kube-proxy nope { 10.0.0.3 }\n")
    with pytest.raises(NftError):
        apply_in_place(rs, t, *named_objects(text, "ip", "kube-proxy"), lambda: Parser(text, rs).script())
    assert listing(rs) == before
    assert t.chains["a"] is live_a and live_a.rules == rules_a and live_m.elems == elems_m
    good = text.rsplit("add element ip kube-proxy nope", 1)[0]
    old = apply_in_place(rs, t, *named_objects(good, "ip", "kube-proxy"), lambda: Parser(good, rs).script())
    assert old["a"] is live_a and old["c"] is MISSING and old["b"] is not MISSING
    assert live_a.rules == rules_a                         # the hooked object itself never changed
    rc, _, _, fresh = run_nft(["-f", "-"], ruleset(), good)
    assert rc == 0 and listing(rs) == listing(fresh)
