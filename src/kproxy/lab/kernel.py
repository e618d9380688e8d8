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
loopback see the TCP reset or ICMP error that answers a REJECT. Each namespace has one long-lived
worker process (``kproxy.lab.worker``, JSON lines over a pipe), so an observation costs milliseconds,
not process start-ups. What the node's tools print is read with ``kproxy.lab.parsers``.

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
from pathlib import Path
from typing import Any

import kproxy
from kproxy.lab.netns import kernel_lab_available
from kproxy.lab.parsers import Counters, CtEntry, parse_conntrack, parse_counters

CLIENT, NODE, SINK = "client", "node", "sink"
ADDR = {"client": "10.0.1.2", "node_in": "10.0.1.1", "node_out": "10.0.2.1", "sink": "10.0.2.2"}


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
    # More node interfaces on the client's side, (name, "address/prefix"): each a link to the client,
    # which holds another address of that subnet there (``client_on``) and can send through it.
    links: tuple[tuple[str, str], ...] = ()

    def check(self) -> None:
        for name in (self.node_in, self.node_out, self.client_dev, self.sink_dev):
            if not 0 < len(name) <= 15 or "/" in name or name == "lo":
                raise HarnessError(f"bad interface name {name!r}")
        if self.node_in == self.node_out:
            raise HarnessError("the node's two interfaces need different names")
        names = [self.node_in, self.node_out, *(n for n, _ in self.links)]
        if len(set(names)) != len(names):
            raise HarnessError(f"the node's interfaces need different names: {', '.join(names)}")
        for name, addr in self.links:
            if not 0 < len(name) <= 15 or "/" in name or name == "lo":
                raise HarnessError(f"bad interface name {name!r}")
            if ipaddress.ip_interface(addr).network.num_addresses < 4:
                raise HarnessError(f"{name} {addr}: the subnet needs room for the client too")
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
                               {"name": self.node_out, "addresses": [f"{self.node_out_addr}/{self.out_prefixlen}"]},
                               *({"name": n, "addresses": [a]} for n, a in self.links)],
                "routes": routes,
                "sysctls": {"net.ipv4.ip_forward": "1"}}

    def client_on(self, dev: str) -> str:
        """The client's address on the link to the node's ``dev`` (the subnet's first host that is
        not the node's)."""
        if dev in ("", self.node_in):
            return self.client
        iface = ipaddress.ip_interface(dict(self.links)[dev])
        return str(next(h for h in iface.network.hosts() if h != iface.ip))

    def client_dev_for(self, dev: str) -> str:
        """The client's end of the link to the node's ``dev``."""
        if dev in ("", self.node_in):
            return self.client_dev
        return f"kpc{[n for n, _ in self.links].index(dev)}"


class _TopologyMethod:
    """``node_description`` on the class describes the default topology, on a lab its own."""

    def __get__(self, obj: KernelLab | None, owner: type) -> Callable[[], dict[str, Any]]:
        topo = obj.topology if obj is not None else Topology()
        return topo.node_description


def worker_command() -> list[str]:
    """How a namespace's worker starts: this interpreter, unbuffered, running ``kproxy.lab.worker``."""
    return [sys.executable, "-u", "-m", "kproxy.lab.worker"]


def worker_env() -> dict[str, str]:
    """The environment with this kproxy's source first on PYTHONPATH, so the worker runs the same code
    as the harness even when the harness found kproxy by a path it added itself."""
    root = str(Path(kproxy.__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=root + (os.pathsep + rest if rest else ""))


class Worker:
    """A long-lived ``kproxy.lab.worker`` process inside one namespace, driven with one JSON line per operation."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, *worker_command()],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True, env=worker_env())

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
    sent_at: float = 0.0              # time.monotonic() when the sender was told to send
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
        for name, addr in t.links:
            peer = t.client_dev_for(name)
            self._ip(n, "link", "add", name, "type", "veth", "peer", "name", peer, "netns", c)
            self._ip(n, "addr", "add", addr, "dev", name)
            self._ip(c, "addr", "add", f"{t.client_on(name)}/{ipaddress.ip_interface(addr).network.prefixlen}",
                     "dev", peer)
            for ns, dev in ((n, name), (c, peer)):
                self._ip(ns, "link", "set", dev, "up")
        for extra in t.client_extra:
            self._ip(c, "addr", "add", f"{extra}/32", "dev", t.client_dev)
            self._ip(n, "route", "add", f"{extra}/32", "via", t.client, "dev", t.node_in)
        self._ip(c, "route", "add", "default", "via", t.node_in_addr)
        for i, (name, addr) in enumerate(t.links):
            # A socket bound to this link (SO_BINDTODEVICE) finds its own default route through it.
            gateway = str(ipaddress.ip_interface(addr).ip)
            self._ip(c, "route", "add", "default", "via", gateway, "dev", t.client_dev_for(name), "metric", str(100 + i))
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
        for name, _ in t.links:
            self.workers[CLIENT].call(op="sniff", dev=t.client_dev_for(name))
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
        sent_at = time.monotonic()
        res = self.workers[who].call(op="send", **op)
        sink = self.workers[SINK].call(op="drain", wait=0.03)
        node = self.workers[NODE].call(op="drain")
        client = self.workers[CLIENT].call(op="drain")
        obs = self._judge(proto, res, sink, node, client, from_node)
        obs.segments = [*client.get("segments", ()), *sink.get("segments", ()), *node.get("segments", ())]
        obs.elapsed, obs.sent_at = time.monotonic() - began, sent_at
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
