"""The kernel harness's worker: one long-lived process per namespace, driven by JSON lines.

    ip netns exec kp-xxxxxx-n python -u -m kproxy.lab.worker

Each line on stdin is one operation (``{"op": ...}``); each answer is one JSON line on stdout:

    sniff  {dev}                      record every IPv4 packet on ``dev`` (AF_PACKET) from now on
    listen {tcp: [ports], udp: [ports]}  accept connections / echo datagrams, recording who came
    send   {proto, dst, dport, ...}   one TCP connect, UDP datagram or ICMP echo; its outcome
    drain  {wait}                     everything recorded since the last drain (and forget it)
    close                             close the TCP sockets ``send`` kept open (``linger``)
    run    {argv, input}              a command in this namespace: ``{rc, out, err}``

The worker imports only the standard library (it starts in milliseconds, and nothing it does touches
the emulator), so ``kproxy.lab.kernel`` pays one process start per namespace, not per observation.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import IO, Any

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
PKTINFO = getattr(socket, "IP_PKTINFO", 8)
ETH_P_ALL = 0x0003                      # both directions, every protocol
ICMP_ERRORS = (3, 4, 5, 11, 12)         # types that quote the packet they answer
Packet = dict[str, Any]


# ---- packets, as the sniffers and the ping see them -------------------------------------------------
def l4_ports(proto: int, l4: bytes) -> Packet:
    """Ports of TCP, UDP and SCTP (0 for the rest); type, code and id of ICMP."""
    d: Packet = {"sport": 0, "dport": 0}
    if proto in (6, 17, 132) and len(l4) >= 4:
        d["sport"], d["dport"] = struct.unpack("!HH", l4[:4])
    elif proto == 1 and len(l4) >= 8:
        d["type"], d["code"] = l4[0], l4[1]
        d["id"] = struct.unpack("!H", l4[4:6])[0]
    return d


def tcp_options(opts: bytes) -> tuple[int, bool]:
    """The window scale (-1 when absent) and SACK-permitted options of a TCP header's option bytes."""
    wscale, sackperm, i = -1, False, 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:                   # end of options
            break
        if kind == 1:                   # no-op padding
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2:
            break                       # malformed length: the rest cannot be read
        if kind == 3 and opts[i + 1] == 3:
            wscale = opts[i + 2]
        elif kind == 4 and opts[i + 1] == 2:
            sackperm = True
        i += opts[i + 1]
    return wscale, sackperm


def parse_ip(ip: bytes) -> Packet:
    """An IPv4 packet's addresses, protocol, ports, TCP details and (ICMP errors) the quoted packet."""
    ihl = (ip[0] & 15) * 4
    proto = ip[9]
    d: Packet = {"proto": proto, "src": socket.inet_ntoa(ip[12:16]), "dst": socket.inet_ntoa(ip[16:20]),
                 "flags": 0, "ttl": ip[8], "len": struct.unpack("!H", ip[2:4])[0]}
    l4 = ip[ihl:]
    d.update(l4_ports(proto, l4))
    if proto == 6 and len(l4) >= 20:
        d["flags"] = l4[13]
        d["seq"], d["ack"] = struct.unpack("!II", l4[4:12])
        d["win"] = struct.unpack("!H", l4[14:16])[0]
        doff = (l4[12] >> 4) * 4
        d["payload"] = d["len"] - ihl - doff
        d["wscale"], d["sackperm"] = tcp_options(l4[20:doff])
    if proto == 1 and d.get("type") in ICMP_ERRORS and len(l4) >= 28:
        d["inner"] = parse_ip(l4[8:])
    return d


def parse_frame(frame: bytes) -> Packet | None:
    """An Ethernet frame's IPv4 packet (None for anything else, or too short to hold one)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    return parse_ip(frame[14:])


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, payload: bytes = b"kproxy-probe") -> bytes:
    """An ICMP echo request (sequence 1) with a valid checksum."""
    body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + payload
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


# ---- the worker's state and operations ----------------------------------------------------------------
class Recorder:
    """What the sniffers and listeners saw since the last drain, shared with their threads.

    (A plain class: importing dataclasses would add to every worker's start.)"""

    def __init__(self) -> None:
        self.captured: list[Packet] = []          # every packet arriving on a sniffed link
        self.received: list[Packet] = []          # who reached a listener, and at what address
        self.segments: list[Packet] = []          # every TCP segment, both directions
        self.accepted: list[socket.socket] = []   # never closed (see tcp_listener)
        self.kept: list[socket.socket] = []       # TCP clients ``send`` left open (linger)
        self.lock = threading.Lock()

    def record_frame(self, d: Packet, out: bool, dev: str) -> None:
        with self.lock:
            if d["proto"] == 6:
                self.segments.append(dict(d, out=out, dev=dev))
            if not out:
                self.captured.append(d)

    def record_arrival(self, entry: Packet) -> None:
        with self.lock:
            self.received.append(entry)

    def drain(self) -> Packet:
        with self.lock:
            res = {"captured": self.captured[:], "received": self.received[:], "segments": self.segments[:]}
            self.captured.clear()
            self.received.clear()
            self.segments.clear()
        return res


def sniff(rec: Recorder, dev: str) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((dev, 0))
    while True:
        frame, addr = s.recvfrom(65535)
        out = addr[2] == socket.PACKET_OUTGOING
        if out and dev == "lo":
            continue            # looped back: seen again as it comes in
        d = parse_frame(frame)
        if d is not None:
            rec.record_frame(d, out, dev)


def udp_listener(rec: Recorder, port: int) -> None:
    """Echo every datagram from the address it was sent to (IP_PKTINFO), as a server bound to it would."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IP, PKTINFO, 1)
    s.bind(("0.0.0.0", port))
    while True:
        data, anc, _, peer = s.recvmsg(2048, socket.CMSG_SPACE(12))
        dst = b"\0\0\0\0"
        for level, kind, cdata in anc:
            if level == socket.IPPROTO_IP and kind == PKTINFO:
                dst = cdata[8:12]
        rec.record_arrival({"proto": 17, "src": peer[0], "sport": peer[1], "dst": socket.inet_ntoa(dst),
                            "dport": port})
        try:
            s.sendmsg([data], [(socket.IPPROTO_IP, PKTINFO, struct.pack("I4s4s", 0, dst, b"\0\0\0\0"))], 0, peer)
        except OSError:
            pass   # the answer was dropped on its way out (EPERM from an OUTPUT rule, say)


def tcp_listener(rec: Recorder, port: int) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(128)
    while True:
        try:
            c, peer = s.accept()
        except OSError:
            continue
        rec.record_arrival({"proto": 6, "src": peer[0], "sport": peer[1], "dst": c.getsockname()[0],
                            "dport": port})
        rec.accepted.append(c)   # never closed: a late FIN would cross the node during a later probe


def prepare(s: socket.socket, op: Packet) -> None:
    """Bind the sender as the operation asks (device, address, port) and set its timeout."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if op.get("dev"):
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, op["dev"].encode())
    if op.get("src") or op.get("sport"):
        s.bind((op.get("src") or "0.0.0.0", op.get("sport", 0)))
    s.settimeout(op.get("timeout", 0.3))


def ping(op: Packet) -> Packet:
    """One echo request from a raw socket; the answer is the echo reply with our id, or an ICMP error quoting it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = op.get("sport") or (os.getpid() + int(time.time() * 1000)) & 0xFFFF or 1
    op = dict(op, sport=0)
    prepare(s, op)
    out: Packet = {"outcome": "timeout", "sport": ident}
    deadline = time.monotonic() + op.get("timeout", 0.3)
    try:
        s.sendto(echo_request(ident), (op["dst"], 0))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            d = parse_ip(s.recv(2048))
            if d.get("type") == 0 and d.get("id") == ident:
                out.update(outcome="reply", src=d["src"])
                break
            inner = d.get("inner")
            if inner and inner["proto"] == 1 and inner.get("id") == ident:
                out.update(outcome="unreachable", src=d["src"], type=d["type"], code=d["code"])
                break
    except (TimeoutError, PermissionError):
        pass
    except OSError as exc:
        out.update(outcome="unreachable", errno=exc.errno)
    finally:
        s.close()
    return out


def send_udp(op: Packet) -> Packet:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    prepare(s, op)
    s.connect((op["dst"], op["dport"]))
    sport = s.getsockname()[1]
    try:
        s.send(b"kproxy")
        s.recvfrom(2048)
        return {"outcome": "reply", "sport": sport}
    except ConnectionRefusedError:
        return {"outcome": "refused", "sport": sport}
    except (TimeoutError, PermissionError):
        # EPERM: an OUTPUT rule dropped the datagram on its way out; nothing was sent.
        return {"outcome": "timeout", "sport": sport}
    except OSError as exc:
        return {"outcome": "unreachable", "sport": sport, "errno": exc.errno}
    finally:
        s.close()


def send_tcp(rec: Recorder, op: Packet) -> Packet:
    """A connect; closed at once with a reset (SO_LINGER 0) unless ``linger`` keeps it for ``close``."""
    s = socket.socket()
    prepare(s, op)
    out: Packet
    try:
        s.connect((op["dst"], op["dport"]))
        out = {"outcome": "reply"}
    except ConnectionRefusedError:
        out = {"outcome": "refused"}
    except (TimeoutError, PermissionError):
        out = {"outcome": "timeout"}
    except OSError as exc:
        out = {"outcome": "unreachable", "errno": exc.errno}
    out["sport"] = s.getsockname()[1]
    if op.get("linger"):
        rec.kept.append(s)
    else:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    return out


def send(rec: Recorder, op: Packet) -> Packet:
    if op["proto"] == "icmp":
        return ping(op)
    if op["proto"] == "udp":
        return send_udp(op)
    return send_tcp(rec, op)


def _thread(target: Any, *args: Any) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()


def handle(rec: Recorder, op: Packet) -> Packet:
    """Carry out one operation; the answer line's content."""
    kind = op.get("op")
    if kind == "sniff":
        _thread(sniff, rec, op["dev"])
        return {}
    if kind == "listen":
        for p in op.get("udp", []):
            _thread(udp_listener, rec, p)
        for p in op.get("tcp", []):
            _thread(tcp_listener, rec, p)
        return {}
    if kind == "drain":
        time.sleep(op.get("wait", 0))
        return rec.drain()
    if kind == "send":
        return send(rec, op)
    if kind == "close":
        for s in rec.kept:
            s.close()
        rec.kept.clear()
        return {}
    if kind == "run":
        p = subprocess.run(op["argv"], input=op.get("input"), capture_output=True, text=True)
        return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}
    return {"error": "unknown op"}


def serve(lines: Iterable[str], out: IO[str], rec: Recorder | None = None) -> None:
    """Answer each operation line with one JSON line, flushed at once (the harness waits for it)."""
    rec = rec or Recorder()
    for line in lines:
        out.write(json.dumps(handle(rec, json.loads(line))) + "\n")
        out.flush()


def main() -> None:
    serve(sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()
