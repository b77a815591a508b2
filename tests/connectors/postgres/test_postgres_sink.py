"""PostgreSQL sink against a real server: creation, upsert, version checks, bulk load."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pytest

from kanal.connectors.postgres import PostgresConfig, PostgresSink, PostgresSinkOptions
from kanal.core import model
from kanal.core.errors import BatchRejected, ConfigError
from kanal.core.validate import conform, split

T1 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
T2 = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


def _prices(rows: list[dict]) -> pl.DataFrame:
    valid, invalid = split(conform(pl.DataFrame(rows), model.PRICE))
    assert invalid.is_empty()
    return valid


def _row(sku: str, amount: str, at: dt.datetime, customer: str | None = None) -> dict:
    return {"sku": sku, "price_list": "base", "customer_no": customer, "currency": "EUR", "min_qty": "1",
            "amount": amount, "updated_at": at}


def _existing_table(dbs) -> None:
    dbs.shop_sql(
        """create table shop_prices (sku text, price_list text, customer_no text, currency text, min_qty numeric,
           amount numeric, updated_at timestamptz, unique nulls not distinct (sku, price_list, customer_no, currency, min_qty))"""
    )


def test_upsert_never_lets_an_older_version_win(dbs) -> None:
    _existing_table(dbs)
    sink = PostgresSink(PostgresConfig(dsn=dbs.shop))
    opts = PostgresSinkOptions(table="shop_prices")
    sink.prepare("prices", opts)
    first = sink.write("prices", opts, _prices([_row("A", "2.00", T2), _row("B", "1.00", T1)]), "b1")
    assert first.written == 2
    second = sink.write("prices", opts, _prices([_row("A", "1.50", T1), _row("B", "1.10", T2)]), "b2")
    assert (second.written, second.skipped_older) == (1, 1)
    assert dbs.shop_sql("select sku, amount::text from shop_prices order by sku") == [("A", "2.00"), ("B", "1.10")]


def test_null_key_parts_upsert_as_one_row(dbs) -> None:
    _existing_table(dbs)
    sink = PostgresSink(PostgresConfig(dsn=dbs.shop))
    opts = PostgresSinkOptions(table="shop_prices")
    sink.prepare("prices", opts)
    sink.write("prices", opts, _prices([_row("A", "1.00", T1)]), "b1")
    sink.write("prices", opts, _prices([_row("A", "3.00", T2)]), "b2")
    assert dbs.shop_sql("select customer_no, amount::text from shop_prices") == [(None, "3.00")]


def test_duplicate_keys_in_one_batch_keep_the_newest(dbs) -> None:
    _existing_table(dbs)
    sink = PostgresSink(PostgresConfig(dsn=dbs.shop))
    opts = PostgresSinkOptions(table="shop_prices")
    sink.prepare("prices", opts)
    sink.write("prices", opts, _prices([_row("A", "9.00", T2), _row("A", "1.00", T1)]), "b1")
    assert dbs.shop_sql("select amount::text from shop_prices") == [("9.00",)]


def test_created_table_bulk_loads_then_builds_key_keeping_newest(dbs) -> None:
    sink = PostgresSink(PostgresConfig(dsn=dbs.shop))
    opts = PostgresSinkOptions(table="shop_prices")
    sink.prepare("prices", opts)
    sink.write("prices", opts, _prices([_row("A", "2.00", T2, "C1"), _row("B", "1.00", T1)]), "b1")
    sink.write("prices", opts, _prices([_row("A", "1.00", T1, "C1")]), "b1-again")  # re-delivery of an older one
    note = sink.finish("prices", opts)
    assert note is not None and "1 re-delivered duplicates removed" in note
    assert dbs.shop_sql("select sku, amount::text from shop_prices order by sku") == [("A", "2.00"), ("B", "1.00")]
    key = dbs.shop_sql("select pg_get_constraintdef(oid) from pg_constraint where conrelid = 'shop_prices'::regclass")
    assert key == [("UNIQUE NULLS NOT DISTINCT (sku, price_list, customer_no, currency, min_qty)",)]
    # after finish the table is an ordinary upsert target
    sink2 = PostgresSink(PostgresConfig(dsn=dbs.shop))
    sink2.prepare("prices", opts)
    assert sink2.write("prices", opts, _prices([_row("A", "3.00", T2, "C1")]), "b3").written == 1


def test_products_get_a_primary_key_and_jsonb_columns(dbs) -> None:
    sink = PostgresSink(PostgresConfig(dsn=dbs.shop))
    opts = PostgresSinkOptions(table="shop_products")
    sink.prepare("products", opts)
    frame, _ = split(conform(pl.DataFrame({"sku": ["A"], "attributes": ['{"color": "red"}'], "active": ["t"]}), model.PRODUCT))
    sink.write("products", opts, frame, "b1")
    sink.finish("products", opts)
    assert dbs.shop_sql("select attributes->>'color', active from shop_products") == [("red", True)]
    assert dbs.shop_sql("select contype from pg_constraint where conrelid = 'shop_products'::regclass") == [("p",)]


def test_customer_addresses_land_as_jsonb(dbs) -> None:
    sink = PostgresSink(PostgresConfig(dsn=dbs.shop))
    opts = PostgresSinkOptions(table="shop_customers")
    sink.prepare("customers", opts)
    frame, _ = split(conform(pl.DataFrame(
        {"customer_no": ["1"], "addresses": ['{"billing": {"street": "Main 1", "city": "Berlin", "country": "DE"}}']}
    ), model.CUSTOMER))
    sink.write("customers", opts, frame, "b1")
    assert dbs.shop_sql("select addresses->'billing'->>'city' from shop_customers") == [("Berlin",)]


def test_data_the_target_refuses_is_batch_rejected(dbs) -> None:
    dbs.shop_sql("create table shop_prices (sku varchar(3) primary key, currency text, amount numeric, updated_at timestamptz)")
    sink = PostgresSink(PostgresConfig(dsn=dbs.shop))
    opts = PostgresSinkOptions(table="shop_prices")
    sink.prepare("prices", opts)
    with pytest.raises(BatchRejected, match="too long"):
        sink.write("prices", opts, _prices([_row("TOOLONG", "1", T1)]), "b1")
    assert sink.write("prices", opts, _prices([_row("OK", "1", T1)]), "b2").written == 1


def test_existing_table_without_key_is_refused_clearly(dbs) -> None:
    dbs.shop_sql("create table shop_prices (sku text, amount numeric)")
    sink = PostgresSink(PostgresConfig(dsn=dbs.shop))
    with pytest.raises(ConfigError, match="has no primary key or unique index"):
        sink.prepare("prices", PostgresSinkOptions(table="shop_prices"))


def test_two_workers_finishing_one_table_with_duplicates_at_once_build_one_key(dbs) -> None:
    """Each worker of a shared migration builds the keys when it sees the migration complete, often at the same moment.

    Both find the re-delivered duplicates; removing them at once used to deadlock, and the failed worker's retry ran
    in its aborted transaction.
    """
    opts = PostgresSinkOptions(table="shop_prices")
    sinks = [PostgresSink(PostgresConfig(dsn=dbs.shop)) for _ in range(2)]
    for sink in sinks:
        sink.prepare("prices", opts)
    rows = [_row(f"S{i:05d}", "1.00", T1) for i in range(20_000)]
    sinks[0].write("prices", opts, _prices(rows), "b1")
    sinks[1].write("prices", opts, _prices(rows), "b1-again")  # both workers read the chunk
    start = threading.Barrier(2)

    def finish(sink: PostgresSink) -> str | None:
        start.wait()
        return sink.finish("prices", opts)

    with ThreadPoolExecutor(2) as pool:
        notes = sorted(str(n) for n in pool.map(finish, sinks))
    assert notes == ["key built on shop_prices, 20000 re-delivered duplicates removed", "key on shop_prices built by another worker"]
    assert dbs.shop_sql("select count(*) from shop_prices") == [(20_000,)]
