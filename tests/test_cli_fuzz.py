"""Never a traceback: random and mutated command lines, files and stdin through the ``kproxy`` CLI in-process.

Every run must end in an exit status with output and no Python traceback, and a command that fails must
leave the node file byte for byte as it was. Inputs are built from each tool's own vocabulary (so they get
past the first option and reach the deeper parsers), mixed with arbitrary text, binary bytes and non-UTF-8.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kproxy.cli.commands  # noqa: F401  (registers trace)
from kproxy.cli.main import cli

FUZZ = settings(max_examples=int(os.environ.get("KPROXY_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

WORK = Path(tempfile.mkdtemp(prefix="kproxy-fuzz-"))
atexit.register(shutil.rmtree, WORK, ignore_errors=True)
NODE = WORK / "node.json"
SETUP = [
    ["iptables", "-N", "KUBE-SVC"], ["iptables", "-A", "INPUT", "-j", "KUBE-SVC"],
    ["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.96.0.1", "--dport", "80", "-j", "DNAT",
     "--to-destination", "192.168.1.5:8080"],
    ["ipset", "create", "S", "hash:ip,port", "timeout", "60"], ["ipset", "add", "S", "10.0.0.1,tcp:80"],
    ["ipvsadm", "-A", "-t", "10.96.0.2:80", "-s", "rr"], ["ipvsadm", "-a", "-t", "10.96.0.2:80", "-r", "10.1.0.1", "-m"],
    ["trace", "--local", "--dst", "10.96.0.1", "--dport", "80"],
    ["nfacct", "add", "acct"], ["iptables", "-A", "OUTPUT", "-m", "nfacct", "--nfacct-name", "acct"],
]


def _baseline() -> bytes:
    if not NODE.exists():
        for argv in SETUP:
            res = CliRunner().invoke(cli, ["--node", str(NODE), *argv])
            assert res.exit_code == 0, (argv, res.output)
    return NODE.read_bytes()


def invoke(argv: list[str], stdin: bytes | None = None) -> None:
    """Run one command on a fresh copy of the baseline node and check the no-traceback contract."""
    base = _baseline()
    node = WORK / "run.json"
    node.write_bytes(base)
    res = CliRunner().invoke(cli, ["--node", str(node), *argv], input=stdin)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"{argv!r} crashed") from res.exception
    text = res.stdout_bytes + res.stderr_bytes
    assert b"Traceback" not in text, argv
    assert isinstance(res.exit_code, int)
    if res.exit_code != 0:
        assert res.stderr_bytes.strip() or res.stdout_bytes.strip(), f"{argv!r} failed silently"
        assert node.read_bytes() == base, f"{argv!r} failed and changed the node file"


# Arbitrary words: text (surrogates included, as undecodable argv arrives), and bytes decoded the way
# Python decodes argv that is not UTF-8.
junk = st.one_of(st.text(max_size=12), st.binary(max_size=8).map(lambda b: b.decode("utf-8", "surrogateescape")))


def words(vocab: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.one_of(st.sampled_from(vocab), st.sampled_from(vocab), junk), max_size=12)


IPTABLES = ["-A", "-I", "-D", "-R", "-C", "-N", "-X", "-F", "-Z", "-P", "-E", "-L", "-S", "-h", "-V", "-t", "-tnat",
            "-nvL", "-vnxL", "--line-numbers", "INPUT", "OUTPUT", "FORWARD", "PREROUTING", "KUBE-SVC", "nat", "filter",
            "mangle", "raw", "-j", "-g", "ACCEPT", "DROP", "RETURN", "DNAT", "SNAT", "MASQUERADE", "REJECT", "LOG",
            "MARK", "-m", "tcp", "udp", "comment", "--comment", "multiport", "--dports", "conntrack", "--ctstate",
            "NEW,ESTABLISHED", "set", "--match-set", "S", "src", "dst,dst", "statistic", "--mode", "random",
            "--probability", "0.5", "mark", "--mark", "0x4000/0x4000", "--set-xmark", "-p", "tcp", "icmp", "-s", "-d",
            "10.0.0.1", "10.0.0.0/8", "::1", "-i", "-o", "eth0", "lo+", "!", "--dport", "--sport", "80", "1:65535",
            "--to-destination", "1.2.3.4:80", "--log-prefix", "1", "0", "99", "-c", "5", "--append=INPUT", "-w",
            "nfacct", "--nfacct-name", "acct"]
SAVE = ["-c", "-t", "nat", "filter", "-f", "-M", "-V", "-h", "--counters", "--table=nat", "--table", "--bogus"]
RESTORE = ["-c", "-n", "-t", "-T", "nat", "-v", "-h", "--noflush", "--test", "--table=filter", "-w", "-W", "5", "-V"]
IPSET = ["create", "add", "del", "test", "list", "save", "flush", "destroy", "rename", "swap", "version", "help",
         "-exist", "-!", "-q", "-n", "-t", "-s", "-o", "save", "-f", "S", "T", "hash:ip", "hash:net", "hash:ip,port",
         "bitmap:port", "list:set", "range", "0-1000", "family", "inet6", "timeout", "maxelem", "hashsize", "0",
         "2147484", "comment", "counters", "nomatch", "10.0.0.1", "10.0.0.1,tcp:80", "::1", "10.0.0.0/8", "1.2.3.4/33"]
IPVSADM = ["-A", "-E", "-D", "-C", "-a", "-e", "-d", "-L", "-l", "-Ln", "-Lnc", "-Z", "-S", "-R", "--set", "-h", "-v",
           "-t", "-u", "-f", "-s", "rr", "wrr", "sh", "mh", "-b", "sh-port", "-p", "-M", "-r", "-g", "-i", "-m", "-w",
           "-x", "-y", "-n", "-c", "--stats", "--rate", "--timeout", "--exact", "10.96.0.2:80", "10.96.0.9:53",
           "10.1.0.1", "1", "65536", "-1", "0", "300", "255.255.255.0", "--weight=3"]
CONNTRACK = ["-L", "-D", "-F", "-E", "-C", "-S", "-G", "-U", "-I", "-p", "tcp", "udp", "icmp", "-s", "-d", "--src",
             "--dst", "10.0.0.1", "::1", "--sport", "--dport", "80", "-o", "xml", "extended", "-n", "-g", "-f",
             "ipv6", "--mark", "1", "--state", "ESTABLISHED", "-z", "-t", "100", "--zone", "-h", "-V"]
NFACCT = ["add", "delete", "get", "list", "flush", "reset", "version", "help", "acct", "other", "x" * 40]
TRACE = ["--iif", "eth0", "lo", "--local", "--src", "--dst", "-s", "-d", "192.168.1.10", "10.96.0.1", "::1", "-p",
         "tcp", "udp", "icmp", "--sport", "--dport", "80", "70000", "--tcp-flags", "SYN", "ACK,FIN", "--mark",
         "0x10", "--count", "2", "0", "--json", "--dry-run", "--from-pod", "--to-service", "--manifests"]


@FUZZ
@given(st.sampled_from(["iptables", "ip6tables"]), words(IPTABLES))
def test_iptables_argv(tool, argv):
    invoke([tool, *argv])


@FUZZ
@given(st.sampled_from(["iptables-save", "ip6tables-save"]), words(SAVE))
def test_iptables_save_argv(tool, argv):
    invoke([tool, *[a for a in argv if a != "-f"]])      # -f writes a file: not in the work tree


@FUZZ
@given(words(IPSET))
def test_ipset_argv(argv):
    invoke(["ipset", *argv])


@FUZZ
@given(words(IPVSADM))
def test_ipvsadm_argv(argv):
    invoke(["ipvsadm", *argv])


@FUZZ
@given(words(CONNTRACK))
def test_conntrack_argv(argv):
    invoke(["conntrack", *argv])


@FUZZ
@given(words(NFACCT))
def test_nfacct_argv(argv):
    invoke(["nfacct", *argv])


ADDRESSES = ["192.168.1.10", "10.96.0.1", "192.168.1.1", "::1", "fe80::1", "2001:db8::1", "0.0.0.0", "1.2.3", ""]
spec = st.fixed_dictionaries({
    "where": st.sampled_from([["--local"], ["--iif", "eth0"], ["--iif", "lo"], ["--iif", "nope"], [],
                              ["--local", "--iif", "eth0"]]),
    "src": st.lists(st.sampled_from(ADDRESSES) | junk, max_size=1), "dst": st.lists(st.sampled_from(ADDRESSES) | junk,
                                                                                       max_size=1),
    "proto": st.lists(st.sampled_from(["tcp", "udp", "icmp", "icmpv6", "sctp", "47", "256", "bogus"]) | junk,
                      max_size=1),
    "more": words(TRACE)})


@FUZZ
@given(spec)
def test_trace_argv(s):
    argv = [*s["where"], *(["--src", *s["src"]] if s["src"] else []), *(["--dst", *s["dst"]] if s["dst"] else []),
            *(["-p", *s["proto"]] if s["proto"] else []), *s["more"]]
    invoke(["trace", *[a for a in argv if a not in ("--manifests", "--packets")]])


def mutated(lines: list[str]) -> st.SearchStrategy[bytes]:
    """A valid file with lines dropped, repeated, cut or swapped for junk, then encoded (or replaced by bytes)."""
    line = st.one_of(st.sampled_from(lines), junk, st.sampled_from(lines).map(lambda s: s[: len(s) // 2]))
    text = st.lists(line, max_size=14).map(lambda ls: "\n".join(ls) + "\n")
    return st.one_of(text.map(lambda t: t.encode("utf-8", "surrogateescape")), st.binary(max_size=64))


RESTORE_LINES = ["*filter", "*nat", "*bogus", ":INPUT ACCEPT [0:0]", ":FOO - [0:0]", ":BAR - [1:2]", ":INPUT BOGUS",
                 "-A INPUT -j FOO", "-A FOO -j BAR", "-A BAR -j FOO", "-A FOO -s 10.0.0.1 -j ACCEPT",
                 '-A FOO -m comment --comment "a b" -j DROP', "-A OUTPUT -p tcp --dport 80 -j DNAT --to-destination 1.2.3.4",
                 "-X FOO", "-F", "-N X", "[5:6] -A INPUT -j ACCEPT", "COMMIT", "# comment", '-A FOO -m comment --comment "\\"'
                 ]
IPSET_LINES = ["create A hash:ip", "create B hash:net timeout 10", "add A 10.0.0.1", "add A ::1", "add B 10.0.0.0/8",
               "add B 10.0.0.0/8 timeout 5", "del A 10.0.0.1", "flush", "destroy A", "swap A B", "create C list:set",
               "add C A", "COMMIT", "test A 1.1.1.1", 'add A 1.1.1.2 comment "x y"', "create D bitmap:port range 1-10"]
IPVS_LINES = ["-A -t 10.0.0.1:80 -s rr", "-a -t 10.0.0.1:80 -r 10.1.1.1:80 -m -w 1", "-A -u 10.0.0.1:53 -s sh -b sh-port",
              "-a -t 10.0.0.9:80 -r 10.1.1.1", "-D -t 10.0.0.1:80", "-C", "-A -f 5 -s wlc -p 60 -M 255.255.255.0",
              "-e -t 10.0.0.1:80 -r 10.1.1.1:80 -w 65536", "-R"]
PACKET_LINES = ["--iif eth0 --src 10.0.0.1 --dst 192.168.1.10 -p tcp --dport 80", "reply", "--local --dst 10.96.0.1",
                "--local --src ::1 --dst 10.0.0.1", "--local --dst 10.0.0.1 -p icmpv6", "--iif eth0 --dst ::1 -p icmp",
                "--iif nope --dst 1.2.3.4", "--local --dst ::1 -p icmp", "--iif eth0 --dst 1.1.1.1 --sport 99999",
                "--local --dst 10.96.0.1 --tcp-flags BOGUS", "--local --dst '1.2.3.4"]
NODE_LINES = ["name: n", "interfaces:", "  - name: eth0", "    addresses: [192.168.1.10/24]", "    addresses: [bad]",
              "routes: [default via 192.168.1.1]", "routes: [nonsense]", "sysctls: {net.ipv4.ip_forward: 1}",
              "  - {}", "interfaces: 5", "[", "{a: [}"]


@FUZZ
@given(st.sampled_from(["iptables-restore", "ip6tables-restore"]), st.lists(st.sampled_from(RESTORE), max_size=2),
       mutated(RESTORE_LINES), st.booleans())
def test_iptables_restore_input(tool, opts, data, as_file):
    if as_file:
        path = WORK / "rules.txt"
        path.write_bytes(data)
        invoke([tool, *opts, str(path)])
    else:
        invoke([tool, *opts], stdin=data)


@FUZZ
@given(mutated(IPSET_LINES), st.booleans())
def test_ipset_restore_input(data, as_file):
    if as_file:
        path = WORK / "sets.txt"
        path.write_bytes(data)
        invoke(["ipset", "restore", "-f", str(path)])
    else:
        invoke(["ipset", "restore"], stdin=data)


@FUZZ
@given(mutated(IPVS_LINES))
def test_ipvsadm_restore_input(data):
    invoke(["ipvsadm", "-R"], stdin=data)


@FUZZ
@given(mutated(PACKET_LINES))
def test_packet_files(data):
    path = WORK / "packets.txt"
    path.write_bytes(data)
    invoke(["trace", "--packets", str(path)])


@FUZZ
@given(mutated(NODE_LINES))
def test_node_descriptions(data):
    path = WORK / "node.yaml"
    path.write_bytes(data)
    invoke(["node", "init", "--from", str(path)])


MANIFEST_LINES = ["kind: Service", "kind: Pod", "kind: EndpointSlice", "kind: List", "---", "metadata: 5",
                  "metadata: {name: b, namespace: a}", "spec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}",
                  "spec: {clusterIP: bogus, ports: [{port: 99999}]}", "status: {podIP: 10.244.0.5}", "status: 7",
                  "status: {podIP: nope}", "endpoints: [{addresses: [10.244.0.5], targetRef: {name: b}}]",
                  "endpoints: [5]", "items: 3", "items: [{kind: Pod}]", "ports: x", "[", "{a: [}"]


@FUZZ
@given(mutated(MANIFEST_LINES), st.sampled_from([["--from-pod", "a/b"], ["--to-service", "a/b:80"],
                                                 ["--from-pod", "a/b", "--to-service", "a/b:80"]]))
def test_trace_manifests(data, opts):
    path = WORK / "manifests.yaml"
    path.write_bytes(data)
    invoke(["trace", "--local", *opts, "--manifests", str(path)])

# Regression tests: each crash the tests above found, as a plain case.
def _run(argv: list[str], stdin: bytes | None = None):
    base = _baseline()
    node = WORK / "regress.json"
    node.write_bytes(base)
    res = CliRunner().invoke(cli, ["--node", str(node), *argv], input=stdin)
    assert res.exception is None or isinstance(res.exception, SystemExit), argv
    return res, node.read_bytes() == base


def test_an_empty_ipvsadm_weight_is_the_tools_error():
    res, unchanged = _run(["ipvsadm", "-a", "-t", "10.96.0.2:80", "-r", "10.1.0.2", "-w", ""])
    assert (res.exit_code, res.stderr) == (2, "illegal weight specified\n") and unchanged


def test_restores_take_bytes_that_are_not_utf8():
    """Like the real tools, a comment in Latin-1 is just bytes: it goes in and comes back out unchanged."""
    res, _ = _run(["iptables-restore"], b'*filter\n-A INPUT -m comment --comment "caf\xe9"\nCOMMIT\n')
    assert res.exit_code == 0
    node = WORK / "regress.json"
    saved = CliRunner().invoke(cli, ["--node", str(node), "iptables-save"])
    assert b'--comment "caf\xe9"' in saved.stdout_bytes
    res, unchanged = _run(["ipset", "restore"], b"\x80")
    assert res.exit_code == 1 and b"Error in line 1" in res.stderr_bytes and unchanged
    res, unchanged = _run(["ipvsadm", "-R"], b"\x80\n")
    assert res.exit_code == 1 and "(line 1)" in res.stderr and unchanged


def test_an_unclosed_quote_in_an_ipvsadm_restore_is_an_error_not_a_crash():
    res, unchanged = _run(["ipvsadm", "-R"], b'"\n')
    assert res.exit_code != 0 and unchanged


def test_kproxy_files_that_are_not_utf8_or_malformed_name_the_place():
    bad = WORK / "bad.txt"
    bad.write_bytes(b"--local --dst 10.0.0.1\n\x80\n")
    res, unchanged = _run(["trace", "--packets", str(bad)])
    assert res.exit_code == 2 and f"{bad}:2:1: the packet file is not UTF-8 text" in res.stderr and unchanged
    res, unchanged = _run(["node", "init", "--from", str(bad)])
    assert res.exit_code == 1 and f"{bad}:2:1: the node description is not UTF-8 text" in res.stderr and unchanged
    bad.write_text("interfaces: 5\n")
    res, unchanged = _run(["node", "init", "--from", str(bad)])
    assert res.exit_code == 1 and "interfaces: must be a list" in res.stderr and unchanged


def test_a_missing_ipset_restore_file_is_an_error():
    res, unchanged = _run(["ipset", "restore", "-f", str(WORK / "nope")])
    assert res.exit_code == 1 and "Cannot open" in res.stderr and unchanged


def test_trace_refuses_mixed_address_families_and_protocols():
    for argv, message in ((["--iif", "eth0", "--src", "::1", "--dst", "10.0.0.1"], "different address families"),
                          (["--local", "--dst", "10.0.0.1", "-p", "icmpv6"], "not a protocol of IPv4"),
                          (["--local", "--dst", "::1", "-p", "icmp"], "not a protocol of IPv6")):
        res, unchanged = _run(["trace", *argv])
        assert res.exit_code == 2 and message in res.stderr and unchanged, argv


def test_malformed_manifests_are_warnings_or_errors_not_crashes():
    path = WORK / "bad-manifests.yaml"
    path.write_text("kind: Service\nmetadata: 5\n")
    res, unchanged = _run(["trace", "--local", "--to-service", "a/b:80", "--manifests", str(path)])
    assert res.exit_code == 2 and "no Service a/b" in res.stderr and unchanged
    path.write_bytes(b"\x80\n")
    res, unchanged = _run(["trace", "--local", "--from-pod", "a/b", "--manifests", str(path)])
    assert res.exit_code == 1 and "not UTF-8 text" in res.stderr and unchanged
    path.write_text("kind: Pod\nmetadata: {name: b, namespace: a}\nstatus: {podIP: nope}\n")
    res, unchanged = _run(["trace", "--local", "--from-pod", "a/b", "--manifests", str(path)])
    assert res.exit_code == 2 and "has no valid address" in res.stderr and unchanged
