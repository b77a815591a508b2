"""Log-based CDC from PostgreSQL: order, deletes, heartbeats, and the clear messages for what must change."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pg
from tests.conftest import Cli, Databases
from tests.streaming import erp
from tests.waiting import wait_for

SLOT_LSN = "select confirmed_flush_lsn from pg_replication_slots where slot_name = 'kanal_erp_stream'"


def test_deletes_and_update_then_delete_order(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=50)
    cli.write_job(erp.job())
    first = cli.run("sync", "job.yaml", "--once", "--quiet", check=True)  # fixes the position (creates the slot)
    assert "0 changes" in first.stdout
    cli.run("migrate", "job.yaml", "--quiet", check=True)
    dbs.erp_sql(
        """begin;
           update erp_stock set on_hand = 500 where sku = 'P1' and location = 'A';
           delete from erp_stock where sku = 'P1' and location = 'A';
           commit;
           insert into erp_products values ('N1', 'New', '1', true, now());
           delete from erp_products where sku = 'N1';
           delete from erp_prices where sku = 'P2';
           update erp_products set name = 'Renamed' where sku = 'P3';
           delete from erp_stock where sku = 'P4';
           insert into erp_stock values ('P4', 'A', 1, now());
           update erp_stock set on_hand = 2 where sku = 'P4' and location = 'A';"""
    )
    second = cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert erp.differences(dbs.erp, dbs.shop) == {"products": 0, "prices": 0, "stock": 0}
    assert dbs.shop_sql("select count(*) from shop_stock where sku = 'P1' and location = 'A'") == [(0,)]
    assert dbs.shop_sql("select on_hand::int from shop_stock where sku = 'P4'") == [(2,)]
    assert dbs.shop_sql("select name from shop_products where sku = 'P3'") == [("Renamed",)]
    assert "10 changes" in second.stdout  # 2 + 2 + 1 price delete + 1 update + 2 stock deletes + insert + update
    third = cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert "0 changes" in third.stdout  # the slot was confirmed: nothing is read twice
    cli.run("cleanup", "job.yaml", check=True)


def test_a_dropped_slot_is_not_silently_recreated(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=10)
    cli.write_job(erp.job())
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    dbs.erp_sql("select pg_drop_replication_slot('kanal_erp_stream')")  # behind Kanal's back
    proc = cli.run("sync", "job.yaml", "--once")
    assert proc.returncode == 2
    assert "no longer holds this job's stream position" in proc.stderr and "kanal cleanup" in proc.stderr
    cli.run("cleanup", "job.yaml", check=True)
    assert "0 changes" in cli.run("sync", "job.yaml", "--once", "--quiet", check=True).stdout


def test_heartbeat_advances_the_slot_while_watched_tables_are_quiet(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=10)
    dbs.erp_sql("create table unrelated (id serial primary key, note text)")
    cli.write_job(erp.job())
    proc = cli.start("sync", "job.yaml", "--quiet")
    try:
        wait_for(lambda: dbs.erp_sql(SLOT_LSN), 30, "the slot")
        dbs.erp_sql("insert into unrelated (note) select 'x' from generate_series(1, 1000)")
        written = dbs.erp_sql("select pg_current_wal_lsn()")[0][0]
        wait_for(
            lambda: dbs.erp_sql(f"select confirmed_flush_lsn >= '{written}'::pg_lsn from pg_replication_slots "
                                "where slot_name = 'kanal_erp_stream'")[0][0],
            30,
            "the heartbeat to move the slot past other tables' WAL",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    cli.run("cleanup", "job.yaml", check=True)


def test_table_without_replica_identity_is_refused_with_the_fix(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=10)
    dbs.erp_sql("alter table erp_prices replica identity default")  # no primary key: deletes cannot be captured
    cli.write_job(erp.job())
    proc = cli.run("sync", "job.yaml", "--once")
    assert proc.returncode == 2
    assert "erp_prices has no replica identity" in proc.stderr
    assert "REPLICA IDENTITY FULL" in proc.stderr


def test_unchanged_toasted_values_are_completed_from_the_table(cli: Cli, dbs: Databases) -> None:
    """PostgreSQL does not send a large value an update left alone; the sink must not lose it."""
    erp.seed(dbs.erp, products=10)
    dbs.erp_sql("alter table erp_products add column long_text text")
    dbs.erp_sql("alter table erp_products alter column long_text set storage external")  # stored out of line
    big = "0123456789" * 1000
    dbs.erp_sql(f"update erp_products set long_text = '{big}' where sku in ('P1', 'P2')")
    cli.write_job(erp.job().replace("erp_products, delta: cdc", "erp_products, delta: cdc, mapping: products.yaml"))
    (cli.folder / "products.yaml").write_text(
        "entity: products\nkeep_unmapped: false\nfields:\n  sku: sku\n  name: name\n  gtin: gtin\n"
        "  active: active\n  updated_at: updated_at\n  description: long_text\n"
    )
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    cli.run("migrate", "job.yaml", "--quiet", check=True)
    dbs.erp_sql("update erp_products set name = 'only the name' where sku in ('P1', 'P2')")
    dbs.erp_sql("delete from erp_products where sku = 'P2'")
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert dbs.shop_sql("select sku, name, length(description) from shop_products where sku in ('P1', 'P2')") == [
        ("P1", "only the name", len(big))
    ]
    cli.run("cleanup", "job.yaml", check=True)


def test_a_slot_of_another_database_is_not_taken_over(cli: Cli, dbs: Databases) -> None:
    """Slot names are server-wide: two jobs of one name on one server must not share a slot."""
    erp.seed(dbs.erp, products=10)
    dbs.shop_sql("select pg_create_logical_replication_slot('kanal_erp_stream', 'pgoutput')")
    try:
        cli.write_job(erp.job())
        proc = cli.run("sync", "job.yaml", "--once")
        assert proc.returncode == 2
        assert "slot kanal_erp_stream belongs to database shop_" in proc.stderr
        assert "set `slot:`" in proc.stderr
        cli.write_job(erp.job().replace("heartbeat_s: 1", "heartbeat_s: 1, slot: kanal_erp_stream_2"))
        assert "0 changes" in cli.run("sync", "job.yaml", "--once", "--quiet", check=True).stdout
    finally:
        dbs.shop_sql("select pg_drop_replication_slot('kanal_erp_stream')")


@pytest.fixture(scope="module")
def replica_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pg.Server]:
    """A server left at PostgreSQL's default wal_level (replica)."""
    server = pg.Server.start(tmp_path_factory.mktemp("pg-replica"))
    yield server
    server.stop()


def test_wal_level_replica_is_refused_with_the_fix(replica_server: pg.Server, tmp_path: Path, cli: Cli) -> None:
    dsn = replica_server.create_database("erp_replica")
    erp.seed(dsn, products=10)
    cli.env["ERP_DSN"] = dsn
    cli.write_job(erp.job())
    proc = cli.run("sync", "job.yaml", "--once")
    assert proc.returncode == 2
    assert "wal_level is 'replica'" in proc.stderr
    assert "ALTER SYSTEM SET wal_level = logical" in proc.stderr
    checked = cli.run("check", "job.yaml")
    assert checked.returncode == 1
    assert "FAIL  source deltas (cdc)" in checked.stdout and "wal_level is 'replica'" in checked.stdout
