"""The new extensions in the packet path: header matches read the packet model, targets rewrite it
and say so in the trace, and what the model cannot know is reported, never guessed."""

from __future__ import annotations

import calendar

from kproxy.netfilter.trace import render_text
from kproxy.node import Node
from kproxy.packet import SYN, Packet


def router(rules: str) -> Node:
    node = Node.from_description({
        "name": "gw",
        "interfaces": [{"name": "eth0", "addresses": ["192.168.1.1/24"], "mtu": 1400},
                       {"name": "eth1", "addresses": ["10.0.0.1/24"]}],
        "routes": ["default via 192.168.1.254 dev eth0"],
    })
    node.iptables_restore(rules)
    return node


def test_ttl_tos_and_dscp_targets_rewrite_the_header_and_matches_read_it():
    node = router("""*mangle
-A FORWARD -m ttl --ttl-lt 10 -j DROP
-A FORWARD -j TTL --ttl-dec 3
-A FORWARD -m dscp --dscp-class AF41 -j DSCP --set-dscp-class EF
COMMIT
*filter
-A FORWARD -m dscp --dscp 0x2e -m ttl --ttl-eq 60 -j ACCEPT
-A FORWARD -j DROP
COMMIT
""")
    res = node.receive(Packet.make("10.0.0.5", "8.8.8.8", "udp", 1000, 53, ttl=64, tos=0x22 << 2 | 1), "eth1",
                       trace=True)
    assert res.fate == "forwarded"
    # ip_forward takes one off before the FORWARD hook (64 -> 63), then TTL --ttl-dec 3
    assert res.packet.ttl == 60 and res.packet.tos == (0x2E << 2 | 1)
    text = render_text(res.trace)
    assert "TTL: ttl 63 -> 60" in text and "DSCP: tos 0x89 -> 0xb9" in text
    low = node.receive(Packet.make("10.0.0.5", "8.8.8.8", "udp", 1000, 53, ttl=9), "eth1")
    assert low.fate == "dropped"
    plain = node.receive(Packet.make("10.0.0.5", "8.8.8.8", "udp", 1000, 53, ttl=64), "eth1")
    assert plain.fate == "dropped"      # dscp 0 is not rewritten, so the filter rule does not accept it


def test_tcpmss_clamps_syns_to_the_out_interface_mtu_and_the_match_sees_it():
    node = router("""*mangle
-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
COMMIT
*filter
-A FORWARD -p tcp -m tcpmss --mss 1361:65535 -j DROP
-A FORWARD -p tcp -m tcpmss ! --mss 0:1360 -j DROP
COMMIT
""")
    res = node.receive(Packet.make("10.0.0.5", "8.8.8.8", "tcp", 1000, 443, tcp_flags=SYN, tcp_mss=1460), "eth1")
    assert res.fate == "forwarded" and res.packet.tcp_mss == 1360       # eth0's MTU 1400 minus 40
    small = node.receive(Packet.make("10.0.0.5", "8.8.8.8", "tcp", 1001, 443, tcp_flags=SYN, tcp_mss=1200), "eth1")
    assert small.packet.tcp_mss == 1200


def test_owner_reads_the_socket_and_says_when_it_cannot_know():
    node = router("""*filter
-A OUTPUT -m owner --uid-owner 1000-1999 -j DROP
-A OUTPUT -m owner ! --socket-exists -j DROP
COMMIT
""")
    assert node.send(Packet.make("192.168.1.1", "8.8.8.8", "udp", 1000, 53, uid=1500)).fate == "dropped"
    assert node.send(Packet.make("192.168.1.1", "8.8.8.8", "udp", 1000, 53, uid=0)).fate != "dropped"
    res = node.send(Packet.make("192.168.1.1", "8.8.8.8", "udp", 1000, 53), trace=True)
    assert res.fate != "dropped"
    assert "owner: the sending socket's uid cannot be known here" in render_text(res.trace)


def test_rpfilter_drops_spoofed_sources_by_the_reverse_route():
    node = router("""*raw
-A PREROUTING -m rpfilter --invert -j DROP
COMMIT
""")
    assert node.receive(Packet.make("10.0.0.5", "8.8.8.8", "udp", 1, 53), "eth1").fate == "forwarded"
    assert node.receive(Packet.make("10.0.0.5", "8.8.8.8", "udp", 1, 53), "eth0").fate == "dropped"
    assert node.receive(Packet.make("8.8.4.4", "10.0.0.5", "udp", 53, 1), "eth0").fate == "forwarded"


def test_hashlimit_keeps_one_bucket_per_source_and_refills_with_time():
    node = router("""*filter
-A FORWARD -m hashlimit --hashlimit-upto 1/sec --hashlimit-burst 2 --hashlimit-mode srcip --hashlimit-name t -j ACCEPT
-A FORWARD -j DROP
COMMIT
""")
    node.clock = 100.0

    def fate(src: str) -> str:
        return node.receive(Packet.make(src, "8.8.8.8", "udp", 1, 53), "eth1").fate

    assert [fate("10.0.0.5") for _ in range(3)] == ["forwarded", "forwarded", "dropped"]
    assert fate("10.0.0.6") == "forwarded"          # another source has its own bucket
    node.clock += 1.0
    assert fate("10.0.0.5") == "forwarded" and fate("10.0.0.5") == "dropped"


def test_string_searches_the_payload_and_reports_an_unknown_one():
    node = router("""*filter
-A FORWARD -p tcp -m string --string "GET /admin" --algo bm -j DROP
COMMIT
""")
    bad = Packet.make("10.0.0.5", "8.8.8.8", "tcp", 1000, 80, payload=b"GET /admin HTTP/1.1\r\n")
    good = Packet.make("10.0.0.5", "8.8.8.8", "tcp", 1000, 80, payload=b"GET / HTTP/1.1\r\n")
    assert node.receive(bad, "eth1").fate == "dropped"
    assert node.receive(good, "eth1").fate == "forwarded"
    res = node.receive(Packet.make("10.0.0.5", "8.8.8.8", "tcp", 1000, 80), "eth1", trace=True)
    assert res.fate == "forwarded"
    assert "string: the packet's payload cannot be known here" in render_text(res.trace)


def test_quota_counts_bytes_per_rule():
    node = router("""*filter
-A FORWARD -m quota --quota 250 -j ACCEPT
-A FORWARD -j DROP
COMMIT
""")
    fates = [node.receive(Packet.make("10.0.0.5", "8.8.8.8", "udp", 1, 53, length=100), "eth1").fate
             for _ in range(3)]
    assert fates == ["forwarded", "forwarded", "dropped"]


def test_connlimit_counts_tracked_connections_per_source():
    node = router("""*filter
-A FORWARD -p tcp --syn -m connlimit --connlimit-above 2 -j DROP
COMMIT
""")
    fates = [node.receive(Packet.make("10.0.0.5", "8.8.8.8", "tcp", 1000 + i, 80, tcp_flags=SYN), "eth1").fate
             for i in range(3)]
    assert fates == ["forwarded", "forwarded", "dropped"]
    assert node.receive(Packet.make("10.0.0.6", "8.8.8.8", "tcp", 1000, 80, tcp_flags=SYN), "eth1").fate == "forwarded"


def test_u32_reads_the_headers_and_time_reads_the_clock():
    node = router("""*filter
-A FORWARD -p tcp -m u32 --u32 "0>>22&0x3C@0>>16=8080" -j DROP
-A FORWARD -m time --timestart 09:00 --timestop 17:00 --weekdays Mon,Tue,Wed,Thu,Fri -j ACCEPT
-A FORWARD -j DROP
COMMIT
""")
    node.clock = float(calendar.timegm((2024, 1, 9, 10, 0, 0)))      # a Tuesday, 10:00 UTC
    assert node.receive(Packet.make("10.0.0.5", "8.8.8.8", "tcp", 8080, 80), "eth1").fate == "dropped"
    assert node.receive(Packet.make("10.0.0.5", "8.8.8.8", "tcp", 8081, 80), "eth1").fate == "forwarded"
    node.clock += 8 * 3600                          # 18:00: outside the hours
    assert node.receive(Packet.make("10.0.0.5", "8.8.8.8", "tcp", 8081, 80), "eth1").fate == "dropped"
    node.clock += 4 * 86400 - 8 * 3600              # Saturday 10:00
    assert node.receive(Packet.make("10.0.0.5", "8.8.8.8", "tcp", 8081, 80), "eth1").fate == "dropped"


def test_bpf_runs_the_classic_program_over_the_packet():
    # "ip protocol 6" as nfbpf_compile writes it: ldb [9]; jeq #6; ret #1; ret #0
    node = router("""*filter
-A FORWARD -m bpf --bytecode "4,48 0 0 9,21 0 1 6,6 0 0 1,6 0 0 0" -j DROP
COMMIT
""")
    assert node.receive(Packet.make("10.0.0.5", "8.8.8.8", "tcp", 1, 80), "eth1").fate == "dropped"
    assert node.receive(Packet.make("10.0.0.5", "8.8.8.8", "udp", 1, 53), "eth1").fate == "forwarded"


def test_trace_command_sends_the_header_fields_the_extensions_read(tmp_path):
    import json

    from click.testing import CliRunner

    import kproxy.cli.commands  # noqa: F401
    from kproxy.cli.main import cli

    node = str(tmp_path / "n.json")

    def run(*args: str):
        return CliRunner().invoke(cli, ["--node", node, *args])

    assert run("iptables", "-A", "OUTPUT", "-m", "owner", "--uid-owner", "1000", "-j", "DROP").exit_code == 0
    assert run("iptables", "-A", "OUTPUT", "-m", "ttl", "--ttl-lt", "5", "-j", "REJECT").exit_code == 0
    assert run("iptables", "-A", "OUTPUT", "-m", "string", "--string", "secret", "--algo", "bm", "-j", "DROP").exit_code == 0
    fate = [json.loads(run("trace", "--local", "--dst", "192.0.2.1", "-p", "udp", "--dport", "53", *extra,
                           "--json").output)[0]["fate"]
            for extra in (["--uid", "1000"], ["--uid", "0", "--ttl", "3"], ["--uid", "0", "--payload", "a secret"],
                          ["--uid", "0", "--payload", "nothing", "--tos", "0x10"])]
    assert fate[0] == "dropped" and fate[1] == "rejected" and fate[2] == "dropped" and fate[3] != "dropped"
    bad = run("trace", "--local", "--dst", "192.0.2.1", "--ttl", "300")
    assert bad.exit_code != 0 and "--ttl: 300 out of range (0-255)" in bad.output
