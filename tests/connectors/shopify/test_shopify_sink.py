"""The Shopify sink and source against the simulator directly (no Kafka): ids, customers, parking, faults, options."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from kanal.connectors.shopify import ShopifyConfig, ShopifyOptions, ShopifySink
from kanal.connectors.shopify.simulator import Simulator
from kanal.core.connector import DELETE, OP, VERSION
from kanal.core.errors import AuthError, ConfigError
from kanal.core.http import HttpSettings
from kanal.core.model import CUSTOMER, PRICE, PRODUCT, STOCK_LEVEL
from tests.connectors.shopify.conftest import TOKEN
from tests.connectors.shopify.conftest import canonical_frame as _frame
from tests.connectors.shopify.conftest import shopify_sink as _sink

LOCATIONS = ShopifyOptions(locations={"WH1": "gid://shopify/Location/1"})
RETAIL = ShopifyOptions(price_list="retail")


def test_a_lost_memory_updates_the_products_the_shop_has_instead_of_creating_them_again(
    shop: Simulator, sink: ShopifySink, tmp_path: Path
) -> None:
    rows = [{"sku": f"S{n}", "name": f"Shirt {n}", "parent_sku": None} for n in range(3)]
    rows += [{"sku": f"S0-{size}", "name": size, "parent_sku": "S0"} for size in ("S", "M")]
    sink.write("products", ShopifyOptions(), _frame(PRODUCT, rows), "b1")
    fresh = _sink(shop, tmp_path / "lost")
    renamed = [{**rows[0], "name": "Shirt zero"}, {"sku": "S0-L", "name": "L", "parent_sku": "S0"}]
    assert fresh.write("products", ShopifyOptions(), _frame(PRODUCT, renamed), "b2").failed is None
    fresh.close()
    assert len(shop.products) == 3
    catalog = shop.catalog()
    assert sorted(s for s, v in catalog.items() if v["product"] == "S0") == ["S0-L", "S0-M", "S0-S"]
    assert catalog["S0-L"]["title"] == "Shirt zero"


def test_a_variant_before_its_parent_and_a_price_before_its_product(shop: Simulator, sink: ShopifySink) -> None:
    sink.write("prices", RETAIL, _frame(PRICE, [{"sku": "K1-a", "price_list": "retail", "currency": "EUR", "amount": "4.20"}]), "p")
    assert shop.catalog() == {}  # parked: the product is not in the shop yet
    sink.write("products", ShopifyOptions(), _frame(PRODUCT, [{"sku": "K1-a", "name": "a", "parent_sku": "K1"}]), "v")
    sink.write("products", ShopifyOptions(), _frame(PRODUCT, [{"sku": "K1", "name": "Kettle", "brand": "K", "parent_sku": None}]), "p")
    assert shop.catalog() == {
        "K1-a": {"product": "K1", "title": "Kettle", "vendor": "K", "type": "", "status": "ACTIVE", "barcode": None, "price": "4.20"}
    }
    assert sink.finish("prices", RETAIL) is None


@pytest.mark.parametrize("version", ["2025-01", "2025-04"])
def test_customers_are_created_once_and_updated_by_email_or_id(shop: Simulator, tmp_path: Path, version: str) -> None:
    sink = _sink(shop, tmp_path, api_version=version)
    address = {"billing": {"street": "Main 1", "zip": "10115", "city": "Berlin", "country": "DE"}, "shipping": None}
    row = {"customer_no": "K7", "first_name": "Ada", "last_name": "L", "email": "ada@example.com", "addresses": address}
    sink.write("customers", ShopifyOptions(), _frame(CUSTOMER, [row]), "c1")
    fresh = _sink(shop, tmp_path / "lost", api_version=version)  # the id is found again by email
    result = fresh.write("customers", ShopifyOptions(), _frame(CUSTOMER, [{**row, "last_name": "Lovelace"}]), "c2")
    bad = fresh.write("customers", ShopifyOptions(), _frame(CUSTOMER, [{**row, "customer_no": "K8", "email": "no-at-sign"}]), "c3")
    sink.close()
    fresh.close()
    assert result.failed is None
    [customer] = shop.customers.values()
    assert (customer.last_name, customer.metafields[("kanal", "customer_no")]) == ("Lovelace", "K7")
    assert customer.addresses[0]["city"] == "Berlin"
    assert bad.failed is not None and bad.failed.row(0) == ("K8", "Shopify refused customer K8: email: Email is invalid")


def test_deletes_remove_a_variant_then_its_product_and_a_deleted_stock_level_sets_zero(shop: Simulator, sink: ShopifySink) -> None:
    rows = [{"sku": "D", "name": "Desk", "parent_sku": None}] + [{"sku": f"D-{c}", "name": c, "parent_sku": "D"} for c in "xy"]
    sink.write("products", ShopifyOptions(), _frame(PRODUCT, rows), "b")
    sink.write("stock_levels", LOCATIONS, _frame(STOCK_LEVEL, [{"sku": "D-x", "location": "WH1", "on_hand": "5"}]), "s")
    gone = _frame(STOCK_LEVEL, [{"sku": "D-x", "location": "WH1"}]).with_columns(pl.lit(DELETE).alias(OP), pl.lit(2).alias(VERSION))
    sink.write("stock_levels", LOCATIONS, gone, "s2")
    assert shop.stock()[("D-x", "gid://shopify/Location/1")] == 0
    delete = _frame(PRODUCT, [{"sku": "D-y"}]).with_columns(pl.lit(DELETE).alias(OP), pl.lit(3).alias(VERSION))
    sink.write("products", ShopifyOptions(), delete, "d1")
    assert sorted(shop.catalog()) == ["D-x"]
    delete = _frame(PRODUCT, [{"sku": "D"}]).with_columns(pl.lit(DELETE).alias(OP), pl.lit(4).alias(VERSION))
    sink.write("products", ShopifyOptions(), delete, "d2")
    assert shop.products == {}


def test_a_hanging_answer_is_retried_after_the_timeout(shop: Simulator, tmp_path: Path) -> None:
    sink = _sink(shop, tmp_path, http=HttpSettings(timeout_s=0.5))
    shop.hang(1, 1.5)
    sink.write("products", ShopifyOptions(), _frame(PRODUCT, [{"sku": "H", "name": "Hat", "parent_sku": None}]), "h")
    sink.close()
    assert shop.requests["hung"] == 1 and list(shop.catalog()) == ["H"] and len(shop.products) == 1


def test_options_and_credentials_are_checked_before_writing(shop: Simulator, sink: ShopifySink, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set `price_list`"):
        sink.prepare("prices", ShopifyOptions())
    with pytest.raises(ConfigError, match=r"WH9 -> gid://shopify/Location/9 is not a location of the shop"):
        sink.prepare("stock_levels", ShopifyOptions(locations={"WH9": "gid://shopify/Location/9"}))
    with pytest.raises(ConfigError, match="`locations` applies to stock_levels only"):
        sink.prepare("products", LOCATIONS)
    wrong = _sink(shop, tmp_path / "wrong", token="shpat_wrong")
    with pytest.raises(AuthError, match="Invalid API key or access token"):
        wrong.check()
    wrong.close()
    assert shop.requests["unauthorized"] == 1
    with pytest.raises(ValueError, match="not a Shopify API version"):
        ShopifyConfig(shop_url=shop.url, access_token=TOKEN, api_version="2025-02")
