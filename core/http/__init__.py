"""The HTTP connector kit: what every API connector shares, built once.

* `HttpClient` (client.py): retried requests over shared kept-alive
  connections, per-host concurrency, an injectable transport.
* `Auth` kinds (auth.py): header token, bearer, basic, query-string keys,
  OAuth2 client credentials; secrets never reach a message or a log.
* Paginators (paginate.py): page number, Link header, body cursor,
  offset/limit, next link (OData), GraphQL cursor.
* `Budget` (budget.py): the rate limit of one credential, shared by the
  process, fed by what the API says, with a delta lane before backfill.
* `RecordSchema` (frames.py): typed polars frames from JSON records.
* `RecordFailure` (responses.py): a record the API refused, for the DLQ.

See docs/http-kit.md for a connector author's walk-through.
"""

from kanal.core.http.auth import Auth, Basic, Bearer, HeaderToken, OAuth2ClientCredentials, QueryKey
from kanal.core.http.budget import Budget, BudgetSpec, BudgetStatus, RateHeaders, budgets, parse_retry_after
from kanal.core.http.client import HttpClient, HttpSettings
from kanal.core.http.frames import RecordSchema
from kanal.core.http.lanes import Lane
from kanal.core.http.paginate import (
    BodyCursor,
    GraphQLCursor,
    LinkHeader,
    NextLink,
    ODataNextLink,
    OffsetLimit,
    Page,
    PageNumber,
    PageRequest,
    Paginator,
)
from kanal.core.http.responses import HttpError, RecordFailure, failures_frame

__all__ = [
    "Auth",
    "Basic",
    "Bearer",
    "BodyCursor",
    "Budget",
    "BudgetSpec",
    "BudgetStatus",
    "GraphQLCursor",
    "HeaderToken",
    "HttpClient",
    "HttpError",
    "HttpSettings",
    "Lane",
    "LinkHeader",
    "NextLink",
    "OAuth2ClientCredentials",
    "ODataNextLink",
    "OffsetLimit",
    "Page",
    "PageNumber",
    "PageRequest",
    "Paginator",
    "QueryKey",
    "RateHeaders",
    "RecordFailure",
    "RecordSchema",
    "budgets",
    "failures_frame",
    "parse_retry_after",
]
