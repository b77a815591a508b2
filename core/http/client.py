"""The HTTP client of API connectors: one request at a time, each one safe to wait for.

`HttpClient` is synchronous (each source or sink instance runs on its own
thread) and thread-safe. Every request

1. takes its turn and its cost from the credential's rate-limit `Budget`
   (delta lane before backfill lane),
2. takes one of the host's connection slots (`HttpSettings.max_concurrency`,
   shared by every client of that host in the process),
3. gets its credentials from the `Auth` (an OAuth token is refreshed first
   when it is about to expire),
4. goes out over a shared, kept-alive HTTP/1.1 connection (gzip answers are
   decoded), and
5. its answer is judged (`responses.failure`): transient failures are retried
   *for this request* within the `RetryPolicy`, honouring Retry-After and
   throttling, so a connector never fails a whole chunk because of a 429; a
   401 gets exactly one more try when the `Auth` can renew its token.

The transport is injectable (`transport=`): respx, a simulator or a real
system plug in the same way. Redirects are not followed: a POST redirected
to a GET would "succeed" without writing anything.

Writes are retried like reads, as the engine re-delivers batches anyway:
sinks must write idempotently (upsert by key, PUT by SKU, idempotency keys).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import httpx
from pydantic import Field

from kanal.core.connector import FrozenModel
from kanal.core.errors import AuthError, ConnectorError, KanalError, Unreachable, redact
from kanal.core.http.auth import Auth
from kanal.core.http.budget import Budget, BudgetSpec, budget_for, fingerprint, is_throttled
from kanal.core.http.frames import Path
from kanal.core.http.lanes import Lane, Slots
from kanal.core.http.paginate import Page, PageRequest, Paginator
from kanal.core.http.responses import RECORD_STATUSES, RecordFailure, failure, unreachable
from kanal.core.deadline import attempt_timeout
from kanal.core.retry import RetryPolicy, call_with_retry

_GRAPHQL_AUTH_CODES = frozenset({"ACCESS_DENIED", "UNAUTHENTICATED", "FORBIDDEN"})
_HEADERS = {"Accept": "application/json", "User-Agent": "kanal"}
_KEEPALIVE_EXPIRY_S = 30.0


class HttpSettings(FrozenModel):
    """Connection settings a connector config can embed (`http:` in a job file)."""

    timeout_s: float = Field(30.0, gt=0, le=3600, description="longest wait for an answer (read, write, pool)")
    connect_timeout_s: float = Field(10.0, gt=0, le=600, description="longest wait to connect")
    max_concurrency: int = Field(
        4, ge=1, le=64, description="requests in flight to one host, all jobs of the process together"
    )


class _RedactingFilter(logging.Filter):
    """httpx logs every request URL at INFO: query-string credentials must not reach the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


logging.getLogger("httpx").addFilter(_RedactingFilter())


@dataclass
class _Pool:
    """One kept-alive connection pool and slot limit per host (and injected transport)."""

    http: httpx.Client
    slots: Slots
    users: int = 0


_pools: dict[tuple[str, int], _Pool] = {}
_pools_lock = threading.Lock()


def _origin(url: httpx.URL) -> str:
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return f"{url.scheme}://{url.host}:{port}"


def _acquire_pool(
    origin: str, transport: httpx.BaseTransport | None, settings: HttpSettings
) -> tuple[tuple[str, int], _Pool]:
    """The host's shared pool (the first client of a host sets its limits)."""
    key = (origin, id(transport) if transport is not None else 0)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            if transport is None:
                limits = httpx.Limits(
                    max_keepalive_connections=settings.max_concurrency, keepalive_expiry=_KEEPALIVE_EXPIRY_S
                )
                transport = httpx.HTTPTransport(limits=limits)
            pool = _pools[key] = _Pool(
                httpx.Client(transport=transport, headers=_HEADERS), Slots(settings.max_concurrency)
            )
        pool.users += 1
        return key, pool


def _release_pool(key: tuple[str, int]) -> None:
    with _pools_lock:
        pool = _pools[key]
        pool.users -= 1
        if pool.users == 0:
            del _pools[key]
            pool.http.close()


class HttpClient:
    """Requests to one API (`base_url`) as one credential; see the module docstring.

    `system` names the system in every message ("shop"). `lane` is the
    default lane of this client's requests: a delta reader or streaming sink
    builds its client with `Lane.DELTA`.
    """

    def __init__(
        self,
        system: str,
        base_url: str,
        auth: Auth | None = None,
        *,
        budget: BudgetSpec | None = None,
        settings: HttpSettings | None = None,
        retry: RetryPolicy | None = None,
        lane: Lane = Lane.BACKFILL,
        transport: httpx.BaseTransport | None = None,
        cancel: threading.Event | None = None,
        on_retry: Callable[[Unreachable, int], None] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        settings = settings or HttpSettings()
        self.system = system
        self.auth = auth
        self.lane = lane
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        self._origin = _origin(self._base)
        self.budget: Budget = budget_for(self._origin, auth.identity() if auth else "anonymous", budget or BudgetSpec())
        self._pool_key, self._pool = _acquire_pool(self._origin, transport, settings)
        self._settings = settings
        self._retry = retry or RetryPolicy()
        self._cancel = cancel
        self._on_retry = on_retry
        self._headers = dict(headers or {})
        self._closed = False

    # -- public ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        lane: Lane | None = None,
    ) -> httpx.Response:
        """One request, retried while transient; any failure raises (see `responses`)."""
        return self.fetch(PageRequest(path, dict(params or {}), method.upper(), json), lane=lane).response

    def fetch(self, request: PageRequest, *, lane: Lane | None = None, items: Path | None = None) -> Page:
        """One request as a `Page` (its body parsed on demand); any failure raises."""
        outcome = self._with_retry(request, lane or self.lane, frozenset())
        assert isinstance(outcome, Page)  # no record statuses: every refusal raised
        outcome.items = items
        return outcome

    def submit(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        key: str | None = None,
        lane: Lane | None = None,
        record_statuses: frozenset[int] = RECORD_STATUSES,
    ) -> httpx.Response | RecordFailure:
        """Write one record: its answer, or a `RecordFailure` when the API refused the record's data.

        Only the statuses in `record_statuses` count as "this record is
        wrong"; throttling and outages are retried, and auth or other
        errors raise as for `request`.
        """
        request = PageRequest(path, dict(params or {}), method.upper(), json)
        outcome = self._with_retry(request, lane or self.lane, record_statuses)
        return replace(outcome, key=key) if isinstance(outcome, RecordFailure) else outcome.response

    def graphql(
        self, path: str, query: str, variables: Mapping[str, Any] | None = None, *, lane: Lane | None = None
    ) -> Any:
        """A GraphQL query or mutation; returns `data`. Throttling (even with HTTP 200) is waited out."""
        page = self.fetch(
            PageRequest(path, method="POST", json={"query": query, "variables": dict(variables or {})}), lane=lane
        )
        return page.body.get("data")

    def pages(self, request: PageRequest, paginator: Paginator, *, lane: Lane | None = None) -> Iterator[Page]:
        """Every page of a list, in order; each page knows the request of the next (`Page.next`)."""
        current: PageRequest | None = paginator.first(request)
        while current is not None:
            page = self.fetch(current, lane=lane, items=paginator.items)
            page.next = self._without_credentials(paginator.next(page))
            yield page
            current = page.next

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release_pool(self._pool_key)

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request ----------------------------------------------------------------------

    def _with_retry(self, request: PageRequest, lane: Lane, record_statuses: frozenset[int]) -> Page | RecordFailure:
        return call_with_retry(
            lambda: self._attempt(request, lane, record_statuses), self._retry, self._on_retry, self._cancel
        )

    def _attempt(self, request: PageRequest, lane: Lane, record_statuses: frozenset[int]) -> Page | RecordFailure:
        url = self._url(request)
        what = f"{request.method} {url}"
        query = _graphql_query(request)
        query_key = fingerprint(query) if query is not None else None
        cost = self.budget.cost_of(query_key) if query_key is not None else None
        renewed = False
        while True:
            self.budget.acquire(lane, cost, cancel=self._cancel, give_up_after_s=self._retry.max_elapsed_s)
            response = self._send(request, url, lane, what)
            pause = self.budget.observe(response.status_code, response.headers)
            if (
                response.status_code == 401
                and not renewed
                and self.auth is not None
                and self.auth.renew(response.request)
            ):
                renewed = True
                continue
            break
        outcome = failure(response, self.system, what, pause, record_statuses)
        if isinstance(outcome, KanalError):
            raise outcome
        if outcome is not None:
            return outcome
        page = Page(request, response, system=self.system)
        if query_key is not None:
            self._judge_graphql(page, query_key, what)
        return page

    def _send(self, request: PageRequest, url: httpx.URL, lane: Lane, what: str) -> httpx.Response:
        http = self._pool.http
        with self._pool.slots.hold(lane):
            outgoing = http.build_request(
                request.method,
                url,
                params=request.params or None,
                json=request.json,
                headers=self._headers,
                timeout=httpx.Timeout(self._settings.timeout_s, connect=attempt_timeout(self._settings.connect_timeout_s)),
            )
            if self.auth is not None:
                self.auth.apply(outgoing, http, self.system)
            try:
                return http.send(outgoing)
            except httpx.TransportError as exc:
                raise unreachable(exc, self.system, what) from None

    def _judge_graphql(self, page: Page, key: str, what: str) -> None:
        """Raise for GraphQL errors in a 200 answer: THROTTLED is waited for, others are errors."""
        body = page.body
        if not isinstance(body, dict):
            raise ConnectorError(self.system, f"{what} answered {page.response.status_code} without a GraphQL body")
        pause = self.budget.observe_graphql(body, key)
        if is_throttled(body):
            raise Unreachable(self.system, f"{what}: throttled by the API's query cost limit", retry_after=pause, answered=True)
        errors = body.get("errors")
        if errors:
            said = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)
            codes = {(e.get("extensions") or {}).get("code") for e in errors if isinstance(e, dict)}
            if codes & _GRAPHQL_AUTH_CODES:
                raise AuthError(self.system, f"{what}: {said} (check the credentials and the rights they grant)")
            raise ConnectorError(self.system, f"{what}: GraphQL errors: {said}")

    # -- URLs -----------------------------------------------------------------------------

    def _url(self, request: PageRequest) -> httpx.URL:
        """The URL of `request`: relative to the base URL, or absolute on the same host.

        Credentials only ever go to the configured host: an absolute URL
        elsewhere is refused instead of sent with them.
        """
        url = httpx.URL(request.path)
        if url.is_relative_url:
            return self._base.join(request.path.lstrip("/"))
        if _origin(url) != self._origin:
            raise ConnectorError(self.system, f"refusing to send credentials for {self._origin} to {_origin(url)}")
        return url

    def _without_credentials(self, request: PageRequest | None) -> PageRequest | None:
        """A next-page request without query-string credentials (WooCommerce's Link URLs repeat them)."""
        if request is None or self.auth is None or not self.auth.query_names():
            return request
        url = httpx.URL(request.path)
        for name in self.auth.query_names():
            url = url.copy_remove_param(name)
        params = {k: v for k, v in request.params.items() if k not in self.auth.query_names()}
        return replace(request, path=str(url), params=params)


def _graphql_query(request: PageRequest) -> str | None:
    """The query text of a GraphQL request (a POST whose JSON body has `query`), else None."""
    body = request.json
    return body["query"] if isinstance(body, dict) and isinstance(body.get("query"), str) else None
