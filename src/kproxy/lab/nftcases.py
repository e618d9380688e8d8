"""Random nft rulesets and probes for differential testing against the kernel (hypothesis strategies).

A ruleset is one table (family ip or inet), sometimes a second ``ip`` table, holding filter base
chains at every hook and at priorities on both sides of conntrack (raw, mangle, filter, ``± N``),
nat base chains (dstnat/srcnat and their neighbours), regular chains reached by jump, goto and
verdict maps (only later chains, so no loops), named sets and maps (plain, interval, concatenated,
verdict), anonymous sets and maps, and rules built from payload, meta, ct and fib matches, counters
(on most rules, so the kernel's per-rule counters can be compared), limit and quota, numgen inc,
mark setting, reject in its forms, notrack, and dnat/snat/masquerade/redirect with ranges and maps.
Only constructs whose outcome is reproducible packet by packet are drawn: numgen random, jhash and
random NAT ports are left to distribution tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from kproxy.lab.differential import Case
from kproxy.lab.randomcases import DSTS, PORTS, probes

PRIOS = {"prerouting": ["raw", "-250", "mangle", "filter", "dstnat + 10"],
         "input": ["mangle", "filter", "filter + 5", "-50"], "forward": ["mangle", "filter", "security", "-10"],
         "output": ["raw", "mangle", "filter", "-120"], "postrouting": ["mangle", "filter", "srcnat + 5"]}
NAT_HOOKS = {"prerouting": ["dstnat", "-90", "dstnat - 5"], "output": ["-100", "-95", "-110"],
             "postrouting": ["srcnat", "110", "srcnat - 3"], "input": ["100", "95", "110"]}
IN_HOOKS = {"prerouting", "input", "forward"}
OUT_HOOKS = {"forward", "output", "postrouting"}
REGULAR = ["u1", "u2", "u3"]
BACKENDS = ["10.244.1.3", "10.244.1.4", "10.0.1.1", "10.0.2.2"]
MARKS = ["0x1", "0x2", "0x4000"]


@dataclass
class Where:
    """Where a rule sits: its table family, hook (None: a regular chain, reachable from anywhere),
    chain type, and the regular chains it may jump to."""

    family: str
    hook: str | None
    kind: str            # filter or nat
    later: list[str]

    def can_in(self) -> bool:
        return self.hook is None or self.hook in IN_HOOKS

    def can_out(self) -> bool:
        return self.hook in OUT_HOOKS


def _port_set(draw: st.DrawFn) -> str:
    ports = draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=3, unique=True))
    return str(ports[0]) if len(ports) == 1 else "{ " + ", ".join(map(str, sorted(ports))) + " }"


def _addr_set(draw: st.DrawFn) -> str:
    pool = DSTS + ["10.96.0.0/16", "10.244.0.0/16", "10.0.1.0/24", "10.0.1.2"]
    addrs = draw(st.lists(st.sampled_from(pool), min_size=2, max_size=3, unique=True))
    return "{ " + ", ".join(addrs) + " }"


@st.composite
def matches(draw: st.DrawFn, w: Where, sets: set[str]) -> tuple[list[str], str]:
    """The matches of a rule, and the transport protocol it pins ("" when none)."""
    parts: list[str] = []
    proto = ""
    if draw(st.integers(0, 2)) == 0:
        parts.append(draw(st.sampled_from(["ip saddr 10.0.1.0/24", "ip saddr != 10.0.1.2", "ip saddr 10.0.2.1",
                                           "ip saddr 10.0.0.0/8", "ip saddr 192.168.0.0/16"])))
    kind = draw(st.integers(0, 5))
    if kind == 1:
        parts.append(f"ip daddr {draw(st.sampled_from(DSTS + ['10.96.0.0/16', '10.244.0.0/16']))}")
    elif kind == 2:
        parts.append(f"ip daddr {'!= ' if draw(st.integers(0, 3)) == 0 else ''}{_addr_set(draw)}")
    elif kind == 3 and "dsts" in sets:
        parts.append(f"ip daddr {'!= ' if draw(st.integers(0, 3)) == 0 else ''}@dsts")
    elif kind == 4:
        parts.append("ip daddr 10.96.0.10-10.96.0.20")
    if w.can_in() and draw(st.integers(0, 4)) == 0:
        parts.append(draw(st.sampled_from(['iifname "eth0"', 'iifname "eth1"', 'iifname "eth*"', 'iifname "lo"',
                                           'iifname != "eth0"'])))
    if w.can_out() and draw(st.integers(0, 4)) == 0:
        parts.append(draw(st.sampled_from(['oifname "eth0"', 'oifname "eth1"', 'oifname "lo"', 'oifname != "eth1"'])))
    pk = draw(st.integers(0, 7))
    if pk in (1, 2, 3):
        proto = draw(st.sampled_from(["tcp", "udp"]))
        port = draw(st.sampled_from([f"dport {_port_set(draw)}", f"dport != {draw(st.sampled_from(PORTS))}",
                                     "dport 1-1000", "dport 53-8080", f"sport != {draw(st.sampled_from(PORTS))}"]))
        parts.append(f"{proto} {port}")
    elif pk == 4:
        proto = draw(st.sampled_from(["tcp", "udp"]))
        parts.append(draw(st.sampled_from([f"meta l4proto {proto}", f"ip protocol {proto}"])))
        if draw(st.booleans()):
            parts.append(f"th dport {_port_set(draw)}")
    elif pk == 5 and "svc" in sets:
        parts.append("ip daddr . meta l4proto . th dport @svc")
    elif pk == 6 and "ports" in sets:
        parts.append(f"th dport {'!= ' if draw(st.integers(0, 3)) == 0 else ''}@ports")
    elif pk == 7:
        parts.append(draw(st.sampled_from(["meta l4proto . th dport { tcp . 80, udp . 53 }",
                                           "meta l4proto { tcp, udp }", "meta l4proto != udp"])))
    if proto == "tcp" and draw(st.integers(0, 4)) == 0:
        parts.append(draw(st.sampled_from(["tcp flags & (syn | ack) == syn", "tcp flags syn",
                                           "tcp flags & (rst | fin) != 0"])))
    if draw(st.integers(0, 4)) == 0:
        parts.append(draw(st.sampled_from([f"meta mark {draw(st.sampled_from(MARKS))}", "meta mark != 0x0",
                                           f"ct mark {draw(st.sampled_from(MARKS))}", "ct mark 0x0",
                                           "meta mark & 0x4000 == 0x4000", "ct original ip daddr 10.96.0.0/16",
                                           "ct reply ip saddr != 10.244.1.3"])))
    if "seen" in sets and draw(st.integers(0, 5)) == 0:
        parts.append(f"ip {draw(st.sampled_from(['saddr', 'daddr']))} {'!= ' if draw(st.booleans()) else ''}@seen")
    if w.hook == "output" and draw(st.integers(0, 5)) == 0:
        parts.append(draw(st.sampled_from(["meta skuid 0", "meta skgid != 0"])))
    if draw(st.integers(0, 3)) == 0:
        parts.append(draw(st.sampled_from(["ct state new", "ct state established,related", "ct state invalid",
                                           "ct state untracked", "ct state != established", "ct status dnat",
                                           "ct status snat", "ct direction original", "ct direction reply",
                                           "ct state { new, untracked }"])))
    if draw(st.integers(0, 6)) == 0:
        parts.append(draw(st.sampled_from(["fib daddr type local", "fib daddr type != local",
                                           "fib saddr type local", "fib daddr type unicast"])))
    if draw(st.integers(0, 7)) == 0:
        parts.append(draw(st.sampled_from(["meta length > 50", "meta length < 45", "ip length 40-52",
                                           "meta pkttype host", "ip ttl 64", "ip ttl 63", "ip ttl != 64"])))
    if w.family == "inet" and draw(st.integers(0, 6)) == 0:
        parts.append("meta nfproto ipv4")
    if draw(st.integers(0, 8)) == 0:
        parts.append(draw(st.sampled_from(["limit rate 1000/second burst 50 packets",
                                           "limit rate over 1000/second burst 50 packets",
                                           "limit rate 2/minute burst 1 packets", "limit rate over 1/minute",
                                           "quota 100 bytes", "quota over 200 bytes", "quota until 1 kbytes"])))
    return parts, proto


@st.composite
def action(draw: st.DrawFn, w: Where, proto: str, sets: set[str]) -> str:
    options = ["accept", "", "", "continue"]
    if w.hook is None:
        options += ["return", "return"]
    if w.kind == "filter":
        options += ["drop", "drop", "mark", "ctmark"]
        if w.hook in ("input", "forward", "output", "prerouting", None):
            options += ["reject", "reject"]
        if w.hook in ("prerouting", "output") and draw(st.booleans()):
            options += ["notrack"]
    if w.later:
        options += ["jump", "goto", "vmap", "numgen"]
    if "seen" in sets and w.kind == "filter":
        options += ["seen"]
    if "objs" in sets:
        options += ["named"]
    if w.kind == "nat":
        if w.hook in ("prerouting", "output", None):
            options += ["dnat", "dnat", "dnatmap", "redirect"]
        if w.hook == "postrouting":
            options += ["masquerade", "masquerade"]
        if w.hook in ("postrouting", "input"):
            options += ["snat"]
    kind = draw(st.sampled_from(options))
    v4 = "ip " if w.family == "inet" else ""
    if kind in ("", "accept", "drop", "continue", "return", "notrack"):
        return kind
    if kind in ("jump", "goto"):
        return f"{kind} {draw(st.sampled_from(w.later))}"
    if kind == "vmap":
        if "vm" in sets and w.hook is not None and draw(st.booleans()):      # @vm jumps to u1: no loops
            return "ip daddr vmap @vm"
        a, b = draw(st.sampled_from(w.later)), draw(st.sampled_from(["accept", "drop", f"goto {w.later[-1]}"]))
        if w.kind == "nat" and b == "drop":
            b = "accept"
        return draw(st.sampled_from([f"th dport vmap {{ 53 : jump {a}, 80 : {b} }}",
                                     f"ip daddr vmap {{ 10.96.0.0/16 : jump {a}, 10.0.1.1 : {b} }}",
                                     f"meta l4proto . th dport vmap {{ udp . 53 : {b}, tcp . 8080 : jump {a} }}"]))
    if kind == "numgen":
        a = draw(st.sampled_from(w.later))
        if draw(st.integers(0, 2)) == 0:
            return f"jhash ip saddr . ip daddr mod 2 seed 0x7 vmap {{ 0 : jump {a}, 1 : accept }}"
        off = draw(st.sampled_from([0, 0, 5]))
        first = f"numgen inc mod {draw(st.integers(2, 3))}" + (f" offset {off}" if off else "")
        return f"{first} vmap {{ {off} : jump {a}, {off + 1} : accept }}"
    if kind == "mark":
        return draw(st.sampled_from([f"meta mark set {draw(st.sampled_from(MARKS))}", "meta mark set meta mark | 0x10",
                                     "meta mark set ct mark", "meta mark set meta mark and 0xfffe"]))
    if kind == "seen":
        return f"add @seen {{ ip {draw(st.sampled_from(['saddr', 'daddr']))} }}"
    if kind == "named":
        return draw(st.sampled_from(['counter name "hits"', 'quota name "cap"', 'counter name "hits" accept']))
    if kind == "ctmark":
        keys = ["ip daddr", "ip saddr . ip daddr"] + ([f"ip daddr . {proto} dport", "meta l4proto . th sport"]
                                                     if proto else [])
        hashed = f"jhash {draw(st.sampled_from(keys))} mod 4096 seed 0x{draw(st.sampled_from(['1', 'beef', 'c0ffee']))}"
        return f"ct mark set {draw(st.sampled_from(['meta mark', hashed, hashed, *MARKS]))}"
    if kind == "reject":
        forms = ["reject", "reject"]
        if w.family == "inet":
            forms += [f"reject with icmpx {draw(st.sampled_from(['admin-prohibited', 'host-unreachable']))}"]
        if proto == "tcp":
            forms += ["reject with tcp reset"] * 2
        forms += [f"reject with icmp {draw(st.sampled_from(['host-unreachable', 'net-prohibited', 'port-unreachable']))}"]
        return draw(st.sampled_from(forms))
    if kind == "dnat":
        to = draw(st.sampled_from([*BACKENDS, "10.244.1.3-10.244.1.6"]))
        if proto and draw(st.booleans()):
            to += f":{draw(st.sampled_from(['8080', '53', '80', '8080-8090']))}"
        return f"dnat {v4}to {to}"
    if kind == "dnatmap":
        if "dn" in sets and draw(st.booleans()):
            return f"dnat {v4}to ip daddr map @dn"
        forms = [f"dnat {v4}to ip daddr map {{ 10.96.0.10 : 10.244.1.3, 10.96.0.11 : 10.244.1.4 }}",
                 f"dnat {v4}to numgen inc mod 2 map {{ 0 : 10.244.1.3, 1 : 10.0.2.2 }}"]
        if proto:
            forms.append(f"dnat {v4}to ip daddr . {proto} dport map {{ 10.96.0.10 . 53 : 10.244.1.3 . 5353, "
                         f"10.96.0.11 . 80 : 10.0.2.2 . 8080, 10.0.1.1 . 8080 : 10.244.1.4 . 80 }}")
        return draw(st.sampled_from(forms))
    if kind == "redirect":
        if not proto or draw(st.booleans()):
            return "redirect"
        return f"redirect to :{draw(st.sampled_from([*map(str, PORTS), '8080-8081']))}"
    if kind == "snat":
        return f"snat {v4}to {draw(st.sampled_from(['10.0.2.1', '10.0.1.1', '10.0.2.1-10.0.2.3']))}"
    return draw(st.sampled_from(["masquerade", "masquerade", "masquerade persistent"]))


@st.composite
def rule(draw: st.DrawFn, w: Where, sets: set[str]) -> str:
    parts, proto = draw(matches(w, sets))
    if draw(st.integers(0, 4)) != 0:
        parts.append("counter")
    act = draw(action(w, proto, sets))
    if act.startswith(("dnat", "redirect", "snat", "masquerade")) and ":" in act and " map " not in act and not proto:
        act = act.split(":")[0].rstrip()      # a port needs a transport protocol match
    return " ".join(p for p in [*parts, act] if p)


SET_DEFS = {
    "seen": "\tset seen {\n\t\ttype ipv4_addr\n\t\tflags dynamic\n\t}",
    "objs": '\tcounter hits {\n\t}\n\tquota cap {\n\t\t200 bytes\n\t}',
    "dsts": "\tset dsts {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.96.0.0/24, 10.244.1.3, "
            "10.0.2.1 }\n\t}",
    "ports": "\tset ports {\n\t\ttype inet_service\n\t\telements = { 53, 8080 }\n\t}",
    "svc": "\tset svc {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\telements = { 10.96.0.10 . udp . 53, "
           "10.96.0.11 . tcp . 80, 10.0.1.1 . tcp . 8080 }\n\t}",
    "dn": "\tmap dn {\n\t\ttype ipv4_addr : ipv4_addr\n\t\telements = { 10.96.0.10 : 10.244.1.3, 10.96.0.11 : "
          "10.0.2.2 }\n\t}",
}


def _vmap_def(later: list[str]) -> str:
    return (f"\tmap vm {{\n\t\ttype ipv4_addr : verdict\n\t\tflags interval\n\t\telements = {{ 10.96.0.0/24 : "
            f"jump {later[0]}, 10.244.1.0-10.244.1.9 : goto {later[-1]}, 10.0.2.1 : accept }}\n\t}}")


@st.composite
def table(draw: st.DrawFn, family: str, name: str, small: bool = False) -> str:
    sets = set() if small else set(draw(st.lists(st.sampled_from([*SET_DEFS, "vm"]), max_size=4, unique=True)))
    regular = [] if small else REGULAR[:draw(st.integers(0, 3))]
    if not regular:
        sets.discard("vm")
    chains: list[tuple[str, str, str, str]] = []     # name, type, hook, priority
    used: set[tuple[str, str]] = set()
    for i in range(draw(st.integers(1, 2 if small else 4))):
        if draw(st.integers(0, 2)) == 0:
            hook = draw(st.sampled_from(sorted(NAT_HOOKS)))
            prio, kind = draw(st.sampled_from(NAT_HOOKS[hook])), "nat"
        else:
            hook = draw(st.sampled_from(sorted(PRIOS)))
            prio, kind = draw(st.sampled_from(PRIOS[hook])), "filter"
        if (hook, prio) in used:
            continue
        used.add((hook, prio))
        chains.append((f"c{i}", kind, hook, prio))
    # A regular chain's rules must suit every chain that reaches it: nat statements only when every
    # base chain is nat, filter-only statements (reject, notrack) only from filter chains.
    dnat_only = all(k == "nat" and h in ("prerouting", "output") for _, k, h, _ in chains)
    reg_kind = "nat" if dnat_only else "filter"
    lines = [f"table {family} {name} {{"]
    lines += [SET_DEFS[s] for s in sorted(sets) if s != "vm"]
    if "vm" in sets:
        lines.append(_vmap_def(regular))
    for cname, kind, hook, prio in chains:
        policy = draw(st.sampled_from(["accept", "accept", "drop"])) if kind == "filter" else "accept"
        lines.append(f"\tchain {cname} {{\n\t\ttype {kind} hook {hook} priority {prio}; policy {policy};")
        w = Where(family, hook, kind, regular)
        lines += [f"\t\t{draw(rule(w, sets))}" for _ in range(draw(st.integers(0, 4)))]
        lines.append("\t}")
    for i, cname in enumerate(regular):
        # notrack and reject are valid only at some hooks; regular chains avoid hook-bound statements.
        w = Where(family, None, reg_kind, regular[i + 1:])
        body = [draw(rule(w, sets)) for _ in range(draw(st.integers(0, 3)))]
        body = [r for r in body if not r.endswith("notrack") and " reject" not in f" {r}"
                and not (reg_kind == "nat" and r.split()[-1:] == ["masquerade"])]
        lines.append(f"\tchain {cname} {{")
        lines += [f"\t\t{r}" for r in body]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines)


@st.composite
def rulesets(draw: st.DrawFn) -> str:
    out = [draw(table(draw(st.sampled_from(["ip", "inet"])), "t"))]
    if draw(st.integers(0, 3)) == 0:
        out.append(draw(table("ip", "t2", small=True)))
    return "\n".join(out) + "\n"


@st.composite
def cases(draw: st.DrawFn) -> Case:
    return Case(draw(rulesets()), draw(probes()))
