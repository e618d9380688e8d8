"""The small servers a lab pod runs: HTTP and UDP echo that report who they are and the peer they saw.

Every reply is one line, ``pod=NAME peer=IP:PORT``, so a test can tell which endpoint answered and
whether the client's address survived (externalTrafficPolicy Local) or was masqueraded.

    python -m kproxy.lab.server --name web-0 --tcp 8080 --udp 5353
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler


def reply_line(name: str, peer: tuple[str, int]) -> str:
    return f"pod={name} peer={peer[0]}:{peer[1]}\n"


def make_http_handler(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
            body = reply_line(name, self.client_address).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    return Handler


class _TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve_udp(name: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    while True:
        _, peer = sock.recvfrom(2048)
        sock.sendto(reply_line(name, peer).encode(), peer)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--tcp", type=int, action="append", default=[])
    ap.add_argument("--udp", type=int, action="append", default=[])
    args = ap.parse_args(argv)
    threads = []
    for port in args.udp:
        t = threading.Thread(target=serve_udp, args=(args.name, port), daemon=True)
        t.start()
        threads.append(t)
    servers = [_TCPServer(("0.0.0.0", port), make_http_handler(args.name)) for port in args.tcp]
    for srv in servers[1:]:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    if servers:
        servers[0].serve_forever()
    else:
        for t in threads:
            t.join()


if __name__ == "__main__":
    main()
