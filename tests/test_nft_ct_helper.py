"""``ct helper set`` in the packet path (issue 12): a new connection gets the helper of the ``ct helper``
object a rule names (directly or through a map) when the object's protocol and family fit, and
``conntrack -L`` shows ``helper=NAME`` after the mark as conntrack-tools 1.4.7 does."""

from __future__ import annotations

import sys

import pytest

from kproxy.lab.netns import Netns
from kproxy.netfilter.ctformat import format_conn
from kproxy.nftables.cli import run_nft
from kproxy.nftables.evaluate import attach
from kproxy.nftables.model import Ruleset
from kproxy.node import Node
from kproxy.packet import Packet

RULES = """table inet f {
	ct helper h { type "ftp" protocol tcp; }
	ct helper t { type "tftp" protocol udp; l3proto ip6; }
	chain pre { type filter hook prerouting priority 0; policy accept;
		tcp dport 21 ct helper set "h"
		udp dport 69 ct helper set "t"
		ct helper set tcp dport map { 2121 : "h" }
		ct helper "ftp" counter
	}
}
"""


def test_new_connections_get_the_objects_helper() -> None:
    node = Node.from_description({"name": "n", "interfaces": [{"name": "eth0", "addresses": ["10.0.1.1/24"]}]})
    rc, _, err, node.nftables = run_nft(["-f", "-"], Ruleset(), RULES)
    assert rc == 0, err
    assert attach(node) == []
    got = {}
    for proto, port in (("tcp", 21), ("udp", 69), ("tcp", 2121), ("tcp", 22)):
        pkt = Packet.make("10.0.1.2", "10.0.1.1", proto, 4000, port)
        node.receive(pkt, "eth0")
        assert pkt.ct is not None
        got[port] = pkt.ct
    assert got[21].helper == "ftp" and got[2121].helper == "ftp"
    assert got[69].helper is None            # the object is for IPv6 only
    assert got[22].helper is None
    assert " mark=0 helper=ftp use=1" in format_conn(got[21], 0.0)
    assert "helper=" not in format_conn(got[22], 0.0)
    # ``ct helper`` matches the helper of a connection's master, which these connections have not
    listed = run_nft(["list", "chain", "inet", "f", "pre"], node.nftables)[1]
    assert 'ct helper "ftp" counter packets 0 bytes 0' in listed


LOOPBACK = """
import socket, subprocess
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 21)); s.listen()
c = socket.create_connection(("127.0.0.1", 21)); a, _ = s.accept(); c.send(b"x"); a.recv(1)
print(subprocess.run(["conntrack", "-L"], capture_output=True, text=True).stdout)
"""


@pytest.mark.kernel
def test_the_kernel_lists_the_helper_where_we_do() -> None:
    from tests.test_nft_compat import require_nft

    require_nft()
    ns = Netns.create("cth")
    try:
        ns.run(["ip", "link", "set", "lo", "up"])
        ns.run(["nft", "-f", "-"], input=RULES.replace("prerouting", "output").replace("chain pre", "chain out"))
        out = ns.run([sys.executable, "-c", LOOPBACK]).stdout
    finally:
        ns.delete()
    line = next(ln for ln in out.splitlines() if "dport=21 " in ln)
    assert line.endswith(" mark=0 helper=ftp use=1")
