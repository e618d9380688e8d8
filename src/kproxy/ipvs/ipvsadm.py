"""``ipvsadm`` (1.31) on the emulated node's IPVS: the commands, the -L listings and the -S/-R format.

Addresses always print numerically (as with -n): the emulated node has no resolver.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from kproxy.ipvs.ipvs import FWD, PROTO_NAMES, Dest, Ipvs, IpvsError, VirtualService, parse_hostport
from kproxy.ipvs.schedulers import SCHEDULERS
from kproxy.packet import TCP, UDP, format_addr

HEADER = "IP Virtual Server version 1.2.1 (size=4096)\n"
VERSION_LINE = "ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)\n"
COMMANDS = {"-A": "add-service", "--add-service": "add-service", "-E": "edit-service", "--edit-service": "edit-service",
            "-D": "delete-service", "--delete-service": "delete-service", "-C": "clear", "--clear": "clear",
            "-a": "add-server", "--add-server": "add-server", "-e": "edit-server", "--edit-server": "edit-server",
            "-d": "delete-server", "--delete-server": "delete-server", "-L": "list", "-l": "list", "--list": "list",
            "-Z": "zero", "--zero": "zero", "-S": "save", "--save": "save", "-R": "restore", "--restore": "restore",
            "--set": "set", "-h": "help", "--help": "help", "-v": "version", "--version": "version"}
WITH_ARG = {"-t": "tcp", "--tcp-service": "tcp", "-u": "udp", "--udp-service": "udp", "--sctp-service": "sctp",
            "-f": "fwmark", "--fwmark-service": "fwmark", "-s": "scheduler", "--scheduler": "scheduler",
            "-M": "netmask", "--netmask": "netmask", "-r": "real", "--real-server": "real", "-w": "weight",
            "--weight": "weight", "-x": "u_threshold", "--u-threshold": "u_threshold", "-y": "l_threshold",
            "--l-threshold": "l_threshold", "-b": "sched_flags", "--sched-flags": "sched_flags"}
FLAGS = {"-g": "droute", "--gatewaying": "droute", "-i": "tunnel", "--ipip": "tunnel", "-m": "masq",
         "--masquerading": "masq", "-n": "numeric", "--numeric": "numeric", "-c": "connection",
         "--connection": "connection", "--stats": "stats", "--rate": "rate", "--timeout": "timeout",
         "--exact": "exact", "--sort": "sort", "--persistent-conn": "persistent_conn", "--json": "json"}


MAX_TIMEOUT = 86400 * 31
INT_MAX = 2**31 - 1
LIMITS = {"weight": (65535, "weight"), "u_threshold": (INT_MAX, "u_threshold"), "l_threshold": (INT_MAX, "l_threshold")}


class Usage(IpvsError):
    pass


def _expand(argv: list[str]) -> list[str]:
    """popt's forms: bundled short options (``-Ln`` is ``-L -n``) and ``--option=value``."""
    out = []
    for a in argv:
        if a.startswith("--") and "=" in a:
            out += a.split("=", 1)
        elif len(a) > 2 and a[0] == "-" and a[1] != "-" and a not in COMMANDS and a not in WITH_ARG and a not in FLAGS:
            out += [f"-{ch}" for ch in a[1:]]
        else:
            out.append(a)
    return out


def number(text: str, minimum: int, maximum: int, what: str) -> int:
    """ipvsadm's string_to_number: a whole decimal within [minimum, maximum], else ``illegal WHAT specified``."""
    t = text.lstrip(" \t\n\v\f\r")
    if t[:1] in ("+", "-"):
        sign, t = t[0], t[1:]
    else:
        sign = ""
    if t.isascii() and t.isdigit() and minimum <= int(sign + t) <= maximum:
        return int(sign + t)
    raise Usage(f"illegal {what} specified")


def _parse(argv: list[str]) -> tuple[str, dict[str, Any], list[str]]:
    argv = _expand(argv)
    cmd = ""
    opts: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in COMMANDS:
            if cmd:
                raise Usage("You may specify only one command")
            cmd = COMMANDS[a]
        elif a in WITH_ARG:
            i += 1
            if i >= len(argv):
                raise Usage(f"option requires an argument -- '{a.lstrip('-')}'")
            key = WITH_ARG[a]
            if key in LIMITS:
                number(argv[i], 0, LIMITS[key][0], LIMITS[key][1])
            opts[key] = argv[i]
        elif a in ("-p", "--persistent"):
            if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                i += 1
                if not (argv[i].isascii() and argv[i].isdigit() and 1 <= int(argv[i]) <= MAX_TIMEOUT):
                    raise Usage(f"invalid timeout value `{argv[i]}' specified")
                opts["persistent"] = int(argv[i])
            else:
                opts["persistent"] = 300
        elif a in FLAGS:
            opts[FLAGS[a]] = True
        else:
            rest.append(a)
        i += 1
    return cmd, opts, rest


def _service_key(opts: dict[str, Any]) -> tuple[tuple[int, int, int, int], int]:
    for proto in ("tcp", "udp", "sctp"):
        if proto in opts:
            fam, addr, port = parse_hostport(opts[proto])
            if port == 0:
                raise IpvsError("Zero port specified for non-persistent service")
            return (0, {"tcp": TCP, "udp": UDP, "sctp": 132}[proto], addr, port), fam
    if "fwmark" in opts:
        if not str(opts["fwmark"]).isdigit() or int(opts["fwmark"]) == 0:
            raise IpvsError("Illegal fwmark specified")
        return (int(opts["fwmark"]), 0, 0, 0), 4
    raise Usage("You need to supply the 'service-address' option for the 'add-service' command")


def _fwd(opts: dict[str, Any]) -> str:
    for f in ("droute", "tunnel", "masq"):
        if opts.get(f):
            return f
    return "droute"


def execute(ipvs: Ipvs, cmd: str, opts: dict[str, Any], now: float) -> str:
    if cmd == "clear":
        ipvs.clear()
        return ""
    if cmd in ("list", "save"):
        only = None
        if any(k in opts for k in ("tcp", "udp", "sctp", "fwmark")):
            only = [ipvs.get_service(_service_key(opts)[0])]       # ``-L -t VIP:PORT``: that service alone
        return list_services(ipvs, opts, now, only) if cmd == "list" else save(ipvs, only)
    if cmd == "set":
        return ""
    if cmd == "zero":
        for svc in ipvs.services.values():
            for stats in [svc.stats, *(d.stats for d in svc.dests)]:
                for k in stats:
                    stats[k] = 0
        return ""
    key, fam = _service_key(opts)
    if cmd == "add-service":
        sched = opts.get("scheduler", "wlc")
        if sched not in SCHEDULERS:
            raise IpvsError("Scheduler not found: ip_vs_" + sched + ".ko")
        svc = VirtualService(key[1], key[2], key[3], key[0], fam, sched, opts.get("persistent"),
                             _netmask(opts.get("netmask")), set(filter(None, str(opts.get("sched_flags", "")).split(","))))
        ipvs.add_service(svc)
        return ""
    svc = ipvs.get_service(key)
    if cmd == "edit-service":
        if "scheduler" in opts:
            svc.set_scheduler(opts["scheduler"])
        if "persistent" in opts:
            svc.persistent = opts["persistent"]
        return ""
    if cmd == "delete-service":
        ipvs.del_service(key)
        return ""
    if "real" not in opts:
        raise Usage("You need to supply the 'real-server' option for the '" + cmd + "' command")
    rfam, raddr, rport = parse_hostport(opts["real"])
    rport = rport or svc.port
    if cmd == "add-server":
        ipvs.add_dest(svc, Dest(raddr, rport, rfam, int(opts.get("weight", 1)), _fwd(opts),
                                int(opts.get("u_threshold", 0)), int(opts.get("l_threshold", 0))))
    elif cmd == "edit-server":
        d = svc.find(raddr, rport)
        if d is None:
            raise IpvsError("No such destination")
        d.weight = int(opts.get("weight", d.weight))
        d.fwd = _fwd(opts) if any(opts.get(f) for f in ("droute", "tunnel", "masq")) else d.fwd
        ipvs.changed()
        d.u_threshold = int(opts.get("u_threshold", d.u_threshold))
        d.l_threshold = int(opts.get("l_threshold", d.l_threshold))
        d.update_overload()
        assert svc.scheduler is not None
        svc.scheduler.update()
    else:
        ipvs.del_dest(svc, raddr, rport)
    return ""


def _netmask(text: str | None) -> int:
    if not text:
        return 0xFFFFFFFF
    try:
        return int(ipaddress.ip_address(text))
    except ValueError:
        raise IpvsError("Illegal netmask specified") from None


def _svc_line(svc: VirtualService) -> str:
    line = f"{svc.text()} {svc.scheduler_name}"
    if svc.flags:
        line += f" ({','.join(sorted(svc.flags))})"
    if svc.persistent:
        line += f" persistent {svc.persistent}"
        if svc.netmask != 0xFFFFFFFF:
            line += f" mask {format_addr(svc.netmask)}"
    return line


def list_services(ipvs: Ipvs, opts: dict[str, Any], now: float, only: list[VirtualService] | None = None) -> str:
    if opts.get("json"):
        return json.dumps([service_json(svc) for svc in (ipvs.services.values() if only is None else only)],
                          indent=1) + "\n"
    if opts.get("timeout"):
        t = ipvs.timeouts
        return f"Timeout (tcp tcpfin udp): {t['tcp']} {t['tcpfin']} {t['udp']}\n"
    if opts.get("connection"):
        lines = ["IPVS connection entries", "pro expire state       source             virtual            destination"]
        for c in ipvs.connections(now):
            left = max(0, int(c.expires - now))
            lines.append(f"{PROTO_NAMES[c.proto]:<3} {left // 60:02d}:{left % 60:02d}  {c.state:<11} "
                         f"{_hp(c.caddr, c.cport):<18} {_hp(c.vaddr, c.vport):<18} {c.dest.text()}")
        return "\n".join(lines) + "\n"
    out = [HEADER.rstrip("\n")]
    if opts.get("stats"):
        out += ["Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes",
                "  -> RemoteAddress:Port"]
    elif opts.get("rate"):
        out += ["Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS",
                "  -> RemoteAddress:Port"]
    else:
        out += ["Prot LocalAddress:Port Scheduler Flags",
                "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]
    for svc in ipvs.services.values() if only is None else only:
        if opts.get("stats"):
            s = svc.stats
            out.append(f"{svc.text():<33} {s['conns']:>8}{s['inpkts']:>9}{s['outpkts']:>9}{s['inbytes']:>9}"
                       f"{s['outbytes']:>9}")
            for d in svc.dests:
                s = d.stats
                out.append(f"  -> {d.text():<28} {s['conns']:>8}{s['inpkts']:>9}{s['outpkts']:>9}{s['inbytes']:>9}"
                           f"{s['outbytes']:>9}")
        elif opts.get("rate"):
            owners: list[tuple[Any, str]] = [(svc, f"{svc.text():<33}"), *((d, f"  -> {d.text():<28}") for d in svc.dests)]
            for owner, label in owners:
                owner.estimator.sample(owner.stats, now)
                cps, inpps, outpps, inbps, outbps = owner.estimator.rates()
                out.append(f"{label} {cps:>8}{inpps:>9}{outpps:>9}{inbps:>9}{outbps:>9}")
        else:
            out.append(_svc_line(svc))
            out += [f"  -> {d.text():<28} {FWD[d.fwd]:<7} {d.weight:<6} {d.activeconns:<10} {d.inactconns:<10}"
                    for d in svc.dests]
    return "\n".join(out) + "\n"


def service_json(svc: VirtualService) -> dict[str, Any]:
    """``-L --json``: a virtual service with its real servers and counters, for scripts (kproxy's own option)."""
    dests = [{"address": format_addr(d.addr, d.family), "port": d.port, "forward": FWD[d.fwd], "weight": d.weight,
              "active": d.activeconns, "inactive": d.inactconns, "stats": dict(d.stats)} for d in svc.dests]
    return {"protocol": None if svc.fwmark else PROTO_NAMES[svc.proto], "fwmark": svc.fwmark or None,
            "address": None if svc.fwmark else format_addr(svc.addr, svc.family), "port": svc.port,
            "scheduler": svc.scheduler_name, "flags": sorted(svc.flags), "persistent": svc.persistent,
            "stats": dict(svc.stats), "servers": dests}


def _hp(addr: int, port: int) -> str:
    return f"{format_addr(addr)}:{port}"


def save(ipvs: Ipvs, only: list[VirtualService] | None = None) -> str:
    lines = []
    for svc in ipvs.services.values() if only is None else only:
        where = f"-f {svc.fwmark}" if svc.fwmark else \
            f"-{ {TCP: 't', UDP: 'u'}.get(svc.proto, '-sctp-service') } {svc.text().split()[-1]}"
        where = where.replace("- -sctp-service", "--sctp-service")
        line = f"-A {where} -s {svc.scheduler_name}"
        if svc.persistent:
            line += f" -p {svc.persistent}"
            if svc.netmask != 0xFFFFFFFF:
                line += f" -M {format_addr(svc.netmask)}"
        if svc.flags:
            line += f" -b {','.join(sorted(svc.flags))}"
        lines.append(line)
        for d in svc.dests:
            flag = {"masq": "-m", "droute": "-g", "tunnel": "-i", "local": "-g"}[d.fwd]
            extra = (f" -x {d.u_threshold}" if d.u_threshold else "") + (f" -y {d.l_threshold}" if d.l_threshold else "")
            lines.append(f"-a {where} -r {d.text()} {flag} -w {d.weight}{extra}")
    return "".join(line + "\n" for line in lines)


def run_ipvsadm(argv: list[str], ipvs: Ipvs | None, now: float, stdin: str | None = None) -> tuple[int, str, str]:
    if ipvs is None:
        return 1, "", "Can't initialize ipvs: Protocol not available\nAre you sure that IP Virtual Server is built in the kernel or as module?\n"
    try:
        cmd, opts, rest = _parse(argv)
        if cmd == "help":
            return 0, usage(), ""
        if cmd == "set":
            return _set_timeouts(ipvs, rest)
        if rest:
            raise Usage(f"unexpected argument {rest[0]}")
        if not cmd:
            cmd = "list"
        if cmd == "version":
            return 0, VERSION_LINE, ""
        if cmd == "restore":
            return _restore(ipvs, stdin or "", now)
        return 0, execute(ipvs, cmd, opts, now), ""
    except IpvsError as exc:
        if isinstance(exc, Usage):
            return 2, "", f"{exc}\n"
        return 1, "", f"{exc}\n"


def _set_timeouts(ipvs: Ipvs, values: list[str]) -> tuple[int, str, str]:
    """``--set tcp tcpfin udp``: 0 leaves a timeout unchanged."""
    if len(values) < 3:
        return 2, "", "--set option requires 3 timeout values\n"
    if len(values) > 3:
        return 2, "", f"unexpected argument {values[3]}\n"
    for v in values:
        if not (v.isascii() and v.isdigit() and int(v) <= MAX_TIMEOUT):
            return 2, "", f"invalid timeout value `{v}' specified\n"
    for key, v in zip(("tcp", "tcpfin", "udp"), values, strict=True):
        if int(v):
            ipvs.timeouts[key] = int(v)
    return 0, "", ""


def usage(prog: str = "ipvsadm") -> str:
    """``ipvsadm -h``: the version line, then the command synopsis and options (on stdout, exit status 0)."""
    commands = [
        "-A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [--pe persistence_engine] [-b sched-flags]",
        "-D virtual-service", "-C", "-R", "-S [-n]", "-a|e virtual-service -r server-address [options]",
        "-d virtual-service -r server-address", "-L|l [virtual-service] [options]", "-Z [virtual-service]",
        "--set tcp tcpfin udp", "--start-daemon {master|backup} [daemon-options]", "--stop-daemon {master|backup}",
        "-h"]
    options = [
        ("--tcp-service  -t service-address", "service-address is host[:port]"),
        ("--udp-service  -u service-address", "service-address is host[:port]"),
        ("--sctp-service  service-address", "service-address is host[:port]"),
        ("--fwmark-service  -f fwmark", "fwmark is an integer greater than zero"),
        ("--scheduler    -s scheduler", "one of rr|wrr|lc|wlc|lblc|lblcr|dh|sh|sed|nq|fo|ovf|mh,"),
        ("", "the default scheduler is wlc."),
        ("--persistent   -p [timeout]", "persistent service"),
        ("--netmask      -M netmask", "persistent granularity mask"),
        ("--real-server  -r server-address", "server-address is host (and port)"),
        ("--gatewaying   -g", "gatewaying (direct routing) (default)"),
        ("--ipip         -i", "ipip encapsulation (tunneling)"),
        ("--masquerading -m", "masquerading (NAT)"),
        ("--weight       -w weight", "capacity of real server"),
        ("--u-threshold  -x uthreshold", "upper threshold of connections"),
        ("--l-threshold  -y lthreshold", "lower threshold of connections"),
        ("--connection   -c", "output of current IPVS connections"),
        ("--timeout", "output of timeout (tcp tcpfin udp)"),
        ("--stats", "output of statistics information"),
        ("--rate", "output of rate information"),
        ("--exact", "expand numbers (display exact values)"),
        ("--numeric      -n", "numeric output of addresses and ports"),
        ("--sched-flags  -b flags", "scheduler flags (comma-separated)"),
    ]
    lines = [VERSION_LINE.rstrip("\n"), "Usage:", *(f"  {prog} {c}" for c in commands), "",
             "Commands:", "Either long or short options are allowed.",
             "  --add-service     -A        add virtual service with options",
             "  --edit-service    -E        edit virtual service with options",
             "  --delete-service  -D        delete virtual service",
             "  --clear           -C        clear the whole table",
             "  --restore         -R        restore rules from stdin",
             "  --save            -S        save rules to stdout",
             "  --add-server      -a        add real server with options",
             "  --edit-server     -e        edit real server with options",
             "  --delete-server   -d        delete real server",
             "  --list            -L|-l     list the table",
             "  --zero            -Z        zero counters in a service or all services",
             "  --set tcp tcpfin udp        set connection timeout values",
             "  --help            -h        display this help message", "", "Options:"]
    lines += [f"  {opt:<36}{text}" for opt, text in options]
    return "\n".join(lines) + "\n"


def _restore(ipvs: Ipvs, text: str, now: float) -> tuple[int, str, str]:
    import copy

    work = copy.deepcopy(ipvs.to_json())
    trial = Ipvs()
    trial.from_json(work)
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            cmd, opts, rest = _parse(line.split())         # ipvsadm splits restore lines at blanks, no quoting
            if rest or not cmd:
                raise Usage(f"Illegal argument: {(rest or [line])[0]}")
            execute(trial, cmd, opts, now)
        except IpvsError as exc:
            return 1, "", f"{exc} (line {n})\n"
    ipvs.from_json(trial.to_json())
    return 0, "", ""
