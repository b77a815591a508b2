"""The WooCommerce connector end to end: the CLI, the embedded broker, the ERP in PostgreSQL, the simulator.

The simulator (`kanal.connectors.woocommerce.simulator`) speaks the
documented REST API v3 over real HTTP; nothing is mocked.
"""

from __future__ import annotations

import json

import pytest

from kanal.connectors.woocommerce.simulator import WooSimulator
from tests.conftest import Cli, Databases
from tests.streaming.conftest import drop_slots  # noqa: F401 - CDC tests leave no slot behind
from tests.waiting import wait_for

PRODUCTS = 1_500

ERP = """
create table erp_products (sku text primary key, name text, parent_sku text, active boolean, updated_at timestamptz not null);
create table erp_prices (sku text not null, price_list text not null, customer_no text, currency text not null,
                         min_qty numeric(12,3), amount numeric(12,2), updated_at timestamptz not null);
alter table erp_prices replica identity full;
create table erp_stock (sku text, location text, on_hand numeric(12,3), updated_at timestamptz not null,
                        primary key (sku, location));
"""
# every tenth product (P1, P11, ...) is a variable product, the next two its variations
SEED = """
insert into erp_products select 'P' || g, 'Product ' || g,
    case when g % 10 in (2, 3) then 'P' || (g - g % 10 + 1) end, g % 13 <> 0, now()
  from generate_series(1, {n}) g;
insert into erp_prices select 'P' || g, 'retail', null, 'EUR', 1, 1 + g % 500 + 0.25, now() from generate_series(1, {n}) g;
insert into erp_prices select 'P' || g, 'wholesale', null, 'EUR', 1, 1, now() from generate_series(1, {n}, 7) g;
insert into erp_prices select 'P' || g, 'retail', 'C' || g, 'EUR', 1, 2, now() from generate_series(1, {n}, 500) g;
insert into erp_stock select 'P' || g, l, g % 90, now() from generate_series(1, {n}) g, unnest(array['WH1', 'WH2']) l;
"""

JOB = """
name: {name}
source:
  connector: postgres
  config: {{dsn: "${{ERP_DSN}}", heartbeat_s: 1}}
  entities:
    products: {{table: erp_products{delta}}}
    prices: {{table: erp_prices{delta}}}
    stock_levels: {{table: erp_stock{delta}}}
sinks:
  - name: woo
    connector: woocommerce
    config:
      url: "${{WOO_URL}}"
      consumer_key: "${{WOO_KEY}}"
      consumer_secret: "${{WOO_SECRET}}"
    entities:
      products: {{}}
      prices: {{price_list: retail}}
      stock_levels: {{location: WH1}}
"""


@pytest.fixture
def woo(cli: Cli, sim: WooSimulator) -> Cli:
    cli.env.update(WOO_URL=sim.url, WOO_KEY="ck_test", WOO_SECRET="cs_test")
    return cli


def _seed(dbs: Databases, n: int = PRODUCTS) -> None:
    dbs.erp_sql(ERP)
    dbs.erp_sql(SEED.format(n=n))


def _job(cli: Cli, name: str = "woo", cdc: bool = False) -> str:
    cli.write_job(JOB.format(name=name, delta=", delta: cdc" if cdc else ""))
    return "job.yaml"


def _erp(dbs: Databases) -> dict[str, tuple]:
    rows = dbs.erp_sql(
        "select p.sku, p.parent_sku, case when p.active then 'publish' else 'draft' end, pr.amount::text, s.on_hand::int "
        "from erp_products p "
        "left join erp_prices pr on pr.sku = p.sku and pr.price_list = 'retail' and pr.customer_no is null "
        "left join erp_stock s on s.sku = p.sku and s.location = 'WH1'"
    )
    return {row[0]: tuple(row[1:]) for row in rows}


def _shop(sim: WooSimulator) -> dict[str, tuple]:
    skus = {p["id"]: p["sku"] for p in sim.products.values()}
    return {
        sku: (skus.get(r["parent_id"]), r["status"], r["regular_price"] or None, r["stock_quantity"])
        for sku, r in sim.by_sku().items()
    }


def _no_duplicates(sim: WooSimulator) -> None:
    records = [*sim.products.values(), *sim.variations.values()]
    assert len(records) == len({r["sku"] for r in records}), "a SKU was created twice"


def _letters(cli: Cli, job: str) -> list[dict]:
    shown = cli.run("dlq", job, "show", "--json", check=True)
    return [json.loads(line) for line in shown.stdout.splitlines()]


def test_migration_ends_equal_to_the_erp_and_a_rerun_creates_nothing(woo: Cli, dbs: Databases, sim: WooSimulator) -> None:
    _seed(dbs)
    job = _job(woo)
    woo.run("migrate", job, "--quiet", check=True)
    assert _shop(sim) == _erp(dbs)
    variable = [p for p in sim.products.values() if p["type"] == "variable"]
    assert len(variable) == PRODUCTS // 10 and all(len(p["variations"]) == 2 for p in variable)
    # writers racing to create a parent: the loser finds it by SKU and updates it
    assert {r["error"]["code"] for r in sim.refused} <= {"product_invalid_sku"}
    _no_duplicates(sim)

    # customer-specific prices are refused with a reason naming the entity option; other lists are skipped
    letters = _letters(woo, job)
    assert {d["key"] for d in letters} == {f"P{g}|retail|C{g}|EUR|1.000" for g in range(1, PRODUCTS + 1, 500)}
    assert all("entities.prices.price_list" in d["reason"] for d in letters)

    created, items = len(sim.products) + len(sim.variations), sim.write_items
    woo.run("migrate", job, "--quiet", check=True)
    assert len(sim.products) + len(sim.variations) == created
    assert sim.write_items - items <= items // 100  # unchanged records are not sent again
    assert _shop(sim) == _erp(dbs)
    _no_duplicates(sim)


def test_kill_9_mid_migration_and_rerun_ends_exact(woo: Cli, dbs: Databases, sim: WooSimulator) -> None:
    _seed(dbs, 600)
    job = _job(woo, "woo-kill")
    sim.throttle(capacity=4, per_s=4)  # slow enough to be killed half way
    proc = woo.start("migrate", job, "--quiet")
    try:
        wait_for(lambda: len(sim.products) >= 20, 60, "the migration to be under way")
    finally:
        proc.kill()
        proc.wait()
    assert len(sim.products) + len(sim.variations) < 600
    sim.throttle(capacity=1_000_000, per_s=1_000_000)
    woo.run("migrate", job, "--quiet", check=True)
    _no_duplicates(sim)
    assert _shop(sim) == _erp(dbs)


def test_throttling_and_a_502_503_burst_are_waited_out(woo: Cli, dbs: Databases, sim: WooSimulator) -> None:
    _seed(dbs, 300)
    sim.fail_next(2, 502)
    sim.fail_next(2, 503)
    sim.throttle(capacity=10, per_s=20)
    woo.run("migrate", _job(woo, "woo-outage"), "--quiet", check=True)
    assert sim.throttled > 0
    assert _shop(sim) == _erp(dbs)
    _no_duplicates(sim)


def test_a_wrong_key_is_a_clear_auth_error_without_retries(woo: Cli, dbs: Databases, sim: WooSimulator) -> None:
    _seed(dbs, 10)
    woo.env["WOO_SECRET"] = "cs_wrong"
    proc = woo.run("migrate", _job(woo, "woo-auth"))
    assert proc.returncode == 1
    assert "Invalid signature" in proc.stderr and "credentials" in proc.stderr
    assert "cs_wrong" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
    assert sim.requests <= 4  # one check per sink instance at most: no retry storm
    assert sim.products == {}


def test_a_record_the_shop_refuses_goes_to_the_dlq_with_the_shops_message(woo: Cli, dbs: Databases, sim: WooSimulator) -> None:
    _seed(dbs, 200)
    sim.trash("P5")  # a trashed product keeps its SKU: creating P5 again is refused
    job = _job(woo, "woo-refused")
    woo.run("migrate", job, "--quiet", check=True)
    letters = [d for d in _letters(woo, job) if d["entity"] == "products"]
    assert [(d["key"], d["stage"], d["sink"]) for d in letters] == [("P5", "sink", "woo")]
    assert "Invalid or duplicated SKU." in letters[0]["reason"] and "product_invalid_sku" in letters[0]["reason"]
    expected = {sku: row for sku, row in _erp(dbs).items() if sku != "P5"}
    assert _shop(sim) == expected


def test_erp_changes_reach_the_shop(woo: Cli, dbs: Databases, sim: WooSimulator) -> None:
    _seed(dbs, 100)
    job = _job(woo, "woo-cdc", cdc=True)
    woo.run("migrate", job, "--quiet", check=True)
    dbs.erp_sql("update erp_prices set amount = 77.70, updated_at = now() where sku = 'P12' and price_list = 'retail' and customer_no is null")
    dbs.erp_sql("update erp_stock set on_hand = 42, updated_at = now() where sku = 'P4' and location = 'WH1'")
    dbs.erp_sql("update erp_stock set on_hand = 43, updated_at = now() where sku = 'P4' and location = 'WH2'")
    dbs.erp_sql("insert into erp_products values ('P101', 'New', null, true, now())")
    dbs.erp_sql("delete from erp_products where sku = 'P7'")
    woo.run("sync", job, "--once", "--quiet", check=True)
    shop = sim.by_sku()
    assert shop["P12"]["regular_price"] == "77.70"
    assert shop["P4"]["stock_quantity"] == 42
    assert shop["P101"]["name"] == "New" and "P7" not in shop
    assert _shop(sim) == _erp(dbs)


WOO_SOURCE = """
name: woo-out
source:
  connector: woocommerce
  config: {url: "${WOO_URL}", consumer_key: "${WOO_KEY}", consumer_secret: "${WOO_SECRET}"}
  entities:
    products: {delta: {cursor: updated_at, overlap_s: 2}}
    prices: {price_list: retail, delta: {cursor: updated_at, overlap_s: 2}}
    stock_levels: {location: WH1, delta: {cursor: updated_at, overlap_s: 2}}
sinks:
  - name: erp
    connector: postgres
    config: {dsn: "${SHOP_DSN}"}
    entities:
      products: {table: products}
      prices: {table: prices}
      stock_levels: {table: stock}
"""


def test_shop_changes_reach_postgres_through_modified_after(woo: Cli, dbs: Databases, sim: WooSimulator) -> None:
    parents = [sim.add_product(sku=f"S{i}", name=f"Shirt {i}", type="variable") for i in range(120)]
    for parent in parents[:10]:
        sim.add_variation(parent["id"], sku=f"{parent['sku']}-M", regular_price="19.90", manage_stock=True, stock_quantity=4)
    for p in parents[10:]:
        sim.touch(p["id"], type="simple", regular_price="9.50", manage_stock=True, stock_quantity=3)
    woo.write_job(WOO_SOURCE)
    woo.run("migrate", "job.yaml", "--quiet", check=True)
    assert dbs.shop_sql("select count(*), count(parent_sku) from products") == [(130, 10)]
    assert dbs.shop_sql("select count(*), sum(amount) from prices") == [(120, 110 * 9.5 + 10 * 19.9)]

    variation = next(iter(sim.variations.values()))
    sim.touch(variation["id"], regular_price="24.90", stock_quantity=1)
    sim.touch(parents[50]["id"], name="Renamed")
    woo.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert dbs.shop_sql("select amount::text from prices where sku = %s", (variation["sku"],)) == [("24.90",)]
    assert dbs.shop_sql("select on_hand::int from stock where sku = %s", (variation["sku"],)) == [(1,)]
    assert dbs.shop_sql("select name from products where sku = 'S50'") == [("Renamed",)]
