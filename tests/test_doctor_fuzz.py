"""doctor and graph driven with arbitrary arguments and mutated manifests: a one-line error or a report,
never a traceback, and the node file never changed (both only read it)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from tests.test_cli_fuzz import FUZZ, MANIFEST_LINES, WORK, _baseline, invoke, mutated, words

import kproxy.cli.doctor_cmd  # noqa: F401  (registers doctor)
import kproxy.cli.graph_cmd  # noqa: F401  (registers graph)

POD_LINES = ["metadata: {name: b, namespace: a, labels: {app: web}}", "metadata: {labels: 5}", "labels: [x]",
             "spec: {selector: {app: web}, clusterIP: 10.96.0.9, ports: [{port: 80, nodePort: 30000}]}",
             "status: {conditions: [5, {type: Ready, status: 'False'}]}", "spec: {nodeName: node}",
             "spec: {externalTrafficPolicy: Local, type: NodePort}", "spec: 3", "conditions: {ready: false}"]
DOCTOR = ["a/b", "a/b:80", "b", "10.96.0.9:80", "10.96.0.9", "[::1]:80", "::1", ":", "/", "a/b:x:y", "[",
          "--json", "--hostname-override", "node", "--config", "--backend", "emulated", "--html"]
GRAPH = ["-t", "nat", "filter", "raw", "nosuch", "--nft", "ip kube-proxy", "kube-proxy", "inet x", "--chain",
         "INPUT", "KUBE-SVC", "--format", "svg", "dot", "png", "-6", "-o"]


@FUZZ
@given(mutated(MANIFEST_LINES + POD_LINES), words(DOCTOR))
def test_doctor_manifests_and_argv(data, argv):
    path = WORK / "doctor-manifests.yaml"
    path.write_bytes(data)
    before = _baseline()
    args = [a for a in argv if a not in ("--config", "--html", "--backend")]
    invoke(["doctor", "a/b", *args, "--manifests", str(path)])
    invoke(["doctor", *args, "--manifests", str(path)])
    assert (WORK / "run.json").read_bytes() == before          # doctor only reads the node


@FUZZ
@given(words(GRAPH))
def test_graph_argv(argv):
    invoke(["graph", *[a for a in argv if a != "-o"], "--format", "dot"])


@FUZZ
@given(st.sampled_from(["svg", "dot"]), st.sampled_from([[], ["--count", "2"]]))
def test_trace_pictures(fmt, more):
    invoke(["trace", "--local", "--dst", "10.96.0.1", "--dport", "80", "--format", fmt, *more])
