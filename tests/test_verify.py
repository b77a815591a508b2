"""`kanal verify`: drift between the source and the sinks, found per key and repaired (real PostgreSQL, real files)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import polars as pl

from kanal.connectors.files.config import FilesConfig, FilesSinkOptions
from kanal.connectors.files.sink import FilesSink
from kanal.connectors.redis import RedisInventory
from kanal.core.connector import DELETE, OP, UPSERT, VERSION
from kanal.core.inventory import Ledger, Movement
from kanal.core.model import PRODUCT
from kanal.jobs.inventory import ledger_path
from kanal.jobs.load import load_job
from kanal.jobs.verify import verify
from tests import erp
from tests.conftest import Cli, Databases

PRICE_KEY = "P3|base||EUR|1.000"


def test_verify_finds_exactly_the_keys_changed_by_hand_and_repair_fixes_them(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp_sql, products=40, customers=1)
    cli.write_job(erp.job())
    cli.run("migrate", "job.yaml", "--quiet", check=True)

    dbs.shop_sql("delete from shop_products where sku = 'P5'")
    dbs.shop_sql("update shop_products set name = 'edited by hand' where sku = 'P7'")
    dbs.shop_sql("insert into shop_products (sku, name) values ('GHOST', 'not in the ERP')")
    dbs.shop_sql("update shop_prices set amount = amount + 1 where sku = 'P3' and customer_no is null and min_qty = 1")

    found = cli.run("verify", "job.yaml", "--json")
    assert found.returncode == 1, found.stdout + found.stderr
    doc = json.loads(found.stdout)
    drift = {d["entity"]: d for d in doc["entities"]}
    assert drift["products"]["missing"] == {"count": 1, "keys": ["P5"]}
    assert drift["products"]["extra"] == {"count": 1, "keys": ["GHOST"]}
    assert drift["products"]["different"] == {"count": 1, "keys": ["P7"]}
    assert drift["prices"]["missing"]["count"] == drift["prices"]["extra"]["count"] == 0
    assert drift["prices"]["different"]["keys"] == [PRICE_KEY]

    table = cli.run("verify", "job.yaml", "--entity", "products")
    assert table.returncode == 1
    assert "products missing: P5" in table.stdout and "products extra: GHOST" in table.stdout
    assert "prices" not in table.stdout

    fixed = cli.run("verify", "job.yaml", "--repair", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    doc = json.loads(fixed.stdout)
    assert doc["drift"] is False
    assert {d["entity"]: d["different"]["count"] for d in doc["repaired"]} == {"products": 1, "prices": 1}
    assert dbs.shop_sql("select name from shop_products where sku in ('P5', 'P7', 'GHOST') order by sku") == [
        ("Product 5",), ("Product 7",)
    ]
    # the ERP's invalid prices are dead letters: verify expects them nowhere, and repair wrote none
    assert dbs.shop_sql(erp.PRICE_SUM.format(t="shop_prices", where="")) == dbs.erp_sql(
        erp.PRICE_SUM.format(t="erp_prices", where=erp.VALID_PRICES)
    )


FILES_JOB = """
name: erp-to-files
kafka: {bootstrap_servers: embedded}
source:
  connector: postgres
  config: {dsn: "${ERP_DSN}"}
  entities:
    products: {table: erp_products}
sinks:
  - name: lake
    connector: files
    config: {path: "${LAKE}", format: jsonl}
    entities:
      products: {}
"""


def test_files_are_read_back_with_their_change_log_and_repaired_through_it(cli: Cli, dbs: Databases, monkeypatch) -> None:
    """A snapshot file, then changes: a key deleted, one changed to a value the ERP does not have, one re-added."""
    erp.seed(dbs.erp_sql, products=6, customers=0)
    path = cli.write_job(FILES_JOB)
    monkeypatch.setenv("ERP_DSN", dbs.erp)
    monkeypatch.setenv("LAKE", str(cli.folder / "lake"))
    loaded = load_job(str(path))
    sink = FilesSink(FilesConfig(path=str(cli.folder / "lake"), format="jsonl"))
    options = FilesSinkOptions()
    rows = pl.DataFrame({"sku": [f"P{i}" for i in range(1, 7)], "name": [f"Product {i}" for i in range(1, 7)]})
    full = dbs.erp_sql("select sku, name, gtin, active, attributes::text, updated_at from erp_products order by sku")
    snapshot = pl.DataFrame(full, schema=["sku", "name", "gtin", "active", "attributes", "updated_at"], orient="row")
    sink.write("products", options, snapshot.with_columns(PRODUCT.key_expr()), "chunk-1")
    changes = pl.DataFrame({
        "sku": ["P2", "P3", "P4"], "name": [None, "stale", None], OP: [DELETE, UPSERT, DELETE], VERSION: [5, 5, 5],
    }).with_columns(PRODUCT.key_expr())  # fmt: skip
    sink.write("products", options, changes, "changes-1")
    sink.write("products", options, rows.filter(pl.col("sku") == "P4").with_columns(  # P4 comes back, but only its name
        PRODUCT.key_expr(), pl.lit(UPSERT).alias(OP), pl.lit(6).alias(VERSION)), "changes-2")

    held = sink.read_back("products", options)
    assert sorted(held.get_column("sku").to_list()) == ["P1", "P3", "P4", "P5", "P6"]

    (drift,) = verify(loaded).drifts
    assert (drift.missing, drift.extra, drift.different) == (["P2"], [], ["P3", "P4"])
    report = verify(loaded, repair=True)
    assert not report.drifted, report.as_dict()
    assert report.repaired is not None and report.repaired[0].different == ["P3", "P4"]
    assert sorted(sink.read_back("products", options).get_column("sku").to_list()) == [f"P{i}" for i in range(1, 7)]


STOCK_JOB = """
name: stock
kafka: {bootstrap_servers: embedded}
source:
  connector: postgres
  config: {dsn: "${ERP_DSN}"}
  entities:
    stock_movements: {table: erp_movements}
    stock_levels: {table: erp_stock}
    availability: {table: erp_availability}
inventory:
  channels:
    web: {locations: [WH1, S1], buffer: 1}
sinks:
  - name: shop
    connector: postgres
    config: {dsn: "${SHOP_DSN}"}
    entities:
      stock_levels: {table: shop_stock}
      availability: {table: shop_availability}
  - name: read-model
    connector: redis
    config: {data_dir: "${REDIS_DIR}"}
    entities:
      availability: {}
"""


def test_stock_is_verified_against_the_ledger_in_postgres_and_redis(cli: Cli, dbs: Databases, monkeypatch) -> None:
    for name, value in (("ERP_DSN", dbs.erp), ("SHOP_DSN", dbs.shop), ("REDIS_DIR", str(cli.folder / "redis"))):
        monkeypatch.setenv(name, value)
    loaded = load_job(str(cli.write_job(STOCK_JOB)))
    assert loaded.job.inventory is not None
    at = dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)
    with Ledger(ledger_path(loaded, 0), loaded.job.inventory) as ledger:
        ledger.apply([Movement(f"r{i}{loc}", f"S-{i}", loc, 10 + i, "receipt", at) for i in range(5) for loc in ("WH1", "S1")])
        ledger.apply([Movement("sale-1", "S-1", "S1", -3, "sale", at + dt.timedelta(minutes=5))])

    first = verify(loaded, repair=True)  # empty sinks: everything is missing, and written
    assert {(d.sink, d.entity): len(d.missing) for d in first.repaired or []} == {
        ("shop", "stock_levels"): 10, ("shop", "availability"): 5, ("read-model", "availability"): 5,
    }
    assert not first.drifted, first.as_dict()
    assert [(d.sink, d.entity, d.source_rows, d.sink_rows) for d in first.drifts] == [
        ("shop", "stock_levels", 10, 10), ("shop", "availability", 5, 5), ("read-model", "availability", 5, 5),
    ]
    assert dbs.shop_sql("select quantity from shop_availability where sku = 'S-1'") == [(Decimal("18"),)]  # 11 + (11 - 3) - buffer 1

    dbs.shop_sql("update shop_stock set on_hand = 99 where sku = 'S-2' and location = 'WH1'")
    dbs.shop_sql("delete from shop_availability where sku = 'S-3'")
    with RedisInventory(data_dir=str(cli.folder / "redis")) as model:
        model.connection.client.hset("kanal:availability:web:S-4", "quantity", "500")
        model.connection.client.hset("kanal:availability:web:GHOST", mapping={"sku": "GHOST", "channel": "web", "quantity": "1"})
    drift = {(d.sink, d.entity): (d.missing, d.extra, d.different) for d in verify(loaded).drifts}
    assert drift == {
        ("shop", "stock_levels"): ([], [], ["S-2|WH1"]),
        ("shop", "availability"): (["S-3|web"], [], []),
        ("read-model", "availability"): ([], ["GHOST|web"], ["S-4|web"]),
    }
    assert not verify(loaded, repair=True).drifted
    assert dbs.shop_sql("select on_hand from shop_stock where sku = 'S-2' and location = 'WH1'") == [(Decimal("12"),)]
