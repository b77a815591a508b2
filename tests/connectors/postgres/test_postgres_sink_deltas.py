"""PostgreSQL sink applying change frames: deletes, per-key order inside a batch, `_kanal_version` checks."""

from __future__ import annotations

import polars as pl

from kanal.connectors.postgres import PostgresConfig, PostgresSink, PostgresSinkOptions
from kanal.core import model
from kanal.core.changes import conform_changes
from kanal.core.connector import OP, VERSION


def _changes(rows: list[tuple[str, str, str | None, int]]) -> pl.DataFrame:
    """(op, sku, on_hand, version) rows of stock levels at location A."""
    frame = pl.DataFrame(
        {
            "sku": [r[1] for r in rows],
            "location": ["A"] * len(rows),
            "on_hand": [r[2] for r in rows],
            "updated_at": ["2026-01-01T00:00:00Z" if r[0] == "upsert" else None for r in rows],
            OP: [r[0] for r in rows],
            VERSION: [r[3] for r in rows],
        }
    )
    valid, invalid = conform_changes(frame, model.STOCK_LEVEL, lambda f: f)
    assert invalid.is_empty()
    return valid


def _stock(dbs) -> list[tuple]:
    return dbs.shop_sql("select sku, on_hand::text, _kanal_version from shop_stock order by sku")


def _sink(dbs) -> tuple[PostgresSink, PostgresSinkOptions]:
    sink = PostgresSink(PostgresConfig(dsn=dbs.shop))
    opts = PostgresSinkOptions(table="shop_stock")
    sink.prepare("stock_levels", opts)
    sink.finish("stock_levels", opts)  # the key is built: the table takes upserts and deletes
    return sink, opts


def test_update_then_delete_in_one_batch_deletes(dbs) -> None:
    sink, opts = _sink(dbs)
    sink.write("stock_levels", opts, _changes([("upsert", "S1", "5", 10), ("upsert", "S2", "7", 11)]), "b1")
    result = sink.write(
        "stock_levels", opts, _changes([("upsert", "S1", "6", 20), ("delete", "S1", None, 21), ("upsert", "S2", "8", 22)]), "b2"
    )
    assert result.written == 2
    assert _stock(dbs) == [("S2", "8", 22)]


def test_delete_then_insert_in_one_batch_keeps_the_row(dbs) -> None:
    sink, opts = _sink(dbs)
    sink.write("stock_levels", opts, _changes([("upsert", "S1", "5", 10)]), "b1")
    sink.write("stock_levels", opts, _changes([("delete", "S1", None, 20), ("upsert", "S1", "9", 21)]), "b2")
    assert _stock(dbs) == [("S1", "9", 21)]


def test_older_versions_never_overwrite_or_delete_newer_rows(dbs) -> None:
    sink, opts = _sink(dbs)
    sink.write("stock_levels", opts, _changes([("upsert", "S1", "5", 50), ("upsert", "S2", "5", 50)]), "b1")
    result = sink.write("stock_levels", opts, _changes([("upsert", "S1", "1", 40), ("delete", "S2", None, 49)]), "b2")
    assert (result.written, result.skipped_older) == (0, 2)
    assert _stock(dbs) == [("S1", "5", 50), ("S2", "5", 50)]


def test_replayed_changes_end_in_the_same_state(dbs) -> None:
    """At-least-once: the same sequence delivered twice leaves what one delivery leaves."""
    sink, opts = _sink(dbs)
    batches = [
        _changes([("upsert", "S1", "1", 1), ("upsert", "S2", "1", 2)]),
        _changes([("upsert", "S1", "2", 3), ("delete", "S2", None, 4)]),
        _changes([("upsert", "S2", "3", 5)]),
    ]
    for batch in batches:
        sink.write("stock_levels", opts, batch, "x")
    once = _stock(dbs)
    for batch in batches:
        sink.write("stock_levels", opts, batch, "x")
    assert _stock(dbs) == once == [("S1", "2", 3), ("S2", "3", 5)]


def test_deletes_of_missing_rows_are_harmless(dbs) -> None:
    sink, opts = _sink(dbs)
    result = sink.write("stock_levels", opts, _changes([("delete", "NOPE", None, 5)]), "b1")
    assert (result.written, result.skipped_older) == (0, 1)
    assert _stock(dbs) == []
