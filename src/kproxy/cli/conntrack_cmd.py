"""``conntrack`` (conntrack-tools 1.4.7) on the emulated node: -L, -D, -F, -C, -G with the usual filters.

Output lines and the summary on stderr are the tool's; entries print oldest first (the kernel's
hash order is not reproducible). ``--state`` and TCP port options need ``-p tcp`` first, as in the tool.
"""

from __future__ import annotations

from typing import Any

from kproxy.netfilter.conntrack import IPS_ASSURED, IPS_SEEN_REPLY, Conn
from kproxy.packet import PROTO_NAMES, TCP, parse_addr, parse_proto

PROG = "conntrack v1.4.7 (conntrack-tools)"
COMMANDS = {"-L": "L", "--dump": "L", "-D": "D", "--delete": "D", "-F": "F", "--flush": "F", "-C": "C",
            "--count": "C", "-G": "G", "--get": "G"}
VALUE_OPTS = {"-s": "src", "--orig-src": "src", "--src": "src", "-d": "dst", "--orig-dst": "dst", "--dst": "dst",
              "-r": "rsrc", "--reply-src": "rsrc", "-q": "rdst", "--reply-dst": "rdst", "-p": "proto",
              "--proto": "proto", "--protonum": "proto", "-m": "mark", "--mark": "mark", "-f": "family",
              "--family": "family", "-o": "output", "--output": "output", "-z": "zero", "--zero": "zero"}
PORT_OPTS = {"--sport": "sport", "--orig-port-src": "sport", "--dport": "dport", "--orig-port-dst": "dport",
             "--reply-port-src": "rsport", "--reply-port-dst": "rdport"}
STATE_NAMES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT",
               "CLOSE", "SYN_SENT2")


class Usage(Exception):
    pass


def format_conn(conn: Conn, now: float, extended: bool = False) -> str:
    """One line of ``conntrack -L``."""
    proto = conn.orig.proto
    name = {58: "icmpv6"}.get(proto, PROTO_NAMES.get(proto, "unknown"))
    parts = [f"{name:<8} {proto} {conn.timeout_at(now)}"]
    if proto == TCP:
        parts.append(conn.tcp_state)
    parts.append(conn.orig.text())
    if not conn.status & IPS_SEEN_REPLY:
        parts.append("[UNREPLIED]")
    parts.append(conn.reply.text())
    if conn.status & IPS_ASSURED:
        parts.append("[ASSURED]")
    parts.append(f"mark={conn.mark} use=1")
    line = " ".join(parts)
    if extended:
        fam = "ipv4     2" if conn.orig.family == 4 else "ipv6     10"
        line = f"{fam} {line}"
    return line


def _parse(argv: list[str]) -> tuple[str, dict[str, Any]]:
    cmd = ""
    f: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in COMMANDS:
            if cmd:
                raise Usage("Invalid parameters")
            cmd = COMMANDS[a]
            i += 1
            continue
        key = VALUE_OPTS.get(a) or (PORT_OPTS.get(a) if "proto" in f else None)
        if a == "--state" and f.get("proto") == TCP:
            key = "state"
        if key is None:
            raise Usage(f"unknown option `{a}'")
        if i + 1 >= len(argv):
            raise Usage(f"option `{a}' requires an argument")
        val = argv[i + 1]
        try:
            if key in ("src", "dst", "rsrc", "rdst"):
                f[key] = parse_addr(val)[1]
            elif key == "proto":
                f[key] = parse_proto(val)
            elif key in ("sport", "dport", "rsport", "rdport", "mark"):
                f[key] = int(val, 0)
            elif key == "state":
                if val.upper() not in STATE_NAMES:
                    raise Usage(f"Bad parameter `{val}'")
                f[key] = val.upper()
            else:
                f[key] = val
        except ValueError:
            raise Usage(f"Bad parameter `{val}'") from None
        i += 2
    if not cmd:
        raise Usage("no command specified")
    return cmd, f


def _selected(conn: Conn, f: dict[str, Any]) -> bool:
    o, r = conn.orig, conn.reply
    checks = {"src": o.src, "dst": o.dst, "rsrc": r.src, "rdst": r.dst, "proto": o.proto, "sport": o.sport,
              "dport": o.dport, "rsport": r.sport, "rdport": r.dport, "mark": conn.mark, "state": conn.tcp_state}
    for key, want in f.items():
        if key in checks and checks[key] != want:
            return False
    fam = f.get("family")
    return not (fam and (fam == "ipv6") != (o.family == 6))


def run_conntrack(argv: list[str], node: Any) -> tuple[int, str, str]:
    """One conntrack invocation: (exit status, stdout, stderr)."""
    try:
        cmd, f = _parse(argv)
    except Usage as exc:
        return 2, "", f"{PROG}: {exc}\nTry `conntrack -h' or 'conntrack --help' for more information.\n"
    ct = node.conntrack
    now = node.now()
    if cmd == "F":
        ct.flush()
        return 0, "", f"{PROG}: connection tracking table has been emptied.\n"
    if cmd == "C":
        return 0, f"{len(ct.entries(now))}\n", ""
    chosen = [c for c in ct.entries(now) if _selected(c, f)]
    if cmd == "D":
        for c in chosen:
            ct.delete(c)
        return (0 if chosen else 1), "", f"{PROG}: {len(chosen)} flow entries have been deleted.\n"
    extended = f.get("output") == "extended"
    out = "".join(format_conn(c, now, extended) + "\n" for c in chosen)
    if cmd == "G":
        if not chosen:
            return 1, "", f"{PROG}: error: Such conntrack doesn't exist\n"
        return 0, out, f"{PROG}: 1 flow entries have been shown.\n"
    return 0, out, f"{PROG}: {len(chosen)} flow entries have been shown.\n"
