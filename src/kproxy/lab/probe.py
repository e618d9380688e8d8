"""Real requests from inside a namespace: an HTTP GET or a UDP datagram, and the one-line answer.

The answer is the pod server's ``pod=NAME peer=IP:PORT`` line, or ``refused`` (a TCP RST or an ICMP
port-unreachable came back: a REJECT), ``timeout`` (nothing came back: a DROP), or ``error: ...``.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys

PROBE = r"""
import socket, sys
host, port, udp, sport, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), float(sys.argv[5])
kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.settimeout(timeout)
try:
    if sport:
        s.bind(("0.0.0.0", sport))
    if udp:
        s.connect((host, port))
        s.send(b"hello\n")
        data = s.recv(2048)
    else:
        s.connect((host, port))
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        data = data.split(b"\r\n\r\n", 1)[-1]
    print(data.decode().strip())
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
except OSError as exc:
    print(f"error: {exc.strerror or exc}")
"""


def probe(ns: str, host: str, port: int, udp: bool = False, sport: int = 0, timeout: float = 1.5) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, host, str(port),
                           "1" if udp else "0", str(sport), str(timeout)],
                          capture_output=True, text=True, timeout=timeout + 10)
    return (proc.stdout.strip() or f"error: {proc.stderr.strip()[-200:]}").splitlines()[-1]


def parse_target(text: str) -> tuple[str, int]:
    """``IPV4:PORT`` as (address, port); a ValueError that says what is wrong otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"bad target {text!r}: expected IPV4:PORT (e.g. 10.96.0.50:80)")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"bad target {text!r}: {host!r} is not an IPv4 address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad target {text!r}: {port!r} is not a port (1 to 65535)")
    return host, int(port)


FAILURES = {"refused": "connection refused (a TCP reset or ICMP port unreachable came back: rejected)",
            "timeout": "no answer (timed out: dropped on the way)"}


def failure(answer: str) -> str | None:
    """Why an answer line is not a pod's, in words (None when a pod answered)."""
    if answer.startswith("pod="):
        return None
    if answer in FAILURES:
        return FAILURES[answer]
    return answer.removeprefix("error: ") or "no answer"
