"""Fixtures of the HTTP kit tests: respx routers as injected transports, a real local server.

Budgets are process-wide per (host, credential), so every test talks to a
host name of its own and tests never share a budget by accident.
"""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest
import respx

from kanal.core.retry import RetryPolicy
from tests.core.http.local_server import LocalServer, handler


@pytest.fixture
def fast() -> RetryPolicy:
    """Retries that wait milliseconds, not seconds."""
    return RetryPolicy(max_elapsed_s=10, initial_s=0.01, max_wait_s=0.05)


@pytest.fixture
def base_url() -> str:
    return f"https://api-{uuid.uuid4().hex[:10]}.test/v1"


@pytest.fixture
def router(base_url: str) -> respx.Router:
    return respx.Router(base_url=base_url, assert_all_mocked=True)


@pytest.fixture
def transport(router: respx.Router) -> httpx.MockTransport:
    return httpx.MockTransport(router.handler)


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    state = LocalServer()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    for _ in range(64):
        state.gate.release()  # nothing stays held after a failed test
    httpd.shutdown()
    httpd.server_close()
