"""`kanal check`: the shape of every entity, `--sample`, `--json`, and systems that do not answer at start."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kanal.core.embedded import free_port
from kanal.core.errors import Unreachable
from kanal.jobs import pipeline
from kanal.jobs.check import CheckReport, fields_of, systems
from kanal.jobs.load import load_job
from tests.conftest import Cli, Databases

SHAPES_JOB = """
name: shapes
source:
  connector: postgres
  config: {dsn: "${ERP_DSN}"}
  entities:
    products: {table: erp_items, mapping: items.yaml}
    prices: {table: erp_gone}
    stock_levels: {table: erp_stock}
    customers: {table: erp_customers}
sinks:
  - name: shop
    connector: postgres
    config: {dsn: "${SHOP_DSN}"}
    entities:
      products: {table: shop_products}
      stock_levels: {table: shop_stock, create: false}
      customers: {table: shop_customers}
"""
ITEMS_MAPPING = """
entity: products
fields:
  sku: artnr
  name: title
"""


def _shapes(dbs: Databases, folder: Path, monkeypatch: pytest.MonkeyPatch) -> CheckReport:
    dbs.erp_sql("create table erp_items (artnr text primary key, bezeichnung text)")
    dbs.erp_sql("create table erp_stock (artnr text, lager text, menge numeric)")
    dbs.erp_sql("create table erp_customers (customer_no text primary key, email text, updated_at timestamptz)")
    dbs.shop_sql("create table shop_products (sku text primary key, name text, active integer, note text not null)")
    dbs.shop_sql(
        "create table shop_customers (customer_no text primary key, type text, company text, first_name text, "
        "last_name text, email text, phone text, vat_id text, currency text, price_group text, addresses jsonb, "
        "updated_at timestamptz, _kanal_version bigint)"
    )
    (folder / "items.yaml").write_text(ITEMS_MAPPING)
    (folder / "job.yaml").write_text(SHAPES_JOB)
    monkeypatch.setenv("ERP_DSN", dbs.erp)
    monkeypatch.setenv("SHOP_DSN", dbs.shop)
    report = CheckReport()
    systems(load_job(folder / "job.yaml"), report)
    return report


def test_check_names_missing_tables_columns_and_what_a_sink_table_cannot_take(
    dbs: Databases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = _shapes(dbs, tmp_path, monkeypatch)
    lines = {(r.system, r.entity): r for r in report.results}
    source, sink = "source (postgres)", "sink shop (postgres)"

    products = lines[(source, "products")]  # the mapping reads a column the table lacks
    assert not products.ok
    assert "table: erp_items" in products.detail and "fields.name: column 'title' is not in the input" in products.detail
    assert "fix:" in products.detail and "items.yaml" in products.detail

    prices = lines[(source, "prices")]  # no such table
    assert not prices.ok and "public.erp_gone does not exist" in prices.detail

    stock = lines[(source, "stock_levels")]  # no mapping, columns not canonical: every record would be dead-lettered
    assert not stock.ok and "required field(s) sku, location" in stock.detail and "mapping" in stock.detail

    assert lines[(source, "customers")].ok

    shop_products = lines[(sink, "products")].detail
    assert not lines[(sink, "products")].ok
    assert "has no column(s) gtin" in shop_products and 'add column "weight" numeric' in shop_products
    assert "column active is integer but receives bool values" in shop_products
    assert "NOT NULL column(s) note without a default" in shop_products

    shop_stock = lines[(sink, "stock_levels")]
    assert not shop_stock.ok and "public.shop_stock does not exist (create: false)" in shop_stock.detail
    assert lines[(sink, "customers")].ok, lines[(sink, "customers")].detail
    assert not report.ok


SAMPLE_JOB = """
name: sampled
source:
  connector: postgres
  config: {dsn: "${ERP_DSN}"}
  entities:
    customers: {table: erp_customers, mapping: customers.yaml}
sinks:
  - name: shop
    connector: postgres
    config: {dsn: "${SHOP_DSN}"}
    entities:
      customers: {table: shop_customers}
"""
CUSTOMERS_MAPPING = """
entity: customers
fields:
  customer_no: kdnr
  type: {from: art, lookup: {F: b2b, P: b2c}, default: vip}
  updated_at: {from: geaendert, cast: datetime}
"""


def test_sample_finds_what_validate_cannot_and_json_reports_each_line(cli: Cli, dbs: Databases) -> None:
    dbs.erp_sql("create table erp_customers (kdnr text primary key, art text, geaendert text)")
    dbs.erp_sql(
        "insert into erp_customers values ('K1', 'F', '2024-01-01'), ('K2', 'X', '2024-01-02'), "
        "('K3', 'P', 'gestern'), ('K4', 'P', '2024-01-04')"
    )
    (cli.folder / "customers.yaml").write_text(CUSTOMERS_MAPPING)
    job = str(cli.write_job(SAMPLE_JOB))
    assert cli.run("validate", job).returncode == 0  # the file is fine: only the values are not

    proc = cli.run("check", job, "--sample", "10", "--json", timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    checks = [line for line in lines if "system" in line]
    assert {"system", "entity", "ok", "detail"} <= set(checks[0])
    assert all(c["ok"] for c in checks), checks  # every system and shape is fine
    (sample,) = [line for line in lines if "sample" in line]
    assert (sample["sample"], sample["read"], sample["passed"]) == ("customers", 4, 2)
    rejected = {r["key"]: r for r in sample["rejected"]}
    assert set(rejected) == {"K2", "K3"}
    assert rejected["K2"]["fields"] == ["type"] and "'vip' is not one of b2b, b2c" in rejected["K2"]["reason"]
    assert rejected["K3"]["fields"] == ["updated_at"] and "gestern" in rejected["K3"]["reason"]
    assert not dbs.shop_sql("select to_regclass('shop_customers')")[0][0], "check --sample must not write"


def test_fields_are_read_from_each_part_of_a_reason() -> None:
    assert fields_of("sku: required field is empty; mapping m.yaml: weight: 'x' is not a valid decimal (from w)") == (
        "sku", "weight",
    )  # fmt: skip
    assert fields_of("mapping m.yaml: vat_id is required (from ustid)") == ("vat_id",)


# systems that do not answer at start -----------------------------------------

UNREACHABLE_JOB = """
name: unreachable
connect_timeout_s: 2
source:
  connector: postgres
  config: {{dsn: "{erp}"}}
  entities:
    products: {{table: erp_products}}
sinks:
  - name: shop
    connector: {sink}
    config: {config}
    entities:
      products: {{}}
"""


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung host, a firewall that swallows the handshake)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]


def _job(tmp_path: Path, erp: str, sink: str = "files", config: str = "{path: out}") -> pipeline.LoadedJob:
    path = tmp_path / "job.yaml"
    path.write_text(UNREACHABLE_JOB.format(erp=erp, sink=sink, config=config))
    return load_job(path)


def test_a_source_that_never_answers_fails_within_connect_timeout(tmp_path: Path, silent_port: int) -> None:
    loaded = _job(tmp_path, f"postgresql://kanal@127.0.0.1:{silent_port}/erp")
    started = time.monotonic()
    with pytest.raises(Unreachable) as caught:
        pipeline.connect_source(loaded)
    assert time.monotonic() - started < 5  # libpq alone would wait its own 10 s, the retry budget 300 s
    assert "postgres 127.0.0.1/erp: not reachable within 2s" in caught.value.message
    assert "connect_timeout_s" in caught.value.message


def test_an_api_sink_on_a_closed_port_fails_within_connect_timeout(tmp_path: Path) -> None:
    config = f'{{url: "http://127.0.0.1:{free_port()}", consumer_key: ck_test, consumer_secret: cs_test}}'
    loaded = _job(tmp_path, "postgresql://kanal@127.0.0.1:1/erp", "woocommerce", config)
    started = time.monotonic()
    with pytest.raises(Unreachable) as caught:
        pipeline.connect_sinks(loaded)  # the HTTP kit's own retries end at the deadline too
    assert time.monotonic() - started < 5
    assert "not reachable within 2s" in caught.value.message and "127.0.0.1" in caught.value.message


def test_migrate_with_a_sink_port_nobody_listens_on_exits_1_naming_it(cli: Cli, dbs: Databases) -> None:
    dbs.erp_sql("create table erp_products (sku text primary key, name text)")
    cli.env["SHOP_DSN"] = f"postgresql://kanal@127.0.0.1:{free_port()}/shop"
    job = cli.write_job(UNREACHABLE_JOB.format(erp="${ERP_DSN}", sink="postgres", config='{dsn: "${SHOP_DSN}"}'))
    job.write_text(job.read_text().replace("products: {}", "products: {table: shop_products}"))
    started = time.monotonic()
    proc = cli.run("migrate", str(job), timeout=90)
    assert proc.returncode == 1
    assert time.monotonic() - started < 60  # the retry budget (300 s) is not spent on a wrong address
    assert "postgres 127.0.0.1/shop: not reachable within 2s" in proc.stderr and "Traceback" not in proc.stderr
