"""A job: PostgreSQL stock levels into the embedded Redis, migrated then streamed by cursor, through the CLI."""

from __future__ import annotations

import signal
from pathlib import Path

from kanal.connectors.redis import RedisInventory
from tests.conftest import Cli, Databases
from tests.connectors.redis.test_redis_embedded import servers
from tests.waiting import wait_for

JOB = """
name: stock-to-redis
kafka: {bootstrap_servers: embedded}
source:
  connector: postgres
  config: {dsn: "${ERP_DSN}"}
  entities:
    stock_levels: {table: erp_stock, delta: {cursor: updated_at, poll_s: 0.2}}
sinks:
  - name: read-model
    connector: redis
    entities:
      stock_levels: {}
"""


def held(folder: Path) -> dict[tuple[str, str], str]:
    """(sku, location) -> available, read from the job's embedded server (started for the look, then stopped)."""
    with RedisInventory(data_dir=str(folder / ".kanal" / "redis")) as inventory:
        frame = inventory.read("stock_levels")
    return {(r["sku"], r["location"]): r["available"] for r in frame.iter_rows(named=True)}


def test_postgres_stock_levels_migrate_then_sync_into_the_embedded_redis(cli: Cli, dbs: Databases) -> None:
    dbs.erp_sql(
        """create table erp_stock (sku text, location text, on_hand numeric, reserved numeric, available numeric,
                                   updated_at timestamptz default now(), primary key (sku, location));
           insert into erp_stock (sku, location, on_hand, reserved, available)
           select 'S' || i, 'WH1', i, 0, i from generate_series(1, 500) i"""
    )
    cli.write_job(JOB)
    cli.run("migrate", "job.yaml", "--quiet", check=True)
    data_dir = cli.folder / ".kanal" / "redis"
    assert servers(data_dir) == []  # the command stopped the server it started
    first = held(cli.folder)
    assert len(first) == 500 and first[("S7", "WH1")] == "7"
    sync = cli.start("sync", "job.yaml", "--quiet")  # streams, and serves Redis while it runs
    try:
        wait_for(lambda: servers(data_dir), timeout=60, what="kanal sync to start its server")
        with RedisInventory(data_dir=str(data_dir)) as live:  # a reader joining the running server
            dbs.erp_sql("update erp_stock set available = 0, updated_at = now() + interval '1 second' where sku = 'S7'")
            wait_for(lambda: (live.stock("S7", "WH1") or {}).get("available") == "0", timeout=60, what="the change")
            assert live.stock("S8", "WH1")["available"] == "8"  # type: ignore[index]
    finally:
        sync.send_signal(signal.SIGTERM)
        assert sync.wait(timeout=60) == 0, sync.communicate()
    assert servers(data_dir) == []  # stopped with the command that started it
    with RedisInventory(data_dir=str(data_dir)) as inventory:
        stock = inventory.stock("S7", "WH1")
        assert stock is not None and stock["on_hand"] == "7" and int(stock["_kanal_version"]) > 0
        assert [f["available"] for _, f in inventory.changes("stock_levels", count=10_000) if f["sku"] == "S7"] == ["7", "0"]
    assert servers(data_dir) == []
