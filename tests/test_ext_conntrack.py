"""The conntrack/NAT iptables extensions: conntrack, state, connmark, CONNMARK, CT, NOTRACK, DNAT, SNAT,
MASQUERADE, REDIRECT. What they match and do on the emulated node, and how they parse, save, list and
fail, compared with iptables-nft 1.8.9 in a kp- namespace."""

from __future__ import annotations

import pytest

from kproxy.iptables.commands import run_iptables
from kproxy.iptables.restore import restore
from kproxy.iptables.save import save
from kproxy.iptables.state import IptablesState
from kproxy.node import Node
from kproxy.packet import ACK, SYN, Packet, parse_addr

C, S = "192.168.1.5", "192.168.1.10"


def ip(text: str) -> int:
    return parse_addr(text)[1]


def node(rules: str) -> Node:
    n = Node.default()
    n.clock = 50.0
    n.iptables_restore(rules)
    return n


def hits(n: Node, chain: str = "INPUT", table: str = "filter") -> list[int]:
    return [r.packets for r in n.iptables[4].tables[table].chains[chain].rules]


def udp_in(n: Node, sport: int = 1000, dport: int = 53, mark: int = 0):
    return n.receive(Packet.make(C, S, "udp", sport, dport, mark=mark), "eth0")


def udp_out(n: Node, sport: int = 53, dport: int = 1000):
    return n.send(Packet.make(S, C, "udp", sport, dport))


# ---- conntrack and state matches ------------------------------------------------------------------

def test_ctstate_and_state_follow_the_flow():
    n = node("""*filter
-A INPUT -m conntrack --ctstate NEW
-A INPUT -m conntrack --ctstate ESTABLISHED
-A INPUT -m state --state NEW,ESTABLISHED
-A INPUT -m conntrack ! --ctstate INVALID
-A INPUT -m conntrack --ctstate INVALID
COMMIT
""")
    udp_in(n)
    assert hits(n) == [1, 0, 1, 1, 0]
    udp_out(n)
    udp_in(n)
    assert hits(n) == [1, 1, 2, 2, 0]
    n.receive(Packet.make(C, S, "tcp", 5, 6, tcp_flags=ACK | 0x01 | SYN), "eth0")      # SYN+FIN+ACK
    assert hits(n) == [1, 1, 2, 2, 1]


def test_snat_and_dnat_are_virtual_states_of_natted_flows():
    n = Node.from_description({"interfaces": [{"name": "eth0", "addresses": ["192.168.1.10/24"]},
                                              {"name": "cni0", "addresses": ["10.244.1.1/24"]}]})
    n.iptables_restore("""*nat
-A PREROUTING -d 10.96.0.10/32 -p udp -j DNAT --to-destination 10.244.1.7
COMMIT
*filter
-A FORWARD -m conntrack --ctstate DNAT
-A FORWARD -m conntrack --ctstate SNAT
-A FORWARD -m conntrack --ctstate NEW,SNAT --ctorigdst 10.96.0.10 --ctrepldst 192.168.1.5
-A FORWARD -m conntrack --ctreplsrc 10.244.1.0/24 --ctproto udp --ctorigdstport 53 --ctrepldstport 1000:1001
-A FORWARD -m conntrack --ctdir ORIGINAL
-A FORWARD -m conntrack --ctdir REPLY
COMMIT
""")
    n.receive(Packet.make(C, "10.96.0.10", "udp", 1000, 53), "eth0")
    assert hits(n, "FORWARD") == [1, 0, 1, 1, 1, 0]
    n.receive(Packet.make("10.244.1.7", C, "udp", 53, 1000), "cni0")
    assert hits(n, "FORWARD") == [2, 0, 1, 2, 1, 1]


def test_without_a_connection_only_the_state_test_can_match():
    """conntrack_mt: without a connection (INVALID, UNTRACKED) the state test decides alone: other options
    fail even inverted, and are ignored beside --ctstate (checked on a 6.18 kernel: 0 0 1 1 1)."""
    n = node("""*raw
-A PREROUTING -p udp --dport 9 -j CT --notrack
COMMIT
*filter
-A INPUT -m conntrack ! --ctproto tcp
-A INPUT -m conntrack ! --ctstatus ASSURED
-A INPUT -m conntrack --ctstate UNTRACKED
-A INPUT -m conntrack --ctstate UNTRACKED --ctdir REPLY
-A INPUT -m state --state UNTRACKED
COMMIT
""")
    udp_in(n, dport=9)
    assert hits(n) == [0, 0, 1, 1, 1]
    udp_in(n, dport=53)
    assert hits(n) == [1, 1, 1, 1, 1]


def test_ctstatus_and_ctexpire():
    n = node("""*filter
-A INPUT -m conntrack --ctstatus SEEN_REPLY
-A INPUT -m conntrack --ctstatus ASSURED
-A INPUT -m conntrack --ctstatus NONE
-A INPUT -m conntrack --ctexpire 0:29
-A INPUT -m conntrack ! --ctexpire 30
COMMIT
""")
    udp_in(n)                 # before the packet's own refresh the table says 30 s
    assert hits(n) == [0, 0, 0, 0, 0]
    udp_out(n)
    n.clock = (n.clock or 0) + 3
    udp_in(n)                 # a stream now: assured, 120 s
    assert hits(n) == [1, 1, 0, 0, 1]


# ---- connmark and CONNMARK -------------------------------------------------------------------------

def test_connmark_set_save_and_restore():
    n = node("""*mangle
-A PREROUTING -m connmark --mark 0x0/0xff00 -j CONNMARK --set-xmark 0x100/0xff00
-A PREROUTING -m mark --mark 0x7/0xff -j CONNMARK --save-mark --mask 0xff
-A PREROUTING -j CONNMARK --restore-mark --nfmask 0xf0000 --ctmask 0xf0000
-A PREROUTING -m connmark --mark 0x107/0xffff
COMMIT
""")
    res = udp_in(n, mark=0x7)
    conn = n.conntrack.entries()[0]
    assert conn.mark == 0x107 and res.packet.mark == 0x7
    assert hits(n, "PREROUTING", "mangle") == [1, 1, 1, 1]
    conn.mark |= 0x30000
    again = udp_in(n, mark=0x0)
    assert again.packet.mark == 0x30000              # restored only the masked bits
    assert hits(n, "PREROUTING", "mangle") == [1, 1, 2, 2]   # the connection mark is still 0x107 below 0xffff


def test_connmark_on_an_untracked_packet_never_matches():
    n = node("*raw\n-A PREROUTING -j CT --notrack\nCOMMIT\n*filter\n-A INPUT -m connmark ! --mark 0x1\nCOMMIT\n")
    udp_in(n)
    assert hits(n) == [0]


# ---- CT / NOTRACK ----------------------------------------------------------------------------------

def test_notrack_targets_leave_packets_untracked():
    n = node("*raw\n-A PREROUTING -p udp --dport 1 -j NOTRACK\n-A PREROUTING -p udp --dport 2 -j CT --notrack\n"
             "-A PREROUTING -p udp --dport 3 -j CT --zone 4\nCOMMIT\n")
    assert udp_in(n, dport=1).packet.ctstate == "UNTRACKED"
    assert udp_in(n, dport=2).packet.ctstate == "UNTRACKED"
    assert udp_in(n, dport=3).packet.ctstate == "NEW"
    assert len(n.conntrack.entries()) == 1


# ---- NAT targets -------------------------------------------------------------------------------------

def test_nat_targets_bind_through_the_nat_core():
    n = Node.from_description({"interfaces": [{"name": "eth0", "addresses": ["192.168.1.10/24"]},
                                              {"name": "cni0", "addresses": ["10.244.1.1/24"]}]})
    n.iptables_restore("""*nat
-A PREROUTING -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.7:8080
-A PREROUTING -p tcp -m tcp --dport 81 -j REDIRECT --to-ports 9000
-A POSTROUTING -o cni0 -p tcp -j SNAT --to-source 10.244.1.1:40000-40010
COMMIT
""")
    dn = n.receive(Packet.make(C, "10.96.0.1", "tcp", 1234, 80, tcp_flags=SYN), "eth0").packet
    assert (dn.dst_str, dn.dport, dn.src_str) == ("10.244.1.7", 8080, "10.244.1.1")
    assert 40000 <= dn.sport <= 40010
    red = n.receive(Packet.make(C, "10.96.0.1", "tcp", 1234, 81, tcp_flags=SYN), "eth0")
    assert red.fate == "delivered" and (red.packet.dst_str, red.packet.dport) == ("192.168.1.10", 9000)


# ---- against iptables 1.8.9 ------------------------------------------------------------------------------

RULES = """*raw
-A PREROUTING -p udp -m udp --dport 53 -j CT --notrack
-A PREROUTING -j CT --zone 1
-A PREROUTING -j CT --notrack --zone 7
-A PREROUTING -j CT
-A OUTPUT -j NOTRACK
COMMIT
*mangle
-A PREROUTING -j CONNMARK --save-mark
-A PREROUTING -j CONNMARK --save-mark --mask 0xff
-A PREROUTING -j CONNMARK --save-mark --nfmask 0xf --ctmask 0xff
-A PREROUTING -j CONNMARK --restore-mark --nfmask 0xff
-A PREROUTING -j CONNMARK --restore-mark --mask 0xffffffff
-A PREROUTING -j CONNMARK --set-xmark 0x1/0xff
-A PREROUTING -j CONNMARK --set-mark 0x5/0xf
-A PREROUTING -j CONNMARK --set-xmark 5
-A PREROUTING -j CONNMARK --and-mark 0xf
-A PREROUTING -j CONNMARK --or-mark 0xf
-A PREROUTING -j CONNMARK --xor-mark 0xf
-A PREROUTING -j CONNMARK --and-mark 0 --mask 5
-A PREROUTING -m connmark --mark 0x1/0xff
-A PREROUTING -m connmark ! --mark 1/1
-A PREROUTING -m connmark --mark 5/0xffffffff
COMMIT
*nat
-A PREROUTING -p tcp -j DNAT --to-destination 10.244.1.5:8080
-A PREROUTING -p tcp -j DNAT --to-destination 1.2.3.4:80-90/100 --persistent
-A PREROUTING -p tcp -j DNAT --to-destination 1.2.3.4-1.2.3.4:0x50
-A PREROUTING -p tcp -j DNAT --to-destination 1.2.3.5-1.2.3.4:http --random
-A PREROUTING -p tcp -j REDIRECT --to-ports 0
-A OUTPUT -p udp -j REDIRECT --to-ports 5300-5310 --random
-A POSTROUTING -p tcp -j MASQUERADE --to-ports 0
-A POSTROUTING -p udp -j SNAT --to-source 1.2.3.4:80-90/100
-A POSTROUTING -j SNAT --to-source 1.2.3.4-1.2.3.9 --random-fully --persistent
COMMIT
*filter
-A INPUT -m conntrack --ctorigsrcport 99999 --ctrepldstport 10:5 --ctreplsrcport 10: --ctorigdstport :10
-A INPUT -m conntrack --ctorigsrcport http --ctexpire 10:5
-A INPUT -m conntrack ! --ctproto udp ! --ctstatus ASSURED ! --ctexpire 5 ! --ctorigsrcport 1:2 ! --ctstate NEW
-A INPUT -m conntrack ! --ctorigsrc 1.1.1.1 ! --ctrepldstport 7 --ctdir original
-A INPUT -m conntrack --ctstate new,established --ctproto all --ctstatus assured,none
-A INPUT -m conntrack --ctstate SNAT,DNAT,UNTRACKED,INVALID,RELATED --ctstatus NONE
-A INPUT -m conntrack --ctorigsrc 10.0.0.0/255.0.0.0 --ctorigdst 1.2.3.4/32 --ctreplsrc 1.2.3.0/24
-A INPUT -m conntrack --ctstatus EXPECTED,SEEN_REPLY,ASSURED,CONFIRMED --ctdir REPLY
-A INPUT -m state --state UNTRACKED,new
-A INPUT -m state ! --state NEW,ESTABLISHED
COMMIT
"""

BAD = [
    "-A INPUT -m conntrack", "-A INPUT -m conntrack --ctstate FOO", "-A INPUT -m conntrack --ctstate NEW,",
    "-A INPUT -m conntrack --ctstate NEW --ctstate ESTABLISHED", "-A INPUT -m conntrack --ctdir foo",
    "-A INPUT -m conntrack ! --ctdir REPLY", "-A INPUT -m conntrack --ctstatus foo",
    "-A INPUT -m conntrack --ctproto foo", "-A INPUT -m conntrack --ctorigsrc 1.2.3.400",
    "-A INPUT -m conntrack --ctrepldst ::1", "-A INPUT -m conntrack --ctorigsrcport abc",
    "-A INPUT -m conntrack --ctorigsrcport 1:2:3", "-A INPUT -m conntrack --ctexpire abc",
    "-A INPUT -m conntrack --ctexpire 4294967296", "-A INPUT -m state", "-A INPUT -m state --state SNAT",
    "-A INPUT -m state --state new,", "-A INPUT -m state --state NEW --state INVALID",
    "-A INPUT -m connmark", "-A INPUT -m connmark --mark foo", "-A INPUT -m connmark --mark 0x100000000",
    "-A INPUT -m connmark --mark 1/0 --mark 2", "-A INPUT -j CONNMARK", "-A INPUT -j CONNMARK --ctmask 1",
    "-A INPUT -j CONNMARK --set-mark 1 --save-mark", "-A INPUT -j CONNMARK --save-mark --restore-mark",
    "-A INPUT -j CONNMARK --save-mark --mask 0xff --nfmask 0xf", "-A INPUT -j CONNMARK --set-mark foo",
    "-A INPUT -j CONNMARK --and-mark foo", "-A INPUT -j CONNMARK --set-mark 5 --set-mark 1",
    "-t raw -A PREROUTING -j CT --zone foo", "-t raw -A PREROUTING -j CT --zone 70000", "-A INPUT -j CT --notrack",
    "-t nat -A PREROUTING -j DNAT", "-t nat -A POSTROUTING -j SNAT",
    "-t nat -A PREROUTING -j DNAT --to-destination 1.2.3.4:80",
    "-t nat -A PREROUTING -p tcp -j DNAT --to-destination 1.2.3.4:99999",
    "-t nat -A PREROUTING -p tcp -j DNAT --to-destination 1.2.3.4:90-80",
    "-t nat -A PREROUTING -p tcp -j DNAT --to-destination 1.2.3.4:80:90",
    "-t nat -A PREROUTING -p tcp -j DNAT --to-destination 1.2.3.4-",
    "-t nat -A PREROUTING -p tcp -j DNAT --to-destination 1.2.3.4:80/90",
    "-t nat -A PREROUTING -p tcp -j DNAT --to-destination 1.2.3.4:080",
    "-t nat -A PREROUTING -p tcp -j DNAT --to-destination 1.2.3.4:80-http",
    "-t nat -A PREROUTING -p tcp -j DNAT --to-destination 01.2.3.4",
    "-t nat -A PREROUTING -p tcp -j DNAT --to-destination 1.2.3.4 --to-destination 1.2.3.5",
    "-t nat -A PREROUTING -p tcp -j DNAT --to-destination 1.2.3.4 --random-fully",
    "-t nat -A POSTROUTING -p tcp -j DNAT --to-destination 1.2.3.4",
    "-t nat -A PREROUTING -p tcp -j SNAT --to-source 1.2.3.4",
    "-t nat -A POSTROUTING -j MASQUERADE --to-ports 80", "-t nat -A POSTROUTING -p tcp -j MASQUERADE --to-ports 80:90",
    "-t nat -A POSTROUTING -p tcp -j MASQUERADE --to-ports 90-80", "-t nat -A POSTROUTING -p tcp -j MASQUERADE --to-ports 80-",
    "-t nat -A POSTROUTING -p tcp -j MASQUERADE --to-ports 80 --to-ports 81", "-t nat -A PREROUTING -j MASQUERADE",
    "-t nat -A PREROUTING -p tcp -j REDIRECT --to-ports 80 --random-fully",
    "-t nat -A POSTROUTING -p tcp -j REDIRECT --to-ports 80", "-A INPUT -j DNAT --to-destination 1.2.3.4",
]


def strip(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


@pytest.mark.kernel
def test_rules_save_like_the_real_tool(kernel_ns):
    kernel_ns.run(["iptables-restore"], input=RULES)
    theirs = strip(kernel_ns.run(["iptables-save"]).stdout)
    state = IptablesState(4)
    restore(RULES, state)
    assert save(state, header=False) == theirs
    again = IptablesState(4)
    restore(theirs, again)
    assert save(again, header=False) == theirs


@pytest.mark.kernel
@pytest.mark.parametrize("table", ["raw", "mangle", "nat", "filter"])
@pytest.mark.parametrize("flags", ["-L -n -v", "-L -n", "-S"])
def test_rules_list_like_the_real_tool(kernel_ns, table, flags):
    kernel_ns.run(["iptables-restore"], input=RULES)
    argv = ["-t", table, *flags.split()]
    theirs = kernel_ns.run(["iptables", *argv])
    state = IptablesState(4)
    restore(RULES, state)
    assert run_iptables(argv, state) == (theirs.returncode, theirs.stdout, theirs.stderr)


@pytest.mark.kernel
@pytest.mark.parametrize("line", BAD)
def test_bad_values_fail_like_the_real_tool(kernel_ns, line):
    theirs = kernel_ns.run(["iptables", *line.split()], check=False)
    assert theirs.returncode != 0
    assert run_iptables(line.split(), IptablesState(4)) == (theirs.returncode, theirs.stdout, theirs.stderr)
