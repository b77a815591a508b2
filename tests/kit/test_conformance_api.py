"""The built-in API connectors meet the connector contract (`kanal.testing`), against their simulators.

Each simulator runs in-process on 127.0.0.1 and speaks the system's
documented API over real HTTP; the harnesses put records into its store as
the shop's admin would and read back what the sinks wrote from it.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import polars as pl
import pytest

from kanal.connectors.woocommerce import CONNECTOR as WOOCOMMERCE
from kanal.connectors.woocommerce import WooConfig, WooOptions
from kanal.connectors.woocommerce.simulator import PREFIX, WooSimulator
from kanal.core.connector import EntityOptions
from kanal.testing import Harness, SinkContract, SourceContract
from kanal.testing.contract import _Sinks


class TruncateNotApplied(Exception):
    """The kit's delete-and-truncate test failed at the truncate, and only there."""


class RefusesTruncates:
    """A sink that declares `supports_deletes` but refuses truncate rows into the dead-letter queue.

    The contract says such a sink applies deletes *and* truncates; the API
    sinks refuse to empty a shop, and `Capabilities` has no way to say so.
    Until one of the two changes, the kit's test is expected to fail exactly
    at the truncate: a failure anywhere else (the delete) still fails, and
    once truncates apply the strict mark fails too.
    """

    @pytest.mark.xfail(raises=TruncateNotApplied, strict=True, reason="declares supports_deletes, but refuses truncate rows")
    def test_deletes_and_truncates_apply_and_older_records_stay_out(self, harness: Harness, sinks: _Sinks) -> None:
        try:
            SinkContract.test_deletes_and_truncates_apply_and_older_records_stay_out(self, harness, sinks)  # type: ignore[arg-type]
        except AssertionError as failure:
            if traceback.extract_tb(failure.__traceback__)[-1].line != "assert held(harness) == {}":
                raise
            raise TruncateNotApplied("the records are still there after the truncate") from failure


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
    sim.stop()


class TestWooCommerce(RefusesTruncates, SourceContract, SinkContract):
    @pytest.fixture
    def harness(self, woo_simulator: WooSimulator) -> Harness:
        return WooHarness(woo_simulator)


class TestWooCommerceCustomers(RefusesTruncates, SourceContract, SinkContract):
    @pytest.fixture
    def harness(self, woo_simulator: WooSimulator) -> Harness:
        return WooCustomersHarness(woo_simulator)
