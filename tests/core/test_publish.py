"""The source side on a real (embedded) broker: retried chunks, superseded invalid changes, dead-letter acks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from kanal.connectors.files import FilesConfig, FilesSource, FilesSourceOptions
from kanal.core.connector import DELETE, OP, UPSERT, VERSION, Chunk, EntityOptions
from kanal.core.dlq import STAGE_SOURCE, DeadLetterStore, letters_frame, publish_dead_letters
from kanal.core.errors import BrokerUnavailable, Unreachable
from kanal.core.kafka import BoundedProducer, KafkaConnection, KafkaSettings
from kanal.core.model import PRODUCT
from kanal.core.progress import Metrics
from kanal.core.publish import Publisher, SourceFlow, unsuperseded
from kanal.core.receipts import Receipts
from kanal.core.retry import RetryPolicy, call_with_retry
from kanal.core.validate import KEY, REASON


def identity(frame: pl.DataFrame) -> pl.DataFrame:
    return frame


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaConnection]:
    with KafkaConnection(KafkaSettings(partitions=2)) as connection:
        yield connection


@pytest.fixture
def producer(kafka: KafkaConnection) -> Iterator[BoundedProducer]:
    producer = BoundedProducer(kafka)
    yield producer
    producer.close(timeout=5)


def _publisher(kafka: KafkaConnection, producer: BoundedProducer, folder: Path, metrics: Metrics, use_dlq: bool) -> tuple[Publisher, str]:
    job = f"t{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics([f"{job}.products", f"{job}.dlq"], compact=False)
    publisher = Publisher(
        job=job, source_name="test", producer=producer, receipts=Receipts({"products": ["shop"]}, lambda *_: None),
        dead_letters=DeadLetterStore(folder / "dlq"), dlq_topic=f"{job}.dlq", use_dlq=use_dlq, message_rows=1000,
        attempt=uuid.uuid4().hex, metrics=metrics,
    )  # fmt: skip
    return publisher, f"{job}.products"


class FlakyFiles(FilesSource):
    """The files source, losing its share once after the first frame of a chunk (as a network drive does)."""

    failures = 1

    def snapshot(self, entity: str, options: EntityOptions, chunk: Chunk) -> Iterator[pl.DataFrame]:
        for frame in super().snapshot(entity, options, chunk):
            yield frame
            if self.failures:
                self.failures -= 1
                raise Unreachable("files", "the share went away")


def test_a_retried_chunk_is_counted_once(kafka: KafkaConnection, producer: BoundedProducer, tmp_path: Path) -> None:
    (tmp_path / "in" / "products").mkdir(parents=True)
    for part in range(3):  # one file, one frame each
        pl.DataFrame({"sku": [f"S{part}-{i}" for i in range(10)], "weight": ["1"] * 9 + ["heavy"]}).write_csv(
            tmp_path / "in" / "products" / f"part{part}.csv"
        )
    source = FlakyFiles(FilesConfig(path=str(tmp_path / "in")))
    metrics = Metrics(["shop"])
    publisher, topic = _publisher(kafka, producer, tmp_path, metrics, use_dlq=True)
    flow = SourceFlow(PRODUCT, FilesSourceOptions(), identity, topic, 2)
    for chunk in source.plan("products", FilesSourceOptions()):
        call_with_retry(lambda c=chunk: publisher.publish(source, flow, c), RetryPolicy(max_elapsed_s=10, initial_s=0.01))
    assert source.failures == 0  # a chunk was read twice
    counted = metrics.entity("products")
    assert (counted.read, counted.dead) == (30, 3)


def test_an_invalid_change_a_later_valid_one_replaces_is_no_error() -> None:
    valid = pl.DataFrame({KEY: ["A", "B", "D"], OP: [UPSERT, DELETE, UPSERT], VERSION: [2, 5, 7]})
    invalid = pl.DataFrame(
        {KEY: ["A", "A", "B", "C", "D"], VERSION: [1, 3, 4, 1, 7], REASON: ["a1", "a3", "b4", "c1", "d7"]}
    )
    left = unsuperseded(invalid, valid)
    assert left.select(KEY, VERSION).rows() == [("A", 3), ("C", 1), ("D", 7)]  # later than any valid one, or alone
    assert left.columns == invalid.columns


def test_policy_fail_rejects_only_the_invalid_changes_no_later_one_fixes(
    kafka: KafkaConnection, producer: BoundedProducer, tmp_path: Path
) -> None:
    publisher, topic = _publisher(kafka, producer, tmp_path, Metrics(["shop"]), use_dlq=False)
    frame = pl.DataFrame(
        {
            "sku": ["P1", "P1", "P2", "P3", "P3"],
            "weight": ["heavy", "2", "x", "1", "bad"],
            OP: [UPSERT] * 5,
            VERSION: [1, 2, 3, 4, 5],
        }
    )
    publisher.publish_changes(SourceFlow(PRODUCT, EntityOptions(), identity, topic, 2), frame, "read-1")
    [rejected] = publisher.rejected
    assert (rejected.count, rejected.first_key) == (2, "P2")  # P1's bad weight was fixed by its next change


def test_a_dead_letter_the_broker_does_not_take_fails_instead_of_vanishing(tmp_path: Path) -> None:
    rows = pl.DataFrame({"sku": ["P1"], KEY: ["P1"], REASON: ["weight: 'heavy' is not a decimal number"]})
    letters = letters_frame(rows, "products", STAGE_SOURCE, None, PRODUCT.field_names)
    with KafkaConnection(KafkaSettings()) as kafka:
        kafka.ensure_topics(["dlq"], compact=False)
        producer = BoundedProducer(kafka, **{"message.timeout.ms": 1000})
        kafka.close()  # the broker is gone: the dead letter is never acknowledged
        try:
            with pytest.raises(BrokerUnavailable, match="refused a dead letter"):
                publish_dead_letters(producer, "dlq", letters, "job")
        finally:
            producer.close(timeout=1)
