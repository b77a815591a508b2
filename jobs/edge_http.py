"""The store agent's HTTP API: `POST /movements`, `GET /availability/<sku>`, `GET /status`.

Every request must carry `Authorization: Bearer <token>` with one of the
tokens of `KANAL_EDGE_TOKENS` (comma-separated, so a new token can be rolled
out before the old one is withdrawn). Tokens are compared in constant time
and never logged. Order of checks, so a stranger learns nothing and costs
little: token (401), size (411/413, before the body is read), JSON and
record count (400/413), then the records (400 naming index and field).
A 2xx answer to `POST /movements` means the movements are on disk.

Plain HTTP is for loopback only (a POS on the same machine): listening on
another address needs TLS (`--tls-cert/--tls-key`) or an explicit
`--insecure`. The TLS handshake runs in the request's thread, so a slow or
broken client never holds up the others.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from kanal.core.errors import ConfigError, redact, register_secret
from kanal.jobs.edge import MAX_BODY, EdgeOptions, Malformed, TooMany, frame_of_body

if TYPE_CHECKING:
    from kanal.jobs.edge_agent import Agent

log = logging.getLogger("kanal.edge.http")
TOKENS_ENV = "KANAL_EDGE_TOKENS"
_PROBLEMS_SHOWN = 50


def parse_tokens(value: str | None) -> tuple[str, ...]:
    """`KANAL_EDGE_TOKENS` as tokens; refuses to run without one (an open door on a store's stock is never meant)."""
    tokens = tuple(t.strip() for t in (value or "").split(",") if t.strip())
    if not tokens:
        raise ConfigError(f"set {TOKENS_ENV} to the bearer token(s) clients must send (comma-separated, e.g. "
                          f"{TOKENS_ENV}=$(openssl rand -hex 32)); kanal edge does not run without one")  # fmt: skip
    short = [t for t in tokens if len(t) < 16]
    if short:
        raise ConfigError(f"{TOKENS_ENV}: a token of {len(short[0])} characters is too easy to guess; use 16 or more")
    for token in tokens:
        register_secret(token)
    return tokens


def _loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise ConfigError(f"--host {host}: not an address of this machine") from None
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key}: cannot load them ({exc})") from None
    return context


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], agent: Agent, tokens: tuple[str, ...], tls: ssl.SSLContext | None):
        self.agent, self.tokens, self.tls = agent, tuple(t.encode() for t in tokens), tls
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            request.settimeout(_Handler.timeout)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                return
        super().finish_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "kanal-edge"
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        # The request line and status only; headers (the token) are never logged.
        log.debug("%s %s", self.client_address[0], redact(format % args))

    def _answer(self, status: int, document: dict[str, Any], *, close: bool = False) -> None:
        body = orjson.dumps(document)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="kanal-edge"')
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        supplied = token.strip().encode() if scheme.lower() == "bearer" else b""
        matched = False
        for known in self.server.tokens:  # every token compared, in constant time each
            matched |= hmac.compare_digest(supplied, known)
        return matched and bool(supplied)

    def _guarded(self) -> bool:
        """False (and answered) when the request has no valid token; its body is then never read."""
        if self._authorized():
            return True
        self._answer(401, {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"}, close=True)
        return False

    def handle_expect_100(self) -> bool:
        """A client asking before it sends the body learns of a wrong token or a body too large before sending it."""
        if not self._guarded():
            return False
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > MAX_BODY:
            self._answer(413, {"error": f"body of {length} bytes; at most {MAX_BODY} per request"}, close=True)
            return False
        return super().handle_expect_100()

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        if not self._guarded():
            return
        path = self.path.split("?", 1)[0]
        try:
            if path == "/status":
                self._answer(200, self.server.agent.status())
            elif path.startswith("/availability/") and len(path) > len("/availability/"):
                self._answer(200, self.server.agent.edge.availability(unquote(path[len("/availability/"):])))
            else:
                self._answer(404, {"error": f"no {path}; try GET /availability/<sku>, GET /status, POST /movements"})
        except Exception as exc:  # noqa: BLE001 - an answer, never a dropped connection
            log.exception("GET %s failed", path)
            self._answer(500, {"error": redact(str(exc))})

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        if not self._guarded():
            return
        if self.path.split("?", 1)[0] != "/movements":
            self._answer(404, {"error": f"no POST {self.path}; movements go to POST /movements"}, close=True)
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._answer(411, {"error": "send the body with a Content-Length header"}, close=True)
            return
        if int(length) > MAX_BODY:
            self._answer(413, {"error": f"body of {length} bytes; at most {MAX_BODY} per request"}, close=True)
            return
        body = self.rfile.read(int(length))
        try:
            taken = self.server.agent.edge.take(frame_of_body(body))
        except TooMany as exc:
            self._answer(413, {"error": exc.message})
            return
        except Malformed as exc:
            problems = [p.as_dict() for p in exc.problems[:_PROBLEMS_SHOWN]]
            self._answer(400, {"error": exc.message, "problems": problems})
            return
        except Exception as exc:  # noqa: BLE001 - not journaled: the client must send again
            log.exception("POST /movements failed")
            self._answer(500, {"error": f"not journaled, send again: {redact(str(exc))}"})
            return
        backlog = self.server.agent.edge.journal.stats().backlog
        self._answer(200, {"records": taken.records, "new": taken.new, "duplicate": taken.duplicate, "backlog": backlog})


@contextmanager
def serving(agent: Agent, options: EdgeOptions) -> Iterator[str]:
    """Serve the API while the block runs; yields the URL. Refuses plain HTTP beyond loopback unless `insecure`."""
    tls = tls_context(options.tls_cert, options.tls_key)
    if tls is None and not options.insecure and not _loopback(options.host):
        raise ConfigError(
            f"--host {options.host} is reachable from other machines: give --tls-cert and --tls-key, "
            "or --insecure on a network you trust (tokens would travel in clear text)"
        )
    try:
        server = _Server((options.host, options.port), agent, options.tokens, tls)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {options.port} on {options.host} is in use by another program; choose another") from None
        raise ConfigError(f"cannot listen on {options.host}:{options.port} ({exc.strerror})") from None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="kanal-edge-http", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"{'https' if tls else 'http'}://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
