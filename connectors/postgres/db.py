"""Connections and error translation shared by the PostgreSQL source and sink.

psycopg errors are mapped onto Kanal's error tree once, here: a server that is
down or restarting is `Unreachable` (retried), refused credentials are
`AuthError` (not retried), bad data is `BatchRejected` (bisected by the
engine).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import NoReturn

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from kanal.connectors.postgres.config import PostgresConfig
from kanal.core.errors import AuthError, BatchRejected, ConnectorError, Unreachable
from kanal.core.deadline import attempt_timeout

_AUTH_STATES = ("28P01", "28000")  # invalid_password, invalid_authorization_specification
# libpq reports refused logins at connect time without a SQLSTATE: recognise the server's words.
_AUTH_TEXT = re.compile(r"password authentication failed|role \S+ does not exist|no pg_hba\.conf entry")
_NOT_RETRYABLE_TEXT = re.compile(r"database \S+ does not exist")


def describe(config: PostgresConfig) -> str:
    """A name for messages: host (or socket folder) and database, no secrets."""
    try:
        parts = conninfo_to_dict(config.dsn.get_secret_value())
    except psycopg.ProgrammingError:
        return "postgres (invalid dsn)"
    host = parts.get("host") or "localhost"
    return f"postgres {host}/{parts.get('dbname') or parts.get('user') or ''}".rstrip("/")


def connect(config: PostgresConfig) -> psycopg.Connection:
    system = describe(config)
    try:
        return psycopg.connect(
            config.dsn.get_secret_value(),
            connect_timeout=int(attempt_timeout(config.connect_timeout_s)),
            application_name=config.application_name,
            options="-c TimeZone=UTC -c DateStyle=ISO",
        )
    except psycopg.ProgrammingError as exc:
        raise ConnectorError(system, f"invalid dsn: {exc}") from None
    except psycopg.OperationalError as exc:
        reraise(system, exc)


def reraise(system: str, exc: psycopg.Error) -> NoReturn:
    """Translate a psycopg error into the Kanal error tree (messages stay secret-free)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    state = getattr(exc, "sqlstate", None)
    if state in _AUTH_STATES or _AUTH_TEXT.search(text):
        raise AuthError(system, f"credentials refused: {text}") from None
    if _NOT_RETRYABLE_TEXT.search(text):
        raise ConnectorError(system, text) from None
    if isinstance(exc, pg_errors.DataError | pg_errors.IntegrityError):
        raise BatchRejected(system, text) from None
    if isinstance(exc, psycopg.OperationalError | pg_errors.AdminShutdown | pg_errors.CannotConnectNow):
        raise Unreachable(system, text) from None
    if state and state.startswith(("08", "57P")):  # connection exceptions, operator intervention
        raise Unreachable(system, text) from None
    raise ConnectorError(system, text) from None


@contextlib.contextmanager
def translated(system: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        reraise(system, exc)


def qualified(schema: str, table: str) -> str:
    return f'"{schema}"."{table}"'
