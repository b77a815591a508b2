"""`kanal demo --inventory`: stores, a warehouse and two sales channels kept in step in real time.

The landscape (`jobs.inventory_landscape`): a broker, a `kanal edge` agent
for the warehouse WH1 and the stores S1 and S2, the aggregator `kanal
inventory`, and `kanal sync` writing stock levels and availability to an
embedded Redis and to a "shop" PostgreSQL database (a throwaway pgserver).
The channels are those of examples/inventory.yaml: `web` sells from WH1, S1
and S2 keeping 2 back, `marketplace` from WH1 keeping 10% back and showing
at most 50.

The story, in about a minute:

1. goods are received at every site;
2. the stores' tills sell and take returns a few times a second, and the
   web shop and the marketplace take orders (a reservation in Redis, then a
   sale at the first of the channel's online locations that has the goods);
   every sale is printed once it shows in Redis and in the shop table, with
   how long that took;
3. S2's line goes down: its tills sell on, its agent journals the sales and
   answers from its own figures, its backlog grows; web orders are not
   routed to it;
4. S2 comes back, its backlog flows in;
5. everything settles and is checked: the central ledgers equal a ledger
   recomputed from every movement posted, Redis and the shop table hold
   exactly its availability, and no unit was sold that was not there.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console

from kanal.core.console import styled
from kanal.core.errors import KanalError
from kanal.jobs import demo
from kanal.jobs.inventory_landscape import Landscape, Reconciliation, Site, reconcile, wait_until
from kanal.jobs.inventory_watch import Posted, RedisWatch, ShopWatch, Tracker, percentile

SKUS = [f"SKU-{i:02d}" for i in range(1, 9)]
STORES = ("S1", "S2")
WAREHOUSE = "WH1"
RECEIVED = {WAREHOUSE: 40, "S1": 6, "S2": 6}
"""Units of every sku received at each site when the demo starts."""


def record(event_id: str, sku: str, location: str, delta: int, reason: str) -> dict[str, Any]:
    """A stock movement as a till posts it: `occurred_at` is the till's clock."""
    return {"event_id": event_id, "sku": sku, "location": location, "delta": delta, "reason": reason,
            "occurred_at": dt.datetime.now(dt.UTC).isoformat()}  # fmt: skip


class Shopfloor:
    """Tills at the stores and an order desk for the channels, posting movements to the sites' agents.

    It keeps each location's shelf count (it is the only one moving stock),
    so a till sells only what is on the shelf and a channel order goes only
    to a location that has the goods beyond its floor; one lock per
    location makes "look at the shelf, then sell" one step, as one cashier
    at a time does. Every posted record is kept (`posted`) for the final
    reconciliation; every `duplicate_every`-th request is sent twice, as a
    till that did not get the answer does.
    """

    def __init__(self, landscape: Landscape, skus: list[str], tracker: Tracker | None = None, *, seed: int = 7,
                 duplicate_every: int = 7) -> None:  # fmt: skip
        self.landscape, self.skus, self.tracker = landscape, skus, tracker
        self.random = random.Random(seed)
        self.duplicate_every = duplicate_every
        self.shelf: Counter[tuple[str, str]] = Counter()
        self.sold: Counter[tuple[str, str]] = Counter()
        self.counts: Counter[str] = Counter()
        self.posted: list[dict[str, Any]] = []
        self._locks = {code: threading.Lock() for code in landscape.sites}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _post(self, site: Site, records: list[dict[str, Any]]) -> None:
        site.post(records)
        with self._lock:
            self.posted.extend(records)
            requests = self.counts["requests"] = self.counts["requests"] + 1
        if self.duplicate_every and requests % self.duplicate_every == 0:
            answer = site.post(records)  # the same request again: every record is a duplicate
            with self._lock:
                self.posted.extend(records)
                self.counts["duplicates sent"] += len(records)
                self.counts["duplicates ignored"] += answer["duplicate"]

    def receive(self, quantities: dict[str, int]) -> None:
        """Goods in: one receipt per sku at each site."""
        for code, units in quantities.items():
            records = [record(f"{code}-rcv-{sku}", sku, code, units, "receipt") for sku in self.skus]
            self._post(self.landscape.sites[code], records)
            for sku in self.skus:
                self.shelf[(sku, code)] += units

    def move(self, code: str, sku: str, delta: int, reason: str, label: str, keep: int = 0) -> bool:
        """One unit in or out at `code`, if the shelf has it (beyond `keep`); tracked until the sinks show it."""
        with self._locks[code]:
            if self.shelf[(sku, code)] + delta < keep:
                return False
            event_id = f"{code}-{reason}-{next(self._ids):06d}"
            after = self.shelf[(sku, code)] + delta
            if self.tracker is not None:  # before the post: a sink may show it before the answer is read
                offline = not self.landscape.sites[code].online
                label += " (offline)" if offline else ""
                self.tracker.expect(Posted("stock_levels", sku, code, after, time.time(), label, offline,
                                           before=self.shelf[(sku, code)]))  # fmt: skip
            self._post(self.landscape.sites[code], [record(event_id, sku, code, delta, reason)])
            self.shelf[(sku, code)] = after
        self._count(reason)
        return True

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def till(self, store: str) -> None:
        """One customer at a till: mostly a sale, sometimes a return of something sold here before."""
        sku = self.random.choice(self.skus)
        if self.random.random() < 0.15 and self.sold[(sku, store)] > 0:
            if self.move(store, sku, +1, "return", f"{store} till return"):
                self.sold[(sku, store)] -= 1
        elif self.move(store, sku, -1, "sale", f"{store} till sale"):
            self.sold[(sku, store)] += 1
        else:
            self._count("customers turned away (shelf empty)")

    def order(self, channel: str) -> None:
        """A channel order: reserve in Redis (atomic against the channel's figure), ship, release the hold."""
        sku = self.random.choice(self.skus)
        order_id = f"{channel}-order-{next(self._ids):06d}"
        hold = self.landscape.redis.reserve(sku, channel, 1, order_id, ttl_s=60)
        if not hold.ok:
            self._count(f"{channel} orders refused (shown 0)")
            return
        try:
            rules = self.landscape.rules
            for code in rules.channel(channel).locations:
                site = self.landscape.sites.get(code)
                if site is not None and site.online and self.move(
                    code, sku, -1, "sale", f"{channel} order from {code}", keep=rules.floor(channel, code)
                ):  # fmt: skip
                    self._count(f"{channel} orders")
                    return
            self._count(f"{channel} orders declined (no online location had it)")
        finally:
            self.landscape.redis.release(sku, channel, order_id)

    def run(self, rates: dict[str, float], stop: threading.Event) -> list[threading.Thread]:
        """Per store till and per channel order desk (`rates`: name -> per second), each a thread until `stop`."""
        threads = []
        for name, rate in rates.items():
            act: Callable[[], None] = (lambda n=name: self.till(n)) if name in self.landscape.sites else (
                lambda n=name: self.order(n))  # fmt: skip
            threads.append(threading.Thread(target=self._loop, args=(act, rate, stop), name=f"kanal-demo-{name}"))
        for thread in threads:
            thread.start()
        return threads

    def _loop(self, act: Callable[[], None], rate: float, stop: threading.Event) -> None:
        rng = random.Random(self.random.random())
        while not stop.wait(rng.expovariate(rate)):
            act()

    def frame(self) -> pl.DataFrame:
        """Every record posted (duplicates included), as canonical stock movements."""
        with self._lock:
            posted = list(self.posted)
        return pl.DataFrame(posted).select(
            "event_id", "sku", "location", pl.col("delta").cast(pl.Int64), "reason",
            pl.col("occurred_at").str.to_datetime(time_zone="UTC"),
        )  # fmt: skip


def _line(landscape: Landscape, started: float) -> Callable[[Posted], str]:
    def describe(m: Posted) -> str:
        shown = [landscape.redis.availability(m.sku, ch) or {} for ch in landscape.rules.channels]
        figures = "  ".join(f"{ch} {a.get('quantity', '?'):>3}" for ch, a in zip(landscape.rules.channels, shown, strict=True))
        return (f"{time.time() - started:5.1f}s  {m.label:<28} {m.sku}  {m.place} on hand {m.expected:>3}   "
                f"Redis {m.seen['redis'] * 1000:6.0f} ms  shop table {m.seen['shop'] * 1000:6.0f} ms   {figures}")  # fmt: skip

    return describe


def _phase(floor: Shopfloor, rates: dict[str, float], seconds: float) -> None:
    stop = threading.Event()
    threads = floor.run(rates, stop)
    try:
        stop.wait(seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def run(folder: str, seconds: float, *, console: Console, out: Console, shop_dsn: str | None = None) -> Reconciliation:
    """The demo in `folder` (see the module docstring); `seconds` of selling, split over its phases.

    The shop database is a throwaway PostgreSQL server in `folder`, stopped
    at the end, unless `shop_dsn` names one (tests pass theirs).
    """
    root = Path(folder).resolve()
    if shop_dsn is not None:
        return _run(root, seconds, shop_dsn, console, out)
    server = demo.pg_server(root / "shop-pg")
    try:
        return _run(root, seconds, demo.fresh_database(server, "shop"), console, out)
    finally:
        server.cleanup()


def _run(root: Path, seconds: float, shop_dsn: str, console: Console, out: Console) -> Reconciliation:
    started = time.time()
    for previous in (".kanal", "journals", "logs"):  # a demo starts from nothing, whatever ran here before
        shutil.rmtree(root / previous, ignore_errors=True)
    with Landscape(root, shop_dsn) as landscape:
        console.print("starting: a broker, agents for WH1, S1 and S2, `kanal inventory`, "
                      "`kanal sync` -> Redis + shop PostgreSQL ...")
        landscape.start()
        lines: list[Posted] = []
        describe = _line(landscape, started)
        tracker = Tracker(lambda m: None if m.netted else (lines.append(m), out.print(describe(m))))
        watches = [RedisWatch(landscape.redis.connection.client, tracker, ("stock_levels",)),
                   ShopWatch(landscape.shop_dsn, tracker, ("shop_stock",))]
        for watch in watches:
            watch.start()
        floor = Shopfloor(landscape, SKUS, tracker)
        try:
            floor.receive(RECEIVED)
            wait_until(lambda: len(landscape.redis_availability()) == len(SKUS) * len(landscape.rules.channels), 60,
                       "the first availability in Redis")  # fmt: skip
            out.print(f"\nreceived {', '.join(f'{n} of each sku at {c}' for c, n in RECEIVED.items())}; "
                      f"web shows {landscape.redis.availability(SKUS[0], 'web')['quantity']}, marketplace "
                      f"{landscape.redis.availability(SKUS[0], 'marketplace')['quantity']} per sku\n")  # fmt: skip
            rates = {"S1": 2.0, "S2": 2.0, "web": 1.0, "marketplace": 0.5}
            out.print(styled("selling:", "bold", "tills at S1 and S2, web and marketplace orders; "
                             "each movement once it shows in both sinks"))
            _phase(floor, rates, seconds * 0.35)
            out.print(styled("\nS2 goes offline:", "bold",
                             "its agent can no longer reach the broker; its tills keep selling ..."))
            landscape.offline("S2")
            _phase(floor, rates, seconds * 0.35)
            _show_offline(out, landscape, "S2")
            out.print(styled("\nS2 is back online:", "bold", "its backlog flows in ..."))
            landscape.back_online("S2")
            _phase(floor, rates, seconds * 0.3)
            console.print("\nsettling: every backlog forwarded, the aggregator and both sinks caught up ...")
            wait_until(lambda: all(landscape.backlog(c) == 0 for c in landscape.sites), 60, "every agent's backlog to go out")
            result = wait_until(lambda: (r := reconcile(landscape, floor.frame())).ok and r, 60, "the sinks to settle")
        except KanalError:
            out.print(styled("did not settle:", "red", f"the logs of every process are in {root / 'logs'}"))
            raise
        finally:
            for watch in watches:
                watch.stop.set()
        _summary(out, floor, tracker, lines, result)
        _hints(out, root)
        return result


def _show_offline(out: Console, landscape: Landscape, code: str) -> None:
    """The backlog, and a sku the store shows otherwise than the centre does (its offline sales)."""
    out.print(f"{code} backlog: {landscape.backlog(code)} movement(s) journaled there, not forwarded")
    for sku in SKUS:
        own, central = landscape.sites[code].figure(sku)["on_hand"], (landscape.redis.stock(sku, code) or {}).get("on_hand")
        if central is not None and int(Decimal(central)) != own:
            out.print(f"{code} itself shows {sku} on hand {own}; the centre (Redis, the shop table) still shows {central}")
            return


def _summary(out: Console, floor: Shopfloor, tracker: Tracker, shown: list[Posted], result: Reconciliation) -> None:
    counts = floor.counts
    out.print(styled("\nreconciled:", "bold", f"{result.movements:,} distinct movements posted "
                     f"({counts['duplicates sent']} sent twice, {counts['duplicates ignored']} ignored as duplicates)"))
    out.print("  central stock levels = a ledger recomputed from every movement: "
              + ("yes" if result.level_drift.is_empty() else f"NO, {result.level_drift.height} differ"))
    out.print(f"  Redis and shop table availability = that ledger's: {result.redis_drift} and {result.shop_drift} rows differ")
    out.print(f"  oversold units per channel: {', '.join(f'{ch} {n}' for ch, n in result.oversold.items())}")
    activity = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()) if what != "requests" and "duplicates" not in what)
    out.print(f"  activity: {activity}")
    online = [m for m in shown if not m.offline]
    for sink in tracker.sinks:
        values = [m.seen[sink] for m in online]
        if values:
            out.print(f"  post to {sink} while online: p50 {percentile(values, 50) * 1000:.0f} ms, p95 "
                      f"{percentile(values, 95) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms ({len(values)} movements)")
    late = [m.seen["redis"] for m in shown if m.offline]
    if late:
        out.print(f"  sold at S2 while offline: {len(late)}, in Redis {min(late):.1f} to {max(late):.1f} s after the sale")


def _hints(out: Console, root: Path) -> None:
    out.print(f"\nwhat to look at next: the job {root / 'job.yaml'} (examples/inventory.yaml), the logs of every "
              f"process in {root / 'logs'}, the agents' journals in {root / 'journals'};")
    out.print("docs/inventory.md (movements, levels, channel rules), docs/edge.md (the store agent), docs/redis.md "
              "(the read model and reservations); bench/inventory_latency.py measures post-to-Redis latency at "
              "1,000 movements/s")
