"""Stock movements: the one input of real-time stock, checked and turned into effects on quantities.

A movement says what happened at a location (`reason`), by how much
(`delta`, whole units, signed as the change of the quantity concerned) and
when it happened on the device (`occurred_at`). What each reason changes:

| reason | delta | changes |
|---|---|---|
| `sale` | ≤ 0 | on_hand; with `reservation_id`, fulfils that reservation (its reserved units become the sale) |
| `return` | ≥ 0 | on_hand |
| `receipt` | ≥ 0 | on_hand; with `bucket: incoming` the units were incoming and leave that quantity |
| `adjustment` | any | the quantity named by `bucket` (on_hand by default; `unavailable` for damaged or in quality control, `incoming` for announced supply) |
| `transfer_out` | ≤ 0 | on_hand; with `counterpart` the units become incoming at that location |
| `transfer_in` | ≥ 0 | on_hand; with `counterpart` they leave this location's incoming |
| `count` | ≥ 0 | sets the `bucket` quantity (on_hand by default) to `delta` as of `occurred_at` |
| `reservation` | ≤ 0 | reserved (by -delta) under `reservation_id` |
| `release` | ≥ 0 | gives back up to `delta` reserved units of `reservation_id` |

Checks are polars expressions over a whole batch: no Python runs per
movement. A movement that breaks a rule is not applied; it comes back with
its reason (`REJECTED`). The ledger turns the checked movements into their
effects in SQL, as the table above says.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import polars as pl

REASONS = (
    "sale", "return", "receipt", "adjustment", "reservation", "release", "transfer_out", "transfer_in", "count",
)  # fmt: skip
BUCKETS = ("on_hand", "unavailable", "incoming")
REJECTED = "_kanal_reason"
_NEGATIVE = ("sale", "transfer_out", "reservation")
_POSITIVE = ("return", "receipt", "transfer_in", "release", "count")
BUCKETED = ("adjustment", "count")
"""Reasons whose `bucket` names the quantity they change."""

MOVEMENT_SCHEMA = pl.Schema(
    {
        "event_id": pl.String,
        "sku": pl.String,
        "location": pl.String,
        "delta": pl.Int64,
        "reason": pl.String,
        "occurred_us": pl.Int64,
        "source": pl.String,
        "sequence": pl.String,
        "reservation_id": pl.String,
        "expires_us": pl.Int64,
        "bucket": pl.String,
        "counterpart": pl.String,
    }
)
"""A checked batch, as the ledger stores it (times in epoch microseconds, UTC)."""


@dataclass(frozen=True, slots=True)
class Movement:
    """One stock movement (see the module docstring for what each reason means)."""

    event_id: str
    sku: str
    location: str
    delta: int
    reason: str
    occurred_at: dt.datetime | None = None
    source: str | None = None
    sequence: int | None = None
    reservation_id: str | None = None
    expires_at: dt.datetime | None = None
    bucket: str | None = None
    counterpart: str | None = None


def movements_frame(movements: Sequence[Movement]) -> pl.DataFrame:
    """Movements as a canonical `stock_movements` frame (what the aggregator reads from Kafka)."""
    rows = [asdict(m) for m in movements]
    schema = {
        "event_id": pl.String, "sku": pl.String, "location": pl.String, "delta": pl.Int64, "reason": pl.String,
        "occurred_at": pl.Datetime("us", "UTC"), "source": pl.String, "sequence": pl.Int64,
        "reservation_id": pl.String, "expires_at": pl.Datetime("us", "UTC"), "bucket": pl.String,
        "counterpart": pl.String,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row")


def _epoch_us(frame: pl.DataFrame, column: str, default: pl.Expr) -> pl.Expr:
    if column not in frame.columns:
        return default
    dtype = frame.schema[column]
    if isinstance(dtype, pl.Datetime):
        value = pl.col(column).dt.epoch("us")
    elif dtype.is_integer():
        value = pl.col(column).cast(pl.Int64)
    else:
        value = pl.col(column).cast(pl.String).str.to_datetime(time_zone="UTC", strict=False).dt.epoch("us")
    return value.fill_null(default) if column == "occurred_at" else value


def _text(frame: pl.DataFrame, column: str) -> pl.Expr:
    return pl.col(column).cast(pl.String) if column in frame.columns else pl.lit(None, pl.String)


@functools.cache
def _rule() -> pl.Expr:
    """The first rule a typed movement breaks, as its reason (None: valid); built once, it is the same for every batch."""
    reason, delta, bucket = pl.col("reason"), pl.col("delta"), pl.col("bucket")
    return (
        pl.when(pl.col("event_id").is_null() | (pl.col("event_id") == ""))
        .then(pl.lit("event_id is empty"))
        .when(pl.col("sku").is_null() | pl.col("location").is_null())
        .then(pl.lit("sku and location are required"))
        .when(~reason.is_in(REASONS) | reason.is_null())
        .then(pl.lit("reason must be one of " + ", ".join(REASONS)))
        .when(pl.col("_raw").is_null())
        .then(pl.lit("delta is not a number"))
        .when(pl.col("_raw") != pl.col("_raw").round(0))
        .then(pl.lit("delta must be whole units"))
        .when(reason.is_in(_NEGATIVE) & (delta > 0))
        .then(pl.concat_str(reason, pl.lit(" needs a delta of 0 or less (units leave)")))
        .when(reason.is_in(_POSITIVE) & (delta < 0))
        .then(pl.concat_str(reason, pl.lit(" needs a delta of 0 or more")))
        .when(reason.is_in(("reservation", "release")) & pl.col("reservation_id").is_null())
        .then(pl.concat_str(reason, pl.lit(" needs a reservation_id")))
        .when(bucket.is_not_null() & ~bucket.is_in(BUCKETS))
        .then(pl.lit("bucket must be one of " + ", ".join(BUCKETS)))
        .when(bucket.is_not_null() & (bucket != "on_hand") & ~reason.is_in((*BUCKETED, "receipt")))
        .then(pl.concat_str(pl.lit("bucket applies to adjustment, count and receipt, not to "), reason))
        .when((reason == "receipt") & (bucket == "unavailable"))
        .then(pl.lit("a receipt's bucket can only be incoming (the units were announced)"))
        .when(pl.col("counterpart").is_not_null() & ~reason.is_in(("transfer_out", "transfer_in")))
        .then(pl.lit("counterpart applies to transfers only"))
        .otherwise(pl.lit(None, pl.String))
        .alias(REJECTED)
    )


def check(frame: pl.DataFrame, now_us: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A canonical `stock_movements` frame -> (valid movements in `MOVEMENT_SCHEMA`, rejected rows with their reason).

    Duplicates of one event_id within the batch keep the first. A missing
    `occurred_at` becomes `now_us` (arrival time), which the ledger records,
    so replaying the ledger gives the same result.
    """
    raw_delta = pl.col("delta").cast(pl.Float64, strict=False)
    typed = frame.lazy().select(
        _text(frame, "event_id").alias("event_id"),
        _text(frame, "sku").alias("sku"),
        _text(frame, "location").alias("location"),
        raw_delta.alias("_raw"),
        raw_delta.round(0).cast(pl.Int64, strict=False).alias("delta"),
        _text(frame, "reason").alias("reason"),
        _epoch_us(frame, "occurred_at", pl.lit(now_us, pl.Int64)).alias("occurred_us"),
        _text(frame, "source").alias("source"),
        _text(frame, "sequence").alias("sequence"),
        _text(frame, "reservation_id").alias("reservation_id"),
        _epoch_us(frame, "expires_at", pl.lit(None, pl.Int64)).alias("expires_us"),
        _text(frame, "bucket").alias("bucket"),
        _text(frame, "counterpart").alias("counterpart"),
    ).unique("event_id", keep="first", maintain_order=True)
    # Few collects: a small batch (a till's request) pays polars' fixed cost per collect, not per row.
    tagged = typed.with_columns(_rule()).collect()
    valid = tagged.lazy().filter(pl.col(REJECTED).is_null()).select(list(MOVEMENT_SCHEMA)).cast(dict(MOVEMENT_SCHEMA))
    rejected = tagged.filter(pl.col(REJECTED).is_not_null()).drop("_raw")
    return valid.collect(), rejected
