"""Writing the canonical model into a shop: products and variants, prices, stock per location, availability, customers.

Ids. Shopify addresses records by GIDs; the sink keeps canonical key ->
GIDs in its memory (`Sink.attach`): for a product row `product variant
inventory-item product-sku` (a parent with variants has no variant of its
own), for a customer its GID. A key the memory does not know is looked up
before anything is created (products by handle, variants by SKU, customers
by email), so a lost memory or a crash between a write and remembering it
costs lookups, never duplicates. From API version 2025-04 `productSet` and
`customerSet` also upsert on Shopify's side (`identifier`), which covers two
processes creating one product at the same moment.

Products (`productSet`). A row other rows name as `parent_sku` is the
product (title = name, vendor = brand, productType = category) and those
rows its variants (option "Variant", one value per SKU); a row with neither
is a product with one variant. `productSet` replaces the variant list, so a
product that exists is sent with all its variants: those of the batch and
those the shop has (read with one query per 250 variants). A product whose
rows are in other batches is completed by them: a variant arriving before
its parent creates the product under the parent's SKU as title, and the
parent's row sets title, vendor and type when it comes. Product writes of
one shop take turns in the process, so two writers never create one product
twice. Deletes: a product row deletes its product, a variant row its variant.

Prices: the list price of the entity's `price_list` (and `currency`, if
set) becomes the variant price (`productVariantsBulkUpdate`); prices of
other lists are not for this shop and are left out; customer-specific and
tier prices are refused (dead letters naming the option), as Shopify has
them only in B2B catalogs. A deleted price is refused: a variant always
has a price.

Stock levels: `available` (else on hand minus reserved) of each location
in the entity's `locations` mapping (`inventorySetQuantities`, 250 per
call, atomic: a refused quantity is set aside and the call repeated without
it). A deleted stock level sets 0.

Availability (what `kanal inventory` computes a sales channel may sell):
the entity's `channel` is the channel this shop sells, its `location` the
Shopify location whose `available` quantity shows it (so keep that location
out of stock_levels' `locations`). Each row of that channel sets `available`
there, like a stock level: whole units, through `inventorySetQuantities`; a
deleted row sets 0. Rows of other channels are not for this shop: they are
skipped (and counted so). Availability is never negative; a negative
quantity all the same (a hand-made source or mapping) is written as 0: the
channel has nothing to sell. Refusing it instead would leave the shop's
older, higher figure in place and let it sell what is gone (and Shopify
refuses negative quantities in places: INVALID_QUANTITY_NEGATIVE).
Availability reaches the sink through the engine's channel outbox: the
changes of a SKU within the window become one write of the last value,
decreases first, never an older value after a newer one.

No compare-and-set. Shopify offers one (`changeFromQuantity` from API
version 2026-01, `compareQuantity` before): the write applies only if the
shop still holds the quantity given. Kanal does not use it for stock levels
or availability (it sends `changeFromQuantity: null`, or
`ignoreCompareQuantity` before 2026-01), because Shopify itself lowers
`available` with every order: checked against what Kanal wrote last, the
write after any sale would be refused, yet the shop's sales in between are
legitimate and the figure Kanal sends is meant to replace the shop's. Kanal's
own writes stay in order without it: the outbox never sends an older version
of a SKU after a newer one, and the sink memory holds back what is older than
what was written.

Prices, stock levels and availability of a SKU that is not in the shop yet
are parked (see `parked`) and written by the products write that creates
it; a migration's report names those still waiting.

Customers: `customerSet` (2025-04+) or `customerCreate`/`customerUpdate`;
the customer number travels in the metafield `kanal.customer_no`.

Writes of `bulk_threshold` records or more run as one bulk operation (see
`api`); records Shopify refuses (userErrors, a line's errors) go to the
dead letters with Shopify's message, the rest are written.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl

from kanal.connectors.shopify.api import Mutation, Outcome, ShopifyApi, user_error
from kanal.connectors.shopify.config import ShopifyConfig, ShopifyOptions
from kanal.connectors.shopify.parked import Parked
from kanal.core.connector import DELETE, OP, TRUNCATE, VERSION, EntityOptions, Sink, WriteResult
from kanal.core.errors import ConfigError
from kanal.core.http import Lane
from kanal.core.validate import KEY

NAMESPACE = "kanal"
SKU_FIELD = "sku"
CUSTOMER_FIELD = "customer_no"
_TEXT = "single_line_text_field"
_NONE = "-"
_SINGLE = ("Title", "Default Title")
_VARIANT_OPTION = "Variant"
_LOOKUP_PAGE = 250
_HANDLES_PER_LOOKUP = 100
_QUANTITIES_PER_CALL = 250
ENTITIES = ("products", "prices", "stock_levels", "availability", "customers")
"""What the sink writes; the source reads all but availability (`source.ENTITIES`)."""
_PARKING = ("prices", "stock_levels", "availability")
"""Entities whose records wait for their SKU's variant (see `parked`)."""

PRODUCT_SET_FIELDS = "product { id variants(first: 250) { nodes { id sku inventoryItem { id } } } } userErrors { field message code }"
PRODUCT_SET = Mutation("productSet", {"input": "ProductSetInput!"}, PRODUCT_SET_FIELDS, "synchronous: true")
PRODUCT_UPSERT = Mutation(
    "productSet", {"input": "ProductSetInput!", "identifier": "ProductSetIdentifiers"}, PRODUCT_SET_FIELDS, "synchronous: true"
)
PRODUCT_DELETE = Mutation("productDelete", {"input": "ProductDeleteInput!"}, "deletedProductId userErrors { field message }")
VARIANTS_UPDATE = Mutation(
    "productVariantsBulkUpdate",
    {"productId": "ID!", "variants": "[ProductVariantsBulkInput!]!"},
    "productVariants { id } userErrors { field message code }",
)
SET_QUANTITIES = Mutation(
    "inventorySetQuantities", {"input": "InventorySetQuantitiesInput!"}, "userErrors { field message code }"
)
_CUSTOMER_FIELDS = "customer { id } userErrors { field message code }"
CUSTOMER_CREATE = Mutation("customerCreate", {"input": "CustomerInput!"}, _CUSTOMER_FIELDS)
CUSTOMER_UPDATE = Mutation("customerUpdate", {"input": "CustomerInput!"}, _CUSTOMER_FIELDS)
CUSTOMER_SET = Mutation("customerSet", {"input": "CustomerSetInput!", "identifier": "CustomerSetIdentifiers"}, _CUSTOMER_FIELDS)
CUSTOMER_DELETE = Mutation("customerDelete", {"input": "CustomerDeleteInput!"}, "deletedCustomerId userErrors { field message }")

log = logging.getLogger("kanal.shopify")
_product_turns: dict[str, threading.Lock] = {}
_product_turns_lock = threading.Lock()


def _product_turn(shop: str) -> threading.Lock:
    with _product_turns_lock:
        return _product_turns.setdefault(shop, threading.Lock())


def handle_of(sku: str) -> str:
    """The handle Kanal gives the product of `sku`: its SKU in handle form."""
    return re.sub(r"[^a-z0-9]+", "-", sku.lower()).strip("-") or "product"


@dataclass(frozen=True)
class Ids:
    """What the memory keeps for a product row."""

    product: str
    variant: str | None
    item: str | None
    product_sku: str

    def encode(self) -> str:
        return " ".join((self.product, self.variant or _NONE, self.item or _NONE, self.product_sku))

    @staticmethod
    def decode(text: str) -> Ids:
        product, variant, item, product_sku = text.split(" ", 3)
        return Ids(product, None if variant == _NONE else variant, None if item == _NONE else item, product_sku)


@dataclass
class _Failures:
    keys: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    versions: list[int | None] = field(default_factory=list)

    def add(self, key: str, reason: str, version: int | None = None) -> None:
        self.keys.append(key)
        self.reasons.append(reason)
        self.versions.append(version)

    def frame(self, with_version: bool) -> pl.DataFrame | None:
        if not self.keys:
            return None
        data: dict[str, Any] = {KEY: self.keys, "reason": self.reasons}
        schema: dict[str, Any] = {KEY: pl.String, "reason": pl.String}
        if with_version:
            data[VERSION], schema[VERSION] = self.versions, pl.Int64
        return pl.DataFrame(data, schema=schema)


@dataclass
class _Product:
    """One product of a batch: its own row (if in the batch) and its variant rows."""

    sku: str
    own: dict[str, Any] | None = None
    variants: list[dict[str, Any]] = field(default_factory=list)

    @property
    def handle(self) -> str:
        return handle_of(self.sku)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return ([self.own] if self.own else []) + self.variants


class ShopifySink(Sink):
    """See the module docstring."""

    entity_options = ShopifyOptions
    config: ShopifyConfig

    def __init__(self, config: ShopifyConfig) -> None:
        super().__init__(config)
        self.api = ShopifyApi(config)
        self._parked: Parked | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def check(self) -> None:
        self.api.query("query { shop { name currencyCode } }")

    @property
    def parked(self) -> Parked:
        if self._parked is None:
            path = self.memory.path
            self._parked = Parked(path.with_name(f"{path.stem}.parked.sqlite"))
        return self._parked

    def prepare(self, entity: str, options: EntityOptions) -> None:
        opts = _options(options)
        if entity not in ENTITIES:
            raise ConfigError(f"{self.api.system}: the Shopify sink does not take {entity} (it takes {', '.join(ENTITIES)})")
        owners = {"price_list": "prices", "locations": "stock_levels", "channel": "availability", "location": "availability"}
        for option, owner in owners.items():
            if getattr(opts, option) is not None and entity != owner:
                raise ConfigError(f"{self.api.system}: {entity}: `{option}` applies to {owner} only")
        if entity == "prices" and not opts.price_list:
            raise ConfigError(
                f"{self.api.system}: prices: set `price_list` (e.g. prices: {{price_list: retail}}): the list whose "
                "prices become variant prices"
            )
        if entity == "stock_levels":
            self._check_locations(opts.locations or {})
        if entity == "availability":
            self._check_channel(opts)

    def accepts(self, entity: str, options: EntityOptions, schema: pl.Schema) -> list[str]:
        """`kanal check` finds what `prepare` would refuse: the checks only read (the shop's locations)."""
        self.prepare(entity, options)
        return []

    def _check_locations(self, locations: dict[str, str]) -> None:
        if not locations:
            raise ConfigError(
                f"{self.api.system}: stock_levels: set `locations` (e.g. locations: {{WH1: \"gid://shopify/Location/1\"}}) "
                "mapping each canonical location to a Shopify location"
            )
        unknown = self._unknown_locations(list(locations.values()))
        missing = [f"{name} -> {gid}" for name, gid in locations.items() if gid in unknown]
        if missing:
            raise ConfigError(f"{self.api.system}: stock_levels.locations: {', '.join(missing)} is not a location of the shop")

    def _check_channel(self, opts: ShopifyOptions) -> None:
        """Availability needs the channel the shop sells and the location that shows it, and that location must exist."""
        example = 'availability: {channel: web, location: "gid://shopify/Location/1"}'
        if not opts.channel:
            raise ConfigError(
                f"{self.api.system}: availability: set `channel` (e.g. {example}): the sales channel whose "
                "availability the shop shows"
            )
        if not opts.location:
            raise ConfigError(
                f"{self.api.system}: availability: set `location` (e.g. {example}): the Shopify location whose "
                f"`available` quantity shows the availability of channel {opts.channel!r}"
            )
        if self._unknown_locations([opts.location]):
            raise ConfigError(f"{self.api.system}: availability.location: {opts.location} is not a location of the shop")

    def _unknown_locations(self, gids: list[str]) -> set[str]:
        """The location GIDs among `gids` that the shop does not have."""
        found = self.api.query("query($ids: [ID!]!) { nodes(ids: $ids) { ... on Location { id name } } }", {"ids": gids})
        known = {n["id"] for n in found["nodes"] if n}
        return {gid for gid in gids if gid not in known}

    def finish(self, entity: str, options: EntityOptions) -> str | None:
        if entity not in _PARKING:
            return None
        count, skus = self.parked.waiting(entity)
        if not count:
            return None
        return (
            f"{count} {entity} wait for products not in the shop (e.g. SKU {', '.join(skus)}); "
            "they are written when those products are"
        )

    def close(self) -> None:
        self.api.close()
        if self._parked is not None:
            self._parked.close()

    # -- writing --------------------------------------------------------------------------

    def write(self, entity: str, options: EntityOptions, frame: pl.DataFrame, batch_id: str) -> WriteResult:
        opts = _options(options)
        lane = Lane.DELTA if OP in frame.columns else Lane.BACKFILL
        failures = _Failures()
        latest = frame.unique(KEY, keep="last", maintain_order=True)
        ops = latest.get_column(OP) if OP in latest.columns else pl.repeat("upsert", latest.height, eager=True)
        for row in latest.filter(ops == TRUNCATE).iter_rows(named=True):
            failures.add(row[KEY], "a truncate is not applied to Shopify: delete the records one by one", row.get(VERSION))
        upserts, deletes = latest.filter(~ops.is_in([DELETE, TRUNCATE])), latest.filter(ops == DELETE)
        skipped = 0
        if entity == "products":
            self._products(upserts, deletes, failures, lane)
        elif entity == "prices":
            self._prices(upserts, deletes, opts, failures, lane)
        elif entity == "stock_levels":
            self._stock(upserts, deletes, opts, failures, lane)
        elif entity == "availability":
            skipped = self._availability(upserts, deletes, opts, failures, lane)
        elif entity == "customers":
            self._customers(upserts, deletes, failures, lane)
        else:
            raise ConfigError(f"{self.api.system}: the Shopify sink does not take {entity}")
        result = failures.frame(VERSION in frame.columns)
        written = latest.height - skipped - (0 if result is None else result.height)
        return WriteResult(written=written, skipped_older=skipped, failed=result)

    # -- products -------------------------------------------------------------------------

    def _products(self, upserts: pl.DataFrame, deletes: pl.DataFrame, failures: _Failures, lane: Lane) -> None:
        with _product_turn(self.config.shop_url):
            if upserts.height:
                self._set_products(_group_products(upserts), failures, lane)
            if deletes.height:
                self._delete_products(deletes, failures, lane)

    def _set_products(self, products: dict[str, _Product], failures: _Failures, lane: Lane) -> None:
        known = self._product_ids(list(products), lane)
        existing = self._variants_of(sorted({ids.product for ids in known.values()}), lane)
        items, groups = [], []
        for sku, product in products.items():
            ids = known.get(sku)
            items.append(self._product_input(product, ids, existing.get(ids.product, []) if ids else []))
            groups.append(product)
        mutation = PRODUCT_UPSERT if self.config.upserts else PRODUCT_SET
        outcomes = self.api.mutate(mutation, items, lane=lane)
        created: list[str] = []
        for product, outcome in zip(groups, outcomes, strict=True):
            refused = user_error(outcome)
            if refused is not None:
                for row in product.rows:
                    failures.add(row["sku"], f"Shopify refused product {product.sku}: {refused}", row.get(VERSION))
                continue
            created.extend(self._remember_product(product.sku, outcome))
        self._drain_parked(created, lane)

    def _product_input(self, product: _Product, ids: Ids | None, existing: list[dict[str, Any]]) -> dict[str, Any]:
        own = product.own or {}
        data: dict[str, Any] = {
            "metafields": [{"namespace": NAMESPACE, "key": SKU_FIELD, "type": _TEXT, "value": product.sku}],
        }
        if ids is not None:
            data["id"] = ids.product
        else:
            data["handle"] = product.handle
        if product.own is not None:
            data["title"] = own.get("name") or ""
            for name, column in (("vendor", "brand"), ("productType", "category"), ("descriptionHtml", "description")):
                if own.get(column) is not None:
                    data[name] = own[column]
            if own.get("active") is not None:
                data["status"] = "ACTIVE" if own["active"] else "DRAFT"
        elif ids is None:
            data["title"] = product.sku
        batch_variants = {row["sku"]: row for row in product.variants}
        children = [v for v in existing if v["sku"] not in batch_variants and v["sku"] != product.sku]
        if batch_variants or children:
            skus = [v["sku"] for v in children] + list(batch_variants)
            data["productOptions"] = [{"name": _VARIANT_OPTION, "values": [{"name": s} for s in skus]}]
            data["variants"] = [
                {"id": v["id"], "sku": v["sku"], "optionValues": [{"optionName": _VARIANT_OPTION, "name": v["sku"]}]}
                for v in children
            ] + [self._variant_input(row, existing, (_VARIANT_OPTION, row["sku"])) for row in batch_variants.values()]
        else:
            data["productOptions"] = [{"name": _SINGLE[0], "values": [{"name": _SINGLE[1]}]}]
            data["variants"] = [self._variant_input({**own, "sku": product.sku}, existing, _SINGLE)]
        item: dict[str, Any] = {"input": data}
        if self.config.upserts:
            item["identifier"] = {"id": ids.product} if ids is not None else {"handle": product.handle}
        return item

    @staticmethod
    def _variant_input(row: dict[str, Any], existing: list[dict[str, Any]], option: tuple[str, str]) -> dict[str, Any]:
        variant: dict[str, Any] = {"sku": row["sku"], "optionValues": [{"optionName": option[0], "name": option[1]}]}
        found = next((v["id"] for v in existing if v["sku"] == row["sku"]), None)
        if found is not None:
            variant["id"] = found
        if "gtin" in row:
            variant["barcode"] = row["gtin"]
        return variant

    def _remember_product(self, product_sku: str, payload: Outcome) -> list[str]:
        """Remember the GIDs of a written product; returns its variants' SKUs."""
        assert isinstance(payload, dict)
        product = payload["product"]
        variants = product["variants"]["nodes"]
        ids = {v["sku"]: Ids(product["id"], v["id"], v["inventoryItem"]["id"], product_sku).encode() for v in variants if v["sku"]}
        if product_sku not in ids:
            ids[product_sku] = Ids(product["id"], None, None, product_sku).encode()
        self.memory.remember_ids("products", ids)
        return [v["sku"] for v in variants if v["sku"]]

    def _product_ids(self, skus: list[str], lane: Lane) -> dict[str, Ids]:
        """GIDs of the products of `skus` that exist: from the memory, else looked up by handle (many: by bulk export).

        Before looking up, a bulk mutation still running on the shop (a crashed
        run's) is waited for: it may be creating the very products looked up.
        """
        known = {sku: Ids.decode(text) for sku, text in self.memory.ids("products", skus).items()}
        found = {sku: ids for sku, ids in known.items() if ids.product_sku == sku}
        missing = [sku for sku in skus if sku not in found]
        if missing:
            self.api.settle()
        if len(missing) >= self.config.bulk_threshold:
            wanted = set(missing)
            for line in self.api.bulk_query(
                f'{{ products {{ edges {{ node {{ id metafield(namespace: "{NAMESPACE}", key: "{SKU_FIELD}") {{ value }} }} }} }} }}'
            ):
                node = orjson.loads(line)
                sku = (node.get("metafield") or {}).get("value")
                if sku in wanted:
                    found[sku] = Ids(node["id"], None, None, sku)
            missing = []
        for start in range(0, len(missing), _HANDLES_PER_LOOKUP):
            part = missing[start : start + _HANDLES_PER_LOOKUP]
            query = " OR ".join(f"handle:{h}" for h in sorted({handle_of(s) for s in part}))
            for nodes in self.api.nodes(
                "query($q: String!, $after: String) { products(first: 250, query: $q, after: $after) { nodes { id handle "
                f'metafield(namespace: "{NAMESPACE}", key: "{SKU_FIELD}") {{ value }} }} pageInfo {{ hasNextPage endCursor }} }} }}',
                "products", {"q": query}, lane=lane,
            ):
                for node in nodes:
                    sku = (node.get("metafield") or {}).get("value")
                    if sku in part:
                        found[sku] = Ids(node["id"], None, None, sku)
        return found

    def _variants_of(self, products: list[str], lane: Lane) -> dict[str, list[dict[str, Any]]]:
        """The variants (id, sku) each existing product has in the shop."""
        variants: dict[str, list[dict[str, Any]]] = {p: [] for p in products}
        if len(products) >= self.config.bulk_threshold:
            for node in self._export_variants():
                if node["product"]["id"] in variants:
                    variants[node["product"]["id"]].append({"id": node["id"], "sku": node["sku"]})
            return variants
        for start in range(0, len(products), _HANDLES_PER_LOOKUP):
            part = products[start : start + _HANDLES_PER_LOOKUP]
            query = " OR ".join(f"product_id:{p.rsplit('/', 1)[-1]}" for p in part)
            for nodes in self.api.nodes(
                "query($q: String!, $after: String) { productVariants(first: 250, query: $q, after: $after) { "
                "nodes { id sku product { id } } pageInfo { hasNextPage endCursor } } }",
                "productVariants", {"q": query}, lane=lane,
            ):
                for node in nodes:
                    variants.setdefault(node["product"]["id"], []).append({"id": node["id"], "sku": node["sku"]})
        return variants

    def _delete_products(self, deletes: pl.DataFrame, failures: _Failures, lane: Lane) -> None:
        rows = {row[KEY]: row for row in deletes.iter_rows(named=True)}
        known = {sku: Ids.decode(t) for sku, t in self.memory.ids("products", list(rows)).items()}
        known.update({sku: ids for sku, ids in self._variant_ids([s for s in rows if s not in known], lane).items()})
        products = [ids.product for sku, ids in known.items() if ids.product_sku == sku]
        outcomes = self.api.mutate(PRODUCT_DELETE, [{"input": {"id": p}} for p in products], lane=lane)
        for product, outcome in zip(products, outcomes, strict=True):
            refused = user_error(outcome)
            if refused and "does not exist" not in refused:
                sku = next(s for s, i in known.items() if i.product == product and i.product_sku == s)
                failures.add(sku, f"Shopify refused to delete product {sku}: {refused}", rows[sku].get(VERSION))
        variants = {sku: ids for sku, ids in known.items() if ids.product_sku != sku and ids.product not in products}
        by_product: dict[str, list[str]] = {}
        for ids in variants.values():
            by_product.setdefault(ids.product, []).append(ids.variant or "")
        for product, variant_ids in by_product.items():
            remaining = [v for v in self._variants_of([product], lane)[product] if v["id"] not in variant_ids]
            item = {"input": {"id": product, "productOptions": [{"name": _VARIANT_OPTION, "values": [{"name": v["sku"]} for v in remaining]}],
                              "variants": [{"id": v["id"], "sku": v["sku"], "optionValues": [{"optionName": _VARIANT_OPTION, "name": v["sku"]}]} for v in remaining]}}
            if not remaining:
                item = {"input": {"id": product}}
                self.api.mutate(PRODUCT_DELETE, [item], lane=lane)
            else:
                self.api.mutate(PRODUCT_SET, [item], lane=lane)
        self.memory.forget("products", list(rows))

    # -- variants by SKU (prices, stock) ----------------------------------------------------

    def _variant_ids(self, skus: list[str], lane: Lane) -> dict[str, Ids]:
        """Ids of the variants with `skus`: from the memory, else looked up by SKU (and remembered)."""
        found = {sku: Ids.decode(t) for sku, t in self.memory.ids("products", skus).items()}
        found = {sku: ids for sku, ids in found.items() if ids.variant is not None}
        missing = [s for s in skus if s not in found]
        learnt: dict[str, str] = {}
        if len(missing) >= self.config.bulk_threshold:
            learnt = self._exported_variants(set(missing))
            found.update({sku: Ids.decode(text) for sku, text in learnt.items()})
            missing = []
        for start in range(0, len(missing), _HANDLES_PER_LOOKUP):
            part = set(missing[start : start + _HANDLES_PER_LOOKUP])
            query = " OR ".join(f"sku:{_quoted(s)}" for s in sorted(part))
            for nodes in self.api.nodes(
                "query($q: String!, $after: String) { productVariants(first: 200, query: $q, after: $after) { nodes { id sku "
                f'inventoryItem {{ id }} product {{ id metafield(namespace: "{NAMESPACE}", key: "{SKU_FIELD}") {{ value }} }} }} '
                "pageInfo { hasNextPage endCursor } } }",
                "productVariants", {"q": query}, lane=lane,
            ):
                for node in nodes:
                    if node["sku"] in part:
                        product = node["product"]
                        owner = (product.get("metafield") or {}).get("value") or node["sku"]
                        ids = Ids(product["id"], node["id"], node["inventoryItem"]["id"], owner)
                        found[node["sku"]] = ids
                        learnt[node["sku"]] = ids.encode()
        if learnt:
            self.memory.remember_ids("products", learnt)
        return found

    def _exported_variants(self, skus: set[str]) -> dict[str, str]:
        """Ids of the variants with `skus` (encoded for the memory), from a bulk export of the shop's variants."""
        learnt = {}
        for node in self._export_variants():
            if node.get("sku") in skus:
                product = node["product"]
                owner = (product.get("metafield") or {}).get("value") or node["sku"]
                learnt[node["sku"]] = Ids(product["id"], node["id"], node["inventoryItem"]["id"], owner).encode()
        return learnt

    def _export_variants(self) -> Iterator[dict[str, Any]]:
        """Every variant of the shop, by one bulk export.

        Many unknown SKUs or products (a lost memory, a crashed run's bulk
        operation) are cheaper to find this way: a bulk query costs no query
        points, while searching costs about 3 points per variant found.
        """
        for line in self.api.bulk_query(
            "{ productVariants { edges { node { id sku inventoryItem { id } product { id "
            f'metafield(namespace: "{NAMESPACE}", key: "{SKU_FIELD}") {{ value }} }} }} }} }} }}'
        ):
            yield orjson.loads(line)

    def _with_variants(
        self, entity: str, records: list[tuple[str, str, int | None, dict[str, Any]]], lane: Lane
    ) -> list[tuple[Ids, dict[str, Any]]]:
        """Records (key, sku, version, record) whose variant exists, with its ids; the others are parked.

        Parking first and looking again after closes the gap to a products
        write remembering the ids meanwhile (see `parked`).
        """
        ids = self._variant_ids(sorted({r[1] for r in records}), lane)
        ready = [(ids[sku], record) for _, sku, _, record in records if sku in ids]
        waiting = [r for r in records if r[1] not in ids]
        if waiting:
            self.parked.park(entity, waiting)
            late = {sku: Ids.decode(t) for sku, t in self.memory.ids("products", [r[1] for r in waiting]).items()}
            late = {sku: i for sku, i in late.items() if i.variant is not None}
            if late:
                ready.extend((late[r["sku"]], r) for r in self.parked.take(entity, late))
        return ready

    def _drain_parked(self, skus: Iterable[str], lane: Lane) -> None:
        """Write the prices, stock levels and availability that waited for the variants just created.

        They are parked again if writing them fails (the products write is
        then retried), and so are those Shopify refuses: they are not records
        of this batch, so they cannot be dead letters of it; `finish` names
        them and the log says why.
        """
        skus = list(skus)
        if not skus:
            return
        ids = {sku: Ids.decode(t) for sku, t in self.memory.ids("products", skus).items()}
        appliers: dict[str, Callable[[list[tuple[Ids, dict[str, Any]]], _Failures, Lane], None]] = {
            "prices": self._apply_prices,
            "stock_levels": self._apply_stock,
            "availability": lambda records, failures, lane: self._apply_stock(records, failures, lane, what="availability"),
        }
        for entity, apply in appliers.items():
            records = self.parked.take(entity, skus)
            if not records:
                continue
            failures = _Failures()
            try:
                apply([(ids[r["sku"]], r) for r in records if r["sku"] in ids], failures, lane)
            except BaseException:
                self.parked.park(entity, [(r["key"], r["sku"], None, r) for r in records])
                raise
            refused = set(failures.keys)
            for key, reason in zip(failures.keys, failures.reasons, strict=True):
                log.warning("%s: %s %s waited for its product and was refused: %s", self.api.system, entity, key, reason)
            self.parked.park(entity, [(r["key"], r["sku"], None, r) for r in records if r["key"] in refused])

    # -- prices -----------------------------------------------------------------------------

    def _prices(
        self, upserts: pl.DataFrame, deletes: pl.DataFrame, opts: ShopifyOptions, failures: _Failures, lane: Lane
    ) -> None:
        for row in deletes.iter_rows(named=True):
            failures.add(row[KEY], "a deleted price is not applied: a Shopify variant always has a price", row.get(VERSION))
        records = []
        for row in upserts.iter_rows(named=True):
            refused = _refused_price(row, opts)
            if refused:
                failures.add(row[KEY], refused, row.get(VERSION))
            elif row.get("price_list") == opts.price_list and (opts.currency is None or row.get("currency") == opts.currency):
                records.append((row[KEY], row["sku"], row.get(VERSION), {"sku": row["sku"], "key": row[KEY], "amount": row["amount"]}))
        self._apply_prices(self._with_variants("prices", records, lane), failures, lane)

    def _apply_prices(self, records: list[tuple[Ids, dict[str, Any]]], failures: _Failures, lane: Lane) -> None:
        by_product: dict[str, list[tuple[Ids, dict[str, Any]]]] = {}
        for ids, record in records:
            by_product.setdefault(ids.product, []).append((ids, record))
        items = [
            {"productId": product, "variants": [{"id": ids.variant, "price": r["amount"]} for ids, r in group]}
            for product, group in by_product.items()
        ]
        outcomes = self.api.mutate(VARIANTS_UPDATE, items, lane=lane)
        for group, outcome in zip(by_product.values(), outcomes, strict=True):
            refused = user_error(outcome)
            if refused is not None:
                for _, record in group:
                    failures.add(record["key"], f"Shopify refused the price of {record['sku']}: {refused}")

    # -- stock ------------------------------------------------------------------------------

    def _stock(
        self, upserts: pl.DataFrame, deletes: pl.DataFrame, opts: ShopifyOptions, failures: _Failures, lane: Lane
    ) -> None:
        locations = opts.locations or {}
        quantities = pl.concat([_quantities(upserts), _quantities(deletes.select(_GONE_STOCK))], how="diagonal_relaxed")
        records = []
        for row in quantities.iter_rows(named=True):
            location = locations.get(row["location"])
            quantity = _whole(row["_quantity"])
            if location is None:
                failures.add(row[KEY], f"location {row['location']!r} is not in stock_levels.locations of this sink "
                             f"(add it: locations: {{{row['location']}: \"gid://shopify/Location/N\"}})", row.get(VERSION))
            elif quantity is None:
                failures.add(row[KEY], f"quantity {row['_quantity']!r} is not a whole number (Shopify stocks whole units)", row.get(VERSION))
            else:
                records.append((row[KEY], row["sku"], row.get(VERSION), {"sku": row["sku"], "key": row[KEY], "location": location, "quantity": quantity}))
        self._apply_stock(self._with_variants("stock_levels", records, lane), failures, lane)

    def _apply_stock(
        self, records: list[tuple[Ids, dict[str, Any]]], failures: _Failures, lane: Lane, what: str = "stock"
    ) -> None:
        """Set `available` per (inventory item, location); `what` names the records in refusals (stock, availability)."""
        pending = [(ids, r) for ids, r in records if ids.item]
        while pending:
            calls = [pending[i : i + _QUANTITIES_PER_CALL] for i in range(0, len(pending), _QUANTITIES_PER_CALL)]
            items = [{"input": self._quantities_input(call)} for call in calls]
            outcomes = self.api.mutate(SET_QUANTITIES, items, lane=lane)
            pending = []
            for call, outcome in zip(calls, outcomes, strict=True):
                refused = _refused_indexes(outcome, 2)
                if refused is None:
                    continue
                if not refused:  # a refusal of the whole call: every record of it
                    for _, r in call:
                        failures.add(r["key"], f"Shopify refused the {what} of {r['sku']}: {user_error(outcome)}")
                    continue
                for index, message in refused.items():
                    failures.add(call[index][1]["key"], f"Shopify refused the {what} of {call[index][1]['sku']}: {message}")
                pending.extend(rec for n, rec in enumerate(call) if n not in refused)

    def _availability(
        self, upserts: pl.DataFrame, deletes: pl.DataFrame, opts: ShopifyOptions, failures: _Failures, lane: Lane
    ) -> int:
        """Availability of the entity's channel becomes `available` at its location; returns how many rows were of other channels."""
        skipped = 0
        records = []
        rows = [*((r, False) for r in upserts.iter_rows(named=True)), *((r, True) for r in deletes.iter_rows(named=True))]
        for row, gone in rows:
            if row.get("channel") != opts.channel:
                skipped += 1
                continue
            quantity = 0 if gone else _sellable(row.get("quantity"))
            if quantity is None:
                failures.add(row[KEY], f"availability {row.get('quantity')!r} of {row['sku']} in channel {opts.channel!r} "
                             "is not a whole number (Shopify stocks whole units)", row.get(VERSION))
                continue
            record = {"sku": row["sku"], "key": row[KEY], "location": opts.location, "quantity": quantity}
            records.append((row[KEY], row["sku"], row.get(VERSION), record))
        self._apply_stock(self._with_variants("availability", records, lane), failures, lane, what="availability")
        return skipped

    def _quantities_input(self, call: list[tuple[Ids, dict[str, Any]]]) -> dict[str, Any]:
        newer = self.config.api_version == "unstable" or self.config.api_version >= "2026-01"
        quantities = []
        for ids, r in call:
            quantity: dict[str, Any] = {"inventoryItemId": ids.item, "locationId": r["location"], "quantity": r["quantity"]}
            if newer:
                quantity["changeFromQuantity"] = None
            quantities.append(quantity)
        data: dict[str, Any] = {"name": "available", "reason": "correction", "quantities": quantities}
        if not newer:
            data["ignoreCompareQuantity"] = True
        return data

    # -- customers --------------------------------------------------------------------------

    def _customers(self, upserts: pl.DataFrame, deletes: pl.DataFrame, failures: _Failures, lane: Lane) -> None:
        rows = list(upserts.iter_rows(named=True))
        known = self._customer_ids([r[KEY] for r in rows], {r[KEY]: r.get("email") for r in rows}, lane)
        creates, updates = [], []
        for row in rows:
            data = _customer_input(row)
            gid = known.get(row[KEY])
            if self.config.upserts:
                identifier = {"id": gid} if gid else ({"email": row["email"]} if row.get("email") else None)
                updates.append((row, CUSTOMER_SET, {"input": data, "identifier": identifier}))
            elif gid:
                updates.append((row, CUSTOMER_UPDATE, {"input": {**data, "id": gid}}))
            else:
                creates.append((row, CUSTOMER_CREATE, {"input": data}))
        learnt = {}
        for group in (creates, updates):
            by_mutation: dict[str, tuple[Mutation, list[tuple[dict[str, Any], dict[str, Any]]]]] = {}
            for row, mutation, item in group:  # by field name: a Mutation holds a dict, it cannot be a key
                by_mutation.setdefault(mutation.field, (mutation, []))[1].append((row, item))
            for mutation, pairs in by_mutation.values():
                outcomes = self.api.mutate(mutation, [item for _, item in pairs], lane=lane)
                for (row, _), outcome in zip(pairs, outcomes, strict=True):
                    refused = user_error(outcome)
                    if refused is not None:
                        failures.add(row[KEY], f"Shopify refused customer {row[KEY]}: {refused}", row.get(VERSION))
                    else:
                        learnt[row[KEY]] = outcome["customer"]["id"]  # type: ignore[index]
        self.memory.remember_ids("customers", learnt)
        if deletes.height:
            keys = deletes.get_column(KEY).to_list()
            gone = self.memory.ids("customers", keys)
            self.api.mutate(CUSTOMER_DELETE, [{"input": {"id": g}} for g in gone.values()], lane=lane)
            self.memory.forget("customers", keys)

    def _customer_ids(self, keys: list[str], emails: dict[str, str | None], lane: Lane) -> dict[str, str]:
        known = self.memory.ids("customers", keys)
        missing = {emails[k].lower(): k for k in keys if k not in known and emails.get(k)}
        addresses = sorted(missing)
        for start in range(0, len(addresses), _HANDLES_PER_LOOKUP):
            query = " OR ".join(f"email:{_quoted(e)}" for e in addresses[start : start + _HANDLES_PER_LOOKUP])
            for nodes in self.api.nodes(
                "query($q: String!, $after: String) { customers(first: 250, query: $q, after: $after) { nodes { id email } "
                "pageInfo { hasNextPage endCursor } } }",
                "customers", {"q": query}, lane=lane,
            ):
                for node in nodes:
                    key = missing.get((node.get("email") or "").lower())
                    if key is not None:
                        known[key] = node["id"]
        return known


def _options(options: EntityOptions) -> ShopifyOptions:
    return options if isinstance(options, ShopifyOptions) else ShopifyOptions(mapping=options.mapping, delta=options.delta)


def _group_products(frame: pl.DataFrame) -> dict[str, _Product]:
    """The batch's rows per product SKU (`parent_sku`, else the row's own SKU)."""
    products: dict[str, _Product] = {}
    for row in frame.iter_rows(named=True):
        parent = row.get("parent_sku") or None
        owner = parent or row["sku"]
        product = products.setdefault(owner, _Product(owner))
        if parent is None:
            product.own = row
        else:
            product.variants.append(row)
    return products


def _refused_price(row: dict[str, Any], opts: ShopifyOptions) -> str | None:
    if row.get("customer_no"):
        return (
            "customer-specific prices are not a Shopify concept outside B2B catalogs: the Shopify sink writes the "
            f"list prices of prices.price_list ({opts.price_list!r}); leave customer prices out of this sink"
        )
    min_qty = row.get("min_qty")
    if min_qty not in (None, "") and float(min_qty) > 1:
        return (
            f"tier prices (min_qty {min_qty}) are not a Shopify concept outside B2B catalogs: the Shopify sink writes "
            f"the list prices (min_qty empty or 1) of prices.price_list ({opts.price_list!r})"
        )
    return None


_GONE_STOCK = [pl.col("sku"), pl.col("location"), pl.col(KEY), pl.lit("0").alias("available"), pl.col("^_kanal_version$")]
"""A deleted stock level: nothing available there any more."""


def _quantities(frame: pl.DataFrame) -> pl.DataFrame:
    """`_quantity`: available, else on hand minus reserved, as decimal text."""
    columns = frame.columns
    available = pl.col("available") if "available" in columns else pl.lit(None, pl.String)
    on_hand = pl.col("on_hand").cast(pl.Float64) if "on_hand" in columns else pl.lit(None, pl.Float64)
    reserved = pl.col("reserved").cast(pl.Float64).fill_null(0) if "reserved" in columns else pl.lit(0.0)
    derived = (on_hand - reserved).cast(pl.String)
    keep = ["sku", "location", KEY, *([VERSION] if VERSION in columns else [])]
    return frame.select(*keep, pl.coalesce(available, derived).alias("_quantity"))


def _whole(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _sellable(value: object) -> int | None:
    """A channel's availability as whole units Shopify takes; below zero is nothing to sell (0); None: not whole."""
    whole = _whole(None if value is None else str(value))
    return None if whole is None else max(whole, 0)


def _refused_indexes(outcome: Outcome, depth: int) -> dict[int, str] | None:
    """None: accepted; else the refused entries by index in the input list (empty: the call as a whole)."""
    if isinstance(outcome, str):
        return {}
    errors = outcome.get("userErrors") or []
    if not errors:
        return None
    found: dict[int, str] = {}
    for error in errors:
        path = error.get("field") or []
        if len(path) > depth and str(path[depth]).isdigit():
            found[int(path[depth])] = str(error.get("message"))
        else:
            return {}
    return found


def _customer_input(row: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "firstName": row.get("first_name"),
        "lastName": row.get("last_name"),
        "email": row.get("email"),
        "phone": row.get("phone"),
        "metafields": [{"namespace": NAMESPACE, "key": CUSTOMER_FIELD, "type": _TEXT, "value": row[KEY]}],
    }
    addresses = []
    for kind in ("billing", "shipping"):
        address = (row.get("addresses") or {}).get(kind)
        if address and any(address.values()):
            addresses.append({
                "address1": address.get("street"), "zip": address.get("zip"), "city": address.get("city"),
                "countryCode": address.get("country"), "company": row.get("company"),
            })
    if addresses:
        data["addresses"] = addresses
    return data


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'" if re.search(r"[\s:'\"()]", value) else value
