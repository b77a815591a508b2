"""PostgreSQL sink applying truncates (once, with a floor against late older records), and
deletes on an existing table that compares `updated_at` (deletes carry no version column)."""

from __future__ import annotations

import polars as pl

from kanal.connectors.postgres import PostgresConfig, PostgresSink, PostgresSinkOptions
from kanal.core import model
from kanal.core.changes import conform_changes
from kanal.core.connector import OP, VERSION
from tests.conftest import Databases


def _changes(rows: list[tuple[str, str | None, str | None, int]]) -> pl.DataFrame:
    """(op, sku, on_hand, version) rows of stock levels at location A; a truncate has no fields."""
    frame = pl.DataFrame(
        {
            "sku": [r[1] for r in rows],
            "location": [None if r[0] == "truncate" else "A" for r in rows],
            "on_hand": [r[2] for r in rows],
            "updated_at": ["2026-01-01T00:00:00Z" if r[0] == "upsert" else None for r in rows],
            OP: [r[0] for r in rows],
            VERSION: [r[3] for r in rows],
        },
        schema_overrides={"sku": pl.String, "on_hand": pl.String, "location": pl.String, "updated_at": pl.String},
    )
    valid, invalid = conform_changes(frame, model.STOCK_LEVEL, lambda f: f)
    assert invalid.is_empty()
    return valid


def _sink(dbs: Databases) -> tuple[PostgresSink, PostgresSinkOptions]:
    sink = PostgresSink(PostgresConfig(dsn=dbs.shop))
    opts = PostgresSinkOptions(table="shop_stock")
    sink.prepare("stock_levels", opts)
    sink.finish("stock_levels", opts)
    return sink, opts


def _skus(dbs: Databases) -> list[str]:
    return [r[0] for r in dbs.shop_sql("select sku from shop_stock order by sku")]


def test_a_truncate_removes_older_rows_once_and_older_records_never_come_back(dbs: Databases) -> None:
    sink, opts = _sink(dbs)
    other, _ = _sink(dbs)  # the writer of another partition
    sink.write("stock_levels", opts, _changes([("upsert", "OLD1", "1", 10), ("upsert", "OLD2", "1", 11)]), "b1")
    result = sink.write("stock_levels", opts, _changes([("truncate", None, None, 20), ("upsert", "NEW1", "1", 21)]), "b2")
    assert result.written == 2
    assert _skus(dbs) == ["NEW1"]
    other.write("stock_levels", opts, _changes([("upsert", "LATE", "1", 15), ("upsert", "NEW2", "1", 22)]), "b3")
    assert _skus(dbs) == ["NEW1", "NEW2"]  # LATE was written before the truncate: gone
    again = other.write("stock_levels", opts, _changes([("truncate", None, None, 20)]), "b4")  # its own copy
    assert (again.written, again.skipped_older) == (0, 1)
    assert _skus(dbs) == ["NEW1", "NEW2"]  # not applied twice: NEW2 came after it
    sink.write("stock_levels", opts, _changes([("upsert", "OLD1", "9", 10), ("delete", "NEW1", None, 19)]), "b5")  # a replay
    assert _skus(dbs) == ["NEW1", "NEW2"]
    assert dbs.shop_sql("select version from _kanal_floor where target = 'shop_stock'") == [(20,)]


def test_a_truncate_on_an_existing_table_without_kanal_version(dbs: Databases) -> None:
    dbs.shop_sql(
        "create table shop_stock (sku text, location text, on_hand numeric, updated_at timestamptz, primary key (sku, location))"
    )
    sink, opts = _sink(dbs)
    sink.write("stock_levels", opts, _changes([("upsert", "OLD", "1", 10)]), "b1")
    sink.write("stock_levels", opts, _changes([("truncate", None, None, 20), ("upsert", "NEW", "1", 21)]), "b2")
    sink.write("stock_levels", opts, _changes([("upsert", "LATE", "1", 15)]), "b3")
    assert _skus(dbs) == ["NEW"]


def test_deletes_apply_to_an_existing_table_compared_by_updated_at(dbs: Databases) -> None:
    """Delete rows carry only the key: a NULL `updated_at` must not read as "older"."""
    dbs.shop_sql(
        "create table shop_stock (sku text, location text, on_hand numeric, updated_at timestamptz, primary key (sku, location))"
    )
    sink, opts = _sink(dbs)
    sink.write("stock_levels", opts, _changes([("upsert", "S1", "5", 10), ("upsert", "S2", "5", 11)]), "b1")
    result = sink.write("stock_levels", opts, _changes([("delete", "S1", None, 12)]), "b2")
    assert result.written == 1
    assert _skus(dbs) == ["S2"]
