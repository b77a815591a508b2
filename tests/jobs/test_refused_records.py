"""Records a target refuses, in a migration: isolated one by one, or the run fails when the target refuses them all."""

from __future__ import annotations

import json

import polars as pl

from tests.conftest import Cli, Databases

JOB = """
name: refused
source: {{connector: postgres, config: {{dsn: "${{ERP_DSN}}"}}, entities: {{products: {{table: erp_products}}}}}}
sinks:
{sink}
"""
SHOP = '  - {name: shop, connector: postgres, config: {dsn: "${SHOP_DSN}"}, entities: {products: {table: shop_products}}}'
FILES = '  - {{name: files, connector: files, config: {{path: "{path}", format: csv, encoding: latin-1}}, entities: {{products: {{}}}}}}'


def _erp(dbs: Databases, rows: int) -> None:
    dbs.erp_sql("create table erp_products (sku text primary key, name text, updated_at timestamptz default now())")
    dbs.erp_sql(f"insert into erp_products (sku, name) select 'P' || g, 'name ' || g from generate_series(1, {rows}) g")


def test_a_record_a_files_sink_refuses_leaves_every_other_row_in_place(cli: Cli, dbs: Databases) -> None:
    """Bisecting a batch writes its halves as separate slices: none may replace another's file."""
    _erp(dbs, 200)
    dbs.erp_sql("update erp_products set name = 'Łódź' where sku = 'P77'")  # not in latin-1
    cli.write_job(JOB.format(sink=FILES.format(path=cli.folder / "out")))
    cli.run("migrate", "job.yaml", "--quiet", check=True)
    written = pl.concat([pl.read_csv(p, encoding="latin-1") for p in (cli.folder / "out" / "products").glob("*.csv")])
    assert written.height == 199 and written["sku"].n_unique() == 199 and "P77" not in written["sku"].to_list()
    shown = cli.run("dlq", "job.yaml", "show", "--json", check=True).stdout
    assert [json.loads(line)["key"] for line in shown.splitlines()] == ["P77"]


def test_a_target_refusing_every_row_fails_the_migration_and_checkpoints_nothing(cli: Cli, dbs: Databases) -> None:
    _erp(dbs, 2_000)
    dbs.shop_sql("create table shop_products (sku text primary key, name integer, updated_at timestamptz)")
    cli.write_job(JOB.format(sink=SHOP))
    failed = cli.run("migrate", "job.yaml")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "sink 'shop', products (table: shop_products) refused the first 10 records" in failed.stderr
    assert "invalid input syntax for type integer" in failed.stderr
    assert cli.run("dlq", "job.yaml", "show", "--json", check=True).stdout.strip() == ""  # not 2,000 dead letters

    dbs.shop_sql("alter table shop_products alter column name type text")
    cli.run("migrate", "job.yaml", "--quiet", check=True)  # every chunk is read again
    assert dbs.shop_sql("select count(*) from shop_products where name like 'name %'") == [(2_000,)]
