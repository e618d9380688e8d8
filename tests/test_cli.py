"""The kproxy command: tool-compatible subcommands that compose through the node state file."""

from __future__ import annotations

import json

from click.testing import CliRunner

from kproxy.cli.main import cli, main


def run(node: str, *args: str, stdin: str | None = None):
    import kproxy.cli.commands  # noqa: F401
    import kproxy.cli.proxy_cmd  # noqa: F401

    return CliRunner().invoke(cli, ["--node", node, *args], input=stdin)


def test_commands_compose_like_a_host(tmp_path):
    node = str(tmp_path / "n.json")
    assert run(node, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.96.0.1", "--dport", "443",
               "-j", "DNAT", "--to-destination", "192.168.1.5:6443").exit_code == 0
    out = run(node, "iptables-save", "-t", "nat").output
    assert "-A OUTPUT -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 192.168.1.5:6443" in out
    res = run(node, "trace", "--local", "--dst", "10.96.0.1", "-p", "tcp", "--dport", "443", "--json")
    data = json.loads(res.output)
    assert data[0]["fate"] == "forwarded" and data[0]["packet"]["dst"] == "192.168.1.5"
    listing = run(node, "conntrack", "-L")
    assert "dport=443" in listing.output and "1 flow entries have been shown" in listing.output
    assert run(node, "conntrack", "-F").exit_code == 0
    assert "0 flow entries" in run(node, "conntrack", "-L").output


def test_a_failed_command_changes_nothing(tmp_path):
    node = str(tmp_path / "n.json")
    run(node, "iptables", "-N", "FOO")
    before = (tmp_path / "n.json").read_bytes()
    bad = run(node, "iptables-restore", "-n", stdin="*filter\n-A FOO -j ACCEPT\n-A INPUT -j NOPE\nCOMMIT\n")
    assert bad.exit_code == 2
    assert "Chain 'NOPE' does not exist" in bad.output
    assert (tmp_path / "n.json").read_bytes() == before


def test_trace_summary_for_many_packets(tmp_path):
    node = str(tmp_path / "n.json")
    run(node, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-m", "statistic", "--mode", "nth",
        "--every", "2", "--packet", "0", "-j", "DNAT", "--to-destination", "192.168.1.7")
    res = run(node, "trace", "--local", "--dst", "192.168.1.50", "-p", "udp", "--dport", "53", "--count", "10")
    lines = res.output.splitlines()
    assert lines[0] == "10 packets"
    assert any("50.00%" in ln and "192.168.1.7:53" in ln for ln in lines)


def test_proxy_once_and_services(tmp_path):
    from pathlib import Path

    ex = Path(__file__).resolve().parents[1] / "examples"
    node = str(tmp_path / "n.json")
    assert run(node, "node", "init", "--from", str(ex / "node.yaml")).exit_code == 0
    res = run(node, "proxy", "--config", str(ex / "kube-proxy.yaml"), "--manifests", str(ex / "manifests.yaml"),
              "--once")
    assert res.exit_code == 0, res.output
    saved = run(node, "iptables-save").output
    body = [ln for ln in saved.splitlines() if not ln.startswith("#")]
    assert body == [ln for ln in (ex / "iptables.rules").read_text().splitlines() if not ln.startswith("#")]
    svc = run(node, "services", "--config", str(ex / "kube-proxy.yaml"), "--manifests", str(ex / "manifests.yaml"))
    assert "kube-system/kube-dns:dns udp 10.96.0.10:53" in svc.output
    assert "10.244.1.3:53 (local)" in svc.output


def test_main_entry_point_runs(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "version" in capsys.readouterr().out


def test_trace_shorthands_and_cleanup(tmp_path):
    from pathlib import Path

    ex = Path(__file__).resolve().parents[1] / "examples"
    node = str(tmp_path / "n.json")
    run(node, "node", "init", "--from", str(ex / "node.yaml"))
    run(node, "proxy", "--config", str(ex / "kube-proxy.yaml"), "--manifests", str(ex / "manifests.yaml"), "--once")
    run(node, "iptables", "-A", "INPUT", "-s", "10.9.9.9", "-j", "DROP")          # a user's own rule
    res = run(node, "trace", "--from-pod", "default/client", "--to-service", "kube-system/kube-dns:dns",
              "--manifests", str(ex / "manifests.yaml"), "--json")
    data = json.loads(res.output)
    assert data[0]["packet"]["dst"] in ("10.244.1.3", "10.244.2.4") and data[0]["packet"]["dport"] == 53
    bad = run(node, "trace", "--from-pod", "default/nobody", "--manifests", str(ex / "manifests.yaml"), "--dst", "1.1.1.1")
    assert bad.exit_code == 2 and "no pod default/nobody" in bad.output
    assert run(node, "cleanup").exit_code == 0
    saved = run(node, "iptables-save").output
    left = [ln for ln in saved.splitlines() if "KUBE-" in ln]
    assert all("KUBE-FIREWALL" in ln for ln in left) and len(left) == 4, left   # the kubelet's, as upstream leaves it
    assert "-A INPUT -s 10.9.9.9/32 -j DROP" in saved


def test_listings_as_json_for_scripts(tmp_path):
    node = str(tmp_path / "n.json")
    assert run(node, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.96.0.1", "--dport", "443",
               "-j", "DNAT", "--to-destination", "192.168.1.5:6443").exit_code == 0
    run(node, "trace", "--local", "--dst", "10.96.0.1", "-p", "tcp", "--dport", "443")
    nat = json.loads(run(node, "iptables", "-t", "nat", "-L", "OUTPUT", "--json").stdout)
    rule = nat["chains"][0]["rules"][0]
    assert nat["table"] == "nat" and rule["target"] == "DNAT" and rule["packets"] == 1
    assert rule["rule"] == "-A OUTPUT -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 192.168.1.5:6443"
    assert json.loads(run(node, "iptables", "-t", "nat", "-S", "--json").stdout)["chains"][0]["name"] == "PREROUTING"
    bad = run(node, "iptables", "-A", "INPUT", "--json")
    assert bad.exit_code == 2 and "--json goes with -L or -S only" in bad.stderr
    flows = json.loads(run(node, "conntrack", "-L", "--json").stdout)
    assert flows[0]["original"]["dport"] == 443 and flows[0]["reply"]["src"] == "192.168.1.5"
    assert run(node, "ipset", "create", "S", "hash:ip,port", "timeout", "100").exit_code == 0
    assert run(node, "ipset", "add", "S", "10.0.0.1,udp:53").exit_code == 0
    sets = json.loads(run(node, "ipset", "list", "--json").stdout)
    member = sets[0]["members"][0]
    assert member["element"] == "10.0.0.1,udp:53" and 0 < member["timeout"] <= 100       # the node's clock runs
    assert run(node, "ipvsadm", "-A", "-t", "10.96.0.2:80", "-s", "sh", "-b", "sh-port").exit_code == 0
    assert run(node, "ipvsadm", "-a", "-t", "10.96.0.2:80", "-r", "10.1.0.1:8080", "-m", "-w", "3").exit_code == 0
    svc = json.loads(run(node, "ipvsadm", "-Ln", "--json").stdout)[0]
    assert (svc["scheduler"], svc["flags"], svc["servers"][0]["port"], svc["servers"][0]["weight"]) == \
        ("sh", ["sh-port"], 8080, 3)


def test_node_show_json_describes_the_node(tmp_path):
    node = str(tmp_path / "n.db")
    assert run(node, "node", "init").exit_code == 0
    res = run(node, "node", "show", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    eth0 = next(i for i in data["interfaces"] if i["name"] == "eth0")
    assert eth0["addresses"] == ["192.168.1.10/24"]
    assert data["routes"] == ["default via 192.168.1.1 dev eth0"]
    assert "192.168.1.0/24 dev eth0 src 192.168.1.10" in data["connected_routes"]
    assert data["sysctls"]["net.ipv4.ip_forward"] == "1"
