"""Random rulesets and probes for differential testing (hypothesis strategies).

Rulesets use the raw, mangle, nat and filter tables with user chains, jumps (only to later chains,
so no loops), gotos, RETURN, policies, marks, conntrack state matches, statistic nth, address,
interface, protocol and port matches, DNAT/REDIRECT before routing, MASQUERADE/SNAT after it, and
REJECT; probes are TCP connects and UDP datagrams from the client or the node to addresses that are
forwarded to the sink, delivered to the node, or NATed there.
"""

from __future__ import annotations

from hypothesis import strategies as st

from kproxy.lab.differential import Case, Probe

DSTS = ["10.96.0.10", "10.96.0.11", "10.244.1.3", "10.0.1.1", "10.0.2.1"]
SRC_NETS = ["10.0.1.2/32", "10.0.1.0/24", "10.0.0.0/8", "192.168.0.0/16", "10.0.2.1/32"]
DST_NETS = [f"{d}/32" for d in DSTS] + ["10.96.0.0/16", "10.244.0.0/16"]
PORTS = [53, 80, 8080, 9999]
USER = {"filter": ["U1", "U2"], "nat": ["N1"], "mangle": ["M1"]}
BUILTIN = {"raw": ["PREROUTING", "OUTPUT"], "mangle": ["PREROUTING", "FORWARD", "OUTPUT", "POSTROUTING"],
           "nat": ["PREROUTING", "OUTPUT", "POSTROUTING"], "filter": ["INPUT", "FORWARD", "OUTPUT"]}
IN_OK = {"PREROUTING", "INPUT", "FORWARD"}
OUT_OK = {"FORWARD", "OUTPUT", "POSTROUTING"}


@st.composite
def matches(draw: st.DrawFn, chain: str, table: str) -> tuple[str, str]:
    """The match part of a rule, and its protocol ("" when none)."""
    parts: list[str] = []
    proto = ""
    if draw(st.booleans()):
        parts.append(f"{'! ' if draw(st.integers(0, 5)) == 0 else ''}-s {draw(st.sampled_from(SRC_NETS))}")
    if draw(st.booleans()):
        parts.append(f"{'! ' if draw(st.integers(0, 5)) == 0 else ''}-d {draw(st.sampled_from(DST_NETS))}")
    if chain in IN_OK and draw(st.integers(0, 3)) == 0:
        parts.append(f"-i {draw(st.sampled_from(['eth0', 'eth1', 'eth+', 'lo']))}")
    if chain in OUT_OK and draw(st.integers(0, 3)) == 0:
        parts.append(f"-o {draw(st.sampled_from(['eth0', 'eth1', 'lo']))}")
    if draw(st.booleans()):
        proto = draw(st.sampled_from(["tcp", "udp"]))
        parts.append(f"-p {proto}")
        kind = draw(st.integers(0, 3))
        if kind == 1:
            parts.append(f"--dport {draw(st.sampled_from(PORTS))}")
        elif kind == 2:
            ports = draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=3, unique=True))
            parts.append(f"-m multiport --dports {','.join(map(str, ports))}")
        elif kind == 3:
            parts.append(f"! --dport {draw(st.sampled_from(PORTS))}")
    if draw(st.integers(0, 4)) == 0:
        parts.append(f"-m mark {'! ' if draw(st.booleans()) else ''}--mark 0x{draw(st.sampled_from([1, 2, 0x4000])):x}")
    if draw(st.integers(0, 3)) == 0:
        states = draw(st.lists(st.sampled_from(["NEW", "ESTABLISHED", "RELATED", "INVALID", "DNAT", "SNAT"]),
                               min_size=1, max_size=2, unique=True))
        parts.append(f"-m conntrack {'! ' if draw(st.integers(0, 4)) == 0 else ''}--ctstate {','.join(states)}")
    if draw(st.integers(0, 6)) == 0:
        every = draw(st.integers(2, 3))
        parts.append(f"-m statistic --mode nth --every {every} --packet {draw(st.integers(0, every - 1))}")
    if draw(st.integers(0, 5)) == 0:
        parts.append('-m comment --comment "random rule"')
    return " ".join(parts), proto


@st.composite
def target(draw: st.DrawFn, table: str, chain: str, proto: str, index: int, users: list[str]) -> str:
    later = users[index + 1:] if chain in users else users
    options = ["ACCEPT", "RETURN", ""]
    if table == "filter":
        options += ["DROP", "REJECT"]
    if later:
        options += ["JUMP", "GOTO"]
    if table == "mangle" or (table == "nat" and chain != "POSTROUTING"):
        options += ["MARK"]
    if table == "nat" and chain in ("PREROUTING", "OUTPUT", "N1"):
        options += ["DNAT", "DNAT", "REDIRECT"]
    if table == "nat" and chain == "POSTROUTING":
        options += ["MASQUERADE", "MASQUERADE", "SNAT"]
    if table == "raw":
        options = ["ACCEPT", "", "NOTRACK"]
    kind = draw(st.sampled_from(options))
    if kind == "":
        return ""
    if kind in ("JUMP", "GOTO"):
        return f"{'-j' if kind == 'JUMP' else '-g'} {draw(st.sampled_from(later))}"
    if kind == "REJECT":
        if proto == "tcp" and draw(st.booleans()):
            return "-j REJECT --reject-with tcp-reset"
        return "-j REJECT"
    if kind == "MARK":
        return f"-j MARK --set-xmark 0x{draw(st.sampled_from([1, 2, 0x4000])):x}/0xffffffff"
    if kind == "DNAT":
        to = draw(st.sampled_from(["10.244.1.3", "10.244.1.4", "10.0.1.1"]))
        if proto:
            to += f":{draw(st.sampled_from(PORTS))}"
        return f"-j DNAT --to-destination {to}"
    if kind == "REDIRECT":
        return "-j REDIRECT" + (f" --to-ports {draw(st.sampled_from(PORTS))}" if proto else "")
    if kind == "SNAT":
        return "-j SNAT --to-source 10.0.2.1"
    if kind == "NOTRACK":
        return "-j CT --notrack"
    return f"-j {kind}"


@st.composite
def rulesets(draw: st.DrawFn) -> str:
    out = []
    for table in ("raw", "mangle", "nat", "filter"):
        if draw(st.integers(0, 3)) == 0 and table in ("raw", "mangle"):
            continue
        users = USER.get(table, [])
        lines = [f"*{table}"]
        for b in BUILTIN[table]:
            policy = draw(st.sampled_from(["ACCEPT", "ACCEPT", "ACCEPT", "DROP"])) if table == "filter" else "ACCEPT"
            lines.append(f":{b} {policy} [0:0]")
        lines += [f":{u} - [0:0]" for u in users]
        for chain in BUILTIN[table] + users:
            for _ in range(draw(st.integers(0, 3))):
                m, proto = draw(matches(chain if chain not in users else "USER", table))
                t = draw(target(table, chain, proto, users.index(chain) if chain in users else -1, users))
                if table == "nat" and chain == "POSTROUTING" and t.startswith(("-j N1", "-g N1")):
                    t = "-j ACCEPT"
                lines.append(" ".join(p for p in (f"-A {chain}", m, t) if p))
        lines.append("COMMIT")
        out.append("\n".join(lines))
    return "\n".join(out) + "\n"


@st.composite
def probes(draw: st.DrawFn) -> list[Probe]:
    n = draw(st.integers(1, 3))
    return [Probe(draw(st.sampled_from(["tcp", "udp"])), draw(st.sampled_from(DSTS)), draw(st.sampled_from(PORTS)),
                  draw(st.integers(0, 4)) == 0) for _ in range(n)]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    return Case(draw(rulesets()), draw(probes()))
