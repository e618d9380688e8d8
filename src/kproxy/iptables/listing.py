"""``iptables -L`` and ``iptables -S``: the column layout and rule listing of iptables-nft 1.8.9.

Column widths follow the tool's format strings: ``%-4u`` line numbers, ``%5llu`` counters with
K/M/G/T suffixes (``%8llu`` with ``-x``), ``%-9s`` target, ``!``-slot plus ``%-4s`` protocol,
two-character options, ``%-6s`` interfaces (with ``-v``), ``%-19s`` source and destination.
"""

from __future__ import annotations

from kproxy.iptables.model import Chain, Net, Rule, Table
from kproxy.iptables.parser import Command
from kproxy.iptables.save import format_rule, ordered_chains, proto_name, rule_parts
from kproxy.packet import format_addr


def format_count(n: int, exact: bool) -> str:
    """xtables_print_num: exact ``%8llu``, else ``%5llu`` scaled by 1000 with K, M, G, T."""
    if exact:
        return f"{n:8d} "
    if n <= 99999:
        return f"{n:5d} "
    for unit in "KMGT":
        n = (n + 500) // 1000
        if n <= 9999 or unit == "T":
            return f"{n:4d}{unit} "
    return f"{n:4d}T "  # pragma: no cover


def _addr(net: Net | None, inv: bool, numeric: bool, family: int = 4) -> str:
    if net is None or net.prefixlen == 0:
        if not numeric:
            text = "anywhere"
        else:
            text = "0.0.0.0/0" if (net.family if net is not None else family) == 4 else "::/0"
    else:
        text = format_addr(net.addr, net.family)
        if net.prefixlen != net.bits:
            text += f"/{net.prefixlen}"
    return ("!" if inv else " ") + f"{text:<19} "


def _iface(name: str | None, inv: bool, numeric: bool) -> str:
    text = name if name is not None else ("*" if numeric else "any")
    return ("!" + text) if inv and name is not None else text


def header(c: Command) -> str:
    parts = []
    if c.line_numbers:
        parts.append(f"{'num':<4} ")
    if c.verbose:
        parts.append(f"{'pkts':>8} {'bytes':>10} " if c.exact else f"{'pkts':>5} {'bytes':>5} ")
    parts.append(f"{'target':<9} ")
    parts.append(" prot opt")
    if c.verbose:
        parts.append(f" {'in':<6} {'out':<6} ")
    parts.append(f" {'source':<19} ")
    parts.append(f" {'destination':<19} ")
    return "".join(parts)


def _target_name(rule: Rule) -> str:
    if rule.jump is not None:
        return rule.jump
    if rule.target is not None:
        return getattr(rule.target, "LIST_NAME", None) or rule.target.name
    return ""


def rule_line(rule: Rule, num: int, c: Command, family: int = 4) -> str:
    parts = []
    if c.line_numbers:
        parts.append(f"{num:<4} ")
    if c.verbose:
        parts.append(format_count(rule.packets, c.exact) + format_count(rule.bytes, c.exact))
    parts.append(f"{_target_name(rule):<9} ")
    proto = str(rule.proto) if c.numeric else proto_name(rule.proto)
    parts.append(("!" if rule.proto_inv else " ") + f"{proto:<4} ")
    frag = rule.fragment
    parts.append(("!" if frag is False else "-") + ("f" if frag is not None else "-") + " ")
    if c.verbose:
        parts.append(f" {_iface(rule.iif, rule.iif_inv, c.numeric):<6} ")
        parts.append(f"{_iface(rule.oif, rule.oif_inv, c.numeric):<6} ")
    parts.append(_addr(rule.src, rule.src_inv, c.numeric, family))
    parts.append(_addr(rule.dst, rule.dst_inv, c.numeric, family))
    if rule.goto:
        parts.append("[goto] ")
    for m in rule.matches:
        text = m.listing(c.numeric)
        if text:                   # (a match without a print function, like eui64, prints nothing)
            parts.append(m.LISTING_SPACE + text)
    if rule.target is not None:
        text = rule.target.listing(c.numeric)
        if text:
            parts.append(" " + text)
    return "".join(parts)


def chain_header(table: Table, chain: Chain, c: Command) -> str:
    if chain.builtin:
        if c.verbose:
            return f"Chain {chain.name} (policy {chain.policy} {_count_words(chain.packets, c.exact)} packets, " \
                   f"{_count_words(chain.bytes, c.exact)} bytes)"
        return f"Chain {chain.name} (policy {chain.policy})"
    return f"Chain {chain.name} ({table.references(chain.name)} references)"


def _count_words(n: int, exact: bool) -> str:
    return format_count(n, exact).strip()


def list_table(table: Table, c: Command) -> str:
    """``iptables -L [chain]`` output."""
    chains = [table.chains[c.chain]] if c.chain else ordered_chains(table)
    blocks = []
    for chain in chains:
        lines = [chain_header(table, chain, c), header(c)]
        for i, r in enumerate(chain.rules, 1):
            if c.rulenum and i != c.rulenum:
                continue
            lines.append(rule_line(r, i, c, table.family))
        if c.rulenum:
            return rule_line(chain.rules[c.rulenum - 1], c.rulenum, c, table.family) + "\n" \
                if c.rulenum <= len(chain.rules) else ""
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def list_rules(table: Table, c: Command) -> str:
    """``iptables -S [chain]`` output: policies, -N lines, then rules (with ``-c`` counters under -v)."""
    chains = [table.chains[c.chain]] if c.chain else ordered_chains(table)
    lines = []
    for chain in chains if not c.rulenum else []:
        if chain.builtin:
            line = f"-P {chain.name} {chain.policy}"
            if c.verbose:
                line += f" -c {chain.packets} {chain.bytes}"
        else:
            line = f"-N {chain.name}"
        lines.append(line)
    for chain in chains:
        for i, r in enumerate(chain.rules, 1):
            if c.rulenum and i != c.rulenum:
                continue
            if c.verbose:
                body, verdict = rule_parts(r)
                text = " ".join(p for p in (f"-A {chain.name}", body, f"-c {r.packets} {r.bytes}", verdict) if p)
            else:
                text = format_rule(chain.name, r)
            lines.append(text)
    return "\n".join(lines) + "\n"



def echo_rule(rule: Rule, family: int = 4) -> str:
    """A rule as ``iptables -v`` echoes it when adding or deleting: one line, numeric, without columns."""
    frag = ("!" if rule.fragment is False else "-") + ("f" if rule.fragment is not None else "-")
    text = f"{_target_name(rule)} " + ("!" if rule.proto_inv else " ") + f"{proto_name(rule.proto)} opt {frag} "
    text += f"in {_iface(rule.iif, rule.iif_inv, True)} out {_iface(rule.oif, rule.oif_inv, True)} "
    text += ("!" if rule.src_inv else " ") + f"{_echo_addr(rule.src, family)} "
    text += ("!" if rule.dst_inv else " ") + f"-> {_echo_addr(rule.dst, family)}  "
    text += "".join(" " + m.listing(True) for m in rule.matches)
    extra = rule.target.listing(True) if rule.target is not None else ""
    return text + (" " + extra if extra else "") + "\n"


def _echo_addr(net: Net | None, family: int) -> str:
    if net is None:
        return "0.0.0.0/0" if family == 4 else "::/0"
    text = format_addr(net.addr, net.family)
    return text if net.prefixlen == net.bits else f"{text}/{net.prefixlen}"


def table_json(table: Table, c: Command) -> dict[str, object]:
    """``-L``/``-S`` with ``--json``: the chains and rules a script needs, counters always included."""
    chains = [table.chains[c.chain]] if c.chain else ordered_chains(table)
    out = []
    for chain in chains:
        rules = [{"num": i, "rule": format_rule(chain.name, r), "target": _target_name(r) or None,
                  "packets": r.packets, "bytes": r.bytes}
                 for i, r in enumerate(chain.rules, 1) if not c.rulenum or i == c.rulenum]
        item: dict[str, object] = {"name": chain.name, "policy": chain.policy}
        if chain.builtin:
            item.update(packets=chain.packets, bytes=chain.bytes)
        else:
            item["references"] = table.references(chain.name)
        item["rules"] = rules
        out.append(item)
    return {"table": table.name, "family": "ipv4" if table.family == 4 else "ipv6", "chains": out}
