"""Reading a shop into the canonical model: snapshots by bulk export, deltas by `updated_at` searches.

Snapshot: one chunk per entity, read by one bulk query (`bulkOperationRunQuery`)
whose JSONL result polars reads in one call; nested nodes (variants,
inventory levels) are own lines carrying `__parentId`. Bulk queries cost
no query points, which is why a snapshot never competes with live traffic
for the bucket. A shop runs one bulk query at a time: chunks take turns.

Deltas: `delta: {cursor: updated_at}` on an entity polls Shopify's search
(`updated_at:>='…'`, sorted by update time) through the generic cursor
reader (`core.cursor`), which owns overlap, re-reads, paging and position.
The clock is the shop's `Date` header (one second behind, as Shopify's times
have seconds).

Mapping:

* products: a product with one variant (and no other SKU of its own in the
  metafield `kanal.sku`) is one row with the variant's SKU; a product with
  several variants is a row under its own SKU (the metafield, else its
  handle) and one row per variant with it as `parent_sku`. name = title,
  brand = vendor, category = productType, gtin = barcode, active = status
  ACTIVE, updated_at = the product's. Variants without a SKU are left out
  (nothing could address them).
* prices: each variant's price as a list price of the entity's
  `price_list` in its `currency` (default: the shop's currency).
* stock_levels: `available` per location of the entity's `locations`
  mapping (read in reverse: Shopify location -> canonical name).
* customers: customer_no = the metafield `kanal.customer_no`, else the
  customer's numeric id; the first two addresses are billing and shipping.

Hard deletes are not seen by `updated_at` searches.
"""

from __future__ import annotations

import email.utils
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
import polars as pl

from kanal.connectors.shopify.api import GRAPHQL, ShopifyApi
from kanal.connectors.shopify.config import ShopifyConfig, ShopifyOptions
from kanal.connectors.shopify.sink import CUSTOMER_FIELD, NAMESPACE, SKU_FIELD
from kanal.core.connector import Chunk, CursorDelta, DeltaContext, DeltaKind, DeltaReader, EntityInfo, EntityOptions, Source
from kanal.core.cursor import TIEBREAK, CursorPage, CursorReader
from kanal.core.errors import ConfigError, ConnectorError
from kanal.core.http import Lane, PageRequest
from kanal.core.model import ADDRESSES_DTYPE, entity as canonical

ENTITIES = ("products", "prices", "stock_levels", "customers")
_PRODUCT_FIELDS = (
    f'id handle title vendor productType status updatedAt metafield(namespace: "{NAMESPACE}", key: "{SKU_FIELD}") {{ value }}'
)
_VARIANT_FIELDS = "id sku barcode"
_CUSTOMER_FIELDS = (
    f'id email firstName lastName phone updatedAt metafield(namespace: "{NAMESPACE}", key: "{CUSTOMER_FIELD}") {{ value }} '
    "addresses { address1 zip city countryCode company }"
)
_BULK = {
    "products": f"{{ products {{ edges {{ node {{ {_PRODUCT_FIELDS} variants {{ edges {{ node {{ {_VARIANT_FIELDS} }} }} }} }} }} }} }}",
    "prices": "{ productVariants { edges { node { id sku price updatedAt } } } }",
    "stock_levels": (
        "{ inventoryItems { edges { node { id sku inventoryLevels { edges { node { updatedAt location { id } "
        'quantities(names: ["available"]) { quantity } } } } } } } }'
    ),
    "customers": f"{{ customers {{ edges {{ node {{ {_CUSTOMER_FIELDS} }} }} }} }}",
}
_METAFIELD = pl.Struct({"value": pl.String})
_JSONL_SCHEMA = {
    "id": pl.String, "__parentId": pl.String, "handle": pl.String, "title": pl.String, "vendor": pl.String,
    "productType": pl.String, "status": pl.String, "updatedAt": pl.String, "metafield": _METAFIELD,
    "sku": pl.String, "barcode": pl.String, "price": pl.String, "email": pl.String, "firstName": pl.String,
    "lastName": pl.String, "phone": pl.String, "location": pl.Struct({"id": pl.String}),
    "quantities": pl.List(pl.Struct({"quantity": pl.Int64})),
    "addresses": pl.List(pl.Struct({k: pl.String for k in ("address1", "zip", "city", "countryCode", "company")})),
}


class ShopifySource(Source):
    entity_options: ClassVar[type[EntityOptions]] = ShopifyOptions
    config: ShopifyConfig

    def __init__(self, config: ShopifyConfig) -> None:
        super().__init__(config)
        self.api = ShopifyApi(config)
        self._currency: str | None = None

    def check(self) -> None:
        self.currency()

    def currency(self) -> str:
        if self._currency is None:
            self._currency = self.api.query("query { shop { currencyCode } }")["shop"]["currencyCode"]
        return self._currency

    def fields(self, entity: str, options: EntityOptions) -> pl.Schema:
        """Shopify's records are read into the canonical fields of `entity`."""
        _entity_options(entity, options)
        return canonical(entity).schema

    def discover(self) -> list[EntityInfo]:
        return [EntityInfo(e, canonical(e).key, delta=DeltaKind.CURSOR) for e in ENTITIES]

    def plan(self, entity: str, options: EntityOptions) -> list[Chunk]:
        _entity_options(entity, options)
        return [Chunk(f"{entity}-bulk")]

    def snapshot(self, entity: str, options: EntityOptions, chunk: Chunk) -> Iterator[pl.DataFrame]:
        opts = _entity_options(entity, options)
        lines = list(self.api.bulk_query(_BULK[entity]))
        raw = _read_lines(lines)
        yield self.rows(entity, opts, raw).drop(TIEBREAK)

    def rows(self, entity: str, opts: ShopifyOptions, raw: pl.DataFrame) -> pl.DataFrame:
        """Canonical rows (plus `TIEBREAK`) of `entity` from raw nodes (children with `__parentId`)."""
        parents = raw.filter(pl.col("__parentId").is_null())
        children = raw.filter(pl.col("__parentId").is_not_null())
        if entity == "products":
            frame = _products(parents, children)
        elif entity == "prices":
            frame = _prices(parents, opts.price_list or "", opts.currency or self.currency())
        elif entity == "stock_levels":
            frame = _stock(parents, children, {gid: name for name, gid in (opts.locations or {}).items()})
        else:
            frame = _customers(parents)
        return _canonical(entity, frame)

    def delta(self, context: DeltaContext) -> DeltaReader:
        return ShopifyCursorReader(self, context)

    def close(self) -> None:
        self.api.close()


class ShopifyCursorReader(CursorReader):
    """`updated_at` searches behind `core.cursor`; see the module docstring."""

    _PAGE = {"products": 25, "prices": 250, "customers": 100}

    def __init__(self, source: ShopifySource, context: DeltaContext) -> None:
        self.source = source
        self.options: dict[str, ShopifyOptions] = {}
        cursors: dict[str, CursorDelta] = {}
        for entity, options in context.entities.items():
            opts = _entity_options(entity, options)
            if not isinstance(opts.delta, CursorDelta) or opts.delta.cursor != "updated_at":
                raise ConfigError(f"{source.api.system}: {entity}: Shopify streams with `delta: {{cursor: updated_at}}`")
            self.options[entity], cursors[entity] = opts, opts.delta
        super().__init__(cursors, 500)
        self.api = ShopifyApi(source.config, lane=Lane.DELTA)

    def fetch(self, entity: str, since: int, tiebreak: str | None, limit: int) -> CursorPage:
        clock = self._clock()
        if limit == 0:
            return CursorPage(pl.DataFrame(), clock)
        after = datetime.fromtimestamp(since // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        raw = self._changed(entity, f"updated_at:>='{after}'", limit)
        rows = self.source.rows(entity, self.options[entity], raw)
        version = pl.col("updated_at").dt.epoch("us")
        if tiebreak is None:
            point = version >= since
        else:
            point = (version > since) | ((version == since) & (pl.col(TIEBREAK) > tiebreak))
        return CursorPage(rows.filter(point).sort("updated_at", TIEBREAK).head(limit), clock)

    def _clock(self) -> int:
        """The shop's time from its `Date` header, one second back (Shopify's times have seconds)."""
        page = self.api.client.fetch(PageRequest(GRAPHQL, method="POST", json={"query": "query { shop { name } }"}))
        said = page.response.headers.get("Date")
        if not said:
            raise ConnectorError(self.api.system, "the answer carries no Date header to tell the shop's time")
        return int((email.utils.parsedate_to_datetime(said).timestamp() - 1) * 1_000_000)

    def _changed(self, entity: str, search: str, limit: int) -> pl.DataFrame:
        """Raw nodes (and children) changed per `search`, at least `limit` rows' worth when there are that many."""
        frames, seen = [], 0
        for document, connection, variables in self._queries(entity, search):
            for nodes in self.api.nodes(document, connection, variables):
                if "id" in variables:  # levels read per location: their location is that one
                    nodes = [{**n, "location": {"id": variables["id"]}} for n in nodes]
                frame = _flatten(nodes)
                frames.append(frame)
                seen += frame.height
                if seen >= limit and entity != "stock_levels":
                    break
        return pl.concat(frames, how="diagonal_relaxed") if frames else _read_lines([])

    def _queries(self, entity: str, search: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
        page = self._PAGE.get(entity, 250)
        args = f"first: {page}, after: $after, query: $q"
        variables = {"q": search}
        if entity == "products":
            yield (
                f"query($q: String!, $after: String) {{ products({args}, sortKey: UPDATED_AT) {{ nodes {{ {_PRODUCT_FIELDS} "
                f"variants(first: 30) {{ nodes {{ {_VARIANT_FIELDS} }} }} }} pageInfo {{ hasNextPage endCursor }} }} }}",
                "products", variables,
            )
        elif entity == "prices":
            yield (
                f"query($q: String!, $after: String) {{ productVariants({args}, sortKey: UPDATED_AT) {{ nodes {{ id sku price updatedAt }} "
                "pageInfo { hasNextPage endCursor } } }",
                "productVariants", variables,
            )
        elif entity == "customers":
            yield (
                f"query($q: String!, $after: String) {{ customers({args}, sortKey: UPDATED_AT) {{ nodes {{ {_CUSTOMER_FIELDS} }} "
                "pageInfo { hasNextPage endCursor } } }",
                "customers", variables,
            )
        else:
            for location in (self.options[entity].locations or {}).values():
                yield (
                    "query($id: ID!, $q: String!, $after: String) { location(id: $id) { inventoryLevels(first: 250, after: $after, "
                    'query: $q) { nodes { updatedAt item { id sku } quantities(names: ["available"]) { quantity } } '
                    "pageInfo { hasNextPage endCursor } } } }",
                    "location.inventoryLevels", {**variables, "id": location},
                )

    def close(self) -> None:
        self.api.close()


def _entity_options(entity: str, options: EntityOptions) -> ShopifyOptions:
    opts = options if isinstance(options, ShopifyOptions) else ShopifyOptions(mapping=options.mapping, delta=options.delta)
    if entity not in ENTITIES:
        raise ConfigError(f"the Shopify source offers {', '.join(ENTITIES)}, not {entity}")
    if entity == "prices" and not opts.price_list:
        raise ConfigError("shopify: prices: set `price_list` (e.g. prices: {price_list: retail}): the list the variant prices belong to")
    if entity == "stock_levels" and not opts.locations:
        raise ConfigError(
            'shopify: stock_levels: set `locations` (e.g. locations: {WH1: "gid://shopify/Location/1"}): the locations read, by canonical name'
        )
    return opts


def _read_lines(lines: list[bytes]) -> pl.DataFrame:
    content = b"\n".join(lines)
    if not content.strip():
        return pl.DataFrame(schema=_JSONL_SCHEMA)
    return pl.read_ndjson(io.BytesIO(content), schema=_JSONL_SCHEMA, ignore_errors=False)


def _flatten(nodes: list[dict[str, Any]]) -> pl.DataFrame:
    """Nodes of a delta page in the bulk layout: nested connections as own rows with `__parentId`."""
    lines = []
    for node in nodes:
        node = dict(node)
        children = []
        for key in ("variants",):
            connection = node.pop(key, None)
            if isinstance(connection, dict):
                children.extend({**child, "__parentId": node["id"]} for child in connection.get("nodes", []))
        item = node.pop("item", None)
        if item is not None:  # an inventory level read by location: its item is its parent
            lines.append({"id": item["id"], "sku": item["sku"]})
            node["__parentId"] = item["id"]
        lines.append(node)
        lines.extend(children)
    return _read_lines([orjson.dumps(line) for line in lines])


def _time(column: str) -> pl.Expr:
    return pl.col(column).str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_unit="us", time_zone="UTC", strict=True)


def _number(column: str) -> pl.Expr:
    return pl.col(column).str.extract(r"(\d+)$").cast(pl.Int64)


def _padded(column: str) -> pl.Expr:
    return _number(column).cast(pl.String).str.zfill(20)


def _products(products: pl.DataFrame, variants: pl.DataFrame) -> pl.DataFrame:
    product = products.select(
        pl.col("id").alias("__parentId"),
        pl.col("metafield").struct.field("value").alias("_own"),
        pl.col("handle"),
        pl.col("title").alias("name"),
        pl.col("vendor").replace("", None).alias("brand"),
        pl.col("productType").replace("", None).alias("category"),
        (pl.col("status") == "ACTIVE").alias("active"),
        _time("updatedAt").alias("updated_at"),
        _padded("id").alias("_product"),
    )
    rows = variants.filter(pl.col("sku").is_not_null() & (pl.col("sku") != "")).select(
        "__parentId", "sku", pl.col("barcode").alias("gtin"), _padded("id").alias("_variant")
    ).join(product, on="__parentId", how="inner")
    counts = rows.group_by("__parentId").len("_count")
    rows = rows.join(counts, on="__parentId")
    single = (pl.col("_count") == 1) & (pl.col("_own").is_null() | (pl.col("_own") == pl.col("sku")))
    variant_rows = rows.with_columns(
        pl.when(single).then(None).otherwise(pl.coalesce("_own", "handle")).alias("parent_sku"),
        (pl.col("_product") + ":" + pl.col("_variant")).alias(TIEBREAK),
    )
    parents = (
        variant_rows.filter(pl.col("parent_sku").is_not_null())
        .unique("__parentId", keep="first")
        .with_columns(
            pl.col("parent_sku").alias("sku"), pl.lit(None, pl.String).alias("gtin"), pl.lit(None, pl.String).alias("parent_sku"),
            (pl.col("_product") + ":").alias(TIEBREAK),
        )
    )
    columns = ["sku", "gtin", "name", "brand", "category", "parent_sku", "active", "updated_at", TIEBREAK]
    return pl.concat([parents.select(columns), variant_rows.select(columns)])


def _prices(variants: pl.DataFrame, price_list: str, currency: str) -> pl.DataFrame:
    return variants.filter(pl.col("sku").is_not_null() & (pl.col("sku") != "")).select(
        "sku",
        pl.lit(price_list).alias("price_list"),
        pl.lit(currency).alias("currency"),
        pl.col("price").alias("amount"),
        _time("updatedAt").alias("updated_at"),
        _padded("id").alias(TIEBREAK),
    )


def _stock(items: pl.DataFrame, levels: pl.DataFrame, names: dict[str, str]) -> pl.DataFrame:
    skus = items.select(pl.col("id").alias("__parentId"), "sku")
    return (
        levels.join(skus, on="__parentId", how="inner", suffix="_item")
        .filter(pl.col("sku_item").is_not_null() & (pl.col("sku_item") != ""))
        .with_columns(pl.col("location").struct.field("id").alias("_location"))
        .filter(pl.col("_location").is_in(list(names)))
        .select(
            pl.col("sku_item").alias("sku"),
            pl.col("_location").replace_strict(names, return_dtype=pl.String).alias("location"),
            pl.col("quantities").list.first().struct.field("quantity").cast(pl.String).alias("available"),
            _time("updatedAt").alias("updated_at"),
            (_number("_location").cast(pl.String).str.zfill(10) + ":" + _padded("__parentId")).alias(TIEBREAK),
        )
    )


def _customers(customers: pl.DataFrame) -> pl.DataFrame:
    def address(n: int) -> pl.Expr:
        a = pl.col("addresses").list.get(n, null_on_oob=True)
        return pl.struct(
            a.struct.field("address1").alias("street"), a.struct.field("zip").alias("zip"),
            a.struct.field("city").alias("city"), a.struct.field("countryCode").alias("country"),
        )

    return customers.select(
        pl.coalesce(pl.col("metafield").struct.field("value"), _number("id").cast(pl.String)).alias("customer_no"),
        pl.col("firstName").alias("first_name"),
        pl.col("lastName").alias("last_name"),
        "email",
        "phone",
        pl.col("addresses").list.first().struct.field("company").alias("company"),
        pl.struct(address(0).alias("billing"), address(1).alias("shipping")).cast(ADDRESSES_DTYPE).alias("addresses"),
        _time("updatedAt").alias("updated_at"),
        _padded("id").alias(TIEBREAK),
    )


def _canonical(entity: str, frame: pl.DataFrame) -> pl.DataFrame:
    """The entity's canonical columns (missing ones NULL) in order, plus `TIEBREAK`."""
    schema = canonical(entity).schema
    return frame.select(
        *[(pl.col(n) if n in frame.columns else pl.lit(None)).cast(dtype).alias(n) for n, dtype in schema.items()],
        pl.col(TIEBREAK),
    )
