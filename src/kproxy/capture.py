"""A live node's state as the real tools dump it, and the emulated node built from those dumps.

``kproxy node capture`` runs the tools (``ip -j``, ``sysctl``, ``iptables-save -c``, ``nft -j``,
``ipset save``, ``ipvsadm -Sn``, ``conntrack -L``) on this host or in a named namespace;
``kproxy node load`` takes the same dumps as files. Both end in ``build``, which feeds each dump
to the front end that reads it (iptables-restore, nft -f, ipset restore, ipvsadm -R), so the
emulated tools print back what the live ones printed. ``build`` works on a fresh node and raises
``CaptureError`` (one line, naming the file and line) before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kproxy.iptables.extension import BUILTIN_CHAINS
from kproxy.netfilter.nfacct import ensure_named
from kproxy.node import Node, NodeError, Route

KINDS = ("addr", "route", "sysctl", "iptables", "ip6tables", "nft", "ipset", "ipvs", "conntrack")

# The sysctls that change how packets are handled (per-interface ones are added for each device).
SYSCTLS = (
    "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.ip_local_port_range",
    "net.ipv4.conf.all.route_localnet", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter",
    "net.ipv4.conf.all.accept_local", "net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce",
    "net.netfilter.nf_conntrack_max", "net.netfilter.nf_conntrack_acct",
    "net.netfilter.nf_conntrack_tcp_be_liberal", "net.netfilter.nf_conntrack_tcp_loose",
    "net.netfilter.nf_conntrack_tcp_ignore_invalid_rst", "net.netfilter.nf_conntrack_udp_timeout",
    "net.netfilter.nf_conntrack_udp_timeout_stream", "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.vs.conntrack", "net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.expire_quiescent_template",
)
PER_DEVICE_SYSCTLS = ("rp_filter", "route_localnet")
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw", "security")


class CaptureError(ValueError):
    """A dump that cannot be taken or loaded; the message names the file (and line) or the command."""


@dataclass
class Dump:
    """One tool's output and where it came from (a file name or the command line), for error messages."""

    text: str
    source: str


@dataclass
class Dumps:
    """A node's dumps by kind (``KINDS``); ``route`` and ``addr`` may come in several parts (per family)."""

    parts: dict[str, list[Dump]] = field(default_factory=dict)
    name: str = "node"
    notes: list[str] = field(default_factory=list)     # what could not be taken, and why

    def add(self, kind: str, text: str, source: str) -> None:
        self.parts.setdefault(kind, []).append(Dump(text, source))

    def get(self, kind: str) -> list[Dump]:
        return self.parts.get(kind, [])


# ---- taking the dumps on a live node ---------------------------------------------------------------
class Runner:
    """Runs the real tools here, or inside ``ip netns exec NAME``."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        path = os.environ.get("PATH", "")
        self.env = dict(os.environ, PATH=path + ":/usr/sbin:/sbin" if "/usr/sbin" not in path else path)

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    def run(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(self.argv(argv), capture_output=True, text=True, env=self.env,
                                  errors="surrogateescape")
        except OSError as exc:
            raise CaptureError(f"{argv[0]}: {exc.strerror}") from None
        if check and proc.returncode != 0:
            err = proc.stderr.strip().splitlines()
            raise CaptureError(f"{' '.join(self.argv(argv))}: {err[-1] if err else f'exit status {proc.returncode}'}")
        return proc

    def has(self, tool: str) -> bool:
        """The tool is installed (``ip netns exec`` runs the host's binaries)."""
        return shutil.which(tool, path=self.env["PATH"]) is not None

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], check=False).returncode == 0


def capture(netns: str | None = None, conntrack: bool = False) -> Dumps:
    """Run the real tools on the live node (or in namespace ``netns``) and keep what they print."""
    r = Runner(netns)
    dumps = Dumps(name=netns or socket.gethostname())

    def take(kind: str, argv: list[str]) -> str:
        text = r.run(argv).stdout
        dumps.add(kind, text, " ".join(r.argv(argv)))
        return text

    addr = take("addr", ["ip", "-j", "addr", "show"])
    take("route", ["ip", "-j", "-4", "route", "show", "table", "main"])
    take("route", ["ip", "-j", "-6", "route", "show", "table", "main"])
    devices = [d.get("ifname", "") for d in _json(Dump(addr, "ip -j addr"), list)]
    keys = list(SYSCTLS) + [f"net.ipv4.conf.{d.replace('.', '/')}.{k}" for d in devices for k in PER_DEVICE_SYSCTLS]
    steps = [("sysctl", ["sysctl", "-e", *keys]), ("iptables", ["iptables-save", "-c"]),
             ("ip6tables", ["ip6tables-save", "-c"]), ("nft", ["nft"]), ("ipset", ["ipset", "save"]),
             ("ipvs", ["ipvsadm", "-Sn"])] + ([("conntrack", ["conntrack", "-L"])] if conntrack else [])
    owned: set[tuple[str, str]] = set()
    for tool, argv in steps:
        if not r.has(argv[0]):
            dumps.notes.append(f"{argv[0]} is not installed here: no {tool} state captured")
        elif tool == "nft":
            _take_nft(r, dumps, owned)
        elif tool != "ipvs" or r.exists("/proc/net/ip_vs"):     # IPVS: when the kernel has it (module loaded)
            text = take(tool, argv)
            if tool in ("iptables", "ip6tables"):
                owned |= owned_tables(text, "ip" if tool == "iptables" else "ip6")
    return dumps


def _take_nft(r: Runner, dumps: Dumps, owned: set[tuple[str, str]]) -> None:
    """``nft -j list table`` of each table iptables-nft does not own, as one ``list ruleset`` document.

    Listing the whole ruleset would make nft translate every iptables-nft rule back (many seconds and
    hundreds of megabytes for 100,000 rules) only for kproxy to drop them. The tables iptables-nft owns
    are kept as the kernel lists them without their rules (``nft -j list chains``): which of their
    chains exist, in which order, so the captured node lists them as the live one does."""
    tables = _json(Dump(r.run(["nft", "-j", "list", "tables"]).stdout, "nft -j list tables"), dict)
    items: list[Any] = [o for o in tables.get("nftables", []) if isinstance(o, dict) and "metainfo" in o][:1]
    listed = [(t["table"]["family"], t["table"]["name"]) for t in tables.get("nftables", [])
              if isinstance(t, dict) and isinstance(t.get("table"), dict)]
    items += [t for t in tables.get("nftables", []) if isinstance(t, dict) and _owned(t, owned)]
    if any(key in owned for key in listed):
        chains = _json(Dump(r.run(["nft", "-j", "list", "chains"]).stdout, "nft -j list chains"), dict)
        items += [c for c in chains.get("nftables", []) if isinstance(c, dict) and _owned(c, owned)]
    for family, name in listed:
        if (family, name) not in owned:
            one = _json(Dump(r.run(["nft", "-j", "list", "table", family, name]).stdout, "nft -j list table"), dict)
            items += [o for o in one.get("nftables", []) if not (isinstance(o, dict) and "metainfo" in o)]
    for item in items:
        _add_devices(r, item)
    dumps.add("nft", json.dumps({"nftables": items}), " ".join(r.argv(["nft", "-j", "list", "table", "..."])))


DEVICES = re.compile(r'hook (?:ingress|egress) (?:device "([^"]*)"|devices = \{ ([^}]*) \})')


def _add_devices(r: Runner, item: Any) -> None:
    """nft 1.0.6's JSON leaves out a netdev (or inet ingress) chain's devices, without which nft -f cannot
    load it again: they are read from the chain's text listing into the item's ``dev``."""
    chain = item.get("chain") if isinstance(item, dict) else None
    if not isinstance(chain, dict) or chain.get("hook") not in ("ingress", "egress") or "dev" in chain:
        return
    text = r.run(["nft", "list", "chain", chain["family"], chain["table"], chain["name"]], check=False).stdout
    m = DEVICES.search(text)
    if m is not None:
        devs = [m.group(1)] if m.group(1) is not None else [d.strip() for d in m.group(2).split(",")]
        chain["dev"] = devs[0] if len(devs) == 1 else devs


def owned_tables(save: str, nft_family: str) -> set[tuple[str, str]]:
    """The nft tables an ``iptables-save`` dump's tables are, when its variant is nf_tables (not legacy)."""
    m = _HEADER.search(save)
    if m is not None and m.group(1) == "legacy":
        return set()
    return {(nft_family, line[1:].strip()) for line in save.splitlines() if line.startswith("*")}


def read_dumps(files: dict[str, Sequence[str]], name: str = "node") -> Dumps:
    """Dumps from files taken elsewhere: ``{kind: [path, ...]}``."""
    dumps = Dumps(name=name)
    for kind, paths in files.items():
        for path in paths:
            try:
                with open(path, encoding="utf-8", errors="surrogateescape") as fh:
                    dumps.add(kind, fh.read(), path)
            except OSError as exc:
                raise CaptureError(f"{path}: {exc.strerror}") from None
    return dumps


# ---- building the node -------------------------------------------------------------------------------
def build(dumps: Dumps, now: float | None = None) -> Node:
    """A fresh node holding everything the dumps say; raises CaptureError and builds nothing on bad input."""
    now = time.time() if now is None else now
    desc: dict[str, Any] = {"name": dumps.name, "interfaces": [], "routes": [], "sysctls": {}}
    for d in dumps.get("addr"):
        desc["interfaces"] += interfaces(d)
    for d in dumps.get("sysctl"):
        desc["sysctls"].update(sysctls(d))
    try:
        node = Node.from_description(desc, ", ".join(d.source for d in dumps.get("addr")) or "the node")
    except NodeError as exc:
        raise CaptureError(str(exc)) from None
    connected = {(c.family, c.dst, c.prefixlen, c.dev) for c in node.connected_routes()}
    for d in dumps.get("route"):
        for route in routes(d):
            if route.via is None and (route.family, route.dst, route.prefixlen, route.dev) in connected:
                continue            # the kernel's route for an address: the node derives it itself
            if route.dev and route.dev not in node.interfaces:
                raise CaptureError(f"{d.source}: route \"{route}\": no device {route.dev} in the addresses dump")
            node.routes.append(route)
    origin: dict[str, Any] = {"sources": {k: [d.source for d in v] for k, v in dumps.parts.items()}, "warnings": []}
    for d in dumps.get("ipset"):            # before the rules that name the sets
        _tool(d, *_run_ipset(node, d))
        _listed_order(node, d)
    owned: set[tuple[str, str]] = set()
    for kind, family, nft_family in (("iptables", 4, "ip"), ("ip6tables", 6, "ip6")):
        for d in dumps.get(kind):
            variant = load_iptables(node, d, family)
            if variant:
                origin[f"{kind}_variant"] = variant
            origin["warnings"].extend(
                f"{d.source}: {line[2:]}" for line in d.text.splitlines() if line.startswith("# Warning:"))
            owned |= owned_tables(d.text, nft_family)
    for d in dumps.get("nft"):
        items = load_nft(node, d, owned)
        if items is not None:
            live_layout(node, items, owned)
    for d in dumps.get("ipvs"):
        _tool(d, *_run_ipvsadm(node, d, now))
    for d in dumps.get("conntrack"):
        load_conntrack(node, d, now)
    origin["warnings"].extend(dumps.notes)
    if not origin.get("warnings"):
        origin.pop("warnings", None)
    node.origin = origin
    return node


def _json(d: Dump, shape: type) -> Any:
    try:
        data = json.loads(d.text) if d.text.strip() else shape()
    except json.JSONDecodeError as exc:
        raise CaptureError(f"{d.source}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from None
    if not isinstance(data, shape):
        raise CaptureError(f"{d.source}: expected a JSON {'list' if shape is list else 'object'}")
    return data


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    """``obj[key]`` when it has the JSON type the tool prints (``default`` when absent), else the dump's error."""
    value = obj.get(key, default)
    if value is not default and (not isinstance(value, kind) or isinstance(value, bool)):
        names = {str: "a string", int: "a number", list: "a list", dict: "an object"}
        want = " or ".join(names.get(k, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise CaptureError(f"{where}: \"{key}\" should be {want}")
    return value


def interfaces(d: Dump) -> list[dict[str, Any]]:
    """``ip -j addr``: devices with their state, MTU, MAC and addresses, as a node description lists them."""
    out = []
    for i, dev in enumerate(_json(d, list)):
        if not isinstance(dev, dict) or not isinstance(dev.get("ifname"), str):
            raise CaptureError(f"{d.source}: device [{i}]: no ifname (is this 'ip -j addr' output?)")
        where = f"{d.source}: device [{i}] ({dev['ifname']})"
        addrs = []
        for a in _field(dev, "addr_info", list, where, []):
            if not isinstance(a, dict) or a.get("family") not in ("inet", "inet6") or "local" not in a:
                continue                                   # other families, peers without a local address
            addrs.append(f"{_field(a, 'local', str, where)}/{_field(a, 'prefixlen', int, where)}")
        flags = _field(dev, "flags", list, where, [])
        out.append({"name": dev["ifname"], "addresses": addrs, "mac": _field(dev, "address", str, where, ""),
                    "up": "UP" in flags, "mtu": _field(dev, "mtu", int, where, 1500)})
    return out


_ROUTE_TYPES = ("unicast", "local", "blackhole", "unreachable", "prohibit")


def routes(d: Dump) -> list[Route]:
    """``ip -j route``: the main table's routes the emulator models (other types are left out)."""
    from kproxy.node import parse_route

    out = []
    for i, r in enumerate(_json(d, list)):
        if not isinstance(r, dict) or not isinstance(r.get("dst"), str):
            raise CaptureError(f"{d.source}: route [{i}]: no dst (is this 'ip -j route' output?)")
        where = f"{d.source}: route [{i}] ({r['dst']})"
        rtype = _field(r, "type", str, where, "unicast")
        if rtype not in _ROUTE_TYPES:
            continue                      # multicast, broadcast, throw, ...: not in the emulator's model
        hops = _field(r, "nexthops", list, where, [r])
        hop = hops[0] if hops and isinstance(hops[0], dict) else r     # a multipath route: its first hop
        words = [rtype, r["dst"]]
        for key, word in (("gateway", "via"), ("dev", "dev"), ("prefsrc", "src"), ("metric", "metric")):
            value = _field(hop, key, int if key == "metric" else str, where) or \
                _field(r, key, int if key == "metric" else str, where)
            if value is not None and not (key == "dev" and rtype != "unicast" and value == "lo"):
                words += [word, str(value)]
        try:
            out.append(parse_route(" ".join(words)))
        except ValueError as exc:
            raise CaptureError(f"{where}: {exc}") from None
    return out


_SYSCTL = re.compile(r"^\s*([\w./-]+)\s*=\s*(.*?)\s*$")


def sysctls(d: Dump) -> dict[str, str]:
    """``sysctl`` output (``key = value`` lines); a per-device key's ``/`` (a dot in the name) kept as sysctl prints it."""
    out = {}
    for n, line in enumerate(d.text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        m = _SYSCTL.match(line)
        if m is None:
            raise CaptureError(f"{d.source}:{n}: not a 'key = value' line: {line.strip()[:60]}")
        out[m.group(1)] = " ".join(m.group(2).split())
    return out


_HEADER = re.compile(r"^# Generated by \S+ v[\d.]+ \((nf_tables|legacy)\)", re.M)


def load_iptables(node: Node, d: Dump, family: int) -> str:
    """``iptables-save -c`` into the node; returns the variant the header names (nf_tables, legacy or '')."""
    from kproxy.iptables.restore import RestoreError
    from kproxy.nftables.xtlayout import node_layout

    m = _HEADER.search(d.text)
    if m is not None and m.group(1) == "legacy":
        node_layout(node).variant = "legacy"     # nft lists none of its tables; a restore keeps undeclared policies
    ensure_named(node, d.text)        # the nfacct objects its rules name (kube-proxy's, on nfacct kernels)
    try:
        node.iptables_restore(d.text, family, counters=True)
    except RestoreError as exc:
        raise CaptureError(f"{d.source}: {_one_line(str(exc))}") from None
    return m.group(1) if m else ""


def load_nft(node: Node, d: Dump, owned: set[tuple[str, str]]) -> list[Any] | None:
    """``nft list ruleset`` (text) or ``nft -j list ruleset``, leaving out the tables iptables-nft owns;
    returns the JSON document's items (None for text)."""
    from kproxy.nftables.cli import run_nft
    from kproxy.nftables.evaluate import attach
    from kproxy.nftables.store import node_ruleset

    text, argv = d.text, ["-f", "-"]
    items = None
    if text.lstrip().startswith("{"):
        data = _json(d, dict)
        items = data.get("nftables")
        if not isinstance(items, list):
            raise CaptureError(f"{d.source}: no \"nftables\" array (is this 'nft -j list ruleset' output?)")
        kept = [o for o in items if not _owned(o, owned)]
        text, argv = json.dumps({"nftables": kept}), ["-j", "-f", "-"]
    elif owned:
        text = _drop_tables(text, owned)
    rc, _, err, rs = run_nft(argv, node_ruleset(node), text, set(node.interfaces))
    if rc != 0:
        errors = [ln.replace("/dev/stdin:", f"{d.source}:", 1) if ln.startswith("/dev/stdin:") else f"{d.source}: {ln}"
                  for ln in err.splitlines() if "Error:" in ln]      # without nft's echo of the line and carets
        raise CaptureError("; ".join(errors) or f"{d.source}: {_one_line(err)}")
    node.nftables = rs
    attach(node)
    return items


def live_layout(node: Node, items: list[Any], owned: set[tuple[str, str]]) -> None:
    """Make the iptables-nft tables' chains those the live node's nft listed, in its order, with its
    table handles: iptables-save declares every built-in chain, the live node has only those it made."""
    from kproxy.nftables.xtlayout import node_layout

    if not owned or not any(isinstance(obj, dict) and "table" in obj for obj in items):
        return                  # (a document of chains alone says nothing of the tables' handles)
    tables: dict[tuple[int, str], int] = {}
    chains: dict[tuple[int, str], list[str]] = {}
    for obj in items:
        if not ("table" in obj or "chain" in obj) or not _owned(obj, owned):
            continue
        kind, body = next(iter(obj.items()))
        key = ({"ip": 4, "ip6": 6}[body["family"]], str(body["table"] if kind == "chain" else body["name"]))
        if kind == "table":
            tables[key] = int(body.get("handle", 0))
        elif kind == "chain":
            chains.setdefault(key, []).append(str(body["name"]))
    lay = node_layout(node)
    if lay.variant == "legacy" or not tables:
        return
    for key, handle in tables.items():
        have = lay.chains.get(key)
        if have is None:
            continue
        listed = dict.fromkeys(c for c in chains.get(key, []) if c in have)
        listed.update(dict.fromkeys(c for c in have if c not in listed and c not in BUILTIN_CHAINS))
        lay.chains[key] = listed
        lay.handles[key] = handle
    lay.tables.sort(key=lambda k: (k not in tables, list(tables).index(k) if k in tables else 0))
    lay.next_handle = max([lay.next_handle, *(h + 1 for h in tables.values())])


def _owned(obj: Any, owned: set[tuple[str, str]]) -> bool:
    """A JSON ruleset item (table, chain, rule, set, ...) of a table iptables-nft owns."""
    if not owned or not isinstance(obj, dict) or len(obj) != 1:
        return False
    for kind, body in obj.items():      # the one item: a loop is the cheap way to take it
        if not isinstance(body, dict):
            return False
        return (body.get("family"), body.get("name") if kind == "table" else body.get("table")) in owned
    return False


def _drop_tables(text: str, owned: set[tuple[str, str]]) -> str:
    """``nft list ruleset`` text without the blocks of owned tables (``table FAMILY NAME {`` ... ``}``)."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        words = line.split()
        if line.startswith("table ") and len(words) >= 3:
            skipping = (words[1], words[2]) in owned
        if not skipping:
            out.append(line)
        if skipping and line.startswith("}"):
            skipping = False
    return "".join(out)


def _run_ipset(node: Node, d: Dump) -> tuple[int, str]:
    from kproxy.ipset.cli import run_ipset

    rc, _, err = run_ipset(["restore"], node.ipsets, node.now(), stdin=d.text)
    return rc, err


def _listed_order(node: Node, d: Dump) -> None:
    """Members in the order the live kernel listed them (its hash order, which the emulator does not
    compute), so ``ipset list`` and ``save`` print them back in that order."""
    order: dict[str, list[Any]] = {}
    for line in d.text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] in ("add", "-A", "-add") and words[1] in node.ipsets.sets:
            s = node.ipsets.sets[words[1]]
            order.setdefault(s.name, []).append(s.parse(words[2]))
    for name, keys in order.items():
        members = node.ipsets.sets[name].members
        listed = {k: members[k] for k in reversed(keys) if k in members}     # the set lists newest first
        members.clear()
        members.update(listed)


def _run_ipvsadm(node: Node, d: Dump, now: float) -> tuple[int, str]:
    from kproxy.ipvs.ipvsadm import run_ipvsadm

    rc, _, err = run_ipvsadm(["-R"], node.ipvs, now, stdin=d.text)
    return rc, err


def _tool(d: Dump, rc: int, err: str) -> None:
    if rc != 0:
        raise CaptureError(f"{d.source}: {_one_line(err)}")


def _one_line(err: str) -> str:
    """A tool's error report in one line, without its usage hint."""
    lines = [ln.strip() for ln in err.splitlines() if ln.strip() and not ln.startswith("Try `")]
    return "; ".join(lines)


def load_conntrack(node: Node, d: Dump, now: float) -> None:
    """``conntrack -L`` (plain or ``-o extended``) entries into the connection table, timeouts from ``now``."""
    from kproxy.lab.parsers import _parse_ct_line

    for n, line in enumerate(d.text.splitlines(), 1):
        if not line.strip() or line.startswith("conntrack v"):
            continue
        entry = _parse_ct_line(line)
        try:
            if entry is None:
                raise ValueError("not a 'conntrack -L' entry")
            node.conntrack.insert(connection(entry, now))
        except ValueError as exc:
            raise CaptureError(f"{d.source}:{n}: {exc}") from None


def connection(entry: Any, now: float) -> Any:
    """A ``kproxy.lab.parsers.CtEntry`` as the table's ``Conn``, NAT status bits from how the tuples differ."""
    from kproxy.netfilter import conntrack as ct
    from kproxy.netfilter.tcp import TCP_TIMEOUTS, TcpTrack
    from kproxy.packet import ICMP, ICMPV6, TCP

    def tup(t: Any) -> ct.Tuple:
        fam, src = _addr(t.src)
        fam2, dst = _addr(t.dst)
        if fam != fam2:
            raise ValueError(f"{t.src} and {t.dst} are of different families")
        if entry.protonum in (ICMP, ICMPV6):
            return ct.Tuple(fam, entry.protonum, src, dst, t.id or 0, (t.type or 0) << 8 | (t.code or 0))
        return ct.Tuple(fam, entry.protonum, src, dst, t.sport, t.dport)

    orig, reply = tup(entry.orig), tup(entry.reply)
    status = ct.IPS_CONFIRMED | (0 if "UNREPLIED" in entry.flags else ct.IPS_SEEN_REPLY)
    status |= ct.IPS_ASSURED if "ASSURED" in entry.flags else 0
    if (reply.dst, reply.dport) != (orig.src, orig.sport) and entry.protonum not in (ICMP, ICMPV6):
        status |= ct.IPS_SRC_NAT | ct.IPS_SRC_NAT_DONE
    if (reply.src, reply.sport) != (orig.dst, orig.dport) and entry.protonum not in (ICMP, ICMPV6):
        status |= ct.IPS_DST_NAT | ct.IPS_DST_NAT_DONE
    acct = [entry.orig.packets or 0, entry.reply.packets or 0, entry.orig.bytes or 0, entry.reply.bytes or 0]
    conn = ct.Conn(orig, reply, status, entry.mark, entry.state if entry.protonum == TCP else "",
                   now + entry.timeout, now, acct=acct, zone=entry.zone)
    if entry.protonum == TCP:
        if entry.state not in TCP_TIMEOUTS:
            raise ValueError(f"unknown TCP state {entry.state!r}")
        conn.tcp = TcpTrack(windowed=False)
    return conn


def _addr(text: str) -> tuple[int, int]:
    from kproxy.packet import parse_addr

    try:
        return parse_addr(text)
    except ValueError:
        raise ValueError(f"bad address {text!r}") from None
