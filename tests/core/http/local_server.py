"""A real HTTP/1.1 server on 127.0.0.1 for the tests where real connections matter."""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass, field

import httpx


@dataclass
class LocalServer:
    """A real HTTP/1.1 server on 127.0.0.1 whose `/hold` requests wait until the test releases them.

    It counts connections (keep-alive) and requests in flight, and records
    the order in which held requests were admitted (`arrivals`).
    """

    url: str = ""
    connections: int = 0
    in_flight: int = 0
    peak: int = 0
    arrivals: list[str] = field(default_factory=list)
    gate: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, attribute: str) -> int:
        with self.lock:
            return getattr(self, attribute) if attribute != "arrivals" else len(self.arrivals)


def handler(server: LocalServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with server.lock:
                server.connections += 1

        def do_GET(self) -> None:
            url = httpx.URL(self.path)
            with server.lock:
                server.in_flight += 1
                server.peak = max(server.peak, server.in_flight)
                if url.path == "/hold":
                    server.arrivals.append(url.params.get("name", ""))
            if url.path == "/hold":
                server.gate.acquire(timeout=30)
            with server.lock:
                server.in_flight -= 1
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
