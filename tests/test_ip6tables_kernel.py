"""Byte-compatibility of ip6tables (iptables 1.8.9, IPv6): the same input through the real tool in a kp-
namespace and ours, for hand-written rules and for what the proxier writes for IPv6 Services.

Headers with timestamps are the only lines left out of the comparison.
"""

from __future__ import annotations

import re

import pytest

from kproxy.backends.emulated import EmulatedBackend
from kproxy.iptables.commands import run_iptables
from kproxy.iptables.restore import RestoreError, restore
from kproxy.iptables.save import save
from kproxy.iptables.state import IptablesState
from kproxy.k8s.manifests import Objects
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.iptables import IptablesProxier

pytestmark = pytest.mark.kernel

RULES6 = """*filter
:INPUT DROP [0:0]
:KUBE-FW - [0:0]
-A INPUT -s 2001:db8::1 -d fd00::/8 -i eth0 -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT ! -s 2001:db8::/32 -p ipv6-icmp -m icmp6 --icmpv6-type echo-request -j ACCEPT
-A INPUT -p icmpv6 --icmpv6-type 135 -j ACCEPT
-A INPUT -p udp -m multiport --dports 53,5353 -m comment --comment "dns and mdns" -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m state --state INVALID -j DROP
-A INPUT -m addrtype --dst-type LOCAL -m mark --mark 0x4000/0x4000 -j KUBE-FW
-A INPUT -p tcp -j REJECT --reject-with tcp-reset
-A INPUT -j REJECT --reject-with icmp6-adm-prohibited
-A FORWARD -o cni0 -m statistic --mode random --probability 0.25 -j LOG --log-prefix "v6 " --log-level 6
-A KUBE-FW -s fe80::/10 -j RETURN
-A KUBE-FW -j REJECT
COMMIT
*nat
:KUBE-SEP - [0:0]
-A PREROUTING -d fd00:96::10/128 -p tcp -m tcp --dport 80 -j KUBE-SEP
-A OUTPUT -d fd00:96::11 -p udp -j REDIRECT --to-ports 5353
-A POSTROUTING -s fd00:244::/64 -o eth0 -j MASQUERADE --random-fully
-A POSTROUTING -s fd00:245::/64 -j SNAT --to-source 2001:db8::5
-A KUBE-SEP -p tcp -j DNAT --to-destination [fd00:244::5]:8080
COMMIT
*mangle
-A PREROUTING -j MARK --set-xmark 0x1/0xff
-A FORWARD -j CONNMARK --save-mark
COMMIT
"""

BAD6 = [
    "*filter\n-A INPUT -s 10.0.0.1 -j ACCEPT\nCOMMIT\n",                        # an IPv4 address
    "*filter\n-A INPUT -p icmpv6 --icmpv6-type nosuch -j ACCEPT\nCOMMIT\n",
    "*filter\n-A INPUT -j REJECT --reject-with icmp-host-unreachable\nCOMMIT\n",  # an IPv4 reject type
    "*nat\n-A PREROUTING -p tcp -j DNAT --to-destination [fd00::1]:99999\nCOMMIT\n",
]


def strip_header(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


def test_ip6tables_save_matches_the_real_tool(kernel_ns):
    kernel_ns.run(["ip6tables-restore"], input=RULES6)
    theirs = strip_header(kernel_ns.run(["ip6tables-save"]).stdout)
    state = IptablesState(6)
    restore(RULES6, state)
    assert save(state, header=False) == theirs


@pytest.mark.parametrize("table", ["filter", "nat"])
@pytest.mark.parametrize("flags", [["-L", "-n", "-v"], ["-S"]])
def test_ip6tables_listings_match_the_real_tool(kernel_ns, table, flags):
    kernel_ns.run(["ip6tables-restore"], input=RULES6)
    theirs = kernel_ns.run(["ip6tables", "-t", table, *flags])
    state = IptablesState(6)
    restore(RULES6, state)
    assert run_iptables(["-t", table, *flags], state) == (theirs.returncode, theirs.stdout, theirs.stderr)


@pytest.mark.parametrize("text", BAD6)
def test_ip6tables_restore_errors_match_the_real_tool(kernel_ns, text):
    theirs = kernel_ns.run(["ip6tables-restore"], input=text, check=False)
    with pytest.raises(RestoreError) as err:
        restore(text, IptablesState(6))
    assert (err.value.rc, str(err.value) + "\n") == (theirs.returncode, theirs.stderr)


def ipv6_services() -> Objects:
    objs = Objects()
    for i in range(3):
        name = f"web{i}"
        objs.add({"kind": "Service", "metadata": {"name": name, "namespace": "default"},
                  "spec": {"clusterIP": f"fd00:96::{i + 10:x}", "ipFamilies": ["IPv6"], "type": "NodePort",
                           "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080,
                                      "nodePort": 30080 + i}]}}, "test")
        objs.add({"kind": "EndpointSlice", "addressType": "IPv6",
                  "metadata": {"name": f"{name}-a", "namespace": "default",
                               "labels": {"kubernetes.io/service-name": name}},
                  "endpoints": [{"addresses": [f"fd00:244::{i * 4 + j + 1:x}"], "nodeName": "node-a",
                                 "conditions": {"ready": True}} for j in range(i + 1)],
                  "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}, "test")
    return objs


def test_the_proxiers_ipv6_rules_load_and_save_like_the_real_tool(kernel_ns):
    """What the proxier writes for IPv6 Services, restored by the real ip6tables-restore, saves back as ours."""
    node = Node.from_description({"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["2001:db8::2/64"]}]})
    cfg = ProxyConfig.from_dict({"clusterCIDR": "fd00:244::/56", "hostnameOverride": "node-a"})
    proxier = IptablesProxier(cfg, EmulatedBackend(node, family=6), ["2001:db8::2"], family=6)
    result = proxier.sync(ipv6_services())
    assert not result.error and "fd00:244::1" in result.text
    ours = strip_header(node.iptables_save(6))
    from kproxy.backends.kernel import KernelBackend

    for name in set(re.findall(r"--nfacct-name\s+(\S+)", ours)):     # kube-proxy makes its counters first
        assert KernelBackend(netns=kernel_ns.name).nfacct_ensure(name)
    kernel_ns.run(["ip6tables-restore"], input=ours)
    assert strip_header(kernel_ns.run(["ip6tables-save"]).stdout) == ours
