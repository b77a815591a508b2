"""The WooCommerce sink against its simulator over HTTP: fields that wait for their product.

Prices and stock travel independently of products, so one can arrive
before its product exists in the shop and wait in the sink memory. A run
killed after the shop created the product, but before the sink learnt its
id, leaves such a field waiting while the product is already there: the
next write of the product must still carry it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from kanal.connectors.woocommerce import WooConfig, WooOptions, WooSink
from kanal.connectors.woocommerce.simulator import WooSimulator
from kanal.core.model import PRODUCT, STOCK_LEVEL
from kanal.core.sinkmemory import SinkMemory

WH1 = WooOptions(location="WH1")


@pytest.fixture
def sink(sim: WooSimulator, tmp_path: Path) -> Iterator[WooSink]:
    woo = WooSink(WooConfig(url=sim.url, consumer_key="ck_test", consumer_secret="cs_test"))
    woo.attach(SinkMemory(tmp_path / "woo.sqlite"))
    for entity, options in (("products", WooOptions()), ("stock_levels", WH1)):
        woo.prepare(entity, options)
    yield woo
    woo.close()


def stock(*rows: tuple[str, int]) -> pl.DataFrame:
    frame = pl.DataFrame([(sku, "WH1", str(q)) for sku, q in rows], schema=["sku", "location", "on_hand"], orient="row")
    return frame.with_columns(STOCK_LEVEL.key_expr())


def products(*rows: tuple[str, str | None]) -> pl.DataFrame:
    frame = pl.DataFrame(
        [(sku, f"Product {sku}", parent, True) for sku, parent in rows], schema=["sku", "name", "parent_sku", "active"], orient="row"
    )
    return frame.with_columns(PRODUCT.key_expr())


def test_stock_waiting_for_a_parent_the_shop_holds_unknown_to_the_sink_lands_with_the_parents_write(
    sink: WooSink, sim: WooSimulator
) -> None:
    sink.write("stock_levels", WH1, stock(("P1", 7), ("P2", 3)), "b1")  # neither product is in the shop: both wait
    sim.add_product(sku="P1", name="P1", type="variable", status="draft")  # created by a killed run, its answer lost
    result = sink.write("products", WooOptions(), products(("P1", None), ("P2", "P1")), "b2")
    assert result.failed is None
    shop = sim.by_sku()
    assert (shop["P1"]["stock_quantity"], shop["P2"]["stock_quantity"]) == (7, 3)
    assert sink.memory.ids("woocommerce:pending-stock", ["P1", "P2"]) == {}  # applied, so no longer waiting


def test_stock_waiting_for_a_product_lands_once_whichever_path_creates_it(sink: WooSink, sim: WooSimulator) -> None:
    sink.write("stock_levels", WH1, stock(("P5", 4)), "b1")
    sim.add_product(sku="P5", name="P5")  # the shop has it, the sink memory does not
    sink.write("products", WooOptions(), products(("P5", None)), "b2")
    assert sim.by_sku()["P5"]["stock_quantity"] == 4
    assert sink.memory.ids("woocommerce:pending-stock", ["P5"]) == {}
    sink.write("stock_levels", WH1, stock(("P5", 9)), "b3")
    sink.write("products", WooOptions(), products(("P5", None)), "b4")  # a stale wait would put 4 back
    assert sim.by_sku()["P5"]["stock_quantity"] == 9
