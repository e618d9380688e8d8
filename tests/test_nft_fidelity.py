"""nft 1.0.6 fidelity found on realistic rulesets (issue 12): command sequences in
``tests/data/nft/fidelity/*.cmds`` run step by step against the real nft in a kp- namespace, and the
same cases' outputs (recorded from nft 1.0.6) checked without a kernel."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from kproxy.lab.netns import Netns
from kproxy.nftables.cli import run_nft
from kproxy.nftables.model import Ruleset

DATA = Path(__file__).parent / "data" / "nft" / "fidelity"
SEQUENCES = sorted(p.name for p in DATA.glob("*.cmds"))


def steps(name: str) -> list[list[str]]:
    return [[a.replace("tests/data/nft/fidelity/", f"{DATA}/") for a in shlex.split(ln)]
            for ln in (DATA / name).read_text().splitlines() if ln.strip() and ln[0] != "#"]


def run_steps(cmds: list[list[str]]) -> list[tuple[int, str, str]]:
    rs = Ruleset()
    out = []
    for argv in cmds:
        rc, o, e, rs = run_nft(argv, rs, interfaces={"lo"})
        out.append((rc, o, e))
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("name", SEQUENCES)
def test_sequence_like_nft(name: str) -> None:
    from tests.test_nft_compat import require_nft

    require_nft()
    ns = Netns.create("fid")
    rs = Ruleset()
    try:
        for argv in steps(name):
            real = ns.run(["nft", *argv], check=False)
            rc, out, err, rs = run_nft(argv, rs, interfaces={"lo"})
            assert (rc, out, err) == (real.returncode, real.stdout, real.stderr), shlex.join(argv)
    finally:
        ns.delete()


def test_numeric_time_and_booleans() -> None:
    res = run_steps(steps("numeric_time.cmds"))
    assert all(rc == 0 for rc, _, _ in res)
    assert "\t\ttimeout 10800s\n" in res[-5][1]
    assert res[-4][1] == res[-3][1]          # -nn and -nnn are -n: nft sets every numeric flag at once
    assert "update @s2 { ip saddr timeout 90s }" in res[-4][1]
    assert "fib daddr oif 1 accept" in res[-4][1] and "fib daddr oif 0 accept" in res[-4][1]
    assert "\t\ttimeout 3h\n" in res[-2][1]
    assert "update @s2 { ip saddr timeout 1m30s }" in res[-1][1] and "oif missing accept" in res[-1][1]


def test_bitwise_runs_fold_as_the_kernel_holds_them() -> None:
    res = run_steps(steps("bitwise.cmds"))
    assert all(rc == 0 for rc, _, _ in res)
    listing = res[-2][1]
    for line in ("meta mark set meta mark & 0xffff0002 | 0x00000002", "meta mark set meta mark | 0x00000010",
                 "meta mark set meta mark ^ 0x00004000", "meta mark set meta mark & 0x0000ff00 ^ 0x00000300",
                 "meta mark set meta mark & 0x000000f3 | 0x00000003", "ct mark set ct mark\n",
                 "meta mark & 0x0000ff01 | 0x00000001 == 0x00000101 accept",
                 "ct mark & 0x000000ff != 0x0000000c accept"):
        assert line in listing, line



def test_misspell_distance_is_nfts_own() -> None:
    """misspell.c's distance, quirks included (checked against nft 1.0.6's suggestions in
    did_you_mean.cmds): one-letter names are near 'input', a name never matches itself at length 1."""
    from kproxy.nftables.misspell import nearest, string_distance

    assert string_distance("input", "i") == 2 and string_distance("input", "c") == 2
    assert string_distance("input", "inptu") == 1 and string_distance("input", "input") == 0
    assert string_distance("input", "xyz") == 4
    assert nearest("c", [("c", 1)]) is None
    assert nearest("c", [("input", 1), ("cx", 2)]) == 2
    assert nearest("xyz", [("input", 1), ("forward", 2)]) is None


def test_did_you_mean_messages() -> None:
    res = dict(zip((" ".join(a) for a in steps("did_you_mean.cmds")), run_steps(steps("did_you_mean.cmds"))))
    hint = "Error: No such file or directory; did you mean "
    assert res["add rule ip filter inptu accept"][2].startswith(hint + "chain \u2018input\u2019 in table ip \u2018filter\u2019?")
    assert res["add rule inet other i accept"][2].startswith(hint + "chain \u2018input\u2019 in table ip \u2018filter\u2019?")
    assert res["add rule ip filtr input accept"][2].startswith(hint + "table \u2018filter\u2019 in family ip?")
    assert res["delete counter ip filter cnt2"][2].startswith(hint + "obj \u2018cnt\u2019 in table ip \u2018filter\u2019?")
    assert res["add rule ip filter input tcp dport vmap @portz"][2] == (
        hint + "map \u2018ports\u2019 in table ip \u2018filter\u2019?\n"
        "add rule ip filter input tcp dport vmap @portz\n" + " " * 40 + "^" * 6 + "\n")
    # the rule's own chain is what nft looks up: a missing jump target from 'input' gets no hint,
    assert res["add rule ip filter input jump zzzzzzzzz"][2].startswith(
        "Error: Could not process rule: No such file or directory\n")
    # while from chain 'c' (too short to match itself) the nearest other chain is named
    assert res["add rule ip b c jump nosuch"][2].startswith(hint + "chain \u2018cy\u2019 in table ip \u2018b\u2019?")
    # nothing near: evaluation says plain ENOENT, the kernel's path 'Could not process rule'
    assert res["add element ip filter zzzzzz { 1.2.3.4 }"][2].startswith("Error: No such file or directory\n")
    assert res["delete chain ip filter zzzzz"][2].startswith("Error: Could not process rule: No such file or directory\n")


def test_log_flags() -> None:
    res = run_steps(steps("log_flags.cmds"))
    listing, js = res[-4][1], res[-3][1]
    for line in ("\t\tlog flags tcp sequence,options\n", "\t\tlog prefix \"x\" flags ip options\n",
                 "\t\tlog flags all\n", "\t\tlog level debug flags skuid\n", "\t\tlog flags tcp options flags ether\n",
                 "counter packets 0 bytes 0 log prefix \"[fw in] \" flags tcp sequence,options\n"):
        assert line in listing, line
    assert listing.count("log flags all") == 2          # every flag one by one is 'all'
    assert '{"log": {"flags": "all"}}' in js and '{"log": {"flags": ["tcp sequence", "tcp options"]}}' in js
    assert res[-2][2].startswith("Error: syntax error, unexpected string, expecting seq or options\n")


def test_dscp_and_ecn_symbols() -> None:
    res = run_steps(steps("dscp_ecn.cmds"))
    text, numeric = res[12][1], res[13][1]
    assert "ip dscp { cs0, 0x05, af41, ef } accept" in text and "ip dscp set af21" in text
    assert "ip6 dscp ef counter" in text and "ip6 dscp != cs0 drop" in text and "ip ecn ce drop" in text
    assert "ip dscp { 0x00, 0x05, 0x22, 0x2e } accept" in numeric and "ip ecn 0x3 drop" in numeric
    assert res[-2][2].startswith("Error: Could not parse Differentiated Services Code Point\n")
    assert res[-1][2].startswith("Error: Value 64 exceeds valid range 0-63\n")


def test_byte_units() -> None:
    res = dict(zip((" ".join(a) for a in steps("byte_units.cmds")), run_steps(steps("byte_units.cmds"))))
    assert res["add rule ip t c quota 5 gbytes"][2] == (
        "Error: Wrong rate format\nadd rule ip t c quota 5 gbytes\n" + " " * 16 + "^" * 14 + "\n")
    assert res["add rule ip t c quota 5 mbytes used 1 gbytes"][2].endswith(" " * 31 + "^" * 13 + "\n")
    assert res["add quota ip t q { 5 gbytes ; }"][2].endswith(" " * 17 + "^" * 10 + "\n")
    listing = dict(zip((" ".join(a) for a in steps("unit_listing.cmds")), run_steps(steps("unit_listing.cmds"))))
    text = listing["list ruleset"][1]
    assert "\t\tquota 1 mbytes\n" in text and "limit rate 2 kbytes/second burst 1 mbytes" in text
    assert listing["add rule ip t c quota 1048576 bytes used 2048 kbytes"][0] == 1
    assert '{"limit": {"rate": 1, "burst": 0, "per": "second", "rate_unit": "mbytes", "burst_unit": "bytes"}}' \
        in listing["-j list ruleset"][1]


def test_a_set_name_ends_at_a_colon() -> None:
    """nft refuses 'set a:b' (its scanner ends the name at the colon): the first of its errors."""
    rc, _, err = run_steps([["add", "table", "ip", "t"], ["add", "set", "ip", "t", "x:y", "{", "type", "ipv4_addr", ";", "}"]])[1]
    assert rc == 1
    assert err.startswith("Error: syntax error, unexpected colon, expecting '{'\nadd set ip t x:y { type ipv4_addr ; }\n"
                          + " " * 14 + "^\n")
    rc, _, err = run_steps([["-f", str(Path(__file__).parent / "data" / "nft" / "fidelity" / "scripts" / "colon_set.nft")]])[0]
    assert rc == 1 and ":2:22-22: Error: syntax error, unexpected colon, expecting '{'\n" in err


def test_classid() -> None:
    res = run_steps(steps("classid.cmds"))
    text = res[8][1]
    for line in ("meta priority set 1:4", "meta priority none", "meta priority set root", "meta priority 1:a accept",
                 "meta priority { 1:10, 2:20 } accept", "meta priority 1:4\n"):
        assert line in text, line
    assert '"value": "1:4"' in res[10][1]
    assert "elements = { 1:1, root }" in res[-1][1]


def test_ct_expiration_is_a_time() -> None:
    res = run_steps(steps("ct_expiration.cmds"))
    assert all(rc == 0 for rc, _, _ in res)
    text, numeric, js = res[-3][1], res[-2][1], res[-1][1]
    assert "ct expiration 1m30s accept" in text and "ct expiration < 1m drop" in text
    assert "ct expiration 1h2m3s500ms\n" in text and "ct expiration 45s\n" in text
    assert "ct expiration 90s accept" in numeric and "ct expiration 3723s\n" in numeric
    assert '"right": 90}' in js


def test_update_makes_only_a_new_set_dynamic() -> None:
    res = run_steps(steps("dynamic_flag.cmds"))
    assert all(rc == 0 for rc, _, _ in res)
    assert "flags dynamic" not in res[6][1] and "size 65535" in res[6][1]
    assert "flags dynamic,timeout" in res[-2][1]


def test_default_rejects_and_icmp_dependencies() -> None:
    res = run_steps(steps("reject.cmds"))
    assert all(rc == 0 for rc, _, _ in res)
    text = res[-2][1]
    assert text.count("\t\treject\n") == 6
    inet = text.split("table inet ti")[1]
    assert inet.count("\t\treject with icmpv6 port-unreachable\n") == 2
    assert "\t\ttcp dport 22 reject with icmp host-unreachable\n" in inet
    assert "meta nfproto ipv4 counter packets 0 bytes 0 reject" in text      # a counter in between keeps it
    assert '{"reject": {"type": "icmp", "expr": "port-unreachable"}}' in res[-1][1]


def test_flag_masks_and_auto_merge() -> None:
    rc, _, _, rs = run_nft(["-f", str(DATA.parent / "flag_masks.nft")], Ruleset(), interfaces={"lo"})
    assert rc == 0
    text = run_nft(["list", "ruleset"], rs)[1]
    assert "\t\ttcp flags fin,syn / fin,syn drop\n" in text and "\t\ticmp type echo-request accept\n" in text
    assert "\t\tflags interval\n\t\tauto-merge\n" in text
    js = run_nft(["-j", "list", "ruleset"], rs)[1]
    rc, _, err, back = run_nft(["-j", "-f", "-"], Ruleset(), js, {"lo"})      # the JSON dump reloads
    assert rc == 0, err
    assert "tcp flags syn / syn,rst tcp option maxseg size set 1452" in run_nft(["list", "ruleset"], back)[1]


def test_mangled_rulesets_fail_as_nft_does() -> None:
    """Mangled copies of the corpora (tests/data/nft/errors/mangled_*.nft, kernel-compared in
    test_nft_compat): the first error is nft's, with its hint where nft gives one."""
    errors = DATA.parent / "errors"

    def first_error(name: str) -> str:
        rc, _, err, _ = run_nft(["-f", str(errors / name)], Ruleset(), interfaces={"lo"})
        assert rc == 1
        return err.splitlines()[0].split(": Error: ", 1)[1]

    assert first_error("mangled_undefined_variable.nft") == \
        "unknown identifier 'printr'; did you mean identifier \u2018printer\u2019?"
    assert first_error("mangled_bad_policy.nft") == "syntax error, unexpected string, expecting accept or drop or '$'"
    assert first_error("mangled_value_out_of_range.nft") == "Value 256 exceeds valid range 0-255"
    assert first_error("mangled_bad_rate_unit.nft") == "syntax error, unexpected string"
    assert first_error("mangled_misspelt_map.nft").endswith("did you mean map \u2018peer_marks\u2019 in table inet \u2018vpn\u2019?")


def test_a_field_typo_is_blamed_on_the_field() -> None:
    res = run_steps(steps("field_typos.cmds"))
    assert res[2][2] == ("Error: syntax error, unexpected string\nadd rule inet t c tcp dprot 22 accept\n"
                         + " " * 22 + "^" * 5 + "\n")
    assert res[3][2].startswith("Error: syntax error, unexpected string, expecting length or checksum or sport or dport\n")
    assert res[7][0] == 0


def test_ct_helper_objects() -> None:
    """``ct helper`` objects (issue 12): declared, referenced by ``ct helper set`` (a string or a map),
    listed, busy while used, and refused when missing, as nft 1.0.6 does."""
    cmds = steps("ct_helper.cmds")
    res = dict(zip([shlex.join(a) for a in cmds], run_steps(cmds)))
    missing = res['add rule inet f c ct helper set \'"nope"\'']
    assert missing[0] == 1 and "Could not process rule: No such file or directory" in missing[2]
    listed = res["-a list ruleset"][1]
    assert '\tct helper ftp-standard { # handle 1\n\t\ttype "ftp" protocol tcp\n\t\tl3proto inet\n\t}\n' in listed
    assert 'ct helper set tcp dport map { 21 : "ftp-standard", 2121 : "h2" } # handle 7' in listed
    assert res["list ct helpers"][2].startswith("Error: syntax error, unexpected newline, expecting table\n")
    busy = res["delete ct helper inet f h2"]      # used only through the map
    assert busy[0] == 1 and "Device or resource busy" in busy[2]
    assert '{"ct helper": {"family": "inet", "name": "h2", "table": "f", "handle": 2, "type": "ftp", ' \
        '"protocol": "tcp", "l3proto": "inet"}}' in res["-j list ct helper inet f h2"][1]
    assert "expecting udp or tcp" in res["add ct helper inet g bad2 '{' type '\"ftp\"' protocol sctp ';' '}'"][2]
    assert '{"ct helper": "ftp1"}' in res["-j list table ip j"][1]


def test_realm_and_devgroup_symbols() -> None:
    """rt classid and meta rtclassid are realms, iifgroup/oifgroup devgroups (named by /etc/iproute2's
    tables, quoted when listed); a realm is a string in JSON even as a number, as nft 1.0.6 prints it."""
    cmds = steps("rt_meta_symbols.cmds")
    res = dict(zip([shlex.join(a) for a in cmds], run_steps(cmds)))
    assert res["add rule ip t c rt classid foo accept"][2].startswith("Error: Could not parse routing realm\n")
    assert res["add rule ip t c meta oifgroup bogus accept"][2].startswith("Error: Could not parse devgroup name\n")
    assert res["add rule ip t c meta mark set rt classid"][2] == (
        "Error: datatype mismatch: expected packet mark, expression has type routing realm\n"
        "add rule ip t c meta mark set rt classid\n" + " " * 16 + "~" * 14 + "^" * 10 + "\n")
    assert res["add rule ip t c meta mark set meta cpu"][0] == 0        # an integer fits any type
    js = res["-j list ruleset"][1]
    assert '"left": {"rt": {"key": "classid"}}, "right": "5"}' in js
    assert '"left": {"meta": {"key": "oifgroup"}}, "right": {"set": ["default", 2]}}' in js
    assert '{"rt": {"key": "nexthop", "family": "ip"}}' in js
    text = res["list ruleset"][1]
    assert "\t\trt classid { \"cosmos\", 7 } accept\n" in text and "\t\trt ipsec exists accept\n" in text
    assert "\t\trt ip6 nexthop ::1 accept\n" in text
    assert "\t\toifgroup { 0, 2 } accept\n" in res["-n list ruleset"][1]


def test_frag_off_mask_lists_raw() -> None:
    res = run_steps(steps("frag_off_mask.cmds"))
    text, js = res[-3][1], res[-2][1]
    assert ("\t\t(frag unknown & 0xfff8 [invalid type]) >> 3 & 0x7 [invalid type] != 0x0 [invalid type] accept\n"
            in text)
    assert "\t\tfrag frag-off 0 accept\n" in text
    assert '"right": "0x1 [invalid type]"' in js


def test_delete_by_handle() -> None:
    cmds = steps("delete_by_handle.cmds")
    res = dict(zip([shlex.join(a) for a in cmds], run_steps(cmds)))
    assert res["delete counter ip t handle 2"][0] == 0 and res["delete chain ip t handle 8"][0] == 0
    assert res["delete counter ip t handle 99"][2].endswith(" " * 27 + "^^\n")
    assert res["delete map ip t handle 7"][2].startswith("Error: syntax error, unexpected handle, expecting string\n")
    assert res["delete ct helper ip t handle 99"][2].startswith("Error: syntax error, unexpected handle, expecting string\n")
    busy = [r for a, r in zip(cmds, run_steps(cmds)) if shlex.join(a) == "delete set ip u handle 1"][0]
    assert busy[2].startswith("Error: Could not process rule: Device or resource busy\n")      # a rule uses it
    assert res["destroy table ip t"][2].startswith("Error: syntax error, unexpected table, expecting string\n")
    assert res["t c accept"][0] == 0            # nft's implicit add rule
    assert "delete rule ip t c handle 99" in res
    assert res["delete rule ip t c handle 99"][2].startswith(
        "Error: No such file or directory; did you mean chain \u2018c2\u2019 in table ip \u2018t\u2019?\n")


def test_ct_helper_is_no_map_type_in_1_0_6() -> None:
    """nft 1.0.6 has no ``type X : ct helper`` (a syntax error, then the set without a key, reported
    together); ``typeof ... : ct helper`` is a map of strings, which ``ct helper set`` cannot use."""
    cmds = steps("ct_helper_maps.cmds")
    res = dict(zip([shlex.join(a) for a in cmds], run_steps(cmds)))
    line = "add map ip t m { type ipv4_addr : ct helper ; }"
    assert res[shlex.join(shlex.split(line))][2] == (
        f"Error: syntax error, unexpected ct\n{line}\n" + " " * 34 + "^^\n"
        f"Error: set definition does not specify key\n{line}\n" + " " * 15 + "^" * 30 + "\n")
    assert "\tmap m { # handle 2\n\t\ttypeof ip saddr : ct helper\n\t}\n" in res["-a list ruleset"][1]
    assert '"map": "string"' in res["-j list ruleset"][1] and '"map": "secmark"' in res["-j list ruleset"][1]
    assert res["add rule ip t c ct helper set ip saddr map @m"][2].startswith(
        "Error: Expression is not a map with objects\n")
    assert res["add rule ip t c ct helper set ip saddr"][2].startswith(
        "Error: datatype mismatch: expected string, expression has type IPv4 address\n")
    assert res[shlex.join(shlex.split("add map ip t m { type ipv4_addr : counter ; }"))][2].startswith(
        "Error: Could not process rule: File exists\n")      # declared again with other types


def test_syntax_errors_recover_at_the_next_separator() -> None:
    cmds = steps("syntax_recovery.cmds")
    res = dict(zip([shlex.join(a) for a in cmds], run_steps(cmds)))
    two = next(v for k, v in res.items() if k.endswith("two_bad_rules.nft"))[2]
    # every syntax error first, then what evaluation found, in the script's order
    assert [ln.split(": Error: ")[1] for ln in two.splitlines() if ": Error: " in ln] == [
        "syntax error, unexpected newline", "No symbol type information",
        "Statement after terminal statement has no effect"]
    assert res["add rule ip t c tcp dport 22 accept ,"][2].startswith(
        "Error: syntax error, unexpected comma, expecting end of file or newline or semicolon\n")
    assert res[shlex.join(shlex.split("add table ip u { chain c { accept , ; } ; }"))][2].startswith(
        "Error: syntax error, unexpected comma, expecting newline or semicolon\n")
    assert res["add rule ip t c tcp dport 22 acept"][2].startswith("Error: syntax error, unexpected newline\n")
    assert res["add rule ip t c reject counter"][2].endswith(" " * 16 + "~~~~~~ ^^^^^^^\n")
    eof = res[shlex.join(shlex.split("add map ip t m { type ipv4_addr : ct helper }"))][2]
    assert eof.endswith("Error: syntax error, unexpected end of file\nadd map ip t m { type ipv4_addr : ct helper }\n^\n")
    assert res["add rule ip t c @"][2].startswith(
        "Error: syntax error, unexpected newline, expecting string or ll or nh or th\n")


def test_admin_sessions() -> None:
    """Realistic sessions (kernel-compared in test_sequence_like_nft); a few of the differences they found."""
    cmds = steps("admin_session.cmds")
    res = dict(zip([shlex.join(a) for a in cmds], run_steps(cmds)))
    assert res[shlex.join(shlex.split("create element inet fw admins { 192.168.1.5 }"))][2].endswith(
        " " * 32 + "^" * 11 + "\n")
    assert res["add rule inet fw input tcp dport @admins accept"][2] == (
        "Error: datatype mismatch, expected internet network service, expression has type IPv4 address\n"
        "add rule inet fw input tcp dport @admins accept\n" + " " * 23 + "~" * 9 + " " + "^" * 7 + "\n")
    assert res[shlex.join(shlex.split("add element inet fw blocked { 2001:db8::1 }"))][2].startswith(
        "Error: Could not resolve hostname: Address family for hostname not supported\n")
    changed = res[shlex.join(shlex.split("add chain inet fw input { type filter hook input priority 10 ; }"))]
    assert changed[2].startswith("Error: Could not process rule: Operation not supported\n")
    nat = steps("admin_nat_session.cmds")
    out = dict(zip([shlex.join(a) for a in nat], run_steps(nat)))
    assert out["list map ip nat fwd"][2].startswith("Error: syntax error, unexpected fwd, expecting string\n")


def test_common_mistakes() -> None:
    cmds = steps("common_mistakes.cmds")
    res = dict(zip([shlex.join(a) for a in cmds], run_steps(cmds)))
    first = {k: v[2].split("\n", 1)[0] for k, v in res.items()}
    assert first["add rule ip t c limit rate 10"] == "Error: syntax error, unexpected newline, expecting / or string or bytes"
    assert first["add rule ip t c reject with"] == (
        "Error: syntax error, unexpected newline, expecting icmp or icmpv6 or tcp or icmpx")
    assert first["add rule ip t c accept comment"].endswith(
        "expecting string or quoted string or string with a trailing asterisk")
    assert first[shlex.join(shlex.split("add rule ip t c tcp dport { 22 80 }"))] == (
        "Error: syntax error, unexpected number, expecting comma or '}'")
    assert res[shlex.join(shlex.split("add rule ip t c tcp dport { 22, 80"))][2].endswith("\n^\n")      # the input's end, past the newline
    assert first["delete rule ip t c handle abc"] == "Error: syntax error, unexpected string, expecting number"
    assert first["list ruleset ip extra"] == (
        "Error: syntax error, unexpected string, expecting end of file or newline or semicolon")
    assert first["add rule ip t c iif eth0 accept"] == "Error: Interface does not exist"
    assert first["add rule ip t c log level foo"] == "Error: invalid log level"


def test_web_session() -> None:
    cmds = steps("web_session.cmds")
    res = dict(zip([shlex.join(a) for a in cmds], run_steps(cmds)))
    k = lambda line: shlex.join(shlex.split(line))     # noqa: E731
    assert res["delete chain inet web allow"][2].startswith(
        "Error: Could not process rule: Device or resource busy\n")     # held by the verdict map's elements
    assert "elements = { 22 : drop, 80 : jump permit, 443 : goto permit }" in res["list map inet web dispatch"][1]
    assert res[k("add element inet web svc { 10.0.0.5 . 85 }")][2].endswith(" " * 27 + "^" * 13 + "\n")
    assert res[k("get element inet web svc { 10.0.0.5 . 85 }")][1].endswith(
        "\t\telements = { 10.0.0.0/24 . 80-90 }\n\t}\n}\n")
    assert res[k("get element ip g r { 192.168.0.5, 10.9.9.9 }")][1].endswith(
        "\t\telements = { 192.168.0.1-192.168.0.9, 10.0.0.0/8 }\n\t}\n}\n")
    assert res[k("get element ip g s { 3.3.3.3 }")][2] == (
        "Error: Could not process rule: No such file or directory\nget element ip g s { 3.3.3.3 }\n" + "^" * 31 + "\n")
    first: dict[str, tuple[int, str, str]] = {}
    for a, r in zip(cmds, run_steps(cmds)):
        first.setdefault(shlex.join(a), r)
    assert first["list counters table inet web"][1] == ""        # no stateful object: not even the table
    assert res["list quotas"][1] == "table inet web {\n}\n"     # one of another kind: the table, empty
    assert res["list maps table inet web"][2].startswith(
        "Error: syntax error, unexpected table, expecting end of file or newline or semicolon\n")


def test_json_input_of_the_new_cases() -> None:
    res = run_steps(steps("json_handles.cmds"))
    assert res[0][2] == "internal:0:0-0: Error: Invalid map type 'ct helper'.\n\n" \
        "internal:0:0-0: Error: Parsing command array at index 2 failed.\n\n"
    assert '"type": "realm", "handle": 4, "map": "devgroup", "elem": [["cosmos", "default"], ["3", 4]]' in res[3][1]
    assert "json:1:4-4: Error: Object item not found: name\n" in res[5][2]      # a ct helper only by name
    assert res[5][2].endswith("internal:0:0-0: Error: Parsing command array at index 0 failed.\n\n")
    assert res[6][0] == 0 and "map mr" not in res[-1][1]         # a map deleted by handle
    assert res[-1][1] == "table ip t { # handle 1\n}\n"


def test_table_options() -> None:
    cmds = steps("options.cmds")
    res = dict(zip([shlex.join(a) for a in cmds], run_steps(cmds)))
    k = lambda line: shlex.join(shlex.split(line))     # noqa: E731
    assert res[k("add table inet x { flags foo ; }")][2].startswith("Error: unknown table option foo\n")
    assert res[k("add table inet x { flags dormant,foo ; }")][2].startswith(
        "Error: syntax error, unexpected comma, expecting newline or semicolon\n")
    assert res[k("add chain inet y h { type filter hook input priority 1+1 ; }")][2].startswith(
        "Error: syntax error, unexpected +, expecting newline or semicolon\n")
    assert "\tflags dormant\n" in res["-a list table inet x"][1]


def test_dnat_addr_port_form() -> None:
    res = run_steps(steps("nat_addr_port.cmds"))
    assert all(rc == 0 for rc, _, _ in res)
    assert res[-2][1].count("\t\tdnat ip to tcp dport map @fw\n") == 3


def test_a_range_with_no_upper_end() -> None:
    res = dict(zip([shlex.join(a) for a in steps("common_mistakes.cmds")], run_steps(steps("common_mistakes.cmds"))))
    assert res["add rule ip t c tcp dport 22- accept"][2].startswith("Error: syntax error, unexpected accept\n")
    assert res["add rule ip t c tcp dport 22-25 accept"][0] == 0
