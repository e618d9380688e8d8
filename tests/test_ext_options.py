"""The shared extension option parser (iptables/xtoptions.py) and the argv parser's use of the tables.

The unit tests build small tables of every value type and flag; the kernel tests hand the same
command lines to the real iptables 1.8.9 (in a kp- namespace) and compare status, output and rules.
"""

from __future__ import annotations

import pytest

from kproxy.iptables.commands import run_iptables
from kproxy.iptables.ext.connmark import ConnmarkMatch
from kproxy.iptables.ext.mark import MarkMatch
from kproxy.iptables.extension import MATCHES, TARGETS, ExtensionError, Opt
from kproxy.iptables.model import Net
from kproxy.iptables.parser import ParameterProblem, parse_command
from kproxy.iptables.save import format_rule
from kproxy.iptables.state import IptablesState
from kproxy.iptables.xtoptions import (
    CHOICE,
    CUSTOM,
    HOST,
    HOSTMASK,
    MARKMASK32,
    NONE,
    PORT,
    PORTRC,
    STRING,
    UINT8,
    UINT16,
    UINT16RC,
    UINT32,
    XTOPT_INVERT,
    XTOPT_MAND,
    XTOPT_MULTI,
    XtCall,
    XtOpt,
    XtOptions,
    two_args,
)

TABLE = XtOptions(
    "demo",
    XtOpt("none", NONE),
    XtOpt("u8", UINT8, XTOPT_INVERT),
    XtOpt("u16", UINT16, min=1),
    XtOpt("u32", UINT32, max=10000),
    XtOpt("rc", UINT16RC),
    XtOpt("text", STRING, min=1, max=5),
    XtOpt("cut", STRING, size=4),
    XtOpt("mark", MARKMASK32),
    XtOpt("port", PORT),
    XtOpt("ports", PORTRC),
    XtOpt("host", HOST),
    XtOpt("net", HOSTMASK),
    XtOpt("pick", CHOICE, choices=("ORIGINAL", "REPLY")),
    XtOpt("word", CHOICE, choices=("a", "b"), bad="Bad word '{value}'"),
    XtOpt("pair", CUSTOM, nvals=2, parse=two_args),
    XtOpt("fam", CUSTOM, parse=lambda call: (call.family, call.arg)),
    XtOpt("many", UINT8, XTOPT_MULTI),
    XtOpt("long-name", NONE), XtOpt("alias", NONE, id="long-name"),
)


def one(name: str, *values: str, invert: bool = False, family: int = 4) -> object:
    return TABLE.parse([Opt(name, list(values), invert)], family).get(TABLE.by_name[name].key)


def error(opts: list[Opt], table: XtOptions = TABLE, check: bool = False) -> str:
    with pytest.raises(ExtensionError) as exc:
        table.parse_all(opts) if check else table.parse(opts)
    return str(exc.value)


def test_each_value_type_parses_as_libxtables_does():
    assert one("none") is True
    assert one("u8", "0x10") == 16 and one("u16", "010") == 8 and one("u32", "10000") == 10000
    assert one("rc", "5") == (5, 5) and one("rc", "5:") == (5, 0xFFFF) and one("rc", ":7") == (0, 7)
    assert one("text", "abcde") == "abcde" and one("cut", "abcdef") == "abc"
    assert one("mark", "0x10/0xff") == (16, 255) and one("mark", "7") == (7, None)
    assert one("port", "80") == 80 and one("port", "70000") == 70000 & 0xFFFF and one("port", "http") == 80
    assert one("ports", "1:2") == (1, 2) and one("ports", ":") == (0, 0xFFFF) and one("ports", "9") == (9, 9)
    assert one("host", "24") == 24 and one("host", "10.1.2.3") == 0x0A010203 and one("host", "::2", family=6) == 2
    assert one("net", "10.1.2.3/255.255.0.0") == Net(4, 0x0A010000, 16)
    assert one("net", "10.1.2.3/33") == Net(4, 0x0A010203, 32) and one("net", "10.1.2.3") == Net(4, 0x0A010203, 32)
    assert one("net", "fd00::1/8", family=6) == Net(6, 0xFD << 120, 8)
    assert one("pick", "reply") == "REPLY" and one("word", "A") == "a"
    assert one("pair", "x", "y") == ["x", "y"]
    assert one("fam", "v", family=6) == (6, "v")


@pytest.mark.parametrize(("opt", "values", "message"), [
    ("u8", ["256"], 'demo: bad value for option "--u8", or out of range (0-255).\n'),
    ("u8", ["-1"], 'demo: bad value for option "--u8", or out of range (0-255).\n'),
    ("u16", ["0"], 'demo: bad value for option "--u16", or out of range (1-65535).\n'),
    ("u32", ["10001"], 'demo: bad value for option "--u32", or out of range (0-10000).\n'),
    ("rc", ["70000"], 'demo: bad value for option "--rc" near "70000", or out of range (0-65535).\n'),
    ("rc", ["1:2:3"], 'demo: Too many components for option "--rc" (max: 2)\n'),
    ("rc", ["1x"], 'demo: Argument to "--rc" has unexpected characters near "x".\n'),
    ("text", [""], "Argument must have a minimum length of 1 characters\n"),
    ("text", ["abcdef"], "Argument must have a maximum length of 5 characters\n"),
    ("mark", ["x"], 'demo: bad integer value for option "--mark", or out of range.\n'),
    ("mark", ["1/0x1ffffffff"], 'demo: bad integer value for option "--mark", or out of range.\n'),
    ("mark", ["1/2x"], 'demo: trailing garbage after value for option "--mark".\n'),
    ("port", ["0x50"], 'Port "0x50" does not resolve to anything.\n'),
    ("ports", ["1:2:3"], 'demo: Too many components for option "--ports" (max: 2)\n'),
    ("net", ["1.2.3.4/x"], 'demo: bad value for option "--net", neither a valid network mask nor valid CIDR (0-32).\n'),
    ("pick", ["sideways"], 'demo: Bad value for "--pick" option: "sideways"'),
    ("word", ["c"], "Bad word 'c'"),
    ("pair", ["x"], "--pair requires two args."),
    ("pair", ["x", "-y"], "--pair requires two args."),
])
def test_each_value_error_is_the_tools_message(opt, values, message):
    assert error([Opt(opt, values)]) == message


def test_flags_once_invert_multi_and_mandatory():
    assert error([Opt("u16", ["1"]), Opt("u16", ["2"])]) == 'demo: option "--u16" can only be used once.\n'
    assert error([Opt("u16", ["1"], True)]) == 'demo: option "--u16" cannot be inverted.\n'
    got = TABLE.parse([Opt("u8", ["1"], True), Opt("many", ["1"]), Opt("many", ["2"])])
    assert got.invert("u8") and not got.invert("many") and got.get("many") == 2 and got.order == ["u8", "many", "many"]
    mand = XtOptions("m", XtOpt("a", NONE), XtOpt("need", UINT8, XTOPT_MAND))
    assert error([Opt("a", [])], mand, check=True) == 'm: option "--need" must be specified\n'


def test_names_of_one_option_count_once_and_messages_name_the_first():
    assert error([Opt("alias", []), Opt("long-name", [])]) == 'demo: option "--long-name" can only be used once.\n'
    assert TABLE.parse([Opt("alias", [])]).seen() == {"long-name"}
    legacy = XtOptions("old", XtOpt("x", NONE), once="Only one `--{opt}' allowed")
    assert error([Opt("x", []), Opt("x", [])], legacy) == "Only one `--x' allowed"


def test_also_and_excl_are_checked_at_the_end_in_table_order():
    table = XtOptions("rel", XtOpt("a", NONE, excl=("c", "b")), XtOpt("b", NONE, also=("c",)), XtOpt("c", NONE))
    # the value errors of every option come before any relation is checked
    assert error([Opt("b", []), Opt("a", []), Opt("c", [])], table, check=True) == \
        'rel: option "--a" cannot be used together with "--b".\n'
    assert error([Opt("b", [])], table, check=True) == 'rel: option "--b" also requires "--c".\n'
    table.parse_all([Opt("b", []), Opt("c", [])])


def test_a_custom_parser_sees_the_option_family_and_rule():
    seen: list[XtCall] = []
    table = XtOptions("cus", XtOpt("v", CUSTOM, parse=lambda call: seen.append(call) or call.arg.upper()))
    rule = object()
    assert table.parse([Opt("v", ["x"])], 6, rule).get("v") == "X"
    assert (seen[0].ext, seen[0].opt, seen[0].family, seen[0].rule) == ("cus", "v", 6, rule)


def test_every_registered_extension_declares_a_table_with_its_options():
    for cls in [*MATCHES.values(), *TARGETS.values()]:
        table = cls.OPTIONS
        assert isinstance(table, XtOptions), cls
        for entry in table.entries:
            assert table.nvals[entry.name] == entry.count
            assert entry.type != CUSTOM or entry.parse is not None, (cls, entry.name)
            for other in (*entry.also, *entry.excl):
                assert other in table.first, (cls, entry.name, other)


def rule_of(*argv: str) -> str:
    c = parse_command(["-A", "INPUT", *argv])
    return format_rule("INPUT", c.rules[0])


def test_long_options_are_abbreviated_as_getopt_long_allows():
    assert rule_of("-p", "tcp", "--dpo", "80") == "-A INPUT -p tcp -m tcp --dport 80"
    assert rule_of("-p", "tcp", "--destination-p", "80") == "-A INPUT -p tcp -m tcp --dport 80"
    assert rule_of("-m", "statistic", "--mode", "random", "--prob", "0.5") == \
        "-A INPUT -m statistic --mode random --probability 0.50000000000"
    assert rule_of("-j", "MARK", "--set-m", "1") == "-A INPUT -j MARK --set-xmark 0x1/0xffffffff"
    # --sp is only --sport; an exact name wins over the longer names it begins (--mark, not --mark-...)
    assert rule_of("-p", "tcp", "--sp", "1") == "-A INPUT -p tcp -m tcp --sport 1"


@pytest.mark.parametrize("argv", [
    ["-m", "conntrack", "--ctst", "NEW"],                 # --ctstate or --ctstatus
    ["-m", "conntrack", "--ctorigs", "1.2.3.4"],          # --ctorigsrc or --ctorigsrcport
    ["-p", "tcp", "--d", "80"],                           # core --destination and --dport among others
    ["-m", "mark", "--mark", "1", "-m", "connmark", "--ma", "2"],     # the same prefix in two extensions
])
def test_ambiguous_abbreviations_are_unknown_options(argv):
    with pytest.raises(ParameterProblem) as exc:
        parse_command(["-A", "INPUT", *argv])
    assert str(exc.value) == f'unknown option "{next(a for a in reversed(argv) if a.startswith("--"))}"'


def test_an_option_goes_to_the_newest_extension_that_has_it():
    # loaded in this order: the target first, then recent, whose --mask it is
    assert rule_of("-j", "CONNMARK", "--save-mark", "-m", "recent", "--set", "--mask", "255.0.0.0") == \
        "-A INPUT -m recent --set --name DEFAULT --mask 255.0.0.0 --rsource " \
        "-j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff"
    assert rule_of("-m", "recent", "--set", "-j", "CONNMARK", "--save-mark", "--mask", "0xff").endswith(
        "-j CONNMARK --save-mark --nfmask 0xff --ctmask 0xff")
    assert rule_of("-m", "mark", "--mark", "1", "-m", "connmark", "--mark", "2") == \
        "-A INPUT -m mark --mark 0x1 -m connmark --mark 0x2"


def test_an_option_missing_its_value_or_its_second_value():
    with pytest.raises(ParameterProblem, match='option "--set-mark" requires an argument'):
        parse_command(["-A", "INPUT", "-j", "MARK", "--set-mark"])
    with pytest.raises(ParameterProblem, match="--match-set requires two args."):
        parse_command(["-A", "INPUT", "-m", "set", "--match-set", "foo"])


@pytest.mark.parametrize(("mark", "invert"), [(0x1, False), (0x1, True)])
def test_connmark_inline_form_agrees_with_its_test(mark, invert):
    from types import SimpleNamespace

    m = ConnmarkMatch(mark, 0xFF, invert)
    template, values = m.inline()
    test = eval("lambda p, c: " + template.format(*(f"k[{i}]" for i in range(len(values)))),  # noqa: S307
                {"k": values})
    for ct in (None, SimpleNamespace(mark=0x101), SimpleNamespace(mark=0x2)):
        pkt = SimpleNamespace(ct=ct, mark=0x1)
        assert bool(test(pkt, None)) == m.matches(pkt, None)  # type: ignore[arg-type]
    assert MarkMatch(mark, 0xFF, invert).inline()[0] != template


# Lines for the real tool: abbreviations, ambiguity, the generic messages, relations and values.
KERNEL_CASES = [
    ["-A", "INPUT", "-p", "tcp", "--dpo", "80"], ["-A", "INPUT", "-p", "tcp", "--d", "80"],
    ["-A", "INPUT", "-m", "conntrack", "--ctst", "NEW"], ["-A", "INPUT", "-m", "conntrack", "--ctorigs", "1.2.3.4"],
    ["-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW", "--ctdir", "sideways"],
    ["-A", "INPUT", "-m", "conntrack", "--ctorigsrcport", "0x50"],
    ["-A", "INPUT", "-m", "conntrack", "--ctorigsrc", "1.2.3.4/x"],
    ["-A", "INPUT", "-m", "conntrack", "--ctorigsrc", "1.2.3.4/33", "--ctrepldst", "10.1.0.0/255.255.0.0"],
    ["-A", "INPUT", "-m", "recent", "--set", "--mask", "24"],
    ["-A", "INPUT", "-m", "statistic", "--mode", "random", "--prob", "0.5"],
    ["-A", "INPUT", "-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "1", "--probability", "0.5"],
    ["-A", "INPUT", "-m", "mark", "--mark", "x"], ["-A", "INPUT", "-m", "mark"],
    ["-A", "INPUT", "-m", "mark", "--mark", "1", "--mark", "2"], ["-A", "INPUT", "-m", "comment", "!", "--comment", "x"],
    ["-A", "INPUT", "-m", "length", "--length", "70000"], ["-A", "INPUT", "-m", "limit", "--limit-burst", "10001"],
    ["-A", "INPUT", "-j", "MARK", "--set-m", "1"], ["-A", "INPUT", "-j", "MARK", "--set-mark"],
    ["-A", "INPUT", "-p", "udp", "--sport", "1", "--source-port", "2"],
    ["-A", "INPUT", "-p", "tcp", "--dport", "80", "--dport", "81"], ["-A", "INPUT", "-p", "tcp", "--syn", "--syn"],
    ["-A", "INPUT", "-p", "tcp", "-m", "multiport", "--sports", "1", "--dports", "2"],
    ["-A", "INPUT", "-m", "addrtype", "--src-type", "LOCAL", "--limit-iface-out", "--limit-iface-in"],
    ["-A", "INPUT", "-j", "CONNMARK", "--save-mark", "-m", "recent", "--set", "--mask", "255.0.0.0"],
    ["-A", "INPUT", "-m", "recent", "--set", "-j", "CONNMARK", "--save-mark", "--mask", "0xff"],
    ["-A", "INPUT", "-m", "mark", "--mark", "1", "-m", "connmark", "--mark", "2"],
    ["-A", "INPUT", "-m", "pkttype", "--pkt-type", "x"], ["-A", "INPUT", "-m", "statistic", "--mode", "x"],
    ["-A", "INPUT", "-j", "LOG", "--log-prefix", ""], ["-A", "INPUT", "-m", "comment", "--comment"],
    ["-S"],
]


@pytest.mark.kernel
def test_option_parsing_matches_the_real_tool(kernel_ns):
    state = IptablesState(4)
    for argv in KERNEL_CASES:
        theirs = kernel_ns.run(["iptables", *argv], check=False)
        assert run_iptables(argv, state) == (theirs.returncode, theirs.stdout, theirs.stderr), argv


XLATE_CASES = [
    "-p tcp --dport 80", "-p tcp --sport 80 --dport 1000:2000", "-p tcp ! --sport 80", "-p udp --dport 53",
    "-p sctp --dport 80", "-m mark --mark 0x1/0xff", "-m mark ! --mark 0x1", "-m mark ! --mark 0x1/0xff",
    "-m connmark --mark 0x1", "-m connmark ! --mark 0x1/0xff", "-m comment --comment hello",
    "-m conntrack --ctstate NEW,ESTABLISHED", "-m conntrack ! --ctstate NEW", "-m state ! --state INVALID",
    "-m state --state ESTABLISHED,RELATED,INVALID,UNTRACKED,NEW", "-j MARK --set-xmark 0x4000/0x4000",
    "-j MARK --set-mark 0x1", "-j MARK --set-mark 0", "-j MARK --and-mark 0xff", "-j MARK --xor-mark 0x3",
    "-j MARK --set-xmark 0x5/0x7", "-m mark --mark 0x2 -j MARK --or-mark 0x4",
]


def our_translation(argv: list[str]) -> str | None:
    """The rule's nft text as iptables-translate lays it out: matches, counter, target, then the comment."""
    from kproxy.iptables.translate import rule_text

    return rule_text(parse_command(["-A", "INPUT", *argv]).rules[0], 4)


@pytest.mark.parametrize("line", XLATE_CASES)
def test_translations_match_iptables_translate(line):
    import os
    import shlex
    import shutil
    import subprocess

    tool = shutil.which("iptables-translate") or "/usr/sbin/iptables-translate"
    if not os.path.exists(tool):
        pytest.skip("iptables-translate is not installed")
    argv = shlex.split(line)
    out = subprocess.run([tool, "-A", "INPUT", *argv], capture_output=True, text=True, check=True).stdout.strip()
    prefix = "nft 'add rule ip filter INPUT "
    assert out.startswith(prefix) and out.endswith("'")
    assert our_translation(argv) == out[len(prefix):-1]


def test_what_has_no_simple_translation_says_so():
    assert our_translation(["-m", "recent", "--set"]) is None
    assert our_translation(["-p", "icmp", "--icmp-type", "3/4"]) is None
    assert our_translation(["-j", "QUEUE"]) is None
