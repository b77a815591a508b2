"""`kanal inventory`'s aggregator against a real broker: movements in, stock levels and availability out.

The broker is the embedded one started here and given to the job by address,
so the job is not `embedded` (the aggregator reads what other processes
publish). Movements are published the way sources publish changes: one keyed
JSON record each, partitioned by sku.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import polars as pl
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from kanal.core import wire
from kanal.core.connector import OP, UPSERT, VERSION
from kanal.core.embedded import EmbeddedBroker
from kanal.core.errors import ConfigError
from kanal.core.inventory import Ledger, Movement
from kanal.core.inventory.movements import movements_frame
from kanal.core.kafka import KafkaConnection
from kanal.core.model import STOCK_MOVEMENT
from kanal.jobs import inventory
from kanal.jobs.load import load_job

JOB = """
name: stores
kafka: {{bootstrap_servers: "{bootstrap}", topic_prefix: {prefix}, partitions: 3, session_timeout_ms: 1500}}
source:
  connector: postgres
  config: {{dsn: "postgresql://erp@127.0.0.1:1/erp"}}
  entities: {{stock_movements: {{table: movements, delta: cdc}}}}
sinks:
  - {{name: archive, connector: postgres, config: {{dsn: "postgresql://shop@127.0.0.1:1/shop"}}, entities: {{stock_movements: {{table: movements}}}}}}
inventory:
  floors: {{S1: 1}}
  channels:
    web: {{locations: [WH1, S1], buffer: 2}}
    marketplace: {{locations: [WH1], buffer: "10%", cap: 50}}
"""


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    with EmbeddedBroker() as b:
        yield b.bootstrap


@pytest.fixture
def job(tmp_path: Path, broker: str, request: pytest.FixtureRequest) -> Path:
    path = tmp_path / "stores.yaml"
    path.write_text(JOB.format(bootstrap=broker, prefix=f"t{abs(hash(request.node.name)) % 10**8}"))
    return path


def publish(bootstrap: str, topic: str, movements: list[Movement], partitions: int = 3) -> None:
    """As a source publishes changes: keyed JSON records, the partition chosen by the sku."""
    frame = movements_frame(movements).with_columns(
        STOCK_MOVEMENT.key_expr(), pl.lit(UPSERT).alias(OP), pl.lit(1, pl.Int64).alias(VERSION)
    )
    producer = Producer({"bootstrap.servers": bootstrap})
    for r in wire.record_messages(wire.with_partition_basis(frame, STOCK_MOVEMENT), partitions):
        headers = [(wire.H_ENTITY, b"stock_movements"), (wire.H_FORMAT, b"json"), (wire.H_OP, r.op)]
        producer.produce(topic, r.value, key=r.key, partition=r.partition, headers=headers)
    assert producer.flush(30) == 0


def read_all(bootstrap: str, topic: str) -> list[tuple[int, dict]]:
    """Every record of `topic` as (partition, value), in each partition's order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{topic}", "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
    records, ended = [], set()
    deadline = time.monotonic() + 60
    try:
        while len(ended) < 3:
            assert time.monotonic() < deadline, f"{topic}: partitions {sorted(ended)} read to their end within 60 s"
            for msg in consumer.consume(100, timeout=1.0):
                if msg.error():
                    ended.add(msg.partition())
                else:
                    records.append((msg.partition(), orjson.loads(msg.value())))
    finally:
        consumer.close()
    return records


def test_movements_become_levels_and_availability_exactly_once_across_restarts(job: Path, broker: str) -> None:
    loaded = load_job(job)
    topic = loaded.job.kafka.topic("stock_movements")
    with KafkaConnection(loaded.job.kafka) as kafka:  # as `kanal sync` would have made it: 3 partitions
        kafka.ensure_topics([topic], compact=True)
    publish(broker, topic, [
        Movement("r1", "A", "WH1", 100, "receipt"),
        Movement("r2", "A", "S1", 3, "receipt"),
        Movement("r3", "B", "WH1", 4, "receipt"),
        Movement("bad", "B", "WH1", 2, "sale"),  # a sale must not add units: dead-lettered
    ])  # fmt: skip
    first = inventory.run(loaded, once=True)
    assert first.movements == 4 and first.rejected == 1
    # the aggregator restarts; a source re-sends r1 (a retry) and new movements arrive
    publish(broker, topic, [Movement("r1", "A", "WH1", 100, "receipt"), Movement("s1", "B", "WH1", -4, "sale")])
    second = inventory.run(loaded, once=True)
    assert second.movements == 2  # it read on from its ledger's offsets, not from the start

    levels = {(v["sku"], v["location"]): v for _, v in read_all(broker, loaded.job.kafka.topic("stock_levels"))}
    assert levels[("A", "WH1")]["on_hand"] == "100" and levels[("A", "WH1")]["available"] == "100"
    assert levels[("B", "WH1")]["on_hand"] == "0"
    avail = read_all(broker, loaded.job.kafka.topic("availability"))
    latest = {(v["sku"], v["channel"]): v for _, v in avail}
    assert latest[("A", "web")]["quantity"] == "100"  # 100 + (3 - floor 1) - buffer 2
    assert latest[("A", "marketplace")]["quantity"] == "50"
    assert latest[("B", "web")]["quantity"] == "0"
    assert all(v["_kanal_version"] == int(v["version"]) for _, v in avail)
    # every availability record of a sku is on the partition its key hashes to (per-key order for the sinks)
    keys = pl.Series([f"{v['sku']}|{v['channel']}" for _, v in avail])
    assert [p for p, _ in avail] == wire.partition_of(keys, 3).to_list()

    letters = list((loaded.state_dir / "dlq" / "stock_movements").glob("*.jsonl"))
    assert "sale needs a delta of 0 or less" in letters[0].read_text()
    ledgers = sorted((loaded.state_dir / "inventory").glob("ledger-p*.sqlite"))
    on_hand = 0
    for path in ledgers:
        with Ledger(path, loaded.job.inventory) as ledger:
            on_hand += ledger.level("A", "WH1").on_hand
            assert ledger.published == ledger.position
    assert on_hand == 100  # one ledger owns sku A, and counted r1 once


def test_a_job_without_inventory_or_on_the_embedded_broker_is_refused(job: Path, tmp_path: Path) -> None:
    text = job.read_text()
    job.write_text(text[: text.index("inventory:")])
    with pytest.raises(ConfigError, match="no `inventory:` section"):
        inventory.run(load_job(job), once=True)
    embedded = tmp_path / "embedded.yaml"
    embedded.write_text("\n".join(line for line in text.splitlines() if not line.startswith("kafka:")))
    with pytest.raises(ConfigError, match="needs a broker they share"):
        inventory.run(load_job(embedded), once=True)


def test_a_stop_ends_a_continuous_run(job: Path) -> None:
    stop = threading.Event()
    done: list[inventory.InventoryReport] = []
    runner = threading.Thread(target=lambda: done.append(inventory.run(load_job(job), stop=stop)))
    runner.start()
    stop.set()
    runner.join(30)
    assert done and not runner.is_alive()


def test_kanal_inventory_once_reports_and_exits_0_and_refuses_the_embedded_broker_with_2(job: Path, broker: str) -> None:
    loaded = load_job(job)
    with KafkaConnection(loaded.job.kafka) as kafka:
        kafka.ensure_topics([loaded.job.kafka.topic("stock_movements")], compact=True)
    publish(broker, loaded.job.kafka.topic("stock_movements"), [Movement("r1", "A", "WH1", 7, "receipt")])
    done = subprocess.run([sys.executable, "-m", "kanal", "inventory", str(job), "--once"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "inventory stores: 1 movements read (0 refused" in done.stdout
    assert "1 stock levels and 2 availability records published" in done.stdout
    text = job.read_text()
    job.write_text("\n".join(line for line in text.splitlines() if not line.startswith("kafka:")))
    refused = subprocess.run([sys.executable, "-m", "kanal", "inventory", str(job)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "needs a broker they share" in refused.stderr


def test_the_owning_ledger_of_a_sku_is_the_one_its_movements_reach(job: Path, broker: str) -> None:
    loaded = load_job(job)
    with KafkaConnection(loaded.job.kafka) as kafka:
        kafka.ensure_topics([loaded.job.kafka.topic("stock_movements")], compact=True)
    publish(broker, loaded.job.kafka.topic("stock_movements"), [Movement(f"r{s}", s, "WH1", 5, "receipt") for s in "ABCDEF"])
    inventory.run(loaded, once=True)
    for sku in "ABCDEF":
        with Ledger(inventory.owning_ledger(loaded, sku, 3), loaded.job.inventory) as ledger:
            assert ledger.reserve(f"o-{sku}", sku, 3, "marketplace").granted, sku  # 5 - ceil(10%)


def test_a_partition_end_reported_in_the_same_poll_as_its_last_messages_is_kept() -> None:
    # the broker reports a partition's end once; `--once` waits for every partition's end
    eof: set[int] = set()
    end = Message(topic="m", partition=0, offset=2, error=KafkaError(KafkaError._PARTITION_EOF))
    read = inventory.take([Message(topic="m", partition=0, offset=0, value=b"{}"),
                           Message(topic="m", partition=1, offset=7, value=b"{}"),
                           Message(topic="m", partition=0, offset=1, value=b"{}"), end], eof)  # fmt: skip
    assert eof == {0} and read[0].end == 2 and read[1].end == 8
    inventory.take([Message(topic="m", partition=0, offset=2, value=b"{}")], eof)
    assert eof == set()  # more came after the end
