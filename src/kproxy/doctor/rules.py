"""Checklist step 4: the mode's rules are present and match the objects; and user rules that can never
match a Service because kube-proxy's DNAT rewrote the destination before they run.

The expected iptables rules come from the proxier itself (``IptablesProxier.service_rules``): what
kube-proxy on this node would write for the objects, compared with what the node holds.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from typing import Any

from kproxy.doctor.findings import ERROR, INFO, OK, WARN, Finding, Report
from kproxy.doctor.target import Case
from kproxy.iptables.model import STANDARD_VERDICTS, Rule, Table
from kproxy.iptables.parser import ParameterProblem, parse_command, tokenize
from kproxy.iptables.save import format_net, format_rule, rule_spec
from kproxy.packet import format_addr, parse_addr

NFT_TABLE = "kube-proxy"
# Built-in chains that run after the nat table's DNAT at PREROUTING/OUTPUT (priority -100): a rule there
# sees the endpoint's address and port, never the Service's.
AFTER_DNAT = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "mangle": ("INPUT", "FORWARD", "POSTROUTING"),
              "nat": ("INPUT", "POSTROUTING"), "security": ("INPUT", "FORWARD", "OUTPUT")}
# In IPVS mode the virtual server takes the packet at INPUT (after filter INPUT, which sees the Service
# address) and sends it on through OUTPUT and POSTROUTING rewritten: FORWARD never sees it, OUTPUT and
# POSTROUTING see the real server.
AFTER_IPVS = {"filter": ("FORWARD", "OUTPUT"), "mangle": ("FORWARD", "POSTROUTING"), "nat": ("POSTROUTING",),
              "security": ("FORWARD", "OUTPUT")}
KEY_RULE = re.compile(r"-j (KUBE-SEP-|KUBE-SVC-|KUBE-SVL-|KUBE-EXT-|KUBE-FW-|DNAT|REJECT|DROP)")


def detect_mode(case: Case) -> str:
    """Which kube-proxy mode programmed this node, from what the node holds."""
    node = case.node
    if node.ipvs.services or node.ipsets.get("KUBE-CLUSTER-IP") is not None:
        return "ipvs"
    nft = getattr(node, "nftables", None)
    if nft is not None and nft.find("ip", NFT_TABLE) is not None:
        return "nftables"
    nat = node.iptables[4].tables.get("nat")
    if nat is not None and "KUBE-SERVICES" in nat.chains:
        return "iptables"
    return "none"


def check_rules(case: Case, report: Report, mode: str) -> None:
    if case.service is None or not case.ports:
        return
    if mode == "none":
        report.add(Finding("rules", ERROR, "kube-proxy has not programmed this node: no KUBE-SERVICES chain, no IPVS "
                           f"virtual servers, no nft table ip {NFT_TABLE}",
                           fix="is kube-proxy running (ps aux | grep kube-proxy; its logs)? kproxy proxy --once "
                           "--manifests ... programs the emulated node"))
        return
    {"iptables": _iptables_rules, "ipvs": _ipvs_rules, "nftables": _nft_rules}[mode](case, report)


def canonical(line: str, table: str) -> str:
    """A restore line as iptables-save prints it (quoting, match order, /32)."""
    try:
        c = parse_command(tokenize(line), 4, restore=True, default_table=table)
    except (ParameterProblem, ValueError):
        return line
    return format_rule(c.chain, c.rules[0]) if c.rules else line


def _expected(case: Case) -> Iterator[tuple[Any, str, str, str]]:
    """(service port, table, chain, canonical line) of the rules that decide where the Service's packets go."""
    from kproxy.proxy.iptables import IptablesProxier

    proxier = IptablesProxier(case.cfg, backend=None, node_ips=case.node_ips())
    counters = case.node.subsystems.get("nfacct")
    for name in proxier.nfacct:        # kube-proxy writes its nfacct rules where the node has the counters
        proxier.nfacct[name] = counters is not None and counters.get(name) is not None
    for info, eps in case.ports:
        sr = proxier.service_rules(info, eps)
        lines = [("nat", ln) for ln in sr.rules] + [(t, ln) for (t, _), lns in sr.top.items() for ln in lns]
        for table, line in lines:
            if KEY_RULE.search(line):
                text = canonical(line, table)
                yield info, table, text.split()[1], text


def rule_lines(table: Table, chain: str) -> list[str]:
    ch = table.chains.get(chain)
    return [format_rule(chain, r) for r in ch.rules] if ch is not None else []


def signature(line: str) -> tuple[str, ...]:
    """What a routing rule decides, without the matches that depend on kube-proxy's flags (the local-traffic
    detector's ``-s clusterCIDR``, masquerade marks): chain, address, port, target, DNAT destination."""
    def opt(pattern: str) -> str:
        m = re.search(pattern, line)
        return m.group(1) if m else ""

    target = opt(r"-j (\S+)")
    comment = opt(r'--comment ("[^"]*"|\S+)') if target in ("REJECT", "DROP") else ""
    return (line.split()[1], opt(r"-d (\S+)"), opt(r"--dport (\d+)"), target, opt(r"--to-destination (\S+)"), comment)


def _service_lines(case: Case, tables: dict[str, Table], chains: set[tuple[str, str]]) -> Iterator[tuple[str, str, int, str]]:
    """(table, chain, position, line) of the routing rules the node holds for the Service: all of its own
    chains' (KUBE-SVC/SVL/EXT/FW/SEP), and those of shared chains whose comment names one of its ports."""
    names = tuple(f'"{info.name_string}' for info, _ in case.ports) + tuple(f"{info.name_string} " for info, _ in case.ports)
    own = {prefix + info.svc_chain[len("KUBE-SVC-"):] for info, _ in case.ports
           for prefix in ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-")}
    for table, chain in sorted(chains | {("nat", c) for c in own}):
        mine = chain in own or chain.startswith("KUBE-SEP-")
        for n, line in enumerate(rule_lines(tables[table], chain) if table in tables else [], 1):
            if KEY_RULE.search(line) and (mine or any(x in line for x in names)):
                yield table, chain, n, line


def _iptables_rules(case: Case, report: Report) -> None:
    tables = case.node.iptables[4].tables
    expected = {signature(text): (table, text) for _info, table, _chain, text in _expected(case)}
    actual = {signature(line): (table, chain, n, line)
              for table, chain, n, line in _service_lines(case, tables, {(t, x.split()[1]) for t, x in expected.values()})}
    missing = [expected[k] for k in expected if k not in actual]
    extra = [actual[k] for k in actual if k not in expected]
    if not missing and not extra:
        f = report.add(Finding("rules", OK, f"iptables: the {len(actual)} rule(s) that route the Service match its "
                               "endpoints"))
        for table, chain, n, text in actual.values():
            f.add("rule", text, f"{table} {chain} #{n}")
        return
    f = report.add(Finding("rules", ERROR, f"iptables rules do not match the objects ({len(missing)} missing, "
                           f"{len(extra)} left over): kube-proxy has not synced since they changed",
                           fix="check that kube-proxy runs and syncs (its logs; kproxy proxy --once for the emulated "
                           "node); rules it writes for endpoints that are gone send traffic nowhere"))
    for table, text in missing:
        f.add("rule", f"missing: {text}", f"{table} {text.split()[1]}")
    for table, chain, n, text in extra:
        f.add("rule", f"left over: {text}", f"{table} {chain} #{n}")


def _ipvs_rules(case: Case, report: Report) -> None:
    node = case.node
    now = node.now()
    for info, eps in case.ports:
        proto = {"tcp": 6, "udp": 17, "sctp": 132}[info.protocol]
        want = {(e.ip, e.port) for e in eps if e.ready or (e.serving and e.terminating)}
        addrs = [(ip, info.port) for ip in (info.cluster_ip, *info.external_ips, *info.lb_vips)]
        addrs += [(ip, info.node_port) for ip in case.node_ips() if info.node_port]
        f = Finding("rules", OK, f"IPVS: {info.name_string}: {len(addrs)} virtual server(s) with the endpoints")
        for ip, port in addrs:
            svc = node.ipvs.services.get((0, proto, parse_addr(ip)[1], port))
            if svc is None:
                f.severity = ERROR
                f.add("rule", f"missing virtual server {info.protocol.upper()} {ip}:{port}", "ipvsadm -Ln")
                continue
            have = {(format_addr(d.addr, d.family), d.port) for d in svc.dests if d.weight > 0}
            f.add("rule", f"{svc.text()} {svc.scheduler_name} -> " + (", ".join(f"{a}:{p}" for a, p in sorted(have))
                                                                    or "no destinations"), "ipvsadm -Ln")
            if have != want:
                f.severity = ERROR
                f.add("rule", "destinations differ from the endpoints: want "
                      + (", ".join(f"{a}:{p}" for a, p in sorted(want)) or "none"), "ipvsadm -Ln")
        s = node.ipsets.get("KUBE-CLUSTER-IP")
        entry = f"{info.cluster_ip},{info.protocol}:{info.port}"
        if s is None or not s.contains(s.parse(entry), now):
            f.severity = ERROR
            f.add("rule", f"ipset KUBE-CLUSTER-IP lacks {entry}", "ipset list KUBE-CLUSTER-IP")
        else:
            f.add("rule", f"ipset KUBE-CLUSTER-IP has {entry}", "ipset list KUBE-CLUSTER-IP")
        if f.severity == ERROR:
            f.title = f"IPVS: {info.name_string}: virtual servers or ipsets do not match the objects"
            f.fix = "check that kube-proxy (ipvs mode) runs and syncs; ipvsadm -Ln shows what it programmed"
        report.add(f)


def _nft_rules(case: Case, report: Report) -> None:
    """nftables mode: the Service's element in a verdict map, its service chain, and one endpoint chain
    (named ``...__IP/PORT``) per live endpoint and no more."""
    from kproxy.nftables.expr import Opts

    table = case.node.nftables.find("ip", NFT_TABLE)
    opts = Opts()
    for info, eps in case.ports:
        needle = f"{info.cluster_ip} . {info.protocol} . {info.port}"
        hits = [(s.name, e.text(opts)) for s in table.sets.values() for e in s.elems if needle in e.text(opts)]
        mine = f"{info.namespace}/{info.name}/{info.protocol}/{info.port_name}"
        chains = [c for c in table.chains if mine in c]
        have = {c.rsplit("__", 1)[1] for c in chains if "__" in c}
        want = {f"{e.ip}/{e.port}" for e in eps if e.ready or (e.serving and e.terminating)}
        f = report.add(Finding("rules", OK, f"nftables: {info.name_string}: map element, service and endpoint "
                               "chains match the objects"))
        for name, text in hits:
            f.add("rule", text, f"ip {NFT_TABLE} map {name}")
        for c in chains:
            f.add("rule", f"chain {c} ({len(table.chains[c].rules)} rules)", f"ip {NFT_TABLE}")
        problems = ([] if hits else [f"no element {needle} in any map"]) + \
            [f"missing endpoint chain for {ep}" for ep in sorted(want - have)] + \
            [f"left over endpoint chain for {ep}" for ep in sorted(have - want)]
        if problems:
            f.severity, f.title = ERROR, f"nftables: {info.name_string}: table ip {NFT_TABLE} does not match the objects"
            f.fix = "check that kube-proxy (nftables mode) runs and syncs"
            for text in problems:
                f.add("rule", text, f"ip {NFT_TABLE}")


# ---- user rules that DNAT made blind -------------------------------------------------------------------
def _reachable(table: Table, starts: tuple[str, ...]) -> Iterator[tuple[str, str, int, Rule]]:
    """(built-in chain it is reached from, chain, position, rule) for the rules of the given built-in chains
    and of the user chains they jump to (kube-proxy's own excluded)."""
    seen: set[str] = set()
    todo = [(c, c) for c in starts if c in table.chains]
    while todo:
        origin, name = todo.pop(0)
        if name in seen or name.startswith("KUBE-"):
            continue
        seen.add(name)
        for n, rule in enumerate(table.chains[name].rules, 1):
            yield origin, name, n, rule
            if rule.jump and rule.jump not in STANDARD_VERDICTS and rule.jump in table.chains:
                todo.append((origin, rule.jump))


def _dports(rule: Rule) -> tuple[int, int] | None:
    """The destination port range of a rule's tcp/udp/sctp match (not inverted), if it has one."""
    for m in rule.matches:
        dport: tuple[int, int] | None = getattr(m, "dport", None)
        if getattr(m, "name", "") in ("tcp", "udp", "sctp") and dport is not None and not getattr(m, "dinv", False):
            return dport
    return None


def _service_addresses(case: Case) -> tuple[list[tuple[str, int]], list[int]]:
    """(address, port) of the Service's virtual IPs, and its node ports: what DNAT rewrites."""
    vips = [(ip, info.port) for info, _ in case.ports for ip in (info.cluster_ip, *info.external_ips, *info.lb_vips)]
    return vips, [info.node_port for info, _ in case.ports if info.node_port]


def blind_reason(case: Case, rule: Rule) -> tuple[str, str, int] | None:
    """Why a rule after DNAT never sees the Service: (what it matches, the original address, port)."""
    vips, nodeports = _service_addresses(case)
    ports = _dports(rule)
    if rule.dst is not None and not rule.dst_inv:
        for ip, port in vips:
            if rule.dst.contains(parse_addr(ip)[1]) and (ports is None or ports[0] <= port <= ports[1]):
                return f"destination {format_net(rule.dst)}", format_net(rule.dst), port if ports else 0
    if ports is not None:
        local = [parse_addr(ip)[1] for ip in case.node_ips()]
        for np in nodeports:
            if ports[0] <= np <= ports[1] and (rule.dst is None or any(rule.dst.contains(a) for a in local)):
                return f"node port {np}", format_net(rule.dst) if rule.dst is not None else "", np
    return None


def rewrite(origin: str, rule: Rule, orig_dst: str, orig_port: int) -> tuple[str, str]:
    """(built-in chain, rule spec) matching the connection's original destination (-m conntrack --ctorigdst
    and --ctorigdstport) instead: in FORWARD when the rule ran from INPUT, since DNATed packets are forwarded."""
    spec = rule_spec(rule)
    if rule.dst is not None and orig_dst:
        spec = spec.replace(f"-d {format_net(rule.dst)} ", "", 1)
    ct = ["-m", "conntrack"] + (["--ctorigdst", orig_dst] if orig_dst else [])
    if orig_port:
        spec = re.sub(r"-m (tcp|udp|sctp) --dport \d+(:\d+)? ?", "", spec, count=1)
        ct += ["--ctorigdstport", str(orig_port)]
    parts = shlex.split(spec)
    i = parts.index("-j") if "-j" in parts else len(parts)
    return ("FORWARD" if origin == "INPUT" else origin), " ".join([*parts[:i], *ct, *parts[i:]])


def check_blind_rules(case: Case, report: Report, mode: str) -> None:
    """The seed's problem 1: "I added a DROP rule but K8s still routes traffic"."""
    if case.service is None or not case.ports or mode not in ("iptables", "nftables", "ipvs"):
        return
    tables = case.node.iptables[4].tables
    for tname, starts in (AFTER_IPVS if mode == "ipvs" else AFTER_DNAT).items():
        table = tables.get(tname)
        if table is None:
            continue
        for origin, chain, n, rule in _reachable(table, starts):
            why = blind_reason(case, rule)
            if why is None:
                continue
            what, orig_dst, port = why
            line = format_rule(chain, rule)
            if mode == "ipvs":
                report.add(_blind_to_ipvs(tname, origin, chain, n, rule, what))
                continue
            new_chain, spec = rewrite(origin, rule, orig_dst, port)
            spec = canonical(f"-A {new_chain} {spec}", tname).split(" ", 2)[2]
            report.add(Finding(
                "user-rule", ERROR,
                f"{tname} {chain} rule {n}" + (f" (reached from {origin})" if origin != chain else "") +
                f" matches the Service's {what} but never sees it: kube-proxy's DNAT in nat "
                "PREROUTING/OUTPUT rewrote the destination to an endpoint before this chain runs",
                [], f"match the connection's original destination instead, first in {new_chain} (where the DNATed packets go, "
                f"before kube-proxy's accepting rules): iptables -t {tname} -I {new_chain} 1 {spec} ; then delete "
                f"the old rule: iptables -t {tname} -D {chain} {n}. "
                "Or better: a NetworkPolicy").add("rule", line, f"{tname} {chain} #{n}"))


def _blind_to_ipvs(table: str, origin: str, chain: str, n: int, rule: Rule, what: str) -> Finding:
    """IPVS mode: the rule is where the Service's packets never pass with that address; INPUT sees it."""
    spec = rule_spec(rule)
    return Finding("user-rule", ERROR,
                   f"{table} {chain} rule {n}" + (f" (reached from {origin})" if origin != chain else "") +
                   f" matches the Service's {what} but never sees it: in IPVS mode the virtual server takes the "
                   "packet at INPUT and sends it on rewritten to a real server (FORWARD never sees it)",
                   fix=f"match it in filter INPUT, which runs before IPVS: iptables -I INPUT 1 {spec} ; then delete "
                   f"the old rule: iptables -t {table} -D {chain} {n}").add("rule", format_rule(chain, rule),
                                                                          f"{table} {chain} #{n}")


# nft base chains that run after DNAT (nat at priority -100 in prerouting and output).
NFT_AFTER_DNAT = ("input", "forward", "postrouting")


def _nft_chains_after_dnat(case: Case) -> Iterator[tuple[Any, Any]]:
    """(table, chain) of every nft base chain (outside kube-proxy's table) that sees DNATed packets."""
    ruleset = getattr(case.node, "nftables", None)
    for table in ruleset.tables if ruleset is not None else []:
        if table.name == NFT_TABLE or table.family not in ("ip", "inet"):
            continue
        for chain in table.chains.values():
            if chain.hook in NFT_AFTER_DNAT or (chain.hook in ("prerouting", "output") and chain.prio > -100):
                yield table, chain


def check_blind_nft_rules(case: Case, report: Report, mode: str) -> None:
    """Problem 1 in nft syntax: ``ip daddr VIP`` in a chain after DNAT; ``ct original ip daddr`` sees it."""
    from kproxy.nftables.expr import Opts

    if case.service is None or not case.ports or mode not in ("iptables", "nftables"):
        return
    vips, _ = _service_addresses(case)
    opts = Opts()
    for table, chain in _nft_chains_after_dnat(case):
        for rule in chain.rules:
            text = rule.text(opts)
            for ip, port in vips:
                if not re.search(rf"(?<!original )\bip daddr {re.escape(ip)}(/32)?\b", text):
                    continue
                fixed = re.sub(rf"(?<!original )\bip daddr {re.escape(ip)}(/32)?", f"ct original ip daddr {ip}", text)
                fixed = re.sub(rf"\b(tcp|udp|sctp) dport {port}\b", rf"meta l4proto \1 ct original proto-dst {port}", fixed)
                where = f"{table.family} {table.name} {chain.name} handle {rule.handle}"
                target = "forward" if chain.hook == "input" else chain.name
                report.add(Finding(
                    "user-rule", ERROR, f"nft {where} matches the Service address {ip} but never sees it: kube-proxy's "
                    "DNAT (nat, priority -100) rewrote the destination before this chain runs",
                    fix=f"match the original destination in a {target} chain: nft insert rule {table.family} "
                    f"{table.name} {target} {fixed} ; then nft delete rule {table.family} {table.name} "
                    f"{chain.name} handle {rule.handle}").add("rule", text, where))
                break


def stopping_rule_fix(event: dict[str, Any], accept: str) -> str:
    """What to do about a rule that stopped a Service's packets; ``accept`` matches those packets
    (``-p tcp --dport 30080``)."""
    chain, table, n = event.get("chain", ""), event.get("table", ""), event.get("rule", 0)
    if event.get("kind") == "policy":
        return f"chain {chain}'s policy is {event.get('verdict')}: accept the Service's traffic before it " \
               f"(iptables -t {table} -I {chain} 1 {accept} -j ACCEPT) or change the policy"
    if chain.startswith("KUBE-"):
        return "kube-proxy's own rule: see the endpoints and traffic-policy findings"
    return f"delete or narrow it (iptables -t {table} -D {chain} {n}), or accept the Service's traffic before it " \
           f"(iptables -t {table} -I {chain} {n} {accept} -j ACCEPT)"


def severity_of_mode(mode: str, cfg_mode: str) -> Finding:
    sev = INFO if not cfg_mode or cfg_mode == mode or mode == "none" else WARN
    f = Finding("mode", sev, f"kube-proxy mode on this node: {mode}")
    if sev == WARN:
        f.title += f" (the configuration says {cfg_mode})"
    return f
