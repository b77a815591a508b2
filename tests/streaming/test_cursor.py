"""Cursor deltas (`delta: {cursor: updated_at}`): overlap without duplicates, late commits found."""

from __future__ import annotations

import json

import psycopg
import pytest

from kanal.connectors.postgres import PostgresConfig, PostgresSource, PostgresSourceOptions
from kanal.core.connector import CursorDelta, DeltaContext
from kanal.core.errors import ConfigError
from tests.conftest import Cli, Databases
from tests.streaming import erp


def _aged(dbs: Databases, products: int) -> None:
    """Seed, with every row last changed an hour ago (outside any overlap window)."""
    erp.seed(dbs.erp, products=products)
    for table in ("erp_products", "erp_prices", "erp_stock"):
        dbs.erp_sql(f"update {table} set updated_at = now() - interval '1 hour'")


def _reader(dbs: Databases, overlap_s: float = 60):
    source = PostgresSource(PostgresConfig(dsn=dbs.erp))
    options = PostgresSourceOptions(table="erp_stock", delta=CursorDelta(cursor="updated_at", overlap_s=overlap_s))
    return source, source.delta(DeltaContext("cursor-test", {"stock_levels": options}))


def test_overlap_rereads_rows_but_hands_each_version_out_once(dbs: Databases) -> None:
    _aged(dbs, 20)
    source, reader = _reader(dbs)
    try:
        position = reader.start()
        dbs.erp_sql("update erp_stock set on_hand = 1, updated_at = clock_timestamp() where sku in ('P1', 'P2')")
        first = reader.read(position)
        assert first.frames["stock_levels"].height == 4
        again = reader.read(first.position)  # the same rows are inside the overlap window
        assert again.frames == {}
        dbs.erp_sql("update erp_stock set on_hand = 2, updated_at = clock_timestamp() where sku = 'P1' and location = 'A'")
        third = reader.read(again.position)
        assert third.frames["stock_levels"].select("sku", "location", "on_hand").rows() == [("P1", "A", "2.000")]
    finally:
        reader.close()
        source.close()


def test_a_late_commit_with_an_older_timestamp_is_found(dbs: Databases) -> None:
    """`now()` is the start of a transaction: a long one commits rows older than the last cursor seen."""
    _aged(dbs, 5)
    source, reader = _reader(dbs, overlap_s=30)
    try:
        position = reader.start()
        dbs.erp_sql("update erp_stock set on_hand = 7, updated_at = now() where sku = 'P2'")
        position = reader.read(position).position
        dbs.erp_sql("update erp_stock set on_hand = 9, updated_at = now() - interval '10 seconds' where sku = 'P3'")
        late = reader.read(position)
        assert sorted(late.frames["stock_levels"].get_column("sku").to_list()) == ["P3", "P3"]
    finally:
        reader.close()
        source.close()


def test_cursor_sync_end_to_end(cli: Cli, dbs: Databases) -> None:
    _aged(dbs, 200)
    cli.write_job(erp.job(delta=erp.CURSOR))
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    cli.run("migrate", "job.yaml", "--quiet", check=True)
    dbs.erp_sql("update erp_stock set on_hand = on_hand + 5, updated_at = clock_timestamp() where sku like 'P1%'")
    dbs.erp_sql("update erp_prices set amount = 1, updated_at = clock_timestamp() where sku = 'P7'")
    dbs.erp_sql("insert into erp_products values ('NEW', 'New', '1', true, clock_timestamp())")
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    diff = erp.differences(dbs.erp, dbs.shop)
    assert diff == {"products": 0, "prices": 0, "stock": 0}
    again = cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert "0 changes" in again.stdout  # the overlap re-reads rows; none is handed out twice


def _keys(changes) -> list[tuple[str, str]]:
    frame = changes.frames.get("stock_levels")
    return [] if frame is None else sorted(frame.select("sku", "location").rows())


def test_a_row_stamped_in_the_future_does_not_hide_later_changes(dbs: Databases) -> None:
    """The stored cursor never passes the source's clock; the future row is handed out once."""
    _aged(dbs, 5)
    source, reader = _reader(dbs, overlap_s=1)
    try:
        position = reader.start()
        dbs.erp_sql("update erp_stock set on_hand = 1, updated_at = now() + interval '1 day' where sku = 'P1' and location = 'A'")
        first = reader.read(position)
        assert _keys(first) == [("P1", "A")]
        dbs.erp_sql("update erp_stock set on_hand = 2, updated_at = clock_timestamp() where sku = 'P2' and location = 'A'")
        second = reader.read(first.position)
        assert _keys(second) == [("P2", "A")]  # found, and the future row is not sent again
        assert reader.read(second.position).frames == {}
    finally:
        reader.close()
        source.close()


def test_a_row_changed_back_while_its_cursor_stays_put_is_handed_out_again(dbs: Databases) -> None:
    """An ERP stamping `greatest(updated_at, now())` keeps a future cursor while the row changes: 1, 2, then 1 again.

    The third content equals the first, which was handed out under the same
    cursor; only the row's own last content (2) may count as a re-read, or
    the targets keep 2 while the source holds 1.
    """
    _aged(dbs, 5)
    source, reader = _reader(dbs, overlap_s=1)
    row = "where sku = 'P1' and location = 'A'"
    dbs.erp_sql(f"update erp_stock set updated_at = now() + interval '1 day' {row}")  # a clock ahead, once
    try:
        position = reader.start()
        handed = []
        for on_hand in (1, 2, 1):
            dbs.erp_sql(f"update erp_stock set on_hand = {on_hand}, updated_at = greatest(updated_at, now()) {row}")
            changes = reader.read(position)
            frame = changes.frames.get("stock_levels")
            handed.append(None if frame is None else frame.get_column("on_hand").to_list())
            position = json.loads(json.dumps(changes.position))  # as stored: across a restart too
        assert handed == [["1.000"], ["2.000"], ["1.000"]]
        assert reader.read(position).frames == {}  # and a plain re-read is still dropped
    finally:
        reader.close()
        source.close()


def test_a_transaction_open_longer_than_the_overlap_is_reported_and_its_rows_found(dbs: Databases) -> None:
    """Rows carry their transaction's start (`now()`): the cursor waits for a writing transaction still open."""
    _aged(dbs, 5)
    source, reader = _reader(dbs, overlap_s=0)
    try:
        position = reader.start()
        with psycopg.connect(dbs.erp, autocommit=True, application_name="erp-batch") as batch, batch.transaction():
            batch.execute("update erp_stock set on_hand = 5, updated_at = now() where sku = 'P1' and location = 'A'")
            dbs.erp_sql("update erp_stock set on_hand = 6, updated_at = clock_timestamp() where sku = 'P2' and location = 'A'")
            first = reader.read(position)
            assert _keys(first) == [("P2", "A")]
            with pytest.raises(ConfigError, match=r"erp-batch.*overlap_s of stock_levels.*raise `overlap_s`"):
                reader.check()
            assert "erp-batch" in reader.status()["long transactions"]
        second = reader.read(first.position)  # the batch committed rows older than the newest cursor seen
        assert _keys(second) == [("P1", "A")]
        assert reader.status()["long transactions"] == "none"
    finally:
        reader.close()
        source.close()


@pytest.mark.parametrize("table", ["erp_stock", "erp_stock_view"])
def test_more_rows_than_a_page_sharing_one_timestamp_are_paged_once_each(dbs: Databases, table: str) -> None:
    """A bulk update stamps every row with one `now()`; pages continue after the last (cursor, tiebreak).

    A view has neither key nor ctid: the tiebreak (the row's md5) needs neither.
    """
    _aged(dbs, 170)
    dbs.erp_sql("create view erp_stock_view as select * from erp_stock")
    source = PostgresSource(PostgresConfig(dsn=dbs.erp, delta_rows=100))
    options = PostgresSourceOptions(table=table, delta=CursorDelta(cursor="updated_at", overlap_s=60))
    context = DeltaContext("cursor-test", {"stock_levels": options})
    reader = source.delta(context)
    try:
        position = reader.start()
        dbs.erp_sql("update erp_stock set on_hand = 3, updated_at = now()")
        keys: list[tuple[str, str]] = []
        for _ in range(10):
            changes = reader.read(position)
            assert changes.rows <= 100
            keys += _keys(changes)
            position = json.loads(json.dumps(changes.position))  # as stored: a restart resumes mid-page
            if not changes.rows:
                break
            reader.close()
            reader = source.delta(context)
        assert sorted(keys) == sorted(dbs.erp_sql("select sku, location from erp_stock"))
        assert len(keys) == 340
    finally:
        reader.close()
        source.close()


def test_kanal_check_and_status_name_a_transaction_longer_than_the_overlap(cli: Cli, dbs: Databases) -> None:
    _aged(dbs, 5)
    cli.write_job(erp.job(delta="{cursor: updated_at, overlap_s: 0}"))
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert "ready" in cli.run("check", "job.yaml", check=True).stdout
    with psycopg.connect(dbs.erp, autocommit=True, application_name="erp-batch") as batch, batch.transaction():
        batch.execute("update erp_stock set on_hand = 5, updated_at = now() where sku = 'P1'")
        checked = cli.run("check", "job.yaml")
        status = cli.run("status", "job.yaml", "--json")
    assert checked.returncode != 0
    assert "erp-batch" in checked.stdout and "raise `overlap_s`" in " ".join(checked.stdout.split())
    assert "erp-batch" in status.stdout and "longer than overlap_s" in status.stdout
