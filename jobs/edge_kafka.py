"""The store agent and Kafka: forwarding its journal, following the movements booked centrally.

* `Forwarder` sends the journal's unforwarded movements, in journal order,
  to the job's `stock_movements` topic in the wire format the aggregator
  (`kanal inventory`) reads, partitioned by sku (`Entity.partition_by`),
  with an idempotent producer that never gives a message up
  (`message.timeout.ms: 0`). Per partition, acknowledgements come in order,
  so what was acknowledged before the first gap is marked forwarded; the
  rest goes out again with a new producer after an outage or a restart (a
  duplicate on the wire is harmless: the ledger deduplicates by event_id;
  a movement never sent would be lost).
* `Central` follows the same topic and applies the movements that concern
  the store (its location, or a transfer towards it) to the local ledger:
  receipts, transfers and counts booked centrally. The ledger stores how far
  it read in the same transaction. The store's own movements coming back are
  skipped unread when its journal holds them (it applied them from there),
  and would be ignored by event_id anyway, so local figures converge on the
  central ones.

Both are threads that report and try again; neither ever stops the agent.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import partial

import polars as pl
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from kanal.core import wire
from kanal.core.errors import redact
from kanal.core.journal import Entry
from kanal.core.kafka import BoundedProducer, KafkaConnection
from kanal.core.model import STOCK_MOVEMENT
from kanal.jobs.edge import Edge

log = logging.getLogger("kanal.edge")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].str()
    return redact(str(exc))


class Batch:
    """Delivery reports of one batch, by position; `settled` once every one came or one failed."""

    def __init__(self, size: int) -> None:
        self.results: list[KafkaError | bool | None] = [None] * size
        self.settled = threading.Event()
        self.progress = time.monotonic()
        self._lock = threading.Lock()
        self._left = size

    def ack(self, index: int, err: KafkaError | None) -> None:
        with self._lock:
            self.results[index] = err if err is not None else True
            self._left -= 1
            self.progress = time.monotonic()
            if err is not None or self._left == 0:
                self.settled.set()

    def forwarded(self, entries: list[Entry], partitions: list[int]) -> list[int]:
        """Seqs acknowledged with nothing unacknowledged before them in their partition (so order holds when the rest is sent again)."""
        with self._lock:
            results = list(self.results)
        broken: set[int] = set()
        seqs = []
        for entry, partition, result in zip(entries, partitions, results, strict=True):
            if result is True and partition not in broken:
                seqs.append(entry.seq)
            else:
                broken.add(partition)
        return seqs


@dataclass
class BrokerState:
    connected: bool = False
    error: str | None = None
    forwarded: int = 0
    last_forwarded_us: int | None = None


class Forwarder:
    """Sends the journal's backlog to the movements topic whenever the broker is there (see the module docstring)."""

    def __init__(self, edge: Edge, kafka: KafkaConnection, stop: threading.Event, *, batch: int = 500,
                 stall_s: float = 10.0, retry_s: float = 1.0) -> None:  # fmt: skip
        self.edge, self.kafka, self.stop = edge, kafka, stop
        self.batch, self.stall_s, self.retry_s = batch, stall_s, retry_s
        self.topic = kafka.settings.topic(STOCK_MOVEMENT.name)
        self.state = BrokerState()
        self.topic_ready = threading.Event()
        self.partitions = 0
        self.producer: BoundedProducer | None = None
        self._headers = [
            (wire.H_ENTITY, STOCK_MOVEMENT.name.encode()), (wire.H_FORMAT, b"json"),
            (wire.H_JOB, edge.loaded.name.encode()), (wire.H_SOURCE, edge.source.encode()),
            (wire.H_SCHEMA, wire.SCHEMA_VERSION),
        ]  # fmt: skip

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    self._round()
                except Exception as exc:  # noqa: BLE001 - a background thread reports and tries again
                    log.warning("forwarding failed, trying again: %s", _describe(exc))
                    self._drop_producer(_describe(exc))
                    self.stop.wait(self.retry_s)
        finally:
            self._drop_producer(None)

    def _round(self) -> None:
        if self.producer is None and not self._connect():
            self.stop.wait(self.retry_s)
            return
        self.edge.wake.clear()
        entries = self.edge.journal.pending(self.batch)
        if not entries:
            self.edge.wake.wait(1.0)
            return
        self._forward(entries)

    def _reachable(self) -> bool:
        try:
            AdminClient(self.kafka.config()).list_topics(timeout=2)
            return True
        except KafkaException:
            return False

    def _connect(self) -> bool:
        """Reach the broker, make sure the topic exists (as the aggregator makes it), start a producer."""
        if not self._reachable():
            self._down(f"kafka {self.kafka.bootstrap} not reachable")
            return False
        self.kafka.ensure_topics([self.topic], compact=True)
        self.partitions = self.kafka.partitions_of(self.topic)
        # Never give a message up (0: no timeout): librdkafka keeps retrying in order through an outage.
        self.producer = BoundedProducer(self.kafka, max_in_flight=self.batch, **{"message.timeout.ms": 0})
        self.state.connected, self.state.error = True, None
        self.topic_ready.set()
        log.info("connected to kafka %s, forwarding to %s", self.kafka.bootstrap, self.topic)
        return True

    def _down(self, error: str) -> None:
        if self.state.connected or self.state.error != error:
            log.warning("%s; movements stay journaled and are forwarded once it answers", error)
        self.state.connected, self.state.error = False, error

    def _drop_producer(self, error: str | None) -> None:
        if self.producer is not None:
            self.producer.abandon()
            self.producer = None
        if error:
            self._down(error)

    def _forward(self, entries: list[Entry]) -> None:
        assert self.producer is not None
        records = wire.record_messages(self.edge.wire_frame(entries), self.partitions)
        batch = Batch(len(records))
        for index, record in enumerate(records):
            headers = [*self._headers, (wire.H_OP, record.op), (wire.H_VERSION, record.version)]
            self.producer.send(self.topic, record.value, key=record.key, partition=record.partition, headers=headers,
                               on_ack=partial(batch.ack, index))  # fmt: skip
        complete = self._await(batch)
        seqs = batch.forwarded(entries, [r.partition for r in records])
        self.edge.journal.mark_forwarded(seqs)
        if seqs:
            self.state.forwarded += len(seqs)
            self.state.last_forwarded_us = int(time.time() * 1_000_000)
            self.state.connected, self.state.error = True, None  # the broker came back to this producer
        if not complete:
            failed = next((r for r in batch.results if isinstance(r, KafkaError)), None)
            self._drop_producer(failed.str() if failed is not None else None)

    def _await(self, batch: Batch) -> bool:
        """Wait for the batch's acknowledgements; False when a new producer must send the rest.

        A broker that is down is waited for (librdkafka retries). One that
        answers requests but acknowledges nothing for `stall_s` lost the
        producer's state (restarted without its data): start afresh.
        """
        while not self.stop.is_set():
            if batch.settled.wait(0.2):
                return all(r is True for r in batch.results)
            if time.monotonic() - batch.progress < self.stall_s:
                continue
            if self._reachable():
                log.warning("kafka answers but acknowledged nothing for %.0fs; sending again", self.stall_s)
                return False
            self._down(f"kafka {self.kafka.bootstrap} not reachable")
            batch.progress = time.monotonic()
        return False


# central updates -------------------------------------------------------------------------------


@dataclass
class CentralState:
    following: bool = False
    applied: int = 0
    """Movements concerning the store applied from the topic (its own, coming back, included)."""
    last_applied_us: int | None = None


class Central:
    """Applies the topic's movements that concern the store to its local ledger (see the module docstring)."""

    def __init__(self, edge: Edge, kafka: KafkaConnection, topic_ready: threading.Event, stop: threading.Event,
                 *, retry_s: float = 1.0) -> None:  # fmt: skip
        self.edge, self.kafka, self.topic_ready, self.stop, self.retry_s = edge, kafka, topic_ready, stop, retry_s
        self.topic = kafka.settings.topic(STOCK_MOVEMENT.name)
        self.group = f"{kafka.settings.topic_prefix}.{edge.loaded.name}.edge.{edge.store}"
        self.state = CentralState()
        self.consumer: Consumer | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    if self.consumer is None:
                        if self.topic_ready.wait(0.5):
                            self._assign()
                        continue
                    self._apply(self.consumer.consume(num_messages=2_000, timeout=0.5))
                except Exception as exc:  # noqa: BLE001 - a background thread reports and tries again
                    log.warning("following central movements failed, trying again: %s", _describe(exc))
                    self._close()
                    self.stop.wait(self.retry_s)
        finally:
            self._close()

    def _assign(self) -> None:
        """Read every partition from where the local ledger stopped (the start for a new store)."""
        offsets = self.edge.ledger.offsets()
        partitions = self.kafka.partitions_of(self.topic)
        self.consumer = self.kafka.consumer(self.group)
        self.consumer.assign([
            TopicPartition(self.topic, p, offsets.get((self.topic, p), OFFSET_BEGINNING)) for p in range(partitions)
        ])  # fmt: skip
        self.state.following = True

    def _apply(self, messages: list[Message]) -> None:
        ends: dict[tuple[str, int], int] = {}
        read: list[tuple[bytes | None, bytes | None, dict[str, str]]] = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                continue  # transport errors while the broker is away: librdkafka reconnects
            ends[(self.topic, msg.partition())] = msg.offset() + 1
            read.append((msg.key(), msg.value(), wire.headers_of(msg.headers())))
        if not ends:
            return
        # The store's own movements coming back reach its ledger from the journal: not decoded twice. Only
        # those the journal holds, though: a new journal (a replaced store PC) takes the old ones from here.
        own = [k.decode() if k is not None and h.get(wire.H_SOURCE) == self.edge.source else None for k, _, h in read]
        journaled = self.edge.journal.holding([k for k in own if k is not None])
        taken = [(v, h) for (_, v, h), k in zip(read, own, strict=True) if k is None or k not in journaled]
        store = self.edge.store
        frame = wire.messages_frame(taken, STOCK_MOVEMENT.schema)
        mine = frame.filter((pl.col("location") == store) | (pl.col("counterpart") == store).fill_null(False))
        self.edge.ledger.ingest(mine, ends)
        if not mine.is_empty():
            self.state.applied += mine.height
            self.state.last_applied_us = int(time.time() * 1_000_000)

    def _close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        self.state.following = False
