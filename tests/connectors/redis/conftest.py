"""A real Valkey for the Redis connector's tests: the connector's own embedded server, with a password.

One server per test session (started through `embedded.lease`, as a job
without `url:` would); every test starts from an empty database.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from kanal.connectors.redis import embedded

PASSWORD = "kit-redis-secret"


@dataclass(frozen=True)
class Server:
    sock: Path

    def url(self, password: str = PASSWORD) -> str:
        return f"unix://{self.sock}?password={password}"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.sock), password=PASSWORD)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    lease = embedded.lease(tmp_path_factory.mktemp("redis"))
    with redis.Redis(unix_socket_path=str(lease.sock)) as client:
        client.config_set("requirepass", PASSWORD)
    yield Server(lease.sock)
    lease.release()


@pytest.fixture
def redis_url(redis_server: Server) -> str:
    """The session's server, emptied: a URL with the password."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url()
