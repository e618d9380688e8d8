"""``kproxy verify``: run a ruleset and packets through this machine's kernel and the emulator, side by side."""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path

import click

from kproxy.cli.main import cli

PROBE_LINE = re.compile(r"^(tcp|udp)\s+(\S+)\s+(\d+)(?:\s+(from-node)|\s+via\s+(\S+))?$")
SLEEP_LINE = re.compile(r"^sleep\s+(\d+(?:\.\d*)?|\.\d+)$")     # the next probe waits that long


def parse_probes(text: str, source: str):
    from kproxy.lab.differential import Probe

    probes = []
    pause = 0.0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        wait = SLEEP_LINE.match(line)
        if wait is not None:
            pause += float(wait.group(1))
            continue
        m = PROBE_LINE.match(line)
        if m is None:
            raise click.UsageError(f"{source}:{n}: expected 'tcp|udp DESTINATION PORT [from-node|via INTERFACE]' "
                                   f"or 'sleep SECONDS', got {line!r}")
        probes.append(Probe(m.group(1), m.group(2), int(m.group(3)), bool(m.group(4)), pause, m.group(5) or ""))
        pause = 0.0
    return probes


# Where a rule names its destination, protocol and port: iptables-restore lines, nft rules.
IPT_WORDS = (r"-d (\d+\.\d+\.\d+\.\d+(?:/\d+)?)", r"-p (tcp|udp)", r"--dport (\d+)")
NFT_WORDS = (r"ip daddr (\d+\.\d+\.\d+\.\d+)(?!/)", r"\b(tcp|udp) dport", r"\b(?:tcp|udp) dport (\d+)")


def probe_to(proto: str, dst: str, port: int, via: str = ""):
    """A probe to ``dst`` (an address, or a network: its first host), arriving ``via`` an interface.
    A loopback destination is one only the node itself can send to (the client's own stack would
    keep it), so the node probes it."""
    from kproxy.lab.differential import Probe

    net = ipaddress.ip_network(dst, strict=False)
    addr = net.network_address + 1 if net.prefixlen < 31 else net.network_address
    return Probe(proto, str(addr), port, addr.is_loopback, via="" if addr.is_loopback else via)


def probes_from_rules(text: str, words: tuple[str, str, str] = IPT_WORDS, links: tuple[str, ...] = ()):
    """Probes for every (protocol, destination, port) the rules name, so a bare ruleset can be verified;
    a rule matching an input interface among ``links`` gets its probe through that link. An nft rule
    naming a destination without a protocol gets a TCP and a UDP probe."""
    from kproxy.lab.links import input_interface

    found = []
    for line in text.splitlines():
        d, p, port = (re.search(w, line) for w in words)
        via = input_interface(line)
        via = via if via in links else ""
        if d and p:
            found.append(probe_to(p.group(1), d.group(1), int(port.group(1)) if port else 80, via))
        elif d and words is NFT_WORDS:
            found += [probe_to("tcp", d.group(1), 80, via), probe_to("udp", d.group(1), 53, via)]
    return unique_or_default(found)


def unique_or_default(found: list):
    """The probes found, each once, in order; a TCP and a UDP probe to the sink's network when none."""
    from kproxy.lab.differential import Probe

    return list(dict.fromkeys(found)) or [Probe("tcp", "10.244.1.3", 80), Probe("udp", "10.244.1.3", 53)]


NFT_START = re.compile(r"^(table|flush|add|create|insert|define|include|delete|destroy)\b")


def is_nft_script(text: str) -> bool:
    """Whether a ruleset file is an nft script rather than iptables-restore input (by its first statement)."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            return NFT_START.match(line) is not None
    return False


@cli.command("verify")
@click.argument("ruleset", type=click.Path(exists=True, dir_okay=False))
@click.option("--packets", "packets_file", type=click.Path(exists=True, dir_okay=False),
              help="Probes, one per line: 'tcp|udp DESTINATION PORT [from-node]'; 'sleep SECONDS' lets time "
                   "pass before the next one.")
@click.option("--node-file", type=click.Path(exists=True, dir_okay=False),
              help="Shape the verify node as this node file's node (interface names and IPv4 addresses; the "
                   "interface with the default route faces the sink). By default the node gets every "
                   "interface the ruleset names.")
@click.option("--legacy", is_flag=True, help="Use iptables-legacy in the kernel instead of iptables-nft.")
@click.option("--nft/--iptables", "nft", default=None,
              help="RULESET is an nft script (nft -f input) or iptables-restore input; by default found "
                   "from its first statement.")
def verify_cmd(ruleset: str, packets_file: str | None, node_file: str | None, legacy: bool,
               nft: bool | None) -> None:
    """Compare the emulator with this machine's kernel for RULESET (iptables-restore input, or an nft
    script loaded with nft -f after flushing the node's nft ruleset).

    The kernel side runs in throw-away kp- namespaces (client 10.0.1.2 -> node eth0 10.0.1.1 /
    eth1 10.0.2.1 -> sink 10.0.2.2, which answers for any address); the emulator runs the same node.
    Exit status 0 when they agree, 1 when they disagree, 2 when the check cannot run here.
    """
    from kproxy.lab import nftdiff
    from kproxy.lab.differential import Case
    from kproxy.lab.kernel import HarnessError, KernelLab, kernel_lab_reason
    from kproxy.lab.verify import verify

    rules = Path(ruleset).read_text()
    if nft is None:
        nft = is_nft_script(rules)
    try:
        topology = verify_topology(rules, node_file)
    except HarnessError as exc:
        raise click.UsageError(str(exc)) from None
    links = tuple(n for n, _ in topology.links)
    if packets_file:
        probes = parse_probes(Path(packets_file).read_text(), packets_file)
        unknown = sorted({p.via for p in probes} - {"", topology.node_in, *links})
        if unknown:
            raise click.UsageError(f"{packets_file}: no interface {unknown[0]} on the verify node "
                                   f"(it has {', '.join([topology.node_in, *links])} towards the client)")
    else:
        probes = probes_from_rules(rules, NFT_WORDS if nft else IPT_WORDS, links)
    reason = kernel_lab_reason()
    if reason:
        click.echo(f"kproxy verify: cannot use the kernel here: {reason}", err=True)
        sys.exit(2)
    refused = emulator_refusal(rules, nft, topology.node_description())
    if refused is not None:
        click.echo(f"kproxy verify: the emulator refuses {ruleset}:\n{refused}", err=True)
        sys.exit(2)
    if nft:
        for note in nftdiff.notes(rules):
            click.echo(f"kproxy verify: note: {note} (its counters are not compared)", err=True)
    with KernelLab(legacy=legacy, topology=topology) as lab:
        try:
            got = verify(lab, Case(rules, probes), nft)
        except (HarnessError, nftdiff.NftRefused) as exc:
            click.echo(f"kproxy verify: this kernel refuses the ruleset (a missing feature?): {exc}", err=True)
            sys.exit(2)
    kernel, emulated, diffs = got.kernel, got.emulator, got.diffs
    for note in got.replay.notes:
        click.echo(note)
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


def verify_topology(rules: str, node_file: str | None):
    """The verify node: a node file's, or the lab's default with every interface the rules name."""
    from kproxy.lab.links import topology_for, topology_from_node
    from kproxy.yamlfile import load_yaml

    if node_file is None:
        return topology_for(rules)
    desc = load_yaml(node_file, click.UsageError)
    if not isinstance(desc, dict):
        raise click.UsageError(f"{node_file}: expected a node description (a mapping)")
    return topology_from_node(desc, node_file)


def emulator_refusal(rules: str, nft: bool, description: dict) -> str | None:
    """Why the emulated node refuses the ruleset (None when it loads it)."""
    from kproxy.iptables.restore import RestoreError
    from kproxy.lab.nftdiff import emulator_refusal as nft_refusal
    from kproxy.netfilter.nfacct import ensure_named
    from kproxy.node import Node

    if nft:
        return nft_refusal(rules, description)
    try:
        node = Node.from_description(description)
        ensure_named(node, rules)
        node.iptables_restore(rules)
    except RestoreError as exc:
        return str(exc)
    return None
