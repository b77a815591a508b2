"""Sink deliveries on a real (embedded) broker into a real files sink: limits, stopping, rebalances.

Faults are injected by subclassing the files sink (a write that waits for
the test, or fails), never by replacing a component: the broker, the
consumer and the writes are real.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest

from kanal.connectors.files import FilesConfig, FilesSink, FilesSinkOptions
from kanal.core.connector import OP, UPSERT, VERSION, Capabilities, EntityOptions, WriteResult
from kanal.core.deliver import SinkDelivery, SinkFlow
from kanal.core.dlq import DeadLetterStore
from kanal.core.errors import ConnectorError
from kanal.core.kafka import BoundedProducer, KafkaConnection, KafkaSettings
from kanal.core.model import PRODUCT
from kanal.core.progress import Metrics
from kanal.core.publish import Publisher, SourceFlow
from kanal.core.receipts import Receipts
from kanal.core.retry import RetryPolicy
from tests.waiting import wait_for

PARTITIONS = 2


def identity(frame: pl.DataFrame) -> pl.DataFrame:
    return frame


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaConnection]:
    with KafkaConnection(KafkaSettings(partitions=PARTITIONS, session_timeout_ms=1500)) as connection:
        yield connection


@dataclass
class Recorded:
    at: float
    rows: int
    batch_id: str
    keys: list[str]
    versions: list[int]


class RecordingSink(FilesSink):
    """The files sink, noting each write call (time, size, id, keys) and optionally holding it at a gate."""

    def __init__(self, config: FilesConfig, calls: list[Recorded], gate: threading.Event | None = None, fail: bool = False) -> None:
        super().__init__(config)
        self.calls, self.gate, self.fail = calls, gate, fail
        self.entered = threading.Event()

    def write(self, entity: str, options: EntityOptions, frame: pl.DataFrame, batch_id: str) -> WriteResult:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail:
            raise ConnectorError("files", "disk gone")
        self.calls.append(
            Recorded(time.monotonic(), frame.height, batch_id, frame["sku"].to_list(), frame[VERSION].to_list())
        )
        return super().write(entity, options, frame, batch_id)


@pytest.fixture
def rig(kafka: KafkaConnection, tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(kafka, tmp_path)
    yield rig
    rig.producer.close(timeout=5)


@dataclass
class Rig:
    """One job's topic, producer, publisher and receipts on the shared broker."""

    kafka: KafkaConnection
    folder: Path
    job: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    attempt: str = field(default_factory=lambda: uuid.uuid4().hex)
    delivered: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.topic = f"{self.job}.products"
        self.kafka.ensure_topics([self.topic, f"{self.job}.dlq"], compact=False)
        self.producer = BoundedProducer(self.kafka)
        self.metrics = Metrics(["files"])
        self.receipts = Receipts({"products": ["files"]}, lambda entity, read, rows, dead: self.delivered.add(read))
        self.dead_letters = DeadLetterStore(self.folder / "dlq")

    def publish(self, frame: pl.DataFrame, read_id: str) -> None:
        publisher = Publisher(
            job=self.job, source_name="test", producer=self.producer, receipts=self.receipts,
            dead_letters=self.dead_letters, dlq_topic=f"{self.job}.dlq", use_dlq=True, message_rows=1000,
            attempt=self.attempt, metrics=self.metrics,
        )  # fmt: skip
        publisher.publish_changes(SourceFlow(PRODUCT, EntityOptions(), identity, self.topic, PARTITIONS), frame, read_id)
        self.producer.flush()

    def delivery(self, sinks: list[FilesSink], capabilities: Capabilities, batch_rows: int = 1000, group: bool = False) -> SinkDelivery:
        return SinkDelivery(
            name="files", job=self.job, connection=self.kafka, instances=list(sinks),
            flows={"products": SinkFlow(PRODUCT, FilesSinkOptions(), identity)}, topics={self.topic: "products"},
            receipts=self.receipts, dead_letters=self.dead_letters, dlq_producer=self.producer,
            dlq_topic=f"{self.job}.dlq", use_dlq=True, retry=RetryPolicy(max_elapsed_s=1), batch_rows=batch_rows,
            capabilities=capabilities, attempt=self.attempt, metrics=self.metrics,
            partitions=None if group else {self.topic: PARTITIONS},
        )  # fmt: skip


def changes(keys: int, versions: int) -> pl.DataFrame:
    """`versions` upserts of each of `keys` products, in version order."""
    rows = [(f"S{k}", f"name {v}", v) for v in range(1, versions + 1) for k in range(keys)]
    return pl.DataFrame(
        {"sku": [r[0] for r in rows], "name": [r[1] for r in rows], OP: [UPSERT] * len(rows), VERSION: [r[2] for r in rows]},
        schema_overrides={VERSION: pl.Int64},
    )


def test_declared_batch_size_and_rate_bind_every_write_across_writers(rig: Rig, tmp_path: Path) -> None:
    calls: list[Recorded] = []
    config = FilesConfig(path=str(tmp_path / "out"), format="jsonl")
    sinks = [RecordingSink(config, calls) for _ in range(2)]  # two writers, one budget
    for sink in sinks:
        sink.prepare("products", FilesSinkOptions())
    rig.publish(changes(keys=10, versions=6), "read-1")
    delivery = rig.delivery(sinks, Capabilities(entities=("products",), max_batch_rows=4, rate_limit_per_s=25))
    delivery.start()
    try:
        wait_for(lambda: "read-1" in rig.delivered or delivery.error, 60, "the read to be delivered")
    finally:
        delivery.stop()
        delivery.join()
    assert delivery.error is None
    assert max(c.rows for c in calls) <= 4 and sum(c.rows for c in calls) == 60
    starts = sorted(c.at for c in calls)  # write calls of both writers; each noted a little after its slot
    assert all(b - a >= 4 / 25 - 0.02 for a, b in zip(starts, starts[4:]))  # no 5 calls closer than 4 slots
    assert len({c.batch_id for c in calls}) == len(calls)  # every piece has its own name: no file replaces another
    written: dict[str, list[int]] = {}
    for call in sorted(calls, key=lambda c: c.at):
        for key, version in zip(call.keys, call.versions, strict=True):
            written.setdefault(key, []).append(version)
    assert written == {f"S{k}": [1, 2, 3, 4, 5, 6] for k in range(10)}  # each key's versions in order, once
    files = list((tmp_path / "out" / "products" / "changes").glob("*.jsonl"))
    assert sum(pl.read_ndjson(f).height for f in files) == 60


def test_a_writer_failing_with_a_full_queue_ends_every_thread(rig: Rig, tmp_path: Path) -> None:
    gate = threading.Event()
    sink = RecordingSink(FilesConfig(path=str(tmp_path / "out")), [], gate=gate, fail=True)
    rig.publish(changes(keys=20, versions=1), "read-1")
    delivery = rig.delivery([sink], Capabilities(entities=("products",)), batch_rows=1, group=True)
    delivery.start()
    try:
        wait_for(sink.entered.is_set, 30, "the writer to take a batch")
        wait_for(lambda: delivery._queues[0].full(), 30, "the writer's queue to fill")
    finally:
        gate.set()  # the write fails now, with two batches waiting for the dead writer
    delivery.join(timeout=10)
    assert isinstance(delivery.error, ConnectorError)
    assert [t.name for t in delivery.threads if t.is_alive()] == []  # the consumer closed and ended too
    assert "read-1" not in rig.delivered


def test_the_group_rebalances_while_a_writer_is_behind_and_nothing_is_skipped(
    kafka: KafkaConnection, rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A member whose writer is behind keeps polling (the group can rebalance around it); the partitions a
    rebalance hands it are not paused, and whatever they return while it waits must be written, not skipped."""
    gate = threading.Event()
    calls: list[Recorded] = []
    sink = RecordingSink(FilesConfig(path=str(tmp_path / "out"), format="jsonl"), calls, gate=gate)
    rig.publish(changes(keys=40, versions=1), "read-1")
    delivery = rig.delivery([sink], Capabilities(entities=("products",)), batch_rows=1, group=True)
    caplog.set_level(logging.DEBUG, "kanal.deliver")
    delivery.start()
    other = kafka.consumer(f"{kafka.settings.topic_prefix}.{rig.job}.files")
    try:
        wait_for(lambda: delivery._queues[0].full(), 30, "the writer's queue to fill (the consumer pauses)")
        other.subscribe([rig.topic])  # a second member: the group rebalances while the first is paused
        wait_for(lambda: other.poll(0.1) is not None or other.assignment(), 30, "the second member's share")
        other.close()  # and again when it leaves: the first gets every partition back, unpaused
        wait_for(lambda: _assignments(caplog) == 3, 30, "the first member to hold every partition again")
    finally:
        gate.set()
    try:
        wait_for(lambda: "read-1" in rig.delivered or delivery.error, 60, "the read to be delivered")
    finally:
        delivery.stop()
        delivery.join()
    assert delivery.error is None
    assert sorted({k for c in calls for k in c.keys}) == sorted(f"S{k}" for k in range(40))


def _assignments(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.name == "kanal.deliver" and "assigned" in r.getMessage())
