"""An ERP that keeps changing: tables for CDC and cursor deltas, a concurrent writer, comparisons.

The writer applies inserts, updates and deletes across products, prices and
stock levels in small transactions, like an ERP during business hours; the
comparison reads both sides in one canonical shape, so "the shop equals the
ERP" is one assertion.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field

import psycopg

JOB = """
name: {name}
kafka:
  bootstrap_servers: {bootstrap}
  session_timeout_ms: 2000
source:
  connector: postgres
  config: {{dsn: "${{ERP_DSN}}", heartbeat_s: 1}}
  entities:
    products: {{table: erp_products, delta: {delta}}}
    prices: {{table: erp_prices, delta: {delta}}}
    stock_levels: {{table: erp_stock, delta: {delta}}}
sinks:
  - name: shop
    connector: postgres
    config: {{dsn: "${{SHOP_DSN}}"}}
    entities:
      products: {{table: shop_products}}
      prices: {{table: shop_prices}}
      stock_levels: {{table: shop_stock}}
{extra}
"""

CDC = "cdc"
CURSOR = "{cursor: updated_at, overlap_s: 2, poll_s: 0.2}"


def job(name: str = "erp-stream", delta: str = CDC, bootstrap: str = "embedded", extra: str = "") -> str:
    return JOB.format(name=name, delta=delta, bootstrap=bootstrap, extra=extra)


SCHEMA = """
create table erp_products (sku text primary key, name text, gtin text, active boolean, updated_at timestamptz not null);
create table erp_prices (sku text not null, price_list text not null, customer_no text, currency text not null,
                         min_qty numeric(12,3), amount numeric(12,2), updated_at timestamptz not null);
alter table erp_prices replica identity full;
create table erp_stock (sku text, location text, on_hand numeric(12,3), updated_at timestamptz not null,
                        primary key (sku, location));
"""


def seed(dsn: str, products: int = 2_000) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(
            f"insert into erp_products select 'P' || g, 'Product ' || g, lpad(g::text, 13, '0'), true, now() "
            f"from generate_series(1, {products}) g"
        )
        conn.execute(
            f"insert into erp_prices select 'P' || g, 'base', case when g % 3 = 0 then 'C' || g end, 'EUR', 1, g % 500, now() "
            f"from generate_series(1, {products}) g"
        )
        conn.execute(
            f"insert into erp_stock select 'P' || g, l, g % 90, now() from generate_series(1, {products}) g, "
            "unnest(array['A', 'B']) l"
        )


QUERIES = {
    "products": ("select sku, name, gtin, active from {p}products order by 1", "erp_", "shop_"),
    "prices": (
        "select sku, price_list, coalesce(customer_no, ''), currency, min_qty::numeric(12,3), amount::numeric(12,2) "
        "from {p}prices order by 1, 2, 3",
        "erp_",
        "shop_",
    ),
    "stock": ("select sku, location, on_hand::numeric(12,3) from {p}stock order by 1, 2", "erp_", "shop_"),
}


def snapshot(dsn: str, prefix: str) -> dict[str, list[tuple]]:
    with psycopg.connect(dsn) as conn:
        return {name: conn.execute(q.format(p=prefix)).fetchall() for name, (q, _, _) in QUERIES.items()}


def differences(erp: str, shop: str) -> dict[str, int]:
    """Per table, how many rows differ (0 everywhere: equal)."""
    a, b = snapshot(erp, "erp_"), snapshot(shop, "shop_")
    return {name: sum(((Counter(a[name]) - Counter(b[name])) + (Counter(b[name]) - Counter(a[name]))).values()) for name in a}


@dataclass
class Writer:
    """Writes a steady mix of inserts, updates and deletes until stopped."""

    dsn: str
    products: int = 2_000
    rate_per_s: float = 400.0
    seed: int = 7
    written: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def finish(self) -> int:
        self.stop.set()
        assert self._thread is not None
        self._thread.join(30)
        return self.written

    def _run(self) -> None:
        rnd = random.Random(self.seed)
        next_sku = self.products + 1
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                with conn.transaction():
                    for _ in range(10):
                        p = rnd.randint(1, self.products)
                        kind = rnd.random()
                        if kind < 0.3:
                            conn.execute("update erp_stock set on_hand = on_hand + 1, updated_at = now() where sku = %s", (f"P{p}",))
                        elif kind < 0.5:
                            conn.execute("update erp_prices set amount = amount + 1, updated_at = now() where sku = %s", (f"P{p}",))
                        elif kind < 0.6:
                            conn.execute("update erp_products set name = name || '+', updated_at = now() where sku = %s", (f"P{p}",))
                        elif kind < 0.75:
                            sku = f"P{next_sku}"
                            next_sku += 1
                            conn.execute("insert into erp_products values (%s, 'New', '1', true, now())", (sku,))
                            conn.execute("insert into erp_prices values (%s, 'base', null, 'EUR', 1, 5, now())", (sku,))
                            conn.execute("insert into erp_stock values (%s, 'A', 3, now())", (sku,))
                        elif kind < 0.85:
                            conn.execute("delete from erp_stock where sku = %s and location = 'B'", (f"P{p}",))
                        elif kind < 0.93:
                            conn.execute("delete from erp_prices where sku = %s", (f"P{p}",))
                        else:  # update then delete of one key in one transaction: order must hold
                            conn.execute("update erp_stock set on_hand = 999, updated_at = now() where sku = %s and location = 'A'", (f"P{p}",))
                            conn.execute("delete from erp_stock where sku = %s and location = 'A'", (f"P{p}",))
                        self.written += 1
                self.stop.wait(10 / self.rate_per_s)
