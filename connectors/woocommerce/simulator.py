"""A WooCommerce REST API v3 of our own, for tests, benchmarks and manual tries.

Real HTTP on 127.0.0.1 (`WooSimulator().start()`), written from the
WooCommerce REST API documentation, not from Kanal's connector. The subset:

* `/wp-json/wc/v3/` with keys as HTTP Basic or as `consumer_key` /
  `consumer_secret` query parameters; a wrong key answers 401
  `woocommerce_rest_authentication_error`.
* Lists (`products`, `products/{id}/variations`, `variations` (WooCommerce
  10.3+), `customers`): `page` (1-based), `per_page` (1-100, default 10),
  `X-WP-Total`, `X-WP-TotalPages`, `Link: rel="next"/"prev"`; a page past
  the end answers 400 `rest_post_invalid_page_number`. Filters: `sku`
  (exact, comma-separated, finds variations too), `include`, `email`,
  `modified_after` / `modified_before` (exclusive, `dates_are_gmt`),
  `orderby` (id, modified, date) and `order`; products in the trash are not
  listed.
* Batches (`products/batch`, `products/{id}/variations/batch`,
  `customers/batch`): `create`, `update`, `delete` (forced) with at most 100
  items in all (else 413 `woocommerce_rest_request_entity_too_large`); an
  item that fails carries `{"id", "error": {"code", "message", "data":
  {"status"}}}` while the others are saved. A SKU is unique across products
  and variations, trashed ones included (`product_invalid_sku`, "Invalid or
  duplicated SKU."); a customer email is unique
  (`registration-error-email-exists`).
* `data/currencies/current`: the store currency.
* Errors as WordPress shapes them: `{"code", "message", "data": {"status"}}`.
* Dates: `date_modified` and `date_modified_gmt`, ISO 8601 without offset,
  whole seconds (as WordPress stores them).

Faults for tests: `fail_next(n, status)` (a burst of 502/503), `hang_next(n,
seconds)` (answers slower than a client's timeout), `throttle(capacity,
per_s)` (a host's rate limit: 429 with `Retry-After`), `trash(sku)` (a
trashed product still holding its SKU, so creating it again is refused).
Counters: `calls` (per method and route, e.g. ``"POST products/batch"``),
`write_items` (batch items received). The store is in memory and public:
`products`, `variations`, `customers` (id -> record).

Run `python -m kanal.connectors.woocommerce.simulator --port 8080` for a
manual try (keys `ck_test` / `cs_test`).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

PREFIX = "/wp-json/wc/v3/"
BATCH_LIMIT = 100
Record = dict[str, Any]


class ApiError(Exception):
    """An answer in WordPress's error shape."""

    def __init__(self, status: int, code: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.data = status, code, message, data

    def body(self) -> Record:
        return {"code": self.code, "message": self.message, "data": {"status": self.status, **self.data}}


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S")


def _parse_date(value: str, param: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "rest_invalid_param", f"Invalid parameter(s): {param}", params={param: "Invalid date."}) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class _Bucket:
    """A host's request limit: `capacity` requests, refilled at `per_s`."""

    def __init__(self, capacity: int, per_s: float) -> None:
        self.capacity, self.per_s = capacity, per_s
        self.level, self.at = float(capacity), time.monotonic()

    def take(self) -> float | None:
        """None when the request may pass, else the seconds until it could."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.at) * self.per_s)
        self.at = now
        if self.level >= 1:
            self.level -= 1
            return None
        return (1 - self.level) / self.per_s


class WooSimulator:
    """The WooCommerce store and its REST API (see the module docstring)."""

    def __init__(self, key: str = "ck_test", secret: str = "cs_test", currency: str = "EUR") -> None:
        self.key, self.secret, self.currency = key, secret, currency
        self.products: dict[int, Record] = {}
        self.variations: dict[int, Record] = {}
        self.customers: dict[int, Record] = {}
        self.calls: Counter[str] = Counter()
        self.write_items = 0
        self.requests = 0
        """Every request received, answered or not (faults, throttling and refused keys included)."""
        self.throttled = 0
        self.refused: list[Record] = []
        """Every per-item error answered, for assertions."""
        self._trashed: set[str] = set()
        self._next_id = 1
        self._lock = threading.RLock()
        self._faults: list[tuple[str, int, float]] = []
        self._bucket: _Bucket | None = None
        self._server: ThreadingHTTPServer | None = None
        self._request = threading.local()

    # -- life -------------------------------------------------------------------------

    def start(self, port: int = 0) -> WooSimulator:
        handler = type("Handler", (_Handler,), {"sim": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="woo-simulator", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        """The site's address (the API lives under /wp-json/wc/v3/)."""
        assert self._server is not None, "start() the simulator first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- faults -------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503) -> None:
        """The next `n` requests answer `status` (a 502/503 burst from the host)."""
        with self._lock:
            self._faults.extend([("fail", status, 0.0)] * n)

    def hang_next(self, n: int, seconds: float) -> None:
        """The next `n` requests wait `seconds` before they are served."""
        with self._lock:
            self._faults.extend([("hang", 0, seconds)] * n)

    def throttle(self, capacity: int, per_s: float) -> None:
        """Limit requests as a host or firewall does: 429 with Retry-After once `capacity` is spent."""
        with self._lock:
            self._bucket = _Bucket(capacity, per_s)

    def trash(self, sku: str) -> None:
        """A product in the trash holds `sku`: it is not listed, and creating that SKU is refused."""
        with self._lock:
            self._trashed.add(sku)

    # -- store views ----------------------------------------------------------------------

    def by_sku(self) -> dict[str, Record]:
        """Every product and variation by SKU."""
        with self._lock:
            return {r["sku"]: r for r in [*self.products.values(), *self.variations.values()] if r.get("sku")}

    def add_product(self, **fields: Any) -> Record:
        """A product entered in the shop's admin (for source tests)."""
        with self._lock:
            return self._create_product(fields)

    def add_variation(self, parent: int, **fields: Any) -> Record:
        with self._lock:
            return self._create_variation(parent, fields)

    def touch(self, ident: int, **changes: Any) -> None:
        """Change a product or variation as a shop manager would (for source delta tests)."""
        with self._lock:
            record = self.products.get(ident) or self.variations[ident]
            record.update(changes)
            self._stamp(record)

    # -- dispatch -------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: Any, auth: str | None) -> tuple[int, Any, dict[str, str]]:
        """One request: (status, JSON body, extra headers)."""
        with self._lock:
            self.requests += 1
        fault = self._take_fault()
        if fault is not None:
            kind, status, seconds = fault
            if kind == "hang":
                time.sleep(seconds)
            else:
                return status, {"code": "http_error", "message": "Bad gateway" if status == 502 else "Service unavailable"}, {}
        with self._lock:
            wait = self._bucket.take() if self._bucket is not None else None
        if wait is not None:
            with self._lock:
                self.throttled += 1
            return 429, {"code": "too_many_requests", "message": "Too many requests."}, {"Retry-After": str(math.ceil(wait))}
        self._request.path = path
        try:
            self._authenticate(query, auth)
            route, handler, args = self._route(method, path)
            self.calls[f"{method} {route}"] += 1
            with self._lock:
                return handler(query, body, *args)
        except ApiError as exc:
            return exc.status, exc.body(), {}

    def _take_fault(self) -> tuple[str, int, float] | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def _authenticate(self, query: dict[str, str], auth: str | None) -> None:
        key, secret = query.get("consumer_key"), query.get("consumer_secret")
        if auth and auth.startswith("Basic "):
            try:
                key, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                key = secret = None
        if key is None:
            raise ApiError(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        if key != self.key:
            raise ApiError(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.")
        if secret != self.secret:
            raise ApiError(401, "woocommerce_rest_authentication_error", "Invalid signature - provided signature does not match.")

    def _route(self, method: str, path: str) -> tuple[str, Callable[..., tuple[int, Any, dict[str, str]]], tuple[Any, ...]]:
        routes: list[tuple[str, str, str, Callable[..., tuple[int, Any, dict[str, str]]]]] = [
            ("GET", r"products", "products", self._list_products),
            ("POST", r"products/batch", "products/batch", self._batch_products),
            ("GET", r"products/(\d+)/variations", "products/{id}/variations", self._list_variations_of),
            ("POST", r"products/(\d+)/variations/batch", "products/{id}/variations/batch", self._batch_variations),
            ("GET", r"variations", "variations", self._list_variations),
            ("GET", r"customers", "customers", self._list_customers),
            ("POST", r"customers/batch", "customers/batch", self._batch_customers),
            ("GET", r"data/currencies/current", "data/currencies/current", self._currency),
        ]
        for verb, pattern, name, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and verb == method:
                return name, handler, tuple(int(g) for g in match.groups())
        raise ApiError(404, "rest_no_route", "No route was found matching the URL and request method.")

    # -- lists ----------------------------------------------------------------------------

    def _list(self, records: list[Record], query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        """Filter, order and page `records` as WordPress lists do."""
        per_page = _int_param(query, "per_page", 10, 1, 100)
        page = _int_param(query, "page", 1, 1, None)
        gmt = query.get("dates_are_gmt", "false") in ("true", "1")
        column = "date_modified_gmt" if gmt else "date_modified"
        for param, keep in (("modified_after", lambda a, b: a > b), ("modified_before", lambda a, b: a < b)):
            if param in query:
                bound = _parse_date(query[param], param)  # the site's time zone is UTC: local and GMT agree
                records = [r for r in records if keep(_parse_date(r[column], column), bound)]
        if "include" in query:
            wanted = {int(i) for i in query["include"].split(",") if i.strip()}
            records = [r for r in records if r["id"] in wanted]
        orderby = query.get("orderby", "date")
        if orderby not in ("id", "modified", "date", "include", "title", "slug", "registered_date", "name"):
            raise ApiError(400, "rest_invalid_param", "Invalid parameter(s): orderby", params={"orderby": "orderby is not one of id, include, date, modified, title, slug."})
        key = {"modified": lambda r: (r["date_modified_gmt"], r["id"]), "id": lambda r: r["id"]}.get(orderby, lambda r: (r["date_created_gmt"], r["id"]))
        records = sorted(records, key=key, reverse=query.get("order", "desc") == "desc")
        total = len(records)
        pages = math.ceil(total / per_page)
        if page > 1 and page > pages:
            raise ApiError(400, "rest_post_invalid_page_number", "The page number requested is larger than the number of pages available.")
        headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
        links = []
        base = {k: v for k, v in query.items() if k not in ("consumer_key", "consumer_secret")}
        if page < pages:
            links.append(f'<{self._link(base, page + 1)}>; rel="next"')
        if page > 1:
            links.append(f'<{self._link(base, page - 1)}>; rel="prev"')
        if links:
            headers["Link"] = ", ".join(links)
        return 200, records[(page - 1) * per_page : page * per_page], headers

    def _link(self, query: dict[str, str], page: int) -> str:
        return f"{self.url}{PREFIX}{self._request.path}?{urlencode({**query, 'page': page})}"

    def _list_products(self, query: dict[str, str], _body: Any) -> tuple[int, Any, dict[str, str]]:
        records = list(self.products.values())
        if query.get("sku"):
            skus = set(query["sku"].split(",")) | {query["sku"]}
            records = [r for r in [*records, *self.variations.values()] if r["sku"] in skus]
        return self._list(records, query)

    def _list_variations_of(self, query: dict[str, str], _body: Any, parent: int) -> tuple[int, Any, dict[str, str]]:
        self._parent(parent)
        return self._list([v for v in self.variations.values() if v["parent_id"] == parent], query)

    def _list_variations(self, query: dict[str, str], _body: Any) -> tuple[int, Any, dict[str, str]]:
        return self._list(list(self.variations.values()), query)

    def _list_customers(self, query: dict[str, str], _body: Any) -> tuple[int, Any, dict[str, str]]:
        records = list(self.customers.values())
        if "email" in query:
            records = [c for c in records if c["email"].lower() == query["email"].lower()]
        return self._list(records, {"orderby": "id", "order": "asc", **query})

    def _currency(self, _query: dict[str, str], _body: Any) -> tuple[int, Any, dict[str, str]]:
        return 200, {"code": self.currency, "name": self.currency, "symbol": self.currency}, {}

    # -- batches --------------------------------------------------------------------------

    def _batch(
        self,
        body: Any,
        create: Callable[[Record], Record],
        update: Callable[[Record], Record],
        delete: Callable[[int], Record],
    ) -> tuple[int, Any, dict[str, str]]:
        """create, then update, then delete, as WooCommerce processes a batch; each item answers for itself."""
        body = body if isinstance(body, dict) else {}
        items = {k: v for k, v in body.items() if k in ("create", "update", "delete") and v}
        count = sum(len(v) for v in items.values() if isinstance(v, list))
        if count > BATCH_LIMIT:
            raise ApiError(413, "woocommerce_rest_request_entity_too_large", f"Unable to accept more than {BATCH_LIMIT} items for this request.")
        self.write_items += count
        answer: dict[str, list[Record]] = {}
        for action, apply in (("create", create), ("update", update), ("delete", delete)):
            for item in items.get(action, []):
                try:
                    answer.setdefault(action, []).append(apply(item))  # type: ignore[arg-type]
                except ApiError as exc:
                    ident = 0 if action == "create" else (item if action == "delete" else item.get("id", 0))
                    failed = {"id": ident, "error": exc.body()}
                    self.refused.append(failed)
                    answer.setdefault(action, []).append(failed)
        return 200, answer, {}

    def _batch_products(self, _query: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        return self._batch(body, self._create_product, self._update_product, self._delete_product)

    def _batch_variations(self, _query: dict[str, str], body: Any, parent: int) -> tuple[int, Any, dict[str, str]]:
        self._parent(parent)
        return self._batch(
            body,
            lambda item: self._create_variation(parent, item),
            lambda item: self._update_variation(parent, item),
            lambda ident: self._delete_variation(parent, ident),
        )

    def _batch_customers(self, _query: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        return self._batch(body, self._create_customer, self._update_customer, self._delete_customer)

    # -- products -------------------------------------------------------------------------

    def _parent(self, parent: int) -> Record:
        if parent not in self.products:
            raise ApiError(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
        return self.products[parent]

    def _new_id(self) -> int:
        ident, self._next_id = self._next_id, self._next_id + 1
        return ident

    def _stamp(self, record: Record, created: bool = False) -> None:
        now = _now()
        record["date_modified_gmt"] = record["date_modified"] = _stamp(now)
        if created:
            record["date_created_gmt"] = record["date_created"] = _stamp(now)

    def _check_sku(self, sku: Any, ident: int | None) -> None:
        if sku in (None, ""):
            return
        taken = sku in self._trashed or any(
            r["sku"] == sku and r["id"] != ident for r in [*self.products.values(), *self.variations.values()]
        )
        if taken:
            raise ApiError(400, "product_invalid_sku", "Invalid or duplicated SKU.", resource_id=ident or 0, unique_sku=sku)

    def _apply_product_fields(self, record: Record, item: Record) -> None:
        _check_types(item)
        self._check_sku(item.get("sku", record.get("sku")), record.get("id"))
        for name in _PRODUCT_FIELDS:
            if name in item:
                record[name] = item[name]
        record["price"] = record.get("sale_price") or record.get("regular_price") or ""
        if record.get("manage_stock"):
            record["stock_status"] = "instock" if (record.get("stock_quantity") or 0) > 0 else "outofstock"

    def _create_product(self, item: Record) -> Record:
        record: Record = {**_PRODUCT_DEFAULTS, "id": 0, "variations": []}
        self._apply_product_fields(record, item)
        if not record.get("name"):
            record["name"] = "Product"
        record["id"] = self._new_id()
        self._stamp(record, created=True)
        self.products[record["id"]] = record
        return dict(record)

    def _update_product(self, item: Record) -> Record:
        record = self.products.get(int(item.get("id") or 0))
        if record is None:
            raise ApiError(400, "woocommerce_rest_product_invalid_id", "Invalid ID.")
        self._apply_product_fields(record, item)
        self._stamp(record)
        return dict(record)

    def _delete_product(self, ident: Any) -> Record:
        record = self.products.pop(int(ident), None)
        if record is None:
            raise ApiError(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
        for child in record.get("variations", []):  # a forced delete takes the variations with it
            self.variations.pop(child, None)
        return record

    def _create_variation(self, parent: int, item: Record) -> Record:
        record: Record = {**_VARIATION_DEFAULTS, "id": 0, "parent_id": parent}
        self._apply_product_fields(record, item)
        record["id"] = self._new_id()
        self._stamp(record, created=True)
        self.variations[record["id"]] = record
        self.products[parent]["variations"].append(record["id"])
        return dict(record)

    def _variation(self, parent: int, ident: int) -> Record:
        record = self.variations.get(ident)
        if record is None or record["parent_id"] != parent:
            raise ApiError(400, "woocommerce_rest_product_variation_invalid_id", "Invalid ID.")
        return record

    def _update_variation(self, parent: int, item: Record) -> Record:
        record = self._variation(parent, int(item.get("id") or 0))
        self._apply_product_fields(record, item)
        self._stamp(record)
        return dict(record)

    def _delete_variation(self, parent: int, ident: Any) -> Record:
        record = self._variation(parent, int(ident))
        del self.variations[record["id"]]
        self.products[parent]["variations"].remove(record["id"])
        return record

    # -- customers ------------------------------------------------------------------------

    def _apply_customer_fields(self, record: Record, item: Record) -> None:
        email = item.get("email", record.get("email"))
        if not isinstance(email, str) or not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
            raise ApiError(400, "registration-error-invalid-email", "Please provide a valid email address.")
        if any(c["email"].lower() == email.lower() and c["id"] != record.get("id") for c in self.customers.values()):
            raise ApiError(
                400, "registration-error-email-exists",
                'An account is already registered with your email address. <a href="#" class="showlogin">Please log in.</a>',
            )  # fmt: skip
        for name in ("email", "first_name", "last_name", "username", "meta_data"):
            if name in item:
                record[name] = item[name]
        for part in ("billing", "shipping"):
            if isinstance(item.get(part), dict):
                record[part] = {**record.get(part, {}), **item[part]}

    def _create_customer(self, item: Record) -> Record:
        record: Record = {"id": 0, "role": "customer", "first_name": "", "last_name": "", "username": "", "billing": {}, "shipping": {}, "meta_data": []}
        self._apply_customer_fields(record, item)
        record["id"] = self._new_id()
        record["username"] = record["username"] or record["email"].split("@")[0]
        self._stamp(record, created=True)
        self.customers[record["id"]] = record
        return dict(record)

    def _update_customer(self, item: Record) -> Record:
        record = self.customers.get(int(item.get("id") or 0))
        if record is None:
            raise ApiError(400, "woocommerce_rest_invalid_id", "Invalid resource ID.")
        self._apply_customer_fields(record, item)
        self._stamp(record)
        return dict(record)

    def _delete_customer(self, ident: Any) -> Record:
        record = self.customers.pop(int(ident), None)
        if record is None:
            raise ApiError(400, "woocommerce_rest_invalid_id", "Invalid resource ID.")
        return record


_PRODUCT_FIELDS = (
    "name", "type", "status", "sku", "global_unique_id", "description", "short_description", "regular_price",
    "sale_price", "manage_stock", "stock_quantity", "weight", "tax_class", "attributes", "meta_data",
)  # fmt: skip
_PRODUCT_DEFAULTS: Record = {
    "name": "", "type": "simple", "status": "publish", "sku": "", "global_unique_id": "", "description": "",
    "short_description": "", "regular_price": "", "sale_price": "", "price": "", "manage_stock": False,
    "stock_quantity": None, "stock_status": "instock", "weight": "", "tax_class": "", "parent_id": 0,
    "attributes": [], "meta_data": [],
}  # fmt: skip
_VARIATION_DEFAULTS: Record = {k: v for k, v in _PRODUCT_DEFAULTS.items() if k not in ("type", "short_description")}
_STRINGS = ("name", "sku", "global_unique_id", "description", "regular_price", "sale_price", "weight", "tax_class", "status", "type")


def _check_types(item: Record) -> None:
    """The item schema's types, as WordPress validates them (`rest_invalid_param`)."""
    bad = {n: f"{n} is not of type string." for n in _STRINGS if n in item and not isinstance(item[n], str)}
    if "stock_quantity" in item and item["stock_quantity"] is not None and not isinstance(item["stock_quantity"], int):
        bad["stock_quantity"] = "stock_quantity is not of type integer,null."
    if "manage_stock" in item and not isinstance(item["manage_stock"], bool):
        bad["manage_stock"] = "manage_stock is not of type boolean."
    for price in ("regular_price", "sale_price"):
        if isinstance(item.get(price), str) and item[price] and not re.fullmatch(r"\d+(\.\d+)?", item[price]):
            bad[price] = f"{price} is not a valid price."
    if item.get("type", "simple") not in ("simple", "variable", "grouped", "external"):
        bad["type"] = "type is not one of simple, grouped, external, variable."
    if bad:
        raise ApiError(400, "rest_invalid_param", f"Invalid parameter(s): {', '.join(bad)}", params=bad)


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        limit = f"between {low} ({low} included) and {high} ({high} included)" if high else f"at least {low}"
        raise ApiError(400, "rest_invalid_param", f"Invalid parameter(s): {name}", params={name: f"{name} must be {limit}."})
    return value


class _Handler(BaseHTTPRequestHandler):
    sim: WooSimulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Quiet: tests count requests instead of reading a log."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not parts.path.startswith(PREFIX):
            status, body, headers = 404, {"code": "rest_no_route", "message": "No route was found matching the URL and request method.", "data": {"status": 404}}, {}
        else:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                status, body, headers = 400, {"code": "rest_invalid_json", "message": "Invalid JSON body passed.", "data": {"status": 400}}, {}
            else:
                path = parts.path[len(PREFIX) :].strip("/")
                status, body, headers = self.sim.handle(method, path, query, body, self.headers.get("Authorization"))
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a hang fault)


def main() -> None:
    parser = argparse.ArgumentParser(description="A WooCommerce REST API v3 simulator on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--key", default="ck_test")
    parser.add_argument("--secret", default="cs_test")
    args = parser.parse_args()
    sim = WooSimulator(args.key, args.secret).start(args.port)
    print(f"WooCommerce simulator at {sim.url}{PREFIX} (keys {args.key} / {args.secret}); Ctrl-C stops it")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        sim.stop()


if __name__ == "__main__":
    main()
