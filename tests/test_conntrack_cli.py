"""The conntrack command (conntrack-tools 1.4.7) on the emulated node, and against the real tool.

The kernel tests send real UDP, TCP and ICMP flows between two kp- namespaces, list them with the
real ``conntrack`` and with ours after the same packets, and compare the lines (timeouts, which
depend on wall time, may differ by a couple of seconds; everything else byte for byte).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from kproxy.cli.conntrack_cmd import PROG, run_conntrack
from kproxy.lab.netns import Netns, kernel_lab_available
from kproxy.node import Node
from kproxy.packet import ACK, PSH, SYN, Packet

CLIENT, SERVER = "10.9.0.1", "10.9.0.2"


def server_node() -> Node:
    """The emulated twin of the server namespace: one veth, and a rule that needs conntrack."""
    node = Node.from_description({"name": "server", "interfaces": [{"name": "eth0", "addresses": [f"{SERVER}/24"]}]})
    node.clock = 1000.0
    node.iptables_restore("*filter\n-A INPUT -m conntrack --ctstate NEW -j ACCEPT\nCOMMIT\n")
    return node


def tcp(src: str, dst: str, sport: int, dport: int, flags: int) -> Packet:
    return Packet.make(src, dst, "tcp", sport, dport, tcp_flags=flags)


def emulate_flows(node: Node) -> None:
    """The packets the kernel test sends: a UDP exchange, a UDP probe to a closed port (answered by an
    ICMP error), a TCP connection with one data segment, and an ICMP echo."""
    node.receive(Packet.make(CLIENT, SERVER, "udp", 40000, 5353), "eth0")
    node.send(Packet.make(SERVER, CLIENT, "udp", 5353, 40000))
    probe = Packet.make(CLIENT, SERVER, "udp", 40000, 5354)
    node.receive(probe, "eth0")
    node.send(Packet.make(SERVER, CLIENT, "icmp", icmp_type=3, icmp_code=3, inner=probe.copy()))
    node.receive(tcp(CLIENT, SERVER, 40001, 8080, SYN), "eth0")
    node.send(tcp(SERVER, CLIENT, 8080, 40001, SYN | ACK))
    node.receive(tcp(CLIENT, SERVER, 40001, 8080, ACK), "eth0")
    node.receive(tcp(CLIENT, SERVER, 40001, 8080, PSH | ACK), "eth0")
    node.send(tcp(SERVER, CLIENT, 8080, 40001, ACK))
    node.receive(Packet.make(CLIENT, SERVER, "icmp", icmp_type=8, icmp_id=4660), "eth0")
    node.send(Packet.make(SERVER, CLIENT, "icmp", icmp_type=0, icmp_id=4660))
    node.clock = (node.clock or 0) + 0.5


def run(node: Node, line: str) -> tuple[int, str, str]:
    return run_conntrack(line.split(), node)


# ---- listing -------------------------------------------------------------------------------------

def test_listing_prints_each_protocol_like_the_tool():
    node = server_node()
    emulate_flows(node)
    rc, out, err = run(node, "-L")
    assert rc == 0 and err == f"{PROG}: 4 flow entries have been shown.\n"
    assert out.splitlines() == [
        "udp      17 29 src=10.9.0.1 dst=10.9.0.2 sport=40000 dport=5353 src=10.9.0.2 dst=10.9.0.1 sport=5353 "
        "dport=40000 mark=0 use=1",
        "udp      17 29 src=10.9.0.1 dst=10.9.0.2 sport=40000 dport=5354 [UNREPLIED] src=10.9.0.2 dst=10.9.0.1 "
        "sport=5354 dport=40000 mark=0 use=1",
        "tcp      6 431999 ESTABLISHED src=10.9.0.1 dst=10.9.0.2 sport=40001 dport=8080 src=10.9.0.2 dst=10.9.0.1 "
        "sport=8080 dport=40001 [ASSURED] mark=0 use=1",
        "icmp     1 29 src=10.9.0.1 dst=10.9.0.2 type=8 code=0 id=4660 src=10.9.0.2 dst=10.9.0.1 type=0 code=0 "
        "id=4660 mark=0 use=1",
    ]


def test_extended_and_id_outputs():
    node = server_node()
    emulate_flows(node)
    _, out, _ = run(node, "-L -p tcp -o extended,id")
    conn = next(c for c in node.conntrack.entries() if c.orig.proto == 6)
    assert out.startswith("ipv4     2 tcp      6 431999 ESTABLISHED src=10.9.0.1")
    assert out.endswith(f" [ASSURED] mark=0 use=1 id={conn.id}\n")


@pytest.mark.parametrize("args, count", [
    ("-p udp", 2), ("-p udp --dport 5353", 1), ("-p udp --orig-port-dst 5354", 1), ("-p tcp --state ESTABLISHED", 1),
    ("-p tcp --state SYN_SENT", 0), ("-s 10.9.0.0/24", 4), ("-s 10.9.1.1", 0), ("-r 10.9.0.2 -q 10.9.0.1", 4),
    ("-p udp --reply-port-src 5353", 1), ("-u ASSURED", 1), ("-u seen_reply", 3), ("-m 0", 4), ("-m 1", 0),
    ("-f ipv6", 0), ("-f ipv4", 4), ("-p icmp --icmp-type 8", 1), ("-p icmp --icmp-id 7", 0), ("-p 99", 0),
])
def test_filters(args, count):
    node = server_node()
    emulate_flows(node)
    rc, out, err = run(node, f"-L {args}")
    assert rc == 0 and len(out.splitlines()) == count
    assert err == f"{PROG}: {count} flow entries have been shown.\n"


def test_mark_filter_uses_the_mask():
    node = server_node()
    emulate_flows(node)
    node.conntrack.entries()[0].mark = 0x4001
    assert len(run(node, "-L -m 0x4000/0xf000")[1].splitlines()) == 1
    assert len(run(node, "-L -m 0x4000")[1].splitlines()) == 0


def test_expired_entries_are_not_listed_and_count_follows():
    node = server_node()
    emulate_flows(node)
    node.clock = (node.clock or 0) + 31
    assert run(node, "-C") == (0, "1\n", "")          # only the established TCP flow is left
    assert run(node, "-L")[2] == f"{PROG}: 1 flow entries have been shown.\n"


# ---- delete, get, flush, count ---------------------------------------------------------------------

def test_delete_prints_what_it_deleted_and_fails_when_nothing_matched():
    node = server_node()
    emulate_flows(node)
    rc, out, err = run(node, "-D -p udp --dport 5354")
    assert rc == 0 and "dport=5354 [UNREPLIED]" in out and len(out.splitlines()) == 1
    assert err == f"{PROG}: 1 flow entries have been deleted.\n"
    assert run(node, "-D -p udp --dport 5354") == (1, "", f"{PROG}: 0 flow entries have been deleted.\n")
    assert run(node, "-C")[1] == "3\n"


def test_get_needs_the_whole_original_tuple():
    node = server_node()
    emulate_flows(node)
    rc, out, err = run(node, "-G -p udp -s 10.9.0.1 -d 10.9.0.2 --sport 40000 --dport 5353")
    assert rc == 0 and out.endswith("mark=0 use=2\n") and err == f"{PROG}: 1 flow entries have been shown.\n"
    # The reply tuple finds the entry in the kernel, but the tool shows nothing and fails.
    assert run(node, "-G -p udp -s 10.9.0.2 -d 10.9.0.1 --sport 5353 --dport 40000") == (
        1, "", f"{PROG}: 0 flow entries have been shown.\n")
    assert run(node, "-G -p udp -s 10.9.0.1 -d 10.9.0.2 --sport 40000 --dport 9") == (
        1, "", f"{PROG}: Operation failed: such conntrack doesn't exist\n")
    assert run(node, "-G -s 10.9.0.1 -d 10.9.0.2")[2].startswith(
        f"{PROG}: You need to supply the `--protonum' option for this command\n")
    assert "you have to specify `--src' and `--dst'" in run(node, "-G -p udp -d 10.9.0.2")[2]
    assert "you have to specify `--sport' and `--dport'" in run(node, "-G -p udp -s 10.9.0.1 -d 10.9.0.2")[2]


def test_flush_and_count():
    node = server_node()
    emulate_flows(node)
    assert run(node, "-C") == (0, "4\n", "")
    assert run(node, "-F") == (0, "", f"{PROG}: connection tracking table has been emptied.\n")
    assert run(node, "-C") == (0, "0\n", "")
    assert node.conntrack.entries() == []


@pytest.mark.parametrize("line, message", [
    ("-L --bogus", "unknown option `--bogus'"),
    ("-L --sport 5", "unknown option `--sport'"),
    ("-L --state ESTABLISHED", "unknown option `--state'"),
    ("-L -p udp --state ESTABLISHED", "unknown option `--state'"),
    ("-L -p tcp --state established", "unknown TCP state `established'"),
    ("-L -s 10.9.0.300", "Invalid IP address `10.9.0.300'"),
    ("-L -p foo", "`foo' unsupported protocol"),
    ("-L -p 300", "`300' unsupported protocol"),
    ("-L -f foo", "`foo' unsupported protocol"),
    ("-L -o foo", "Bad parameter `foo'"),
    ("-L -u FOO", "Bad parameter `FOO'"),
    ("-L -s", "option `-s' requires an argument"),
    ("-L -L", "Invalid commands combination"),
    ("-L -D", "Invalid commands combination"),
    ("-L --dump", "Invalid commands combination"),
    ("-C -p tcp", "Illegal option `--protonum' with this command"),
    ("-F -s 1.1.1.1", "Illegal option `--src' with this command"),
    ("-L -f ipv6 -s 1.1.1.1", "mismatched address family"),
    ("-L -s ::1 -d 1.1.1.1", "mismatched address family"),
])
def test_usage_errors(line, message):
    rc, out, err = run(server_node(), line)
    assert (rc, out) == (2, "")
    assert err == f"{PROG}: {message}\nTry `conntrack -h' or 'conntrack --help' for more information.\n"


# ---- against the real tool ------------------------------------------------------------------------

SERVER_SCRIPT = """
import socket, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.9.0.2", 5353))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("10.9.0.2", 8080)); t.listen()
print("ready", flush=True)
data, peer = u.recvfrom(100); u.sendto(data, peer)
c, _ = t.accept(); c.recv(10)
time.sleep(30)
"""

CLIENT_SCRIPT = """
import socket, struct, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.9.0.1", 40000))
u.sendto(b"x", ("10.9.0.2", 5353)); u.settimeout(5); u.recv(10)
u.sendto(b"y", ("10.9.0.2", 5354)); time.sleep(0.2)
t = socket.socket(); t.bind(("10.9.0.1", 40001)); t.connect(("10.9.0.2", 8080)); t.send(b"hi")
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
body = struct.pack("!BBHHH", 8, 0, 0, 4660, 1) + b"ping"
s = sum(struct.unpack("!%dH" % (len(body) // 2), body)); s = (s >> 16) + (s & 0xFFFF); s += s >> 16
r.sendto(body[:2] + struct.pack("!H", ~s & 0xFFFF) + body[4:], ("10.9.0.2", 0)); r.settimeout(5); r.recv(100)
time.sleep(0.3)
print("done", flush=True)
time.sleep(30)
"""


@pytest.fixture
def flows() -> Iterator[tuple[Netns, Netns]]:
    """Client and server namespaces joined by a veth, the real flows sent, processes still holding the
    TCP connection open. Yields (client, server)."""
    reason = kernel_lab_available()
    if reason:
        pytest.skip(reason)
    if shutil.which("conntrack") is None:
        pytest.skip("conntrack-tools is not installed")
    a, b = Netns.create("ctc"), Netns.create("cts")
    procs: list[subprocess.Popen[str]] = []
    try:
        b.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", a.name])
        for ns, addr in ((a, CLIENT), (b, SERVER)):
            ns.run(["ip", "addr", "add", f"{addr}/24", "dev", "eth0"])
            ns.run(["ip", "link", "set", "eth0", "up"])
        b.run(["iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"])
        server = b.popen([sys.executable, "-c", SERVER_SCRIPT], stdout=subprocess.PIPE)
        procs.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = a.popen([sys.executable, "-c", CLIENT_SCRIPT], stdout=subprocess.PIPE)
        procs.append(client)
        assert client.stdout is not None and client.stdout.readline().strip() == "done"
        yield a, b
    finally:
        for p in procs:
            p.kill()
            p.wait()
        a.delete()
        b.delete()


_TIMEOUT = re.compile(r"^((?:ipv\d +\d+ )?\S+ +\d+ )(\d+) ")


def normalise(text: str, ours: str) -> tuple[list[str], list[str]]:
    """Sorted lines of both listings, with timeouts replaced once they agree within 3 seconds."""
    def split(t: str) -> dict[str, int]:
        out = {}
        for line in t.splitlines():
            m = _TIMEOUT.match(line)
            out[_TIMEOUT.sub(r"\1T ", line)] = int(m.group(2)) if m else 0
        return out
    theirs_d, ours_d = split(text), split(ours)
    for key, value in theirs_d.items():
        if key in ours_d:
            assert abs(ours_d[key] - value) <= 3, key
    return sorted(theirs_d), sorted(ours_d)


@pytest.mark.kernel
@pytest.mark.parametrize("args", ["-L", "-L -o extended", "-L -p tcp", "-L -p udp --dport 5353",
                                  "-L -p icmp", "-L -s 10.9.0.0/24 -u ASSURED", "-L -f ipv6"])
def test_listing_matches_the_real_tool(flows, args):
    _, server = flows
    theirs = server.run(["conntrack", *args.split()], check=False)
    node = server_node()
    emulate_flows(node)
    rc, out, err = run(node, args)
    assert (rc, err) == (theirs.returncode, theirs.stderr)
    real, mine = normalise(theirs.stdout, out)
    assert real == mine


@pytest.mark.kernel
def test_get_delete_and_count_match_the_real_tool(flows):
    _, server = flows
    node = server_node()
    emulate_flows(node)
    for line in ("-G -p udp -s 10.9.0.1 -d 10.9.0.2 --sport 40000 --dport 5353",
                 "-G -p udp -s 10.9.0.2 -d 10.9.0.1 --sport 5353 --dport 40000",
                 "-C", "-D -p udp --dport 5354", "-D -p udp --dport 5354", "-C"):
        theirs = server.run(["conntrack", *line.split()], check=False)
        rc, out, err = run(node, line)
        assert (rc, err) == (theirs.returncode, theirs.stderr), line
        real, mine = normalise(theirs.stdout, out)
        assert real == mine, line


@pytest.mark.kernel
@pytest.mark.parametrize("line", [
    "-L --bogus", "-L -p tcp --state BOGUS", "-L -s 10.9.0.300", "-L -p foo", "-L -L", "-C -p tcp",
    "-F -s 1.1.1.1", "-L -o foo", "-L -f ipv6 -s 1.1.1.1", "-G -s 1.1.1.1 -d 2.2.2.2", "-G -p udp -d 2.2.2.2",
    "-G -p tcp -s 1.1.1.1 -d 2.2.2.2 --sport 1 --dport 2", "-L -u unset", "-L -u SRC_NAT", "-D", "-F",
    "-L expect", "-L -p udp --sport abc",
])
def test_errors_and_empty_tables_match_the_real_tool(kernel_ns, line):
    if shutil.which("conntrack") is None:
        pytest.skip("conntrack-tools is not installed")
    theirs = kernel_ns.run(["conntrack", *line.split()], check=False)
    node = server_node()
    assert run(node, line) == (theirs.returncode, theirs.stdout, theirs.stderr)


def test_fixture_helpers_are_consistent():
    # The normaliser accepts equal listings and rejects timeouts far apart.
    a = "udp      17 29 src=1.1.1.1 dst=2.2.2.2 sport=1 dport=2 [UNREPLIED] src=2.2.2.2 dst=1.1.1.1 sport=2 dport=1" \
        " mark=0 use=1\n"
    assert normalise(a, a)[0] == normalise(a, a)[1] == [a.strip().replace(" 29 ", " T ")]
    with pytest.raises(AssertionError):
        normalise(a.replace(" 29 ", " 10 "), a)
