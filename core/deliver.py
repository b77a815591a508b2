"""Sink side: consume, write, commit — the commit order lives here and only here.

For every batch, in this order:

1. the sink writes it (retried within the budget while the target is
   unreachable; refused records are isolated by bisection);
2. refused records go to the dead letters (or fail the job, policy `fail`);
3. the consumer commits the offsets of the batch's messages;
4. the receipts are told, which may checkpoint a whole source chunk.

A crash between any two steps repeats work on the next run and loses none,
because every sink write is idempotent.

Threads: one consumer thread per sink polls and decodes; it hands batches to
`writers` threads, each with its own sink instance (its own connection).
Partition p always goes to writer p % writers, so the messages of a partition
are written in order and offsets are committed in order. Each writer's queue
holds at most two batches; when it is full the consumer pauses its
partitions (and keeps polling, so the group does not evict it), which is how
a slow sink slows the consumer instead of filling memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import polars as pl
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from kanal.core import wire
from kanal.core.changes import keeping_engine_columns
from kanal.core.connector import OP, VERSION, EntityOptions, Sink, Transform, WriteResult
from kanal.core.dlq import STAGE_SINK, DeadLetterStore, letters_frame, publish_dead_letters
from kanal.core.errors import JobFailed, Unreachable
from kanal.core.isolate import write_isolating
from kanal.core.kafka import BoundedProducer, KafkaConnection
from kanal.core.model import Entity
from kanal.core.progress import Metrics
from kanal.core.receipts import Receipts
from kanal.core.retry import RetryPolicy, call_with_retry
from kanal.core.validate import KEY

log = logging.getLogger("kanal.deliver")
_LOST_ASSIGNMENT = (
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._ASSIGNMENT_LOST,
)
_LINGER_S = 0.05
"""A batch is written when full, when nothing more arrives, or after this long:
deltas arrive steadily, and waiting for a full batch would delay them."""


@dataclass(frozen=True)
class SinkFlow:
    entity: Entity
    options: EntityOptions
    transform: Transform


@dataclass(frozen=True)
class _Meta:
    topic: str
    partition: int
    offset: int
    entity: str
    chunk: str | None
    part: int | None
    attempt: str | None


@dataclass
class _Batch:
    """Messages of one entity for one writer, in partition order.

    Bulk messages arrive as frames; delta records as JSON lines, gathered in
    runs so that a run decodes in one call and the order between bulk and
    delta messages is kept.
    """

    entity: str
    segments: list[pl.DataFrame | list[bytes]] = field(default_factory=list)
    metas: list[_Meta] = field(default_factory=list)
    rows: int = 0
    born: float = field(default_factory=time.monotonic)

    def add_frame(self, frame: pl.DataFrame) -> None:
        self.segments.append(frame)
        self.rows += frame.height

    def add_line(self, line: bytes) -> None:
        if not self.segments or not isinstance(self.segments[-1], list):
            self.segments.append([])
        last = self.segments[-1]
        assert isinstance(last, list)
        last.append(line)
        self.rows += 1

    def frame(self, entity: Entity) -> pl.DataFrame:
        schema = pl.Schema({**entity.schema, KEY: pl.String, OP: pl.String, VERSION: pl.Int64})
        frames = [s if isinstance(s, pl.DataFrame) else wire.decode_lines(s, schema) for s in self.segments]
        frame = pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
        if KEY not in frame.columns or frame.get_column(KEY).null_count():
            # records from other producers may lack the key string: derive it
            frame = frame.with_columns(entity.key_expr())
        return frame

    @property
    def batch_id(self) -> str:
        first = self.metas[0]
        if first.chunk is not None and len(self.metas) == 1:
            return f"{first.chunk}-p{first.part}"
        return f"{first.topic}-{first.partition}-{first.offset}-{self.metas[-1].offset}"


class SinkDelivery:
    """Consumes the entity topics for one sink until stopped."""

    def __init__(
        self,
        *,
        name: str,
        job: str,
        connection: KafkaConnection,
        instances: list[Sink],
        flows: dict[str, SinkFlow],
        topics: dict[str, str],
        receipts: Receipts,
        dead_letters: DeadLetterStore,
        dlq_producer: BoundedProducer,
        dlq_topic: str,
        use_dlq: bool,
        retry: RetryPolicy,
        batch_rows: int,
        stable_batches: bool,
        attempt: str,
        metrics: Metrics,
        partitions: dict[str, int] | None = None,
    ) -> None:
        """`partitions` (topic -> count) assigns them directly instead of joining
        the consumer group: right when no other process can share the work (the
        embedded broker), and it saves the join (half a session timeout)."""
        self.partitions = partitions
        self.name, self.job = name, job
        self.connection, self.instances, self.flows = connection, instances, flows
        self.topics = topics  # topic -> entity
        self.receipts, self.dead_letters = receipts, dead_letters
        self.dlq_producer, self.dlq_topic, self.use_dlq = dlq_producer, dlq_topic, use_dlq
        self.retry, self.batch_rows, self.stable_batches = retry, batch_rows, stable_batches
        self.attempt, self.metrics = attempt, metrics
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._queues: list[queue.Queue[_Batch | None]] = [queue.Queue(maxsize=2) for _ in instances]
        self._done: queue.Queue[_Batch] = queue.Queue()
        self._threads: list[threading.Thread] = []

    # lifecycle -----------------------------------------------------------

    def start(self) -> None:
        for i, sink in enumerate(self.instances):
            t = threading.Thread(target=self._writer, args=(sink, self._queues[i]), name=f"kanal-{self.name}-w{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._consume, name=f"kanal-{self.name}-consumer", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 60.0) -> None:
        for t in self._threads:
            t.join(timeout)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._stop.set()

    # consumer thread ------------------------------------------------------

    def _consume(self) -> None:
        consumer = self.connection.consumer(f"{self.connection.settings.topic_prefix}.{self.job}.{self.name}")
        pending: dict[tuple[int, str], _Batch] = {}
        paused = False
        try:
            if self.partitions is None:
                consumer.subscribe(list(self.topics), on_assign=self._assigned, on_revoke=self._revoked)
            else:  # committed offsets still apply: the group id is set, only the join is skipped
                consumer.assign([TopicPartition(t, p) for t, n in self.partitions.items() for p in range(n)])
            while not self._stop.is_set():
                self._commit_done(consumer)
                if self._any_full():
                    if not paused:
                        consumer.pause(consumer.assignment())
                        paused = True
                    consumer.poll(0.05)
                    continue
                if paused:
                    consumer.resume(consumer.assignment())
                    paused = False
                messages = consumer.consume(num_messages=100, timeout=0.1)
                for msg in messages:
                    self._take(msg, pending)
                now = time.monotonic()
                for key in [k for k, b in pending.items() if not messages or now - b.born >= _LINGER_S]:
                    self._dispatch(pending.pop(key))
            for key in list(pending):  # drain what was read before stopping
                self._dispatch(pending.pop(key))
            for q in self._queues:
                q.put(None)
            for t in self._threads[:-1]:
                t.join()
            self._commit_done(consumer)
        except BaseException as exc:  # noqa: BLE001 - reported through self.error
            self._fail(exc)
            for q in self._queues:
                try:
                    q.put_nowait(None)
                except queue.Full:
                    pass
        finally:
            consumer.close()

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.debug("%s: assigned %s", self.name, ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.debug("%s: revoked %s", self.name, ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    def _any_full(self) -> bool:
        return any(q.full() for q in self._queues)

    def _take(self, msg: Message, pending: dict[tuple[int, str], _Batch]) -> None:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return
            if err.fatal() or not err.retriable():
                raise Unreachable("kafka", f"consumer error: {err.str()}")
            return
        headers = wire.headers_of(msg.headers())
        topic = msg.topic()
        entity = headers.get(wire.H_ENTITY) or self.topics[topic]
        if entity not in self.flows:
            return
        fmt = headers.get(wire.H_FORMAT, "json")
        value = msg.value()
        if fmt == "json" and value is None and wire.H_RECORD not in headers:
            return  # a tombstone without the key fields (not written by Kanal): nothing to apply
        meta = _Meta(
            topic,
            msg.partition(),
            msg.offset(),
            entity,
            headers.get(wire.H_CHUNK),
            int(headers[wire.H_PART]) if wire.H_PART in headers else None,
            headers.get(wire.H_ATTEMPT),
        )
        writer = meta.partition % len(self.instances)
        key = (writer, entity)
        batch = pending.setdefault(key, _Batch(entity))
        if fmt == "json":
            batch.add_line(value if value is not None else headers[wire.H_RECORD].encode())
        else:
            batch.add_frame(wire.decode_arrow(value))
        batch.metas.append(meta)
        if batch.rows >= self.batch_rows or (self.stable_batches and fmt != "json"):
            # Stable batches: one bulk message per write. Delta records are batched like
            # for any sink (a file per record would be absurd); their id is their offsets.
            self._dispatch(pending.pop(key))

    def _dispatch(self, batch: _Batch) -> None:
        writer = batch.metas[0].partition % len(self.instances)
        while not self._stop.is_set():
            try:
                self._queues[writer].put(batch, timeout=0.1)
                return
            except queue.Full:
                continue

    def _commit_done(self, consumer: Consumer) -> None:
        """Steps 3 and 4: commit offsets of written batches, then tell the receipts."""
        batches = []
        while True:
            try:
                batches.append(self._done.get_nowait())
            except queue.Empty:
                break
        if not batches:
            return
        offsets: dict[tuple[str, int], int] = {}
        for batch in batches:
            for m in batch.metas:
                offsets[(m.topic, m.partition)] = max(offsets.get((m.topic, m.partition), -1), m.offset + 1)
        try:
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args and isinstance(exc.args[0], KafkaError) else None
            if code not in _LOST_ASSIGNMENT:
                raise
            # Another worker of the job took these partitions over; it re-delivers from the
            # last committed offset, and the sink's version check makes the repeat harmless.
            log.info("%s: offsets not committed, partitions were reassigned (%s)", self.name, exc)
            return
        for batch in batches:
            for m in batch.metas:
                if m.chunk is not None and m.part is not None and m.attempt == self.attempt:
                    self.receipts.record(self.name, m.entity, m.chunk, m.part)

    # writer threads --------------------------------------------------------

    def _writer(self, sink: Sink, inbox: queue.Queue[_Batch | None]) -> None:
        while True:
            batch = inbox.get()
            if batch is None or self.error is not None:
                return
            try:
                self._write(sink, batch)
            except BaseException as exc:  # noqa: BLE001 - reported through self.error
                self._fail(exc)
                return
            self._done.put(batch)

    def _write(self, sink: Sink, batch: _Batch) -> None:
        """Steps 1 and 2."""
        flow = self.flows[batch.entity]
        frame = keeping_engine_columns(flow.transform, batch.frame(flow.entity), "the sink mapping")
        batch_id = batch.batch_id

        def attempt() -> WriteResult:
            return write_isolating(lambda f: sink.write(batch.entity, flow.options, f, batch_id), frame)

        def waiting(exc: Unreachable, n: int) -> None:
            self.metrics.note(self.name, f"waiting: {exc.message} (retry {n})")

        started = time.monotonic()
        result = call_with_retry(attempt, self.retry, on_retry=waiting)
        self.metrics.note(self.name, None)
        log.debug("%s wrote %d rows of %s in %.3fs", self.name, frame.height, batch.entity, time.monotonic() - started)
        self.metrics.add(batch.entity, "written", result.written, self.name)
        self.metrics.add(batch.entity, "skipped", result.skipped_older, self.name)
        failed = result.failed
        if failed is None or failed.is_empty():
            return
        self.metrics.add(batch.entity, "failed", failed.height, self.name)
        rows = frame.join(failed.rename({"reason": "_kanal_reason"}), on=KEY, how="inner")
        if not self.use_dlq:
            first = rows.row(0, named=True)
            raise JobFailed(
                f"{self.name} refused {failed.height} {batch.entity} record(s) (policy fail); "
                f"first: key {first[KEY]!r}: {first['_kanal_reason']}"
            )
        letters = letters_frame(rows, batch.entity, STAGE_SINK, self.name, flow.entity.field_names)
        self.dead_letters.put(batch.entity, STAGE_SINK, f"{self.name}-{batch_id}", letters)
        publish_dead_letters(self.dlq_producer, self.dlq_topic, letters, self.job)


def first_error(deliveries: list[SinkDelivery]) -> BaseException | None:
    for d in deliveries:
        if d.error is not None:
            return d.error
    return None

