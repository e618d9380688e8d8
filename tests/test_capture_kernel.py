"""``kproxy node capture`` of kp- namespaces built with the real tools: kproxy's tools print on the
captured node what the real tools printed on the live one, and ``node load`` of the same dumps
gives the same node.

Normalised only where the kernel's output cannot repeat: save headers (dates), the ipset "Size in
memory" line, conntrack timeouts (they tick) and the order of conntrack entries (hash order).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import kproxy.cli.capture_cmd  # noqa: F401 - registers node capture/load
import kproxy.cli.commands  # noqa: F401 - registers trace
import kproxy.cli.nft_cmd  # noqa: F401 - registers nft
from kproxy.cli.main import cli
from kproxy.lab.netns import Netns, kernel_lab_available
from kproxy.lab.parsers import conntrack_lines

pytestmark = pytest.mark.kernel

NODE_SETUP = """
ip link add v0 type veth peer name c0 netns {client}
ip link set v0 up
ip addr add 10.9.0.1/24 dev v0
ip addr add fd09::1/64 dev v0 nodad
ip link add v2 type veth peer name v3
ip link set v2 up
ip addr add 10.77.0.1/32 dev v2
ip route add 10.20.0.0/16 via 10.9.0.2
ip route add 10.21.0.0/16 via 10.9.0.2 metric 50
ip route add blackhole 10.30.0.0/16
ip -6 route add fd20::/48 via fd09::2
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.netfilter.nf_conntrack_acct=1
sysctl -qw net.ipv4.conf.v0.route_localnet=1
ipset create allowed hash:net counters
ipset add allowed 10.9.0.0/24
ipset add allowed 192.168.5.0/24 nomatch
ipset create ports bitmap:port range 1-1024
ipset add ports 22
iptables -N KP-IN
iptables -A INPUT -p icmp -j KP-IN
iptables -A KP-IN -m set --match-set allowed src -j ACCEPT
iptables -A INPUT -p tcp -m set --match-set ports dst -j ACCEPT
iptables -A INPUT -p tcp --dport 23 -j DROP
iptables -A INPUT -p udp -m conntrack --ctstate NEW -j ACCEPT
iptables -t nat -A PREROUTING -d 10.1.1.1/32 -p tcp --dport 80 -j DNAT --to-destination 10.9.0.5:8080
iptables -t nat -A PREROUTING -p udp --dport 5354 -j DNAT --to-destination 10.9.0.1:5353
iptables -t nat -A POSTROUTING -s 10.9.0.0/24 ! -d 10.9.0.0/24 -j MASQUERADE
iptables -P FORWARD DROP
iptables -A FORWARD -d 10.9.0.5/32 -p tcp --dport 8080 -j ACCEPT
ip6tables -A INPUT -s fd09::/64 -p ipv6-icmp -j ACCEPT
ip6tables -A INPUT -p tcp --dport 22 -j REJECT --reject-with tcp-reset
nft add table inet kpt
nft add set inet kpt blocked '{ type ipv4_addr; flags interval; }'
nft add element inet kpt blocked '{ 10.66.0.0/16, 10.67.1.1 }'
nft add chain inet kpt in '{ type filter hook input priority 10; policy accept; }'
nft add rule inet kpt in ip saddr @blocked counter drop
nft add rule inet kpt in icmp type echo-request counter accept
"""

CLIENT_SETUP = """
ip link set c0 up
ip addr add 10.9.0.2/24 dev c0
ip addr add fd09::2/64 dev c0 nodad
"""

# An echo request and its answer over a raw socket (no ping binary needed): argv is address, count.
PING = """
import socket, struct, sys
dst, count = sys.argv[1], int(sys.argv[2])
v6 = ":" in dst
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW, 58 if v6 else 1)
s.settimeout(2)
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF
for seq in range(count):
    head = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 77, seq) + b"kproxy!!"
    pkt = head if v6 else head[:2] + struct.pack("!H", csum(head)) + head[4:]
    s.sendto(pkt, (dst, 0))
    s.recv(1500)
"""


def _tool(name: str) -> bool:
    return shutil.which(name) is not None or Path(f"/usr/sbin/{name}").exists()


@pytest.fixture
def lab() -> Iterator[tuple[Netns, Netns]]:
    """A node namespace with rules of every kind and traffic from a client namespace through them."""
    reason = kernel_lab_available()
    if reason:
        pytest.skip(reason)
    for tool in ("iptables-save", "nft", "ipset", "conntrack", "sysctl"):
        if not _tool(tool):
            pytest.skip(f"{tool} is not installed")
    made: list[Netns] = []
    try:
        client = Netns.create("capc")
        made.append(client)
        node = Netns.create("capn")
        made.append(node)
        for line in NODE_SETUP.replace("{client}", client.name).strip().splitlines():
            node.run(["sh", "-c", line])
        for line in CLIENT_SETUP.strip().splitlines():
            client.run(line.split())
        client.run(["python3", "-c", PING, "10.9.0.1", "2"])
        client.run(["python3", "-c", PING, "fd09::1", "1"])
        client.run(["python3", "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                    "s.bind(('10.9.0.2', 40001)); s.sendto(b'x' * 20, ('10.9.0.1', 5353))"])
        client.run(["python3", "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                    "s.bind(('10.9.0.2', 40002)); s.sendto(b'y' * 20, ('10.9.0.1', 5354))"])
        # the flow keeps its DNAT in conntrack; the rule that made it goes
        node.run(["iptables", "-t", "nat", "-D", "PREROUTING", "-p", "udp", "--dport", "5354", "-j", "DNAT",
                  "--to-destination", "10.9.0.1:5353"])
        yield node, client
    finally:
        for ns in made:
            ns.delete()


def kp(node_file: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--node", str(node_file), *args])


def real(ns: Netns, *argv: str) -> str:
    return ns.run(list(argv)).stdout


def _no_comments(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


def _ipset_norm(text: str) -> str:
    return re.sub(r"(?m)^Size in memory: \d+$", "Size in memory: N", text)


def show_variant(f: Path) -> str:
    return str(json.loads(kp(f, "node", "show", "--json").output)["origin"].get("iptables_variant", ""))


def test_capture_prints_what_the_live_node_printed(lab: tuple[Netns, Netns], tmp_path: Path) -> None:
    node, _ = lab
    f = tmp_path / "captured.db"
    res = kp(f, "node", "capture", "--netns", node.name, "--conntrack")
    assert res.exit_code == 0, res.output
    for prog in ("iptables-save", "ip6tables-save"):
        live = real(node, prog, "-c")
        assert re.search(r"(?m)^\[[1-9]\d*:[1-9]\d*\] -A INPUT ", live)      # traffic was counted
        assert _no_comments(kp(f, prog, "-c").output) == _no_comments(live)
        assert _no_comments(kp(f, prog).output) == _no_comments(real(node, prog))
    assert kp(f, "nft", "list", "table", "inet", "kpt").stdout == real(node, "nft", "list", "table", "inet", "kpt")
    # iptables-nft's tables are listed too, as the live node's nft lists them: only the built-in chains the
    # live node made (iptables-save declares them all), in the order it made them, every rule as nft prints it.
    ours, theirs = kp(f, "nft", "list", "ruleset").stdout, real(node, "nft", "list", "ruleset")
    if show_variant(f) == "nf_tables":
        assert ours == theirs
    rules = [line for line in theirs.splitlines() if line.startswith("\t\t")]
    assert rules and all(line in ours.splitlines() for line in rules)
    assert kp(f, "ipset", "save").output == real(node, "ipset", "save")
    assert _ipset_norm(kp(f, "ipset", "list").output) == _ipset_norm(real(node, "ipset", "list"))
    live_ct = real(node, "conntrack", "-L")
    assert "type=8" in live_ct and "dport=5353" in live_ct and "[UNREPLIED]" in live_ct
    assert "sport=40002 dport=5354" in live_ct and "sport=5353 dport=40002" in live_ct
    assert conntrack_lines(kp(f, "conntrack", "-L").output) == conntrack_lines(live_ct)
    show = json.loads(kp(f, "node", "show", "--json").output)
    routes = set(show["routes"])
    assert {"10.20.0.0/16 via 10.9.0.2 dev v0", "10.21.0.0/16 via 10.9.0.2 dev v0 metric 50",
            "blackhole 10.30.0.0/16", "fd20::/48 via fd09::2 dev v0 metric 1024"} <= routes
    assert show["sysctls"]["net.ipv4.ip_forward"] == "1"
    assert show["sysctls"]["net.ipv4.conf.v0.route_localnet"] == "1"
    assert show["origin"]["iptables_variant"] in ("nf_tables", "legacy")
    addrs = {i["name"]: i["addresses"] for i in show["interfaces"]}
    assert "10.9.0.1/24" in addrs["v0"] and "fd09::1/64" in addrs["v0"] and addrs["v2"][0] == "10.77.0.1/32"


def test_trace_answers_for_the_captured_node(lab: tuple[Netns, Netns], tmp_path: Path) -> None:
    node, _ = lab
    f = tmp_path / "captured.db"
    assert kp(f, "node", "capture", "--netns", node.name, "--conntrack").exit_code == 0

    def trace(*args: str) -> dict:
        res = kp(f, "trace", "--iif", "v0", "--src", "10.9.0.2", "--json", "--dry-run", *args)
        assert res.exit_code == 0, res.output
        return json.loads(res.output)[0]

    dnat = trace("--dst", "10.1.1.1", "--dport", "80")
    assert (dnat["fate"], dnat["packet"]["dst"], dnat["packet"]["dport"], dnat["out_dev"]) == \
        ("forwarded", "10.9.0.5", 8080, "v0")
    assert trace("--dst", "10.9.0.1", "--dport", "23")["fate"] == "dropped"
    assert trace("--dst", "10.9.0.1", "--dport", "22")["fate"] == "delivered"
    assert trace("--dst", "10.30.1.1", "--dport", "80")["fate"] != "forwarded"     # the blackhole route
    # the captured connection rewrites its packets though the DNAT rule is gone
    flow = trace("-p", "udp", "--sport", "40002", "--dst", "10.9.0.1", "--dport", "5354")
    assert (flow["fate"], flow["packet"]["dport"]) == ("delivered", 5353)
    fresh = trace("-p", "udp", "--sport", "40003", "--dst", "10.9.0.1", "--dport", "5354")
    assert fresh["packet"]["dport"] == 5354
    blocked = kp(f, "trace", "--iif", "v0", "--src", "10.66.1.1", "--dst", "10.9.0.1", "-p", "icmp", "--json",
                 "--dry-run")
    assert json.loads(blocked.output)[0]["fate"] == "dropped"                      # the nft set


def test_load_of_the_same_dumps_gives_the_same_node(lab: tuple[Netns, Netns], tmp_path: Path) -> None:
    node, _ = lab
    dumps = {"addr": ["ip", "-j", "addr"], "route": ["ip", "-j", "-4", "route"], "route6": ["ip", "-j", "-6", "route"],
             "iptables": ["iptables-save", "-c"], "ip6tables": ["ip6tables-save", "-c"],
             "nft": ["nft", "-j", "list", "ruleset"], "ipset": ["ipset", "save"]}
    args = []
    for kind, argv in dumps.items():
        path = tmp_path / kind
        path.write_text(real(node, *argv))
        args += [f"--{kind.rstrip('6') if kind == 'route6' else kind}", str(path)]
    captured, loaded = tmp_path / "captured.db", tmp_path / "loaded.db"
    assert kp(captured, "node", "capture", "--netns", node.name).exit_code == 0
    res = kp(loaded, "node", "load", *args)
    assert res.exit_code == 0, res.output
    for cmd in (["iptables-save", "-c"], ["ip6tables-save", "-c"], ["nft", "list", "ruleset"], ["ipset", "list"]):
        assert _no_comments(kp(loaded, *cmd).output) == _no_comments(kp(captured, *cmd).output), cmd
    one, two = (json.loads(kp(f, "node", "show", "--json").output) for f in (captured, loaded))
    assert (one["interfaces"], one["routes"]) == (two["interfaces"], two["routes"])
