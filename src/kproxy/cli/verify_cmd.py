"""``kproxy verify``: run a ruleset and packets through this machine's kernel and the emulator, side by side."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from kproxy.cli.main import cli

PROBE_LINE = re.compile(r"^(tcp|udp)\s+(\S+)\s+(\d+)(\s+from-node)?$")


def parse_probes(text: str, source: str):
    from kproxy.lab.differential import Probe

    probes = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = PROBE_LINE.match(line)
        if m is None:
            raise click.UsageError(f"{source}:{n}: expected 'tcp|udp DESTINATION PORT [from-node]', got {line!r}")
        probes.append(Probe(m.group(1), m.group(2), int(m.group(3)), bool(m.group(4))))
    return probes


def probes_from_rules(text: str):
    """Probes for every (protocol, destination, port) the ruleset names, so a bare ruleset can be verified."""
    from kproxy.lab.differential import Probe

    found = []
    for line in text.splitlines():
        d = re.search(r"-d (\d+\.\d+\.\d+\.\d+)", line)
        p = re.search(r"-p (tcp|udp)", line)
        port = re.search(r"--dport (\d+)", line)
        if d and p:
            found.append(Probe(p.group(1), d.group(1), int(port.group(1)) if port else 80))
    unique = list(dict.fromkeys(found))
    return unique or [Probe("tcp", "10.244.1.3", 80), Probe("udp", "10.244.1.3", 53)]


@cli.command("verify")
@click.argument("ruleset", type=click.Path(exists=True, dir_okay=False))
@click.option("--packets", "packets_file", type=click.Path(exists=True, dir_okay=False),
              help="Probes, one per line: 'tcp|udp DESTINATION PORT [from-node]'.")
@click.option("--legacy", is_flag=True, help="Use iptables-legacy in the kernel instead of iptables-nft.")
def verify_cmd(ruleset: str, packets_file: str | None, legacy: bool) -> None:
    """Compare the emulator with this machine's kernel for RULESET (iptables-restore input).

    The kernel side runs in throw-away kp- namespaces (client 10.0.1.2 -> node eth0 10.0.1.1 /
    eth1 10.0.2.1 -> sink 10.0.2.2, which answers for any address); the emulator runs the same node.
    Exit status 0 when they agree, 1 when they disagree, 2 when the check cannot run here.
    """
    from kproxy.iptables.restore import RestoreError
    from kproxy.lab.differential import Case, compare, run_emulator, run_kernel
    from kproxy.lab.kernel import HarnessError, KernelLab, kernel_lab_reason
    from kproxy.node import Node

    rules = Path(ruleset).read_text()
    probes = parse_probes(Path(packets_file).read_text(), packets_file) if packets_file else probes_from_rules(rules)
    reason = kernel_lab_reason()
    if reason:
        click.echo(f"kproxy verify: cannot use the kernel here: {reason}", err=True)
        sys.exit(2)
    try:
        Node.from_description(KernelLab.node_description()).iptables_restore(rules)
    except RestoreError as exc:
        click.echo(f"kproxy verify: the emulator refuses {ruleset}:\n{exc}", err=True)
        sys.exit(2)
    case = Case(rules, probes)
    with KernelLab(legacy=legacy) as lab:
        try:
            kernel, observations = run_kernel(lab, case)
        except HarnessError as exc:
            click.echo(f"kproxy verify: this kernel refuses the ruleset (a missing feature?): {exc}", err=True)
            sys.exit(2)
        emulated = run_emulator(case, [o.sport for o in observations], lab,
                                segments=[o.segments for o in observations])
    diffs = compare(case, kernel, emulated)
    click.echo(f"{'probe':<40} {'kernel':<28} {'emulator':<28}")
    for i, p in enumerate(probes):
        k = kernel.fates[i] + (f" {kernel.arrivals[i].split(' -> ')[1]}" if kernel.arrivals[i] else "")
        e = emulated.fates[i] + (f" {emulated.arrivals[i].split(' -> ')[1]}" if emulated.arrivals[i] else "")
        mark = "" if (kernel.fates[i], kernel.arrivals[i]) == (emulated.fates[i], emulated.arrivals[i]) else "  <- differs"
        click.echo(f"{p.text():<40} {k:<28} {e:<28}{mark}")
    if not diffs:
        click.echo(f"agreement: {len(probes)} probes; fates, NAT rewrites, {len(kernel.counters)} rule counters and "
                   f"{len(kernel.conntrack)} conntrack entries are identical")
        return
    click.echo(f"{len(diffs)} disagreements:")
    for d in diffs:
        click.echo("  " + d.text().replace("\n", "\n  "))
    sys.exit(1)
