"""Source side: read a chunk (or a read of changes), validate it, publish it.

For each snapshot chunk: snapshot -> mapping -> `conform` (vectorized validation) ->
invalid rows to the dead letters -> valid rows grouped by partition into bulk
messages -> the receipt is told how many messages to expect -> send. The
producer's bounded in-flight window blocks `send` when the broker or the
sinks fall behind, which is what keeps memory flat whatever the volume.

Changes (deltas) take the same path but leave as one keyed JSON message per
record (a tombstone for a delete), so compaction and per-key consumers work;
their receipt "chunk" is the read they came from. Under policy `fail`, an
invalid change that a later valid change of the same key in the same read
replaces is no error: the later version is what the targets end with anyway,
and a fixed row would otherwise stop every run on the change before the fix.

Dead letters are acknowledged by the broker before a chunk or read is
announced; a chunk read again (a retry) counts its rows once (`Tally`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import polars as pl
from confluent_kafka import KafkaError

from kanal.core import wire
from kanal.core.changes import conform_changes
from kanal.core.connector import VERSION, Chunk, EntityOptions, Source, Transform
from kanal.core.dlq import STAGE_SOURCE, DeadLetterStore, letters_frame, publish_dead_letters
from kanal.core.errors import BrokerUnavailable
from kanal.core.kafka import BoundedProducer
from kanal.core.model import Entity
from kanal.core.progress import Metrics, Tally
from kanal.core.receipts import BROKER, Receipts
from kanal.core.validate import KEY, REASON

log = logging.getLogger("kanal.publish")


@dataclass(frozen=True)
class SourceFlow:
    """Everything needed to publish one entity."""

    entity: Entity
    options: EntityOptions
    transform: Transform
    topic: str
    partitions: int
    version: pl.Expr | None = None
    """The version of snapshot rows, over source columns (cursor deltas: the
    cursor; CDC: 0, older than every change); None: no version."""


@dataclass(frozen=True)
class Rejected:
    """Invalid records of one chunk, kept for the report under policy `fail`."""

    entity: str
    chunk: str
    count: int
    first_key: str
    first_reason: str


class _ReadAcks:
    """Delivery reports of one read's records for one entity (called on the producer's poll thread only).

    Counting here and reporting once, when the last record is acknowledged,
    keeps locks and metrics out of the per-record path.
    """

    def __init__(self, publisher: Publisher, entity: str, read_id: str, expected: int) -> None:
        self.publisher, self.entity, self.read_id, self.expected = publisher, entity, read_id, expected
        self.acked = 0

    def __call__(self, err: KafkaError | None) -> None:
        if err is not None:
            with self.publisher._lock:
                self.publisher.send_errors.append(f"{self.entity} {self.read_id}: {err.str()}")
            return
        self.acked += 1
        if self.acked == self.expected:
            self.publisher.metrics.add(self.entity, "published", self.expected)
            self.publisher.receipts.record_all(BROKER, self.entity, self.read_id)


class Publisher:
    def __init__(
        self,
        *,
        job: str,
        source_name: str,
        producer: BoundedProducer,
        receipts: Receipts,
        dead_letters: DeadLetterStore,
        dlq_topic: str,
        use_dlq: bool,
        message_rows: int,
        attempt: str,
        metrics: Metrics,
    ) -> None:
        self.job, self.source_name = job, source_name
        self.producer, self.receipts = producer, receipts
        self.dead_letters, self.dlq_topic, self.use_dlq = dead_letters, dlq_topic, use_dlq
        self.message_rows, self.attempt, self.metrics = message_rows, attempt, metrics
        self.rejected: list[Rejected] = []
        self._rejected_chunks: set[tuple[str, str]] = set()
        self.send_errors: list[str] = []
        self._lock = threading.Lock()

    def publish(self, source: Source, flow: SourceFlow, chunk: Chunk) -> None:
        """Read, validate and send one snapshot chunk; if that fails, what it counted is taken back (it is read again)."""
        tally = Tally(self.metrics)
        try:
            self._publish(source, flow, chunk, tally)
        except BaseException:
            tally.revert()
            raise

    def _publish(self, source: Source, flow: SourceFlow, chunk: Chunk, tally: Tally) -> None:
        name = flow.entity.name
        valid_frames, invalid_frames = [], []
        for frame in source.snapshot(name, flow.options, chunk):
            tally.add(name, "read", frame.height)
            if flow.version is not None:
                frame = frame.with_columns(flow.version.cast(pl.Int64).alias(VERSION))
            valid, invalid = conform_changes(frame, flow.entity, flow.transform)
            valid_frames.append(valid)
            if not invalid.is_empty():
                invalid_frames.append(invalid)
        # relaxed: the source rows of JSON Lines blocks (`SOURCE`) may hold different fields
        invalid = pl.concat(invalid_frames, how="vertical_relaxed") if invalid_frames else None
        dead = self._reject(flow, chunk, invalid, tally)
        valid = pl.concat(valid_frames) if valid_frames else pl.DataFrame(schema={**flow.entity.schema, KEY: pl.String})
        parts = wire.split_for_partitions(wire.with_partition_basis(valid, flow.entity), flow.partitions, self.message_rows)
        self.receipts.expect(name, chunk.id, len(parts), valid.height, dead)
        for part in parts:
            self._send(flow, chunk, part, len(parts))
        log.debug("published %s chunk %s: %d rows in %d messages", name, chunk.id, valid.height, len(parts))

    def publish_changes(self, flow: SourceFlow, frame: pl.DataFrame, read_id: str) -> None:
        """Publish one entity's part of a read of changes, one message per record."""
        name = flow.entity.name
        tally = Tally(self.metrics)
        tally.add(name, "read", frame.height)
        valid, invalid = conform_changes(frame, flow.entity, flow.transform)
        if not self.use_dlq:
            invalid = unsuperseded(invalid, valid)
        dead = self._reject(flow, Chunk(read_id), None if invalid.is_empty() else invalid, tally, replace=False)
        records = wire.record_messages(wire.with_partition_basis(valid, flow.entity), flow.partitions)
        self.receipts.expect(name, read_id, len(records), valid.height, dead)
        common = [
            (wire.H_ENTITY, name.encode()),
            (wire.H_FORMAT, b"json"),
            (wire.H_CHUNK, read_id.encode()),
            (wire.H_PARTS, str(len(records)).encode()),
            (wire.H_ATTEMPT, self.attempt.encode()),
            (wire.H_JOB, self.job.encode()),
            (wire.H_SOURCE, self.source_name.encode()),
            (wire.H_SCHEMA, wire.SCHEMA_VERSION),
        ]

        def messages() -> Iterator[tuple[bytes, bytes | None, int, list[tuple[str, bytes]]]]:
            for index, record in enumerate(records):
                headers = [*common, (wire.H_PART, str(index).encode()), (wire.H_OP, record.op), (wire.H_VERSION, record.version)]
                if record.value is None:
                    headers.append((wire.H_RECORD, record.line))
                yield record.key, record.value, record.partition, headers

        if records:
            self.producer.send_records(flow.topic, messages(), _ReadAcks(self, name, read_id, len(records)))
        log.debug("published %d %s changes of read %s", len(records), name, read_id)

    def _reject(
        self, flow: SourceFlow, chunk: Chunk, invalid: pl.DataFrame | None, tally: Tally, replace: bool = True
    ) -> int:
        """Dead-letter (policy dlq) or remember (policy fail) a chunk's invalid rows.

        Snapshot chunks `replace` their earlier dead letters (a re-read chunk
        must not repeat them); reads of changes are never repeated by id.
        """
        name = flow.entity.name
        if invalid is None:
            if self.use_dlq and replace:
                self.dead_letters.put(name, STAGE_SOURCE, chunk.id, pl.DataFrame())
            return 0
        if not self.use_dlq:
            first = invalid.row(0, named=True)
            with self._lock:  # recorded before the chunk is announced, so it is never checkpointed
                self.rejected.append(Rejected(name, chunk.id, invalid.height, first[KEY], first[REASON]))
                self._rejected_chunks.add((name, chunk.id))
            return 0
        letters = letters_frame(invalid, name, STAGE_SOURCE, None, flow.entity.field_names)
        self.dead_letters.put(name, STAGE_SOURCE, chunk.id, letters)
        publish_dead_letters(self.producer, self.dlq_topic, letters, self.job)
        tally.add(name, "dead", invalid.height)
        return invalid.height

    def _send(self, flow: SourceFlow, chunk: Chunk, part: wire.Part, parts: int) -> None:
        name = flow.entity.name
        rows = part.frame.height
        headers = [
            (wire.H_ENTITY, name.encode()),
            (wire.H_FORMAT, b"arrow"),
            (wire.H_CHUNK, chunk.id.encode()),
            (wire.H_PART, str(part.index).encode()),
            (wire.H_PARTS, str(parts).encode()),
            (wire.H_COUNT, str(rows).encode()),
            (wire.H_ATTEMPT, self.attempt.encode()),
            (wire.H_JOB, self.job.encode()),
            (wire.H_SOURCE, self.source_name.encode()),
            (wire.H_OP, b"upsert"),
            (wire.H_SCHEMA, wire.SCHEMA_VERSION),
        ]

        acked = self._on_ack(name, chunk.id, part.index, rows)
        key = f"bulk:{chunk.id}:{part.index}".encode()  # compacted topics need a key
        self.producer.send(
            flow.topic, wire.encode_arrow(part.frame), key=key, partition=part.partition, headers=headers, on_ack=acked
        )

    def _on_ack(self, entity: str, chunk: str, part: int, rows: int) -> Callable[[KafkaError | None], None]:
        """The delivery report of one message: counts it, tells the receipts (durable brokers), or keeps the error."""

        def acked(err: KafkaError | None) -> None:
            if err is None:
                self.metrics.add(entity, "published", rows)
                self.receipts.record(BROKER, entity, chunk, part)
            else:
                with self._lock:
                    self.send_errors.append(f"{entity} {chunk}: {err.str()}")

        return acked

    def has_rejected(self, entity: str, chunk: str) -> bool:
        """Whether the chunk had invalid rows under policy `fail` (it must be read again)."""
        with self._lock:
            return (entity, chunk) in self._rejected_chunks

    def raise_send_errors(self) -> None:
        with self._lock:
            if self.send_errors:
                raise BrokerUnavailable("kafka", f"{len(self.send_errors)} messages not delivered: {self.send_errors[0]}")


def unsuperseded(invalid: pl.DataFrame, valid: pl.DataFrame) -> pl.DataFrame:
    """The invalid changes no later valid change (upsert or delete) of the same key replaces.

    "Later" is a greater `VERSION` (the source position): CDC gives every
    change its own, so equal versions (a file holding one key twice) are
    kept as errors rather than guessed at.
    """
    if invalid.is_empty() or valid.is_empty():
        return invalid
    latest = valid.group_by(KEY).agg(pl.col(VERSION).max().alias("_kanal_latest"))
    return (
        invalid.join(latest, on=KEY, how="left", maintain_order="left")
        .filter(~(pl.col("_kanal_latest") > pl.col(VERSION)).fill_null(False))
        .drop("_kanal_latest")
    )
