"""``kproxy doctor`` on the seed's four "Service not reachable" problems, built on the emulated node from
manifests, ``kproxy proxy --once`` and user rules: each is found with its cause and evidence (exit 1),
and passes once the fix doctor names is applied (exit 0)."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import yaml
from click.testing import CliRunner

from kproxy.cli.main import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
VIP = "10.96.100.20"


def kp(node: str, *args: str):
    import kproxy.cli.commands  # noqa: F401
    import kproxy.cli.doctor_cmd  # noqa: F401
    import kproxy.cli.graph_cmd  # noqa: F401
    import kproxy.cli.nft_cmd  # noqa: F401
    import kproxy.cli.proxy_cmd  # noqa: F401

    return CliRunner().invoke(cli, ["--node", node, *args])


def manifests(ready: dict[str, bool] | None = None, pods: tuple[str, ...] = ("10.244.1.6", "10.244.2.6")) -> dict:
    """Service default/web (NodePort 30080, selector app=web), its pods and EndpointSlice, and a client pod."""
    ready = ready or {}
    where = {"10.244.1.6": "worker-1", "10.244.2.6": "worker-2", "10.244.2.7": "worker-2"}
    items = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"type": "NodePort", "clusterIP": VIP, "selector": {"app": "web"},
                  "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
         "endpoints": [{"addresses": [ip], "nodeName": where[ip], "conditions": {"ready": ready.get(ip, True)}}
                       for ip in pods]},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "default"},
         "spec": {"nodeName": "worker-1"}, "status": {"podIP": "10.244.1.5", "phase": "Running"}},
    ]
    for n, ip in enumerate(pods, 1):
        items.append({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": f"web-{n}", "namespace": "default", "labels": {"app": "web"}},
                      "spec": {"nodeName": where[ip]},
                      "status": {"podIP": ip, "phase": "Running", "conditions": [
                          {"type": "Ready", "status": "True" if ready.get(ip, True) else "False"}]}})
    return {"apiVersion": "v1", "kind": "List", "items": items}


class Cluster:
    """A worker node (examples/node.yaml) programmed by kproxy's kube-proxy from manifests."""

    def __init__(self, tmp: Path, mode: str = "iptables") -> None:
        self.node = str(tmp / "node.db")
        self.objs = tmp / "objs.yaml"
        self.mode = mode
        assert kp(self.node, "node", "init", "--from", str(EXAMPLES / "node.yaml")).exit_code == 0

    def apply(self, objs: dict, sync: bool = True) -> None:
        self.objs.write_text(yaml.safe_dump(objs))
        if sync:
            res = kp(self.node, "proxy", "--config", str(EXAMPLES / "kube-proxy.yaml"), "--mode", self.mode,
                     "--manifests", str(self.objs), "--once")
            assert res.exit_code == 0, res.output

    def run(self, *args: str):
        res = kp(self.node, *args)
        assert res.exit_code == 0, res.output
        return res.output

    def doctor(self, target: str = "default/web", *extra: str) -> tuple[int, dict]:
        res = kp(self.node, "doctor", target, "--manifests", str(self.objs), "--config",
                 str(EXAMPLES / "kube-proxy.yaml"), "--json", *extra)
        assert res.exit_code in (0, 1), res.output
        return res.exit_code, json.loads(res.output)


def errors(report: dict, check: str | None = None) -> list[dict]:
    return [f for f in report["findings"] if f["severity"] == "error" and (check is None or f["check"] == check)]


def test_healthy_service_passes_every_path(tmp_path):
    c = Cluster(tmp_path)
    c.apply(manifests())
    rc, report = c.doctor()
    assert rc == 0 and report["healthy"] and not errors(report)
    names = [p["name"] for p in report["paths"]]
    assert any("pod default/client" in n for n in names) and any("node itself" in n for n in names)
    assert any("NodePort 192.168.1.10:30080" in n for n in names)
    assert all(p["reached"] in ("10.244.1.6:8080", "10.244.2.6:8080") for p in report["paths"])
    selector = next(f for f in report["findings"] if f["check"] == "selector")
    assert selector["severity"] == "ok" and "matches 2 pod(s)" in selector["title"]
    # the address form finds the same Service, through its cluster IP or its node port
    assert c.doctor(f"{VIP}:80")[1]["target"] == f"{VIP}:80"
    assert c.doctor("192.168.1.10:30080")[0] == 0


def test_problem1_drop_rule_blind_after_dnat(tmp_path):
    """"I added a DROP rule but K8s still routes traffic": the filter rule matches the Service address,
    which DNAT already rewrote."""
    c = Cluster(tmp_path)
    c.apply(manifests())
    c.run("iptables", "-A", "INPUT", "-s", "198.51.100.7", "-d", VIP, "-p", "tcp", "--dport", "80", "-j", "DROP")
    probe = ["trace", "--iif", "eth0", "--src", "198.51.100.7", "--dst", VIP, "--dport", "80", "--json", "--dry-run"]
    assert json.loads(c.run(*probe))[0]["fate"] == "forwarded"          # the rule really never fires
    rc, report = c.doctor()
    assert rc == 1
    [f] = errors(report, "user-rule")
    assert f["evidence"][0]["where"] == "filter INPUT #5"
    assert f["evidence"][0]["text"] == f"-A INPUT -s 198.51.100.7/32 -d {VIP}/32 -p tcp -m tcp --dport 80 -j DROP"
    assert "DNAT" in f["title"] and "--ctorigdst" in f["fix"]
    fixed = re.search(r"iptables -t filter (-I FORWARD 1 [^;]+?) ;", f["fix"]).group(1)
    assert fixed == f"-I FORWARD 1 -s 198.51.100.7/32 -p tcp -m conntrack --ctorigdst {VIP} --ctorigdstport 80 -j DROP"
    c.run("iptables", *shlex.split(fixed))
    c.run("iptables", "-D", "INPUT", "5")
    rc, report = c.doctor()
    assert rc == 0, errors(report)
    dropped = json.loads(c.run(*probe))[0]
    assert dropped["fate"] == "dropped" and dropped["hook"] == "FORWARD"   # the rewritten rule does its job


def test_problem2_nodeport_blocked_in_input(tmp_path):
    """"NodePort works from inside the cluster but not from outside": in IPVS mode filter INPUT sees the
    NodePort, and a DROP there stops it; doctor names the exact rule."""
    c = Cluster(tmp_path, mode="ipvs")
    c.apply(manifests())
    c.run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "30080", "-j", "DROP")
    rc, report = c.doctor()
    assert rc == 1
    stopped = [p for p in report["paths"] if not p["reached"]]
    assert [p["name"] for p in stopped] == ["from outside via NodePort 192.168.1.10:30080"]
    assert stopped[0]["stopped_at"] == "filter INPUT #4: -A INPUT -p tcp -m tcp --dport 30080 -j DROP"
    [f] = errors(report, "path")
    assert f["evidence"][0] == {"kind": "rule", "text": "-A INPUT -p tcp -m tcp --dport 30080 -j DROP",
                                "where": "filter INPUT #4"}
    assert "iptables -t filter -D INPUT 4" in f["fix"] and "-p tcp --dport 30080 -j ACCEPT" in f["fix"]
    assert any(e["kind"] == "trace" and "dropped in INPUT" in e["text"] for e in f["evidence"])
    c.run("iptables", "-t", "filter", "-I", "INPUT", "4", "-p", "tcp", "--dport", "30080", "-j", "ACCEPT")
    rc, report = c.doctor()
    assert rc == 0 and all(p["reached"] for p in report["paths"])


def test_problem2_in_iptables_mode_the_input_rule_is_blind(tmp_path):
    """In iptables mode the same INPUT rule never sees the NodePort (DNAT rewrote the port): doctor says so."""
    c = Cluster(tmp_path)
    c.apply(manifests())
    c.run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "30080", "-j", "DROP")
    rc, report = c.doctor()
    [f] = errors(report, "user-rule")
    assert rc == 1 and "node port 30080" in f["title"] and "--ctorigdstport 30080" in f["fix"]


def test_problem2_forward_policy_drop_stops_pod_traffic(tmp_path):
    c = Cluster(tmp_path)
    c.apply(manifests())
    c.run("iptables", "-P", "FORWARD", "DROP")
    rc, report = c.doctor()
    assert rc == 1
    pod = next(p for p in report["paths"] if "pod default/client" in p["name"])
    assert pod["stopped_at"] == "filter FORWARD policy DROP"
    c.run("iptables", "-P", "FORWARD", "ACCEPT")
    assert c.doctor()[0] == 0


def test_problem3_endpoints_not_ready(tmp_path):
    """"Service endpoints keep appearing and disappearing": readiness fails, kube-proxy drops the endpoints."""
    c = Cluster(tmp_path)
    c.apply(manifests(ready={"10.244.1.6": False, "10.244.2.6": False}))
    rc, report = c.doctor()
    assert rc == 1
    [f] = errors(report, "endpoints")
    assert "0 of 2 endpoint(s) ready" in f["title"] and "readiness" in f["fix"]
    assert {e["where"] for e in f["evidence"]} == {"EndpointSlice default/web-abc endpoints[0].conditions",
                                                    "EndpointSlice default/web-abc endpoints[1].conditions"}
    assert all("ready=false" in e["text"] for e in f["evidence"])
    pod = next(p for p in report["paths"] if "pod default/client" in p["name"])
    assert pod["fate"] == "rejected" and pod["stopped_at"].startswith("filter KUBE-SERVICES #1: ")
    assert '"default/web:http has no endpoints"' in pod["stopped_at"]
    # One comes back in the objects, but kube-proxy has not synced yet: the rules are behind.
    c.apply(manifests(ready={"10.244.2.6": False}), sync=False)
    rc, report = c.doctor()
    [rules] = errors(report, "rules")
    assert rc == 1 and any(e["text"].startswith("missing: -A KUBE-SVC-") for e in rules["evidence"])
    c.apply(manifests(ready={"10.244.2.6": False}))
    rc, report = c.doctor()
    assert rc == 0
    warn = next(f for f in report["findings"] if f["check"] == "endpoints")
    assert warn["severity"] == "warning" and "1 of 2" in warn["title"]


def test_problem4_stale_conntrack_after_scale_down(tmp_path):
    """"Connections hang after scaling down": an established connection still DNATed to a deleted pod."""
    c = Cluster(tmp_path)
    c.apply(manifests(pods=("10.244.1.6", "10.244.2.6", "10.244.2.7")))
    packets = tmp_path / "conn.txt"
    syn = f"--iif cni0 --src 10.244.1.5 --dst {VIP} -p tcp --sport 5555 --dport 80"
    packets.write_text(f"{syn}\nreply\n{syn} --tcp-flags ACK\n")
    c.run("trace", "--packets", str(packets))
    listing = c.run("conntrack", "-L", "-p", "tcp", "--orig-dst", VIP)
    gone = re.search(r"ESTABLISHED .*? src=(\S+) dst=10\.244\.1\.5", listing).group(1)
    c.apply(manifests(pods=tuple(ip for ip in ("10.244.1.6", "10.244.2.6", "10.244.2.7") if ip != gone)))
    rc, report = c.doctor()
    assert rc == 1
    [f] = errors(report, "conntrack")
    assert gone in f["title"] and f["evidence"][0]["where"] == "conntrack -L"
    assert f"src=10.244.1.5 dst={VIP} sport=5555 dport=80 src={gone}" in f["evidence"][0]["text"]
    assert f["fix"] == f"conntrack -D -p tcp --orig-dst {VIP} --reply-src {gone}"
    c.run(*shlex.split(f["fix"]))
    rc, report = c.doctor()
    assert rc == 0, errors(report)


def test_unknown_service_and_bad_target(tmp_path):
    c = Cluster(tmp_path)
    c.apply(manifests())
    rc, report = c.doctor("default/nope")
    assert rc == 1 and errors(report, "service")[0]["title"] == "no Service default/nope in the objects"
    rc, report = c.doctor("default/web:9999")
    assert rc == 1 and "has no port '9999'" in errors(report, "service")[0]["title"]
    bad = kp(c.node, "doctor", "10.96.100.20", "--manifests", str(c.objs))
    assert bad.exit_code == 2 and "needs a port number" in bad.output and "Traceback" not in bad.output


def test_text_report_names_cause_and_fix(tmp_path):
    c = Cluster(tmp_path)
    c.apply(manifests())
    c.run("iptables", "-A", "INPUT", "-s", "198.51.100.7", "-d", VIP, "-j", "DROP")
    res = kp(c.node, "doctor", "default/web", "--manifests", str(c.objs), "--config", str(EXAMPLES / "kube-proxy.yaml"))
    assert res.exit_code == 1
    assert "[XX] user-rule: filter INPUT rule 5" in res.output and "fix: match the connection's original" in res.output
    assert res.output.rstrip().endswith("NOT healthy: 1 error(s)")


def test_sysctls(tmp_path):
    c = Cluster(tmp_path)
    c.apply(manifests())
    from kproxy.doctor.report import diagnose
    from kproxy.doctor.target import Case
    from kproxy.k8s.manifests import load
    from kproxy.proxy.config import ProxyConfig
    from kproxy.store.session import NodeSession

    session = NodeSession(Path(c.node), False, None)
    node = session.node
    node.sysctls.update({"net.ipv4.ip_forward": "0", "net.bridge.bridge-nf-call-iptables": "0",
                         "net.netfilter.nf_conntrack_max": "10"})
    cfg = ProxyConfig.load(EXAMPLES / "kube-proxy.yaml")
    for i in range(9):
        from kproxy.netfilter.path import output
        from kproxy.packet import Packet

        output(node, Packet.make("192.168.1.10", "192.168.1.50", "udp", 1000 + i, 53))
    report = diagnose(Case(node, load(c.objs), cfg, "worker-1", "default/web"))
    titles = [f.title for f in report.findings if f.check == "sysctl"]
    assert any(t.startswith("net.ipv4.ip_forward=0") for t in titles)
    assert any(t.startswith("net.bridge.bridge-nf-call-iptables=0 with bridge cni0") for t in titles)
    assert any(t.startswith("conntrack table 9/10 entries") for t in titles)
    assert not report.healthy
    session.close()


def test_external_traffic_policy_local_without_local_endpoints(tmp_path):
    c = Cluster(tmp_path)
    objs = manifests(pods=("10.244.2.6",))
    objs["items"][0]["spec"]["externalTrafficPolicy"] = "Local"
    objs["items"][0]["spec"]["healthCheckNodePort"] = 32000
    c.apply(objs)
    rc, report = c.doctor()
    assert rc == 1
    policy = next(f for f in report["findings"] if f["check"] == "traffic-policy")
    assert "no endpoint on this node (worker-1)" in policy["title"]
    outside = next(p for p in report["paths"] if "NodePort" in p["name"])
    assert not outside["reached"] and "has no local endpoints" in outside["stopped_at"]


NFT_SERVICE = {"apiVersion": "v1", "kind": "List", "items": [
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc1", "namespace": "ns1"},
     "spec": {"clusterIP": "172.30.0.41", "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "targetPort": 80}]}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "svc1-a", "namespace": "ns1", "labels": {"kubernetes.io/service-name": "svc1"}},
     "addressType": "IPv4", "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}],
     "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ("10.180.0.1", "10.180.0.2")]}]}


def test_nftables_mode_rules_and_a_blind_nft_rule(tmp_path):
    """kube-proxy's nftables shape (tests/data/nft/kube_proxy.nft): map element, service and endpoint chains
    checked against the objects; a user's nft rule on the Service address after DNAT is found and rewritten."""
    c = Cluster(tmp_path)
    objs = copy.deepcopy(NFT_SERVICE)
    c.objs.write_text(yaml.safe_dump(objs))
    c.run("nft", "-f", str(Path(__file__).parent / "data" / "nft" / "kube_proxy.nft"))
    rc, report = c.doctor("ns1/svc1")
    assert rc == 0 and report["mode"] == "nftables"
    rules = next(f for f in report["findings"] if f["check"] == "rules")
    assert {"kind": "rule", "text": "172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80",
            "where": "ip kube-proxy map service-ips"} in rules["evidence"]
    assert {p["reached"] for p in report["paths"]} <= {"10.180.0.1:80", "10.180.0.2:80"}
    for cmd in ("add table inet filter", "add chain inet filter input { type filter hook input priority 0 ; }",
                "add chain inet filter forward { type filter hook forward priority 0 ; }",
                "add rule inet filter input ip saddr 198.51.100.7 ip daddr 172.30.0.41 tcp dport 80 drop"):
        c.run("nft", cmd)
    rc, report = c.doctor("ns1/svc1")
    [f] = errors(report, "user-rule")
    assert rc == 1 and f["evidence"][0]["where"] == "inet filter input handle 3"
    fixed = re.search(r"nft (insert rule .*?) ;", f["fix"]).group(1)
    assert fixed == ("insert rule inet filter forward ip saddr 198.51.100.7 ct original ip daddr 172.30.0.41 "
                     "meta l4proto tcp ct original proto-dst 80 drop")
    c.run("nft", fixed)
    c.run("nft", "delete rule inet filter input handle 3")
    assert c.doctor("ns1/svc1")[0] == 0
    probe = json.loads(c.run("trace", "--iif", "eth0", "--src", "198.51.100.7", "--dst", "172.30.0.41",
                             "--dport", "80", "--json", "--dry-run"))[0]
    assert probe["fate"] == "dropped" and probe["hook"] == "FORWARD"
    # an endpoint the table lacks: the rules are behind the objects
    objs["items"][1]["endpoints"].append({"addresses": ["10.180.0.3"], "conditions": {"ready": True}})
    c.objs.write_text(yaml.safe_dump(objs))
    rc, report = c.doctor("ns1/svc1")
    [f] = errors(report, "rules")
    assert rc == 1 and {"kind": "rule", "text": "missing endpoint chain for 10.180.0.3/80",
                        "where": "ip kube-proxy"} in f["evidence"]


def test_objects_from_the_api_server(api, tmp_path):
    """The objects as the API server has them (the local API server of tests/data/api/cluster.json)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(api.kubeconfig()))
    node = str(tmp_path / "n.db")
    assert kp(node, "node", "init", "--from", str(EXAMPLES / "node.yaml")).exit_code == 0
    res = kp(node, "proxy", "--kubeconfig", str(kubeconfig), "--hostname-override", "kind-worker", "--once")
    assert res.exit_code == 0, res.output
    res = kp(node, "doctor", "kube-system/kube-dns", "--kubeconfig", str(kubeconfig), "--hostname-override",
             "kind-worker", "--json")
    report = json.loads(res.output)
    assert report["mode"] == "iptables" and not errors(report, "service") and not errors(report, "rules")
    assert res.exit_code == (0 if report["healthy"] else 1) and report["paths"]
    both = kp(node, "doctor", "x/y", "--kubeconfig", str(kubeconfig), "--manifests", str(kubeconfig))
    assert both.exit_code == 2 and "--manifests, or the API server" in both.output


def test_internal_traffic_policy_local_and_headless(tmp_path):
    c = Cluster(tmp_path)
    objs = manifests(pods=("10.244.2.6",))
    objs["items"][0]["spec"]["internalTrafficPolicy"] = "Local"
    headless = copy.deepcopy(objs["items"][0])
    headless["metadata"]["name"] = "web-headless"
    headless["spec"] = {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}
    objs["items"].append(headless)
    c.apply(objs)
    rc, report = c.doctor()
    policy = next(f for f in report["findings"] if f["check"] == "traffic-policy")
    assert rc == 1 and "internalTrafficPolicy Local and no ready endpoint on this node" in policy["title"]
    pod = next(p for p in report["paths"] if "pod default/client" in p["name"])
    assert not pod["reached"]
    rc, report = c.doctor("default/web-headless")
    assert rc == 0 and report["paths"] == [] and "headless" in report["findings"][1]["title"]


def test_rules_compare_what_routes_not_the_flags(tmp_path):
    """Without kube-proxy's config (its clusterCIDR) doctor still agrees with the rules it wrote: it
    compares where each rule sends packets, not the local-traffic matches that depend on the flags."""
    c = Cluster(tmp_path)
    objs = manifests()
    objs["items"][0]["spec"]["externalTrafficPolicy"] = "Local"
    c.apply(objs)
    res = kp(c.node, "doctor", "default/web", "--manifests", str(c.objs), "--json")
    report = json.loads(res.output)
    assert res.exit_code == 0 and not errors(report)
    rules = next(f for f in report["findings"] if f["check"] == "rules")
    assert any(e["text"].startswith("-A KUBE-EXT-") and "-j KUBE-SVL-" in e["text"] for e in rules["evidence"])


def test_closing_and_unanswered_tcp_entries_are_not_stale(tmp_path):
    """A TIME_WAIT or never-answered SYN_SENT entry to a gone endpoint hangs nobody: not reported."""
    c = Cluster(tmp_path)
    c.apply(manifests(pods=("10.244.1.6",)))
    c.run("trace", "--iif", "cni0", "--src", "10.244.1.5", "--dst", VIP, "--dport", "80", "--sport", "7777")
    c.apply(manifests(pods=("10.244.2.6",)))
    assert "SYN_SENT" in c.run("conntrack", "-L")
    rc, report = c.doctor()
    assert rc == 0 and not errors(report, "conntrack")


def test_blind_rule_in_a_user_chain_is_rewritten_for_the_built_in_chain(tmp_path):
    c = Cluster(tmp_path)
    c.apply(manifests())
    c.run("iptables", "-N", "MY-FW")
    c.run("iptables", "-A", "INPUT", "-j", "MY-FW")
    c.run("iptables", "-A", "MY-FW", "-s", "198.51.100.7", "-d", VIP, "-j", "REJECT")
    rc, report = c.doctor()
    [f] = errors(report, "user-rule")
    assert rc == 1 and f["title"].startswith("filter MY-FW rule 1 (reached from INPUT) matches")
    assert f"iptables -t filter -I FORWARD 1 -s 198.51.100.7/32 -m conntrack --ctorigdst {VIP} -j REJECT" in f["fix"]


def test_ipvs_mode_blind_forward_rule_moves_to_input(tmp_path):
    """In IPVS mode filter INPUT sees the Service address (IPVS runs after it) and FORWARD never does."""
    c = Cluster(tmp_path, mode="ipvs")
    c.apply(manifests())
    c.run("iptables", "-I", "FORWARD", "1", "-s", "198.51.100.7", "-d", VIP, "-j", "DROP")
    rc, report = c.doctor()
    [f] = errors(report, "user-rule")
    assert rc == 1 and f["evidence"][0]["where"] == "filter FORWARD #1" and "IPVS" in f["title"]
    fixed = re.search(r"iptables (-I INPUT 1 [^;]+?) ;", f["fix"]).group(1)
    assert fixed == f"-I INPUT 1 -s 198.51.100.7/32 -d {VIP}/32 -j DROP"
    c.run("iptables", *shlex.split(fixed))
    c.run("iptables", "-D", "FORWARD", "1")
    assert c.doctor()[0] == 0
    probe = json.loads(c.run("trace", "--iif", "eth0", "--src", "198.51.100.7", "--dst", VIP, "--dport", "80",
                             "--json", "--dry-run"))[0]
    assert probe["fate"] == "dropped" and probe["hook"] == "INPUT"


def test_an_ipv6_only_service_is_said_to_be_unchecked(tmp_path):
    c = Cluster(tmp_path)
    objs = manifests()
    objs["items"][0]["spec"].update(clusterIP="fd00::20", clusterIPs=["fd00::20"], ipFamilies=["IPv6"])
    c.apply(objs, sync=False)
    rc, report = c.doctor()
    assert rc == 0 and report["paths"] == []
    assert any(f["severity"] == "warning" and "IPv4 only" in f["title"] for f in report["findings"])
