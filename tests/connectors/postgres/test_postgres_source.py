"""PostgreSQL source against a real server: chunks cover every row exactly once."""

from __future__ import annotations

import polars as pl
import pytest

from kanal.connectors.postgres import PostgresConfig, PostgresSource, PostgresSourceOptions
from kanal.core import model
from kanal.core.errors import AuthError, ConfigError, Unreachable
from kanal.core.validate import conform, split


def _seed(dsn_sql, rows: int) -> None:
    dsn_sql(
        """create table erp_prices (sku text, price_list text, customer_no text, currency text, min_qty numeric(12,3),
           amount numeric(12,2), valid_from date, valid_to timestamp, updated_at timestamptz)"""
    )
    dsn_sql(
        f"""insert into erp_prices select 'S' || g, 'base', case when g % 3 = 0 then null else 'C' || g end, 'EUR',
            1, g / 100.0, date '2024-01-01', null, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'
            from generate_series(1, {rows}) g"""
    )


def test_plan_and_snapshot_read_every_row_once(dbs) -> None:
    _seed(dbs.erp_sql, 25_000)
    dbs.erp_sql("delete from erp_prices where sku like 'S1%'")  # holes in the pages
    source = PostgresSource(PostgresConfig(dsn=dbs.erp))
    opts = PostgresSourceOptions(table="erp_prices", chunk_rows=5_000)
    chunks = source.plan("prices", opts)
    assert len(chunks) >= 3
    assert len({c.id for c in chunks}) == len(chunks)
    frames = [f for c in chunks for f in source.snapshot("prices", opts, c)]
    frame = pl.concat(frames)
    expected = dbs.erp_sql("select count(*) from erp_prices")[0][0]
    assert frame.height == expected
    assert frame["sku"].n_unique() == expected
    valid, invalid = split(conform(frame, model.PRICE))
    assert invalid.is_empty()
    row = valid.filter(pl.col("sku") == "S3").row(0, named=True)
    assert row["customer_no"] is None and row["amount"] == "0.03" and row["min_qty"] == "1.000"
    assert str(row["valid_from"]) == "2024-01-01 00:00:00+00:00"
    assert str(row["updated_at"]) == "2024-01-01 00:00:03+00:00"
    source.close()


def test_rows_appended_after_planning_are_read_by_the_last_chunk(dbs) -> None:
    _seed(dbs.erp_sql, 20_000)
    source = PostgresSource(PostgresConfig(dsn=dbs.erp))
    opts = PostgresSourceOptions(table="erp_prices", chunk_rows=5_000)
    chunks = source.plan("prices", opts)
    dbs.erp_sql("insert into erp_prices (sku, currency, amount) select 'N' || g, 'EUR', 1 from generate_series(1, 3000) g")
    total = sum(f.height for c in chunks for f in source.snapshot("prices", opts, c))
    assert total == 23_000


def test_missing_table_is_a_clear_error(dbs) -> None:
    source = PostgresSource(PostgresConfig(dsn=dbs.erp))
    with pytest.raises(ConfigError, match="table public.nope does not exist"):
        source.plan("prices", PostgresSourceOptions(table="nope"))


def test_refused_login_is_an_auth_error_without_the_password(dbs) -> None:
    # pgserver trusts local sockets, so a refused login is an unknown role here (SQLSTATE 28000).
    dsn = dbs.erp.replace("postgres:@", "nobody_here:pw-not-shown@")
    with pytest.raises(AuthError, match="credentials refused") as info:
        PostgresSource(PostgresConfig(dsn=dsn)).check()
    assert "pw-not-shown" not in str(info.value)


def test_unreachable_server_is_transient() -> None:
    source = PostgresSource(PostgresConfig(dsn="postgresql://u:pw-secret@127.0.0.1:1/db", connect_timeout_s=2))
    with pytest.raises(Unreachable) as info:
        source.check()
    assert "pw-secret" not in str(info.value)


def test_infinite_timestamps_become_null(dbs) -> None:
    _seed(dbs.erp_sql, 3)
    dbs.erp_sql("update erp_prices set valid_to = 'infinity' where sku = 'S1'")
    source = PostgresSource(PostgresConfig(dsn=dbs.erp))
    opts = PostgresSourceOptions(table="erp_prices")
    frame = pl.concat([f for c in source.plan("prices", opts) for f in source.snapshot("prices", opts, c)])
    assert frame.filter(pl.col("sku") == "S1")["valid_to"].to_list() == [None]
    assert frame.height == 3
