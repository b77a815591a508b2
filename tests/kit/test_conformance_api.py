"""The built-in API connectors meet the connector contract (`kanal.testing`), against their simulators.

Each simulator runs in-process on 127.0.0.1 and speaks the system's
documented API over real HTTP; the harnesses put records into the shop as
its admin would (through its API or store, backdated where the kit wants
records changed long ago) and read what the sinks wrote from its store.
WooCommerce and Shopify run for products and customers; Shopify's sink also
through bulk operations and with the 2025-04 upserts. Neither sink empties a
shop on a source TRUNCATE (they do not declare `supports_truncate`), so the
kit skips that test for them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import polars as pl
import pytest

from kanal.connectors.shopify import CONNECTOR as SHOPIFY
from kanal.connectors.shopify import ShopifyConfig, ShopifyOptions
from kanal.connectors.shopify.simulator import Simulator as ShopifySimulator
from kanal.connectors.woocommerce import CONNECTOR as WOOCOMMERCE
from kanal.connectors.woocommerce import WooConfig, WooOptions
from kanal.connectors.woocommerce.simulator import PREFIX, WooSimulator
from kanal.core.connector import EntityOptions
from kanal.testing import BASE_TIME, Harness, SinkContract, SourceContract
from kanal.testing.contract import _Sinks


def stop_in_background(stop: Callable[[], None]) -> None:
    """Stop a simulator without waiting for it: its serve loop sees a shutdown only every 0.5 s (a test each)."""
    threading.Thread(target=stop, name="kit-simulator-stop", daemon=True).start()


# WooCommerce -----------------------------------------------------------------------------------


def _woo_stamp(at: datetime) -> str:
    """A time as WooCommerce stores it: UTC, whole seconds, no offset."""
    return at.strftime("%Y-%m-%dT%H:%M:%S")


class WooHarness(Harness):
    """Products of the WooCommerce simulator; a trashed product's SKU is the record the shop refuses."""

    spec = WOOCOMMERCE
    TRASHED = "KIT-TRASHED"

    def __init__(self, sim: WooSimulator) -> None:
        self.sim = sim

    def config(self, secret: str = "cs_test") -> WooConfig:
        return WooConfig(url=self.sim.url, consumer_key="ck_test", consumer_secret=secret)

    def bad_credentials(self) -> WooConfig:
        return self.config(secret="cs_wrong")

    def source_options(self) -> EntityOptions:
        return WooOptions()

    def delta_options(self) -> EntityOptions:
        return WooOptions.model_validate({"delta": {"cursor": "updated_at"}})

    def seed(self, frame: pl.DataFrame) -> None:
        """The shop holds exactly these products, last modified when the records say (long ago)."""
        self.sim.products.clear()
        self.sim.variations.clear()
        for row in frame.iter_rows(named=True):
            ident = self.sim.add_product(**_woo_product(row))["id"]  # answers a copy: the stored record is changed
            stamp = _woo_stamp(row["updated_at"])
            self.sim.products[ident].update(date_modified=stamp, date_modified_gmt=stamp, date_created=stamp, date_created_gmt=stamp)

    def change(self, frame: pl.DataFrame) -> None:
        """A shop manager edits or adds these products now (the shop stamps the modification time)."""
        held = self.sim.by_sku()
        for row in frame.iter_rows(named=True):
            fields = _woo_product(row)
            if row["sku"] in held:
                self.sim.touch(held[row["sku"]]["id"], **fields)
            else:
                self.sim.add_product(**fields)

    def sink_options(self) -> EntityOptions:
        return WooOptions()

    def read(self) -> pl.DataFrame:
        """Every product and variation the shop lists, by SKU."""
        rows = [(sku, record["name"]) for sku, record in self.sim.by_sku().items()]
        return pl.DataFrame(rows, schema={"sku": pl.String, "name": pl.String}, orient="row")

    def refuse(self, record: dict[str, Any]) -> dict[str, Any]:
        """A product in the trash holds the SKU: WooCommerce refuses to create it again (`product_invalid_sku`)."""
        self.sim.trash(self.TRASHED)
        return {**record, "sku": self.TRASHED}


def _woo_product(row: dict[str, Any]) -> dict[str, Any]:
    """A canonical product as the shop's fields (the ones the kit's records fill)."""
    fields = {"sku": row["sku"], "name": row["name"] or "", "description": row["description"] or "",
              "global_unique_id": row["gtin"] or "", "tax_class": row["tax_class"] or ""}  # fmt: skip
    if row["active"] is not None:
        fields["status"] = "publish" if row["active"] else "draft"
    return fields


class WooCustomersHarness(WooHarness):
    """Customers of the WooCommerce simulator, by email with the customer number in the meta data."""

    entity = "customers"

    def delta_options(self) -> None:
        return None  # WooCommerce lists customers without a modification filter: snapshots only

    def record(self, i: int, version: int, updated_at: datetime) -> dict[str, Any]:
        """The kit's record plus the email WooCommerce needs for every customer."""
        return {**super().record(i, version, updated_at), "email": f"kit-{i:05d}@example.com"}

    def seed(self, frame: pl.DataFrame) -> None:
        """The shop holds exactly these customers, created through its API."""
        self.sim.customers.clear()
        created = httpx.post(
            f"{self.sim.url}{PREFIX}customers/batch", params={"consumer_key": "ck_test", "consumer_secret": "cs_test"},
            json={"create": [_woo_customer(row) for row in frame.iter_rows(named=True)]},
        ).raise_for_status().json()["create"]
        assert not [c for c in created if "error" in c], created

    def read(self) -> pl.DataFrame:
        rows = [(_customer_no(c), c["last_name"]) for c in self.sim.customers.values()]
        return pl.DataFrame(rows, schema={"customer_no": pl.String, "last_name": pl.String}, orient="row")

    def refuse(self, record: dict[str, Any]) -> dict[str, Any]:
        """WooCommerce refuses an address that is not one (`registration-error-invalid-email`)."""
        return {**record, "email": "not an address"}


def _woo_customer(row: dict[str, Any]) -> dict[str, Any]:
    return {"email": row["email"], "first_name": row["first_name"] or "", "last_name": row["last_name"] or "",
            "meta_data": [{"key": "customer_no", "value": row["customer_no"]}]}  # fmt: skip


def _customer_no(customer: dict[str, Any]) -> str | None:
    return next((m["value"] for m in customer["meta_data"] if m["key"] == "customer_no"), None)


@pytest.fixture
def woo_simulator() -> Iterator[WooSimulator]:
    sim = WooSimulator().start()
    yield sim
    stop_in_background(sim.stop)


class TestWooCommerce(SourceContract, SinkContract):
    @pytest.fixture
    def harness(self, woo_simulator: WooSimulator) -> Harness:
        return WooHarness(woo_simulator)


class TestWooCommerceCustomers(SourceContract, SinkContract):
    @pytest.fixture
    def harness(self, woo_simulator: WooSimulator) -> Harness:
        return WooCustomersHarness(woo_simulator)


# Shopify ---------------------------------------------------------------------------------------

SHOPIFY_VERSION = "2025-01"
_SINGLE = {"productOptions": [{"name": "Title", "values": [{"name": "Default Title"}]}]}
_DEFAULT_VARIANT = [{"optionName": "Title", "name": "Default Title"}]
_LONG_AGO = int(BASE_TIME.timestamp())


class ShopifyHarness(Harness):
    """Products of the Shopify simulator, entered through its Admin API; a SKU the shop blocks is the refused record."""

    spec = SHOPIFY
    REFUSED = "KIT-BLOCKED"

    def __init__(self, sim: ShopifySimulator, **settings: Any) -> None:
        self.sim, self.settings = sim, settings

    def config(self, token: str | None = None) -> ShopifyConfig:
        settings = {"api_version": SHOPIFY_VERSION, "bulk_poll_s": 0.05, **self.settings}
        return ShopifyConfig(shop_url=self.sim.url, access_token=token or self.sim.token, **settings)

    def bad_credentials(self) -> ShopifyConfig:
        return self.config(token="shpat_wrong")

    def source_options(self) -> EntityOptions:
        return ShopifyOptions()

    def delta_options(self) -> EntityOptions:
        return ShopifyOptions.model_validate({"delta": {"cursor": "updated_at"}})

    def seed(self, frame: pl.DataFrame) -> None:
        """The shop holds exactly these products (one variant each), last updated long ago."""
        for product in list(self.sim.products):
            self.graphql("mutation($input: ProductDeleteInput!) { productDelete(input: $input) { userErrors { field message } } }",
                         {"input": {"id": f"gid://shopify/Product/{product}"}}, "productDelete")  # fmt: skip
        self.change(frame)
        for record in [*self.sim.products.values(), *self.sim.variants.values(), *self.sim.items.values()]:
            record.updated_at = _LONG_AGO

    def change(self, frame: pl.DataFrame) -> None:
        """A merchant creates these products in the admin, or renames those the shop has (found by SKU)."""
        held = {v.sku: v.product_id for v in self.sim.variants.values()}
        for row in frame.iter_rows(named=True):
            if row["sku"] in held:
                data = {"id": f"gid://shopify/Product/{held[row['sku']]}", "title": row["name"]}
            else:
                data = {"title": row["name"], **_SINGLE, "variants": [{"sku": row["sku"], "optionValues": _DEFAULT_VARIANT}]}
            self.graphql("mutation($input: ProductSetInput!) { productSet(input: $input, synchronous: true) { "
                         "product { id } userErrors { field message } } }", {"input": data}, "productSet")  # fmt: skip

    def graphql(self, query: str, variables: dict[str, Any], field: str) -> dict[str, Any]:
        """One Admin API call, as the merchant's admin makes it; its `field` must report no user error."""
        answer = httpx.post(
            f"{self.sim.url}/admin/api/{SHOPIFY_VERSION}/graphql.json", headers={"X-Shopify-Access-Token": self.sim.token},
            json={"query": query, "variables": variables},
        ).raise_for_status().json()
        assert "errors" not in answer and not answer["data"][field]["userErrors"], answer
        return answer["data"][field]

    def sink_options(self) -> EntityOptions:
        return ShopifyOptions()

    def read(self) -> pl.DataFrame:
        """Every variant by SKU with its product's title."""
        rows = [(sku, entry["title"]) for sku, entry in self.sim.catalog().items()]
        return pl.DataFrame(rows, schema={"sku": pl.String, "name": pl.String}, orient="row")

    def refuse(self, record: dict[str, Any]) -> dict[str, Any]:
        """The shop refuses writes of a variant with a blocked SKU (`Simulator.refuse`)."""
        self.sim.refuse(self.REFUSED)
        return {**record, "sku": self.REFUSED}


class ShopifyCustomersHarness(ShopifyHarness):
    """Customers of the Shopify simulator, the customer number in the metafield `kanal.customer_no`."""

    entity = "customers"

    def record(self, i: int, version: int, updated_at: datetime) -> dict[str, Any]:
        """The kit's record plus an email, by which Shopify finds a customer again."""
        return {**super().record(i, version, updated_at), "email": f"kit-{i:05d}@example.com"}

    def seed(self, frame: pl.DataFrame) -> None:
        """The shop holds exactly these customers, last updated long ago."""
        for customer in list(self.sim.customers):
            self.graphql("mutation($input: CustomerDeleteInput!) { customerDelete(input: $input) { userErrors { field message } } }",
                         {"input": {"id": f"gid://shopify/Customer/{customer}"}}, "customerDelete")  # fmt: skip
        self.change(frame)
        for customer in self.sim.customers.values():
            customer.updated_at = _LONG_AGO

    def change(self, frame: pl.DataFrame) -> None:
        """A merchant adds these customers, or renames those the shop has (found by email)."""
        held = {c.email: c.id for c in self.sim.customers.values()}
        for row in frame.iter_rows(named=True):
            data: dict[str, Any] = {"lastName": row["last_name"]}
            if row["email"] in held:
                mutation, data["id"] = "customerUpdate", f"gid://shopify/Customer/{held[row['email']]}"
            else:
                mutation = "customerCreate"
                data.update(email=row["email"], metafields=[
                    {"namespace": "kanal", "key": "customer_no", "type": "single_line_text_field", "value": row["customer_no"]}])  # fmt: skip
            self.graphql(f"mutation($input: CustomerInput!) {{ {mutation}(input: $input) {{ customer {{ id }} "
                         "userErrors { field message } } }", {"input": data}, mutation)  # fmt: skip

    def read(self) -> pl.DataFrame:
        rows = [(c.metafields.get(("kanal", "customer_no")), c.last_name) for c in self.sim.customers.values()]
        return pl.DataFrame(rows, schema={"customer_no": pl.String, "last_name": pl.String}, orient="row")

    def refuse(self, record: dict[str, Any]) -> dict[str, Any]:
        """Shopify refuses an address that is not one ("Email is invalid")."""
        return {**record, "email": "not an address"}


@pytest.fixture
def shopify_simulator() -> Iterator[ShopifySimulator]:
    sim = ShopifySimulator().start()
    yield sim
    stop_in_background(sim.stop)


class TestShopify(SourceContract, SinkContract):
    @pytest.fixture
    def harness(self, shopify_simulator: ShopifySimulator) -> Harness:
        return ShopifyHarness(shopify_simulator)


class TestShopifyCustomers(SourceContract, SinkContract):
    @pytest.fixture
    def harness(self, shopify_simulator: ShopifySimulator) -> Harness:
        return ShopifyCustomersHarness(shopify_simulator)


class TestShopifyBulk(SinkContract):
    """Every write as one bulk operation, and records the memory lost found by bulk export."""

    @pytest.fixture
    def harness(self, shopify_simulator: ShopifySimulator) -> Harness:
        return ShopifyHarness(shopify_simulator, bulk_threshold=1)


class TestShopifyUpserts(SinkContract):
    """API 2025-04: `productSet` upserts by `identifier` on Shopify's side."""

    @pytest.fixture
    def harness(self, shopify_simulator: ShopifySimulator) -> Harness:
        return ShopifyHarness(shopify_simulator, api_version="2025-04")


class TestShopifyCustomersUpserts(SinkContract):
    """API 2025-04: customers written with `customerSet`, by `identifier`."""

    @pytest.fixture
    def harness(self, shopify_simulator: ShopifySimulator) -> Harness:
        return ShopifyCustomersHarness(shopify_simulator, api_version="2025-04")
