"""Real-time inventory latency: a sale posted to a store's `kanal edge` agent -> availability in Redis and the shop table.

    .venv/bin/python bench/inventory_latency.py                   # 1,000 sales/s for 30 s
    .venv/bin/python bench/inventory_latency.py --rate 500 --seconds 10 --skus 500

One run (examples/inventory.yaml, the landscape of `kanal demo --inventory`):

  1. starts a throwaway PostgreSQL (pgserver) with a `shop` database, a
     broker, the agents of stores S1 and S2, `kanal inventory` and `kanal
     sync` (Redis: an embedded Valkey; PostgreSQL: the shop tables);
  2. receives a large stock of every sku at one store (half the skus at
     each), and waits until Redis shows every sku's `web` availability;
  3. posts `--rate` sales per second for `--seconds`, spread over both
     stores, in requests of `--per-request` sales paced on a monotonic clock
     (a late request does not shift the ones after it); each sku is sold at
     one store only, so its `web` quantity drops by exactly one per sale and
     the n-th sale of a sku is the one that makes it show Q0 - n;
  4. records, per sale, when it was posted (just before its request) and when
     each stage first showed it: the movements topic (the agent forwarded
     it), the availability topic (`kanal inventory` published it), Redis (its
     change stream, XREAD BLOCK) and the shop table (a trigger NOTIFYs on
     each row the sink writes; this process LISTENs);
  5. prints p50/p95/p99/max per stage (cumulative from the post), the rate
     achieved, and exits 1 when a sale never showed in a sink within 60 s.

Every time is this machine's wall clock, read by this process, so no clock
skew enters the figures. Target: p99 < 500 ms to both sinks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import polars as pl
from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from kanal.core import wire
from kanal.core.model import AVAILABILITY, STOCK_MOVEMENT
from kanal.jobs import demo
from kanal.jobs.inventory_landscape import Landscape, wait_until
from kanal.jobs.inventory_watch import Posted, RedisWatch, ShopWatch, Tracker, percentile

STORES = ("S1", "S2")
STOCK = 1_000_000


class TopicWatch(threading.Thread):
    """First time each sale shows on the movements topic (by event_id) and on the availability topic (by value)."""

    def __init__(self, landscape: Landscape, tracker: Tracker) -> None:
        super().__init__(name="bench-topics", daemon=True)
        assert landscape.loaded is not None
        kafka = landscape.loaded.job.kafka
        self.topics = {kafka.topic(STOCK_MOVEMENT.name): STOCK_MOVEMENT, kafka.topic(AVAILABILITY.name): AVAILABILITY}
        self.consumer = Consumer({"bootstrap.servers": landscape.broker.bootstrap, "group.id": "bench-topics",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 5})  # fmt: skip
        self.tracker, self.stop = tracker, threading.Event()
        self.forwarded: dict[str, float] = {}
        self.ready = threading.Event()

    def run(self) -> None:
        parts = []
        for topic in self.topics:
            count = len(self.consumer.list_topics(topic, timeout=10).topics[topic].partitions)
            parts += [TopicPartition(topic, p, OFFSET_END) for p in range(count)]
        self.consumer.assign(parts)
        self.ready.set()
        while not self.stop.is_set():
            messages = [m for m in self.consumer.consume(1000, timeout=0.05) if m.error() is None]
            now = time.time()
            by_topic: dict[str, list[tuple[bytes | None, dict[str, str]]]] = defaultdict(list)
            for msg in messages:
                by_topic[msg.topic()].append((msg.value(), wire.headers_of(msg.headers())))
            for topic, batch in by_topic.items():
                entity = self.topics[topic]
                frame = wire.messages_frame(batch, entity.schema)
                if entity is STOCK_MOVEMENT:
                    self.forwarded.update((e, now) for e in frame["event_id"].to_list())
                    continue
                for sku, channel, quantity in frame.select("sku", "channel", "quantity").iter_rows():
                    if channel == "web":
                        self.tracker.seen("topic", AVAILABILITY.name, sku, channel, int(quantity), now)
        self.consumer.close()


def post_sales(landscape: Landscape, tracker: Tracker, skus: dict[str, list[str]], start: dict[str, int], args: argparse.Namespace,
               posted: dict[str, float], answered: list[float]) -> int:  # fmt: skip
    """Post sales on a monotonic schedule, `args.posters` threads per store each selling its own skus; returns how many."""
    sold: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    posters = [(code, n, mine[n :: args.posters]) for code, mine in skus.items() for n in range(args.posters)]
    interval = args.per_request / (args.rate / len(posters))
    began = time.monotonic()

    def poster(code: str, number: int, mine: list[str]) -> None:
        site, n = landscape.sites[code], 0
        while (due := began + n * interval) < began + args.seconds:
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            records = []
            now = time.time()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
            for i in range(args.per_request):
                sku = mine[(n * args.per_request + i) % len(mine)]
                sold[sku] += 1
                event_id = f"{code}-{number}-{n}-{i}"
                records.append({"event_id": event_id, "sku": sku, "location": code, "delta": -1, "reason": "sale",
                                "occurred_at": stamp})  # fmt: skip
                tracker.expect(Posted(AVAILABILITY.name, sku, "web", start[sku] - sold[sku], now, event_id))
                posted[event_id] = now
            site.post(records)
            answered.append(time.time() - now)
            counts[f"{code}-{number}"] += args.per_request
            n += 1

    threads = [threading.Thread(target=poster, args=p) for p in posters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts.values())


def line(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name:<34} -"
    ms = [v * 1000 for v in values]
    return (f"  {name:<34} p50 {percentile(ms, 50):7.0f}  p95 {percentile(ms, 95):7.0f}  p99 {percentile(ms, 99):7.0f}  "
            f"max {max(ms):7.0f}  ({len(ms):,})")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000, help="sales per second, all stores together")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--skus", type=int, default=1000)
    parser.add_argument("--per-request", type=int, default=25, help="sales per POST /movements")
    parser.add_argument("--posters", type=int, default=4, help="tills posting at the same time, per store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kanal-inventory-bench-") as scratch:
        root = Path(scratch)
        server = demo.pg_server(root / "shop-pg")
        try:
            return run(root, demo.fresh_database(server, "shop"), args)
        finally:
            server.cleanup()


def run(root: Path, shop_dsn: str, args: argparse.Namespace) -> int:
    tracker = Tracker(sinks=("topic", "redis", "shop"))
    skus = {code: [f"B-{i:05d}" for i in range(args.skus) if i % len(STORES) == n] for n, code in enumerate(STORES)}
    with Landscape(root, shop_dsn, sites=STORES) as landscape:
        print("starting the landscape (broker, 2 agents, kanal inventory, kanal sync) ...", file=sys.stderr)
        landscape.start()
        for code, mine in skus.items():
            for at in range(0, len(mine), 1000):
                landscape.sites[code].post([{"event_id": f"rcv-{sku}", "sku": sku, "location": code, "delta": STOCK,
                                             "reason": "receipt"} for sku in mine[at:at + 1000]])  # fmt: skip
        wait_until(lambda: landscape.redis_availability().filter(pl.col("channel") == "web").height == args.skus, 120,
                   "every sku's web availability in Redis")  # fmt: skip
        start = dict(landscape.redis_availability().filter(pl.col("channel") == "web").select("sku", "quantity").iter_rows())
        topics, redis, shop = (TopicWatch(landscape, tracker), RedisWatch(landscape.redis.connection.client, tracker, ("availability",)),
                               ShopWatch(landscape.shop_dsn, tracker, ("shop_availability",)))  # fmt: skip
        for watch in (topics, redis, shop):
            watch.start()
        wait_until(lambda: topics.ready.is_set() and shop.listening.is_set(), 30, "the watchers")
        time.sleep(0.5)  # XREAD's first call and the NOTIFY trigger are in place
        posted: dict[str, float] = {}
        answered: list[float] = []
        print(f"posting {args.rate:,.0f} sales/s for {args.seconds:.0f} s over {args.skus:,} skus ...", file=sys.stderr)
        began = time.monotonic()
        total = post_sales(landscape, tracker, skus, start, args, posted, answered)
        elapsed = time.monotonic() - began
        try:
            wait_until(lambda: tracker.waiting() == 0, 60, "every sale to show in both sinks", interval=0.2)
        except Exception as exc:  # noqa: BLE001 - reported with the figures
            print(f"not every sale showed: {exc}; {tracker.waiting():,} waiting", file=sys.stderr)
        for watch in (topics, redis, shop):
            watch.stop.set()
        forwarded = [topics.forwarded[e] - t for e, t in posted.items() if e in topics.forwarded]
    print(f"\n{total:,} sales posted in {elapsed:.1f} s: {total / elapsed:,.0f}/s achieved ({args.rate:,.0f}/s asked), "
          f"{args.per_request} per request, {args.posters} posters per store, {args.skus:,} skus")  # fmt: skip
    print("latency from the post, ms (cumulative):")
    print(line("POST /movements answered (journaled)", answered))
    print(line("on the movements topic (agent)", forwarded))
    print(line("on the availability topic (aggregator)", tracker.latencies["topic"]))
    print(line("in Redis (kanal sync)", tracker.latencies["redis"]))
    print(line("in the shop table (kanal sync)", tracker.latencies["shop"]))
    return 0 if tracker.waiting() == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
