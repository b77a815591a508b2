"""WooCommerce sink: products and variations by SKU, list prices, stock, customers, through `/batch`.

* **Products.** A product row that other rows name as their `parent_sku`
  becomes a `variable` product, those rows its variations (under
  `/products/{id}/variations`); a row with neither is a `simple` product.
  A parent not in the shop yet is created as a draft variable product
  holding only its SKU; its own row fills it in when it arrives. A product
  once variable stays variable.
* **Prices.** The list price of the entity option `price_list` becomes the
  product's `regular_price`. Other price lists are skipped (counted as
  skipped); customer-specific and tier prices, and prices in another
  currency than the shop's, are refused into the dead-letter queue with the
  reason: WooCommerce has no such prices.
* **Stock.** The stock level of the entity option `location` becomes
  `stock_quantity` with `manage_stock: true`; other locations are skipped
  (counted as skipped). WooCommerce counts whole units.
* **Availability** (`kanal inventory`'s sellable quantity per channel):
  that of the entity option `channel` becomes `stock_quantity`, like a
  stock level; other channels are skipped. It reaches the shop through the
  engine's channel outbox (`core.channels`): coalesced, decreases first.
  WooCommerce offers neither compare-and-set nor idempotency keys, so the
  outbox's version check is what keeps an older value from following a
  newer one.
* **Customers** by email, with the customer number in the meta data
  (`customer_no`).

Ids: the sink keeps canonical key -> WooCommerce id in the job's sink memory
(`self.memory`; `parent/id` for a variation), learnt from batch answers and
from lookups. A new record is created; when the shop refuses it because its
SKU or email exists already (a lost map, a retried call), the sink looks it
up and updates it instead: a record is never created twice.

Prices and stock are fields of a product. One that arrives before its
product (entities travel independently) waits in the sink memory and goes
into the product's next write: its create, or the update of a product a
killed run created without learning its id.

Every write goes through a `/batch` endpoint, at most `batch_items` items
per call; an item the shop refuses goes to the dead-letter queue with the
shop's message, the others are written. Deletes remove products, variations
and customers (forced); a deleted price empties `regular_price`, a deleted
stock level turns `manage_stock` off. A truncate is refused into the
dead-letter queue: the sink does not empty a shop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import polars as pl

from kanal.connectors.woocommerce import api
from kanal.connectors.woocommerce.api import Batch, Item, Json
from kanal.connectors.woocommerce.config import WooConfig, WooOptions, woo_options
from kanal.core.connector import DELETE, OP, TRUNCATE, EntityOptions, Sink, WriteResult
from kanal.core.errors import ConfigError
from kanal.core.validate import KEY

PRODUCTS = "products"
_VARIABLE = "woocommerce:variable"
"""Memory namespace: parent SKUs known to be variable products in the shop."""
_PENDING = {"prices": "woocommerce:pending-prices", "stock_levels": "woocommerce:pending-stock"}
"""Memory namespaces: fields waiting for a product not in the shop yet (SKU -> JSON)."""
_DUPLICATE = {"product_invalid_sku", "registration-error-email-exists", "woocommerce_rest_product_not_created"}
_GONE = {"woocommerce_rest_product_invalid_id", "woocommerce_rest_product_variation_invalid_id", "woocommerce_rest_invalid_id"}
ENTITIES = ("products", "prices", "stock_levels", "availability", "customers")


@dataclass
class _Outcome:
    """What one `write` did: refused keys with reasons, skipped keys."""

    failed: dict[str, str] = field(default_factory=dict)
    skipped: int = 0

    def fail(self, key: str, reason: str) -> None:
        self.failed.setdefault(key, reason)

    def result(self, rows: int) -> WriteResult:
        frame = None
        if self.failed:
            frame = pl.DataFrame(
                {KEY: list(self.failed), "reason": list(self.failed.values())}, schema={KEY: pl.String, "reason": pl.String}
            )
        return WriteResult(written=rows - len(self.failed) - self.skipped, skipped_older=self.skipped, failed=frame)


class WooSink(Sink):
    """Writes canonical batches into a WooCommerce shop (see the module docstring)."""

    entity_options: ClassVar[type[EntityOptions]] = WooOptions
    config: WooConfig

    def __init__(self, config: WooConfig) -> None:
        super().__init__(config)
        self.client = api.connect(config)
        self.system = self.client.system
        self._currency: str | None = None

    def check(self) -> None:
        self.currency()

    def currency(self) -> str:
        """The shop's currency (prices in another one are refused)."""
        if self._currency is None:
            self._currency = str(self.client.request("GET", "data/currencies/current").json()["code"])
        return self._currency

    def prepare(self, entity: str, options: EntityOptions) -> None:
        opts = woo_options(options)
        if entity not in ENTITIES:
            raise ConfigError(f"{self.system}: the WooCommerce sink writes {', '.join(ENTITIES)}, not {entity}")
        if entity == "prices" and not opts.price_list:
            raise ConfigError(f"{self.system}: set entities.prices.price_list (the list whose prices become regular_price)")
        if entity == "stock_levels" and not opts.location:
            raise ConfigError(f"{self.system}: set entities.stock_levels.location (the location whose stock the shop shows)")
        if entity == "availability" and not opts.channel:
            raise ConfigError(f"{self.system}: set entities.availability.channel (the sales channel whose availability the shop shows)")

    def write(self, entity: str, options: EntityOptions, frame: pl.DataFrame, batch_id: str) -> WriteResult:
        outcome = _Outcome()
        ops = pl.col(OP) if OP in frame.columns else pl.lit("upsert")
        for key in frame.filter(ops == TRUNCATE).get_column(KEY).to_list():
            outcome.fail(key, f"{self.system}: a truncate of {entity} is not applied: the sink does not empty a shop; delete the records there if meant")
        last = frame.filter(ops != TRUNCATE).unique(KEY, keep="last", maintain_order=True)
        deleted, upserts = last.filter(ops == DELETE), last.filter(ops != DELETE)
        writer: Callable[[pl.DataFrame, pl.DataFrame, WooOptions, _Outcome], None] = {
            "products": self._products,
            "prices": self._prices,
            "stock_levels": self._stock,
            "availability": self._availability,
            "customers": self._customers,
        }[entity]
        writer(upserts, deleted, woo_options(options), outcome)
        return outcome.result(frame.height)

    def close(self) -> None:
        self.client.close()

    # -- products --------------------------------------------------------------------------

    def _products(self, rows: pl.DataFrame, deleted: pl.DataFrame, _opts: WooOptions, outcome: _Outcome) -> None:
        rows = rows.with_columns(pl.col("parent_sku").fill_null("") if "parent_sku" in rows.columns else pl.lit("").alias("parent_sku"))
        skus = dict(zip(rows.get_column(KEY).to_list(), rows.get_column("sku").to_list(), strict=True))
        parent_of = dict(zip(rows.get_column("sku").to_list(), rows.get_column("parent_sku").to_list(), strict=True))
        parents = {p for p in parent_of.values() if p}
        ids = self._ids([*skus.values(), *parents], lookup=[*parents])
        variable = set(self.memory.ids(_VARIABLE, parents))
        payloads = dict(zip(rows.get_column("sku").to_list(), _product_payloads(rows), strict=True))
        keys = {sku: key for key, sku in skus.items()}
        pending = self._pending([*payloads, *parents])

        # 1. products: simple ones, parents (made variable), placeholders for parents not in the shop
        batch = Batch()
        for sku, payload in payloads.items():
            parent, known = parent_of[sku], ids.get(sku)
            if parent and known and "/" not in known:
                outcome.fail(keys[sku], f"{self.system}: SKU {sku} is a product in the shop, but the record makes it a variation of {parent}; delete it there first")
            elif not parent and known and "/" in known:
                outcome.fail(keys[sku], f"{self.system}: SKU {sku} is a variation in the shop, but the record makes it a product; delete it there first")
            elif not parent:
                if sku in parents:
                    payload = {**payload, "type": "variable"}
                if known:
                    batch.update.append((sku, {**payload, **pending.get(sku, {}), "id": int(known)}))
                else:
                    batch.create.append((sku, {**payload, **pending.get(sku, {})}))
        in_batch = {sku for sku, _ in batch.create} | {sku for sku, _ in batch.update}
        for parent in sorted(parents - in_batch):
            if parent not in ids:
                batch.create.append((parent, {"sku": parent, "name": parent, "type": "variable", "status": "draft", **pending.get(parent, {})}))
            elif (parent not in variable or parent in pending) and "/" not in ids[parent]:
                batch.update.append((parent, {"id": int(ids[parent]), "type": "variable", **pending.get(parent, {})}))
        refused = self._apply(PRODUCTS, "products/batch", batch, ids, keys, outcome, lambda sku: f"product {sku}")
        self.memory.remember_ids(_VARIABLE, {p: ids[p] for p in parents if p in ids and p not in refused})

        # 2. variations, per parent
        by_parent: dict[str, Batch] = {}
        for sku, payload in payloads.items():
            parent, known = parent_of[sku], ids.get(sku)
            if not parent or keys[sku] in outcome.failed:
                continue
            if parent in refused or parent not in ids:
                outcome.fail(keys[sku], f"{self.system}: variation {sku} not written: its parent {parent} was refused")
                continue
            parent_id = ids[parent]
            if "/" in parent_id:
                outcome.fail(keys[sku], f"{self.system}: variation {sku} names {parent} as parent, which is itself a variation in the shop")
                continue
            if known and known.split("/")[0] != parent_id:
                outcome.fail(keys[sku], f"{self.system}: SKU {sku} is a variation of another product in the shop, not of {parent}; delete it there first")
                continue
            todo = by_parent.setdefault(parent_id, Batch())
            payload = {k: v for k, v in payload.items() if k != "name"}
            if known:
                todo.update.append((sku, {**payload, **pending.get(sku, {}), "id": int(known.split("/")[1])}))
            else:
                todo.create.append((sku, {**payload, **pending.get(sku, {})}))
        for parent_id, todo in by_parent.items():
            self._apply(PRODUCTS, f"products/{parent_id}/variations/batch", todo, ids, keys, outcome, lambda sku: f"variation {sku}", parent_id)

        self._delete_products(deleted, outcome)

    def _delete_products(self, deleted: pl.DataFrame, outcome: _Outcome) -> None:
        if deleted.is_empty():
            return
        skus = dict(zip(deleted.get_column("sku").to_list(), deleted.get_column(KEY).to_list(), strict=True))
        ids = self._ids(list(skus))
        batches: dict[str, Batch] = {}
        for sku, known in ids.items():
            parent, _, child = known.rpartition("/")
            batches.setdefault(parent, Batch()).delete.append((sku, int(child)))
        for parent, batch in batches.items():
            path = f"products/{parent}/variations/batch" if parent else "products/batch"
            for item in api.send(self.client, path, batch, self.config.batch_items):
                if item.error and item.code not in _GONE:
                    outcome.fail(skus[item.key], item.reason(f"delete {item.key}"))
        self.memory.forget(_VARIABLE, list(skus))

    def _apply(
        self,
        entity: str,
        path: str,
        batch: Batch,
        ids: dict[str, str],
        keys: dict[str, str],
        outcome: _Outcome,
        what: Callable[[str], str],
        parent: str | None = None,
    ) -> set[str]:
        """Send `batch`; learn the ids of created records; repair what a lost or stale map caused.

        A create refused because the SKU exists becomes an update of the
        record found by SKU; an update of a record gone from the shop
        becomes a create. Returns the SKUs refused in the end (their keys,
        when they are rows, are failed with the shop's message).
        """
        items = api.send(self.client, path, batch, self.config.batch_items)
        self._learn(entity, items, ids, keys, parent)
        payloads = {sku: p for sku, p in [*batch.create, *batch.update]}
        retry = Batch()
        taken = [i.key for i in items if i.action == "create" and i.code in _DUPLICATE]
        found = api.find_skus(self.client, taken, self.config.batch_items) if taken else {}
        for item in items:
            if item.action == "create" and item.key in found and _same_place(found[item.key], parent):
                ids[item.key] = found[item.key]
                # a placeholder parent someone else created meanwhile only needs to be variable
                payload = payloads[item.key] if item.key in keys else {"type": "variable"}
                retry.update.append((item.key, {**payload, "id": int(found[item.key].rpartition("/")[2])}))
            elif item.action == "update" and item.code in _GONE:
                ids.pop(item.key, None)
                self.memory.forget(entity, [keys[item.key]] if item.key in keys else [])
                retry.create.append((item.key, {k: v for k, v in payloads[item.key].items() if k != "id"}))
        if found:
            self.memory.remember_ids(entity, {keys.get(s, s): i for s, i in found.items() if s in keys})
        repaired = {key for key, _ in [*retry.create, *retry.update]}
        final = [i for i in items if not (i.error and i.key in repaired)]
        if retry:
            retried = api.send(self.client, path, retry, self.config.batch_items)
            self._learn(entity, retried, ids, keys, parent)
            final += retried
        refused = set()
        for item in final:
            if item.error:
                refused.add(item.key)
                if item.key in keys:
                    outcome.fail(keys[item.key], item.reason(what(item.key)))
        self._settle_pending([i for i in final if i.action != "delete" and not i.error], ids, parent)
        return refused

    def _learn(self, entity: str, items: list[Item], ids: dict[str, str], keys: dict[str, str], parent: str | None) -> None:
        learnt = {}
        for item in items:
            if item.action != "delete" and not item.error and "id" in item.answer:
                ids[item.key] = f"{parent}/{item.answer['id']}" if parent else str(item.answer["id"])
                learnt[keys.get(item.key, item.key)] = ids[item.key]
        if learnt:
            self.memory.remember_ids(entity, learnt)

    def _ids(self, skus: list[str], lookup: list[str] | None = None) -> dict[str, str]:
        """Shop ids of products by SKU: remembered ones, else looked up (only `lookup`, or all when None)."""
        ids = self.memory.ids(PRODUCTS, skus)
        ask = [s for s in (skus if lookup is None else lookup) if s not in ids]
        if ask:
            found = api.find_skus(self.client, ask, self.config.batch_items)
            self.memory.remember_ids(PRODUCTS, found)
            ids.update(found)
        return ids

    # -- fields of products: prices and stock ------------------------------------------------

    def _prices(self, rows: pl.DataFrame, deleted: pl.DataFrame, opts: WooOptions, outcome: _Outcome) -> None:
        mine = pl.col("price_list") == opts.price_list
        outcome.skipped += rows.filter(~mine).height + deleted.filter(~mine).height
        rows, deleted = rows.filter(mine), deleted.filter(mine)
        customer = pl.col("customer_no").is_not_null() & (pl.col("customer_no") != "")
        tier = pl.col("min_qty").cast(pl.Float64, strict=False).fill_null(1) > 1
        currency = pl.col("currency") != self.currency()
        refusals = (
            (customer, "customer-specific prices are not a WooCommerce concept; the sink writes only the list prices of entities.prices.price_list (filter these rows in a mapping)"),
            (tier, "tier prices (min_qty above 1) are not a WooCommerce concept; the sink writes only the base list price of entities.prices.price_list"),
            (currency, f"the shop's prices are in {self.currency()}; send entities.prices.price_list in that currency"),
        )
        for rule, reason in refusals:
            for key, sku in rows.filter(rule).select(KEY, "sku").iter_rows():
                outcome.fail(key, f"{self.system}: price of {sku}: {reason}")
        rows = rows.filter(~(customer | tier | currency))
        fields = {sku: (key, {"regular_price": amount}) for key, sku, amount in rows.select(KEY, "sku", "amount").iter_rows()}
        fields.update({sku: (key, {"regular_price": ""}) for key, sku in deleted.select(KEY, "sku").iter_rows()})
        self._set_fields("prices", fields, outcome)

    def _stock(self, rows: pl.DataFrame, deleted: pl.DataFrame, opts: WooOptions, outcome: _Outcome) -> None:
        mine = pl.col("location") == opts.location
        outcome.skipped += rows.filter(~mine).height + deleted.filter(~mine).height
        rows, deleted = rows.filter(mine), deleted.filter(mine)
        quantity = pl.coalesce(
            [pl.col(c).cast(pl.Float64, strict=False) for c in ("available", "on_hand") if c in rows.columns] or [pl.lit(None, pl.Float64)]
        )
        rows = rows.with_columns(quantity.alias("_quantity"))
        whole = pl.col("_quantity").is_not_null() & (pl.col("_quantity") == pl.col("_quantity").floor())
        for key, sku, value in rows.filter(~whole).select(KEY, "sku", "_quantity").iter_rows():
            outcome.fail(key, f"{self.system}: stock of {sku} at {opts.location}: {value} is not a whole number of units (WooCommerce counts whole units)")
        fields = {
            sku: (key, {"manage_stock": True, "stock_quantity": int(value)})
            for key, sku, value in rows.filter(whole).select(KEY, "sku", "_quantity").iter_rows()
        }
        fields.update({sku: (key, {"manage_stock": False}) for key, sku in deleted.select(KEY, "sku").iter_rows()})
        self._set_fields("stock_levels", fields, outcome)

    def _availability(self, rows: pl.DataFrame, deleted: pl.DataFrame, opts: WooOptions, outcome: _Outcome) -> None:
        """A channel's availability is the stock the shop may sell: written as the stock level of a location named so."""
        as_stock = [pl.col("channel").alias("location"), *([pl.col("quantity").alias("available")] if "quantity" in rows.columns else [])]
        stock = opts.model_copy(update={"location": opts.channel})
        self._stock(rows.with_columns(as_stock), deleted.with_columns(pl.col("channel").alias("location")), stock, outcome)

    def _set_fields(self, entity: str, fields: dict[str, tuple[str, Json]], outcome: _Outcome) -> None:
        """Update fields of products and variations by SKU; those not in the shop yet wait for their create."""
        if not fields:
            return
        ids = self._ids(list(fields))
        self.memory.forget(_PENDING[entity], [sku for sku in fields if sku in ids])  # this newer value supersedes a wait
        waiting = {sku: json.dumps(f) for sku, (_, f) in fields.items() if sku not in ids}
        if waiting:
            self.memory.remember_ids(_PENDING[entity], waiting)
            arrived = self.memory.ids(PRODUCTS, list(waiting))  # a product created meanwhile took no notice
            ids.update(arrived)
            self.memory.forget(_PENDING[entity], list(arrived))
        batches: dict[str, Batch] = {}
        for sku, known in ids.items():
            parent, _, child = known.rpartition("/")
            batches.setdefault(parent, Batch()).update.append((sku, {**fields[sku][1], "id": int(child)}))
        for parent, batch in batches.items():
            path = f"products/{parent}/variations/batch" if parent else "products/batch"
            for item in api.send(self.client, path, batch, self.config.batch_items):
                if item.error:
                    outcome.fail(fields[item.key][0], item.reason(f"{entity} of {item.key}"))

    def _pending(self, skus: list[str]) -> dict[str, Json]:
        """Fields that arrived before their product (merged into its create), by SKU."""
        merged: dict[str, Json] = {}
        for namespace in _PENDING.values():
            for sku, raw in self.memory.ids(namespace, skus).items():
                merged.setdefault(sku, {}).update(json.loads(raw))
        return merged

    def _settle_pending(self, written: list[Item], ids: dict[str, str], parent: str | None) -> None:
        """After writes are remembered: fields that arrived meanwhile are applied, then forgotten.

        Updates count too: a run killed after the shop created a product,
        before the sink learnt its id, leaves its fields waiting while the
        next run finds the product by SKU and updates it.
        """
        skus = [i.key for i in written]
        if not skus:
            return
        late = Batch()
        pending = self._pending(skus)
        for item in written:
            fields = pending.get(item.key, {})
            if any(item.answer.get(k) != v for k, v in fields.items()):
                late.update.append((item.key, {**fields, "id": int(ids[item.key].rpartition("/")[2])}))
        if late:
            path = f"products/{parent}/variations/batch" if parent else "products/batch"
            api.send(self.client, path, late, self.config.batch_items)
        for namespace in _PENDING.values():
            self.memory.forget(namespace, skus)

    # -- customers --------------------------------------------------------------------------

    def _customers(self, rows: pl.DataFrame, deleted: pl.DataFrame, _opts: WooOptions, outcome: _Outcome) -> None:
        no_email = pl.col("email").is_null() | (pl.col("email").str.strip_chars() == "")
        for key in rows.filter(no_email).get_column(KEY).to_list():
            outcome.fail(key, f"{self.system}: customer {key} has no email; WooCommerce needs one")
        rows = rows.filter(~no_email)
        keys = rows.get_column(KEY).to_list()
        ids = self.memory.ids("customers", keys)
        payloads = dict(zip(keys, _customer_payloads(rows), strict=True))
        batch = Batch()
        for key, payload in payloads.items():
            if key in ids:
                batch.update.append((key, {**payload, "id": int(ids[key])}))
            else:
                batch.create.append((key, payload))
        items = api.send(self.client, "customers/batch", batch, self.config.batch_items)
        retry = Batch()
        for item in items:
            if item.action == "create" and item.code in _DUPLICATE:
                found = api.find_email(self.client, payloads[item.key]["email"])
                if found:
                    retry.update.append((item.key, {**payloads[item.key], "id": int(found)}))
                    continue
            if item.action == "update" and item.code in _GONE:
                retry.create.append((item.key, payloads[item.key]))
                continue
            if item.error:
                outcome.fail(item.key, item.reason(f"customer {item.key}"))
        retried = api.send(self.client, "customers/batch", retry, self.config.batch_items) if retry else []
        for item in retried:
            if item.error:
                outcome.fail(item.key, item.reason(f"customer {item.key}"))
        learnt = {i.key: str(i.answer["id"]) for i in [*items, *retried] if not i.error and "id" in i.answer}
        self.memory.remember_ids("customers", learnt)

        gone = self.memory.ids("customers", deleted.get_column(KEY).to_list())
        removal = Batch(delete=[(key, int(ident)) for key, ident in gone.items()])
        for item in api.send(self.client, "customers/batch", removal, self.config.batch_items) if removal else []:
            if item.error and item.code not in _GONE:
                outcome.fail(item.key, item.reason(f"customer {item.key}"))


def _same_place(found: str, parent: str | None) -> bool:
    """A record found by SKU can be updated in place: a product for a product, a variation of the same parent."""
    owner = found.rpartition("/")[0]
    return owner == (parent or "")


def _text(name: str, frame: pl.DataFrame) -> pl.Expr:
    """A text column for the shop ("" clears it); absent columns send nothing."""
    return pl.col(name).cast(pl.String).fill_null("") if name in frame.columns else pl.lit(None, pl.String)


def _product_payloads(rows: pl.DataFrame) -> list[Json]:
    """The WooCommerce fields of each product row (None values are not sent)."""
    status = (
        pl.when(pl.col("active")).then(pl.lit("publish")).when(~pl.col("active")).then(pl.lit("draft"))
        if "active" in rows.columns
        else pl.lit(None, pl.String)
    )
    fields = rows.select(
        pl.col("sku"),
        (pl.col("name") if "name" in rows.columns else pl.lit(None, pl.String)).alias("name"),
        _text("description", rows).alias("description"),
        _text("gtin", rows).alias("global_unique_id"),
        _text("weight", rows).alias("weight"),
        _text("tax_class", rows).alias("tax_class"),
        status.alias("status"),
    )
    return [{k: v for k, v in row.items() if v is not None} for row in fields.iter_rows(named=True)]


def _customer_payloads(rows: pl.DataFrame) -> list[Json]:
    """The WooCommerce fields of each customer row; the customer number travels as meta data."""
    def address(part: str, with_contact: bool) -> pl.Expr:
        where = pl.col("addresses").struct.field(part) if "addresses" in rows.columns else None
        def field_of(name: str) -> pl.Expr:
            return where.struct.field(name).fill_null("") if where is not None else pl.lit("")
        parts = [
            _text("first_name", rows).alias("first_name"),
            _text("last_name", rows).alias("last_name"),
            _text("company", rows).alias("company"),
            field_of("street").alias("address_1"),
            field_of("zip").alias("postcode"),
            field_of("city").alias("city"),
            field_of("country").alias("country"),
        ]
        if with_contact:
            parts += [pl.col("email").alias("email"), _text("phone", rows).alias("phone")]
        return pl.struct(parts).alias(part)

    fields = rows.select(
        pl.col("email"),
        _text("first_name", rows).alias("first_name"),
        _text("last_name", rows).alias("last_name"),
        address("billing", True),
        address("shipping", False),
        pl.concat_list(pl.struct(pl.lit("customer_no").alias("key"), pl.col("customer_no").alias("value"))).alias("meta_data"),
    )
    return list(fields.iter_rows(named=True))
