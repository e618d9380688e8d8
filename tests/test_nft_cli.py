"""``kproxy nft``: nft's command line on the node file, one atomic transaction per invocation."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from kproxy.cli.main import cli
from kproxy.nftables.cli import run_nft
from kproxy.nftables.model import Ruleset
from kproxy.nftables.store import ruleset_from_json, ruleset_to_json

DATA = Path(__file__).parent / "data" / "nft"


def run(node: str, *args: str, stdin: str | None = None):
    import kproxy.cli.nft_cmd  # noqa: F401

    return CliRunner().invoke(cli, ["--node", node, "nft", *args], input=stdin)


def test_file_loads_and_lists_with_handles(tmp_path):
    node = str(tmp_path / "n.json")
    res = run(node, "-f", str(DATA / "kube_proxy.nft"))
    assert res.exit_code == 0, res.output
    listing = run(node, "-a", "list", "ruleset").output
    assert 'table ip kube-proxy { # handle 1\n\tcomment "rules for kube-proxy"\n' in listing
    assert "\t\tip daddr . meta l4proto . th dport vmap @service-ips # handle 16\n" in listing
    # The next rule continues the table's handle counter, as the kernel's would after a reload.
    assert run(node, "add", "rule", "ip", "kube-proxy", "services", "counter").exit_code == 0
    assert "\t\tcounter packets 0 bytes 0 # handle 31\n" in run(node, "-a", "list", "chain", "ip", "kube-proxy",
                                                               "services").output


def test_failed_transaction_changes_nothing(tmp_path):
    node = str(tmp_path / "n.json")
    run(node, "add", "table", "inet", "t")
    before = (tmp_path / "n.json").read_bytes()
    script = tmp_path / "bad.nft"
    script.write_text("add chain inet t c\nadd rule inet t c tcp dport 22 accept\nadd rule inet t c jump nowhere\n")
    res = run(node, "-f", str(script))
    assert res.exit_code == 1
    assert res.output == (f"{script}:3:24-30: Error: Could not process rule: No such file or directory\n"
                          "add rule inet t c jump nowhere\n                       ^^^^^^^\n")
    assert run(node, "list", "ruleset").output == "table inet t {\n}\n"
    # The kernel aborted the batch but its table keeps the handles it handed out (chain 1, rules 2
    # and 3), so the next chain is numbered 4, as on the kernel (the sequence test compares them).
    assert (tmp_path / "n.json").read_bytes() != before
    assert run(node, "add", "chain", "inet", "t", "c2").exit_code == 0
    assert run(node, "-a", "list", "ruleset").output == "table inet t { # handle 1\n\tchain c2 { # handle 4\n\t}\n}\n"
    # An error nft finds itself sends nothing: no handle moves, and the node file is not written.
    before = (tmp_path / "n.json").read_bytes()
    assert run(node, "add", "rule", "inet", "t", "c2", "tcp", "dport", "70000", "accept").exit_code == 1
    assert (tmp_path / "n.json").read_bytes() == before


def test_check_only_and_stdin(tmp_path):
    node = str(tmp_path / "n.json")
    text = (DATA / "home_router.nft").read_text()
    assert run(node, "-c", "-f", "-", stdin=text).exit_code == 0
    assert run(node, "list", "ruleset").output == ""
    assert run(node, "-f", "-", stdin=text).exit_code == 0
    assert run(node, "list", "tables").output == "table inet filter\ntable ip nat\n"


def test_bad_option_is_one_line_not_a_traceback(tmp_path):
    res = run(str(tmp_path / "n.json"), "-Z", "list", "ruleset")
    assert res.exit_code == 1 and res.output == "nft: invalid option -- 'Z'\n"


def test_persistence_round_trip_keeps_text_and_handles():
    for name in sorted(p.name for p in DATA.glob("*.nft")):
        _, _, err, rs = run_nft(["-f", str(DATA / name)], Ruleset())
        assert not err
        again = ruleset_from_json(ruleset_to_json(rs))
        for args in (["-a", "list", "ruleset"], ["-j", "list", "ruleset"]):
            assert run_nft(args, again)[1] == run_nft(args, rs)[1], name
        assert [t.next_handle for t in again.tables] == [t.next_handle for t in rs.tables]


def test_the_node_file_keeps_rules_as_flat_lines_and_still_reads_a_listing():
    """The saved form declares each table's chains empty, then adds the rules line by line (the
    parser's fast path takes those); a node file written before, holding the listing, loads the same."""
    from kproxy.nftables.expr import Opts
    from kproxy.nftables.listing import ruleset_text

    _, _, err, rs = run_nft(["-f", str(DATA / "kube_proxy.nft")], Ruleset())
    assert not err
    saved = ruleset_to_json(rs)
    rules = [line for line in saved["text"].splitlines() if line.startswith("add rule ip kube-proxy ")]
    assert len(rules) == sum(len(c.rules) for t in rs.tables for c in t.chains.values()) > 0
    legacy = dict(saved, text=ruleset_text(rs, Opts()))
    for data in (saved, legacy):
        again = ruleset_from_json(data)
        assert run_nft(["-a", "list", "ruleset"], again)[1] == run_nft(["-a", "list", "ruleset"], rs)[1]


def test_listing_commands_read_the_ruleset_without_copying_it():
    _, _, _, rs = run_nft(["-f", str(DATA / "home_router.nft")], Ruleset())
    assert run_nft(["list", "tables"], rs)[3] is rs
    assert run_nft(["-f", "-"], rs, "list tables\nlist ruleset;list table inet filter\n")[3] is rs
    for text in ("add table ip x", "list tables; add table ip x", 'list tables\n# comment\n'):
        assert run_nft(["-f", "-"], rs, text + "\n")[3] is not rs, text


def test_an_unknown_list_object_and_a_missing_file_are_worded_as_nft_words_them(tmp_path):
    # What nft 1.0.6 prints for the same two command lines (checked in a kp- namespace).
    rc, out, err, _ = run_nft(["list", "bogus"], Ruleset())
    assert (rc, out, err) == (1, "", "Error: syntax error, unexpected string\nlist bogus\n     ^^^^^\n")
    missing = tmp_path / "nonexistent"
    rc, out, err, _ = run_nft(["-f", str(missing)], Ruleset())
    assert (rc, out, err) == (1, "", f'internal:0:0-0: Error: Could not open file "{missing}": No such file or '
                                     "directory\n")
