"""The Shopify connector end to end through the CLI and Kafka: ERP (PostgreSQL) -> the simulated shop, and back."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import psutil

from kanal.connectors.shopify.simulator import Simulator
from tests.conftest import Cli, Databases
from tests.connectors.shopify import shop as erp
from tests.waiting import wait_for

WRITES = ("productSet", "productDelete", "productVariantsBulkUpdate", "inventorySetQuantities", "bulkOperationRunMutation")


def _writes(sim: Simulator) -> int:
    return sum(sim.calls[name] for name in WRITES)


def _assert_equal(sim: Simulator, dbs: Databases) -> None:
    assert sim.catalog() == erp.expected_catalog(dbs.erp)
    assert sim.stock() == erp.expected_stock(dbs.erp)
    assert Counter(p.handle for p in sim.products.values()).most_common(1)[0][1] == 1  # no product twice


def _dead_letters(cli: Cli) -> list[dict]:
    shown = cli.run("dlq", "job.yaml", "show", "--json", check=True).stdout
    return [json.loads(line) for line in shown.splitlines()]


def test_migrate_20k_products_with_prices_and_stock_then_an_unchanged_rerun_writes_nothing(
    shop_cli: Cli, dbs: Databases, shop: Simulator
) -> None:
    erp.seed(dbs.erp, products=19_400, families=200, customer_prices=3)
    shop_cli.write_job(erp.job(shop.url))
    shop_cli.run("migrate", "job.yaml", "--quiet", check=True)
    _assert_equal(shop, dbs)
    assert len(shop.products) == 19_600 and len(shop.variants) == 20_000
    assert shop.requests["throttled"] == 0
    dead = _dead_letters(shop_cli)
    assert sorted(d["key"] for d in dead) == ["P1|retail|C1|EUR|1.000", "P2|retail|C2|EUR|1.000", "P3|retail|C3|EUR|1.000"]
    assert all("customer-specific prices are not a Shopify concept" in d["reason"] for d in dead)

    first = _writes(shop)
    shop_cli.run("migrate", "job.yaml", "--quiet", check=True)
    assert _writes(shop) - first <= first // 100  # an unchanged re-run spends (almost) no write calls
    _assert_equal(shop, dbs)


def test_kill_9_mid_migration_then_rerun_ends_exact_without_duplicates(shop_cli: Cli, dbs: Databases, shop: Simulator) -> None:
    erp.seed(dbs.erp, products=6_000, families=100)
    shop.bulk_lines_per_s = 3_000  # slow enough to be caught mid-way
    shop_cli.write_job(erp.job(shop.url))
    proc = shop_cli.start("migrate", "job.yaml", "--quiet")
    wait_for(lambda: len(shop.products) >= 1_500, 120, "some products in the shop")
    psutil.Process(proc.pid).send_signal(signal.SIGKILL)
    proc.wait(10)
    assert len(shop.products) < 6_100  # killed before the end

    shop_cli.run("migrate", "job.yaml", "--quiet", check=True)
    _assert_equal(shop, dbs)
    assert len(shop.products) == 6_100


def test_deltas_from_the_erp_reach_the_shop(shop_cli: Cli, dbs: Databases, shop: Simulator) -> None:
    erp.seed(dbs.erp, products=300, families=10)
    shop_cli.write_job(erp.job(shop.url, delta="cdc"))
    shop_cli.run("migrate", "job.yaml", "--quiet", check=True)
    dbs.erp_sql("update erp_prices set amount = 12.34, updated_at = now() where sku = 'P5'")
    dbs.erp_sql("update erp_stock set on_hand = 77, updated_at = now() where sku = 'P6' and location = 'WH2'")
    dbs.erp_sql("update erp_products set name = 'Renamed', updated_at = now() where sku in ('P7', 'F2')")
    dbs.erp_sql("insert into erp_products values ('F2-XL', 'Family 2 XL', null, null, '42', 'F2', true, now())")
    dbs.erp_sql("insert into erp_prices values ('F2-XL', 'retail', null, 'EUR', 1, 99.00, now())")
    dbs.erp_sql("insert into erp_stock values ('F2-XL', 'WH1', 3, now()), ('F2-XL', 'WH2', 4, now())")
    dbs.erp_sql("delete from erp_stock where sku = 'P8'")
    dbs.erp_sql("delete from erp_prices where sku = 'P8'")
    dbs.erp_sql("delete from erp_products where sku = 'P8'")
    shop_cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    _assert_equal(shop, dbs)
    assert sorted(v.sku for v in shop.variants.values() if v.sku.startswith("F2-")) == ["F2-L", "F2-M", "F2-S", "F2-XL"]


SHOP_TO_PG = """
name: shopify-to-erp
source:
  connector: shopify
  config: {{shop_url: "{url}", access_token: "${{SHOPIFY_TOKEN}}"}}
  entities:
    products: {{delta: {{cursor: updated_at, overlap_s: 2}}}}
    prices: {{price_list: retail, delta: {{cursor: updated_at, overlap_s: 2}}}}
    stock_levels: {{locations: {{WH1: "gid://shopify/Location/1", WH2: "gid://shopify/Location/2"}}, delta: {{cursor: updated_at, overlap_s: 2}}}}
sinks:
  - name: erp
    connector: postgres
    config: {{dsn: "${{SHOP_DSN}}"}}
    entities:
      products: {{table: shop_products}}
      prices: {{table: shop_prices}}
      stock_levels: {{table: shop_stock}}
"""


def test_changes_in_the_shop_reach_postgres_by_cursor_deltas(shop_cli: Cli, dbs: Databases, shop: Simulator) -> None:
    erp.seed(dbs.erp, products=200, families=5)
    shop.bucket, shop.restore = 10_000.0, 1_000.0  # a Plus plan: reading every stock level again costs 3 points each
    shop_cli.write_job(erp.job(shop.url), "to-shop.yaml")
    shop_cli.run("migrate", "to-shop.yaml", "--quiet", check=True)
    shop_cli.write_job(SHOP_TO_PG.format(url=shop.url))
    shop_cli.run("migrate", "job.yaml", "--quiet", check=True)
    assert _postgres(dbs) == _shop_view(shop)

    variant = next(v for v in shop.variants.values() if v.sku == "P9")
    _merchant(shop, f'productVariantsBulkUpdate(productId: "gid://shopify/Product/{variant.product_id}", '
                    f'variants: [{{id: "gid://shopify/ProductVariant/{variant.id}", price: "5.55"}}]) {{ userErrors {{ message }} }}')
    _merchant(shop, f'inventorySetQuantities(input: {{name: "available", reason: "correction", ignoreCompareQuantity: true, '
                    f'quantities: [{{inventoryItemId: "gid://shopify/InventoryItem/{variant.item_id}", '
                    f'locationId: "gid://shopify/Location/1", quantity: 31}}]}}) {{ userErrors {{ message }} }}')
    shop_cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert dbs.shop_sql("select amount::text from shop_prices where sku = 'P9'") == [("5.55",)]
    assert _postgres(dbs) == _shop_view(shop)


def _merchant(sim: Simulator, mutation: str) -> None:
    status, answer = sim.graphql("2025-01", {"query": "mutation { " + mutation + " }"})
    assert status == 200 and "errors" not in answer and not next(iter(answer["data"].values()))["userErrors"], answer


def _shop_view(sim: Simulator) -> dict[str, object]:
    products = {v.sku: sim.products[v.product_id].title for v in sim.variants.values()}
    prices = {sku: row["price"] for sku, row in sim.catalog().items()}
    return {"products": products, "prices": prices, "stock": {k: str(v) for k, v in sim.stock().items()}}


def _postgres(dbs: Databases) -> dict[str, object]:
    products = dict(dbs.shop_sql("select sku, name from shop_products where sku not in (select parent_sku from shop_products where parent_sku is not null)"))
    prices = {sku: str(amount) for sku, amount in dbs.shop_sql("select sku, amount from shop_prices")}
    stock = {(s, erp.LOCATIONS[loc]): str(q) for s, loc, q in dbs.shop_sql("select sku, location, available from shop_stock")}
    return {"products": products, "prices": prices, "stock": stock}


def test_throttling_and_a_502_503_burst_are_waited_out_without_a_failed_call(
    shop_cli: Cli, dbs: Databases, shop: Simulator
) -> None:
    erp.seed(dbs.erp, products=60)
    shop.bucket, shop.restore = 1000.0, 100.0  # 100 mutations drain it
    shop.fail(4, 502)
    shop.fail(3, 503)
    shop_cli.write_job(erp.job(shop.url, bulk_threshold=10_000))  # mutations, each paid from the bucket
    run = shop_cli.run("migrate", "job.yaml", "--quiet")
    assert run.returncode == 0, run.stdout + run.stderr
    _assert_equal(shop, dbs)
    assert shop.requests["fault 502"] == 4 and shop.requests["fault 503"] == 3
    assert shop.calls["productSet"] == 60  # each product sent once: no chunk re-read after the 5xx burst
    assert shop.requests["throttled"] <= 2  # the budget learnt the bucket and waited instead


def test_a_wrong_token_fails_at_once_with_an_auth_error(shop_cli: Cli, dbs: Databases, shop: Simulator) -> None:
    erp.seed(dbs.erp, products=10)
    shop_cli.env["SHOPIFY_TOKEN"] = "shpat_wrong"
    shop_cli.write_job(erp.job(shop.url))
    started = time.monotonic()
    run = shop_cli.run("migrate", "job.yaml", "--quiet")
    assert run.returncode == 1
    assert "Invalid API key or access token" in run.stderr and "check the credentials" in run.stderr
    assert "shpat_wrong" not in run.stdout + run.stderr
    assert shop.requests["unauthorized"] <= 2 and shop.requests["graphql"] == 0
    assert time.monotonic() - started < 30


def test_a_product_the_shop_refuses_is_a_dead_letter_with_shopify_s_message(
    shop_cli: Cli, dbs: Databases, shop: Simulator
) -> None:
    erp.seed(dbs.erp, products=300)
    shop.refuse("P7", "SKU P7 is reserved by another sales channel")
    shop_cli.write_job(erp.job(shop.url))
    run = shop_cli.run("migrate", "job.yaml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "wait for products not in the shop (e.g. SKU P7)" in run.stdout
    [dead] = _dead_letters(shop_cli)
    assert dead["key"] == "P7" and "SKU P7 is reserved by another sales channel" in dead["reason"]
    assert "P7" not in shop.catalog() and len(shop.catalog()) == 299
