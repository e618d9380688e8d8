"""The verify node's interfaces: the ones a ruleset names, or the ones a node file describes.

A ruleset taken from a real node matches on its interface names (``-i cni0``, ``oifname "ens3"``);
the lab's node must have them for those rules to match at all, and probes must be able to arrive
through them. Each named interface becomes a link from the lab's client to the node with a subnet
of its own (``10.0.N.0/24``); a wildcard (``veth+``, ``"cali*"``) becomes one interface it matches.
A node file gives the names and addresses instead: the interface holding the default route faces
the sink, the first other one the client, and every further one is a link to the client.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from kproxy.lab.kernel import HarnessError, Topology

NAMED = re.compile(r'(?:^|\s)(?:-i|--in-interface|-o|--out-interface|iifname|oifname|iif|oif)\s+(?:!=?\s+)?'
                   r'"?([A-Za-z0-9_.:@+*-]+)"?')
INPUT_NAMED = re.compile(r'(?:^|\s)(?:-i|--in-interface|iifname|iif)\s+(?:!=?\s+)?"?([A-Za-z0-9_.:@+*-]+)"?')


def concrete(name: str) -> str:
    """An interface name a wildcard (iptables' trailing ``+``, nft's ``*``) matches."""
    return name[:-1] + "0" if name.endswith(("+", "*")) else name


def named_interfaces(rules: str) -> list[str]:
    """The interface names a ruleset's rules match on, each once, in order (wildcards made concrete;
    variables, sets and the loopback left out)."""
    found = [concrete(m.group(1)) for m in NAMED.finditer(rules)]
    return [n for n in dict.fromkeys(found) if n != "lo" and not n.startswith(("$", "@")) and len(n) <= 15]


def input_interface(line: str) -> str:
    """The interface a rule line matches arriving packets on ("" when none, or a negated one)."""
    m = INPUT_NAMED.search(line)
    if m is None or line[:m.start() + 1].rstrip().endswith("!") or "!=" in m.group(0):
        return ""
    name = concrete(m.group(1))
    return "" if name == "lo" else name


def topology_for(rules: str) -> Topology:
    """The lab's default node plus a link for every other interface the rules name."""
    base = Topology()
    others = [n for n in named_interfaces(rules) if n not in (base.node_in, base.node_out)]
    return Topology(links=tuple((n, f"10.0.{10 + i}.1/24") for i, n in enumerate(others)))


def topology_from_node(desc: dict[str, Any], source: str) -> Topology:
    """The lab shaped as a node file's node: its interface names and IPv4 addresses."""
    ifaces = []
    for item in desc.get("interfaces") or []:
        addr = _v4(item, source) if item.get("name") != "lo" else None
        if addr is not None:
            ifaces.append((str(item["name"]), addr))
    if len(ifaces) < 2:
        raise HarnessError(f"{source}: the verify node needs two interfaces with IPv4 addresses, "
                           f"found {len(ifaces)}")
    out, gateway = _default(desc, [n for n, _ in ifaces])
    out_name, out_addr = next((n, a) for n, a in ifaces if n == out) if out else ifaces[-1]
    rest = [(n, a) for n, a in ifaces if n != out_name]
    in_name, in_addr = rest[0]
    sink = gateway if gateway and ipaddress.ip_address(gateway) in out_addr.network else _other_host(out_addr)
    return Topology(node_in=in_name, node_out=out_name, client=_other_host(in_addr),
                    node_in_addr=str(in_addr.ip), node_out_addr=str(out_addr.ip), sink=sink,
                    in_prefixlen=in_addr.network.prefixlen, out_prefixlen=out_addr.network.prefixlen,
                    links=tuple((n, str(a)) for n, a in rest[1:]))


def _v4(iface: dict[str, Any], source: str) -> ipaddress.IPv4Interface | None:
    for text in iface.get("addresses") or []:
        try:
            addr = ipaddress.ip_interface(str(text))
        except ValueError:
            raise HarnessError(f"{source}: interface {iface.get('name')}: bad address {text!r}") from None
        if isinstance(addr, ipaddress.IPv4Interface) and addr.network.num_addresses >= 4:
            return addr
    return None


def _default(desc: dict[str, Any], names: list[str]) -> tuple[str, str]:
    """The default route's device and gateway ("" when the node file has none)."""
    for route in desc.get("routes") or []:
        words = str(route).split()
        if words and words[0] in ("default", "0.0.0.0/0"):
            dev = words[words.index("dev") + 1] if "dev" in words[:-1] else ""
            via = words[words.index("via") + 1] if "via" in words[:-1] else ""
            if dev in names:
                return dev, via
    return "", ""


def _other_host(addr: ipaddress.IPv4Interface) -> str:
    return str(next(h for h in addr.network.hosts() if h != addr.ip))
