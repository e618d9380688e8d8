"""``kproxy nft -j`` (every list form, and JSON input with ``-j -f``), ``--echo`` and ``-c``, compared step by
step with nft 1.0.6 in a fresh kp- namespace; the checks that need no kernel run everywhere."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from tests.test_nft_compat import require_nft

from kproxy.lab.netns import Netns
from kproxy.nftables.cli import run_nft
from kproxy.nftables.json_input import JsonError, decode, script
from kproxy.nftables.model import Ruleset
from kproxy.nftables.store import ruleset_from_json, ruleset_to_json

DATA = Path(__file__).parent / "data" / "nft"
GENERATION = re.compile(r"# new generation \d+ by process \d+ \(nft\)")


def normalised(text: str) -> str:
    """The echo's generation number and process id differ between any two runs, and an element's time
    left (``expires``) depends on when the listing ran."""
    text = re.sub(r" expires [0-9hmsd]+", " expires T", text)
    return GENERATION.sub("# new generation N by process P (nft)", text)


def steps(name: str) -> list[tuple[list[str], str | None]]:
    """(argv, stdin) per line of a .cmds file; ``ARGS <<< TEXT`` gives TEXT as standard input."""
    out = []
    for line in (DATA / "json" / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        args, _, stdin = line.partition(" <<< ")
        argv = [a.replace("tests/data/", f"{DATA.parent}/") for a in shlex.split(args)]
        out.append((argv, stdin + "\n" if stdin else None))
    return out


SEQUENCES = sorted(p.name for p in (DATA / "json").glob("*.cmds"))


@pytest.mark.kernel
@pytest.mark.parametrize("name", SEQUENCES)
def test_sequence_like_nft(name: str) -> None:
    """Each file's steps (see its first line): every -j list form and -n, JSON input with its errors, the
    list/reset/flush/rename commands, --echo and -c, typeof and reset, rename chain."""
    run_like_nft(name)


def run_like_nft(name: str) -> None:
    """Each step in the real nft and in ours: stdout, stderr and exit status must be equal."""
    require_nft()
    ns = Netns.create("nftj")
    rs = Ruleset()
    try:
        for argv, stdin in steps(name):
            real = ns.run(["nft", *argv], input=stdin, check=False)
            rc, out, err, rs = run_nft(argv, rs, stdin, interfaces={"lo"})
            assert (rc, normalised(out), err) == (real.returncode, normalised(real.stdout), real.stderr), argv
    finally:
        ns.delete()





@pytest.mark.kernel
@pytest.mark.parametrize("name", [n for n in sorted(p.name for p in DATA.glob("*.nft"))
                                  # nft marks a JSON-made set dynamic when a rule of the same batch updates it
                                  if n != "vpn_gateway.nft"])
def test_json_listing_loads_back_like_nft(name: str, tmp_path: Path) -> None:
    """nft's own ``-j list ruleset`` output, loaded with ``-j -f`` into a fresh ruleset, lists the same."""
    require_nft()
    src, dst = Netns.create("nftj"), Netns.create("nftj")
    try:
        src.run(["nft", "-f", str(DATA / name)])
        dump = tmp_path / "dump.json"
        dump.write_text(src.run(["nft", "-j", "list", "ruleset"]).stdout)
        real = dst.run(["nft", "-j", "-f", str(dump)], check=False)
        rc, _, err, rs = run_nft(["-j", "-f", str(dump)], Ruleset(), interfaces={"lo"})
        assert (rc, err) == (real.returncode, real.stderr)
        for args in (["list", "ruleset"], ["-j", "list", "ruleset"]):
            assert run_nft(args, rs)[1] == dst.run(["nft", *args]).stdout, args
    finally:
        src.delete()
        dst.delete()


# ---- without a kernel ---------------------------------------------------------------------------
def load_json(doc: object, rs: Ruleset | None = None, *extra: str) -> tuple[int, str, str, Ruleset]:
    return run_nft([*extra, "-j", "-f", "-"], rs or Ruleset(), json.dumps(doc), interfaces={"lo"})


def cmd(*items: object) -> dict[str, object]:
    return {"nftables": list(items)}


TABLE = {"add": {"table": {"family": "inet", "name": "t"}}}
CHAIN = {"add": {"chain": {"family": "inet", "table": "t", "name": "c", "type": "filter", "hook": "input",
                           "prio": 0, "policy": "accept"}}}


def test_json_rules_list_as_their_text() -> None:
    rule = {"add": {"rule": {"family": "inet", "table": "t", "chain": "c", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                   "right": {"set": [22, {"range": [8000, 8080]}]}}},
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
        {"counter": None}, {"jump": {"target": "c2"}}]}}}
    rc, out, err, rs = load_json(cmd(TABLE, CHAIN, {"add": {"chain": {"family": "inet", "table": "t",
                                                                       "name": "c2"}}}, rule))
    assert (rc, err) == (0, "")
    listing = run_nft(["list", "chain", "inet", "t", "c"], rs)[1]
    assert "\t\ttcp dport { 22, 8000-8080 } ct state established,related counter packets 0 bytes 0 jump c2\n" \
        in listing
    # and the JSON listing reads back into the same ruleset
    again = load_json(json.loads(run_nft(["-j", "list", "ruleset"], rs)[1]))[3]
    assert run_nft(["list", "ruleset"], again)[1] == run_nft(["list", "ruleset"], rs)[1]


def test_json_shape_errors_name_the_missing_key_and_the_command() -> None:
    rc, out, err, rs = load_json(cmd(TABLE, {"add": {"chain": {"family": "inet", "name": "x"}}}))
    assert rc == 1 and rs.tables == []
    assert err == ("/dev/stdin:1:9-9: Error: Object item not found: table\n\n"
                   "internal:0:0-0: Error: Parsing command array at index 1 failed.\n\n")
    with pytest.raises(JsonError) as exc:
        script(decode('{"nftables": [{"add": {"rule": {"family": "ip", "table": "t", "chain": "c", '
                      '"expr": [{"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": 1}}, '
                      '{"frobnicate": null}]}}}]}') or [])
    assert [m for _, m in exc.value.msgs] == ["Unknown statement object 'frobnicate'.",
                                              "Parsing expr array at index 1 failed.",
                                              "Parsing command array at index 0 failed."]


def test_json_from_a_file_points_at_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"nftables": [{"add": {"table": {"name": "x"}}}]}\n')
    rc, _, err, _ = run_nft(["-j", "-f", str(path)], Ruleset())
    assert rc == 1
    assert err.startswith(f"{path}:1:4-4: Error: Object item not found: family\n"
                          '{"nftables": [{"add": {"table": {"name": "x"}}}]}\n   ^\n')


def test_text_given_to_json_mode_from_a_file_is_read_as_nft_script(tmp_path: Path) -> None:
    path = tmp_path / "rules.nft"
    path.write_text("add table ip z\n")
    assert run_nft(["-j", "-f", str(path)], Ruleset())[3].find("ip", "z") is not None
    # from standard input the JSON attempt consumed the text: nft then parses nothing and succeeds
    rc, _, _, rs = run_nft(["-j", "-f", "-"], Ruleset(), "add table ip z\n")
    assert rc == 0 and rs.tables == []


def test_a_failing_json_transaction_changes_nothing() -> None:
    rs = load_json(cmd(TABLE, CHAIN))[3]
    rc, _, err, after = load_json(cmd({"add": {"chain": {"family": "inet", "table": "t", "name": "d"}}},
                                      {"add": {"rule": {"family": "inet", "table": "t", "chain": "nosuch",
                                                        "expr": [{"accept": None}]}}}), rs)
    assert rc == 1 and err == "internal:0:0-0: Error: Could not process rule: No such file or directory\n\n"
    assert "d" not in after.find("inet", "t").chains  # type: ignore[union-attr]


def test_echo_prints_added_objects_with_handles_and_a_generation() -> None:
    rs = load_json(cmd(TABLE, CHAIN))[3]
    rc, out, _, rs = run_nft(["-e", "-a", "add", "rule", "inet", "t", "c", "udp", "dport", "53", "accept"], rs)
    lines = out.splitlines()
    assert lines[0] == "add rule inet t c udp dport 53 accept # handle 2"
    assert re.fullmatch(r"# new generation 2 by process \d+ \(nft\)", lines[1])
    rc, out, _, _ = load_json(cmd({"add": {"rule": {"family": "inet", "table": "t", "chain": "c",
                                                    "expr": [{"drop": None}]}}}), rs, "-e")
    assert json.loads(out)["nftables"][0]["add"]["rule"]["handle"] == 3


def test_check_only_changes_nothing_but_handles() -> None:
    rs = load_json(cmd(TABLE, CHAIN))[3]
    rc, out, err, after = run_nft(["-c", "add", "rule", "inet", "t", "c", "accept"], rs)
    assert (rc, out, err) == (0, "", "")
    assert after.find("inet", "t").chains["c"].rules == []  # type: ignore[union-attr]
    rc, _, err, _ = run_nft(["-c", "add", "rule", "inet", "t", "nosuch", "accept"], rs)
    assert rc == 1 and "No such file or directory" in err


def test_generation_survives_the_node_file() -> None:
    rs = load_json(cmd(TABLE))[3]
    assert rs.generation == 1
    assert ruleset_from_json(ruleset_to_json(rs)).generation == 1





WORDS = ["add", "insert", "replace", "delete", "flush", "list", "reset", "rename", "table", "chain", "rule", "set",
         "map", "element", "counter", "quota", "limit", "family", "name", "expr", "handle", "index", "match", "op",
         "left", "right", "payload", "protocol", "field", "meta", "key", "ct", "elem", "concat", "prefix", "range",
         "vmap", "data", "jump", "target", "accept", "dnat", "addr", "port", "type", "hook", "prio", "policy",
         "log", "rate", "per", "mangle", "value", "reject", "numgen", "mod", "fib", "result", "|", "timeout"]
ATOMS = ["ip", "inet", "t", "c", "tcp", "dport", "mark", "==", "in", "input", "filter", "@s", "1.2.3.4", None,
         True, 0, 22, -1, 2 ** 40, 1.5, "ipv4_addr", "verdict", "second"]


def test_any_json_document_is_an_answer_not_a_traceback() -> None:
    """Whatever the document, nft's answer: output or an error, and a failure leaves the ruleset as it was."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    values = st.recursive(st.sampled_from(ATOMS), lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.sampled_from(WORDS), inner, min_size=1, max_size=3), max_leaves=12)
    base = load_json(cmd(TABLE, CHAIN))[3]
    before = run_nft(["-a", "list", "ruleset"], base)[1]

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.dictionaries(st.sampled_from(WORDS[:9]), st.dictionaries(st.sampled_from(WORDS), values,
                                                                                  max_size=4), min_size=1,
                                    max_size=1), min_size=1, max_size=3))
    def check(items: list[object]) -> None:
        rc, _, err, after = run_nft(["-j", "-e", "-f", "-"], base, json.dumps(cmd(*items)))
        assert rc in (0, 1)
        if rc:
            assert err and run_nft(["-a", "list", "ruleset"], after)[1] == before

    check()




def test_names_the_text_front_end_cannot_hold_are_refused_plainly() -> None:
    """JSON reaches the ruleset through nft script: a name with a quote or a newline is refused in one line,
    never spliced into the script as another command."""
    rc, _, err, rs = load_json(cmd({"add": {"table": {"family": "ip", "name": 'x"\nflush ruleset\n#'}}}))
    assert rc == 1 and rs.tables == []
    assert err.startswith("internal:0:0-0: Error: kproxy: ") and "cannot be written in nft's text" in err
