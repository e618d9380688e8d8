"""The kernel harness's worker (``kproxy.lab.worker``): its packet parsing, its operations, and the
process the harness talks to over JSON lines (in the root namespace only for commands that change
nothing; sockets and sniffers run in a kp- namespace)."""

from __future__ import annotations

import io
import json
import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest

from kproxy.lab import worker
from kproxy.lab.kernel import Worker, worker_command, worker_env
from kproxy.lab.netns import Netns, kernel_lab_available

SYN, ACK, RST = 0x02, 0x10, 0x04


def ipv4(src: str, dst: str, proto: int, l4: bytes, ttl: int = 64) -> bytes:
    """An IPv4 header (no options, checksum left 0: the parser does not read it) followed by ``l4``."""
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, ttl, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + l4


def tcp(sport: int, dport: int, flags: int, seq: int = 0, ack: int = 0, win: int = 64240,
        options: bytes = b"", payload: bytes = b"") -> bytes:
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, win, 0, 0) + options + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


SYN_OPTIONS = bytes([2, 4, 0x05, 0xB4,      # MSS 1460
                     4, 2,                  # SACK permitted
                     1,                     # NOP
                     3, 3, 7,               # window scale 7
                     0, 0])                 # end of options, padding


# ---- parsing ------------------------------------------------------------------------------------------
def test_tcp_options_read_window_scale_and_sack_permitted():
    assert worker.tcp_options(SYN_OPTIONS) == (7, True)
    assert worker.tcp_options(b"") == (-1, False)
    assert worker.tcp_options(bytes([1, 1, 3, 3, 14])) == (14, False)
    # A length below 2 cannot be skipped: reading stops there, as the kernel's parser does.
    assert worker.tcp_options(bytes([4, 0, 3, 3, 9])) == (-1, False)
    assert worker.tcp_options(bytes([0, 3, 3, 9])) == (-1, False)           # after the end: ignored


def test_parse_ip_tcp_syn():
    pkt = ipv4("10.0.1.2", "10.96.0.1", 6, tcp(40000, 80, SYN, seq=0xDEADBEEF, win=29200, options=SYN_OPTIONS),
               ttl=63)
    d = worker.parse_ip(pkt)
    assert (d["proto"], d["src"], d["dst"], d["sport"], d["dport"]) == (6, "10.0.1.2", "10.96.0.1", 40000, 80)
    assert (d["flags"], d["seq"], d["ack"], d["win"], d["ttl"], d["len"]) == (SYN, 0xDEADBEEF, 0, 29200, 63, 52)
    assert (d["payload"], d["wscale"], d["sackperm"]) == (0, 7, True)


def test_parse_ip_tcp_payload_length_and_no_options():
    d = worker.parse_ip(ipv4("10.0.2.2", "10.0.1.2", 6, tcp(80, 40000, ACK, seq=5, ack=9, payload=b"hello")))
    assert (d["flags"], d["ack"], d["payload"], d["wscale"], d["sackperm"]) == (ACK, 9, 5, -1, False)


def test_parse_ip_icmp_error_quotes_the_packet_it_answers():
    quoted = ipv4("10.0.1.2", "10.9.9.9", 17, udp(5000, 55, b"kproxy"))
    error = ipv4("10.0.1.1", "10.0.1.2", 1, struct.pack("!BBHI", 3, 3, 0, 0) + quoted)
    d = worker.parse_ip(error)
    assert (d["proto"], d["type"], d["code"], d["src"]) == (1, 3, 3, "10.0.1.1")
    inner = d["inner"]
    assert (inner["proto"], inner["src"], inner["dst"], inner["sport"], inner["dport"]) == \
        (17, "10.0.1.2", "10.9.9.9", 5000, 55)


def test_parse_ip_echo_has_its_id_and_no_quoted_packet():
    d = worker.parse_ip(ipv4("10.0.1.2", "10.0.2.2", 1, worker.echo_request(0x1234)))
    assert (d["type"], d["code"], d["id"], d["sport"], d["dport"]) == (8, 0, 0x1234, 0, 0)
    assert "inner" not in d


def test_parse_frame_takes_only_ipv4():
    packet = ipv4("10.0.1.2", "10.0.2.2", 17, udp(1, 2))
    eth = b"\xff" * 6 + b"\x02" * 6
    assert worker.parse_frame(eth + b"\x08\x00" + packet)["dport"] == 2
    assert worker.parse_frame(eth + b"\x86\xdd" + packet) is None       # IPv6
    assert worker.parse_frame(eth + b"\x08\x06" + packet) is None       # ARP
    assert worker.parse_frame(eth + b"\x08\x00" + packet[:19]) is None  # too short for an IPv4 header


def test_checksum_is_rfc1071():
    assert worker.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D        # RFC 1071's worked example
    assert worker.checksum(b"\x01") == worker.checksum(b"\x01\x00")           # odd length: zero padded
    echo = worker.echo_request(77, b"abc")                                      # odd payload too
    assert echo[:2] == b"\x08\x00" and struct.unpack("!HH", echo[4:8]) == (77, 1)
    assert worker.checksum(echo) == 0                                           # a valid checksum sums to 0


# ---- operations, in this process ----------------------------------------------------------------------
def test_recorder_keeps_tcp_segments_both_ways_and_arrivals_until_drained():
    rec = worker.Recorder()
    syn = worker.parse_ip(ipv4("10.0.1.2", "10.0.2.2", 6, tcp(1000, 80, SYN)))
    dgram = worker.parse_ip(ipv4("10.0.1.2", "10.0.2.2", 17, udp(1000, 53)))
    rec.record_frame(syn, out=True, dev="eth0")        # sent: a segment, not a capture
    rec.record_frame(dgram, out=False, dev="eth0")     # received, not TCP: a capture only
    rec.record_frame(syn, out=False, dev="eth0")
    got = worker.handle(rec, {"op": "drain"})
    assert [s["out"] for s in got["segments"]] == [True, False]
    assert [c["proto"] for c in got["captured"]] == [17, 6]
    assert got["received"] == []
    assert worker.handle(rec, {"op": "drain"}) == {"captured": [], "received": [], "segments": []}


def test_handle_runs_commands_and_refuses_unknown_operations():
    rec = worker.Recorder()
    assert worker.handle(rec, {"op": "run", "argv": ["cat"], "input": "in\n"}) == {"rc": 0, "out": "in\n", "err": ""}
    res = worker.handle(rec, {"op": "run", "argv": ["sh", "-c", "echo oops >&2; exit 3"]})
    assert (res["rc"], res["err"]) == (3, "oops\n")
    assert worker.handle(rec, {"op": "teleport"}) == {"error": "unknown op"}
    assert worker.handle(rec, {}) == {"error": "unknown op"}
    assert worker.handle(rec, {"op": "close"}) == {}


def test_serve_answers_one_line_per_operation():
    out = io.StringIO()
    worker.serve(['{"op": "run", "argv": ["true"]}\n', '{"op": "nope"}\n'], out)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == \
        [{"rc": 0, "out": "", "err": ""}, {"error": "unknown op"}]


# ---- the process -------------------------------------------------------------------------------------
def test_the_module_runs_as_a_process_from_any_directory(tmp_path):
    ops = [{"op": "run", "argv": ["pwd"]}, {"op": "drain"}, {"op": "what"}]
    proc = subprocess.run(worker_command(), input="".join(json.dumps(o) + "\n" for o in ops), text=True,
                          capture_output=True, cwd=tmp_path, env=worker_env(), timeout=30)
    assert proc.returncode == 0, proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert answers == [{"rc": 0, "out": f"{tmp_path}\n", "err": ""},
                       {"captured": [], "received": [], "segments": []}, {"error": "unknown op"}]


@pytest.fixture
def ns_worker() -> Iterator[Worker]:
    reason = kernel_lab_available()
    if reason:
        pytest.skip(reason)
    ns = Netns.create("wk")
    w = Worker(ns.name)
    try:
        yield w
    finally:
        w.stop()
        ns.delete()


@pytest.mark.kernel
def test_the_worker_process_sends_listens_and_sniffs_in_a_namespace(ns_worker):
    w = ns_worker
    assert w.call(op="sniff", dev="lo") == {}
    assert w.call(op="listen", tcp=[8080], udp=[5353]) == {}
    assert w.call(op="drain", wait=0.1)["received"] == []
    udp_res = w.call(op="send", proto="udp", dst="127.0.0.1", dport=5353, timeout=1)
    tcp_res = w.call(op="send", proto="tcp", dst="127.0.0.1", dport=8080, timeout=1)
    closed = w.call(op="send", proto="tcp", dst="127.0.0.1", dport=9, timeout=1)
    ping = w.call(op="send", proto="icmp", dst="127.0.0.1", dport=0, sport=4242, timeout=1)
    assert udp_res["outcome"] == "reply" and tcp_res["outcome"] == "reply"
    assert closed["outcome"] == "refused"
    assert ping == {"outcome": "reply", "sport": 4242, "src": "127.0.0.1"}
    seen = w.call(op="drain", wait=0.05)
    assert sorted((r["proto"], r["dport"], r["sport"], r["dst"]) for r in seen["received"]) == \
        [(6, 8080, tcp_res["sport"], "127.0.0.1"), (17, 5353, udp_res["sport"], "127.0.0.1")]
    # The closed port answered the SYN with a reset, which the loopback sniffer saw.
    assert any(s["sport"] == 9 and s["dport"] == closed["sport"] and s["flags"] & RST for s in seen["segments"])
    assert any(c["proto"] == 1 and c.get("type") == 0 and c.get("id") == 4242 for c in seen["captured"])
    assert w.call(op="run", argv=["ip", "-o", "link", "show", "lo"])["rc"] == 0
