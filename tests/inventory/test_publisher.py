"""The channel publisher: coalescing, decreases first, per-key daily caps, never an older value after a newer one."""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
import threading
from pathlib import Path

import polars as pl

from kanal.connectors.woocommerce import CONNECTOR as WOO
from kanal.connectors.woocommerce import WooConfig, WooOptions, WooSink
from kanal.connectors.woocommerce.simulator import WooSimulator
from kanal.core.channels import ChannelPublisher
from kanal.core.connector import VERSION, WriteResult
from kanal.core.deliver import SinkLimits, write_changed
from kanal.core.retry import RetryPolicy
from kanal.core.sinkmemory import SinkMemory
from kanal.core.model import AVAILABILITY
from kanal.core.validate import KEY
from tests.conftest import Cli, Databases

NOON = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Channel:
    """The receiving end of `send`: every call with its rows, in the order sent."""

    def __init__(self, refuse: set[str] | None = None) -> None:
        self.calls: list[pl.DataFrame] = []
        self.refuse = refuse or set()

    def send(self, frame: pl.DataFrame) -> WriteResult:
        self.calls.append(frame)
        failed = frame.filter(pl.col(KEY).is_in(list(self.refuse))).select(KEY, pl.lit("refused").alias("reason"))
        return WriteResult(written=frame.height - failed.height, failed=failed if failed.height else None)

    def rows(self) -> list[tuple[str, int, int]]:
        """(key, quantity, version) of every record sent, in order."""
        return [(k, int(q), v) for call in self.calls for k, q, v in call.select(KEY, "quantity", VERSION).iter_rows()]


def updates(*rows: tuple[str, str, int, int]) -> pl.DataFrame:
    """Availability records (sku, channel, quantity, version) as the delivery hands them over."""
    frame = pl.DataFrame(rows, schema=["sku", "channel", "quantity", VERSION], orient="row")
    return frame.with_columns(pl.col("quantity").cast(pl.String), pl.col(VERSION).cast(pl.String).alias("version"),
                              pl.lit(None, pl.Datetime("us", "UTC")).alias("computed_at"), AVAILABILITY.key_expr())  # fmt: skip


def test_a_hundred_updates_inside_the_window_make_one_call_with_the_last_value(tmp_path: Path) -> None:
    clock, channel = Clock(), Channel()
    publisher = ChannelPublisher(tmp_path / "out.sqlite", window_s=0.2, clock=clock)
    for i in range(1, 101):
        publisher.offer(updates(("A", "web", 100 - i, i)))
        clock.now += 0.001
        assert publisher.flush(channel.send).sent == 0  # still inside the window: nothing goes out
    clock.now += 0.2
    assert publisher.flush(channel.send).sent == 1
    assert len(channel.calls) == 1
    assert channel.rows() == [("A|web", 0, 100)]
    assert publisher.flush(channel.send).sent == 0 and len(channel.calls) == 1


def test_decreases_go_first_biggest_drop_leading(tmp_path: Path) -> None:
    clock, channel = Clock(), Channel()
    publisher = ChannelPublisher(tmp_path / "out.sqlite", clock=clock)
    publisher.offer(updates(("A", "web", 10, 1), ("B", "web", 10, 1), ("C", "web", 10, 1), ("D", "web", 5, 1)))
    publisher.flush(channel.send, all_ripe=True)
    channel.calls.clear()
    publisher.offer(updates(("A", "web", 12, 2), ("B", "web", 0, 2), ("C", "web", 4, 2), ("D", "web", 9, 2)))
    publisher.flush(channel.send, all_ripe=True)
    assert [k for k, _, _ in channel.rows()] == ["B|web", "C|web", "A|web", "D|web"]


def test_a_daily_cap_per_key_holds_the_newest_value_until_the_next_day(tmp_path: Path) -> None:
    clock, channel = Clock(), Channel()
    publisher = ChannelPublisher(tmp_path / "out.sqlite", daily={"marketplace": 3}, clock=clock)
    for version in range(1, 7):
        publisher.offer(updates(("M", "marketplace", 50 - version, version), ("W", "web", 50 - version, version)))
        publisher.flush(channel.send, all_ripe=True)
    sent = channel.rows()
    assert [v for k, _, v in sent if k == "M|marketplace"] == [1, 2, 3]
    assert [v for k, _, v in sent if k == "W|web"] == [1, 2, 3, 4, 5, 6]  # no cap on the web channel
    assert publisher.waiting() == 1
    clock.now += 12 * 3600  # midnight UTC passed: the allowance is back, the newest value goes
    channel.calls.clear()
    assert publisher.flush(channel.send).sent == 1
    assert channel.rows() == [("M|marketplace", 44, 6)]


def test_never_an_older_value_after_a_newer_one_in_any_arrival_order(tmp_path: Path) -> None:
    """Versions of 20 keys arrive shuffled, duplicated, in random batches, with random flushes, refusals and restarts."""
    for seed in range(8):
        rng = random.Random(seed)
        clock, channel = Clock(), Channel(refuse={"K3|web"})
        path = tmp_path / f"out-{seed}.sqlite"
        publisher = ChannelPublisher(path, window_s=0.2, clock=clock)
        events = [(f"K{k}", "web", rng.randrange(100), v) for k in range(20) for v in range(1, rng.randrange(2, 30))]
        newest = {f"K{k}|web": max(v for s, _, _, v in events if s == f"K{k}") for k in range(20)}
        events += rng.sample(events, len(events) // 4)  # re-deliveries
        rng.shuffle(events)
        while events:
            size = rng.randrange(1, 12)
            batch, events = events[:size], events[size:]
            publisher.offer(updates(*batch))
            clock.now += rng.choice((0.0, 0.05, 0.3))
            if rng.random() < 0.3:
                publisher.flush(channel.send)
            if rng.random() < 0.05:  # a restart: the outbox is read again from its file
                publisher.close()
                publisher = ChannelPublisher(path, window_s=0.2, clock=clock)
        publisher.flush(channel.send, all_ripe=True)
        last: dict[str, int] = {}
        for key, _, version in channel.rows():
            assert version > last.get(key, 0), f"seed {seed}: {key} got version {version} after {last.get(key)}"
            last[key] = version
        assert last == newest, f"seed {seed}: the newest value of every key is what the channel got last"
        publisher.close()


def test_a_woocommerce_shop_gets_the_settled_value_of_its_channel_in_one_call(tmp_path: Path) -> None:
    """The outbox in front of the real WooCommerce sink, its simulator over HTTP: 100 changes of a sku, one update."""
    sim = WooSimulator().start()
    sink = WooSink(WooConfig(url=sim.url, consumer_key="ck_test", consumer_secret="cs_test"))
    memory = SinkMemory(tmp_path / "woo.sqlite")
    sink.attach(memory)
    options = WooOptions(channel="web")
    clock = Clock()
    publisher = ChannelPublisher(tmp_path / "out.sqlite", clock=clock)

    def send(frame: pl.DataFrame) -> WriteResult:
        return write_changed(
            sink, "availability", options, frame, "channels", memory=memory, limits=SinkLimits(WOO.capabilities),
            target="woo", retry=RetryPolicy(max_elapsed_s=10), cancel=threading.Event(),
        )[0]  # fmt: skip

    try:
        sim.add_product(sku="P1", name="Product 1", manage_stock=True, stock_quantity=40)
        sink.prepare("availability", options)
        for i in range(1, 101):
            publisher.offer(updates(("P1", "web", 40 - i % 7, i), ("P1", "marketplace", 3, i)))
        clock.now += 1
        before = sim.calls["POST products/batch"]
        flushed = publisher.flush(send)
        assert flushed.sent == 2  # the marketplace row is skipped by a shop showing the web channel
        assert sim.calls["POST products/batch"] - before == 1
        assert sim.by_sku()["P1"]["stock_quantity"] == 40 - 100 % 7
    finally:
        sink.close()
        publisher.close()
        sim.stop()


AVAILABILITY_JOB = """
name: availability-to-woo
kafka: {bootstrap_servers: embedded}
source:
  connector: postgres
  config: {dsn: "${ERP_DSN}"}
  entities:
    availability: {table: erp_availability}
sinks:
  - name: woo
    connector: woocommerce
    config: {url: "${WOO_URL}", consumer_key: ck_test, consumer_secret: cs_test}
    entities:
      availability: {channel: web}
inventory: {publish_window_ms: 10000}  # nothing ripens before the run's end sends all: records delivered in
                                       # several batches still make one call, however the machine is loaded
"""


def test_a_run_delivers_availability_to_an_api_sink_through_the_outbox(cli: Cli, dbs: Databases) -> None:
    """The delivery's hook end to end (CLI, embedded broker, PostgreSQL, the WooCommerce simulator over HTTP)."""
    sim = WooSimulator().start()
    try:
        for i in range(1, 31):
            sim.add_product(sku=f"P{i}", name=f"Product {i}", manage_stock=True, stock_quantity=100)
        dbs.erp_sql("create table erp_availability (sku text, channel text, quantity numeric, primary key (sku, channel))")
        dbs.erp_sql("insert into erp_availability select 'P' || g, c, g from generate_series(1, 30) g, unnest(array['web', 'mp']) c")
        cli.env["WOO_URL"] = sim.url
        cli.write_job(AVAILABILITY_JOB)
        cli.run("migrate", "job.yaml", "--quiet", check=True)
        shop = sim.by_sku()
        assert {sku: shop[sku]["stock_quantity"] for sku in shop} == {f"P{i}": i for i in range(1, 31)}
        assert sim.calls["POST products/batch"] == 1  # 30 skus coalesced into one batch call
        outbox = cli.folder / ".kanal" / "availability-to-woo" / "sinks" / "woo.channels.sqlite"
        with sqlite3.connect(outbox) as db:  # the outbox carried every record, and holds none back after the run
            assert db.execute("select count(*) from sent").fetchone()[0] == 60
            assert db.execute("select count(*) from pending").fetchone()[0] == 0
    finally:
        sim.stop()
