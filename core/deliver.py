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
holds at most two batches; when one is full the consumer pauses its
partitions and keeps polling without ever waiting for a writer (batches cut
meanwhile wait in order, still encoded), so the group neither evicts it nor
waits for it to rebalance. That is how a slow sink slows the consumer instead
of filling memory. When any thread fails, every thread of the delivery ends
and the consumer closes (it leaves its group): a failed job holds no
partitions and no threads.

A sink's declared `Capabilities` bind: no write call gets more than
`max_batch_rows` rows (a batch is written in pieces, in order), and the
sink's write calls, across its writers, stay within `rate_limit_per_s`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field, replace

import polars as pl
from confluent_kafka import OFFSET_BEGINNING, OFFSET_STORED, Consumer, KafkaError, KafkaException, Message, TopicPartition

from kanal.core import logs, wire
from kanal.core.changes import keeping_engine_columns
from kanal.core.channels import ChannelPublisher
from kanal.core.connector import OP, VERSION, Capabilities, EntityOptions, Sink, Transform, WriteResult
from kanal.core.dlq import STAGE_SINK, DeadLetterStore, letters_frame, publish_dead_letters
from kanal.core.errors import JobFailed, Unreachable
from kanal.core.isolate import ROW, accepted_rows, combine, shifted, slice_id, standing_refusals, write_isolating
from kanal.core.sinkmemory import HASH, SinkMemory, remember_result, sift
from kanal.core.kafka import BoundedProducer, KafkaConnection, consume_ready
from kanal.core.model import AVAILABILITY, Entity
from kanal.core.progress import Metrics
from kanal.core.receipts import Receipts
from kanal.core.retry import RetryPolicy, WaitObserver, call_with_retry
from kanal.core.telemetry.live import TELEMETRY
from kanal.core.validate import KEY, REASON

log = logging.getLogger("kanal.deliver")
_LOST_ASSIGNMENT = (
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._ASSIGNMENT_LOST,
)
_IDLE = object()
"""A writer's turn without a batch: time to flush the channel outbox."""
_CHANNELS = "channels"
"""Batch ids of availability sent from the channel outbox start so (API sinks need no stable ids)."""
_AHEAD = 3
"""Cut batches per writer that may wait for room in the writers' queues before the consumer pauses fetching.

A pause is dear: after a resume the broker's answers come again only about a
second later, so pausing whenever a writer's queue is full for a moment (a
burst of changes) turned a 0.1 s delivery into one of a second. The buffer
is bounded all the same: queue plus this many batches per writer."""
_LINGER_S = 0.05
"""A batch is written when full, when its writer has nothing queued, when nothing more arrives, or after this
long: deltas arrive steadily, and waiting for a full batch would delay them. While the writer is busy, a batch
grows, so batches are as small as the load allows and as large as it needs."""


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

    Bulk messages are kept as they arrived (Arrow IPC) and decoded by the
    writer that takes the batch, so batches waiting for a writer stay small;
    delta records are JSON lines, gathered in runs so that a run decodes in
    one call and the order between bulk and delta messages is kept.
    """

    entity: str
    segments: list[bytes | list[bytes]] = field(default_factory=list)
    metas: list[_Meta] = field(default_factory=list)
    rows: int = 0
    born: float = field(default_factory=time.monotonic)

    def add_arrow(self, value: bytes, rows: int) -> None:
        self.segments.append(value)
        self.rows += rows

    def add_line(self, line: bytes) -> None:
        if not self.segments or not isinstance(self.segments[-1], list):
            self.segments.append([])
        last = self.segments[-1]
        assert isinstance(last, list)
        last.append(line)
        self.rows += 1

    def frame(self, entity: Entity) -> pl.DataFrame:
        schema = pl.Schema({**entity.schema, KEY: pl.String, OP: pl.String, VERSION: pl.Int64})
        frames = [wire.decode_arrow(s) if isinstance(s, bytes) else wire.decode_lines(s, schema) for s in self.segments]
        frame = pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
        if KEY not in frame.columns or frame.get_column(KEY).null_count():
            # records from other producers may lack the key string: derive it
            frame = frame.with_columns(entity.key_expr())
        return frame

    @property
    def batch_id(self) -> str:
        """Stable where a re-delivery must replace, never reused by another run.

        One message of a chunk: its chunk and part, the same on every
        re-delivery. Otherwise the offsets, prefixed by the attempt that
        produced the first message: offsets restart at 0 with every embedded
        broker (memory only, one per command), and would name a later run's
        batches like this one's; a durable broker re-delivers the same
        messages with the same attempt and offsets, so the id holds there.
        """
        first = self.metas[0]
        if first.chunk is not None and len(self.metas) == 1:
            return f"{first.chunk}-p{first.part}"
        offsets = f"{first.topic}-{first.partition}-{first.offset}-{self.metas[-1].offset}"
        return f"{first.attempt}-{offsets}" if first.attempt else offsets


class SinkLimits:
    """A sink's declared `max_batch_rows` and `rate_limit_per_s`; one per sink, shared by its writer threads."""

    def __init__(self, capabilities: Capabilities) -> None:
        self.max_rows = capabilities.max_batch_rows
        rate = capabilities.rate_limit_per_s
        self._gap = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def pace(self, cancel: threading.Event) -> None:
        """Wait for the sink's next write call: calls are spaced 1/rate apart, whichever thread makes them."""
        if not self._gap:
            return
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next)
            self._next = at + self._gap
        if at > now:
            cancel.wait(at - now)


def describe_target(sink: str, entity: str, options: EntityOptions) -> str:
    """Where a sink writes an entity, for messages: the sink, the entity and what the job file set (the table)."""
    settings = ", ".join(f"{k}: {v}" for k, v in options.model_dump(exclude_unset=True, exclude={"delta"}).items())
    return f"sink {sink!r}, {entity}" + (f" ({settings})" if settings else "")


def write_within(
    sink: Sink,
    entity: str,
    options: EntityOptions,
    frame: pl.DataFrame,
    batch_id: str,
    *,
    limits: SinkLimits,
    target: str,
    retry: RetryPolicy,
    cancel: threading.Event,
    on_wait: WaitObserver | None = None,
) -> WriteResult:
    """Write one batch as the sink declared it can take it (step 1).

    Pieces of at most `max_batch_rows` rows are written in order, so per-key
    order holds; each write call is paced; each piece isolates the records
    the target refuses and is retried on its own while the target is
    unreachable, so a piece written is not written again. `cancel` (the run
    is failing) ends retries and waits.
    """
    size = limits.max_rows or frame.height
    results = []
    for start in range(0, frame.height, size):

        def write(part: pl.DataFrame, at: int, start: int = start) -> WriteResult:
            limits.pace(cancel)
            return sink.write(entity, options, part, slice_id(batch_id, start + at, part.height, frame.height))

        piece = frame.slice(start, size)
        result = call_with_retry(lambda p=piece, w=write: write_isolating(w, p, target), retry, on_wait=on_wait, cancel=cancel)
        results.append(shifted(result, start))
    return combine(results)


def write_changed(
    sink: Sink,
    entity: str,
    options: EntityOptions,
    frame: pl.DataFrame,
    batch_id: str,
    *,
    memory: SinkMemory | None,
    limits: SinkLimits,
    target: str,
    retry: RetryPolicy,
    cancel: threading.Event,
    on_wait: WaitObserver | None = None,
) -> tuple[WriteResult, int]:
    """Write a batch, sending a sink that keeps a `memory` only what changed (step 1, shared by runs, replay and the kit).

    Records the memory holds back as older count as `skipped_older`; the
    second value is how many were not sent because the system already has
    them. Without a memory (sinks that compare versions themselves) this is
    `write_within`.
    """
    if memory is None:
        return write_within(
            sink, entity, options, frame, batch_id, limits=limits, target=target, retry=retry, cancel=cancel, on_wait=on_wait
        ), 0
    indexed = frame.with_row_index(ROW)
    sifted = sift(memory, entity, indexed)
    result = WriteResult()
    if not sifted.send.is_empty():
        result = write_within(
            sink, entity, options, sifted.send.drop(HASH, ROW, strict=False), batch_id,
            limits=limits, target=target, retry=retry, cancel=cancel, on_wait=on_wait,
        )  # fmt: skip
        remember_result(memory, entity, sifted.send.drop(ROW), result)
        result = _positions_in_frame(result, sifted.send.get_column(ROW))
    return replace(result, skipped_older=result.skipped_older + sifted.older), sifted.unchanged


def _positions_in_frame(result: WriteResult, sent: pl.Series) -> WriteResult:
    """Refused positions counted in the sent rows, as positions in the frame before `sift` dropped any."""
    if result.failed is None or ROW not in result.failed.columns:
        return result
    positions = sent.cast(pl.Int64).gather(result.failed.get_column(ROW)).alias(ROW)
    return replace(result, failed=result.failed.with_columns(positions))


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
        capabilities: Capabilities,
        attempt: str,
        metrics: Metrics,
        partitions: dict[str, int] | None = None,
        from_start: bool = False,
        memory: SinkMemory | None = None,
        channels: ChannelPublisher | None = None,
    ) -> None:
        """`capabilities` are the sink connector's, binding (see module docstring).

        `partitions` (topic -> count) assigns them directly instead of joining
        the consumer group: right when no other process can share the work (the
        embedded broker), and it saves the join (half a session timeout).
        `from_start` (with `partitions`): the topics were just created anew, so
        consume them from their first offset; offsets the group committed on
        earlier topics of the same names would skip their messages.
        `channels`: `availability` goes through this outbox (`core.channels`:
        coalesced, decreases first, capped) instead of straight to the sink;
        writers flush it while they wait for batches, and all of it when they end."""
        self.partitions, self.from_start = partitions, from_start
        self.name, self.job = name, job
        self.connection, self.instances, self.flows = connection, instances, flows
        self.topics = topics  # topic -> entity
        self.receipts, self.dead_letters = receipts, dead_letters
        self.dlq_producer, self.dlq_topic, self.use_dlq = dlq_producer, dlq_topic, use_dlq
        self.retry, self.batch_rows = retry, batch_rows
        self.stable_batches, self.limits = capabilities.stable_batches, SinkLimits(capabilities)
        self.memory = memory
        self.channels = channels
        self.attempt, self.metrics = attempt, metrics
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._failed = threading.Event()
        self._queues: list[queue.Queue[_Batch | None]] = [queue.Queue(maxsize=2) for _ in instances]
        self._done: queue.Queue[_Batch] = queue.Queue()
        self._writers: list[threading.Thread] = []
        self._consumer: threading.Thread | None = None

    # lifecycle -----------------------------------------------------------

    def start(self) -> None:
        for i, sink in enumerate(self.instances):
            t = threading.Thread(target=self._writer, args=(sink, self._queues[i]), name=f"kanal-{self.name}-w{i}", daemon=True)
            t.start()
            self._writers.append(t)
        self._consumer = threading.Thread(target=self._consume, name=f"kanal-{self.name}-consumer", daemon=True)
        self._consumer.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 60.0) -> None:
        for t in self.threads:
            t.join(timeout)

    @property
    def threads(self) -> list[threading.Thread]:
        """The delivery's threads (writers, then the consumer)."""
        return [*self._writers, *([self._consumer] if self._consumer else [])]

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._failed.set()
        self._stop.set()

    # consumer thread ------------------------------------------------------

    def _consume(self) -> None:
        logs.bind(job=self.job, sink=self.name)
        # A short fetch wait: a broker that answers a waiting fetch only when it times out (the embedded one)
        # would otherwise hold every change up to librdkafka's 500 ms.
        group = f"{self.connection.settings.topic_prefix}.{self.job}.{self.name}"
        consumer = self.connection.consumer(group, **{"fetch.wait.max.ms": 25})
        pending: dict[tuple[int, str], _Batch] = {}
        ready: list[_Batch] = []  # cut batches in order, waiting for room in their writer's queue
        paused = False
        try:
            if self.partitions is None:
                consumer.subscribe(list(self.topics), on_assign=self._assigned, on_revoke=self._revoked)
            else:  # committed offsets still apply unless `from_start`: the group id is set, only the join is skipped
                offset = OFFSET_BEGINNING if self.from_start else OFFSET_STORED
                consumer.assign([TopicPartition(t, p, offset) for t, n in self.partitions.items() for p in range(n)])
            while not self._stop.is_set():
                self._commit_done(consumer)
                self._hand_over(ready)
                if len(ready) >= _AHEAD * len(self.instances):
                    # The writers are behind: fetch nothing more, but keep polling so the group keeps
                    # this member (and can rebalance). Pause on every round: a rebalance may have
                    # assigned partitions that are not paused; what they return is kept, since a
                    # later commit of their offsets would skip it.
                    consumer.pause(consumer.assignment())
                    paused = True
                    msg = consumer.poll(0.05)
                    if msg is not None:
                        self._take(msg, pending, ready)
                    continue
                if paused:
                    consumer.resume(consumer.assignment())
                    paused = False
                messages = consume_ready(consumer, 500, timeout=0.1)
                for msg in messages:
                    self._take(msg, pending, ready)
                now = time.monotonic()
                idle = {w for w, inbox in enumerate(self._queues) if inbox.empty()} - {self._writer_of(b) for b in ready}
                for key, batch in list(pending.items()):
                    if not messages or key[0] in idle or now - batch.born >= _LINGER_S:
                        ready.append(pending.pop(key))
            for batch in [*ready, *pending.values()]:  # a stop: hand over what was read before it
                self._dispatch(batch)
        except BaseException as exc:  # noqa: BLE001 - reported through self.error
            self._fail(exc)
        finally:
            self._end_writers()
            if self.channels is not None:
                self.channels.close()  # the writers sent what waited; a later delivery opens the outbox again
            try:
                self._commit_done(consumer)  # what was written before the stop (or a failure) is delivered
            except BaseException as exc:  # noqa: BLE001 - reported through self.error
                self._fail(exc)
            finally:
                consumer.close()

    def _hand_over(self, ready: list[_Batch]) -> None:
        """Queue ready batches for their writers without waiting; a writer's batches stay in order behind a full queue."""
        behind: set[int] = set()
        waiting = []
        for batch in ready:
            writer = self._writer_of(batch)
            if writer not in behind:
                try:
                    self._queues[writer].put_nowait(batch)
                    continue
                except queue.Full:
                    behind.add(writer)
            waiting.append(batch)
        ready[:] = waiting

    def _end_writers(self) -> None:
        """Hand every live writer its end mark and wait for it; a writer that died takes none (its queue may be full)."""
        for inbox, writer in zip(self._queues, self._writers, strict=True):
            while writer.is_alive():
                try:
                    inbox.put(None, timeout=0.1)
                    break
                except queue.Full:
                    continue
        for writer in self._writers:
            writer.join()

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.debug("%s: assigned %s", self.name, ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.debug("%s: revoked %s", self.name, ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))

    def _take(self, msg: Message, pending: dict[tuple[int, str], _Batch], ready: list[_Batch]) -> None:
        """Add a message to its writer's pending batch; a batch that is complete moves to `ready`."""
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
        key = (meta.partition % len(self.instances), entity)
        batch = pending.setdefault(key, _Batch(entity))
        if fmt == "json":
            batch.add_line(value if value is not None else headers[wire.H_RECORD].encode())
        else:
            rows = int(headers[wire.H_COUNT]) if wire.H_COUNT in headers else wire.decode_arrow(value).height
            batch.add_arrow(value, rows)
        batch.metas.append(meta)
        if batch.rows >= self.batch_rows or (self.stable_batches and fmt != "json"):
            # Stable batches: one bulk message per write. Delta records are batched like
            # for any sink (a file per record would be absurd); their id is their attempt and offsets.
            ready.append(pending.pop(key))

    def _writer_of(self, batch: _Batch) -> int:
        return batch.metas[0].partition % len(self.instances)

    def _dispatch(self, batch: _Batch) -> None:
        """Queue a batch for its writer, waiting while the queue is full (a failure drops it: it is not committed)."""
        writer = self._writer_of(batch)
        while not self._failed.is_set():
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
        logs.bind(job=self.job, sink=self.name)
        wait = max(self.channels.window_s / 2, 0.05) if self.channels is not None else None
        while True:
            try:
                batch: _Batch | object | None = inbox.get(timeout=wait)
            except queue.Empty:
                batch = _IDLE
            if self._failed.is_set():
                return
            try:
                if batch is None:  # the end: the channel outbox sends what waits
                    if self.channels is not None:
                        self._flush_channels(sink, all_ripe=True)
                    return
                if batch is _IDLE:
                    self._flush_channels(sink)
                    continue
                assert isinstance(batch, _Batch)
                self._write(sink, batch)
            except BaseException as exc:  # noqa: BLE001 - reported through self.error
                self._fail(exc)
                return
            self._done.put(batch)

    def _write(self, sink: Sink, batch: _Batch) -> None:
        """Steps 1 and 2."""
        logs.bind(entity=batch.entity)
        flow = self.flows[batch.entity]
        canonical = batch.frame(flow.entity)
        if self.channels is not None and batch.entity == AVAILABILITY.name:
            self.channels.offer(canonical)  # durable: the batch counts as delivered, the outbox sends it
            self._flush_channels(sink)
            return
        self._write_canonical(sink, batch.entity, canonical, batch.batch_id)

    def _flush_channels(self, sink: Sink, *, all_ripe: bool = False) -> None:
        """Send the availability the outbox holds due, through the normal write path (steps 1 and 2)."""
        assert self.channels is not None
        batch_id = f"{_CHANNELS}-{time.time_ns()}"
        self.channels.flush(lambda frame: self._write_canonical(sink, AVAILABILITY.name, frame, batch_id), all_ripe=all_ripe)

    def _write_canonical(self, sink: Sink, entity: str, canonical: pl.DataFrame, batch_id: str) -> WriteResult:
        flow = self.flows[entity]
        frame = keeping_engine_columns(flow.transform, canonical, "the sink mapping")
        started = time.monotonic()
        result, unchanged = write_changed(
            sink, entity, flow.options, frame, batch_id, memory=self.memory,
            limits=self.limits, target=describe_target(self.name, entity, flow.options),
            retry=self.retry, cancel=self._failed, on_wait=self.metrics.waiting(self.name),
        )  # fmt: skip
        self.metrics.add(entity, "unchanged", unchanged, self.name)
        accepted = accepted_rows(frame, result.failed)
        self.dead_letters.supersede(entity, accepted, self.name)
        seconds = time.monotonic() - started
        TELEMETRY.wrote(self.job, entity, self.name, seconds)
        log.debug("%s wrote %d rows of %s in %.3fs", self.name, frame.height, entity, seconds)
        self.metrics.add(entity, "written", result.written, self.name)
        self.metrics.add(entity, "skipped", result.skipped_older, self.name)
        if result.failed_count:
            self.metrics.add(entity, "failed", result.failed_count, self.name)
        failed = standing_refusals(frame, result.failed)
        if failed is None or failed.is_empty():
            return result
        # the canonical records (not the sink-mapped ones), each change refused: a replay maps them again
        found = failed.drop(ROW, strict=False).unique().rename({"reason": REASON})
        rows = canonical.join(found, on=[c for c in (KEY, VERSION, OP) if c in found.columns])
        if not self.use_dlq:
            first = rows.row(0, named=True)
            raise JobFailed(
                f"{self.name} refused {failed.height} {entity} record(s) (policy fail); "
                f"first: key {first[KEY]!r}: {first[REASON]}"
            )
        letters = letters_frame(rows, entity, STAGE_SINK, self.name, flow.entity.field_names)
        self.dead_letters.put(entity, STAGE_SINK, f"{self.name}-{batch_id}", letters)
        publish_dead_letters(self.dlq_producer, self.dlq_topic, letters, self.job, cancel=self._failed)
        return result


def first_error(deliveries: list[SinkDelivery]) -> BaseException | None:
    for d in deliveries:
        if d.error is not None:
            return d.error
    return None

