"""One PostgreSQL source streaming some tables by CDC and others by a change column."""

from __future__ import annotations

from kanal.connectors.postgres import PostgresConfig, PostgresSource, PostgresSourceOptions
from kanal.core.connector import CursorDelta, DeltaContext
from tests.conftest import Cli, Databases
from tests.streaming import erp

_SLOTS = "select count(*) from pg_replication_slots where database = current_database()"


def _mixed_job() -> str:
    """products and prices by CDC, stock levels by their `updated_at`."""
    return erp.job(delta=erp.CDC).replace(
        "stock_levels: {table: erp_stock, delta: cdc}", f"stock_levels: {{table: erp_stock, delta: {erp.CURSOR}}}"
    )


def test_a_source_reads_cdc_and_cursor_entities_through_one_reader(dbs: Databases) -> None:
    erp.seed(dbs.erp, products=20)
    dbs.erp_sql("update erp_stock set updated_at = now() - interval '1 hour'")
    source = PostgresSource(PostgresConfig(dsn=dbs.erp))
    context = DeltaContext(
        "mixed-test",
        {
            "products": PostgresSourceOptions(table="erp_products", delta="cdc"),
            "stock_levels": PostgresSourceOptions(table="erp_stock", delta=CursorDelta(cursor="updated_at")),
        },
    )
    reader = source.delta(context)
    try:
        reader.check()
        position = reader.start()
        assert reader.snapshot_version("stock_levels", position) is not None
        dbs.erp_sql("update erp_products set name = 'Renamed' where sku = 'P3'")
        dbs.erp_sql("delete from erp_products where sku = 'P4'")
        dbs.erp_sql("update erp_stock set on_hand = 42, updated_at = clock_timestamp() where sku = 'P5'")
        changes = reader.read(position)
        products = changes.frames["products"]
        assert products.select("sku", "_kanal_op").rows() == [("P3", "upsert"), ("P4", "delete")]
        assert sorted(changes.frames["stock_levels"].select("sku", "location").rows()) == [("P5", "A"), ("P5", "B")]
        reader.confirm(changes.position)
        assert reader.read(changes.position).frames == {}
        described = reader.describe(changes.position)
        assert "LSN" in described and "stock_levels" in described
        assert "slot" in reader.status() and "long transactions" in reader.status()
    finally:
        reader.close()
    assert any("dropped replication slot" in line for line in source.cleanup(context))
    assert dbs.erp_sql(_SLOTS)[0][0] == 0
    source.close()


def test_mixed_job_end_to_end_and_cleanup(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=200)
    dbs.erp_sql("update erp_stock set updated_at = now() - interval '1 hour'")
    cli.write_job(_mixed_job())
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    cli.run("migrate", "job.yaml", "--quiet", check=True)
    dbs.erp_sql("update erp_stock set on_hand = on_hand + 5, updated_at = clock_timestamp() where sku like 'P1%'")
    dbs.erp_sql("update erp_prices set amount = 1 where sku = 'P7'")
    dbs.erp_sql("delete from erp_products where sku = 'P8'")
    dbs.erp_sql("insert into erp_products values ('NEW', 'New', '1', true, clock_timestamp())")
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert erp.differences(dbs.erp, dbs.shop) == {"products": 0, "prices": 0, "stock": 0}
    cli.run("cleanup", "job.yaml", check=True)
    assert dbs.erp_sql(_SLOTS)[0][0] == 0
