"""What an HTTP answer means for the engine: the error tree, and per-record failures.

* Connection errors, timeouts, 408, 429, 5xx: `Unreachable` (waited for).
* 401, 403: `AuthError` (never retried: it would only lock the account).
* A 4xx about one record's data (400, 409, 412, 413, 422 by default): a
  `RecordFailure` carrying the API's own message, so a sink dead-letters that
  record and writes the others.
* Any other 4xx (404 on a list, 405, 415): `HttpError`, a connector or
  configuration mistake that no retry fixes.

Messages name the request (method and URL without credentials) and quote
the API's message; they pass through `redact` like every Kanal message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import polars as pl

from kanal.core.errors import AuthError, ConnectorError, KanalError, Unreachable, redact
from kanal.core.validate import KEY

RECORD_STATUSES = frozenset({400, 409, 412, 413, 422})
"""Statuses that, on a write of one record, mean "this record's data was refused"."""
_MESSAGE_CHARS = 500


class HttpError(ConnectorError):
    """The API refused a request for a reason retrying cannot fix (wrong path, method, query)."""

    def __init__(self, system: str, message: str, status: int) -> None:
        self.status = status
        super().__init__(system, message)


@dataclass(frozen=True)
class RecordFailure:
    """The API refused one record because of its data; the rest of the batch can go on."""

    status: int
    message: str
    """The API's own words (redacted), e.g. "sku: has already been taken"."""
    key: str | None = None
    """The record's `_kanal_key`, when the sink gave it."""


def failures_frame(failures: list[RecordFailure]) -> pl.DataFrame | None:
    """Record failures as the `failed` frame of a sink's `WriteResult` (None: none failed)."""
    if not failures:
        return None
    return pl.DataFrame(
        {KEY: [f.key for f in failures], "reason": [f"HTTP {f.status}: {f.message}" for f in failures]},
        schema={KEY: pl.String, "reason": pl.String},
    )


def api_message(response: httpx.Response) -> str:
    """The API's explanation in a failed answer, from the common JSON error shapes, else its text."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return _short(response.text.strip() or response.reason_phrase)
    found = _messages(body)
    return _short("; ".join(found) if found else response.text.strip())


def _messages(body: Any) -> list[str]:
    """Messages from `{"message"}`, `{"error": {...}}`, `{"errors": [...]}`, `{"errors": {field: [...]}}`, `[{...}]`."""
    if isinstance(body, list):
        return [m for item in body for m in _messages(item)]
    if isinstance(body, str):
        return [body]
    if not isinstance(body, dict):
        return []
    for name in ("message", "detail", "title", "error_description"):
        if isinstance(body.get(name), str):
            return [body[name]]
    errors = body.get("errors", body.get("error"))
    found = _messages(errors)
    if not found and isinstance(errors, dict):  # {"errors": {"sku": ["has already been taken"]}}
        found = [f"{field}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for field, v in errors.items()]
    return found


def _short(text: str) -> str:
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + "..."


def failure(
    response: httpx.Response, system: str, what: str, retry_after: float | None, record_statuses: frozenset[int]
) -> KanalError | RecordFailure | None:
    """What a response means: None when it succeeded, else the error (or record failure) it stands for.

    `what` names the request ("GET https://shop/wp-json/wc/v3/products");
    `retry_after` is the pause the budget imposed, handed to the retry loop.
    """
    status = response.status_code
    if status < 300:
        return None
    if status < 400:  # a followed redirect would turn a POST into a GET that "succeeds"
        location = response.headers.get("Location", "?")
        return HttpError(
            system, f"{what} answered {status} (moved to {location}); use the final address as base URL", status
        )
    said = f"{what} answered {status} {response.reason_phrase}: {api_message(response)}"
    if status in (401, 403):
        return AuthError(system, f"{said} (check the credentials and the rights they grant)")
    if status in (408, 429) or status >= 500:
        return Unreachable(system, said, retry_after=retry_after, answered=True)
    if status in record_statuses:
        return RecordFailure(status, redact(api_message(response)))
    return HttpError(system, said, status)


def unreachable(exc: httpx.TransportError, system: str, what: str) -> Unreachable:
    """A connection problem or timeout: transient, worth waiting for."""
    return Unreachable(system, f"{what} failed: {type(exc).__name__}: {exc}")
