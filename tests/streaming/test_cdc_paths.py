"""CDC off the main road: partitioned tables, one table read by two entities, key changes,
TRUNCATE, and replica identities that cannot show an entity's key."""

from __future__ import annotations

import polars as pl

from tests.conftest import Cli, Databases
from tests.streaming import erp

PARTITIONED = """
drop table erp_stock;
create table erp_stock (sku text, location text, on_hand numeric(12,3), updated_at timestamptz not null,
                        primary key (sku, location)) partition by list (location);
create table erp_stock_a partition of erp_stock for values in ('A');
create table erp_stock_b partition of erp_stock for values in ('B');
insert into erp_stock select 'P' || g, l, g % 90, now() from generate_series(1, 20) g, unnest(array['A', 'B']) l;
"""

CATALOG_JOB = """
name: erp-stream
kafka: {bootstrap_servers: embedded}
source:
  connector: postgres
  config: {dsn: "${ERP_DSN}", heartbeat_s: 1}
  entities:
    products: {table: erp_catalog, delta: cdc}
    stock_levels: {table: erp_catalog, delta: cdc}
sinks:
  - name: shop
    connector: postgres
    config: {dsn: "${SHOP_DSN}"}
    entities:
      products: {table: shop_products}
      stock_levels: {table: shop_stock}
"""


def _start(cli: Cli, job: str) -> None:
    """Fix the position (creates the slot), then migrate."""
    cli.write_job(job)
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    cli.run("migrate", "job.yaml", "--quiet", check=True)


def test_changes_of_a_partitioned_table_reach_the_sinks(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=20)
    dbs.erp_sql(PARTITIONED)
    _start(cli, erp.job())
    dbs.erp_sql(
        """update erp_stock set on_hand = 77 where sku = 'P1';
           insert into erp_stock values ('N1', 'B', 5, now());
           delete from erp_stock where sku = 'P2' and location = 'A';
           update erp_stock set location = 'A' where sku = 'N1'"""  # moves to another partition
    )
    # As an earlier Kanal left its publication: changes of partitions are named after the partition.
    dbs.erp_sql("alter publication kanal_erp_stream set (publish_via_partition_root = false)")
    dbs.erp_sql("insert into erp_stock values ('N2', 'B', 1, now()); update erp_stock set on_hand = 5 where sku = 'P4'")
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert erp.differences(dbs.erp, dbs.shop) == {"products": 0, "prices": 0, "stock": 0}
    assert dbs.shop_sql("select sku, location from shop_stock where sku like 'N%' order by 1") == [("N1", "A"), ("N2", "B")]
    assert dbs.erp_sql("select pubviaroot from pg_publication where pubname = 'kanal_erp_stream'") == [(True,)]
    cli.run("cleanup", "job.yaml", check=True)


def test_two_entities_reading_one_table_each_get_every_change(cli: Cli, dbs: Databases) -> None:
    dbs.erp_sql(
        """create table erp_catalog (sku text primary key, name text, gtin text, active boolean, location text not null,
                                     on_hand numeric(12,3), updated_at timestamptz not null);
           alter table erp_catalog replica identity full;
           insert into erp_catalog select 'P' || g, 'Product ' || g, '1', true, 'A', g, now() from generate_series(1, 10) g"""
    )
    _start(cli, CATALOG_JOB)
    dbs.erp_sql(
        """update erp_catalog set name = 'Renamed' where sku = 'P1';
           update erp_catalog set on_hand = 99 where sku = 'P2';
           insert into erp_catalog values ('N1', 'New', '2', true, 'B', 7, now());
           delete from erp_catalog where sku = 'P3'"""
    )
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert dbs.shop_sql("select sku, name from shop_products order by sku") == dbs.erp_sql(
        "select sku, name from erp_catalog order by sku"
    )
    assert dbs.shop_sql("select sku, location, on_hand::numeric(12,3) from shop_stock order by sku") == dbs.erp_sql(
        "select sku, location, on_hand from erp_catalog order by sku"
    )
    cli.run("cleanup", "job.yaml", check=True)


def test_a_key_change_deletes_the_old_key_everywhere(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=10)
    _start(cli, erp.job())
    dbs.erp_sql(
        """update erp_products set sku = 'P1-renamed' where sku = 'P1';
           update erp_prices set customer_no = 'C-new' where sku = 'P3';
           update erp_prices set amount = amount + 1 where sku = 'P4'"""  # REPLICA IDENTITY FULL, key unchanged
    )
    synced = cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert erp.differences(dbs.erp, dbs.shop) == {"products": 0, "prices": 0, "stock": 0}
    assert dbs.shop_sql("select count(*) from shop_products where sku = 'P1'") == [(0,)]
    assert "3 changes" in synced.stdout  # an old image is not a change of its own
    cli.run("cleanup", "job.yaml", check=True)


def test_truncate_deletes_the_rows_it_removed_and_keeps_later_ones(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=20)
    files = cli.folder / "out"
    sink = f'  - name: files\n    connector: files\n    config: {{path: "{files}"}}\n    entities:\n      stock_levels: {{}}\n'
    _start(cli, erp.job(extra=sink))
    dbs.erp_sql(
        """begin;
           insert into erp_stock values ('GONE', 'A', 1, now());
           truncate erp_stock;
           insert into erp_stock values ('T1', 'A', 1, now());
           commit;
           insert into erp_stock values ('T2', 'B', 2, now());"""
    )
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert dbs.shop_sql("select sku, location from shop_stock order by sku") == [("T1", "A"), ("T2", "B")]
    assert erp.differences(dbs.erp, dbs.shop)["stock"] == 0
    changes = sorted((files / "stock_levels" / "changes").glob("*.parquet"))
    log = pl.concat([pl.read_parquet(p) for p in changes], how="diagonal_relaxed")
    assert log.filter(pl.col("_kanal_op") == "truncate").get_column("_kanal_version").n_unique() == 1
    assert "0 changes" in cli.run("sync", "job.yaml", "--once", "--quiet", check=True).stdout
    assert dbs.shop_sql("select count(*) from shop_stock") == [(2,)]
    cli.run("cleanup", "job.yaml", check=True)


def test_truncate_fail_stops_the_stream_and_confirms_nothing_after_it(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=10)
    _start(cli, erp.job().replace("erp_stock, delta: cdc", "erp_stock, delta: cdc, truncate: fail"))
    dbs.erp_sql("truncate erp_stock; insert into erp_stock values ('T1', 'A', 1, now())")
    for _ in range(2):  # and again: the truncate was not skipped
        proc = cli.run("sync", "job.yaml", "--once")
        assert proc.returncode != 0
        assert "erp_stock was truncated" in proc.stderr and "truncate: delete" in proc.stderr
    assert dbs.shop_sql("select count(*) from shop_stock") == [(20,)]
    cli.run("cleanup", "job.yaml", check=True)


def test_a_replica_identity_without_the_entity_key_is_refused_by_check(cli: Cli, dbs: Databases) -> None:
    """The ERP's deletes would reach Kanal with the id only: the shop could never match them."""
    erp.seed(dbs.erp, products=10)
    dbs.erp_sql("alter table erp_products drop constraint erp_products_pkey")
    dbs.erp_sql("alter table erp_products add column id serial primary key")
    cli.write_job(erp.job())
    checked = cli.run("check", "job.yaml")
    assert checked.returncode == 1
    assert "FAIL  source deltas (cdc)" in checked.stdout
    assert "does not include sku of the key of products" in checked.stdout
    assert "ALTER TABLE public.erp_products REPLICA IDENTITY FULL" in checked.stdout
    proc = cli.run("sync", "job.yaml", "--once")
    assert proc.returncode == 2 and "REPLICA IDENTITY FULL" in proc.stderr
