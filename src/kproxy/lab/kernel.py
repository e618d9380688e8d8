"""A kernel harness: client ─ node ─ sink as kp- network namespaces, real sockets, and what the kernel did.

    client 10.0.1.2/24 (eth0) ── eth0 10.0.1.1/24  node  eth1 10.0.2.1/24 ── (eth0) 10.0.2.2/24 sink

(names and addresses are a ``Topology``; the client may hold extra addresses the node routes back.)
The node forwards, and routes everything else to the sink. The sink answers for every address: its
own nat table REDIRECTs all TCP, UDP and ICMP echo arriving on its link to itself, and its conntrack
puts the original destination back as the source of the answers. A packet socket (AF_PACKET) on the
sink's link records every packet before netfilter sees it, with the addresses and ports it arrived
with. This was chosen over a ``local 0.0.0.0/0`` route (which answers from the right address only for
sockets bound with IP_FREEBIND and cannot answer ICMP echo for foreign addresses) and over TPROXY
(extra modules, no ICMP): REDIRECT needs only nat, which any netfilter kernel has. The node runs
listeners too, so local delivery is seen; packet sockets on the client's link and the node's
loopback see the TCP reset or ICMP error that answers a REJECT. Each namespace has one long-lived worker process (JSON over a pipe), so
an observation costs milliseconds, not process start-ups.

Cleanup: the namespaces are removed by the context manager, by ``atexit`` and by SIGTERM/SIGHUP
handlers (SIGINT raises KeyboardInterrupt, which the context manager handles). The root namespace is
never touched: every command runs in a kp- namespace or with ``ip -n``.

``KernelLab.node_description()`` is the same node for the emulator (on the class: the default
topology), so one ruleset and one packet list can be run through both and compared
(``kproxy.lab.differential``).
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kproxy.lab.netns import kernel_lab_available

CLIENT, NODE, SINK = "client", "node", "sink"
ADDR = {"client": "10.0.1.2", "node_in": "10.0.1.1", "node_out": "10.0.2.1", "sink": "10.0.2.2"}

WORKER = r'''
import json, os, select, socket, struct, subprocess, sys, threading, time
captured, lock, listeners, received, accepted, segments = [], threading.Lock(), {}, [], [], []
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)

def ports(proto, l4):
    d = {"sport": 0, "dport": 0}
    if proto in (6, 17, 132) and len(l4) >= 4:
        d["sport"], d["dport"] = struct.unpack("!HH", l4[:4])
    elif proto == 1 and len(l4) >= 8:
        d["type"], d["code"] = l4[0], l4[1]
        d["id"] = struct.unpack("!H", l4[4:6])[0]
    return d

def parse_ip(ip):
    ihl = (ip[0] & 15) * 4
    proto = ip[9]
    d = {"proto": proto, "src": socket.inet_ntoa(ip[12:16]), "dst": socket.inet_ntoa(ip[16:20]), "flags": 0,
         "ttl": ip[8], "len": struct.unpack("!H", ip[2:4])[0]}
    l4 = ip[ihl:]
    d.update(ports(proto, l4))
    if proto == 6 and len(l4) >= 20:
        d["flags"] = l4[13]
        d["seq"], d["ack"] = struct.unpack("!II", l4[4:12])
        d["win"] = struct.unpack("!H", l4[14:16])[0]
        doff = (l4[12] >> 4) * 4
        d["payload"] = d["len"] - ihl - doff
        d["wscale"], d["sackperm"] = -1, False
        opts, i = l4[20:doff], 0
        while i < len(opts):
            kind = opts[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= len(opts) or opts[i + 1] < 2:
                break
            if kind == 3 and opts[i + 1] == 3:
                d["wscale"] = opts[i + 2]
            elif kind == 4 and opts[i + 1] == 2:
                d["sackperm"] = True
            i += opts[i + 1]
    if proto == 1 and d.get("type") in (3, 4, 5, 11, 12) and len(l4) >= 28:
        d["inner"] = parse_ip(l4[8:])
    return d

def parse(frame):
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    return parse_ip(frame[14:])

def sniff(dev):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))   # ETH_P_ALL: both directions
    s.bind((dev, 0))
    while True:
        frame, addr = s.recvfrom(65535)
        out = addr[2] == socket.PACKET_OUTGOING
        if out and dev == "lo":
            continue            # looped back: seen again as it comes in
        d = parse(frame)
        if d is None:
            continue
        with lock:
            if d["proto"] == 6:
                segments.append(dict(d, out=out, dev=dev))   # every TCP segment, both ways
            if not out:
                captured.append(d)

PKTINFO = getattr(socket, "IP_PKTINFO", 8)

def udp_listener(port):
    # Answer from the address the datagram was sent to (IP_PKTINFO), as a real server bound to it would.
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
        with lock:
            received.append({"proto": 17, "src": peer[0], "sport": peer[1], "dst": socket.inet_ntoa(dst),
                             "dport": port})
        try:
            s.sendmsg([data], [(socket.IPPROTO_IP, PKTINFO, struct.pack("I4s4s", 0, dst, b"\0\0\0\0"))], 0, peer)
        except OSError:
            pass   # the answer was dropped on its way out (EPERM from an OUTPUT rule, say)

def tcp_listener(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(128)
    while True:
        try:
            c, peer = s.accept()
        except OSError:
            continue
        with lock:
            received.append({"proto": 6, "src": peer[0], "sport": peer[1], "dst": c.getsockname()[0],
                             "dport": port})
        accepted.append(c)   # never closed: a late FIN would cross the node during a later probe

def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF

def prepare(s, op):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if op.get("dev"):
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, op["dev"].encode())
    if op.get("src") or op.get("sport"):
        s.bind((op.get("src") or "0.0.0.0", op.get("sport", 0)))
    s.settimeout(op.get("timeout", 0.3))

def ping(op):
    # One echo request from a raw socket; the answer is the echo reply with our id, or an ICMP error quoting it.
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = op.get("sport") or (os.getpid() + int(time.time() * 1000)) & 0xFFFF or 1
    op = dict(op, sport=0)
    prepare(s, op)
    body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"kproxy-probe"
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    out = {"outcome": "timeout", "sport": ident}
    deadline = time.monotonic() + op.get("timeout", 0.3)
    try:
        s.sendto(body, (op["dst"], 0))
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

def send(op):
    proto, dst, dport = op["proto"], op["dst"], op["dport"]
    if proto == "icmp":
        return ping(op)
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        prepare(s, op)
        s.connect((dst, dport))
        try:
            s.send(b"kproxy")
            s.recvfrom(2048)
            return {"outcome": "reply", "sport": s.getsockname()[1]}
        except ConnectionRefusedError:
            return {"outcome": "refused", "sport": s.getsockname()[1]}
        except (TimeoutError, PermissionError):
            # EPERM: an OUTPUT rule dropped the datagram on its way out; nothing was sent.
            return {"outcome": "timeout", "sport": s.getsockname()[1]}
        except OSError as exc:
            return {"outcome": "unreachable", "sport": s.getsockname()[1], "errno": exc.errno}
        finally:
            s.close()
    s = socket.socket()
    prepare(s, op)
    try:
        s.connect((dst, dport))
        out = {"outcome": "reply"}
    except ConnectionRefusedError:
        out = {"outcome": "refused"}
    except (TimeoutError, PermissionError):
        out = {"outcome": "timeout"}
    except OSError as exc:
        out = {"outcome": "unreachable", "errno": exc.errno}
    out["sport"] = s.getsockname()[1]
    if op.get("linger"):
        keep.append(s)
    else:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    return out

keep = []
for line in sys.stdin:
    op = json.loads(line)
    kind = op["op"]
    if kind == "sniff":
        threading.Thread(target=sniff, args=(op["dev"],), daemon=True).start()
        res = {}
    elif kind == "listen":
        for p in op.get("udp", []):
            threading.Thread(target=udp_listener, args=(p,), daemon=True).start()
        for p in op.get("tcp", []):
            threading.Thread(target=tcp_listener, args=(p,), daemon=True).start()
        res = {}
    elif kind == "drain":
        time.sleep(op.get("wait", 0))
        with lock:
            res = {"captured": captured[:], "received": received[:], "segments": segments[:]}
            captured.clear(); received.clear(); segments.clear()
    elif kind == "send":
        res = send(op)
    elif kind == "close":
        for s in keep:
            s.close()
        keep.clear()
        res = {}
    elif kind == "run":
        p = subprocess.run(op["argv"], input=op.get("input"), capture_output=True, text=True)
        res = {"rc": p.returncode, "out": p.stdout, "err": p.stderr}
    else:
        res = {"error": "unknown op"}
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
'''


class HarnessError(RuntimeError):
    pass


def _find_tool(name: str) -> str | None:
    for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return shutil.which(name)


def kernel_lab_reason() -> str | None:
    """Why the kernel harness cannot run here (None when it can)."""
    reason = kernel_lab_available()
    if reason:
        return reason
    for tool in ("iptables-restore", "iptables-save", "conntrack"):
        if _find_tool(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip() or probe.returncode}"
    return None


# ---- conntrack -L and iptables-save -c, parsed ---------------------------------------------------------
@dataclass(frozen=True)
class CtTuple:
    """One direction of a connection as ``conntrack -L`` prints it (ICMP: type, code, id; ports 0)."""

    src: str
    dst: str
    sport: int = 0
    dport: int = 0
    type: int | None = None
    code: int | None = None
    id: int | None = None
    packets: int | None = None
    bytes: int | None = None

    def text(self) -> str:
        if self.type is not None:
            return f"{self.src} -> {self.dst} type={self.type} code={self.code} id={self.id}"
        return f"{self.src}:{self.sport} -> {self.dst}:{self.dport}"


@dataclass(frozen=True)
class CtEntry:
    """A conntrack entry: protocol, timeout, TCP state, both tuples and the bracketed status words."""

    proto: str
    protonum: int
    timeout: int
    state: str
    orig: CtTuple
    reply: CtTuple
    flags: frozenset[str] = frozenset()     # UNREPLIED, ASSURED, OFFLOAD, ...
    mark: int = 0
    zone: int = 0
    use: int = 0
    line: str = ""

    @property
    def replied(self) -> bool:
        return "UNREPLIED" not in self.flags

    @property
    def assured(self) -> bool:
        return "ASSURED" in self.flags

    @property
    def dnat(self) -> bool:
        """The reply comes from somewhere else than the original destination."""
        return self.reply.src != self.orig.dst or (self.type_free and self.reply.sport != self.orig.dport)

    @property
    def snat(self) -> bool:
        """The reply goes somewhere else than the original source."""
        return self.reply.dst != self.orig.src or (self.type_free and self.reply.dport != self.orig.sport)

    @property
    def type_free(self) -> bool:
        return self.orig.type is None


_TUPLE_KEYS = {"src", "dst", "sport", "dport", "type", "code", "id", "packets", "bytes"}


def parse_conntrack(text: str) -> list[CtEntry]:
    """``conntrack -L`` (plain or ``-o extended``) output as entries; the summary line is skipped."""
    return [e for e in (_parse_ct_line(line) for line in text.splitlines()) if e is not None]


def _parse_ct_line(line: str) -> CtEntry | None:
    words = line.split()
    if len(words) > 2 and words[0] in ("ipv4", "ipv6") and words[1].isdigit():
        words = words[2:]                                     # -o extended: layer-3 name and number first
    if len(words) < 4 or not words[1].isdigit() or not words[2].isdigit():
        return None
    proto, protonum, timeout = words[0], int(words[1]), int(words[2])
    rest = words[3:]
    state = rest.pop(0) if rest and "=" not in rest[0] and not rest[0].startswith("[") else ""
    tuples: list[dict[str, Any]] = []
    flags: set[str] = set()
    extra: dict[str, str] = {}
    for w in rest:
        if w.startswith("[") and w.endswith("]"):
            flags.add(w[1:-1])
            continue
        key, sep, value = w.partition("=")
        if not sep:
            continue
        if key == "src" and len(tuples) < 2:
            tuples.append({})
        if key in _TUPLE_KEYS and tuples and key not in tuples[-1]:
            tuples[-1][key] = value
        else:
            extra[key] = value
    if len(tuples) != 2:
        return None
    orig, reply = (_ct_tuple(t) for t in tuples)
    return CtEntry(proto, protonum, timeout, state, orig, reply, frozenset(flags), int(extra.get("mark", "0"), 0),
                   int(extra.get("zone", "0")), int(extra.get("use", "0")), line)


def _ct_tuple(d: dict[str, str]) -> CtTuple:
    def num(key: str) -> int | None:
        return int(d[key]) if key in d else None

    return CtTuple(d.get("src", ""), d.get("dst", ""), int(d.get("sport", 0)), int(d.get("dport", 0)),
                   num("type"), num("code"), num("id"), num("packets"), num("bytes"))


@dataclass(frozen=True)
class RuleCounter:
    """One rule of ``iptables-save -c``: its table, chain, 1-based position in the chain and counters."""

    table: str
    chain: str
    index: int
    rule: str            # the rule as saved, without the counters: ``-A CHAIN ...``
    packets: int
    bytes: int


@dataclass
class Counters:
    """Every rule's and every built-in chain policy's packet and byte counters."""

    rules: list[RuleCounter] = field(default_factory=list)
    policies: dict[tuple[str, str], tuple[str, int, int]] = field(default_factory=dict)   # -> policy, pkts, bytes

    def rule(self, table: str, chain: str, index: int) -> RuleCounter:
        for r in self.rules:
            if (r.table, r.chain, r.index) == (table, chain, index):
                return r
        raise KeyError(f"no rule {index} in {table}/{chain}")

    def packets(self, table: str, chain: str, index: int) -> int:
        return self.rule(table, chain, index).packets

    def matching(self, text: str) -> list[RuleCounter]:
        """Rules whose saved text contains ``text``."""
        return [r for r in self.rules if text in r.rule]

    def nonzero(self) -> dict[str, int]:
        return {f"{r.table} {r.rule}": r.packets for r in self.rules if r.packets}


_SAVED_RULE = re.compile(r"^\[(\d+):(\d+)\] (-A (\S+).*)$")
_SAVED_CHAIN = re.compile(r"^:(\S+) (\S+) \[(\d+):(\d+)\]$")


def parse_counters(save_text: str) -> Counters:
    """``iptables-save -c`` output (nft or legacy) as counters per rule and per chain policy."""
    out = Counters()
    table = ""
    position: dict[tuple[str, str], int] = {}
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif m := _SAVED_CHAIN.match(line):
            if m.group(2) != "-":
                out.policies[(table, m.group(1))] = (m.group(2), int(m.group(3)), int(m.group(4)))
        elif m := _SAVED_RULE.match(line):
            key = (table, m.group(4))
            position[key] = position.get(key, 0) + 1
            out.rules.append(RuleCounter(table, m.group(4), position[key], m.group(3), int(m.group(1)),
                                         int(m.group(2))))
    return out


# ---- the lab -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Topology:
    """Interface names and addresses of the three namespaces (the node's match the emulated node's)."""

    node_in: str = "eth0"
    node_out: str = "eth1"
    client_dev: str = "eth0"
    sink_dev: str = "eth0"
    client: str = "10.0.1.2"
    node_in_addr: str = "10.0.1.1"
    node_out_addr: str = "10.0.2.1"
    sink: str = "10.0.2.2"
    in_prefixlen: int = 24
    out_prefixlen: int = 24
    client_extra: tuple[str, ...] = ()     # more client addresses (/32), routed back by the node

    def check(self) -> None:
        for name in (self.node_in, self.node_out, self.client_dev, self.sink_dev):
            if not 0 < len(name) <= 15 or "/" in name or name == "lo":
                raise HarnessError(f"bad interface name {name!r}")
        if self.node_in == self.node_out:
            raise HarnessError("the node's two interfaces need different names")
        for a in (self.client, self.node_in_addr, self.node_out_addr, self.sink, *self.client_extra):
            ipaddress.IPv4Address(a)
        for a, b, p in ((self.client, self.node_in_addr, self.in_prefixlen),
                        (self.sink, self.node_out_addr, self.out_prefixlen)):
            if ipaddress.ip_interface(f"{a}/{p}").network != ipaddress.ip_interface(f"{b}/{p}").network:
                raise HarnessError(f"{a} and {b} are not on one /{p} subnet")

    def node_description(self) -> dict[str, Any]:
        """The node namespace as ``Node.from_description`` takes it."""
        routes = [f"default via {self.sink} dev {self.node_out}"]
        routes += [f"{a}/32 via {self.client} dev {self.node_in}" for a in self.client_extra]
        return {"name": "kernel-node",
                "interfaces": [{"name": self.node_in, "addresses": [f"{self.node_in_addr}/{self.in_prefixlen}"]},
                               {"name": self.node_out, "addresses": [f"{self.node_out_addr}/{self.out_prefixlen}"]}],
                "routes": routes,
                "sysctls": {"net.ipv4.ip_forward": "1"}}


class _TopologyMethod:
    """``node_description`` on the class describes the default topology, on a lab its own."""

    def __get__(self, obj: KernelLab | None, owner: type) -> Callable[[], dict[str, Any]]:
        topo = obj.topology if obj is not None else Topology()
        return topo.node_description


class Worker:
    """A long-lived Python process inside one namespace, driven with one JSON line per operation."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-u", "-c", WORKER],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)

    def call(self, **op: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(op) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise HarnessError(f"worker in {self.ns} died") from exc
        line = self.proc.stdout.readline()
        if not line:
            raise HarnessError(f"worker in {self.ns} died")
        return json.loads(line)

    def run(self, *argv: str, input: str | None = None) -> dict[str, Any]:
        return self.call(op="run", argv=list(argv), input=input)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


ICMP_UNREACH = {0: "icmp-net-unreachable", 1: "icmp-host-unreachable", 2: "icmp-proto-unreachable",
                3: "icmp-port-unreachable", 9: "icmp-net-prohibited", 10: "icmp-host-prohibited",
                13: "icmp-admin-prohibited"}
_ERRNO_REJECT = {111: "tcp-reset", 113: "icmp-host-unreachable", 101: "icmp-net-unreachable",
                 92: "icmp-proto-unreachable", 13: "icmp-admin-prohibited"}


@dataclass
class Observation:
    """What the kernel did with one probe."""

    outcome: str                      # the sender's view: reply, refused, unreachable, timeout
    fate: str                         # forwarded, delivered, rejected, dropped
    sport: int = 0                    # the sender's source port (ICMP: the echo id)
    at_sink: list[dict[str, Any]] = field(default_factory=list)   # the first packet(s) as they reached the sink
    at_node: list[dict[str, Any]] = field(default_factory=list)   # accepted by a listener on the node
    proto: str = ""
    reject_with: str = ""             # the answer's kind: tcp-reset, icmp-port-unreachable, ...
    reject_from: str = ""             # who sent that answer
    elapsed: float = 0.0              # seconds for the probe (without conntrack and counters)
    conntrack: list[CtEntry] | None = None
    counters: Counters | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)  # every TCP segment the sniffers saw

    @property
    def seen(self) -> dict[str, Any] | None:
        """Where it arrived, as seen there: the sink's capture, else the node's listener."""
        if self.at_sink:
            return self.at_sink[0]
        return self.at_node[0] if self.at_node else None

    @property
    def seen_src(self) -> str:
        return str(self.seen["src"]) if self.seen else ""

    @property
    def seen_dst(self) -> str:
        return str(self.seen.get("dst", "")) if self.seen else ""

    @property
    def seen_sport(self) -> int:
        return int(self.seen.get("sport", 0)) if self.seen else 0

    @property
    def seen_dport(self) -> int:
        return int(self.seen.get("dport", 0)) if self.seen else 0


_LIVE: weakref.WeakSet[KernelLab] = weakref.WeakSet()
_HANDLED: dict[int, Any] = {}


def _close_all() -> None:
    for lab in list(_LIVE):
        lab.close()


def _on_signal(signum: int, frame: Any) -> None:
    _close_all()
    previous = _HANDLED.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_signal_handlers() -> None:
    """SIGTERM and SIGHUP remove the labs first, then do what they did before (by default: end the process)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        current = signal.getsignal(signum)
        if current is _on_signal or current == signal.SIG_IGN:
            continue
        _HANDLED[signum] = current
        signal.signal(signum, _on_signal)


class KernelLab:
    """The three namespaces and their workers; use as a context manager (always cleaned up)."""

    node_description = _TopologyMethod()

    def __init__(self, legacy: bool = False, listen_tcp: tuple[int, ...] = (80, 8080, 443, 53),
                 listen_udp: tuple[int, ...] = (53, 5353, 8080),
                 node_ports: tuple[int, ...] = (53, 80, 443, 5353, 8080, 9999),
                 topology: Topology | None = None) -> None:
        self.id = secrets.token_hex(3)
        self.names = {r: f"kp-{self.id}-{r[0]}" for r in (CLIENT, NODE, SINK)}
        self.legacy = legacy
        self.topology = topology or Topology()
        self.topology.check()
        self.workers: dict[str, Worker] = {}
        self.listen_tcp, self.listen_udp = listen_tcp, listen_udp
        self.node_ports = node_ports
        self._closed = False

    # ---- life cycle ----------------------------------------------------------------------------
    def __enter__(self) -> KernelLab:
        _LIVE.add(self)
        _install_signal_handlers()
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ip(self, ns: str, *argv: str) -> None:
        p = subprocess.run(["ip", "-n", ns, *argv], capture_output=True, text=True)
        if p.returncode != 0:
            raise HarnessError(f"ip -n {ns} {' '.join(argv)}: {p.stderr.strip()}")

    def _sysctl(self, ns: str, key: str, value: str, check: bool = True) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"], check=check,
                       capture_output=True)

    def _build(self) -> None:
        t = self.topology
        c, n, s = (self.names[r] for r in (CLIENT, NODE, SINK))
        for ns in (c, n, s):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            self._ip(ns, "link", "set", "lo", "up")
        self._ip(n, "link", "add", t.node_in, "type", "veth", "peer", "name", t.client_dev, "netns", c)
        self._ip(n, "link", "add", t.node_out, "type", "veth", "peer", "name", t.sink_dev, "netns", s)
        for ns, dev, addr in ((c, t.client_dev, f"{t.client}/{t.in_prefixlen}"),
                              (n, t.node_in, f"{t.node_in_addr}/{t.in_prefixlen}"),
                              (n, t.node_out, f"{t.node_out_addr}/{t.out_prefixlen}"),
                              (s, t.sink_dev, f"{t.sink}/{t.out_prefixlen}")):
            self._ip(ns, "addr", "add", addr, "dev", dev)
            self._ip(ns, "link", "set", dev, "up")
        for extra in t.client_extra:
            self._ip(c, "addr", "add", f"{extra}/32", "dev", t.client_dev)
            self._ip(n, "route", "add", f"{extra}/32", "via", t.client, "dev", t.node_in)
        self._ip(c, "route", "add", "default", "via", t.node_in_addr)
        self._ip(n, "route", "add", "default", "via", t.sink)
        self._ip(s, "route", "add", "default", "via", t.node_out_addr)
        # The sink answers for any destination: its own nat table redirects everything to itself
        # (after the packet socket has recorded the addresses it arrived with), and conntrack there
        # puts the original destination back as the source of the answers.
        sink_rules = "".join(f"-A PREROUTING -i {t.sink_dev} -p {p} -j REDIRECT\n" for p in ("tcp", "udp"))
        sink_rules += f"-A PREROUTING -i {t.sink_dev} -p icmp -m icmp --icmp-type 8 -j REDIRECT\n"
        subprocess.run(["ip", "netns", "exec", s, _find_tool("iptables-nft-restore") or "iptables-restore"],
                       check=True, capture_output=True, text=True, input=f"*nat\n{sink_rules}COMMIT\n")
        self._sysctl(n, "net.ipv4.ip_forward", "1")
        for ns in (c, s):
            self._sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")
        for ns in (c, n, s):
            # No retransmissions: a half-open connection of one probe must not send packets during the next.
            self._sysctl(ns, "net.ipv4.tcp_synack_retries", "0")
            self._sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
            # ICMP errors are rate limited by default; the emulator answers every packet, so must the lab.
            for key, value in (("net.ipv4.icmp_ratelimit", "0"), ("net.ipv4.icmp_msgs_per_sec", "100000"),
                               ("net.ipv4.icmp_msgs_burst", "100000")):
                self._sysctl(ns, key, value, check=False)
        for role in (CLIENT, NODE, SINK):
            self.workers[role] = Worker(self.names[role])
        self.workers[SINK].call(op="sniff", dev=t.sink_dev)
        self.workers[CLIENT].call(op="sniff", dev=t.client_dev)
        self.workers[NODE].call(op="sniff", dev="lo")     # the answers to the node's own rejected packets
        self.workers[SINK].call(op="listen", tcp=list(self.listen_tcp), udp=list(self.listen_udp))
        self.workers[NODE].call(op="listen", tcp=list(self.node_ports), udp=list(self.node_ports))
        time.sleep(0.1)

    def close(self) -> None:
        """Stop the workers and delete the namespaces (idempotent; safe from atexit and signal handlers)."""
        if self._closed:
            return
        self._closed = True
        for w in self.workers.values():
            w.stop()
        for ns in self.names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        _LIVE.discard(self)
        atexit.unregister(self.close)

    def namespaces(self) -> list[str]:
        return list(self.names.values())

    # ---- the node's rules, conntrack and counters ---------------------------------------------------
    def tool(self, name: str) -> str:
        if self.legacy:
            return {"iptables-restore": "iptables-legacy-restore", "iptables-save": "iptables-legacy-save",
                    "iptables": "iptables-legacy"}[name]
        return {"iptables-restore": "iptables-nft-restore", "iptables-save": "iptables-nft-save",
                "iptables": "iptables-nft"}[name]

    def restore(self, text: str, noflush: bool = False) -> None:
        args = ["--noflush"] if noflush else []
        r = self.workers[NODE].run(self.tool("iptables-restore"), *args, input=text)
        if r["rc"] != 0:
            raise HarnessError(f"iptables-restore: {r['err'].strip()}")

    def save(self, counters: bool = True) -> str:
        args = ["-c"] if counters else []
        return self.workers[NODE].run(self.tool("iptables-save"), *args)["out"]

    def counters(self) -> Counters:
        return parse_counters(self.save(counters=True))

    def zero(self) -> None:
        """Zero every rule and policy counter of the node (all tables)."""
        for table in ("raw", "mangle", "nat", "filter", "security"):
            self.workers[NODE].run(self.tool("iptables"), "-t", table, "-Z")

    def conntrack(self) -> str:
        return self.workers[NODE].run("conntrack", "-L")["out"]

    def conntrack_entries(self) -> list[CtEntry]:
        return parse_conntrack(self.conntrack())

    def flush(self) -> None:
        """Forget flows, so the next probe starts a new connection."""
        self.workers[NODE].run("conntrack", "-F")

    def run(self, where: str, *argv: str, input: str | None = None) -> dict[str, Any]:
        """A command in the client, node or sink namespace: ``{"rc", "out", "err"}``."""
        return self.workers[where].run(*argv, input=input)

    # ---- probes -------------------------------------------------------------------------------
    def probe(self, proto: str, dst: str, dport: int = 0, sport: int = 0, timeout: float = 0.25,
              from_node: bool = False, linger: bool = False, src: str | None = None, dev: str | None = None,
              details: bool = False) -> Observation:
        """Send one UDP datagram, TCP connect or ICMP echo from the client (or the node itself) and observe.

        ``src`` binds the sender's address, ``sport`` its port (ICMP: the echo id), ``dev`` its output
        interface (SO_BINDTODEVICE). ``details`` adds the node's conntrack table and rule counters.
        """
        if proto not in ("tcp", "udp", "icmp"):
            raise HarnessError(f"unknown probe protocol {proto!r} (tcp, udp or icmp)")
        began = time.monotonic()
        for role in (SINK, NODE, CLIENT):
            self.workers[role].call(op="drain")
        who = NODE if from_node else CLIENT
        op: dict[str, Any] = {"proto": proto, "dst": dst, "dport": dport, "sport": sport, "timeout": timeout,
                              "linger": linger}
        if src:
            op["src"] = src
        if dev:
            op["dev"] = dev
        res = self.workers[who].call(op="send", **op)
        sink = self.workers[SINK].call(op="drain", wait=0.03)
        node = self.workers[NODE].call(op="drain")
        client = self.workers[CLIENT].call(op="drain")
        obs = self._judge(proto, res, sink, node, client, from_node)
        obs.segments = [*client.get("segments", ()), *sink.get("segments", ()), *node.get("segments", ())]
        obs.elapsed = time.monotonic() - began
        if details:
            obs.conntrack = self.conntrack_entries()
            obs.counters = self.counters()
        return obs

    def observe(self, proto: str, dst: str, dport: int = 0, **kw: Any) -> Observation:
        """``probe`` with the conntrack table and counters."""
        return self.probe(proto, dst, dport, details=True, **kw)

    def _judge(self, proto: str, res: dict[str, Any], sink: dict[str, Any], node: dict[str, Any],
               client: dict[str, Any], from_node: bool) -> Observation:
        pnum = {"tcp": 6, "udp": 17, "icmp": 1}[proto]
        sport = int(res["sport"])
        if proto == "icmp":
            first = [p for p in sink["captured"] if p["proto"] == 1 and p.get("type") == 8]
        else:
            first = [p for p in sink["captured"] if p["proto"] == pnum and p["sport"] != 0 and
                     (proto == "udp" or p["flags"] & 0x02)]
        delivered = [r for r in node["received"] if r["proto"] == pnum]
        answers = node["captured"] if from_node else client["captured"]
        reject_with, reject_from = self._answer_kind(proto, sport, res, answers, from_node)
        if first:
            fate = "forwarded"
        elif delivered or (from_node or proto == "icmp") and res["outcome"] == "reply":
            fate = "delivered"
        elif res["outcome"] in ("refused", "unreachable"):
            fate = "rejected"
        else:
            fate = "dropped"
        return Observation(res["outcome"], fate, sport, first, delivered, proto, reject_with, reject_from)

    @staticmethod
    def _answer_kind(proto: str, sport: int, res: dict[str, Any], captured: list[dict[str, Any]],
                     from_node: bool) -> tuple[str, str]:
        """The TCP reset or ICMP error that answered the probe, as the sender's packet socket saw it
        (the client's link, or the node's loopback for the node's own packets)."""
        if res["outcome"] not in ("refused", "unreachable"):
            return "", ""
        for p in captured:
            if proto == "tcp" and p["proto"] == 6 and p["dport"] == sport and p["flags"] & 0x04:
                return "tcp-reset", p["src"]
            inner = p.get("inner")
            if p["proto"] == 1 and p.get("type") == 3 and inner:
                mine = inner.get("id") == sport if proto == "icmp" else inner.get("sport") == sport
                if mine:
                    return ICMP_UNREACH.get(p["code"], f"icmp-3-{p['code']}"), p["src"]
        if proto == "icmp" and "type" in res:
            return ICMP_UNREACH.get(res["code"], f"icmp-{res['type']}-{res['code']}"), res.get("src", "")
        if from_node:
            if res["outcome"] == "refused":
                return ("tcp-reset" if proto == "tcp" else "icmp-port-unreachable"), ""
            return _ERRNO_REJECT.get(int(res.get("errno", 0)), ""), ""
        return "", ""
