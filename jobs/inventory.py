"""`kanal inventory JOB`: the aggregator that turns stock movements into stock levels and channel availability.

It reads the job's `stock_movements` topic in batches, applies each batch to
the ledger of its partition (`core.inventory.Ledger`, one SQLite file per
partition under `<state_dir>/inventory/`) and publishes what changed to the
`stock_levels` and `availability` topics as keyed JSON records, the wire
format of deltas, so the job's sinks (`kanal sync`/`kanal run`) deliver them
like any other change. Per cycle, in this order:

1. one ledger transaction per partition: the batch's movements, the levels
   they change, and the input offset the batch ends at;
2. reservations that expired are released (also ledger transactions, four
   times a second at most);
3. what changed since the last publication is sent and acknowledged by the
   broker (the ledger is the outbox: a crash before the acks sends it again);
4. the consumer group's offsets are committed, without waiting for the
   broker's answer: they serve the group's lag only.

Exactly once: the ledger stores the offset it read up to in the same
transaction as the movements, and a partition assigned to this process is
read from there (from the start for a ledger it never had: the movements
topic keeps every movement, so the ledger is rebuilt). Movements seen before
are ignored by their `event_id` anyway. Stock movements are partitioned by
sku, so every location of a sku is in one ledger and channel availability,
which sums locations, is computed in one place; more processes of the job
share the partitions through the consumer group.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from kanal.core import wire
from kanal.core.connector import OP, UPSERT, VERSION
from kanal.core.dlq import STAGE_SINK, DeadLetterStore, letters_frame
from kanal.core.errors import BrokerUnavailable, ConfigError, Unreachable
from kanal.core.inventory import ChannelRules, Ledger
from kanal.core.inventory.movements import REJECTED
from kanal.core.kafka import BoundedProducer, KafkaConnection, consume_ready, quiet_rdkafka
from kanal.core.model import AVAILABILITY, STOCK_LEVEL, STOCK_MOVEMENT, Entity
from kanal.core.validate import KEY
from kanal.jobs.load import DERIVED, LoadedJob

log = logging.getLogger("kanal.inventory")
_SOURCE = b"inventory"
_EXPIRE_EVERY_S = 0.25
_WIRE_SCHEMA = pl.Schema({**STOCK_MOVEMENT.schema, KEY: pl.String, OP: pl.String, VERSION: pl.Int64})
_DECIMALS = {"on_hand", "reserved", "available", "unavailable", "incoming", "quantity", "version"}


@dataclass
class InventoryReport:
    job: str
    movements: int = 0
    """Movements read from the topic (duplicates included)."""
    rejected: int = 0
    levels: int = 0
    """Stock level records published."""
    availability: int = 0
    """Availability records published."""
    partitions: set[int] = field(default_factory=set)
    seconds: float = 0.0


class _Read:
    """What one poll brought of one partition."""

    __slots__ = ("frames", "lines", "end")

    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []
        self.lines: list[bytes] = []
        self.end = 0


def take(messages: list[Message], eof: set[int]) -> dict[int, _Read]:
    """Messages by partition: bulk frames, JSON lines, and the offset after the last one.

    `eof` is updated in message order: a partition is at its end when its
    end-of-partition event is the last thing this poll brought of it. The
    broker reports an end once, often in the same poll as the messages before
    it, so it must not be forgotten because those messages came along.

    The format is told by the value's first byte (a JSON record is an
    object, an Arrow IPC stream starts with its 0xFF marker), which spares
    decoding the headers of every message.
    """
    read: dict[int, _Read] = {}
    for msg in messages:
        partition = msg.partition()
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                eof.add(partition)
            elif err.fatal() or not err.retriable():
                raise Unreachable("kafka", f"consumer error: {err.str()}")
            continue
        eof.discard(partition)
        entry = read.get(partition) or read.setdefault(partition, _Read())
        entry.end = msg.offset() + 1
        value = msg.value()
        if value is None:
            continue  # a delete: a movement is a fact, and deleting one changes no stock
        if value[:1] == b"{":
            entry.lines.append(value)
        else:
            entry.frames.append(wire.decode_arrow(value))
    return read


def require_inventory(loaded: LoadedJob) -> ChannelRules:
    """The job's `inventory:` rules; refuses jobs `kanal inventory` cannot run, naming the fix."""
    rules = loaded.job.inventory
    if rules is None:
        raise ConfigError(
            f"{loaded.path}: no `inventory:` section; add one with the sales channels, e.g. "
            "`inventory: {channels: {web: {locations: [WH1]}}}` (see docs/inventory.md)"
        )
    if loaded.job.kafka.embedded:
        raise ConfigError(
            f"{loaded.path}: `kanal inventory` reads the stock movements other processes publish, so it needs a "
            "broker they share, not `kafka.bootstrap_servers: embedded` (memory of one process): set it to your "
            "cluster, or run `kanal broker --port 9092` and use localhost:9092"
        )
    return rules


def ledger_path(loaded: LoadedJob, partition: int) -> Path:
    return loaded.state_dir / "inventory" / f"ledger-p{partition}.sqlite"


def owning_ledger(loaded: LoadedJob, sku: str, partitions: int) -> Path:
    """The ledger file that holds `sku` (movements are partitioned by sku over `partitions`): where to reserve it."""
    return ledger_path(loaded, int(wire.partition_of(pl.Series([sku]), partitions)[0]))


def canonical_records(entity: Entity, frame: pl.DataFrame) -> pl.DataFrame:
    """Ledger rows (integers) as canonical change records: decimal text, key, op and version."""
    return frame.select(
        *[pl.col(f.name).cast(pl.String) if f.name in _DECIMALS else pl.col(f.name) for f in entity.fields if f.name in frame.columns],
        entity.key_expr(),
        pl.lit(UPSERT).alias(OP),
        pl.col("version").cast(pl.Int64).alias(VERSION),
    )


def run(
    loaded: LoadedJob, *, stop: threading.Event | None = None, once: bool = False, batch_rows: int = 200_000,
    verbose: bool = False,
) -> InventoryReport:  # fmt: skip
    """Aggregate JOB's stock movements until `stop` (or, `once`, until every assigned partition is read to its end)."""
    rules = require_inventory(loaded)
    stop = stop or threading.Event()
    report = InventoryReport(loaded.name)
    started = time.monotonic()
    with quiet_rdkafka(verbose), KafkaConnection(loaded.job.kafka) as kafka:
        aggregator = _Aggregator(loaded, kafka, rules, report, batch_rows)
        try:
            aggregator.run(stop, once)
        finally:
            aggregator.close()
            report.seconds = time.monotonic() - started
    return report


class _Aggregator:
    def __init__(
        self, loaded: LoadedJob, kafka: KafkaConnection, rules: ChannelRules, report: InventoryReport, batch_rows: int
    ) -> None:
        settings = loaded.job.kafka
        self.loaded, self.kafka, self.rules, self.report, self.batch_rows = loaded, kafka, rules, report, batch_rows
        self.topic = settings.topic(STOCK_MOVEMENT.name)
        self.outputs = {e: settings.topic(e) for e in DERIVED}
        kafka.ensure_topics([self.topic, *self.outputs.values()], compact=True)
        self.out_partitions = {e: kafka.partitions_of(t) for e, t in self.outputs.items()}
        self.ledgers: dict[int, Ledger] = {}
        self._eof: set[int] = set()
        self.dead_letters = DeadLetterStore(loaded.state_dir / "dlq")
        self.producer = BoundedProducer(kafka, max_in_flight=200_000, **{"linger.ms": 2})
        # A short fetch wait: a broker that answers a waiting fetch only when it times out (the embedded one)
        # would otherwise add up to librdkafka's 500 ms to every sale's way to the channels.
        self.consumer: Consumer = kafka.consumer(
            f"{settings.topic_prefix}.{loaded.name}.inventory",
            **{"enable.partition.eof": True, "max.partition.fetch.bytes": 16 << 20, "fetch.wait.max.ms": 20,
               "queued.max.messages.kbytes": 64 << 10},
        )
        self._errors: list[str] = []
        self._expired_at = -_EXPIRE_EVERY_S
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="kanal-ledger")

    # partitions ---------------------------------------------------------------

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Open each partition's ledger and read the partition from where that ledger stopped."""
        for tp in partitions:
            ledger = self.ledgers.get(tp.partition) or Ledger(ledger_path(self.loaded, tp.partition), self.rules)
            self.ledgers[tp.partition] = ledger
            tp.offset = ledger.offsets().get((tp.topic, tp.partition), OFFSET_BEGINNING)
            self.report.partitions.add(tp.partition)
            self._eof.discard(tp.partition)
        consumer.assign(partitions)
        log.info("inventory: assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions))

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Another process takes these partitions: publish what their ledgers hold unpublished, then let go."""
        self._publish([p.partition for p in partitions if p.partition in self.ledgers])
        for tp in partitions:
            ledger = self.ledgers.pop(tp.partition, None)
            if ledger is not None:
                ledger.close()
        log.info("inventory: revoked %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))

    # the loop -------------------------------------------------------------------

    def run(self, stop: threading.Event, once: bool) -> None:
        self.consumer.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked)
        read_to: dict[int, int] = {}
        try:
            while not stop.is_set():
                messages = consume_ready(self.consumer, self.batch_rows, 0.2)
                read = take(messages, self._eof)
                offsets = self._apply(read)
                self._expire()
                self._publish(list(self.ledgers))
                if offsets:
                    read_to.update(offsets)
                    self._commit(offsets, wait=False)
                if once and self.ledgers and self._eof >= set(self.ledgers) and not read:
                    return
        finally:
            if read_to:
                self._commit(read_to, wait=True)  # the group's lag reads 0 once the run is over

    def _apply(self, read: dict[int, _Read]) -> dict[int, int]:
        """One ledger transaction per partition, partitions in parallel; returns the offsets to commit.

        SQLite works without the GIL, so the ledgers of several partitions use
        several cores.
        """
        work = [(p, r) for p, r in read.items() if p in self.ledgers]  # one revoked meanwhile: its new owner reads it
        offsets = {}
        for partition, end, frame, rejected in self._pool.map(lambda item: self._apply_one(*item), work):
            self.report.movements += frame.height
            self._dead_letter(partition, end, rejected)
            offsets[partition] = end
        return offsets

    def _apply_one(self, partition: int, read: _Read) -> tuple[int, int, pl.DataFrame, pl.DataFrame]:
        """(partition, end offset, the movements read, those refused); what changed is published from the outbox."""
        parts = [*read.frames, *([wire.decode_lines(read.lines, _WIRE_SCHEMA)] if read.lines else [])]
        frame = pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame(schema=_WIRE_SCHEMA)
        return partition, read.end, frame, self.ledgers[partition].ingest(frame, {(self.topic, partition): read.end})

    def _dead_letter(self, partition: int, end: int, rejected: pl.DataFrame) -> None:
        if rejected.is_empty():
            return
        self.report.rejected += rejected.height
        rows = rejected.with_columns(pl.col("event_id").fill_null("").alias(KEY))
        letters = letters_frame(rows, STOCK_MOVEMENT.name, STAGE_SINK, "inventory", STOCK_MOVEMENT.field_names)
        self.dead_letters.put(STOCK_MOVEMENT.name, STAGE_SINK, f"inventory-p{partition}-{end}", letters)
        first = rejected.row(0, named=True)
        log.warning(
            "inventory: %d stock movement(s) refused (see `kanal dlq %s show`); first: event_id %r: %s",
            rejected.height, self.loaded.path.name, first["event_id"], first[REJECTED],
        )  # fmt: skip

    def _expire(self) -> None:
        """Release lapsed reservations, at most every `_EXPIRE_EVERY_S`.

        It is a write transaction per ledger: every cycle, it cost as much as
        applying a small batch.
        """
        if time.monotonic() - self._expired_at < _EXPIRE_EVERY_S:
            return
        self._expired_at = time.monotonic()
        for ledger in list(self.ledgers.values()):
            ledger.expire()

    def _publish(self, partitions: list[int]) -> None:
        """Send what each ledger changed since its last publication (decreases first within a ledger); wait for the acks.

        The ledgers' changes go out in one send per entity: a sku lives in
        one ledger, so concatenating keeps each key's order, and a live
        cycle's few rows per ledger cost far less as one frame than as one
        per partition.
        """
        sent: list[tuple[Ledger, int]] = []
        levels, availability = [], []
        for partition in partitions:
            ledger = self.ledgers[partition]
            position = ledger.position
            if position == ledger.published:
                continue
            changes = ledger.changes_since(ledger.published)
            levels.append(changes.levels)
            availability.append(changes.availability)
            sent.append((ledger, changes.position))
        if not sent:
            return
        self.report.levels += self._send(STOCK_LEVEL, pl.concat(levels))
        self.report.availability += self._send(AVAILABILITY, pl.concat(availability))
        left = self.producer.flush(30)
        with self._lock:
            errors, self._errors = self._errors, []
        if left or errors:
            raise BrokerUnavailable("kafka", f"stock levels not published: {errors[0] if errors else f'{left} unacknowledged'}")
        for ledger, position in sent:
            ledger.mark_published(position)

    def _send(self, entity: Entity, frame: pl.DataFrame) -> int:
        """Produce `frame` as keyed records of `entity`; returns how many."""
        if frame.is_empty():
            return 0
        records = wire.record_messages(canonical_records(entity, frame), self.out_partitions[entity.name])
        common = [
            (wire.H_ENTITY, entity.name.encode()), (wire.H_FORMAT, b"json"), (wire.H_JOB, self.loaded.name.encode()),
            (wire.H_SOURCE, _SOURCE), (wire.H_SCHEMA, wire.SCHEMA_VERSION),
        ]  # fmt: skip
        self.producer.send_records(
            self.outputs[entity.name],
            ((r.key, r.value, r.partition, [*common, (wire.H_OP, r.op), (wire.H_VERSION, r.version)]) for r in records),
            self._acked,
        )
        return frame.height

    def _acked(self, err: KafkaError | None) -> None:
        if err is not None:
            with self._lock:
                self._errors.append(err.str())

    def _commit(self, offsets: dict[int, int], *, wait: bool) -> None:
        """Commit the group's offsets, for its lag only: a ledger reads its partition from the offset it stored itself.

        So a cycle does not wait for the broker's answer (`wait=False`); the end of a run does.
        """
        try:
            self.consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()], asynchronous=not wait)
        except KafkaException as exc:
            # Partitions moved to another process: it reads from its ledger's offset, not from this commit.
            log.info("inventory: offsets not committed (%s)", exc)

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.close(timeout=10)
            self._pool.shutdown()
            for ledger in self.ledgers.values():
                ledger.close()
            self.ledgers.clear()
