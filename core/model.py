"""The canonical model: one description, two uses.

Every entity is described once as a tuple of `Field`s. From that description
come the polars schema that bulk batches carry, the vectorized validation rules
(`core.validate`) and the pydantic model used for documentation and for the
low-volume edges (API payloads, single delta records). Keeping one source of
truth means the bulk path and the per-record path can never disagree.

Wire conventions: money and quantities are decimal *text* (never float) so a
price of "12.50" arrives as "12.50"; timestamps are UTC; nested customer
addresses are a struct of `billing` and `shipping`; free-form product
attributes are JSON text.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, create_model


class Kind(str, Enum):
    TEXT = "text"
    DECIMAL = "decimal"
    FLOAT = "float"
    BOOL = "bool"
    DATETIME = "datetime"
    JSON = "json"
    CURRENCY = "currency"
    ENUM = "enum"
    ADDRESSES = "addresses"


ADDRESS_FIELDS = ("street", "zip", "city", "country")
ADDRESS_DTYPE = pl.Struct({name: pl.String for name in ADDRESS_FIELDS})
ADDRESSES_DTYPE = pl.Struct({"billing": ADDRESS_DTYPE, "shipping": ADDRESS_DTYPE})

_DTYPES: dict[Kind, pl.DataType] = {
    Kind.TEXT: pl.String(),
    Kind.DECIMAL: pl.String(),
    Kind.FLOAT: pl.Float64(),
    Kind.BOOL: pl.Boolean(),
    Kind.DATETIME: pl.Datetime("us", "UTC"),
    Kind.JSON: pl.String(),
    Kind.CURRENCY: pl.String(),
    Kind.ENUM: pl.String(),
    Kind.ADDRESSES: ADDRESSES_DTYPE,
}


@dataclass(frozen=True)
class Field:
    """One canonical field: its kind, whether it is required, its allowed values."""

    name: str
    kind: Kind = Kind.TEXT
    required: bool = False
    values: tuple[str, ...] = ()
    description: str = ""

    @property
    def dtype(self) -> pl.DataType:
        return _DTYPES[self.kind]


@dataclass(frozen=True)
class Entity:
    """A canonical entity: its fields and the fields that form its key.

    Key parts that are not `required` may be NULL (a list price has no
    customer); the stable key string encodes NULL as the empty string.
    """

    name: str
    fields: tuple[Field, ...]
    key: tuple[str, ...]
    description: str = ""
    partition_by: tuple[str, ...] = ()
    """Fields that choose the Kafka partition instead of the key: every movement
    of a sku must reach the one aggregator that owns the sku (`core.wire`)."""

    @property
    def schema(self) -> pl.Schema:
        return pl.Schema({f.name: f.dtype for f in self.fields})

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def key_expr(self) -> pl.Expr:
        """The canonical key as one stable string (parts joined by '|')."""
        parts = [pl.col(k).cast(pl.String).fill_null("") for k in self.key]
        if len(parts) == 1:
            return parts[0].alias("_kanal_key")
        return pl.concat_str(parts, separator="|").alias("_kanal_key")

    def partition_expr(self) -> pl.Expr | None:
        """The string whose hash chooses a record's partition, when it is not the key (`partition_by`)."""
        if not self.partition_by:
            return None
        parts = [pl.col(k).cast(pl.String).fill_null("") for k in self.partition_by]
        return pl.concat_str(parts, separator="|")


CUSTOMER = Entity(
    "customers",
    (
        Field("customer_no", required=True, description="ERP customer number"),
        Field("type", Kind.ENUM, values=("b2b", "b2c"), description="b2b or b2c"),
        Field("company"),
        Field("first_name"),
        Field("last_name"),
        Field("email"),
        Field("phone"),
        Field("vat_id"),
        Field("currency", Kind.CURRENCY, description="ISO 4217"),
        Field("price_group"),
        Field("addresses", Kind.ADDRESSES, description="billing and shipping address"),
        Field("updated_at", Kind.DATETIME),
    ),
    key=("customer_no",),
)

PRODUCT = Entity(
    "products",
    (
        Field("sku", required=True),
        Field("gtin"),
        Field("name"),
        Field("description"),
        Field("brand"),
        Field("category"),
        Field("unit"),
        Field("weight", Kind.DECIMAL),
        Field("attributes", Kind.JSON, description="JSON object of free attributes"),
        Field("parent_sku", description="parent product of a variant"),
        Field("active", Kind.BOOL),
        Field("tax_class"),
        Field("updated_at", Kind.DATETIME),
    ),
    key=("sku",),
)

PRICE = Entity(
    "prices",
    (
        Field("sku", required=True),
        Field("price_list"),
        Field("customer_no", description="empty for list and tier prices"),
        Field("currency", Kind.CURRENCY, required=True, description="ISO 4217"),
        Field("min_qty", Kind.DECIMAL, description="tier start quantity"),
        Field("amount", Kind.DECIMAL, required=True),
        Field("valid_from", Kind.DATETIME),
        Field("valid_to", Kind.DATETIME),
        Field("updated_at", Kind.DATETIME),
    ),
    key=("sku", "price_list", "customer_no", "currency", "min_qty"),
)

STOCK_LEVEL = Entity(
    "stock_levels",
    (
        Field("sku", required=True),
        Field("location", required=True),
        Field("on_hand", Kind.DECIMAL),
        Field("reserved", Kind.DECIMAL),
        Field("available", Kind.DECIMAL),
        Field("updated_at", Kind.DATETIME),
        Field("version", Kind.DECIMAL),
        Field("unavailable", Kind.DECIMAL, description="on hand but not sellable (damaged, quality control)"),
        Field("incoming", Kind.DECIMAL, description="announced or in transit to the location, not on hand yet"),
    ),
    key=("sku", "location"),
)

STOCK_MOVEMENT = Entity(
    "stock_movements",
    (
        Field("event_id", required=True),
        Field("sku", required=True),
        Field("location", required=True),
        Field("delta", Kind.DECIMAL, required=True),
        Field(
            "reason",
            Kind.ENUM,
            values=(
                "sale", "return", "receipt", "adjustment", "reservation", "release",
                "transfer_out", "transfer_in", "count",
            ),
            description="what happened; `count` carries the counted level in `delta` (see docs/inventory.md)",
        ),  # fmt: skip
        Field("occurred_at", Kind.DATETIME, description="when it happened on the device (not when it arrived)"),
        Field("source", description="the system or device that recorded it"),
        Field("sequence", Kind.DECIMAL, description="the source's own running number"),
        Field("reservation_id", description="the reservation a reservation, release or sale belongs to"),
        Field("expires_at", Kind.DATETIME, description="when a reservation lapses unless fulfilled"),
        Field(
            "bucket",
            Kind.ENUM,
            values=("on_hand", "unavailable", "incoming"),
            description="the quantity an adjustment or count changes (default on_hand)",
        ),
        Field("counterpart", description="the other location of a transfer (its incoming quantity follows)"),
    ),
    key=("event_id",),
    partition_by=("sku",),
)

AVAILABILITY = Entity(
    "availability",
    (
        Field("sku", required=True),
        Field("channel", required=True),
        Field("quantity", Kind.DECIMAL, description="what the channel may sell, after its rules; never negative"),
        Field("computed_at", Kind.DATETIME),
        Field("version", Kind.DECIMAL, description="the ledger position it was computed at"),
    ),
    key=("sku", "channel"),
    description="sellable quantity per sales channel, derived by `kanal inventory` from stock_movements",
)

ENTITIES: dict[str, Entity] = {
    e.name: e for e in (CUSTOMER, PRODUCT, PRICE, STOCK_LEVEL, STOCK_MOVEMENT, AVAILABILITY)
}


def entity(name: str) -> Entity:
    """Look an entity up by name; the KeyError names the valid ones."""
    try:
        return ENTITIES[name]
    except KeyError:
        raise KeyError(f"unknown entity {name!r} (known: {', '.join(ENTITIES)})") from None


class Address(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    street: str | None = None
    zip: str | None = None
    city: str | None = None
    country: str | None = None


class Addresses(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    billing: Address | None = None
    shipping: Address | None = None


_PY_TYPES: dict[Kind, Any] = {
    Kind.TEXT: str,
    Kind.DECIMAL: Decimal,
    Kind.FLOAT: float,
    Kind.BOOL: bool,
    Kind.DATETIME: dt.datetime,
    Kind.JSON: str,
    Kind.CURRENCY: str,
    Kind.ENUM: str,
    Kind.ADDRESSES: Addresses,
}


def _pydantic_model(e: Entity) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for f in e.fields:
        py = _PY_TYPES[f.kind]
        fields[f.name] = (py, ...) if f.required else (py | None, None)
    name = "".join(part.capitalize() for part in e.name.rstrip("s").split("_"))
    return create_model(name, __config__=ConfigDict(frozen=True, extra="forbid"), **fields)


MODELS: dict[str, type[BaseModel]] = {name: _pydantic_model(e) for name, e in ENTITIES.items()}
