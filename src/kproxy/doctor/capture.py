"""The live kernel of this network namespace, captured as an emulated node for doctor to examine.

Interfaces, addresses and routes (``ip -j``), the sysctls Services depend on (/proc/sys), the
iptables rules with counters (``iptables-save -c``), ipsets (``ipset save``), nft table ip kube-proxy,
IPVS (``ipvsadm -Sn``, where the kernel has it) and conntrack (``conntrack -L``): doctor then traces
its packets through the emulator of exactly this state, and changes nothing in the kernel.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from kproxy.netfilter.nfacct import ensure_named
from kproxy.node import Node
from kproxy.packet import parse_addr

SYSCTLS = ("net.ipv4.ip_forward", "net.ipv4.conf.all.route_localnet", "net.bridge.bridge-nf-call-iptables",
           "net.netfilter.nf_conntrack_max")
PROTOS = {"tcp": 6, "udp": 17, "sctp": 132}


class CaptureError(RuntimeError):
    """A tool doctor needs to read the kernel failed (one line: the tool and its message)."""


def _run(argv: list[str], required: bool = True) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        if required:
            raise CaptureError(f"{argv[0]}: not installed") from None
        return ""
    if p.returncode != 0:
        if required:
            raise CaptureError(f"{' '.join(argv)}: {(p.stderr.strip().splitlines() or ['failed'])[-1]}")
        return ""
    return p.stdout


def describe_links() -> dict[str, Any]:
    """This namespace's interfaces, IPv4 addresses and routes, as ``Node.from_description`` takes them."""
    links = json.loads(_run(["ip", "-j", "addr", "show"]) or "[]")
    interfaces = [{"name": ln["ifname"], "up": "UP" in ln.get("flags", []), "mac": ln.get("address", ""),
                   "addresses": [f"{a['local']}/{a['prefixlen']}" for a in ln.get("addr_info", [])
                                 if a.get("family") == "inet"]} for ln in links]
    routes = []
    for r in json.loads(_run(["ip", "-j", "-4", "route", "show"]) or "[]"):
        if r.get("protocol") == "kernel" and r.get("scope") == "link":
            continue                                  # connected routes: the node derives them
        if r.get("type", "unicast") != "unicast" or "dev" not in r:
            continue
        via = f" via {r['gateway']}" if r.get("gateway") else ""
        routes.append(f"{r['dst']}{via} dev {r['dev']}")
    sysctls = {}
    for name in SYSCTLS:
        path = Path("/proc/sys", *name.split("."))
        if path.exists():
            sysctls[name] = path.read_text().strip()
        elif name == "net.bridge.bridge-nf-call-iptables":
            sysctls[name] = "0"          # br_netfilter not loaded: iptables never sees bridged packets
    return {"name": _run(["uname", "-n"]).strip() or "node", "interfaces": interfaces, "routes": routes,
            "sysctls": sysctls}


def _conntrack(node: Node) -> None:
    from kproxy.lab.parsers import parse_conntrack
    from kproxy.netfilter.conntrack import (
        IPS_ASSURED,
        IPS_DST_NAT,
        IPS_SEEN_REPLY,
        IPS_SRC_NAT,
        Conn,
        TcpTrack,
        Tuple,
    )

    now = node.now()
    for e in parse_conntrack(_run(["conntrack", "-L"], required=False)):
        proto = PROTOS.get(e.proto)
        if proto is None or ":" in e.orig.src:
            continue
        orig = Tuple(4, proto, parse_addr(e.orig.src)[1], parse_addr(e.orig.dst)[1], e.orig.sport, e.orig.dport)
        reply = Tuple(4, proto, parse_addr(e.reply.src)[1], parse_addr(e.reply.dst)[1], e.reply.sport, e.reply.dport)
        status = (IPS_DST_NAT if e.dnat else 0) | (IPS_SRC_NAT if e.snat else 0) | \
            (IPS_SEEN_REPLY if e.replied else 0) | (IPS_ASSURED if e.assured else 0)
        conn = Conn(orig, reply, status, e.mark, e.state, now + e.timeout, now)
        if proto == 6:
            conn.tcp = TcpTrack(windowed=False)
        node.conntrack.insert(conn)


def capture_kernel(legacy: bool = False) -> Node:
    """This namespace's kernel state as an emulated node."""
    from kproxy.ipset.cli import run_ipset
    from kproxy.ipvs.ipvsadm import run_ipvsadm
    from kproxy.nftables.cli import run_nft
    from kproxy.nftables.evaluate import attach
    from kproxy.nftables.store import node_ruleset

    node = Node.from_description(describe_links(), "the kernel")
    sets = _run(["ipset", "save"], required=False)
    if sets:
        rc, _, err = run_ipset(["restore"], node.ipsets, node.now(), stdin=sets)
        if rc:
            raise CaptureError(f"ipset save: {err.strip()}")
    save = "iptables-legacy-save" if legacy else "iptables-save"
    dump = _run([save, "-c"])
    ensure_named(node, dump)          # the nfacct objects its rules name (kube-proxy's, on nfacct kernels)
    node.iptables_restore(dump, counters=True)
    nft = _run(["nft", "list", "table", "ip", "kube-proxy"], required=False)
    if nft:
        rc, _, err, rs = run_nft(["-f", "-"], node_ruleset(node), nft, set(node.interfaces))
        if rc:
            raise CaptureError(f"nft list table ip kube-proxy: {err.strip()}")
        node.nftables = rs
        attach(node)
    ipvs = _run(["ipvsadm", "-Sn"], required=False)
    if ipvs.strip():
        run_ipvsadm(["-R"], node.ipvs, node.now(), stdin=ipvs)
    _conntrack(node)
    return node
