"""Pages of a list endpoint: one small class per way APIs say "there is more".

| paginator | APIs | next page from |
|---|---|---|
| `PageNumber` | WooCommerce, Magento, Shopware | page number, until the announced total or a short page |
| `LinkHeader` | Shopify REST, WooCommerce | `Link: <...>; rel="next"` |
| `BodyCursor` | HubSpot, many JSON APIs | a cursor in the body, sent back as a parameter |
| `OffsetLimit` | eBay, Odoo-style | offset += limit while pages are full |
| `ODataNextLink` | Business Central | `@odata.nextLink` in the body |
| `NextLink` | Salesforce (`nextRecordsUrl`) | any URL in the body |
| `GraphQLCursor` | Shopify GraphQL | `pageInfo { hasNextPage endCursor }` |

A paginator turns the request of one page and its answer into the request
of the next page, or None at the end. A `PageRequest` is plain JSON-able
data with no credentials in it, so a source can store the next request in a
chunk spec or delta position and resume there after a crash.

Paths into JSON bodies are dotted strings (`"paging.next.after"`) or, when
a key itself holds a dot (`"@odata.nextLink"`), tuples of keys.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

import httpx
import orjson
import polars as pl

from kanal.core.errors import ConnectorError
from kanal.core.http.frames import Path, RecordSchema, keys

Where = Literal["params", "json"]
"""Whether paging values travel in the query string or in the JSON body (search endpoints)."""


@dataclass(frozen=True)
class PageRequest:
    """One request of a list: method, path (relative to the base URL, or absolute), params, JSON body."""

    path: str
    params: dict[str, Any] = field(default_factory=dict)
    method: str = "GET"
    json: Any = None

    def with_values(self, where: Where, values: dict[str, Any]) -> PageRequest:
        """This request with `values` set in its query string or its JSON body."""
        if where == "params":
            return replace(self, params={**self.params, **values})
        return replace(self, json={**(self.json or {}), **values})

    def with_defaults(self, where: Where, values: dict[str, Any]) -> PageRequest:
        """This request with those of `values` it does not carry yet (a stored request keeps its page)."""
        return self.with_values(where, {k: v for k, v in values.items() if self.value(where, k) is None})

    def value(self, where: Where, name: str) -> Any:
        return (self.params if where == "params" else self.json or {}).get(name)


def dig(body: Any, path: Path | None) -> Any:
    """The value at `path` in a parsed JSON body (None when any step is missing)."""
    for key in keys(path):
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


@dataclass
class Page:
    """One answer of a list endpoint; `next` is the request of the following page (None: last)."""

    request: PageRequest
    response: httpx.Response
    items: Path | None = None
    """Where the records are in the body (None: the body is the list)."""
    next: PageRequest | None = None
    system: str = "api"
    """The system's name in error messages."""

    @cached_property
    def body(self) -> Any:
        """The parsed JSON body (parsed once, only when someone needs it)."""
        try:
            return orjson.loads(self.response.content)
        except orjson.JSONDecodeError:
            what, said = f"{self.request.method} {self.request.path}", self.response.text[:200]
            raise ConnectorError(
                self.system, f"{what} answered {self.response.status_code} without JSON: {said!r}"
            ) from None

    @property
    def records(self) -> list[Any]:
        found = dig(self.body, self.items)
        return found if isinstance(found, list) else []

    def frame(self, schema: RecordSchema) -> pl.DataFrame:
        """The records as a typed frame, read by polars from the raw body."""
        return schema.frame(
            self.response.content, self.items, system=self.system, what=f"{self.request.method} {self.request.path}"
        )


class Paginator(ABC):
    """Turns one page into the request of the next; `items` says where the records are."""

    items: Path | None = None

    def first(self, request: PageRequest) -> PageRequest:
        """The request of the first page: adds the paging values `request` does not carry yet,
        so a stored next-page request resumes where it was."""
        return request

    @abstractmethod
    def next(self, page: Page) -> PageRequest | None:
        """The request of the page after `page`, or None when it was the last."""


def _total(page: Page, header: str | None, path: Path | None) -> int | None:
    raw = page.response.headers.get(header) if header else None
    if raw is None and path is not None:
        raw = dig(page.body, path)
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


class PageNumber(Paginator):
    """`?page=N&per_page=M`; stops at the announced number of pages or total, else at a short page.

    WooCommerce announces `X-WP-TotalPages` / `X-WP-Total`; Magento and
    Shopware put a total in the body (`total_path`). Trusting the total
    matters where a page past the end repeats the last one (Magento).
    """

    def __init__(
        self,
        size: int = 100,
        *,
        page_param: str = "page",
        size_param: str = "per_page",
        first_page: int = 1,
        pages_header: str | None = "X-WP-TotalPages",
        total_header: str | None = "X-WP-Total",
        total_path: Path | None = None,
        items: Path | None = None,
        where: Where = "params",
    ) -> None:
        self.size, self.page_param, self.size_param = size, page_param, size_param
        self.first_page, self.pages_header, self.total_header = first_page, pages_header, total_header
        self.total_path, self.items, self.where = total_path, items, where

    def first(self, request: PageRequest) -> PageRequest:
        return request.with_defaults(self.where, {self.page_param: self.first_page, self.size_param: self.size})

    def next(self, page: Page) -> PageRequest | None:
        number = int(page.request.value(self.where, self.page_param))
        done = number - self.first_page + 1
        pages = _total(page, self.pages_header, None)
        if pages is None:
            total = self.total(page)
            pages = -(-total // self.size) if total is not None else None
        more = done < pages if pages is not None else len(page.records) >= self.size
        return page.request.with_values(self.where, {self.page_param: number + 1}) if more else None

    def total(self, page: Page) -> int | None:
        """Records in the whole list, when the API says (for a source's row estimate)."""
        return _total(page, self.total_header, self.total_path)


class LinkHeader(Paginator):
    """The next page's URL in a `Link` header (`<url>; rel="next"`), to be followed unedited.

    Shopify's `page_info` cursors must not be combined with other filters,
    so the next request is exactly the announced URL.
    """

    def __init__(self, rel: str = "next", *, items: Path | None = None) -> None:
        self.rel, self.items = rel, items

    def next(self, page: Page) -> PageRequest | None:
        link = page.response.links.get(self.rel, {}).get("url")
        return PageRequest(str(page.response.url.join(link))) if link else None


class BodyCursor(Paginator):
    """A cursor in the body (`paging.next.after`) sent back as a parameter (`after`) until absent."""

    def __init__(self, cursor: Path, param: str, *, items: Path | None = None, where: Where = "params") -> None:
        self.cursor, self.param, self.items, self.where = cursor, param, items, where

    def next(self, page: Page) -> PageRequest | None:
        cursor = dig(page.body, self.cursor)
        return page.request.with_values(self.where, {self.param: cursor}) if cursor not in (None, "") else None


class OffsetLimit(Paginator):
    """`?offset=N&limit=M`; stops at a short page, or at the total when the body states it."""

    def __init__(
        self,
        limit: int = 100,
        *,
        offset_param: str = "offset",
        limit_param: str = "limit",
        total_path: Path | None = None,
        items: Path | None = None,
        where: Where = "params",
    ) -> None:
        self.limit, self.offset_param, self.limit_param = limit, offset_param, limit_param
        self.total_path, self.items, self.where = total_path, items, where

    def first(self, request: PageRequest) -> PageRequest:
        return request.with_defaults(self.where, {self.offset_param: 0, self.limit_param: self.limit})

    def next(self, page: Page) -> PageRequest | None:
        offset = int(page.request.value(self.where, self.offset_param)) + self.limit
        total = _total(page, None, self.total_path)
        more = offset < total if total is not None else len(page.records) >= self.limit
        return page.request.with_values(self.where, {self.offset_param: offset}) if more else None


class NextLink(Paginator):
    """The next page's URL in the body (Salesforce `nextRecordsUrl`), absolute or relative to the page."""

    def __init__(self, link: Path, *, items: Path | None = None) -> None:
        self.link, self.items = link, items

    def next(self, page: Page) -> PageRequest | None:
        link = dig(page.body, self.link)
        return PageRequest(str(page.response.url.join(link))) if isinstance(link, str) and link else None


class ODataNextLink(NextLink):
    """OData v4 server-driven paging: records in `value`, the next URL in `@odata.nextLink`."""

    def __init__(self) -> None:
        super().__init__(("@odata.nextLink",), items="value")


class GraphQLCursor(Paginator):
    """A GraphQL connection: `first`/`after` variables, `pageInfo { hasNextPage endCursor }`.

    `connection` is the path to the connection object (`"data.products"`);
    the query must select `nodes { ... }` and `pageInfo { hasNextPage
    endCursor }`, and take the cursor in the variable `variable`.
    """

    def __init__(self, connection: Path, *, variable: str = "after") -> None:
        self.connection = keys(connection)
        self.variable = variable
        self.items = (*self.connection, "nodes")

    def next(self, page: Page) -> PageRequest | None:
        info = dig(page.body, (*self.connection, "pageInfo")) or {}
        if not info.get("hasNextPage") or not info.get("endCursor"):
            return None
        body = page.request.json or {}
        variables = {**(body.get("variables") or {}), self.variable: info["endCursor"]}
        return replace(page.request, json={**body, "variables": variables})
