"""``conntrack`` (conntrack-tools 1.4.7) on the emulated node: -L, -D, -F, -C, -G with the usual filters.

Output lines, the summaries on stderr, exit codes and error messages are the tool's (checked against
the real tool in kp- namespaces). Entries print oldest first (the kernel's hash order is not
reproducible). Port, ``--state`` and ICMP options are protocol extensions: they exist only after
``-p``, as in the tool.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from kproxy.netfilter.conntrack import (
    IPS_ASSURED,
    IPS_EXPECTED,
    IPS_FIXED_TIMEOUT,
    IPS_SEEN_REPLY,
    Conn,
    Tuple,
)
from kproxy.netfilter.ctformat import format_conn
from kproxy.packet import ICMP, ICMPV6, TCP

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
FLAG_OPTS = {"-z": "zero", "--zero": "zero"}
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


def _parse(argv: list[str]) -> Request:
    req = Request()
    i = 0
    while i < len(argv):
        a = argv[i]
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
            raise Usage(f"unknown option `{a}'")
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


def run_conntrack(argv: list[str], node: Any) -> tuple[int, str, str]:
    """One conntrack invocation: (exit status, stdout, stderr)."""
    try:
        req = _parse(argv)
    except Usage as exc:
        return 2, "", f"{PROG}: {exc}\n{HINT}"
    if req.f.get("status") == 0:
        # -u with nothing but ignored names: the kernel refuses the empty status filter.
        return 1, "", "".join(req.warnings) + f"{PROG}: Operation failed: invalid parameters\n"
    rc, out, err = _run(req, node)
    return rc, out, "".join(req.warnings) + err


def _get(req: Request, node: Any, now: float) -> tuple[int, str, str]:
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
    line = format_conn(hit[0], now, "extended" in req.outputs, use=2, with_id="id" in req.outputs)
    return 0, line + "\n", f"{PROG}: 1 flow entries have been shown.\n"


def _run(req: Request, node: Any) -> tuple[int, str, str]:
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
    extended, with_id = "extended" in req.outputs, "id" in req.outputs
    if req.cmd == "D":
        out = "".join(format_conn(c, now, extended, with_id=with_id) + "\n" for c in chosen)
        for c in chosen:
            ct.delete(c)
        return (0 if chosen else 1), out, f"{PROG}: {len(chosen)} flow entries have been deleted.\n"
    out = "".join(format_conn(c, now, extended, with_id=with_id) + "\n" for c in chosen)
    if "zero" in req.given:
        for c in chosen:
            c.acct[:] = [0, 0, 0, 0]
    return 0, out, f"{PROG}: {len(chosen)} flow entries have been shown.\n"
