"""``kproxy lab``: an emulated lab kept between commands, and failures reported in one line with a
non-zero exit status (never a traceback). The same errors on a kernel lab are in test_lab.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from kproxy.cli.main import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def lab(*args: str) -> Result:
    import kproxy.cli.lab_cmd  # noqa: F401 - registers the lab group

    return CliRunner().invoke(cli, ["lab", *args])


def one_error(res: Result, code: int = 1) -> str:
    """The failure's single stderr line (and no traceback)."""
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.output
    return lines[0]


@pytest.fixture(params=["iptables", "ipvs", "api"])
def emulated(tmp_path, request) -> str:
    """The example lab up, emulated, with every node's kproxy in the mode of the test's parameter (or, for
    ``api``, in iptables mode fed by its watch of the lab's API server)."""
    desc = EXAMPLES / "lab.yaml"
    if request.param != "iptables":
        desc = tmp_path / "lab.yaml"
        change = {"source": "api"} if request.param == "api" else {"mode": request.param}
        desc.write_text(yaml.safe_dump({**yaml.safe_load((EXAMPLES / "lab.yaml").read_text()), **change}))
    d = str(tmp_path / "lab")
    res = lab("up", str(desc), "--emulated", "--dir", d)
    assert res.exit_code == 0, res.output
    return d


def test_up_emulated_keeps_a_lab_that_status_curl_and_down_use(emulated):
    d = emulated
    assert Path(d, "state.json").exists() and Path(d, "description.yaml").exists()
    status = lab("status", "--dir", d)
    assert status.exit_code == 0
    assert status.output.splitlines()[0] == f"emulated lab demo in {d}"
    assert sorted(line.split()[1] for line in status.output.splitlines() if line.strip().startswith("pod")) == \
        ["default/dns-0", "default/web-0", "default/web-1", "default/web-2"]
    as_json = yaml.safe_load(lab("status", "--dir", d, "--json").output)
    assert as_json["emulated"] is True and set(as_json["nodes"]) == {"node-1", "node-2"}

    res = lab("curl", "--dir", d, "--count", "4", "web-0", "10.96.0.50:80")
    assert res.exit_code == 0 and res.stderr == ""
    answers = res.stdout.splitlines()
    assert len(answers) == 4 and all(a.startswith("pod=web-") for a in answers)
    # Another pod sees web-0's own address; web-0 reaching itself is hairpin-masqueraded to its node.
    assert all(("peer=10.244.1.1:" if a.startswith("pod=web-0 ") else "peer=10.244.1.10:") in a for a in answers)
    local = lab("curl", "--dir", d, "client", "192.168.50.11:30081")          # externalTrafficPolicy Local
    assert local.exit_code == 0 and local.stdout.split()[1] == "peer=192.168.50.100:40001"
    dns = lab("curl", "--dir", d, "--udp", "web-1", "10.96.0.10:53")
    assert dns.exit_code == 0 and dns.stdout.startswith("pod=dns-0 ")

    down = lab("down", "--dir", d)
    assert (down.exit_code, down.output) == (0, "removed emulated lab demo\n")
    assert one_error(lab("status", "--dir", d)) == f"Error: no lab in {d} (run `kproxy lab up` first)"
    assert one_error(lab("curl", "--dir", d, "client", "192.168.50.11:30080")).startswith("Error: no lab in")


def test_refused_and_dropped_requests_fail_with_one_line(emulated):
    d = emulated
    refused = one_error(lab("curl", "--dir", d, "web-0", "10.96.0.53:80"))            # no endpoints: REJECT
    assert refused == "Error: web-0 -> 10.96.0.53:80/tcp: connection refused (a TCP reset or ICMP port " \
                      "unreachable came back: rejected)"
    assert lab("scale", "--dir", d, "web", "1").output == "web scaled to 1\n"
    pods = [p["name"] for p in yaml.safe_load(lab("status", "--dir", d, "--json").output)["pods"]]
    assert pods == ["web-0", "dns-0"]
    # node-2 has no web pod left: its Local NodePort drops.
    dropped = one_error(lab("curl", "--dir", d, "client", "192.168.50.12:30081"))
    assert dropped == "Error: client -> 192.168.50.12:30081/tcp: no answer (timed out: dropped on the way)"
    # With no web pods at all the Service rejects: each failed request says so, and the command fails.
    assert lab("scale", "--dir", d, "web", "0").exit_code == 0
    res = lab("curl", "--dir", d, "--count", "2", "dns-0", "10.96.0.50:80")
    assert (res.exit_code, res.stdout) == (1, "")
    assert res.stderr.splitlines() == ["Error: dns-0 -> 10.96.0.50:80/tcp: connection refused (a TCP reset or ICMP "
                                       "port unreachable came back: rejected)"] * 2


def test_a_second_up_and_node_or_namespace_commands_on_an_emulated_lab_are_refused(emulated):
    d = emulated
    assert one_error(lab("up", str(EXAMPLES / "lab.yaml"), "--emulated", "--dir", d)) == \
        f"Error: a lab is already up in {d} (kproxy lab down --dir {d})"
    assert "no namespaces" in one_error(lab("exec", "--dir", d, "node-1", "true"))
    assert "not from a node" in one_error(lab("curl", "--dir", d, "node-1", "10.96.0.50:80"))
    assert one_error(lab("curl", "--dir", d, "web-9", "10.96.0.50:80")) == \
        "Error: no client, node or pod called 'web-9'"
    assert one_error(lab("scale", "--dir", d, "nope", "2")) == "Error: no deployment nope"
    assert one_error(lab("scale", "--dir", d, "--", "web", "-1")) == "Error: replicas must be 0 or more"


@pytest.mark.parametrize("target, why", [
    ("10.96.0.50", "expected IPV4:PORT (e.g. 10.96.0.50:80)"),
    ("10.96.0.500:80", "'10.96.0.500' is not an IPv4 address"),
    ("web:80", "'web' is not an IPv4 address"),
    ("10.96.0.50:0", "'0' is not a port (1 to 65535)"),
    ("10.96.0.50:65536", "'65536' is not a port (1 to 65535)"),
    ("10.96.0.50:http", "'http' is not a port (1 to 65535)"),
])
def test_bad_targets_are_named(tmp_path, target, why):
    # Checked before the lab is even looked for.
    assert one_error(lab("curl", "--dir", str(tmp_path), "client", target)) == f"Error: bad target {target!r}: {why}"


@pytest.mark.parametrize("change, message", [
    ({"network": "192.168.50.0/33"}, "network: '192.168.50.0/33' is not an IPv4 network (ADDRESS/PREFIX)"),
    ({"network": "192.168.50.0/28"}, "network: 192.168.50.0/28 is too small for this lab (/25 or larger)"),
    ({"clusterCIDR": "10.244.1.0/24"}, "clusterCIDR: 10.244.1.0/24 is too small for this lab (/22 or larger)"),
    ({"services": [{"name": "web", "clusterIP": "10.96.0.256"}]},
     "services[0].clusterIP: '10.96.0.256' is not an IPv4 address"),
    ({"services": [{"name": "web", "clusterIP": "10.96.0.5", "ports": [{"port": 70000}]}]},
     "services[0].ports[0].port: 70000 is out of range (1 to 65535)"),
    ({"services": [{"name": "w", "clusterIP": "10.96.0.5", "ports": [{"port": 80, "protocol": "ICMP"}]}]},
     "services[0].ports[0].protocol: 'ICMP' is not TCP, UDP or SCTP"),
    ({"deployments": [{"name": "web", "replicas": "three"}]}, "deployments[0].replicas: 'three' is not a number"),
    ({"deployments": [{"name": "web", "tcp": [8080, "x"]}]}, "deployments[0].tcp[1]: 'x' is not a number"),
    ({"mode": "userspace"}, "mode: 'userspace' is not a proxy mode (iptables, ipvs or nftables)"),
    ({"nodes": ["node-1", {"name": "node-2", "mode": "kernelspace"}]},
     "nodes[1].mode: 'kernelspace' is not a proxy mode (iptables, ipvs or nftables)"),
])
def test_bad_descriptions_name_the_field(tmp_path, change, message):
    desc = tmp_path / "lab.yaml"
    desc.write_text(yaml.safe_dump({"name": "t", "nodes": ["node-1", "node-2", "node-3"], **change}))
    d = str(tmp_path / "lab")
    assert one_error(lab("up", str(desc), "--emulated", "--dir", d)) == f"Error: {desc}: {message}"
    assert not Path(d, "state.json").exists()


def test_a_damaged_state_file_is_reported(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    assert one_error(lab("status", "--dir", str(tmp_path))).startswith(f"Error: {tmp_path}/state.json: not a lab state file")


def test_a_kept_lab_without_its_description_is_reported(emulated):
    Path(emulated, "description.yaml").unlink()
    assert one_error(lab("scale", "--dir", emulated, "web", "2")) == \
        f"Error: {emulated}/description.yaml: no lab description there"
    assert one_error(lab("curl", "--dir", emulated, "web-0", "10.96.0.50:80")) == \
        f"Error: {emulated}/description.yaml: no lab description there"


def test_a_kernel_lab_without_root_says_so(tmp_path, monkeypatch):
    import kproxy.lab.netns

    monkeypatch.setattr(kproxy.lab.netns.os, "geteuid", lambda: 1000)
    assert one_error(lab("up", str(EXAMPLES / "lab.yaml"), "--dir", str(tmp_path / "lab"))) == \
        "Error: cannot build a kernel lab here: needs root to create network namespaces (try --emulated)"


def test_waiting_for_the_node_proxies_first_sync(tmp_path):
    from kproxy.lab.cluster import LabError, LabState, wait_for_proxies

    state = LabState("t", str(tmp_path), proxies={"node-1": 101, "node-2": 102})
    log1, log2 = tmp_path / "node-1-kproxy.log", tmp_path / "node-2-kproxy.log"
    log1.write_text("sync full: 40 restore lines, 12 nat + 3 filter rules, 8.1 ms, ok\n")
    with pytest.raises(LabError, match=r"^kproxy on node-2 did not sync within 0.2 s"):
        wait_for_proxies(state, timeout=0.2)
    log2.write_text("sync full: 40 restore lines, 0 nat + 0 filter rules, 3.0 ms, FAILED: iptables-restore: "
                    "line 3 failed\n")
    with pytest.raises(LabError, match=r"^kproxy on node-2 failed: sync full: .* FAILED: iptables-restore"):
        wait_for_proxies(state, timeout=5)
    log2.write_text("Traceback (most recent call last):\nOSError: [Errno 98] Address in use\n")
    with pytest.raises(LabError, match=r"^kproxy on node-2 failed: OSError: \[Errno 98\] Address in use"):
        wait_for_proxies(state, timeout=0.2)
    log2.write_text("sync full: 40 restore lines, 12 nat + 3 filter rules, 7.0 ms, ok\n"
                    "sync partial: 4 restore lines, 12 nat + 3 filter rules, 1.0 ms, FAILED: later\n")
    wait_for_proxies(state, timeout=0.2)                 # the first sync is what counts
