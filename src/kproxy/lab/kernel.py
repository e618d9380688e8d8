"""A kernel harness: client ─ node ─ sink as kp- network namespaces, real sockets, and what the kernel did.

    client 10.0.1.2/24 (eth0) ── eth0 10.0.1.1/24  node  eth1 10.0.2.1/24 ── (eth0) 10.0.2.2/24 sink

The node forwards, and routes everything else to the sink. The sink answers for every address (its
own nat table redirects all TCP and UDP to itself), so a packet DNATed or forwarded to any destination
is delivered there: its listeners answer as the real destination would, and a packet socket on its
eth0 records every packet with the addresses and ports it arrived with. The node runs listeners too,
so local delivery is seen. Each namespace has one long-lived worker process (JSON over a pipe), so an
observation costs milliseconds, not process start-ups.

``KernelLab.node_description()`` is the same node for the emulator, so one ruleset and one packet
list can be run through both and compared (``kproxy.lab.differential``).
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from kproxy.lab.netns import kernel_lab_available

CLIENT, NODE, SINK = "client", "node", "sink"
ADDR = {"client": "10.0.1.2", "node_in": "10.0.1.1", "node_out": "10.0.2.1", "sink": "10.0.2.2"}

WORKER = r'''
import json, os, select, socket, struct, subprocess, sys, threading, time
captured, lock, listeners, received, accepted = [], threading.Lock(), {}, [], []

def parse(frame):
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    proto, src, dst = ip[9], socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    l4 = ip[ihl:]
    d = {"proto": proto, "src": src, "dst": dst, "sport": 0, "dport": 0, "flags": 0}
    if proto in (6, 17) and len(l4) >= 4:
        d["sport"], d["dport"] = struct.unpack("!HH", l4[:4])
        if proto == 6 and len(l4) >= 14:
            d["flags"] = l4[13]
    elif proto == 1 and len(l4) >= 8:
        d["type"], d["code"] = l4[0], l4[1]
        d["id"] = struct.unpack("!H", l4[4:6])[0]
    return d

def sniff(dev):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind((dev, 0))
    while True:
        frame, addr = s.recvfrom(65535)
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        d = parse(frame)
        if d is not None:
            with lock:
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
            received.append({"proto": 17, "src": peer[0], "sport": peer[1], "dport": port})
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
            received.append({"proto": 6, "src": peer[0], "sport": peer[1], "dport": port})
        accepted.append(c)   # never closed: a late FIN would cross the node during a later probe

def send(op):
    proto, dst, dport, src, sport, timeout = op["proto"], op["dst"], op["dport"], op.get("src"), op.get("sport", 0), op.get("timeout", 0.3)
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if src or sport:
            s.bind((src or "0.0.0.0", sport))
        s.settimeout(timeout)
        s.connect((dst, dport))
        try:
            s.send(b"kproxy")
            data, peer = s.recvfrom(2048), s.getpeername()
            return {"outcome": "reply", "sport": s.getsockname()[1]}
        except ConnectionRefusedError:
            return {"outcome": "refused", "sport": s.getsockname()[1]}
        except (TimeoutError, PermissionError):
            # EPERM: an OUTPUT rule dropped the datagram on its way out; nothing was sent.
            return {"outcome": "timeout", "sport": s.getsockname()[1]}
        except OSError:
            return {"outcome": "unreachable", "sport": s.getsockname()[1]}
        finally:
            s.close()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if src or sport:
        s.bind((src or "0.0.0.0", sport))
    s.settimeout(timeout)
    try:
        s.connect((dst, dport))
        out = {"outcome": "reply"}
    except ConnectionRefusedError:
        out = {"outcome": "refused"}
    except (TimeoutError, PermissionError):
        out = {"outcome": "timeout"}
    except OSError:
        out = {"outcome": "unreachable"}
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
            res = {"captured": captured[:], "received": received[:]}
            captured.clear(); received.clear()
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


def kernel_lab_reason() -> str | None:
    """Why the kernel harness cannot run here (None when it can)."""
    reason = kernel_lab_available()
    if reason:
        return reason
    for tool in ("iptables-restore", "conntrack"):
        if not any(os.path.exists(os.path.join(d, tool)) for d in ("/usr/sbin", "/sbin", "/usr/bin")):
            return f"{tool} is not installed"
    return None


class Worker:
    """A long-lived Python process inside one namespace, driven with one JSON line per operation."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-u", "-c", WORKER],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)

    def call(self, **op: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(op) + "\n")
        self.proc.stdin.flush()
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
        self.proc.wait(timeout=5)


@dataclass
class Observation:
    """What the kernel did with one probe."""

    outcome: str                      # the client's view: reply, refused, unreachable, timeout
    fate: str                         # forwarded, delivered, rejected, dropped
    sport: int = 0
    at_sink: list[dict[str, Any]] = field(default_factory=list)
    at_node: list[dict[str, Any]] = field(default_factory=list)


class KernelLab:
    """The three namespaces and their workers; use as a context manager (always cleaned up)."""

    def __init__(self, legacy: bool = False, listen_tcp: tuple[int, ...] = (80, 8080, 443, 53),
                 listen_udp: tuple[int, ...] = (53, 5353, 8080),
                 node_ports: tuple[int, ...] = (53, 80, 443, 5353, 8080, 9999)) -> None:
        self.id = secrets.token_hex(3)
        self.names = {r: f"kp-{self.id}-{r[0]}" for r in (CLIENT, NODE, SINK)}
        self.legacy = legacy
        self.workers: dict[str, Worker] = {}
        self.listen_tcp, self.listen_udp = listen_tcp, listen_udp
        self.node_ports = node_ports
        self._closed = False

    # ---- life cycle ----------------------------------------------------------------------------
    def __enter__(self) -> KernelLab:
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

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"], check=True,
                       capture_output=True)

    def _build(self) -> None:
        c, n, s = (self.names[r] for r in (CLIENT, NODE, SINK))
        for ns in (c, n, s):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            self._ip(ns, "link", "set", "lo", "up")
        self._ip(n, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", c)
        self._ip(n, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", s)
        for ns, dev, addr in ((c, "eth0", "10.0.1.2/24"), (n, "eth0", "10.0.1.1/24"), (n, "eth1", "10.0.2.1/24"),
                              (s, "eth0", "10.0.2.2/24")):
            self._ip(ns, "addr", "add", addr, "dev", dev)
            self._ip(ns, "link", "set", dev, "up")
        self._ip(c, "route", "add", "default", "via", "10.0.1.1")
        self._ip(n, "route", "add", "default", "via", "10.0.2.2")
        self._ip(s, "route", "add", "default", "via", "10.0.2.1")
        # The sink answers for any destination: its own nat table redirects everything to itself
        # (after the packet socket has recorded the addresses it arrived with), and conntrack there
        # puts the original destination back as the source of the answers.
        subprocess.run(["ip", "netns", "exec", s, "iptables-nft-restore"], check=True, capture_output=True, text=True,
                       input="*nat\n-A PREROUTING -i eth0 -p tcp -j REDIRECT\n"
                             "-A PREROUTING -i eth0 -p udp -j REDIRECT\nCOMMIT\n")
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
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"], capture_output=True)
        for role in (CLIENT, NODE, SINK):
            self.workers[role] = Worker(self.names[role])
        self.workers[SINK].call(op="sniff", dev="eth0")
        self.workers[SINK].call(op="listen", tcp=list(self.listen_tcp), udp=list(self.listen_udp))
        self.workers[NODE].call(op="listen", tcp=list(self.node_ports), udp=list(self.node_ports))
        time.sleep(0.1)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self.workers.values():
            w.stop()
        for ns in self.names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    # ---- the node's rules, conntrack and counters ---------------------------------------------------
    def tool(self, name: str) -> str:
        if self.legacy:
            return {"iptables-restore": "iptables-legacy-restore", "iptables-save": "iptables-legacy-save",
                    "iptables": "iptables-legacy"}[name]
        return {"iptables-restore": "iptables-nft-restore", "iptables-save": "iptables-nft-save",
                "iptables": "iptables-nft"}[name]

    def restore(self, text: str) -> None:
        r = self.workers[NODE].run(self.tool("iptables-restore"), input=text)
        if r["rc"] != 0:
            raise HarnessError(f"iptables-restore: {r['err'].strip()}")

    def save(self, counters: bool = True) -> str:
        args = ["-c"] if counters else []
        return self.workers[NODE].run(self.tool("iptables-save"), *args)["out"]

    def conntrack(self) -> str:
        return self.workers[NODE].run("conntrack", "-L")["out"]

    def flush(self) -> None:
        """Forget flows, so the next probe starts a new connection."""
        self.workers[NODE].run("conntrack", "-F")

    @staticmethod
    def node_description() -> dict[str, Any]:
        return {"name": "kernel-node",
                "interfaces": [{"name": "eth0", "addresses": ["10.0.1.1/24"]},
                               {"name": "eth1", "addresses": ["10.0.2.1/24"]}],
                "routes": ["default via 10.0.2.2 dev eth1"],
                "sysctls": {"net.ipv4.ip_forward": "1"}}

    # ---- probes -------------------------------------------------------------------------------
    def probe(self, proto: str, dst: str, dport: int, sport: int = 0, timeout: float = 0.25,
              from_node: bool = False, linger: bool = False) -> Observation:
        """Send one UDP datagram or TCP connect from the client (or the node itself) and observe."""
        self.workers[SINK].call(op="drain")
        self.workers[NODE].call(op="drain")
        who = NODE if from_node else CLIENT
        res = self.workers[who].call(op="send", proto=proto, dst=dst, dport=dport, sport=sport, timeout=timeout,
                                     linger=linger)
        sink = self.workers[SINK].call(op="drain", wait=0.03)
        node = self.workers[NODE].call(op="drain")
        pnum = 6 if proto == "tcp" else 17
        first = [p for p in sink["captured"] if p["proto"] == pnum and p["sport"] != 0 and
                 (proto == "udp" or p["flags"] & 0x02)]
        delivered = [r for r in node["received"] if r["proto"] == pnum]
        if first:
            fate = "forwarded"
        elif delivered or (from_node and res["outcome"] == "reply"):
            fate = "delivered"
        elif res["outcome"] in ("refused", "unreachable"):
            fate = "rejected"
        else:
            fate = "dropped"
        return Observation(res["outcome"], fate, res["sport"], first, delivered)
