"""One consistent snapshot shared by every reader of a migration (`export_snapshot` / `join_snapshot`)."""

from __future__ import annotations

import polars as pl
import pytest

from kanal.connectors.postgres import PostgresConfig, PostgresSource, PostgresSourceOptions
from kanal.core.connector import Chunk
from kanal.core.errors import ConnectorError
from tests.conftest import Databases

_ROWS = 6_000


def _seed(dbs: Databases) -> None:
    dbs.erp_sql("create table erp_stock (sku text primary key, location text, on_hand numeric(12,3), updated_at timestamptz)")
    dbs.erp_sql(f"insert into erp_stock select 'S' || g, 'A', g, now() from generate_series(1, {_ROWS}) g")


def _skus(source: PostgresSource, opts: PostgresSourceOptions, chunk: Chunk) -> list[str]:
    return [sku for frame in source.snapshot("stock_levels", opts, chunk) for sku in frame.get_column("sku")]


def _page(dbs: Databases, sku: str) -> int:
    return dbs.erp_sql("select (ctid::text::point)[0]::int from erp_stock where sku = %s", (sku,))[0][0]


def test_a_row_an_update_moves_into_a_chunk_already_read_is_read_exactly_once(dbs: Databases) -> None:
    """Two readers in one exported snapshot: the moved row's old version is still where it was."""
    _seed(dbs)
    opts = PostgresSourceOptions(table="erp_stock", chunk_rows=1_000)
    first, second = PostgresSource(PostgresConfig(dsn=dbs.erp)), PostgresSource(PostgresConfig(dsn=dbs.erp))
    try:
        chunks = first.plan("stock_levels", opts)
        assert len(chunks) >= 4
        token = first.export_snapshot()
        second.join_snapshot(token)
        skus = _skus(second, opts, chunks[-1])  # the last chunk first, as a parallel reader may
        assert _page(dbs, "S1") < chunks[1].spec["from"]
        dbs.erp_sql("update erp_stock set on_hand = -1 where sku = 'S1'")  # page 0 is full: the new version goes last
        assert _page(dbs, "S1") >= chunks[-1].spec["from"]
        for i, chunk in enumerate(chunks[:-1]):
            skus += _skus(first if i % 2 else second, opts, chunk)
        assert len(skus) == _ROWS
        assert set(skus) == {f"S{g}" for g in range(1, _ROWS + 1)}
    finally:
        first.close()
        second.close()


def test_a_released_snapshot_cannot_be_joined_and_says_why(dbs: Databases) -> None:
    _seed(dbs)
    opts = PostgresSourceOptions(table="erp_stock", chunk_rows=1_000)
    first, second = PostgresSource(PostgresConfig(dsn=dbs.erp)), PostgresSource(PostgresConfig(dsn=dbs.erp))
    try:
        chunks = first.plan("stock_levels", opts)
        token = first.export_snapshot()
        assert token is not None
        first.release_snapshot()
        assert dbs.erp_sql("select count(*) from pg_stat_activity where state = 'idle in transaction'")[0][0] == 0
        second.join_snapshot(token)
        with pytest.raises(ConnectorError, match=f"snapshot {token} .*no longer open"):
            list(second.snapshot("stock_levels", opts, chunks[0]))
        assert pl.concat(list(first.snapshot("stock_levels", opts, chunks[0]))).height > 0  # released: reads as before
    finally:
        first.close()
        second.close()
