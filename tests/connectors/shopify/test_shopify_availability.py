"""Channel availability (`kanal inventory`) into Shopify: the outbox in front of the real sink, parking, options, a run.

The sink and the outbox run against the simulator over HTTP; the last test
runs the CLI (PostgreSQL source, embedded broker) as a user would.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from pathlib import Path

import polars as pl
import pytest

from kanal.connectors.shopify import CONNECTOR as SHOPIFY
from kanal.connectors.shopify import ShopifyConfig, ShopifyOptions, ShopifySink, ShopifySource
from kanal.connectors.shopify.simulator import Simulator
from kanal.core.channels import ChannelPublisher
from kanal.core.connector import DELETE, OP, VERSION, WriteResult
from kanal.core.deliver import SinkLimits, write_changed
from kanal.core.errors import ConfigError
from kanal.core.model import AVAILABILITY, PRODUCT
from kanal.core.retry import RetryPolicy
from kanal.core.validate import KEY
from tests.conftest import Cli, Databases
from tests.connectors.shopify import shop as erp
from tests.connectors.shopify.conftest import TOKEN, canonical_frame

WEB_AT = "gid://shopify/Location/1"
OTHER = "gid://shopify/Location/2"
WEB = ShopifyOptions(channel="web", location=WEB_AT)
NOON = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC).timestamp()


def availability(*rows: tuple[str, str, object, int]) -> pl.DataFrame:
    """Availability records (sku, channel, quantity, ledger position) as the engine hands them over."""
    records = [{"sku": s, "channel": c, "quantity": None if q is None else str(q), "version": str(v)} for s, c, q, v in rows]
    frame = canonical_frame(AVAILABILITY, records)
    return frame.with_columns(pl.Series(VERSION, [v for *_, v in rows], pl.Int64))


def products(sink: ShopifySink, *skus: str) -> None:
    """Create one-variant products with `skus` through the sink, as a products write of the same job does."""
    rows = [{"sku": sku, "name": f"Product {sku}", "parent_sku": None} for sku in skus]
    assert sink.write("products", ShopifyOptions(), canonical_frame(PRODUCT, rows), "products").failed is None


def test_the_outbox_in_front_of_the_sink_makes_a_hundred_changes_one_call_with_the_last_value(
    shop: Simulator, sink: ShopifySink, tmp_path: Path
) -> None:
    """Mirrors the WooCommerce test of `tests/inventory`: the outbox, the engine's write path, the real sink and shop."""
    now = [NOON]
    publisher = ChannelPublisher(tmp_path / "out.sqlite", clock=lambda: now[0])
    results: list[WriteResult] = []

    def send(frame: pl.DataFrame) -> WriteResult:
        result = write_changed(
            sink, "availability", WEB, frame, "channels", memory=sink.memory, limits=SinkLimits(SHOPIFY.capabilities),
            target="shop", retry=RetryPolicy(max_elapsed_s=10), cancel=threading.Event(),
        )[0]  # fmt: skip
        results.append(result)
        return result

    try:
        products(sink, "P1")
        sink.prepare("availability", WEB)
        for i in range(1, 101):
            publisher.offer(availability(("P1", "web", 40 - i % 7, i), ("P1", "marketplace", 3, i)))
        before = shop.calls["inventorySetQuantities"]
        assert publisher.flush(send).sent == 0  # still inside the window: nothing goes out
        now[0] += 1
        assert publisher.flush(send).sent == 2  # both keys leave the outbox; the shop takes only its channel's
        assert shop.calls["inventorySetQuantities"] - before == 1
        assert shop.stock()[("P1", WEB_AT)] == 40 - 100 % 7
        assert shop.stock()[("P1", OTHER)] == 0  # the marketplace's 3 went nowhere
        assert [(r.written, r.skipped_older, r.failed_count) for r in results] == [(1, 1, 0)]
    finally:
        publisher.close()


def test_availability_of_a_sku_not_in_the_shop_waits_and_lands_when_its_product_is_created(
    shop: Simulator, sink: ShopifySink
) -> None:
    sink.prepare("availability", WEB)
    first = sink.write("availability", WEB, availability(("N1", "web", 7, 1)), "a1")
    sink.write("availability", WEB, availability(("N1", "web", 4, 2)), "a2")
    sink.write("availability", WEB, availability(("N1", "web", 9, 1)), "a3")  # a late older version: it must not win
    assert first.failed is None and first.written == 1
    assert shop.calls["inventorySetQuantities"] == 0 and shop.stock() == {}
    assert sink.finish("availability", WEB) == (
        "1 availability wait for products not in the shop (e.g. SKU N1); they are written when those products are"
    )
    products(sink, "N1")
    assert shop.stock() == {("N1", WEB_AT): 4, ("N1", OTHER): 0}
    assert sink.finish("availability", WEB) is None


def test_a_negative_availability_is_written_as_nothing_to_sell_a_fraction_is_refused_a_delete_sets_zero(
    shop: Simulator, sink: ShopifySink
) -> None:
    products(sink, "Q1")
    sink.write("availability", WEB, availability(("Q1", "web", 9, 1)), "a1")
    assert shop.stock()[("Q1", WEB_AT)] == 9
    negative = sink.write("availability", WEB, availability(("Q1", "web", -3, 2)), "a2")
    assert negative.failed is None and shop.stock()[("Q1", WEB_AT)] == 0  # clamped: not refused (9 would stay), not -3
    sink.write("availability", WEB, availability(("Q1", "web", 5, 3)), "a3")
    fraction = sink.write("availability", WEB, availability(("Q1", "web", "2.5", 4)), "a4")
    assert fraction.failed is not None
    assert fraction.failed.select(KEY, "reason", VERSION).rows() == [
        ("Q1|web", "availability '2.5' of Q1 in channel 'web' is not a whole number (Shopify stocks whole units)", 4)
    ]
    assert shop.stock()[("Q1", WEB_AT)] == 5
    gone = availability(("Q1", "web", None, 5)).with_columns(pl.lit(DELETE).alias(OP))
    assert sink.write("availability", WEB, gone, "a5").failed is None
    assert shop.stock()[("Q1", WEB_AT)] == 0


def test_availability_options_are_checked_before_writing_and_only_the_sink_takes_availability(
    shop: Simulator, sink: ShopifySink
) -> None:
    with pytest.raises(ConfigError, match=r"availability: set `channel` \(e\.g\. availability: \{channel: web, location: "):
        sink.prepare("availability", ShopifyOptions(location=WEB_AT))
    with pytest.raises(ConfigError, match=r"availability: set `location` \(e\.g\. .*channel 'web'"):
        sink.prepare("availability", ShopifyOptions(channel="web"))
    with pytest.raises(ConfigError, match="availability.location: gid://shopify/Location/9 is not a location of the shop"):
        sink.prepare("availability", ShopifyOptions(channel="web", location="gid://shopify/Location/9"))
    with pytest.raises(ConfigError, match="stock_levels: `channel` applies to availability only"):
        sink.prepare("stock_levels", ShopifyOptions(channel="web", locations={"WH1": WEB_AT}))
    with pytest.raises(ConfigError, match="availability: `locations` applies to stock_levels only"):
        sink.prepare("availability", ShopifyOptions(channel="web", location=WEB_AT, locations={"WH1": WEB_AT}))
    with pytest.raises(ConfigError, match="set `channel`"):  # `kanal check` sees it too
        sink.accepts("availability", ShopifyOptions(location=WEB_AT), AVAILABILITY.schema)
    with pytest.raises(ValueError, match="'Location/1' is not a location GID"):
        ShopifyOptions(channel="web", location="Location/1")
    sink.prepare("availability", WEB)
    assert "availability" in SHOPIFY.capabilities.entities
    source = ShopifySource(ShopifyConfig(shop_url=shop.url, access_token=TOKEN))
    try:
        assert "availability" not in {info.entity for info in source.discover()}
        with pytest.raises(ConfigError, match="the Shopify source offers products, prices, stock_levels, customers, not availability"):
            source.plan("availability", ShopifyOptions())
    finally:
        source.close()


JOB = """
name: availability-to-shopify
source:
  connector: postgres
  config: {{dsn: "${{ERP_DSN}}"}}
  entities:
    products: {{table: erp_products}}
    availability: {{table: erp_availability}}
sinks:
  - name: shop
    connector: shopify
    config: {{shop_url: "{url}", access_token: "${{SHOPIFY_TOKEN}}"}}
    entities:
      products: {{}}
      availability: {{{options}}}
errors:
  retry: {{max_elapsed_s: 10, max_wait_s: 1}}
"""


def test_a_run_refuses_a_sink_without_channel_then_delivers_the_channel_through_the_outbox(
    shop_cli: Cli, dbs: Databases, shop: Simulator
) -> None:
    erp.seed(dbs.erp, products=30)
    dbs.erp_sql("create table erp_availability (sku text, channel text, quantity numeric, primary key (sku, channel))")
    dbs.erp_sql("insert into erp_availability select 'P' || g, c, g * (case c when 'web' then 1 else 2 end) "
                "from generate_series(1, 30) g, unnest(array['web', 'mp']) c")
    shop_cli.write_job(JOB.format(url=shop.url, options=f'location: "{WEB_AT}"'))
    # well formed, so `validate` (which reaches no system) passes; the options an entity needs are the sink's to check
    assert shop_cli.run("validate", "job.yaml").returncode == 0
    checked = shop_cli.run("check", "job.yaml")
    assert checked.returncode == 1
    [line] = [line for line in checked.stdout.splitlines() if line.startswith("FAIL")]
    assert line.split()[:5] == ["FAIL", "sink", "shop", "(shopify)", "availability:"] and "set `channel` (e.g." in line
    refused = shop_cli.run("migrate", "job.yaml", "--quiet")
    assert refused.returncode != 0
    assert "sinks[0].entities.availability:" in refused.stderr and "availability: set `channel` (e.g." in refused.stderr
    assert shop.products == {}  # refused before anything was written

    shop_cli.write_job(JOB.format(url=shop.url, options=f'channel: web, location: "{WEB_AT}"'))
    shop_cli.run("migrate", "job.yaml", "--quiet", check=True)
    stock = shop.stock()
    assert {sku: stock[(sku, WEB_AT)] for sku, _ in stock} == {f"P{g}": g for g in range(1, 31)}  # web's, not mp's
    assert {stock[(sku, OTHER)] for sku, _ in stock} == {0}
    outbox = shop_cli.folder / ".kanal" / "availability-to-shopify" / "sinks" / "shop.channels.sqlite"
    with sqlite3.connect(outbox) as db:  # every record went through the outbox, none is held back after the run
        assert db.execute("select count(*) from sent").fetchone()[0] == 60
        assert db.execute("select count(*) from pending").fetchone()[0] == 0
