"""Aggregator throughput: stock movements per second into the ledger, alone and through Kafka.

    python bench/inventory.py                      # 500k movements, 20k skus x 5 locations
    python bench/inventory.py --movements 200000 --skus 5000 --no-kafka

Three figures:

* **ledger**: `Ledger.apply_frame` in batches of `--batch` movements (what one
  aggregator partition does per poll): sales, receipts, returns, transfers,
  damage, 1% physical counts, 5% duplicates; every batch one transaction.
* **kafka, one process**: the same movements published to a broker as the
  keyed JSON records sources send, then `kanal inventory --once` (the
  aggregator through `jobs.inventory.run`) reading, applying and publishing
  stock levels and availability. The broker is the embedded one, addressed
  as a cluster.
* **kafka, `--processes` processes** (default 2, one per core of a small
  machine): as many `kanal inventory --once` commands started at once, one
  consumer group sharing the partitions, timed from their start to the last
  exit. One process runs its partitions' ledgers on threads, but publishing
  is Python under one GIL; processes scale as partitions do.

Each Kafka run checks that its partition ledgers hold exactly the levels the
ledger alone computed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from kanal.core.inventory import ChannelRules, Ledger

RULES = ChannelRules.model_validate(
    {
        "floors": {"S1": 1, "S2": 1},
        "channels": {
            "web": {"locations": ["WH1", "WH2", "S1", "S2"], "buffer": 2},
            "marketplace": {"locations": ["WH1"], "buffer": "10%", "cap": 50},
            "stores": {"locations": ["S1", "S2", "S3"]},
        },
    }
)
LOCATIONS = ["WH1", "WH2", "S1", "S2", "S3"]


def movements(n: int, skus: int, seed: int = 1) -> pl.DataFrame:
    """A canonical stock_movements frame of `n` movements, with 5% re-deliveries (set-up, not measured)."""
    rng = random.Random(seed)
    unique = int(n * 0.95)
    reasons = rng.choices(["sale", "receipt", "return", "transfer_out", "adjustment", "count"], [60, 20, 5, 9, 5, 1], k=unique)
    sign = {"sale": -1, "transfer_out": -1}
    start = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1_000_000)
    frame = pl.DataFrame(
        {
            "event_id": [f"pos-{i}" for i in range(unique)],
            "sku": [f"{rng.randrange(skus):06d}" for _ in range(unique)],
            "location": rng.choices(LOCATIONS, k=unique),
            "delta": [str(rng.randrange(50) if r == "count" else rng.randint(1, 4) * sign.get(r, 1)) for r in reasons],
            "reason": reasons,
            "occurred_at": pl.Series([start + rng.randrange(86_400_000_000) for _ in range(unique)]).cast(pl.Datetime("us", "UTC")),
            "counterpart": ["S3" if r == "transfer_out" else None for r in reasons],
            "bucket": ["unavailable" if r == "adjustment" else None for r in reasons],
        }
    )
    again = frame.sample(n - unique, seed=seed)
    return pl.concat([frame, again]).sample(fraction=1.0, shuffle=True, seed=seed)


def bench_ledger(frame: pl.DataFrame, batch: int, folder: Path) -> float:
    ledger = Ledger(folder / "bench.sqlite", RULES)
    started = time.perf_counter()
    for offset in range(0, frame.height, batch):
        ledger.apply_frame(frame.slice(offset, batch))
    seconds = time.perf_counter() - started
    levels, position = ledger.levels().height, ledger.position
    ledger.close()
    rate = frame.height / seconds
    print(f"ledger: {frame.height:,} movements in {seconds:.2f}s = {rate:,.0f} movements/s "
          f"(batches of {batch:,}; {levels:,} stock levels, position {position})")  # fmt: skip
    return rate


def bench_kafka(frame: pl.DataFrame, folder: Path, partitions: int, processes: int) -> float:
    from confluent_kafka import Producer

    from kanal.core import wire
    from kanal.core.connector import OP, UPSERT, VERSION
    from kanal.core.embedded import EmbeddedBroker
    from kanal.core.model import STOCK_MOVEMENT
    from kanal.jobs import inventory
    from kanal.jobs.load import load_job

    folder = folder / f"processes-{processes}"
    folder.mkdir()
    with EmbeddedBroker() as broker:
        job = folder / "bench.yaml"
        job.write_text(
            f"""name: bench
kafka: {{bootstrap_servers: "{broker.bootstrap}", partitions: {partitions}, session_timeout_ms: 1500}}
source: {{connector: postgres, config: {{dsn: "postgresql://x@127.0.0.1:1/x"}}, entities: {{stock_movements: {{table: m}}}}}}
sinks: [{{name: out, connector: postgres, config: {{dsn: "postgresql://x@127.0.0.1:1/x"}}, entities: {{availability: {{table: a}}}}}}]
inventory: {RULES.model_dump_json(exclude_defaults=True)}
"""
        )
        loaded = load_job(job)
        topic = loaded.job.kafka.topic("stock_movements")
        changes = frame.with_columns(STOCK_MOVEMENT.key_expr(), pl.lit(UPSERT).alias(OP), pl.lit(1, pl.Int64).alias(VERSION))
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20, "compression.type": "lz4",
                             "queue.buffering.max.messages": 2_000_000})  # fmt: skip
        headers = [(wire.H_ENTITY, b"stock_movements"), (wire.H_FORMAT, b"json"), (wire.H_OP, b"upsert")]
        for r in wire.record_messages(wire.with_partition_basis(changes, STOCK_MOVEMENT), partitions):
            producer.produce(topic, r.value, key=r.key, partition=r.partition, headers=headers)
            producer.poll(0)
        producer.flush(120)
        started = time.perf_counter()
        if processes == 1:
            report = inventory.run(loaded, once=True)
            seconds = time.perf_counter() - started
            _check_levels(folder.parent, [inventory.ledger_path(loaded, p) for p in range(partitions)])
            print(f"kafka: `kanal inventory --once` read {report.movements:,} movements, published {report.levels:,} stock "
                  f"levels and {report.availability:,} availability records in {seconds:.2f}s = "
                  f"{report.movements / seconds:,.0f} movements/s ({partitions} partitions, including the consumer group join)")  # fmt: skip
            return report.movements / seconds
        # several processes of one consumer group share the partitions (no GIL between them)
        command = [sys.executable, "-m", "kanal", "inventory", str(job), "--once"]
        procs = [subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL) for _ in range(processes)]
        if any(p.wait() != 0 for p in procs):
            raise SystemExit("a `kanal inventory --once` process failed")
        seconds = time.perf_counter() - started
        _check_levels(folder.parent, [inventory.ledger_path(loaded, p) for p in range(partitions)])
    rate = len(frame) / seconds
    print(f"kafka: {processes} `kanal inventory --once` processes sharing {partitions} partitions applied {len(frame):,} "
          f"movements in {seconds:.2f}s = {rate:,.0f} movements/s (process start and the consumer group joins included; "
          f"levels equal to the ledger alone's)")  # fmt: skip
    return rate


def _check_levels(folder: Path, ledgers: list[Path]) -> None:
    """The partition ledgers together hold the levels the single ledger of `bench_ledger` computed, or the run failed."""
    def levels(path: Path) -> pl.DataFrame:
        with Ledger(path, RULES) as ledger:
            return ledger.levels().select("sku", "location", "on_hand", "reserved", "unavailable", "incoming")

    alone = levels(folder / "bench.sqlite").sort("sku", "location")
    shared = pl.concat([levels(path) for path in ledgers]).sort("sku", "location")
    if not alone.equals(shared):
        raise SystemExit(f"the partition ledgers differ from the ledger alone: {shared.height:,} levels, {alone.height:,} expected")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movements", type=int, default=500_000)
    parser.add_argument("--skus", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--no-kafka", action="store_true", help="measure the ledger alone")
    parser.add_argument("--processes", type=int, default=2, help="aggregator processes sharing the partitions (after one)")
    args = parser.parse_args()
    frame = movements(args.movements, args.skus)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (the figures move with other work)")
    with tempfile.TemporaryDirectory(prefix="kanal-bench-inventory-") as tmp:
        bench_ledger(frame, args.batch, Path(tmp))
        if not args.no_kafka:
            for processes in sorted({1, args.processes}):
                bench_kafka(frame, Path(tmp), args.partitions, processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
