"""The kernel backend at scale: a restore that names many chains reads each table's rules in one dump
(iptables-nft), and still touches nothing but kproxy's chains; the kernel ends up with exactly the
rules the emulated node gets."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

from kproxy.backends.emulated import EmulatedBackend
from kproxy.backends.kernel import ONE_DUMP_CHAINS, KernelBackend, nft_chain_names, one_dump_input
from kproxy.node import Node
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.iptables import IptablesProxier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_proxier import build  # noqa: E402

FOREIGN = """*nat
:PREROUTING ACCEPT [0:0]
:USER-NAT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
[7:420] -A PREROUTING -p tcp -m tcp --dport 2222 -j USER-NAT
[3:180] -A USER-NAT -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:USER-FILTER - [0:0]
[5:300] -A INPUT -s 10.9.9.9/32 -j USER-FILTER
[1:60] -A USER-FILTER -j DROP
COMMIT
"""


def test_one_dump_input_opens_each_table_with_a_listing():
    text = "*filter\n:A - [0:0]\n-A A -j ACCEPT\nCOMMIT\n*nat\nCOMMIT\n"
    assert one_dump_input(text) == "*filter\n-S\n:A - [0:0]\n-A A -j ACCEPT\nCOMMIT\n*nat\n-S\nCOMMIT\n"


def test_nft_chain_names_of_one_table():
    listing = ("table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy accept;\n"
               "\t}\n\tchain KUBE-X {\n\t}\n}\ntable ip nat {\n\tchain KUBE-SVC-A {\n\t}\n\tchain a\"b {\n\t}\n}\n")
    assert nft_chain_names(listing, "nat") == ["KUBE-SVC-A", 'a"b']
    assert nft_chain_names(listing, "filter") == ["INPUT", "KUBE-X"]


def _proxier(backend: object) -> IptablesProxier:
    cfg = ProxyConfig.from_dict({"clusterCIDR": "10.128.0.0/9", "hostnameOverride": "node-a"})
    return IptablesProxier(cfg, backend, ["192.168.0.2"])


def _kube(save_text: str) -> list[str]:
    return sorted(ln for ln in save_text.splitlines() if "KUBE-" in ln and "CANARY" not in ln)


def _foreign(save_text: str) -> list[str]:
    return [ln for ln in save_text.splitlines() if "USER-" in ln or "KUBELET-CANARY" in ln]


@pytest.mark.kernel
@pytest.mark.parametrize("legacy", [False, True], ids=["nft", "legacy"])
def test_large_syncs_keep_other_writers_rules_and_match_the_emulated_node(kernel_ns, legacy):
    be = KernelBackend(netns=kernel_ns.name, legacy=legacy)
    be.restore(FOREIGN, noflush=True, counters=True)
    saved = kernel_ns.run([be.iptables_save, "-c"]).stdout
    before = _foreign(saved)
    assert len(before) == 7, saved
    objs = {"kernel": build(60, 5), "emulated": build(60, 5)}   # 60 Services: 423 chains, above ONE_DUMP_CHAINS
    node = Node.from_description({"name": "node-a", "interfaces": [{"name": "eth0", "addresses": ["192.168.0.2/24"]}]})
    proxiers = {"kernel": _proxier(be), "emulated": _proxier(EmulatedBackend(node))}
    for name, p in proxiers.items():
        full = p.sync(objs[name])
        assert not full.error, full.error
        assert full.text.count("\n:") >= ONE_DUMP_CHAINS
    assert _kube(kernel_ns.run([be.iptables_save]).stdout) == _kube(node.iptables_save())
    assert _foreign(kernel_ns.run([be.iptables_save, "-c"]).stdout) == before

    for name, p in proxiers.items():             # one endpoint replaced: a partial sync
        o = objs[name]
        o.dirty = set()
        es = copy.deepcopy(o.slices["ns0/svc0-a"])
        es.endpoints[0].addresses = ["10.255.255.1"]
        o.update_slice(es)
        part = p.sync(o)
        assert not part.error and not part.full, part.error
    assert _kube(kernel_ns.run([be.iptables_save]).stdout) == _kube(node.iptables_save())

    for name, p in proxiers.items():             # stale chains go on a full sync
        for key in [k for k in objs[name].services if k.endswith(("/svc1", "/svc2"))]:
            objs[name].delete_service(key)
        assert not p.sync(objs[name], force_full=True).error
    kube = _kube(kernel_ns.run([be.iptables_save]).stdout)
    assert kube == _kube(node.iptables_save()) and not any("svc1:" in ln for ln in kube)
    assert _foreign(kernel_ns.run([be.iptables_save, "-c"]).stdout) == before
