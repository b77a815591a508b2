"""WooCommerce source: products and variations, list prices, stock, customers into the canonical model.

Snapshots page through `/products`, `/variations` (WooCommerce 10.3 or
later; `variations: false` reads products only) and `/customers` with
`page`/`per_page`, ordered by id, trusting `X-WP-TotalPages`. One chunk per
endpoint: a resumed migration reads an unfinished endpoint again.

* products: sku, name, description, gtin (`global_unique_id`), weight,
  tax_class, active (status `publish`), parent_sku (a variation's parent),
  updated_at (`date_modified_gmt`);
* prices: `regular_price` as the list price named by the entity option
  `price_list` (default `retail`) in the shop's currency; records without a
  price are left out;
* stock_levels: `stock_quantity` of records with `manage_stock`, at the
  location named by the entity option `location` (default `default`);
* customers: customer_no (the `customer_no` meta data the sink writes, else
  the WooCommerce id), names, email, phone, company, billing and shipping
  addresses.

Deltas (`delta: {cursor: updated_at}`) for products, prices and stock
levels use `modified_after` with `dates_are_gmt=true`, ordered by
modification time, through the generic cursor reader (`core.cursor`): it
owns the overlap, re-reads, paging through equal times and the position.
The shop's clock is the `Date` of its answers. WooCommerce stores whole
seconds; deletions are not seen (as with every cursor delta); customers
have no modification filter and are read by snapshot only.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import ClassVar

import polars as pl

from kanal.connectors.woocommerce import api
from kanal.connectors.woocommerce.config import WooConfig, WooOptions, woo_options
from kanal.core.connector import (
    Chunk,
    CursorDelta,
    DeltaContext,
    DeltaKind,
    DeltaReader,
    EntityInfo,
    EntityOptions,
    Source,
)
from kanal.core.cursor import TIEBREAK, CursorPage, CursorReader
from kanal.core.errors import ConfigError
from kanal.core.http import HttpClient, HttpError, Lane, Page, PageNumber, PageRequest, RecordSchema
from kanal.core.model import entity as canonical

ITEM = RecordSchema(
    {
        "id": "int",
        "parent_id": "int",
        "sku": "text",
        "name": "text",
        "description": "text",
        "gtin": ("global_unique_id", "text"),
        "weight": "text",
        "tax_class": "text",
        "status": "text",
        "regular_price": "text",
        "manage_stock": "bool",
        "stock_quantity": "decimal",
        "updated_at": ("date_modified_gmt", "datetime"),
    }
)
"""A product or variation record."""

_ADDRESS = pl.Struct({n: pl.String for n in ("company", "address_1", "postcode", "city", "country", "phone")})
CUSTOMER = RecordSchema(
    {
        "id": "int",
        "email": "text",
        "first_name": "text",
        "last_name": "text",
        "billing": ("billing", _ADDRESS),
        "shipping": ("shipping", _ADDRESS),
        "meta_data": ("meta_data", pl.List(pl.Struct({"key": pl.String, "value": pl.String}))),
        "updated_at": ("date_modified_gmt", "datetime"),
    }
)
DELTA_ENTITIES = ("products", "prices", "stock_levels")
_CURSOR = "updated_at"


class WooSource(Source):
    """Reads a WooCommerce shop (see the module docstring)."""

    entity_options: ClassVar[type[EntityOptions]] = WooOptions
    config: WooConfig

    def __init__(self, config: WooConfig, lane: Lane = Lane.BACKFILL) -> None:
        super().__init__(config)
        self.client = api.connect(config, lane)
        self.system = self.client.system
        self._currency: str | None = None
        self._skus: dict[int, str] = {}
        """Parent product id -> SKU, for the parent_sku of variations."""

    def check(self) -> None:
        self.currency()

    def currency(self) -> str:
        if self._currency is None:
            self._currency = str(self.client.request("GET", "data/currencies/current").json()["code"])
        return self._currency

    def fields(self, entity: str, options: EntityOptions) -> pl.Schema:
        """WooCommerce's records are read into the canonical fields of `entity` (from its endpoints)."""
        self.endpoints(entity)
        return canonical(entity).schema

    def discover(self) -> list[EntityInfo]:
        infos = [EntityInfo(e, canonical(e).key, delta=DeltaKind.CURSOR) for e in DELTA_ENTITIES]
        return [*infos, EntityInfo("customers", canonical("customers").key)]

    def endpoints(self, entity: str) -> list[str]:
        if entity == "customers":
            return ["customers"]
        if entity not in DELTA_ENTITIES:
            raise ConfigError(f"{self.system}: the WooCommerce source reads products, prices, stock_levels and customers, not {entity}")
        return ["products", "variations"] if self.config.variations else ["products"]

    def plan(self, entity: str, options: EntityOptions) -> list[Chunk]:
        return [Chunk(id=f"{entity}:{endpoint}", spec={"endpoint": endpoint}) for endpoint in self.endpoints(entity)]

    def snapshot(self, entity: str, options: EntityOptions, chunk: Chunk) -> Iterator[pl.DataFrame]:
        request = PageRequest(chunk.spec["endpoint"], {"orderby": "id", "order": "asc"})
        for page in self.client.pages(request, PageNumber(self.config.per_page)):
            frame = self.records(entity, woo_options(options), page)
            if not frame.is_empty():
                yield frame.drop(TIEBREAK, strict=False)

    def records(self, entity: str, opts: WooOptions, page: Page) -> pl.DataFrame:
        """The canonical rows of one page of `entity`'s endpoint."""
        try:
            if entity == "customers":
                return _customers(page.frame(CUSTOMER))
            items = page.frame(ITEM)
        except HttpError as exc:
            raise self._explain(exc) from None
        items = items.with_columns(self._parent_skus(items))
        if entity == "products":
            return _products(items)
        if entity == "prices":
            return _prices(items, opts.price_list or "retail", self.currency())
        return _stock(items, opts.location or "default")

    def _explain(self, exc: HttpError) -> Exception:
        if exc.status == 404:
            return ConfigError(f"{self.system}: {exc.message}; a shop older than WooCommerce 10.3 has no /variations: set variations: false")
        return exc

    def _parent_skus(self, items: pl.DataFrame) -> pl.Expr:
        """parent_sku of variations, looking up parents not seen yet (100 per call)."""
        wanted = [i for i in items.get_column("parent_id").drop_nulls().unique().to_list() if i and i not in self._skus]
        for part in api.chunks(sorted(wanted), 100):
            found = self.client.request("GET", "products", params={"include": ",".join(map(str, part)), "per_page": 100}).json()
            self._skus.update({int(r["id"]): str(r.get("sku") or "") for r in found})
        known = pl.DataFrame({"id": list(self._skus), "sku": list(self._skus.values())}, schema={"id": pl.Int64, "sku": pl.String})
        return pl.col("parent_id").replace_strict(known.get_column("id"), known.get_column("sku"), default=None).alias("parent_sku")

    def delta(self, context: DeltaContext) -> DeltaReader:
        cursors: dict[str, CursorDelta] = {}
        for entity, options in context.entities.items():
            delta = options.delta
            if entity not in DELTA_ENTITIES or not isinstance(delta, CursorDelta) or delta.cursor != _CURSOR:
                raise ConfigError(
                    f"{self.system}: entities.{entity}.delta: WooCommerce deltas are {{cursor: updated_at}} "
                    f"(the shop's modification time) for {', '.join(DELTA_ENTITIES)}; customers are read by snapshot only"
                )
            cursors[entity] = delta
        return WooDeltaReader(WooSource(self.config, Lane.DELTA), context.entities, cursors)

    def close(self) -> None:
        self.client.close()


class WooDeltaReader(CursorReader):
    """`modified_after` polling of products and variations for the cursor reader (see `core.cursor`)."""

    def __init__(self, source: WooSource, options: dict[str, EntityOptions], cursors: dict[str, CursorDelta]) -> None:
        super().__init__(cursors, source.config.per_page)
        self.source, self.options = source, {e: woo_options(o) for e, o in options.items()}

    def check(self) -> None:
        self.source.check()

    def close(self) -> None:
        self.source.close()

    def fetch(self, entity: str, since: int, tiebreak: str | None, limit: int) -> CursorPage:
        client: HttpClient = self.source.client
        if limit == 0:
            return CursorPage(pl.DataFrame(), _clock(client.request("GET", "products", params={"per_page": 1})))
        after = _EPOCH + timedelta(microseconds=since) - timedelta(seconds=1)  # the filter is exclusive, in whole seconds
        params = {"modified_after": after.strftime("%Y-%m-%dT%H:%M:%S"), "dates_are_gmt": "true", "orderby": "modified", "order": "asc"}
        clock: int | None = None
        frames = []
        for endpoint in self.source.endpoints(entity):
            rows: list[pl.DataFrame] = []
            for page in client.pages(PageRequest(endpoint, params), PageNumber(self.page_rows)):
                clock = _clock(page.response) if clock is None else clock
                rows.append(self.source.records(entity, self.options[entity], page))
                if _enough(pl.concat(rows), since, limit):
                    break
            frames.extend(rows)
        found = pl.concat([f for f in frames if not f.is_empty()], how="diagonal_relaxed") if any(not f.is_empty() for f in frames) else None
        assert clock is not None
        if found is None:
            return CursorPage(pl.DataFrame(), clock)
        micros = pl.col(_CURSOR).dt.epoch("us")
        mark = pl.col(TIEBREAK) > tiebreak if tiebreak is not None else pl.lit(True)
        rows = (
            found.filter((micros > since) | ((micros == since) & mark))
            .sort(_CURSOR, TIEBREAK)
            .head(limit)
        )
        return CursorPage(rows, clock)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _enough(rows: pl.DataFrame, since: int, limit: int) -> bool:
    """Pages come oldest first: stop once `limit` rows are past `since` and the last time is complete."""
    times = rows.get_column(_CURSOR).dt.epoch("us") if not rows.is_empty() else pl.Series([], dtype=pl.Int64)
    later = times.filter(times >= since).sort()
    return later.len() > limit and later[limit - 1] < later[-1]


def _clock(response: object) -> int:
    """The shop's time from its `Date` header, in epoch microseconds."""
    header = response.headers.get("Date")  # type: ignore[attr-defined]
    at = parsedate_to_datetime(header) if header else datetime.now(UTC)
    return int(at.timestamp() * 1_000_000)


def _tiebreak() -> pl.Expr:
    return pl.col("id").cast(pl.String).str.zfill(12).alias(TIEBREAK)


def _products(items: pl.DataFrame) -> pl.DataFrame:
    unset = [pl.col(c).replace("", None) for c in ("name", "description", "gtin", "weight", "tax_class", "parent_sku")]
    return items.select(
        "sku",
        *unset,  # WooCommerce spells "not set" as ""
        (pl.col("status") == "publish").alias("active"),
        _CURSOR,
        _tiebreak(),
    )


def _prices(items: pl.DataFrame, price_list: str, currency: str) -> pl.DataFrame:
    return items.filter(pl.col("regular_price").fill_null("") != "").select(
        "sku",
        pl.lit(price_list).alias("price_list"),
        pl.lit(None, pl.String).alias("customer_no"),
        pl.lit(currency).alias("currency"),
        pl.lit(None, pl.String).alias("min_qty"),
        pl.col("regular_price").alias("amount"),
        _CURSOR,
        _tiebreak(),
    )


def _stock(items: pl.DataFrame, location: str) -> pl.DataFrame:
    return items.filter(pl.col("manage_stock").fill_null(False)).select(
        "sku",
        pl.lit(location).alias("location"),
        pl.col("stock_quantity").alias("on_hand"),
        pl.col("stock_quantity").alias("available"),
        _CURSOR,
        _tiebreak(),
    )


def _customers(records: pl.DataFrame) -> pl.DataFrame:
    number = pl.col("meta_data").list.eval(
        pl.element().filter(pl.element().struct.field("key") == "customer_no").struct.field("value")
    ).list.first()

    def address(part: str) -> pl.Expr:
        where = pl.col(part)
        return pl.struct(
            where.struct.field("address_1").alias("street"),
            where.struct.field("postcode").alias("zip"),
            where.struct.field("city").alias("city"),
            where.struct.field("country").alias("country"),
        ).alias(part)

    return records.select(
        pl.coalesce(number, pl.col("id").cast(pl.String)).alias("customer_no"),
        "first_name",
        "last_name",
        pl.col("billing").struct.field("company").alias("company"),
        "email",
        pl.col("billing").struct.field("phone").alias("phone"),
        pl.struct(address("billing"), address("shipping")).alias("addresses"),
        _CURSOR,
    )
