"""``kproxy nft`` changes a node's ruleset in place under an undo journal (``run_nft(..., in_place=True)``)
rather than a copy of it: every transaction, failing or not, must leave exactly the state the copy-based
run leaves (listings with handles, JSON, the node file's saved form, handle counters, counters, objects,
flowtables, the iptables-nft tables nft shows), and the objects held before a change are never changed."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from kproxy.cli.main import cli
from kproxy.nftables.cli import run_nft
from kproxy.nftables.model import Ruleset
from kproxy.nftables.store import SAVED, note_changes, reusable, ruleset_from_json, ruleset_to_json

IFACES = {"eth0", "eth1", "lo"}

BASE = """table ip t {
	counter cnt { packets 5 bytes 500 }
	quota q { over 100 mbytes used 10 mbytes }
	limit lim { rate 10/second }
	ct helper ftp-h { type "ftp" protocol tcp; }
	set s { type ipv4_addr; elements = { 10.0.0.1, 10.0.0.2 } }
	set iv { type ipv4_addr; flags interval; elements = { 10.1.0.0/16, 10.3.0.0/16 } }
	map vm { type ipv4_addr : verdict; elements = { 10.0.0.1 : jump a } }
	flowtable ft { hook ingress priority 0; devices = { eth0 }; }
	chain base {
		type filter hook input priority 0; policy accept;
		ip saddr { 192.168.0.1, 192.168.0.2 } counter packets 3 bytes 300 accept
		ip daddr vmap @vm
		ip daddr @s counter name cnt
		jump a
	}
	chain a {
		ip saddr 10.0.0.0/8 counter packets 1 bytes 100 jump b
		tcp dport { 21, 2121 } ct helper set "ftp-h"
	}
	chain b {
		quota name q
		limit name lim
		meta l4proto tcp flow add @ft
	}
	chain idle {
		drop
	}
}
table inet u {
	chain c {
		type filter hook forward priority 0; policy drop;
		ip6 daddr ::1 accept
	}
}
"""

# (argv, stdin): failing transactions of every kind, several after lines that changed a lot, and a few
# that succeed so that the state moves on between them
TRANSACTIONS: list[tuple[list[str], str | None]] = [
    (["add", "rule", "ip", "t", "idle", "jump", "nowhere"], None),                 # kernel ENOENT
    (["add", "element", "ip", "t", "nope", "{", "1.2.3.4", "}"], None),            # evaluation error
    (["create", "table", "ip", "t"], None),                                        # EEXIST
    (["delete", "chain", "ip", "t", "b"], None),                                   # EBUSY: a jump to it
    (["delete", "rule", "ip", "t", "a", "handle", "999"], None),                   # ENOENT
    (["add", "chain", "ip", "t", "n", "{", "type", "nat", "hook", "forward", "priority", "0;", "}"], None),
    (["add", "element", "ip", "t", "iv", "{", "10.1.2.0/24", "}"], None),          # interval overlap
    (["add", "rule", "ip", "t", "b", "jump", "a"], None),                          # a loop: EMLINK
    (["delete", "set", "ip", "t", "s"], None),                                     # in use
    (["delete", "counter", "ip", "t", "cnt"], None),                               # in use
    (["add", "element", "ip", "t", "s", "{", "10.0.0.9", "}"], None),               # succeeds
    (["add", "rule", "ip", "t", "b", "ip", "daddr", "vmap", "@vm"], None),         # a loop through the map
    (["add", "rule", "ip", "t", "idle", "ip", "daddr", "vmap", "@vm"], None),      # succeeds: unreached
    (["add", "element", "ip", "t", "vm", "{", "10.0.0.6", ":", "jump", "idle", "}"], None),  # now a loop
    (["-f", "-"], """add table ip new
add chain ip new c
add rule ip new c ip saddr { 1.1.1.1, 2.2.2.2 } drop
add element ip t s { 10.0.0.7 }
add element ip t vm { 10.0.0.8 : goto idle }
flush chain ip t a
delete rule ip t base handle 99
add rule ip t idle counter accept
"""),                                                                               # fails at line 7
    (["-f", "-"], """add counter ip t c2
add quota ip t q2 { 5 mbytes }
reset counters
flush set ip t s
flush table ip t
add rule ip t idle jump nowhere
"""),                                                                               # fails at the end
    (["-f", "-"], """flush ruleset
add table ip t
add chain ip t x
add rule ip t x drop
add rule ip t x jump nope
"""),                                                                               # flushed, then fails
    (["-f", "-"], """delete table inet u
add table ip t { comment "changed"; flags dormant; }
add flowtable ip t ft2 { hook ingress priority 0; devices = { eth0 }; }
"""),                                                                               # device taken
    (["-f", "-"], """add ct helper ip t h2 { type "nope" protocol tcp; }
"""),                                                                               # unknown helper
    (["-c", "-f", "-"], "add chain ip t checked\nadd rule ip t checked accept\n"),  # check only
    (["-f", "-"], "add rule ip t idle ip daddr 1.2.3.4 drop\nadd rule ip t idle syntax error here\n"),
    (["-f", "-"], "add rule ip t idle counter drop\nadd chain ip t fresh\nflush chain ip t b\n"),  # succeeds
    (["delete", "rule", "ip", "t", "idle", "handle", "2"], None),
    (["reset", "counters"], None),                                                 # succeeds, resets
    (["-f", "-"], "delete table inet u\nadd table inet u\nadd chain inet u c\nadd rule inet u c jump z\n"),
    (["-f", "-"], "delete set ip t iv\nadd set ip t iv { type ipv4_addr; }\nadd element ip t iv { 1.1.1.1/8 }\n"),
    (["-f", "-"], "flush table ip t\n"),                                           # succeeds
    (["-f", "-"], "add element ip t vm { 10.0.0.2 : jump a }\nadd rule ip t a jump missing\n"),
    (["--echo", "add", "element", "ip", "t", "s", "{", "10.0.0.4", "}"], None),   # on a copy, in place or not
    (["rename", "chain", "ip", "t", "idle", "idle2"], None),                       # so is a rename
    (["add", "rule", "ip", "t", "idle2", "jump", "nowhere"], None),
]
COPIED = ("--echo", "rename")


def state(rs: Ruleset) -> tuple[str, str, str]:
    """Everything a node keeps of a ruleset: the listing with handles, its JSON, the node file's form."""
    listed = run_nft(["-a", "list", "ruleset"], rs)
    as_json = run_nft(["-j", "-a", "list", "ruleset"], rs)
    assert listed[0] == 0 and as_json[0] == 0, (listed, as_json)
    return listed[1], as_json[1], json.dumps(ruleset_to_json(rs), sort_keys=True)


def base() -> Ruleset:
    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), BASE, IFACES)
    assert rc == 0, err
    return rs


def test_every_transaction_leaves_what_the_copy_leaves():
    copied, in_place = base(), base()
    failures = 0
    for argv, stdin in TRANSACTIONS:
        want = run_nft(argv, copied, stdin, IFACES)
        got = run_nft(argv, in_place, stdin, IFACES, in_place=True)
        assert got[:3] == want[:3], argv
        assert (got[3] is in_place) == (argv[0] not in COPIED or got[0] != 0), argv
        copied, in_place = want[3], got[3]
        failures += want[0] != 0
        assert state(in_place) == state(copied), (argv, stdin)
    assert failures >= 18


def test_a_change_in_place_leaves_the_objects_held_before_it():
    """The packet path holds chains and sets: a transaction changes copies of them, failing or not."""
    rs = base()
    t = rs.find("ip", "t")
    assert t is not None
    chain, s, ob = t.chains["a"], t.sets["s"], t.objs[("counter", "cnt")]
    rules, elems = list(chain.rules), list(s.elems)
    script = "add rule ip t a drop\nadd element ip t s { 10.9.9.9 }\nreset counters\nflush chain ip t b\n"
    assert run_nft(["-f", "-"], rs, script, IFACES, in_place=True)[0] == 0
    assert chain.rules == rules and s.elems == elems and ob.values["packets"] == 5
    assert t.chains["a"] is not chain and len(t.chains["a"].rules) == len(rules) + 1
    assert t.objs[("counter", "cnt")].values["packets"] == 0
    assert run_nft(["-f", "-"], rs, "add rule ip t a accept\nadd rule ip t a jump nope\n", IFACES,
                   in_place=True)[0] == 1
    assert len(t.chains["a"].rules) == len(rules) + 1


def kp(node: Path, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    import kproxy.cli.nft_cmd  # noqa: F401  (registers the command)

    res = CliRunner().invoke(cli, ["--node", str(node), *args], input=stdin)
    return res.exit_code, res.stdout, res.stderr


def saved_part(node: Path) -> str:
    with sqlite3.connect(node) as conn:
        row = conn.execute("SELECT body FROM part WHERE name = 'nftables'").fetchone()
    return json.dumps(json.loads(row[0]), sort_keys=True)


@pytest.mark.parametrize("first", range(0, len(TRANSACTIONS), 6))
def test_the_node_file_holds_what_the_copy_leaves(tmp_path, first):
    """Through ``kproxy nft`` on a node file holding iptables-nft tables too (which ``flush ruleset``
    takes away only when it succeeds): outputs, listings and the saved ruleset as the copy-based run's."""
    node = tmp_path / "node.db"
    assert kp(node, "iptables", "-A", "INPUT", "-s", "1.2.3.4", "-j", "DROP")[0] == 0
    assert kp(node, "nft", "-f", "-", stdin=BASE.replace("devices = { eth0 }", "devices = { lo }"))[0] == 0
    copied = run_nft(["-f", "-"], Ruleset(), BASE.replace("devices = { eth0 }", "devices = { lo }"), IFACES)[3]
    for argv, stdin in TRANSACTIONS[first:first + 6]:
        argv = [a.replace("eth0", "lo") for a in argv]
        stdin = stdin.replace("eth0", "lo") if stdin else stdin
        want = run_nft(argv, copied, stdin, IFACES)
        copied = want[3]
        got = kp(node, "nft", *argv, stdin=stdin)
        assert (got[0], got[1]) == (want[0], want[1]), (argv, stdin, got, want)
        assert got[2].startswith(want[2]), (argv, stdin, got, want)
        listed = kp(node, "nft", "-a", "list", "ruleset")
        assert listed[0] == 0
        assert "ip saddr 1.2.3.4" in listed[1]           # no flush ruleset here succeeds
        assert listed[1].endswith(run_nft(["-a", "list", "ruleset"], copied)[1])
        assert kp(node, "nft", "-j", "list", "ruleset")[1].count('"table"') >= len(copied.tables)
        assert saved_part(node) == json.dumps(ruleset_to_json(copied), sort_keys=True), (argv, stdin)


def test_saving_reuses_the_loaded_text_of_what_did_not_change():
    """A ruleset loaded from its saved form, changed in place by a command that says what it changed,
    is saved from the loaded text's unchanged pieces: the same as printing it all anew."""
    current = base()
    reused = 0
    for argv, stdin in TRANSACTIONS:
        rs = ruleset_from_json(json.loads(json.dumps(ruleset_to_json(current))))
        rc, _, _, after = run_nft(argv, rs, stdin, IFACES, in_place=True,
                                  changed=lambda ch, rs=rs: note_changes(rs, ch))
        reused += reusable(after) is not None
        assert ruleset_to_json(after) == ruleset_to_json(after.copy()), (argv, stdin)
        if rc == 0:
            current = after
    assert reused == sum(1 for argv, _ in TRANSACTIONS if argv[0] not in COPIED)     # (a copy is printed anew)


def test_saved_pieces_that_do_not_fit_are_not_used():
    data = ruleset_to_json(base())
    data["pieces"][0][4] = data["pieces"][0][4][:-1]
    assert SAVED not in ruleset_from_json(data).__dict__
    data = ruleset_to_json(base())
    data["pieces"][0][3] += 1
    assert SAVED not in ruleset_from_json(data).__dict__


def part_row(node: Path) -> tuple[int, str]:
    with sqlite3.connect(node) as conn:
        return conn.execute("SELECT generation, body FROM part WHERE name = 'nftables'").fetchone()


def test_commands_that_leave_the_nft_ruleset_alone_write_its_row_back_untouched(tmp_path):
    """iptables, ipset, ipvsadm, conntrack: the nft ruleset's row is not printed again (nor rewritten)."""
    node = tmp_path / "node.db"
    assert kp(node, "nft", "-f", "-", stdin=BASE.replace("devices = { eth0 }", "devices = { lo }"))[0] == 0
    assert kp(node, "nft", "add", "element", "ip", "t", "s", "{", "10.0.0.3", "}")[0] == 0
    row = part_row(node)
    for argv in (["iptables", "-A", "INPUT", "-j", "ACCEPT"], ["ipset", "create", "x", "hash:ip"],
                 ["ipvsadm", "-A", "-t", "10.0.0.1:80"], ["iptables", "-t", "nat", "-N", "FOO"],
                 ["conntrack", "-F"]):
        assert kp(node, *argv)[0] == 0, argv
        assert part_row(node) == row, argv
    assert "ip saddr" in kp(node, "nft", "list", "ruleset")[1]
    assert kp(node, "nft", "delete", "element", "ip", "t", "s", "{", "10.0.0.3", "}")[0] == 0
    generation, body = part_row(node)
    assert generation == row[0] + 1 and "10.0.0.3" not in json.loads(body)["text"]
    # a transaction the kernel refused moves the handle counters only: printed again from its pieces
    assert kp(node, "nft", "add", "rule", "ip", "t", "idle", "jump", "nowhere")[0] == 1
    handles = json.loads(part_row(node)[1])["handles"]
    assert handles[0][3] == json.loads(body)["handles"][0][3] + 1
    assert json.loads(part_row(node)[1])["text"] == json.loads(body)["text"]


def test_a_ruleset_said_unchanged_saves_as_the_form_it_was_loaded_from():
    data = json.loads(json.dumps(ruleset_to_json(base())))
    rs = ruleset_from_json(data)
    assert ruleset_to_json(rs) is not data          # nobody said anything: printed anew
    note_changes(rs)
    assert ruleset_to_json(rs) is data
    assert run_nft(["add", "rule", "ip", "t", "idle", "jump", "nowhere"], rs, in_place=True,
                   changed=lambda ch: note_changes(rs, ch))[0] == 1
    assert ruleset_to_json(rs) is not data and ruleset_to_json(rs) == ruleset_to_json(rs.copy())


def test_an_exception_inside_an_in_place_run_leaves_the_ruleset_as_it_was(monkeypatch):
    from kproxy.nftables import parser

    rs = base()
    before = state(rs)

    def boom(self, *args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(parser.Parser, "raise_recorded", boom)
    with pytest.raises(RuntimeError):
        run_nft(["add", "element", "ip", "t", "s", "{", "10.7.7.7", "}"], rs, in_place=True)
    monkeypatch.undo()
    assert state(rs) == before
    t = rs.find("ip", "t")
    assert t is not None and type(t.sets).__name__ == "JournalDict" and t.sets.journal is None
