"""Where upstream's iptables proxier tests say a node looks different: sloppy addresses, KUBE-FIREWALL
jump placement, --random-fully as the node's iptables allows, and the nfacct counters and metrics."""

from __future__ import annotations

import pytest
from tests.test_proxier_iptables import NODE, endpoints, filter_rules, nat_rules, objects, service, setup, tcp

from kproxy.backends.emulated import EmulatedBackend
from kproxy.backends.kernel import KernelBackend
from kproxy.cli.nfacct_cmd import run_nfacct
from kproxy.k8s.sloppyip import canonical_cidr, canonical_ip
from kproxy.netfilter.nfacct import objects_of
from kproxy.node import Node
from kproxy.packet import Packet
from kproxy.proxy.config import ProxyConfig
from kproxy.proxy.iptables import IptablesProxier
from kproxy.proxy.metrics import ProxyMetrics


# ---- addresses with leading zeros (netutils.ParseIPSloppy) ----------------------------------------
@pytest.mark.parametrize(("text", "canonical"), [
    ("172.30.0.041", "172.30.0.41"), ("010.0.0.1", "10.0.0.1"), ("1.2.3.0000255", "1.2.3.255"),
    ("::ffff:1.2.3.004", "::ffff:102:304"), ("fd00::0001", "fd00::1")])
def test_sloppy_addresses_read_leading_zeros_as_decimal(text, canonical):
    assert canonical_ip(text) == canonical


@pytest.mark.parametrize("text", ["1.2.3.256", "1.2.3", "1.2.3.4.5", "1.2.3.0x4", " 1.2.3.4", "1.2.3.-4", ""])
def test_sloppy_addresses_still_refuse_what_is_no_address(text):
    with pytest.raises(ValueError):
        canonical_ip(text)


def test_sloppy_cidrs():
    assert canonical_cidr("010.001.0.0/016") == "10.1.0.0/16"
    with pytest.raises(ValueError):
        canonical_cidr("10.0.0.0/33")


def test_leading_zeros_in_services_and_slices_are_written_canonically():
    node, proxier = setup()
    svc = service("lz", "172.30.0.041", externalIPs=["192.168.099.011"], type="LoadBalancer",
                  loadBalancerSourceRanges=["203.0.113.000/24"], lb="5.6.7.008")
    proxier.sync(objects(svc, endpoints("lz", ("10.180.00.001", "node-b"))))
    text = node.iptables_save(tables=["nat"])
    assert "-d 172.30.0.41/32" in text and "-d 192.168.99.11/32" in text and "-d 5.6.7.8/32" in text
    assert "-s 203.0.113.0/24" in text and "--to-destination 10.180.0.1:80" in text
    assert "041" not in text and "099" not in text


# ---- KUBE-FIREWALL where upstream's EnsureRule(Prepend) order leaves it ------------------------------
def test_kubelet_firewall_jumps_come_first_in_input_and_output():
    node, proxier = setup()
    assert node.iptables_cmd(["-A", "INPUT", "-p", "icmp", "-j", "ACCEPT"])[0] == 0
    proxier.sync(objects(service("web", "172.30.0.41"), endpoints("web", ("10.0.1.5", "node-a"))))
    jumps = [r.split(" -j ")[-1] for r in filter_rules(node, "INPUT")]
    assert jumps == ["KUBE-FIREWALL", "KUBE-PROXY-FIREWALL", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES", "ACCEPT"]
    assert filter_rules(node, "INPUT")[0] == "-A INPUT -j KUBE-FIREWALL"
    assert [r.split(" -j ")[-1] for r in filter_rules(node, "OUTPUT")] == [
        "KUBE-FIREWALL", "KUBE-PROXY-FIREWALL", "KUBE-SERVICES"]
    assert filter_rules(node, "KUBE-FIREWALL") == [
        '-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet '
        'connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP']
    proxier.sync(objects(service("web", "172.30.0.41")), force_full=True)      # ensured once, not again
    assert len(filter_rules(node, "INPUT")) == 5


def test_kubelet_firewall_chain_is_ensured_but_empty_without_localhost_nodeports():
    node, proxier = setup(nodePortAddresses=["192.168.0.0/24"])
    proxier.sync(objects(service("web", "172.30.0.41")))
    assert filter_rules(node, "INPUT")[0] == "-A INPUT -j KUBE-FIREWALL"
    assert filter_rules(node, "KUBE-FIREWALL") == []
    assert ":KUBE-FIREWALL - [0:0]" in node.iptables_save(tables=["filter"])


# ---- --random-fully as the node's iptables supports it ----------------------------------------------
class OldIptables(EmulatedBackend):
    """A node whose iptables predates 1.6.2."""

    def has_random_fully(self) -> bool:
        return False


def test_random_fully_follows_the_node():
    _, proxier = setup()
    proxier.sync(objects())
    assert proxier.backend.has_random_fully() and proxier.random_fully
    node = Node.from_description(NODE)
    old = IptablesProxier(ProxyConfig.from_dict({"clusterCIDR": "10.0.0.0/16"}), OldIptables(node))
    old.sync(objects())
    assert nat_rules(node, "KUBE-POSTROUTING")[-1] == \
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'


def test_kernel_iptables_version_probe():
    be = KernelBackend()
    proc = be._ipt("--version")
    if proc.returncode != 0:
        pytest.skip("iptables is not installed")
    version = tuple(int(x) for x in proc.stdout.split()[1][1:].split("."))
    assert be.has_random_fully() == (version >= (1, 6, 2))


# ---- nfacct: the node's objects, the match, upstream's rules and metrics ----------------------------
def test_nfacct_tool_syntax_and_output():
    node = Node.from_description(NODE)
    assert run_nfacct(["add", "x"], node) == (0, "", "")
    assert run_nfacct(["add", "x"], node) == (1, "", "nfacct v1.0.2: netlink error: Device or resource busy\n")
    assert run_nfacct(["get", "nope"], node)[2] == "nfacct v1.0.2: netlink error: No such file or directory\n"
    assert run_nfacct(["add"], node) == (1, "", "nfacct v1.0.2: missing object name\n")
    assert run_nfacct(["list"], node) == (0, "{ pkts = 00000000000000000000, bytes = 00000000000000000000 } = x;\n", "")
    # a rule holds the object: it can be neither deleted nor flushed
    assert node.iptables_cmd(["-A", "INPUT", "-m", "nfacct", "--nfacct-name", "x"])[0] == 0
    node.receive(tcp("192.168.0.9", "192.168.0.2", 4000, 22), "eth0")
    assert run_nfacct(["get", "x", "reset"], node)[1].startswith("{ pkts = 00000000000000000001, bytes = 0000")
    assert objects_of(node).get("x").pkts == 0
    assert run_nfacct(["delete", "x"], node)[0] == 1
    run_nfacct(["flush"], node)
    assert objects_of(node).get("x") is not None
    assert node.iptables_cmd(["-D", "INPUT", "-m", "nfacct", "--nfacct-name", "x"])[0] == 0
    assert run_nfacct(["delete", "x"], node) == (0, "", "")


def test_nfacct_match_save_listing_and_missing_object():
    node = Node.from_description(NODE)
    rc, _, err = node.iptables_cmd(["-A", "INPUT", "-m", "nfacct", "--nfacct-name", "missing"])
    assert (rc, err.strip()) == (4, "iptables v1.8.9 (nf_tables):  RULE_APPEND failed (No such file or directory): "
                                    "rule in chain INPUT")
    from kproxy.iptables.restore import RestoreError

    with pytest.raises(RestoreError) as refused:      # the line of the rule, as iptables-nft-restore says
        node.iptables_restore("*filter\n-A INPUT -j ACCEPT\n-A INPUT -m nfacct --nfacct-name missing\nCOMMIT\n")
    assert str(refused.value) == ("iptables-restore v1.8.9 (nf_tables): \nline 3: RULE_APPEND failed "
                                  "(No such file or directory): rule in chain INPUT")
    run_nfacct(["add", "a b"], node)
    assert node.iptables_cmd(["-A", "INPUT", "-m", "nfacct", "--nfacct-name", "a b"])[0] == 0
    assert '-A INPUT -m nfacct --nfacct-name  "a b"' in node.iptables_save(tables=["filter"])
    assert node.iptables_cmd(["-L", "INPUT", "-n"])[1].splitlines()[2].endswith('nfacct-name  "a b"')


def test_iptables_mode_writes_upstreams_nfacct_rules_and_metrics():
    node, proxier = setup()
    proxier.sync(objects(service("np", "172.30.0.60", nodePort=30080, type="NodePort"),
                         endpoints("np", ("10.0.2.30", "node-b"))))
    assert {o.name for o in objects_of(node)} == {"ct_state_invalid_dropped_pkts", "localhost_nps_accepted_pkts"}
    assert filter_rules(node, "KUBE-FORWARD")[0] == \
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name  ct_state_invalid_dropped_pkts -j DROP"
    assert nat_rules(node, "KUBE-NODEPORTS") == [
        '-A KUBE-NODEPORTS -d 127.0.0.0/8 -p tcp -m comment --comment "ns/np:p" -m tcp --dport 30080 '
        "-m nfacct --nfacct-name  localhost_nps_accepted_pkts -j KUBE-EXT-" + nat_rules(node, "KUBE-NODEPORTS")[1][-16:],
        '-A KUBE-NODEPORTS -p tcp -m comment --comment "ns/np:p" -m tcp --dport 30080 -j KUBE-EXT-'
        + nat_rules(node, "KUBE-NODEPORTS")[1][-16:]]
    # the node connects to its own localhost node port: counted, and DNATed
    res = node.send(Packet.make("127.0.0.1", "127.0.0.1", "tcp", 40000, 30080, tcp_flags=2))
    assert res.packet.dst_str == "10.0.2.30"
    text = proxier.metrics.text().decode()
    assert "kubeproxy_iptables_localhost_nodeports_accepted_packets_total 1.0" in text
    assert "kubeproxy_iptables_ct_state_invalid_dropped_packets_total 0.0" in text


def test_no_nfacct_rules_without_the_counters():
    class NoNfacct(EmulatedBackend):
        def nfacct_ensure(self, name: str) -> bool:
            return False

    node = Node.from_description(NODE)
    metrics = ProxyMetrics()
    proxier = IptablesProxier(ProxyConfig.from_dict({"clusterCIDR": "10.0.0.0/16", "hostnameOverride": "node-a"}),
                              NoNfacct(node), metrics=metrics)
    proxier.sync(objects(service("np", "172.30.0.60", nodePort=30080, type="NodePort"),
                         endpoints("np", ("10.0.2.30", "node-b"))))
    assert "nfacct" not in node.iptables_save()
    assert "kubeproxy_iptables_ct_state" not in metrics.text().decode()


@pytest.mark.kernel
def test_kernel_nfacct_objects_and_rules(kernel_ns):
    be = KernelBackend(netns=kernel_ns.name)
    if not be.nfacct_ensure("ct_state_invalid_dropped_pkts"):
        pytest.skip("this kernel has no nfnetlink_acct")
    assert be.nfacct_packets("ct_state_invalid_dropped_pkts") == 0
    assert be.nfacct_packets("nope") is None
    proxier = IptablesProxier(ProxyConfig.from_dict({"clusterCIDR": "10.0.0.0/16", "hostnameOverride": "node-a"}),
                              be, metrics=ProxyMetrics())
    result = proxier.sync(objects(service("np", "172.30.0.60", nodePort=30080, type="NodePort"),
                                  endpoints("np", ("10.0.2.30", "node-b"))))
    assert not result.error, result.error
    saved = kernel_ns.run(["iptables-save"]).stdout
    assert "-m nfacct --nfacct-name  ct_state_invalid_dropped_pkts -j DROP" in saved
    assert "-m nfacct --nfacct-name  localhost_nps_accepted_pkts -j KUBE-EXT-" in saved
    assert "kubeproxy_iptables_localhost_nodeports_accepted_packets_total 0.0" in proxier.metrics.text().decode()


def test_nfacct_objects_persist_in_the_node_file(tmp_path):
    from click.testing import CliRunner

    import kproxy.cli.commands  # noqa: F401
    from kproxy.cli.main import cli

    node = str(tmp_path / "n.db")

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(cli, ["--node", node, *args])

    assert run("nfacct", "add", "seen").exit_code == 0
    assert run("iptables", "-A", "INPUT", "-m", "nfacct", "--nfacct-name", "seen").exit_code == 0
    assert run("nfacct", "list").output == "{ pkts = 00000000000000000000, bytes = 00000000000000000000 } = seen;\n"
    busy = run("nfacct", "delete", "seen")
    assert busy.exit_code == 1 and "Device or resource busy" in busy.output
    assert run("iptables", "-F", "INPUT").exit_code == 0
    assert run("nfacct", "flush").exit_code == 0
    assert run("nfacct", "list").output == ""


@pytest.mark.kernel
def test_nfacct_match_against_the_real_tool(kernel_ns):
    from kproxy.iptables.restore import RestoreError

    text = "*filter\n:X - [0:0]\n-A INPUT -j ACCEPT\n-A INPUT -m nfacct --nfacct-name acct\nCOMMIT\n"
    theirs = kernel_ns.run(["iptables-restore", "--noflush"], input=text, check=False)
    node = Node.from_description(NODE)
    with pytest.raises(RestoreError) as refused:
        node.iptables_restore(text, noflush=True)
    assert (refused.value.rc, str(refused.value) + "\n") == (theirs.returncode, theirs.stderr)
    if not KernelBackend(netns=kernel_ns.name).nfacct_ensure("acct"):
        pytest.skip("this kernel has no nfnetlink_acct")
    kernel_ns.run(["iptables-restore", "--noflush"], input=text)
    run_nfacct(["add", "acct"], node)
    node.iptables_restore(text, noflush=True)
    real = [ln for ln in kernel_ns.run(["iptables-save", "-t", "filter"]).stdout.splitlines() if ln.startswith("-A")]
    assert real == [ln for ln in node.iptables_save(tables=["filter"]).splitlines() if ln.startswith("-A")]
    listing = kernel_ns.run(["iptables", "-L", "INPUT", "-n"]).stdout
    assert node.iptables_cmd(["-L", "INPUT", "-n"])[1] == listing


# ---- both traffic policies Local (upstream's UsesClusterEndpoints) -----------------------------------
def test_both_traffic_policies_local_keep_the_cluster_chain_for_short_circuits():
    """The external chain's short-circuit rules jump to KUBE-SVC-, so it exists even when neither policy
    is Cluster (the restore used to fail: "Chain 'KUBE-SVC-...' does not exist")."""
    node, proxier = setup()
    r = proxier.sync(objects(service("web", "172.30.0.41", type="LoadBalancer", nodePort=30080, lb="1.2.3.4",
                                     externalTrafficPolicy="Local", internalTrafficPolicy="Local"),
                             endpoints("web", ("10.0.1.5", "node-a"), ("10.0.2.5", "node-b"))))
    assert not r.error, r.error
    svc_rules = [x for x in node.iptables_save(tables=["nat"]).splitlines() if x.startswith("-A KUBE-SVC-")]
    assert len(svc_rules) == 2 and "10.0.2.5:80" in svc_rules[1]
    pod = node.receive(Packet.make("10.0.1.9", "1.2.3.4", "tcp", 41000, 80), "cni0")
    assert pod.packet.dst_str in ("10.0.1.5", "10.0.2.5")
    outside = node.receive(Packet.make("203.0.113.9", "1.2.3.4", "tcp", 41001, 80), "eth0")
    assert outside.packet.dst_str == "10.0.1.5"
