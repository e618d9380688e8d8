"""The iptables front end: restore, save, commands, listings and errors, without the kernel."""

from __future__ import annotations

import pytest

from kproxy.iptables.commands import run_iptables
from kproxy.iptables.parser import tokenize
from kproxy.iptables.restore import RestoreError, restore
from kproxy.iptables.save import save
from kproxy.iptables.state import IptablesState

BASE = """*filter
:INPUT DROP [5:10]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:AAA - [0:0]
:ABC - [0:0]
-A INPUT -f -g ABC
-A INPUT -i lo ! -f -j AAA
-A INPUT ! -p tcp
-A AAA -s 1.2.3.0/24
-A ABC -p sctp
-A ABC ! -s 10.0.0.0/8 ! -d 1.2.3.4/32 ! -i eth+ -p udp -j RETURN
COMMIT
"""


def loaded(text: str = BASE, **kw: object) -> IptablesState:
    s = IptablesState(4)
    restore(text, s, **kw)  # type: ignore[arg-type]
    return s


def test_save_round_trips_canonical_input():
    assert save(loaded(counters=True), header=False) == BASE


def test_save_canonicalises_addresses_protocols_and_chain_order():
    s = loaded("*filter\n:ZED - [0:0]\n:ALPHA - [0:0]\n-A ZED -s 1.2.3.4 -p 47\n-A ALPHA -d 10.1.2.3/8 -s 0/0\n"
               "-A INPUT -p 6 -j ZED\nCOMMIT\n")
    assert save(s, header=False).splitlines() == [
        "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":ALPHA - [0:0]", ":ZED - [0:0]",
        "-A INPUT -p tcp -j ZED", "-A ALPHA -d 10.0.0.0/8", "-A ZED -s 1.2.3.4/32 -p gre", "COMMIT"]


def test_counters_are_restored_only_with_c():
    text = "*filter\n:INPUT ACCEPT [7:700]\n[3:300] -A INPUT -j ACCEPT\nCOMMIT\n"
    with_c = save(loaded(text, counters=True), counters=True, header=False)
    assert ":INPUT ACCEPT [7:700]" in with_c and "[3:300] -A INPUT -j ACCEPT" in with_c
    without = save(loaded(text), counters=True, header=False)
    assert ":INPUT ACCEPT [0:0]" in without and "[0:0] -A INPUT -j ACCEPT" in without


def test_tables_print_in_the_tools_fixed_order_and_only_when_used():
    s = loaded("*nat\n-A INPUT\nCOMMIT\n*raw\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n*mangle\n-A INPUT\nCOMMIT\n")
    assert [ln for ln in save(s, header=False).splitlines() if ln.startswith("*")] == ["*mangle", "*raw", "*nat"]
    assert save(IptablesState(4)) == ""


def test_a_failed_restore_keeps_the_tables_committed_before_it():
    """Each COMMIT is its own transaction (as iptables-nft and -legacy do; checked against the kernel in
    tests/test_ext_production.py): the nat table committed before the failing filter line stays."""
    s = loaded()
    before = save(s, counters=True, header=False)
    with pytest.raises(RestoreError) as err:
        restore("*nat\n-A PREROUTING -j ACCEPT\nCOMMIT\n*filter\n-A INPUT -j NOPE\nCOMMIT\n", s)
    assert err.value.rc == 2
    assert str(err.value).splitlines() == [
        "iptables-restore v1.8.9 (nf_tables): Chain 'NOPE' does not exist", "Error occurred at line: 6",
        "Try `iptables-restore -h' or 'iptables-restore --help' for more information."]
    after = save(s, counters=True, header=False)
    assert after != before and "-A PREROUTING -j ACCEPT" in after
    assert save(s, tables=["filter"], counters=True, header=False) == \
        save(loaded(), tables=["filter"], counters=True, header=False)
    t = loaded()
    restore("*nat\n-A PREROUTING -j ACCEPT\nCOMMIT\n*filter\n-A INPUT -j NOPE\nCOMMIT\n", t, test=True)
    assert save(t, counters=True, header=False) == before      # --test parses only: no chain is looked up


@pytest.mark.parametrize("text, rc, first_line", [
    ("*filter\n-A INPUT -p tcp\n", 1, "iptables-restore: COMMIT expected at line 3"),
    ("*nosuch\nCOMMIT\n", 2, "iptables-restore v1.8.9 (nf_tables): iptables-restore: line 1 table name 'nosuch' invalid"),
    ("garbage\n", 1, "iptables-restore: line 1 failed"),
    ("*filter\n:INPUT BOGUS [0:0]\nCOMMIT\n", 1, "iptables-restore: line 2 failed: Bad policy name."),
    ("*filter\n-A NOCHAIN -j ACCEPT\nCOMMIT\n", 1,
     "iptables-restore: line 2 failed: No chain/target/match by that name."),
    ("*filter\n-A INPUT -j ACCEPT extra\nCOMMIT\n", 2, "Bad argument `extra'"),
    ("*filter\n-A INPUT -s 1.2.3.400\nCOMMIT\n", 2, "iptables-restore v1.8.9 (nf_tables): host/network `1.2.3.400' not found"),
    ("*filter\n-A INPUT --foo\nCOMMIT\n", 2, "iptables-restore v1.8.9 (nf_tables): unknown option \"--foo\""),
    ("*filter\n-A INPUT -m nosuch\nCOMMIT\n", 2,
     "iptables-restore v1.8.9 (nf_tables): Couldn't load match `nosuch':No such file or directory"),
    ("*filter\n-A INPUT -o eth0\nCOMMIT\n", 2, "iptables-restore v1.8.9 (nf_tables): Can't use -o with INPUT"),
])
def test_restore_errors_name_the_line_like_the_real_tool(text, rc, first_line):
    s = loaded()
    before = save(s, header=False)
    with pytest.raises(RestoreError) as err:
        restore(text, s)
    assert err.value.rc == rc
    assert str(err.value).splitlines()[0] == first_line
    assert save(s, header=False) == before


def test_noflush_keeps_other_chains_and_flushes_declared_user_chains():
    s = loaded()
    restore("*filter\n:ABC - [0:0]\n-A ABC -p icmp\n:NEW - [0:0]\nCOMMIT\n", s, noflush=True)
    text = save(s, header=False)
    assert "-A AAA -s 1.2.3.0/24" in text and "-A ABC -p icmp" in text and ":NEW - [0:0]" in text
    assert "-A ABC -p sctp" not in text


def test_without_noflush_the_table_is_replaced():
    s = loaded()
    restore("*filter\n-A INPUT -p icmp\nCOMMIT\n", s)
    assert save(s, header=False).splitlines()[-2:] == ["-A INPUT -p icmp", "COMMIT"]
    assert ":AAA" not in save(s, header=False)


def test_test_mode_checks_without_applying():
    s = IptablesState(4)
    restore("*filter\n-A INPUT -j ACCEPT\nCOMMIT\n", s, test=True)
    assert s.tables == {}


def test_commands_edit_chains_like_the_tool():
    s = loaded()
    assert run_iptables(["-A", "AAA", "-s", "1.1.1.1,2.2.2.2", "-j", "ACCEPT"], s)[0] == 0
    assert run_iptables(["-I", "AAA", "1", "-p", "udp"], s)[0] == 0
    assert run_iptables(["-D", "AAA", "-s", "1.1.1.1", "-j", "ACCEPT"], s)[0] == 0
    assert run_iptables(["-R", "AAA", "2", "-p", "icmp"], s)[0] == 0
    assert run_iptables(["-S", "AAA"], s)[1].splitlines() == [
        "-N AAA", "-A AAA -p udp", "-A AAA -p icmp", "-A AAA -s 2.2.2.2/32 -j ACCEPT"]
    assert run_iptables(["-C", "AAA", "-p", "udp"], s)[0] == 0
    assert run_iptables(["-E", "AAA", "BBB"], s)[0] == 0
    assert "-A INPUT -i lo ! -f -j BBB" in save(s, header=False)
    assert run_iptables(["-P", "INPUT", "ACCEPT"], s)[0] == 0
    assert ":INPUT ACCEPT" in save(s, header=False)


@pytest.mark.parametrize("argv, rc, err", [
    (["-X", "AAA"], 4, "iptables v1.8.9 (nf_tables):  CHAIN_DEL failed (Device or resource busy): chain AAA\n"),
    (["-D", "INPUT", "9"], 1, "iptables: Index of deletion too big.\n"),
    (["-I", "INPUT", "9", "-j", "ACCEPT"], 1, "iptables: Index of insertion too big.\n"),
    (["-A", "NOPE", "-j", "ACCEPT"], 1, "iptables: No chain/target/match by that name.\n"),
    (["-N", "AAA"], 1, "iptables: Chain already exists.\n"),
    (["-C", "INPUT", "-j", "ACCEPT"], 1, "iptables: Bad rule (does a matching rule exist in that chain?).\n"),
    (["-P", "AAA", "DROP"], 1, "iptables: Bad built-in chain name.\n"),
    (["-P", "INPUT", "BOGUS"], 1, "iptables: Bad policy name. Run `dmesg' for more information.\n"),
    (["-E", "AAA", "ABC"], 1, "iptables: File exists.\n"),
    (["--bogus"], 2, "iptables v1.8.9 (nf_tables): unknown option \"--bogus\"\n"
                     "Try `iptables -h' or 'iptables --help' for more information.\n"),
    (["-A", "INPUT", "-D", "INPUT"], 2, "iptables v1.8.9 (nf_tables): Cannot use -D with -A\n"
                                        "Try `iptables -h' or 'iptables --help' for more information.\n"),
    (["-N", "-foo"], 2, "iptables v1.8.9 (nf_tables): chain name not allowed to start with `-'\n"
                        "Try `iptables -h' or 'iptables --help' for more information.\n"),
    (["-A", "INPUT", "-s", "1.2.3.4/33"], 2, "iptables v1.8.9 (nf_tables): invalid mask `33' specified\n"
                                             "Try `iptables -h' or 'iptables --help' for more information.\n"),
])
def test_command_errors_match_the_real_tool_and_change_nothing(argv, rc, err):
    s = loaded()
    before = save(s, header=False)
    assert run_iptables(argv, s) == (rc, "", err)
    assert save(s, header=False) == before


def test_listing_columns():
    s = loaded()
    out = run_iptables(["-L", "INPUT", "-n", "-v", "--line-numbers"], s)[1].splitlines()
    assert out[0] == "Chain INPUT (policy DROP 0 packets, 0 bytes)"
    assert out[1] == ("num   pkts bytes target     prot opt in     out     source               "
                      "destination         ")
    assert out[2] == ("1        0     0 ABC        0    -f  *      *       0.0.0.0/0            "
                      "0.0.0.0/0           [goto] ")
    assert out[4] == ("3        0     0           !6    --  *      *       0.0.0.0/0            "
                      "0.0.0.0/0           ")


def test_counts_scale_with_suffixes_unless_exact():
    from kproxy.iptables.listing import format_count

    assert format_count(99999, False) == "99999 "
    assert format_count(100000, False) == " 100K "
    assert format_count(123456789, False) == " 123M "
    assert format_count(123456789, True) == "123456789 "


def test_tokenizer_groups_double_quotes_only():
    assert tokenize('-A X -m comment --comment "a \\"b\\" c" -j Y') == [
        "-A", "X", "-m", "comment", "--comment", 'a "b" c', "-j", "Y"]
    assert tokenize("-m comment --comment 'q r'") == ["-m", "comment", "--comment", "'q", "r'"]


def test_a_failed_restore_that_flushed_every_chain_leaves_the_rules_as_they_were():
    state = loaded()
    before = save(state)
    with pytest.raises(RestoreError):
        restore("*filter\n-F\n-A NOSUCH -j ACCEPT\nCOMMIT\n", state, noflush=True)
    assert save(state) == before
    rc, _, err = run_iptables(["-F"], state)
    assert rc == 0 and "-A INPUT" not in save(state) and ":AAA - [0:0]" in save(state)
