"""``conntrack`` (conntrack-tools 1.4.7) on the emulated node: -L, -D, -F, -C, -G with the usual filters.

Output lines, the summaries on stderr, exit codes and error messages are the tool's (checked against
the real tool in kp- namespaces). Entries print oldest first (the kernel's hash order is not
reproducible). Port, ``--state`` and ICMP options are protocol extensions: they exist only after
``-p``, as in the tool.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kproxy.netfilter.conntrack import (
    IPS_ASSURED,
    IPS_EXPECTED,
    IPS_FIXED_TIMEOUT,
    IPS_SEEN_REPLY,
    Conn,
    Tuple,
)
from kproxy.netfilter.ctformat import format_conn
from kproxy.packet import ICMP, ICMPV6, TCP, format_addr

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node

PROG = "conntrack v1.4.7 (conntrack-tools)"
HINT = "Try `conntrack -h' or 'conntrack --help' for more information.\n"
COMMANDS = {"-L": "L", "--dump": "L", "-D": "D", "--delete": "D", "-F": "F", "--flush": "F", "-C": "C",
            "--count": "C", "-G": "G", "--get": "G"}
# option -> (canonical long name used in messages, filter key)
VALUE_OPTS = {
    "-s": ("src", "src"), "--orig-src": ("src", "src"), "--src": ("src", "src"),
    "-d": ("dst", "dst"), "--orig-dst": ("dst", "dst"), "--dst": ("dst", "dst"),
    "-r": ("reply-src", "rsrc"), "--reply-src": ("reply-src", "rsrc"),
    "-q": ("reply-dst", "rdst"), "--reply-dst": ("reply-dst", "rdst"),
    "-p": ("protonum", "proto"), "--protonum": ("protonum", "proto"), "--proto": ("protonum", "proto"),
    "-m": ("mark", "mark"), "--mark": ("mark", "mark"), "-f": ("family", "family"), "--family": ("family", "family"),
    "-o": ("output", "output"), "--output": ("output", "output"), "-u": ("status", "status"),
    "--status": ("status", "status"),
}
FLAG_OPTS = {"-z": "zero", "--zero": "zero", "--json": "json"}      # --json: kproxy's own, for scripts
PORT_OPTS = {"--sport": "sport", "--orig-port-src": "sport", "--dport": "dport", "--orig-port-dst": "dport",
             "--reply-port-src": "rsport", "--reply-port-dst": "rdport"}
ICMP_OPTS = {"--icmp-type": "itype", "--icmp-code": "icode", "--icmp-id": "iid"}
PORT_PROTOS = {TCP, 17, 132, 33, 136}
TCP_STATE_NAMES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
                   "TIME_WAIT", "CLOSE", "SYN_SENT2")
PROTOCOLS = {"tcp": 6, "udp": 17, "udplite": 136, "sctp": 132, "dccp": 33, "icmp": 1, "icmpv6": 58, "gre": 47,
             "unknown": 255}
# -u names the tool accepts (any case); SRC_NAT and DST_NAT are ignored with a warning.
STATUS_NAMES = {"EXPECTED": IPS_EXPECTED, "SEEN_REPLY": IPS_SEEN_REPLY, "ASSURED": IPS_ASSURED,
                "FIXED_TIMEOUT": IPS_FIXED_TIMEOUT, "OFFLOAD": 1 << 14, "HW_OFFLOAD": 1 << 15, "UNSET": 0}
OUTPUT_FORMATS = {"xml", "extended", "timestamp", "id", "ktimestamp", "labels", "userspace"}
# Options each command refuses (the tool's legality table, for the options modelled here).
FILTERS = {"src", "dst", "reply-src", "reply-dst", "protonum", "mark", "status"}
ILLEGAL = {"F": FILTERS | {"output", "family"}, "C": FILTERS | {"output", "family"}}


class Usage(Exception):
    pass


@dataclass
class Request:
    cmd: str = ""
    table: str = "conntrack"
    f: dict[str, Any] = field(default_factory=dict)
    given: list[str] = field(default_factory=list)
    outputs: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


def conn_json(conn: Conn, now: float) -> dict[str, Any]:
    """``-L --json``: one entry for scripts (kproxy's own option)."""
    def tup(t: Any) -> dict[str, Any]:
        return {"src": format_addr(t.src, t.family), "dst": format_addr(t.dst, t.family), "sport": t.sport,
                "dport": t.dport}

    status = [name for bit, name in ((IPS_SEEN_REPLY, "SEEN_REPLY"), (IPS_ASSURED, "ASSURED")) if conn.status & bit]
    return {"family": "ipv4" if conn.orig.family == 4 else "ipv6", "proto": conn.orig.proto,
            "timeout": conn.timeout_at(now), "state": conn.tcp_state or None, "original": tup(conn.orig),
            "reply": tup(conn.reply), "status": status, "mark": conn.mark, "zone": conn.zone, "id": conn.id,
            "packets": conn.acct[0] + conn.acct[2], "bytes": conn.acct[1] + conn.acct[3]}


def _strtoul(text: str) -> int:
    """strtoul(text, NULL, 0): the leading number, 0 when there is none (the tool does not complain)."""
    t = text.strip().lower()
    base, digits = 10, "0123456789"
    if t.startswith("0x"):
        base, digits, t = 16, "0123456789abcdef", t[2:]
    elif t.startswith("0") and len(t) > 1:
        base, digits, t = 8, "01234567", t[1:]
    n = ""
    for ch in t:
        if ch not in digits:
            break
        n += ch
    return int(n, base) if n else 0


def _parse_addr(text: str) -> tuple[int, ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Usage(f"Invalid IP address `{text}'") from None
    return net.version, net


def _parse_proto(text: str) -> int:
    if text.isdigit():
        n = int(text)
        if n <= 255:
            return n
    elif text in PROTOCOLS:
        return PROTOCOLS[text]
    raise Usage(f"`{text}' unsupported protocol")


def _set_family(req: Request, family: int) -> None:
    have = req.f.get("family")
    if have is not None and have != family:
        raise Usage("mismatched address family")
    req.f["family"] = family


def _value(req: Request, name: str, key: str, val: str) -> None:
    if key in ("src", "dst", "rsrc", "rdst"):
        fam, net = _parse_addr(val)
        _set_family(req, fam)
        req.f[key] = net
    elif key == "proto":
        req.f[key] = _parse_proto(val)
    elif key == "family":
        if val not in ("ipv4", "ipv6"):
            raise Usage(f"`{val}' unsupported protocol")
        _set_family(req, 4 if val == "ipv4" else 6)
    elif key == "mark":
        value, _, mask = val.partition("/")
        req.f[key] = (_strtoul(value), _strtoul(mask) if mask else 0xFFFFFFFF)
    elif key == "output":
        words = val.split(",")
        if any(w not in OUTPUT_FORMATS for w in words):
            raise Usage(f"Bad parameter `{val}'")
        req.outputs.update(words)
    elif key == "status":
        bits = 0
        for w in val.upper().split(","):
            if w in ("SRC_NAT", "DST_NAT"):
                req.warnings.append(f"WARNING: ignoring {w}, use --{w[:3].lower()}-nat instead\n")
            elif w in STATUS_NAMES:
                bits |= STATUS_NAMES[w]
            else:
                raise Usage(f"Bad parameter `{val}'")
        req.f[key] = bits


def _proto_option(req: Request, a: str, val: str) -> bool:
    """Options of the protocol extension loaded by ``-p``; False when ``a`` is not one of them."""
    proto = req.f.get("proto")
    if proto in PORT_PROTOS and a in PORT_OPTS:
        req.f[PORT_OPTS[a]] = _strtoul(val) & 0xFFFF
    elif proto == TCP and a == "--state":
        if val not in TCP_STATE_NAMES:
            raise Usage(f"unknown TCP state `{val}'")
        req.f["state"] = val
    elif proto in (ICMP, ICMPV6) and a in ICMP_OPTS:
        req.f[ICMP_OPTS[a]] = _strtoul(val)
    else:
        return False
    return True


def _respell(word: str) -> list[str] | None:
    """What getopt makes of ``-Lpudp`` (``-L -p udp``) and ``--proto=udp``; None when it is no such thing."""
    if word.startswith("--"):
        name, eq, value = word.partition("=")
        return [name, value] if eq and name not in COMMANDS and name not in FLAG_OPTS else None
    if len(word) < 3 or not word.startswith("-"):
        return None
    out: list[str] = []
    for k, ch in enumerate(word[1:], 1):
        opt = f"-{ch}"
        if opt in VALUE_OPTS:
            rest = word[k + 1:]
            return [*out, opt, rest] if rest else [*out, opt]
        if opt not in COMMANDS and opt not in FLAG_OPTS:
            return None
        out.append(opt)
    return out


def _parse(argv: list[str]) -> Request:
    req = Request()
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help", "-V", "--version"):     # help and version are commands of their own
            raise Usage("Invalid commands combination")
        if a in COMMANDS:
            if req.cmd:
                raise Usage("Invalid commands combination")
            req.cmd = COMMANDS[a]
            if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                req.table = argv[i + 1]
                i += 1
            i += 1
            continue
        if a in FLAG_OPTS:
            req.given.append(FLAG_OPTS[a])
            i += 1
            continue
        known = a in VALUE_OPTS or (req.f.get("proto") is not None and a in (*PORT_OPTS, "--state", *ICMP_OPTS))
        if not known:
            words = _respell(a)
            if words is None:
                raise Usage(f"unknown option `{a}'")
            argv = [*argv[:i], *words, *argv[i + 1:]]        # getopt's -Lpudp and --proto=udp, spelt out
            continue
        if i + 1 >= len(argv):
            raise Usage(f"option `{a}' requires an argument")
        val = argv[i + 1]
        if a in VALUE_OPTS:
            name, key = VALUE_OPTS[a]
            req.given.append(name)
            _value(req, name, key, val)
        elif not _proto_option(req, a, val):
            raise Usage(f"unknown option `{a}'")
        i += 2
    if not req.cmd:
        raise Usage("no command specified")
    if "json" in req.given and req.cmd != "L":
        raise Usage("Illegal option `--json' with this command")
    for name in req.given:
        if name in ILLEGAL.get(req.cmd, ()):
            raise Usage(f"Illegal option `--{name}' with this command")
    if req.cmd == "G":
        _check_get(req)
    return req


def _check_get(req: Request) -> None:
    """-G names one exact flow: protocol, both addresses and (for port protocols) both ports."""
    f = req.f
    if "proto" not in f:
        raise Usage("You need to supply the `--protonum' option for this command")
    if "src" not in f or "dst" not in f:
        raise Usage("you have to specify `--src' and `--dst'")
    if f["proto"] in PORT_PROTOS and ("sport" not in f or "dport" not in f):
        raise Usage("you have to specify `--sport' and `--dport'")


def _selected(conn: Conn, f: dict[str, Any]) -> bool:
    o, r = conn.orig, conn.reply
    if f.get("family") is not None and o.family != f["family"]:
        return False
    for key, addr in (("src", o.src), ("dst", o.dst), ("rsrc", r.src), ("rdst", r.dst)):
        if key in f and int(f[key].network_address) != addr & int(f[key].netmask):
            return False
    if "proto" in f and o.proto != f["proto"]:
        return False
    ports = {"sport": o.sport, "dport": o.dport, "rsport": r.sport, "rdport": r.dport,
             "iid": o.sport, "itype": o.dport >> 8, "icode": o.dport & 0xFF}
    for key, have in ports.items():
        if key in f and have != f[key]:
            return False
    if "state" in f and conn.tcp_state != f["state"]:
        return False
    if "mark" in f:
        value, mask = f["mark"]
        if conn.mark & mask != value & mask:
            return False
    return not ("status" in f and conn.status & f["status"] != f["status"])


HELP_COMMANDS = [("-L [table] [options]", "List conntrack or expectation table"),
                 ("-G [table] parameters", "Get conntrack or expectation"),
                 ("-D [table] parameters", "Delete conntrack or expectation"),
                 ("-I [table] parameters", "Create a conntrack or expectation"),
                 ("-U [table] parameters", "Update a conntrack"), ("-E [table] [options]", "Show events"),
                 ("-F [table]", "Flush table"), ("-C [table]", "Show counter"), ("-S", "Show statistics")]
HELP_OPTIONS = [("-s, --src, --orig-src ip", "original source address"),
                ("-d, --dst, --orig-dst ip", "original destination address"),
                ("-r, --reply-src ip", "reply source address"), ("-q, --reply-dst ip", "reply destination address"),
                ("-p, --proto proto", "layer 4 protocol (then --sport, --dport, --state, ...)"),
                ("-f, --family proto", "ipv4 or ipv6"), ("-m, --mark mark[/mask]", "the connection mark"),
                ("-t, --timeout timeout", "seconds left"), ("-u, --status status", "ASSURED, SEEN_REPLY, ..."),
                ("-n, --src-nat [ip]", "source NAT'ed"), ("-g, --dst-nat [ip]", "destination NAT'ed"),
                ("-o, --output type[,...]", "extended, xml, timestamp, id, ktimestamp, labels, userspace"),
                ("-z, --zero", "zero counters while listing")]


def usage() -> str:
    """``conntrack -h``: the tool's title and synopsis, then its commands and main options (in kproxy's words)."""
    lines = ["Command line interface for the connection tracking system. Version 1.4.7",
             "Usage: conntrack [commands] [options]", "", "Commands:"]
    lines += [f"  {cmd:<30}{text}" for cmd, text in HELP_COMMANDS]
    lines += ["", "Tables: conntrack, expect, dying, unconfirmed", "", "Conntrack parameters and options:"]
    lines += [f"  {opt:<30}{text}" for opt, text in HELP_OPTIONS]
    return "\n".join(lines) + "\n"


def run_conntrack(argv: list[str], node: Node) -> tuple[int, str, str]:
    """One conntrack invocation: (exit status, stdout, stderr)."""
    first = argv[0] if argv else ""
    if first in ("-h", "--help"):            # only as the command: "-L -h" is two commands
        return 0, usage(), ""
    if first in ("-V", "--version"):
        return 0, "conntrack v1.4.7 (conntrack-tools)\n", ""
    try:
        req = _parse(argv)
    except Usage as exc:
        return 2, "", f"{PROG}: {exc}\n{HINT}"
    if req.f.get("status") == 0:
        # -u with nothing but ignored names: the kernel refuses the empty status filter.
        return 1, "", "".join(req.warnings) + f"{PROG}: Operation failed: invalid parameters\n"
    rc, out, err = _run(req, node)
    return rc, out, "".join(req.warnings) + err


def _get(req: Request, node: Node, now: float) -> tuple[int, str, str]:
    """-G: the entry whose original tuple is exactly the one given."""
    f = req.f
    if f["proto"] in (ICMP, ICMPV6):
        sport, dport = f.get("iid", 0), f.get("itype", 0) << 8 | f.get("icode", 0)
    else:
        sport, dport = f.get("sport", 0), f.get("dport", 0)
    t = Tuple(f["family"], f["proto"], int(f["src"].network_address), int(f["dst"].network_address), sport, dport)
    hit = node.conntrack.lookup(t, now)
    if hit is None:
        return 1, "", f"{PROG}: Operation failed: such conntrack doesn't exist\n"
    if hit[1] != 0:
        # The kernel finds the entry by its reply tuple, but the tool shows only an original match.
        return 1, "", f"{PROG}: 0 flow entries have been shown.\n"
    # The kernel answers with the entry while holding a reference to it: use=2.
    line = format_conn(hit[0], now, "extended" in req.outputs, use=2, with_id="id" in req.outputs, acct=_acct(node))
    return 0, line + "\n", f"{PROG}: 1 flow entries have been shown.\n"


def _acct(node: Node) -> bool:
    """nf_conntrack_acct: conntrack -L shows each direction's counters."""
    return node.sysctls.get("net.netfilter.nf_conntrack_acct", "0") != "0"


def _run(req: Request, node: Node) -> tuple[int, str, str]:
    ct = node.conntrack
    now = node.now()
    if req.table == "expect":
        if req.cmd == "L":
            return 0, "", f"{PROG}: 0 expectations have been shown.\n"
        if req.cmd == "F":
            return 0, "", f"{PROG}: expectation table has been emptied.\n"
        if req.cmd == "C":
            return 0, "0\n", ""
    elif req.table in ("dying", "unconfirmed"):
        return 0, "", f"{PROG}: 0 flow entries have been shown.\n"
    if req.cmd == "F":
        ct.flush()
        return 0, "", f"{PROG}: connection tracking table has been emptied.\n"
    if req.cmd == "C":
        return 0, f"{len(ct.entries(now))}\n", ""
    if req.cmd == "G":
        return _get(req, node, now)
    chosen = [c for c in ct.entries(now) if _selected(c, req.f)]
    extended, with_id, acct = "extended" in req.outputs, "id" in req.outputs, _acct(node)
    if req.cmd == "D":
        out = "".join(format_conn(c, now, extended, with_id=with_id, acct=acct) + "\n" for c in chosen)
        for c in chosen:
            ct.delete(c)
        return (0 if chosen else 1), out, f"{PROG}: {len(chosen)} flow entries have been deleted.\n"
    if "json" in req.given:
        out = json.dumps([conn_json(c, now) for c in chosen], indent=1) + "\n"
    else:
        out = "".join(format_conn(c, now, extended, with_id=with_id, acct=acct) + "\n" for c in chosen)
    if "zero" in req.given:
        for c in chosen:
            c.acct[:] = [0, 0, 0, 0]
    return 0, out, f"{PROG}: {len(chosen)} flow entries have been shown.\n"
