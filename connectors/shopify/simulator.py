"""A Shopify Admin GraphQL API on 127.0.0.1, for tests, benchmarks and trying a job without a shop.

Written from Shopify's documented contract, not from Kanal's connector:

* `POST /admin/api/{version}/graphql.json` with `X-Shopify-Access-Token`;
  a wrong token answers 401 `{"errors": "[API] Invalid API key or access
  token (unrecognized login or wrong password)"}`.
* Cost-based rate limiting: a leaky bucket per shop (`bucket`, `restore`
  points per second); queries cost 1 per object and 2 + `first` x node cost
  per connection, mutations 10; the requested cost is reserved and the
  difference to the actual cost (the nodes returned) refunded. Every answer carries
  `extensions.cost {requestedQueryCost, actualQueryCost, throttleStatus}`;
  a request the bucket cannot pay answers `THROTTLED` (HTTP 200 unless
  `throttle_status` says otherwise) and costs nothing. A query above 1,000
  points is refused (`MAX_COST_EXCEEDED`).
* Connections take `first` (at most 250) / `after`, answer `nodes`,
  `edges { cursor node }` and `pageInfo`, and filter with the search syntax
  (`updated_at:>'2025-01-01T00:00:00Z'`, `sku:A OR sku:B`, `handle:…`,
  `email:…`, `id:…`, `product_id:…`) sorted by `sortKey` (`ID` default,
  `UPDATED_AT`).
* Products with variants and inventory items (`productSet`, which replaces
  the variant list and patches scalar fields; `identifier` upserts from
  2025-04), `productDelete`, `productVariantsBulkUpdate`, inventory levels
  per location (`inventorySetQuantities`, atomic: one bad quantity refuses
  the call), customers (`customerCreate`, `customerUpdate`, `customerDelete`,
  `customerSet` from 2025-04), metafields, `userErrors {field message code}`.
* Bulk operations: `stagedUploadsCreate` hands out a target this server
  takes the multipart upload at; `bulkOperationRunMutation` runs the
  uploaded JSONL of variables line by line (free of cost) into a result
  file of `{"data": …, "__lineNumber": n}`; `bulkOperationRunQuery` exports
  a query as JSONL, nested connection nodes as own lines with `__parentId`;
  one bulk operation of each type at a time; poll with
  `currentBulkOperation(type:)` or `node(id:)`.

Simplifications (the connector must not rely on them): the shop's
locations stock every inventory item; every list is held in memory.

Faults for tests (`fail`, `hang`, `refuse`, a small bucket, `throttle_status`),
counters (`calls` per root field, `requests` per kind, `points`), and the
store (`products`, `variants`, `items`, `customers`) for equality
assertions. Start one with `Simulator(...).start()` or
`python -m kanal.connectors.shopify.simulator --port 8899`.
"""

from __future__ import annotations

import argparse
import base64
import email.parser
import email.policy
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kanal.connectors.shopify import gql

MAX_QUERY_COST = 1000
MAX_PAGE = 250
INVALID_TOKEN = "[API] Invalid API key or access token (unrecognized login or wrong password)"
_GRAPHQL_PATH = re.compile(r"^/admin/api/(?P<version>\d{4}-\d{2}|unstable)/graphql\.json$")
_TERM = re.compile(r"""(?P<neg>-)?(?P<field>\w+):(?P<op>>=|<=|>|<)?(?P<value>'[^']*'|"[^"]*"|\S+)""")


def gid(kind: str, number: int) -> str:
    return f"gid://shopify/{kind}/{number}"


def number_of(value: str) -> int:
    """The number of a GID (`gid://shopify/Product/7` -> 7); 0 when it is not one."""
    tail = str(value).rsplit("/", 1)[-1].split("?", 1)[0]
    return int(tail) if tail.isdigit() else 0


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Product:
    id: int
    handle: str
    title: str
    vendor: str = ""
    product_type: str = ""
    status: str = "ACTIVE"
    description_html: str = ""
    options: list[dict[str, Any]] = field(default_factory=list)
    variant_ids: list[int] = field(default_factory=list)
    metafields: dict[tuple[str, str], str] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


@dataclass
class Variant:
    id: int
    product_id: int
    item_id: int
    sku: str = ""
    barcode: str | None = None
    price: str = "0.00"
    option_values: list[dict[str, str]] = field(default_factory=list)
    updated_at: int = 0


@dataclass
class Item:
    id: int
    variant_id: int
    levels: dict[int, tuple[int, int]] = field(default_factory=dict)
    """location number -> (available, updated_at)."""
    updated_at: int = 0


@dataclass
class Customer:
    id: int
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    note: str | None = None
    tags: list[str] = field(default_factory=list)
    addresses: list[dict[str, Any]] = field(default_factory=list)
    metafields: dict[tuple[str, str], str] = field(default_factory=dict)
    updated_at: int = 0


@dataclass
class Bulk:
    id: int
    type: str
    status: str = "CREATED"
    error_code: str | None = None
    object_count: int = 0
    root_object_count: int = 0
    created_at: int = 0
    completed_at: int | None = None
    url: str | None = None


class _Refusal(dict):
    """A payload with userErrors: every other field of it is null, as in Shopify's answers."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> None:
        return None


class _Refused(Exception):
    """A userError of the running mutation."""

    def __init__(self, message: str, field_path: list[str] | None, code: str | None = None) -> None:
        super().__init__(message)
        self.field_path, self.code = field_path, code


class Simulator:
    """One simulated shop; see the module docstring."""

    def __init__(
        self,
        *,
        token: str = "shpat_test",
        bucket: float = 2000.0,
        restore: float = 100.0,
        throttle_status: int = 200,
        locations: Iterable[str] = ("Warehouse 1", "Warehouse 2"),
        bulk_lines_per_s: float | None = None,
        currency: str = "EUR",
    ) -> None:
        self.token = token
        self.bucket, self.restore, self.throttle_status = bucket, restore, throttle_status
        self.bulk_lines_per_s = bulk_lines_per_s
        self.currency = currency
        self.products: dict[int, Product] = {}
        self._handles: dict[str, int] = {}
        self.variants: dict[int, Variant] = {}
        self.items: dict[int, Item] = {}
        self.customers: dict[int, Customer] = {}
        self.locations: dict[int, str] = {i + 1: name for i, name in enumerate(locations)}
        self.bulks: dict[int, Bulk] = {}
        self.uploads: dict[str, bytes] = {}
        self.results: dict[str, bytes] = {}
        self.refusals: dict[str, str] = {}
        self.calls: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.points = 0.0
        self._available = bucket
        self._stamp = time.monotonic()
        self._ids = 0
        self._faults: list[tuple[str, float]] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- running ------------------------------------------------------------------------

    def start(self, port: int = 0) -> Simulator:
        simulator = self

        class Handler(_Handler):
            sim = simulator

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, name="shopify-simulator", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Simulator:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults -------------------------------------------------------------------------

    def fail(self, count: int, status: int = 502) -> None:
        """The next `count` GraphQL requests answer `status` (a gateway error page) without running."""
        with self._lock:
            self._faults.extend([("status", status)] * count)

    def hang(self, count: int, seconds: float) -> None:
        """The next `count` GraphQL requests wait `seconds` before they run (beyond a client's timeout)."""
        with self._lock:
            self._faults.extend([("hang", seconds)] * count)

    def refuse(self, sku: str, message: str = "Sku is blocked by the shop's policy") -> None:
        """Writes of a variant with `sku` get a userError with `message`."""
        self.refusals[sku] = message

    def _next_fault(self) -> tuple[str, float] | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    # -- views for assertions ---------------------------------------------------------------

    def catalog(self) -> dict[str, dict[str, Any]]:
        """Per variant SKU: its product's handle, title, vendor, type, status, and its barcode and price."""
        with self._lock:
            out = {}
            for v in self.variants.values():
                p = self.products[v.product_id]
                out[v.sku] = {
                    "product": p.metafields.get(("kanal", "sku"), p.handle), "title": p.title, "vendor": p.vendor,
                    "type": p.product_type, "status": p.status, "barcode": v.barcode, "price": v.price,
                }
            return out

    def stock(self) -> dict[tuple[str, str], int]:
        """(variant SKU, location GID) -> available."""
        with self._lock:
            return {
                (self.variants[i.variant_id].sku, gid("Location", loc)): qty
                for i in self.items.values()
                for loc, (qty, _) in i.levels.items()
            }

    # -- clock and cost -----------------------------------------------------------------

    def now(self) -> int:
        return int(time.time())

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _refill(self) -> None:
        now = time.monotonic()
        self._available = min(self.bucket, self._available + (now - self._stamp) * self.restore)
        self._stamp = now

    def _throttle_status(self) -> dict[str, float]:
        return {"maximumAvailable": self.bucket, "currentlyAvailable": round(self._available, 1), "restoreRate": self.restore}

    # -- GraphQL ------------------------------------------------------------------------

    def graphql(self, version: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The answer (status, JSON body) to one GraphQL request."""
        try:
            operation = gql.parse(str(body.get("query") or ""))
        except gql.GraphQLError as exc:
            return 200, {"errors": [{"message": str(exc), "extensions": {"code": exc.code}}]}
        variables = body.get("variables") or {}
        requested = gql.requested_cost(operation, variables)
        with self._lock:
            self._refill()
            if requested > MAX_QUERY_COST:
                return 200, {
                    "errors": [{
                        "message": f"Query cost is {requested}, which exceeds the single query max cost limit ({MAX_QUERY_COST}).",
                        "extensions": {"code": "MAX_COST_EXCEEDED", "cost": requested, "maxCost": MAX_QUERY_COST},
                    }]
                }
            if self._available < requested:
                self.requests["throttled"] += 1
                return self.throttle_status, {
                    "errors": [{
                        "message": "Throttled",
                        "extensions": {"code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"},
                    }],
                    "extensions": {"cost": {
                        "requestedQueryCost": requested, "actualQueryCost": None, "throttleStatus": self._throttle_status(),
                    }},
                }
            self._available -= requested
            for item in operation.selection:
                if isinstance(item, gql.Field):
                    self.calls[item.name] += 1
            try:
                data = gql.execute(operation.selection, self._root(operation.kind, version, bulk=False), variables)
            except gql.GraphQLError as exc:
                self._available += requested
                return 200, {"errors": [{"message": str(exc), "extensions": {"code": exc.code}}]}
            actual = min(requested, gql.actual_cost(operation, variables, data))
            self._available = min(self.bucket, self._available + requested - actual)
            self.points += actual
            return 200, {
                "data": data,
                "extensions": {"cost": {
                    "requestedQueryCost": requested, "actualQueryCost": actual, "throttleStatus": self._throttle_status(),
                }},
            }

    def _root(self, kind: str, version: str, *, bulk: bool) -> dict[str, Any]:
        if kind == "mutation":
            return self._mutations(version)
        return self._queries(bulk)

    # -- queries ------------------------------------------------------------------------

    def _queries(self, bulk: bool) -> dict[str, Any]:
        def conn(items: Callable[[], list[Any]], shape: Callable[[Any], dict[str, Any]], fields: dict[str, Callable[[Any], Any]]):
            return lambda args: self._connection(items(), shape, fields, args, bulk)

        return {
            "__typename": "QueryRoot",
            "shop": {"name": "Simulated shop", "currencyCode": self.currency, "ianaTimezone": "UTC"},
            "locations": conn(lambda: list(self.locations), self._location, {"id": lambda n: n, "updated_at": lambda n: 0}),
            "location": lambda a: self._location(number_of(a["id"])) if number_of(a["id"]) in self.locations else None,
            "products": conn(lambda: list(self.products.values()), self._product, _PRODUCT_FIELDS),
            "product": lambda a: self._node(a["id"]),
            "productVariants": conn(lambda: list(self.variants.values()), self._variant, self._variant_fields()),
            "inventoryItems": conn(lambda: list(self.items.values()), self._item, self._item_fields()),
            "customers": conn(lambda: list(self.customers.values()), self._customer, _CUSTOMER_FIELDS),
            "nodes": lambda a: [self._node(i) for i in a["ids"]],
            "node": lambda a: self._node(a["id"]),
            "currentBulkOperation": lambda a: self._current_bulk(a.get("type", "QUERY")),
        }

    def _connection(
        self,
        items: list[Any],
        shape: Callable[[Any], dict[str, Any]],
        fields: dict[str, Callable[[Any], Any]],
        args: dict[str, Any],
        bulk: bool,
    ) -> dict[str, Any]:
        first = args.get("first")
        if first is None and not bulk:
            raise gql.GraphQLError("you must provide one of first or last", "argumentLiteralsIncompatible")
        if first is not None and first > MAX_PAGE:
            raise gql.GraphQLError(f"The maximum number of records per page is {MAX_PAGE}", "ARGUMENT_OUT_OF_RANGE")
        query = args.get("query")
        if query:
            matches = _search(query, fields)
            items = [i for i in items if matches(i)]
        if args.get("sortKey") == "UPDATED_AT":
            sort = lambda i: (fields["updated_at"](i), i.id if hasattr(i, "id") else i)  # noqa: E731
        else:
            sort = lambda i: (0, i.id if hasattr(i, "id") else i)  # noqa: E731
        keyed = sorted(((sort(i), i) for i in items), key=lambda pair: pair[0], reverse=bool(args.get("reverse")))
        after = args.get("after")
        if after:
            mark = tuple(json.loads(base64.b64decode(after)))
            keyed = [(k, i) for k, i in keyed if (k < mark if args.get("reverse") else k > mark)]
        page = keyed if first is None else keyed[:first]
        cursors = [base64.b64encode(json.dumps(list(k)).encode()).decode() for k, _ in page]
        nodes = [shape(i.id if hasattr(i, "id") else i) for _, i in page]
        return {
            "nodes": nodes,
            "edges": [{"cursor": c, "node": n} for c, n in zip(cursors, nodes, strict=True)],
            "pageInfo": {
                "hasNextPage": first is not None and len(keyed) > first,
                "hasPreviousPage": bool(after),
                "startCursor": cursors[0] if cursors else None,
                "endCursor": cursors[-1] if cursors else None,
            },
        }

    def _variant_fields(self) -> dict[str, Callable[[Any], Any]]:
        return {
            "id": lambda v: v.id, "sku": lambda v: v.sku, "updated_at": lambda v: v.updated_at,
            "product_id": lambda v: v.product_id, "barcode": lambda v: v.barcode or "",
        }

    def _item_fields(self) -> dict[str, Callable[[Any], Any]]:
        return {
            "id": lambda i: i.id, "sku": lambda i: self.variants[i.variant_id].sku, "updated_at": lambda i: i.updated_at,
        }

    def _node(self, value: str) -> dict[str, Any] | None:
        kind, number = str(value).split("/")[-2] if "/" in str(value) else "", number_of(value)
        table: dict[str, tuple[dict[int, Any], Callable[[int], dict[str, Any]]]] = {
            "Product": (self.products, self._product),
            "ProductVariant": (self.variants, self._variant),
            "InventoryItem": (self.items, self._item),
            "Customer": (self.customers, self._customer),
            "Location": (self.locations, self._location),
            "BulkOperation": (self.bulks, self._bulk),
        }
        found = table.get(kind)
        return found[1](number) if found and number in found[0] else None

    def _location(self, number: int) -> dict[str, Any]:
        def levels(args: dict[str, Any]) -> dict[str, Any]:
            stocked = [i for i in self.items.values() if number in i.levels]
            fields = {"id": lambda i: i.id, "updated_at": lambda i: i.levels[number][1], "inventory_item_id": lambda i: i.id}
            return self._connection(stocked, lambda n: self._level(self.items[n], number), fields, args, False)

        return {
            "__typename": "Location", "id": gid("Location", number), "name": self.locations[number],
            "isActive": True, "inventoryLevels": levels,
        }

    def _product(self, number: int) -> dict[str, Any]:
        p = self.products[number]
        return {
            "__typename": "Product", "id": gid("Product", p.id), "legacyResourceId": str(p.id), "handle": p.handle,
            "title": p.title, "vendor": p.vendor, "productType": p.product_type, "status": p.status,
            "descriptionHtml": p.description_html, "createdAt": iso(p.created_at), "updatedAt": iso(p.updated_at),
            "options": [{"name": o["name"], "values": [v["name"] for v in o.get("values", [])]} for o in p.options],
            "variantsCount": {"count": len(p.variant_ids), "precision": "EXACT"},
            "variants": lambda a: self._connection(
                [self.variants[v] for v in p.variant_ids], self._variant, self._variant_fields(), a, True
            ),
            "metafield": lambda a: _metafield(p.metafields, a),
        }

    def _variant(self, number: int) -> dict[str, Any]:
        v = self.variants[number]
        return {
            "__typename": "ProductVariant", "id": gid("ProductVariant", v.id), "sku": v.sku, "barcode": v.barcode,
            "price": v.price, "updatedAt": iso(v.updated_at), "title": " / ".join(o["name"] for o in v.option_values),
            "selectedOptions": [{"name": o["optionName"], "value": o["name"]} for o in v.option_values],
            "product": lambda a: self._product(v.product_id), "inventoryItem": lambda a: self._item(v.item_id),
        }

    def _item(self, number: int) -> dict[str, Any]:
        i = self.items[number]
        return {
            "__typename": "InventoryItem", "id": gid("InventoryItem", i.id), "sku": self.variants[i.variant_id].sku,
            "tracked": True, "updatedAt": iso(i.updated_at), "variant": lambda a: self._variant(i.variant_id),
            "inventoryLevels": lambda a: self._connection(
                list(i.levels), lambda loc: self._level(i, loc), {"id": lambda n: n, "updated_at": lambda n: i.levels[n][1]}, a, True
            ),
            "inventoryLevel": lambda a: self._level(i, number_of(a["locationId"])) if number_of(a["locationId"]) in i.levels else None,
        }

    def _level(self, item: Item, location: int) -> dict[str, Any]:
        quantity, updated = item.levels[location]
        return {
            "__typename": "InventoryLevel",
            "id": f"gid://shopify/InventoryLevel/{location}?inventory_item_id={item.id}",
            "updatedAt": iso(updated), "location": self._location(location), "item": lambda a: self._item(item.id),
            "quantities": lambda a: [{"name": n, "quantity": quantity} for n in a.get("names", ["available"])],
        }

    def _customer(self, number: int) -> dict[str, Any]:
        c = self.customers[number]
        return {
            "__typename": "Customer", "id": gid("Customer", c.id), "firstName": c.first_name, "lastName": c.last_name,
            "email": c.email, "phone": c.phone, "note": c.note, "tags": c.tags, "updatedAt": iso(c.updated_at),
            "defaultEmailAddress": {"emailAddress": c.email} if c.email else None,
            "defaultPhoneNumber": {"phoneNumber": c.phone} if c.phone else None,
            "addresses": lambda a: [dict(x) for x in c.addresses],
            "defaultAddress": dict(c.addresses[0]) if c.addresses else None,
            "metafield": lambda a: _metafield(c.metafields, a),
        }

    def _bulk(self, number: int) -> dict[str, Any]:
        b = self.bulks[number]
        return {
            "__typename": "BulkOperation", "id": gid("BulkOperation", b.id), "status": b.status, "type": b.type,
            "errorCode": b.error_code, "objectCount": str(b.object_count), "rootObjectCount": str(b.root_object_count),
            "createdAt": iso(b.created_at), "completedAt": iso(b.completed_at) if b.completed_at else None,
            "url": b.url, "partialDataUrl": None, "fileSize": None,
        }

    def _current_bulk(self, kind: str) -> dict[str, Any] | None:
        mine = [b for b in self.bulks.values() if b.type == kind]
        return self._bulk(mine[-1].id) if mine else None

    # -- mutations ----------------------------------------------------------------------

    def _mutations(self, version: str) -> dict[str, Any]:
        upserts = version == "unstable" or version >= "2025-04"

        def payload(run: Callable[[dict[str, Any]], dict[str, Any]], errors_key: str = "userErrors") -> Callable:
            def call(args: dict[str, Any]) -> dict[str, Any]:
                try:
                    result = run(args)
                except _Refused as refused:
                    return _Refusal({errors_key: [{"field": refused.field_path, "message": str(refused), "code": refused.code}]})
                return {**result, errors_key: []}

            return call

        root: dict[str, Any] = {
            "__typename": "Mutation",
            "productSet": payload(lambda a: self._product_set(a, upserts)),
            "productDelete": payload(self._product_delete),
            "productVariantsBulkUpdate": payload(self._variants_update),
            "inventorySetQuantities": payload(self._set_quantities),
            "customerCreate": payload(lambda a: self._customer_write(a["input"], None)),
            "customerUpdate": payload(lambda a: self._customer_write(a["input"], number_of(a["input"].get("id", "")))),
            "customerDelete": payload(self._customer_delete),
            "stagedUploadsCreate": payload(self._staged_uploads),
            "bulkOperationRunMutation": payload(lambda a: self._bulk_run("MUTATION", a, version)),
            "bulkOperationRunQuery": payload(lambda a: self._bulk_run("QUERY", a, version)),
        }
        if upserts:
            root["customerSet"] = payload(self._customer_set)
        return root

    def _product_set(self, args: dict[str, Any], upserts: bool) -> dict[str, Any]:
        data = args.get("input") or {}
        identifier = args.get("identifier")
        if identifier is not None and not upserts:
            raise gql.GraphQLError("Field 'productSet' doesn't accept argument 'identifier'", "argumentNotAccepted")
        product = None
        if data.get("id"):
            product = self.products.get(number_of(data["id"]))
            if product is None:
                raise _Refused("Product does not exist", ["input", "id"], "PRODUCT_DOES_NOT_EXIST")
        elif identifier:
            product = self._find_product(identifier)
        title = data.get("title", product.title if product else None)
        if not (title or "").strip():
            raise _Refused("Title can't be blank", ["input", "title"], "INVALID")
        variants = data.get("variants")
        if variants is not None:
            self._check_variants(variants, data.get("productOptions"), product)
        now = self.now()
        if product is None:
            handle = data.get("handle") or _handleize(title)
            while handle in self._handles:
                handle = f"{handle}-1"
            product = Product(self._next_id(), handle, title, created_at=now)
            self.products[product.id] = product
            self._handles[handle] = product.id
        elif data.get("handle") and data["handle"] != product.handle and data["handle"] not in self._handles:
            del self._handles[product.handle]
            product.handle = data["handle"]
            self._handles[product.handle] = product.id
        product.title = title
        product.vendor = data.get("vendor", product.vendor)
        product.product_type = data.get("productType", product.product_type)
        product.status = data.get("status", product.status)
        product.description_html = data.get("descriptionHtml", product.description_html)
        if data.get("productOptions") is not None:
            product.options = data["productOptions"]
        for mf in data.get("metafields") or []:
            product.metafields[(mf.get("namespace", "custom"), mf["key"])] = mf["value"]
        if variants is not None:
            self._replace_variants(product, variants, now)
        product.updated_at = now
        return {"product": self._product(product.id), "productSetOperation": None}

    def _find_product(self, identifier: dict[str, Any]) -> Product | None:
        if identifier.get("id"):
            return self.products.get(number_of(identifier["id"]))
        if identifier.get("handle"):
            return self.products.get(self._handles.get(identifier["handle"], 0))
        custom = identifier.get("customId") or {}
        key = (custom.get("namespace", "custom"), custom.get("key"))
        return next((p for p in self.products.values() if p.metafields.get(key) == custom.get("value")), None)

    def _check_variants(self, variants: list[dict[str, Any]], options: Any, product: Product | None) -> None:
        if len(variants) > 2048:
            raise _Refused("Product can have a maximum of 2048 variants", ["input", "variants"], "VARIANTS_OVER_LIMIT")
        seen: set[tuple[tuple[str, str], ...]] = set()
        mine = set(product.variant_ids) if product else set()
        for n, v in enumerate(variants):
            where = ["input", "variants", str(n)]
            if v.get("id") and number_of(v["id"]) not in mine:
                raise _Refused("Variant does not exist on this product", [*where, "id"], "PRODUCT_VARIANT_DOES_NOT_EXIST")
            combination = tuple(sorted((o.get("optionName", ""), o.get("name", "")) for o in v.get("optionValues") or []))
            if not combination:
                raise _Refused("Option values can't be blank", [*where, "optionValues"], "INVALID_VARIANT")
            if combination in seen:
                raise _Refused("The variant already exists", [*where, "optionValues"], "DUPLICATE_VARIANT")
            seen.add(combination)
            if "price" in v and v["price"] is not None and float(v["price"]) < 0:
                raise _Refused("Price must be greater than or equal to 0", [*where, "price"], "INVALID_VARIANT")
            sku = v.get("sku")
            if sku in self.refusals:
                raise _Refused(self.refusals[sku], [*where, "sku"], "INVALID_VARIANT")
        if options is None and product is None:
            raise _Refused("Product options input is required when updating variants", ["input", "productOptions"], "INVALID")

    def _replace_variants(self, product: Product, variants: list[dict[str, Any]], now: int) -> None:
        keep: list[int] = []
        for v in variants:
            variant = self.variants.get(number_of(v["id"])) if v.get("id") else None
            if variant is None:
                item = Item(self._next_id(), 0, updated_at=now)
                variant = Variant(self._next_id(), product.id, item.id)
                item.variant_id = variant.id
                item.levels = {loc: (0, now) for loc in self.locations}
                self.items[item.id] = item
                self.variants[variant.id] = variant
            variant.sku = v.get("sku", variant.sku) or ""
            variant.barcode = v.get("barcode", variant.barcode)
            if v.get("price") is not None:
                variant.price = _money(v["price"])
            variant.option_values = v.get("optionValues") or variant.option_values
            variant.updated_at = now
            keep.append(variant.id)
        for old in set(product.variant_ids) - set(keep):
            self.items.pop(self.variants.pop(old).item_id, None)
        product.variant_ids = keep

    def _product_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        number = number_of((args.get("input") or {}).get("id", ""))
        product = self.products.pop(number, None)
        if product is None:
            raise _Refused("Product does not exist", ["id"], "PRODUCT_DOES_NOT_EXIST")
        del self._handles[product.handle]
        for v in product.variant_ids:
            self.items.pop(self.variants.pop(v).item_id, None)
        return {"deletedProductId": gid("Product", number)}

    def _variants_update(self, args: dict[str, Any]) -> dict[str, Any]:
        product = self.products.get(number_of(args.get("productId", "")))
        if product is None:
            raise _Refused("Product does not exist", ["productId"], "PRODUCT_DOES_NOT_EXIST")
        changes = args.get("variants") or []
        for n, change in enumerate(changes):
            number = number_of(change.get("id", ""))
            if number not in product.variant_ids:
                raise _Refused("Product variant does not exist", ["variants", str(n), "id"], "PRODUCT_VARIANT_DOES_NOT_EXIST")
            if change.get("price") is not None and float(change["price"]) < 0:
                raise _Refused("Price must be greater than or equal to 0", ["variants", str(n), "price"], "INVALID_INPUT")
        now = self.now()
        for change in changes:
            variant = self.variants[number_of(change["id"])]
            if change.get("price") is not None:
                variant.price = _money(change["price"])
            if "barcode" in change:
                variant.barcode = change["barcode"]
            variant.updated_at = now
        product.updated_at = now
        return {"product": self._product(product.id), "productVariants": [self._variant(number_of(c["id"])) for c in changes]}

    def _set_quantities(self, args: dict[str, Any]) -> dict[str, Any]:
        data = args.get("input") or {}
        if data.get("name") not in ("available", "on_hand"):
            raise _Refused("The quantity name must be available or on_hand", ["input", "name"], "INVALID_NAME")
        if not data.get("reason"):
            raise _Refused("The reason is invalid", ["input", "reason"], "INVALID_REASON")
        quantities = data.get("quantities") or []
        if len(quantities) > MAX_PAGE:
            raise gql.GraphQLError(f"The input array size of {len(quantities)} is greater than the maximum allowed of 250.", "MAX_INPUT_SIZE_EXCEEDED")
        plan = []
        for n, q in enumerate(quantities):
            where = ["input", "quantities", str(n)]
            item = self.items.get(number_of(q.get("inventoryItemId", "")))
            if item is None:
                raise _Refused("The specified inventory item could not be found.", [*where, "inventoryItemId"], "INVALID_INVENTORY_ITEM")
            location = number_of(q.get("locationId", ""))
            if location not in self.locations:
                raise _Refused("The specified location could not be found.", [*where, "locationId"], "INVALID_LOCATION")
            quantity = q.get("quantity")
            if not isinstance(quantity, int):
                raise _Refused("The quantity must be an integer.", [*where, "quantity"], "INVALID_QUANTITY")
            if quantity > 1_000_000_000:
                raise _Refused("The quantity can't be higher than 1,000,000,000.", [*where, "quantity"], "INVALID_QUANTITY_TOO_HIGH")
            if quantity < -1_000_000_000:
                raise _Refused("The quantity can't be lower than -1,000,000,000.", [*where, "quantity"], "INVALID_QUANTITY_TOO_LOW")
            if self.variants[item.variant_id].sku in self.refusals:
                raise _Refused(self.refusals[self.variants[item.variant_id].sku], [*where, "inventoryItemId"], "INVALID_INVENTORY_ITEM")
            plan.append((item, location, quantity))
        now = self.now()
        for item, location, quantity in plan:
            item.levels[location] = (quantity, now)
        return {"inventoryAdjustmentGroup": {"reason": data["reason"], "createdAt": iso(now)}}

    def _customer_write(self, data: dict[str, Any], number: int | None) -> dict[str, Any]:
        customer = None
        if number is not None:
            customer = self.customers.get(number)
            if customer is None:
                raise _Refused("Customer does not exist", ["id"], "NOT_FOUND")
        email = data.get("email", customer.email if customer else None)
        if not email and not data.get("phone", customer.phone if customer else None) and not (
            data.get("firstName") or data.get("lastName")
        ):
            raise _Refused("A name, phone number, or email address must be present", ["email"], "INVALID")
        if email is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
            raise _Refused("Email is invalid", ["email"], "INVALID")
        if email and any(c.email == email and c is not customer for c in self.customers.values()):
            raise _Refused("Email has already been taken", ["email"], "TAKEN")
        if customer is None:
            customer = Customer(self._next_id())
            self.customers[customer.id] = customer
        for name, attr in (("firstName", "first_name"), ("lastName", "last_name"), ("email", "email"), ("phone", "phone"), ("note", "note")):
            if name in data:
                setattr(customer, attr, data[name])
        if "tags" in data:
            customer.tags = list(data["tags"] or [])
        if data.get("addresses") is not None:
            customer.addresses = [
                {"id": gid("MailingAddress", self._next_id()), **{k: a.get(k) for k in _ADDRESS}} for a in data["addresses"]
            ]
        for mf in data.get("metafields") or []:
            customer.metafields[(mf.get("namespace", "custom"), mf["key"])] = mf["value"]
        customer.updated_at = self.now()
        return {"customer": self._customer(customer.id)}

    def _customer_set(self, args: dict[str, Any]) -> dict[str, Any]:
        data, identifier = dict(args.get("input") or {}), args.get("identifier") or {}
        found = None
        if identifier.get("id"):
            found = number_of(identifier["id"])
        elif identifier.get("email"):
            found = next((c.id for c in self.customers.values() if c.email == identifier["email"]), None)
        elif identifier.get("customId"):
            custom = identifier["customId"]
            key = (custom.get("namespace", "custom"), custom.get("key"))
            found = next((c.id for c in self.customers.values() if c.metafields.get(key) == custom.get("value")), None)
        return self._customer_write(data, found)

    def _customer_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        number = number_of((args.get("input") or {}).get("id", ""))
        if self.customers.pop(number, None) is None:
            raise _Refused("Customer can't be found", ["id"], "NOT_FOUND")
        return {"deletedCustomerId": gid("Customer", number)}

    # -- bulk ---------------------------------------------------------------------------

    def _staged_uploads(self, args: dict[str, Any]) -> dict[str, Any]:
        targets = []
        for n, wanted in enumerate(args.get("input") or []):
            if wanted.get("resource") != "BULK_MUTATION_VARIABLES":
                raise _Refused("Only BULK_MUTATION_VARIABLES uploads are simulated", ["input", str(n), "resource"])
            key = f"tmp/{uuid.uuid4().hex}/bulk/{wanted.get('filename', 'vars.jsonl')}"
            targets.append({
                "url": f"{self.url}/staged-uploads", "resourceUrl": f"{self.url}/staged-uploads/{key}",
                "parameters": [
                    {"name": "key", "value": key},
                    {"name": "Content-Type", "value": wanted.get("mimeType", "text/jsonl")},
                    {"name": "success_action_status", "value": "201"},
                    {"name": "policy", "value": base64.b64encode(b"simulated").decode()},
                ],
            })
        return {"stagedTargets": targets}

    def _bulk_run(self, kind: str, args: dict[str, Any], version: str) -> dict[str, Any]:
        if any(b.type == kind and b.status in ("CREATED", "RUNNING") for b in self.bulks.values()):
            running = next(b for b in self.bulks.values() if b.type == kind and b.status in ("CREATED", "RUNNING"))
            what = "mutation" if kind == "MUTATION" else "query"
            raise _Refused(
                f"A bulk {what} operation for this app and shop is already in progress: {gid('BulkOperation', running.id)}.",
                None, "OPERATION_IN_PROGRESS",
            )
        if kind == "MUTATION":
            path = args.get("stagedUploadPath") or ""
            if path not in self.uploads:
                raise _Refused("The staged upload path is invalid or the file was not uploaded", ["stagedUploadPath"], "NO_SUCH_FILE")
            operation = gql.parse(args["mutation"])
            if operation.kind != "mutation" or len(operation.selection) != 1:
                raise _Refused("The mutation must be a single mutation field", ["mutation"], "INVALID_MUTATION")
            work: Callable[[Bulk], bytes] = lambda b: self._bulk_mutation(b, operation, self.uploads[path], version)  # noqa: E731
        else:
            operation = gql.parse(args["query"])
            connections = [f for f in operation.selection if isinstance(f, gql.Field)]
            if operation.kind != "query" or len(connections) != 1:
                raise _Refused("Bulk queries must contain exactly one top-level connection", ["query"], "INVALID")
            work = lambda b: self._bulk_query(b, operation)  # noqa: E731
        bulk = Bulk(self._next_id(), kind, created_at=self.now())
        self.bulks[bulk.id] = bulk
        threading.Thread(target=self._bulk_thread, args=(bulk, work), daemon=True).start()
        return {"bulkOperation": self._bulk(bulk.id)}

    def _bulk_thread(self, bulk: Bulk, work: Callable[[Bulk], bytes]) -> None:
        with self._lock:
            bulk.status = "RUNNING"
        try:
            content = work(bulk)
        except Exception:  # noqa: BLE001 - the operation fails as Shopify's would, the server goes on
            with self._lock:
                bulk.status, bulk.error_code, bulk.completed_at = "FAILED", "INTERNAL_SERVER_ERROR", self.now()
            return
        with self._lock:
            name = f"{uuid.uuid4().hex}.jsonl"
            self.results[name] = content
            bulk.url = f"{self.url}/bulk-results/{name}" if content else None
            bulk.status, bulk.completed_at = "COMPLETED", self.now()

    def _bulk_mutation(self, bulk: Bulk, operation: gql.Operation, upload: bytes, version: str) -> bytes:
        lines = [line for line in upload.splitlines() if line.strip()]
        out = []
        started = time.monotonic()
        for n, line in enumerate(lines):
            if self.bulk_lines_per_s:
                delay = started + n / self.bulk_lines_per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            with self._lock:
                try:
                    data = gql.execute(operation.selection, self._mutations(version), json.loads(line))
                    out.append({"data": data, "__lineNumber": n})
                except (gql.GraphQLError, ValueError, KeyError, TypeError) as exc:
                    out.append({"errors": [{"message": str(exc)}], "__lineNumber": n})
                bulk.object_count = bulk.root_object_count = n + 1
        return b"".join(json.dumps(o).encode() + b"\n" for o in out)

    def _bulk_query(self, bulk: Bulk, operation: gql.Operation) -> bytes:
        with self._lock:
            data = gql.execute(operation.selection, self._queries(bulk=True), {})
        root = next(iter(data.values()))
        out = []
        for node in _nodes(root):
            children = []
            for key, value in list(node.items()):
                if isinstance(value, dict) and ("nodes" in value or "edges" in value):
                    del node[key]
                    children.extend({**child, "__parentId": node.get("id")} for child in _nodes(value))
            out.append(node)
            out.extend(children)
            bulk.root_object_count += 1
        bulk.object_count = len(out)
        return b"".join(json.dumps(o).encode() + b"\n" for o in out)


def _nodes(connection: dict[str, Any]) -> list[dict[str, Any]]:
    if "nodes" in connection:
        return list(connection["nodes"])
    return [edge["node"] for edge in connection.get("edges", [])]


_ADDRESS = ("address1", "address2", "city", "company", "countryCode", "zip", "province", "phone", "firstName", "lastName")
_PRODUCT_FIELDS: dict[str, Callable[[Any], Any]] = {
    "id": lambda p: p.id, "handle": lambda p: p.handle, "title": lambda p: p.title, "updated_at": lambda p: p.updated_at,
    "vendor": lambda p: p.vendor, "product_type": lambda p: p.product_type, "status": lambda p: p.status.lower(),
}
_CUSTOMER_FIELDS: dict[str, Callable[[Any], Any]] = {
    "id": lambda c: c.id, "email": lambda c: c.email or "", "updated_at": lambda c: c.updated_at, "phone": lambda c: c.phone or "",
}


def _metafield(metafields: dict[tuple[str, str], str], args: dict[str, Any]) -> dict[str, Any] | None:
    value = metafields.get((args.get("namespace", "custom"), args.get("key", "")))
    return None if value is None else {"value": value, "namespace": args.get("namespace"), "key": args.get("key")}


def _handleize(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "product"


def _money(value: Any) -> str:
    return f"{float(value):.2f}"


def _search(query: str, fields: dict[str, Callable[[Any], Any]]) -> Callable[[Any], bool]:
    """A predicate for Shopify's search syntax: terms ANDed, `OR` between terms, `-` negates, comparisons."""
    groups: list[list[Callable[[Any], bool]]] = [[]]
    position = 0
    for token in re.finditer(r"\bOR\b|\bAND\b|" + _TERM.pattern, query):
        if query[position:token.start()].strip():
            raise gql.GraphQLError(f"cannot read search query {query!r} near {query[position:token.start()]!r}", "INVALID_SEARCH")
        position = token.end()
        text = token.group(0)
        if text == "OR":
            groups.append([])
            continue
        if text == "AND":
            continue
        groups[-1].append(_term(token, fields))
    if query[position:].strip():
        raise gql.GraphQLError(f"cannot read search query {query!r} near {query[position:]!r}", "INVALID_SEARCH")
    return _one_of(query, fields) or (lambda item: any(all(t(item) for t in group) for group in groups if group))


def _one_of(query: str, fields: dict[str, Callable[[Any], Any]]) -> Callable[[Any], bool] | None:
    """`sku:A OR sku:B OR ...` as one set lookup per item (lookups of many keys stay fast), else None."""
    terms = [t.strip() for t in query.split(" OR ")]
    matches = [_TERM.fullmatch(t) for t in terms]
    if not all(m and not m.group("neg") and not m.group("op") for m in matches):
        return None
    names = {m.group("field") for m in matches if m}
    if len(names) != 1 or next(iter(names)) in ("updated_at", "id", "product_id", "inventory_item_id"):
        return None
    get = fields[names.pop()]
    values = {(m.group("value")[1:-1] if m.group("value")[:1] in "'\"" else m.group("value")).lower() for m in matches if m}
    return lambda item: str(get(item)).lower() in values


def _term(match: re.Match[str], fields: dict[str, Callable[[Any], Any]]) -> Callable[[Any], bool]:
    name, op, raw = match.group("field"), match.group("op") or "", match.group("value")
    if name not in fields:
        raise gql.GraphQLError(f"search field {name!r} is not supported here (simulated: {', '.join(fields)})", "INVALID_SEARCH")
    value: Any = raw[1:-1] if raw[:1] in "'\"" else raw
    get = fields[name]
    if name == "updated_at":
        value = int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    elif name in ("id", "product_id", "inventory_item_id"):
        value = number_of(value) if not str(value).isdigit() else int(value)
    compare = {
        ">": lambda a: a > value, ">=": lambda a: a >= value, "<": lambda a: a < value, "<=": lambda a: a <= value,
        "": lambda a: a == value or (isinstance(a, str) and isinstance(value, str) and a.lower() == value.lower()),
    }[op]
    negate = bool(match.group("neg"))
    return lambda item: compare(get(item)) != negate


class _Handler(BaseHTTPRequestHandler):
    sim: Simulator
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Quiet: tests and benchmarks read the counters instead."""

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, body: Any) -> None:
        self._send(status, json.dumps(body).encode())

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        sim = self.sim
        body = self._body()
        if self.path == "/staged-uploads":
            sim.requests["upload"] += 1
            self._upload(body)
            return
        match = _GRAPHQL_PATH.match(self.path.split("?", 1)[0])
        if match is None:
            self._json(404, {"errors": "Not Found"})
            return
        fault = sim._next_fault()
        if fault is not None and fault[0] == "status":
            sim.requests[f"fault {int(fault[1])}"] += 1
            self._send(int(fault[1]), b"<html><body><h1>Bad Gateway</h1></body></html>", "text/html")
            return
        if fault is not None and fault[0] == "hang":
            sim.requests["hung"] += 1
            time.sleep(fault[1])
        if self.headers.get("X-Shopify-Access-Token") != sim.token:
            sim.requests["unauthorized"] += 1
            self._json(401, {"errors": INVALID_TOKEN})
            return
        try:
            request = json.loads(body)
        except ValueError:
            self._json(400, {"errors": {"query": "Required parameter missing or invalid"}})
            return
        sim.requests["graphql"] += 1
        try:
            status, answer = sim.graphql(match.group("version"), request)
        except Exception as exc:  # noqa: BLE001 - a simulator bug answers 500 with its cause, it does not hang the client
            sim.requests["internal error"] += 1
            status, answer = 500, {"errors": [{"message": f"simulator error: {type(exc).__name__}: {exc}"}]}
        self._json(status, answer)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        name = self.path.removeprefix("/bulk-results/")
        content = self.sim.results.get(name)
        if not self.path.startswith("/bulk-results/") or content is None:
            self._json(404, {"errors": "Not Found"})
            return
        self.sim.requests["download"] += 1
        self._send(200, content, "application/jsonl")

    def _upload(self, body: bytes) -> None:
        header = f"Content-Type: {self.headers.get('Content-Type', '')}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
        fields: dict[str, bytes] = {}
        if message.is_multipart():
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                fields[str(name)] = part.get_payload(decode=True) or b""
        if "key" not in fields or "file" not in fields:
            self._send(400, b"<Error><Code>InvalidArgument</Code><Message>key and file are required</Message></Error>", "application/xml")
            return
        key = fields["key"].decode()
        self.sim.uploads[key] = fields["file"]
        self._send(201, f"<PostResponse><Key>{key}</Key></PostResponse>".encode(), "application/xml")


def main() -> None:
    parser = argparse.ArgumentParser(description="A simulated Shopify Admin GraphQL API on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8899)
    parser.add_argument("--token", default="shpat_test")
    parser.add_argument("--bucket", type=float, default=2000.0, help="cost points the bucket holds")
    parser.add_argument("--restore", type=float, default=100.0, help="cost points restored per second")
    args = parser.parse_args()
    sim = Simulator(token=args.token, bucket=args.bucket, restore=args.restore).start(args.port)
    print(f"Shopify simulator at {sim.url}/admin/api/2025-01/graphql.json (token {args.token!r}); Ctrl-C stops it")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        sim.stop()


if __name__ == "__main__":
    main()
