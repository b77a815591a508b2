"""The CDC reader against a real PostgreSQL: bounded reads inside big transactions, schema
changes mid-read, the version of snapshot rows, and errors of the TOAST lookup."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import polars as pl
import psycopg
import pytest

from kanal.connectors.postgres import PostgresConfig, PostgresSourceOptions
from kanal.connectors.postgres.cdc import CdcReader
from kanal.connectors.postgres.pgoutput import lsn_int
from kanal.core.connector import OP, VERSION, DeltaContext
from kanal.core.errors import Unreachable
from tests.conftest import Databases
from tests.streaming import erp
from tests.waiting import wait_for

SLOT = "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'kanal_cdc_reader'"
Make = Callable[..., CdcReader]


@pytest.fixture
def make(dbs: Databases) -> Iterator[Make]:
    """Readers of the seeded ERP (products and stock levels); the slot is dropped afterwards."""
    erp.seed(dbs.erp, products=10)
    readers: list[CdcReader] = []

    def reader(delta_rows: int = 50_000) -> CdcReader:
        entities = {
            "products": PostgresSourceOptions(table="erp_products", delta="cdc"),
            "stock_levels": PostgresSourceOptions(table="erp_stock", delta="cdc"),
        }
        readers.append(CdcReader(PostgresConfig(dsn=dbs.erp, delta_rows=delta_rows), "erp", DeltaContext("cdc-reader", entities)))
        return readers[-1]

    yield reader
    for r in readers:
        r.close()
    reader().cleanup()
    readers[-1].close()


def test_one_big_transaction_is_read_in_bounded_pieces_and_resumed_inside_it(make: Make, dbs: Databases) -> None:
    reader = make(delta_rows=100)
    position = reader.start()
    before = dbs.erp_sql(SLOT)[0][0]
    dbs.erp_sql("insert into erp_stock select 'N' || g, 'A', g, now() from generate_series(1, 1000) g")  # one transaction
    seen: list[str] = []
    for _ in range(4):
        changes = reader.read(position)
        assert changes.rows == 100
        seen += changes.frames["stock_levels"].get_column("sku").to_list()
        position = changes.position
        reader.confirm(position)
    assert dbs.erp_sql(SLOT)[0][0] == before  # the slot moves only to transaction ends
    reader.close()

    resumed = make(delta_rows=100)  # a restart from the stored position continues inside the transaction
    resumed.start()
    while (changes := resumed.read(position)).rows:
        assert changes.rows <= 100
        seen += changes.frames["stock_levels"].get_column("sku").to_list()
        position = changes.position
        resumed.confirm(position)
    assert seen == [f"N{i}" for i in range(1, 1001)]  # each change once, in order
    assert lsn_int(dbs.erp_sql(SLOT)[0][0]) > lsn_int(before)


def test_a_column_added_between_two_changes_of_one_read(make: Make, dbs: Databases) -> None:
    reader = make()
    position = reader.start()
    dbs.erp_sql("insert into erp_products values ('B1', 'before', '1', true, now())")
    dbs.erp_sql("alter table erp_products add column brand text")
    dbs.erp_sql("insert into erp_products values ('B2', 'after', '2', true, now(), 'Acme')")
    for _ in range(2):  # and again, as after a restart
        frame = reader.read(position).frames["products"]
        assert frame.select("sku", "brand").rows() == [("B1", None), ("B2", "Acme")]


def test_snapshot_rows_are_not_older_than_changes_before_the_start_and_older_than_changes_after(make: Make, dbs: Databases) -> None:
    """Snapshot rows carry the start LSN, even against a transaction that was open when the slot was made.

    That transaction (T2 below) writes before the start LSN and commits after
    a snapshot began, so the snapshot misses it: its change must count as
    newer, or sinks would refuse it for good.
    """
    reader = make()
    first, second, third = (psycopg.connect(dbs.erp) for _ in range(3))
    try:
        first.execute("update erp_products set name = 'T1' where sku = 'P2'")  # open before the slot is made
        started: dict[str, dict] = {}
        creating = threading.Thread(target=lambda: started.setdefault("position", reader.start()))
        creating.start()
        _wait_for_xid_wait(dbs, first)
        third.execute("update erp_products set name = 'T3' where sku = 'P3'")  # starts while the slot waits
        first.commit()
        _wait_for_xid_wait(dbs, third)
        second.execute("update erp_products set name = 'T2' where sku = 'P1'")  # after the slot's snapshot point
        third.commit()
        creating.join(30)
        snapshot = dbs.erp_sql("select name from erp_products where sku = 'P1'")
        second.commit()
    finally:
        for conn in (first, second, third):
            conn.close()
    position = started["position"]
    version = pl.select(reader.snapshot_version("products", position)).item()
    assert version == lsn_int(position["lsn"])
    assert snapshot == [("Product 1",)]  # the snapshot missed T2
    changes = reader.read(position).frames["products"]
    assert changes.filter(pl.col("sku") == "P1").select("name", OP).rows() == [("T2", "upsert")]
    assert changes.get_column(VERSION).min() > version


def test_a_key_change_keeps_an_unchanged_large_value(make: Make, dbs: Databases) -> None:
    """The old key tuple has NULL where the new row has an unsent TOASTed value: read it from the table."""
    _toasted(dbs)
    reader = make()
    position = reader.start()
    dbs.erp_sql("update erp_products set sku = 'P1-renamed' where sku = 'P1'")
    frame = reader.read(position).frames["products"]
    assert frame.select("sku", OP, pl.col("long_text").str.len_chars()).rows() == [
        ("P1", "before", None),
        ("P1-renamed", "upsert", 10_000),
    ]


def test_a_connection_lost_during_the_toast_lookup_is_unreachable(make: Make, dbs: Databases) -> None:
    """The lookup of an unchanged large value runs inside error translation: it is retried, not a crash."""
    _toasted(dbs)
    reader = make()
    position = reader.start()
    dbs.erp_sql("update erp_products set name = 'renamed' where sku = 'P1'")  # long_text is not sent
    locker = psycopg.connect(dbs.erp)
    try:
        locker.execute("lock table erp_products in access exclusive mode")  # the lookup waits here
        failure: list[BaseException] = []
        reading = threading.Thread(target=lambda: _capture(failure, lambda: reader.read(position)))
        reading.start()
        pid = wait_for(
            lambda: dbs.erp_sql(
                "select pid from pg_stat_activity where wait_event_type = 'Lock' and query like 'select \"long_text\"%'"
            ),
            30,
            "the TOAST lookup to wait for the lock",
        )[0][0]
        dbs.erp_sql("select pg_terminate_backend(%s)", (pid,))
        reading.join(30)
    finally:
        locker.close()
    assert len(failure) == 1 and isinstance(failure[0], Unreachable), failure


def _toasted(dbs: Databases) -> None:
    """P1 gets a large value stored out of line, which updates that leave it alone do not send."""
    dbs.erp_sql("alter table erp_products add column long_text text")
    dbs.erp_sql("alter table erp_products alter column long_text set storage external")
    dbs.erp_sql(f"update erp_products set long_text = '{'x' * 10_000}' where sku = 'P1'")


def _capture(failures: list[BaseException], call: Callable[[], object]) -> None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        failures.append(exc)


def _wait_for_xid_wait(dbs: Databases, holder: psycopg.Connection) -> None:
    """Until the slot being created waits for the transaction of `holder` to end."""
    xid = holder.execute("select pg_current_xact_id()::text").fetchone()[0]
    wait_for(
        lambda: dbs.erp_sql("select 1 from pg_locks where not granted and transactionid::text = %s", (xid,)),
        30,
        f"the slot to wait for transaction {xid}",
    )


def test_workers_starting_together_set_up_the_publication_one_at_a_time(make: Make) -> None:
    """Two workers of one job start at once: both must get the position (no catalog-update race)."""
    readers = [make() for _ in range(4)]
    for round_ in range(5):
        if round_:
            readers[0].cleanup()  # drop slot and publication: the next round creates them again, all at once
        barrier = threading.Barrier(len(readers))
        errors: list[BaseException] = []

        def start(reader: CdcReader) -> None:
            barrier.wait(10)
            try:
                reader.start()
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(r,)) for r in readers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
