"""Configuration of the Redis connector and the connection it opens.

Connector level (`RedisConfig`, the job file's `config:` block)::

    url: "${REDIS_URL}"      # redis://:password@host:6379/0, rediss://... (TLS), unix:///run/redis.sock
                             # unset: the embedded server (see `embedded`), data in .kanal/redis
    prefix: kanal            # keys are kanal:availability:<channel>:<sku>, kanal:stock:<location>:<sku>

The URL is a secret as a whole (it usually holds the password): it never
shows in logs, reports or errors; the connection is named by host and
database only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import redis
from pydantic import Field, SecretStr, field_validator
from redis.backoff import NoBackoff
from redis.retry import Retry

from kanal.connectors.redis import embedded
from kanal.core.connector import FrozenModel
from kanal.core.errors import AuthError, ConnectorError, Unreachable, register_secret

SCHEMES = ("redis", "rediss", "unix")


class RedisConfig(FrozenModel):
    """Which Redis (or Valkey) holds the read model, and how its keys are named."""

    url: SecretStr | None = Field(
        None,
        description=(
            "redis://[user:password@]host:6379/0, rediss:// for TLS, unix:///path/to/redis.sock; use ${ENV_VAR}. "
            "Unset: Kanal runs an embedded server (pip install 'kanal[embedded]')"
        ),
    )
    data_dir: str | None = Field(
        None,
        description=(
            "data folder of the embedded server (no url:); default .kanal/redis in the folder kanal runs in "
            "($KANAL_STATE_DIR/redis when that is set)"
        ),
    )
    prefix: str = Field("kanal", pattern=r"^[A-Za-z0-9_.-]+$", description="first part of every key Kanal writes")
    stream_maxlen: int = Field(
        100_000, ge=1, description="about this many entries are kept in each change stream (XADD MAXLEN ~)"
    )
    timeout_s: float = Field(10.0, gt=0, le=300, description="connect and command timeout in seconds")

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        url = value.get_secret_value().strip()
        register_secret(url)
        scheme = urlsplit(url).scheme
        if scheme not in SCHEMES:
            raise ValueError(f"url must start with {', '.join(s + '://' for s in SCHEMES)} (got {scheme or 'no'} scheme)")
        return SecretStr(url)

    def describe(self) -> str:
        """The server for people: host and database, never the password."""
        if self.url is None:
            return f"redis (embedded, {self.embedded_dir()})"
        parts = urlsplit(self.url.get_secret_value())
        where = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"
        return f"redis {parts.scheme}://{where}"

    def embedded_dir(self) -> Path:
        """The embedded server's data folder (`data_dir`, else `.kanal/redis` beside the job's state)."""
        if self.data_dir:
            return Path(self.data_dir)
        state = os.environ.get("KANAL_STATE_DIR")
        return Path(state) / "redis" if state else Path(".kanal") / "redis"


class Connection:
    """A redis-py client for one config: the configured server, or the embedded one (held by a lease).

    The embedded server starts on first use, not when a sink is built, so
    `kanal validate` starts nothing.
    """

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.system = config.describe()
        self._client: redis.Redis | None = None
        self._lease: embedded.Lease | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            timeouts = {"socket_timeout": self.config.timeout_s, "socket_connect_timeout": self.config.timeout_s}
            with self.translated():
                if self.config.url is not None:
                    self._client = redis.Redis.from_url(self.config.url.get_secret_value(), **timeouts)
                else:
                    self._lease = embedded.lease(self.config.embedded_dir())
                    # no retries of its own: a lost embedded server is started again (`translated`), at once
                    self._client = redis.Redis(unix_socket_path=str(self._lease.sock), retry=Retry(NoBackoff(), 0), **timeouts)
        return self._client

    @contextmanager
    def translated(self) -> Iterator[None]:
        """redis-py errors as Kanal's: refused credentials stop at once, lost connections are retried."""
        try:
            yield
        except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
            raise AuthError(self.system, f"credentials refused: {exc}") from None
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            if self._lease is not None:
                self._lease.revive()
            raise Unreachable(self.system, str(exc) or type(exc).__name__) from None
        except redis.ResponseError as exc:
            if str(exc).startswith(("NOAUTH", "WRONGPASS")):
                raise AuthError(self.system, f"credentials refused: {exc}") from None
            raise ConnectorError(self.system, str(exc)) from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None
