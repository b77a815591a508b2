"""`kanal sync` and `kanal run`: stream changes after (or right after) a migration.

One loop, whatever the schedule: at each fire time the source's delta
reader is read until it is caught up (`--once` stops there; `--every` and
`--cron` wait for the next fire time; continuous streaming polls again after
`poll_s`). Each read is published as one keyed message per record and
delivered by the same sink deliveries as a migration.

What is confirmed, and when (no loss):

* with the embedded broker (memory only) a read counts as delivered when
  every sink wrote it and committed its offsets (`core.receipts`);
* with a real broker, when the broker acknowledged every message of it
  (it is durable there, and the sinks may run in other processes).

Only the end of the delivered prefix of reads is confirmed to the source (the
slot advances) and stored in the state. A crash or `kill -9` re-reads from
there; sinks are idempotent and version-checked, so nothing repeats visibly.
SIGTERM/SIGINT stop reading, wait for what is in flight, confirm, exit 0.

Every command fixes the delta position before a snapshot and streams from
the stored one (`jobs.pipeline.Positions`): `kanal run` migrates (unless done)
and streams; `kanal migrate` then `kanal sync` does the same in two steps.
Writes made during the snapshot arrive through the stream (gap-free handover).

Memory stays bounded on the embedded broker, which keeps every message in
memory and can delete whole topics only: once what the stream published may
hold `RECYCLE_BYTES` of the broker's memory and every read is confirmed (so the broker holds nothing still needed), the
stream closes its transport, deletes and recreates the job's topics and goes
on with a new transport (`_Transport`) under a new attempt id.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl
from rich.console import Console

from kanal.core import logs
from kanal.core.confirm import Confirmations
from kanal.core.connector import DeltaReader, Sink
from kanal.core.deliver import first_error
from kanal.core.errors import JobFailed, KanalError
from kanal.core.kafka import BoundedProducer, KafkaConnection, quiet_rdkafka
from kanal.core.progress import Metrics, ProgressDisplay, StreamView
from kanal.core.receipts import Receipts
from kanal.core.retry import call_with_retry
from kanal.core.schedule import Clock, Continuous, Schedule, SystemClock, fire_times
from kanal.core.state import StateStore
from kanal.core.telemetry.live import TELEMETRY
from kanal.jobs import migrate as migration
from kanal.jobs import pipeline
from kanal.jobs.load import LoadedJob
from kanal.jobs.pipeline import MIGRATION, Positions
from kanal.jobs.runtime import build_deliveries
from kanal.jobs.shared import SharedSnapshot

_MAX_READS_IN_FLIGHT = 4
"""Reads published but not yet confirmed. A CDC peek starts at the slot's confirmed
position, so every unconfirmed read is fetched again by the next one: 4 keeps the
pipeline full at half the re-reading 8 cost (measured 13.1k vs 11.4k changes/s)."""
_DRAIN_TIMEOUT_S = 60.0
RECYCLE_BYTES = 128 * 2**20
"""The embedded broker memory a stream's messages may take before it recycles the job's topics.

The embedded broker (Tansu 0.6) keeps every message in memory for the life of
the command and frees it only when its topic is deleted. What a message costs
depends on how it was batched, so the stream estimates it per read
(`broker_bytes`) instead of counting records: a change record takes 76 bytes in
the large lz4 batches of a busy stream, but 1.8 KiB when it is sent alone, as
a trickle of single changes is. 128 MiB keeps Kanal (which levels off near
550 MiB) and the broker together well under 1 GiB however long the stream
runs; a recycle costs a wait for the reads in flight and a fraction of a
second of topic work, every 1.3 million changes of a busy stream."""
_RECORD_BYTES = 100
"""Broker memory per change record beyond its batch (measured 76 in large lz4 batches)."""
_BATCH_BYTES = 2048
"""Broker memory per message batch (measured 1.8 KiB for a record sent alone)."""
_FIGURES_EVERY_S = 15.0
"""How often a stream asks its source for the figures the live view shows (a CDC slot's retained WAL)."""
_CYCLE_SUMMARY_S = 60.0
"""A continuous stream's polls are reported to `on_cycle` summed over this long."""
log = logging.getLogger("kanal.stream")


@dataclass(frozen=True)
class Cycle:
    """One fire of a stream's schedule: what it read, how long it took, what it set aside."""

    job: str
    changes: int
    seconds: float
    dead_letters: int


@dataclass
class StreamReport:
    job: str
    schedule: str
    seconds: float = 0.0
    reads: int = 0
    changes: int = 0
    migrated: migration.MigrationReport | None = None
    metrics: Metrics | None = None
    position: str = "unchanged"
    recycles: int = 0
    """How often the embedded broker's topics were deleted and recreated to free its memory."""


def broker_bytes(frames: dict[str, pl.DataFrame], partitions: dict[str, int]) -> int:
    """The embedded broker memory one read's messages take, at most: per record, and per batch.

    An entity's records go to its topic's partitions, at most one batch each
    (the producer lingers only milliseconds, so a read is not spread wider).
    """
    return sum(f.height * _RECORD_BYTES + min(f.height, partitions[e]) * _BATCH_BYTES for e, f in frames.items())


def open_state(loaded: LoadedJob) -> StateStore:
    """The job's state; exclusive unless the job shares a real broker with other workers."""
    state = StateStore(loaded.state_dir)
    return state.acquire() if loaded.job.kafka.embedded else state


@logs.for_job
def sync(
    loaded: LoadedJob,
    *,
    schedule: Schedule | None = None,
    once: bool = False,
    migrate_first: bool = False,
    stop: threading.Event | None = None,
    clock: Clock | None = None,
    console: Console | None = None,
    quiet: bool = False,
    verbose: bool = False,
    recycle_after: int = RECYCLE_BYTES,
    on_cycle: Callable[[Cycle], None] | None = None,
    on_migrated: Callable[[migration.MigrationReport], None] | None = None,
) -> StreamReport:
    """Stream JOB's deltas on `schedule` (continuous by default) until `stop` (or caught up, `once`).

    `migrate_first` (`kanal run`): migrate first unless a migration is done;
    either way the position was fixed before the snapshot, and the stream
    starts there. `recycle_after`: the estimated broker bytes after which an
    embedded broker's topics are recycled (`RECYCLE_BYTES`; tests lower it).
    `on_cycle` hears of every fire of the schedule that read changes or set
    records aside, and of every fire of a timed schedule (`kanal worker` logs them).
    `on_migrated` gets the migration's report as soon as it ends, before the
    stream starts (`kanal run` prints it then, not when the stream stops).
    """
    context = pipeline.require_delta(loaded)
    schedule = schedule or Continuous()
    stop = stop or threading.Event()
    state = open_state(loaded)
    try:
        with quiet_rdkafka(verbose), KafkaConnection(loaded.job.kafka) as kafka:
            source = pipeline.connect_source(loaded)
            reader = source.delta(context)
            try:
                report = StreamReport(loaded.name, "once" if once else schedule.describe())
                positions = Positions(loaded, state, reader)
                if migrate_first and (state.get(MIGRATION) or {}).get("status") != "done":
                    report.migrated = migration.run_with(loaded, kafka, state, console, quiet, explicit=False, positions=positions)
                    if on_migrated is not None:
                        on_migrated(report.migrated)
                elif not migrate_first:
                    migrating = not loaded.job.kafka.embedded and SharedSnapshot(loaded, kafka).pending() > 0
                    pipeline.refuse_unfinished(loaded, state, migrating)
                position = positions.for_stream()
                if not stop.is_set():
                    _Stream(loaded, kafka, state, reader, position, report, stop, recycle_after).run(
                        schedule, clock or SystemClock(), once, console, quiet, on_cycle
                    )
                return report
            finally:
                reader.close()
                source.close()
    finally:
        state.release()


class _Transport:
    """One generation of the stream's way through the broker: producer, receipts, publisher, deliveries.

    Batch ids and receipts belong to one attempt (`SinkDelivery`, `Receipts`),
    so every generation has its own attempt id; `broker_bytes` estimates the
    broker memory its messages take (see `RECYCLE_BYTES`).
    """

    def __init__(
        self,
        loaded: LoadedJob,
        kafka: KafkaConnection,
        topics: pipeline.Topics,
        sinks: dict[str, list[Sink]],
        metrics: Metrics,
        on_receipt: Callable[[str, str, int, int], None],
        fresh_topics: bool,
    ) -> None:
        self.attempt = uuid.uuid4().hex
        self.broker_bytes = 0
        self.flows = topics.flows(loaded, deltas_only=True)
        receipts = Receipts(pipeline.receipt_parties(loaded), on_receipt)
        delta_rows = getattr(loaded.source_config, "delta_rows", 50_000)
        self.producer = BoundedProducer(kafka, max_in_flight=delta_rows * _MAX_READS_IN_FLIGHT, **{"linger.ms": 2})
        self.publisher = pipeline.make_publisher(loaded, self.producer, receipts, topics, self.attempt, metrics)
        self.deliveries = build_deliveries(
            loaded, kafka, sinks, receipts=receipts, dead_letters=self.publisher.dead_letters, producer=self.producer,
            topics=topics.names, partitions=topics.partitions, attempt=self.attempt, metrics=metrics,
            fresh_topics=fresh_topics,
        )  # fmt: skip
        self._closed = False
        for d in self.deliveries:
            d.start()

    def check(self) -> None:
        """Raise what a delivery or the producer reported."""
        if (err := first_error(self.deliveries)) is not None:
            raise err
        self.publisher.raise_send_errors()

    def close(self, failed: bool) -> None:
        """Stop the deliveries (each commits what it wrote) and the producer; once, whatever the caller."""
        if self._closed:
            return
        self._closed = True
        for d in self.deliveries:
            d.stop()
        for d in self.deliveries:
            d.join()
        self.producer.close(timeout=5 if failed else 30)


class _Stream:
    def __init__(
        self,
        loaded: LoadedJob,
        kafka: KafkaConnection,
        state: StateStore,
        reader: DeltaReader,
        position: dict[str, Any],
        report: StreamReport,
        stop: threading.Event,
        recycle_after: int = RECYCLE_BYTES,
    ) -> None:
        self.loaded, self.kafka, self.state, self.reader = loaded, kafka, state, reader
        self.position, self.report, self.stop = position, report, stop
        self.recycle_after = recycle_after
        self.job = loaded.job
        self.confirmations = Confirmations()
        self._seq = 0
        self._delivered: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._figures_at = -_FIGURES_EVERY_S
        self._polls, self._polls_since = Cycle(loaded.name, 0, 0.0, 0), time.monotonic()

    def _on_receipt(self, entity: str, read_id: str, rows: int, dead: int) -> None:
        """A sink-side receipt (consumer threads): a read's entity is written everywhere."""
        self.confirmations.delivered(int(read_id.rsplit("-", 1)[1]), entity)
        with self._lock:
            counts = self._delivered.setdefault(entity, {"changes": 0, "last": 0.0})
            counts["changes"] += rows
            counts["last"] = time.time()

    def run(
        self, schedule: Schedule, clock: Clock, once: bool, console: Console | None, quiet: bool,
        on_cycle: Callable[[Cycle], None] | None = None,
    ) -> None:  # fmt: skip
        job = self.job
        started = time.monotonic()
        self.metrics = Metrics([p.name for p in self.loaded.sinks])
        self.report.metrics = self.metrics
        timed = not isinstance(schedule, Continuous)
        view = StreamView(f"kanal sync {job.name} ({self.report.schedule})", self.metrics.sinks)
        self.metrics.set_phase("connecting")
        with (
            ProgressDisplay(self.metrics, view, console=console, quiet=quiet),
            TELEMETRY.track(job.name, "stream", self.metrics, lambda: self.confirmations.pending, self.kafka),
        ):
            self.topics = pipeline.Topics.open(self.loaded, self.kafka)
            self.sinks = pipeline.connect_sinks(self.loaded, streaming=True)
            self.transport = self._transport(fresh_topics=False)
            failed = False
            try:
                self.metrics.set_phase("reading changes" if timed or once else "streaming")
                for _ in fire_times(schedule, clock, self.stop):
                    self._cycle(on_cycle, timed)
                    if once:
                        break
                    if timed:
                        self.metrics.set_phase(f"caught up; next sync {schedule.describe()}")
                    else:
                        self._pause()
                self._tell_polls(on_cycle)
                self.metrics.set_phase("stopping: delivering what is in flight")
                self._drain()
                self.metrics.set_phase("stopped")
            except BaseException:
                failed = True
                raise
            finally:
                self.transport.close(failed)
                pipeline.close_all(None, self.sinks)
                self.report.seconds = time.monotonic() - started
        if (err := first_error(self.transport.deliveries)) is not None:
            raise err

    def _cycle(self, on_cycle: Callable[[Cycle], None] | None, timed: bool) -> None:
        """One fire of the schedule: catch up, then tell `on_cycle`.

        A continuous stream polls ten times a second: its polls are told as
        one cycle per `_CYCLE_SUMMARY_S`, and only when they read something.
        """
        started, changes, dead = time.monotonic(), self.report.changes, self._dead_letters()
        if timed:
            self.metrics.set_phase("reading changes")
        self._catch_up()
        self._figures()
        cycle = Cycle(self.job.name, self.report.changes - changes, time.monotonic() - started, self._dead_letters() - dead)
        if on_cycle is None:
            return
        if timed:
            on_cycle(cycle)
            return
        p = self._polls
        self._polls = Cycle(p.job, p.changes + cycle.changes, p.seconds + cycle.seconds, p.dead_letters + cycle.dead_letters)
        if time.monotonic() - self._polls_since >= _CYCLE_SUMMARY_S:
            self._tell_polls(on_cycle)

    def _tell_polls(self, on_cycle: Callable[[Cycle], None] | None) -> None:
        """Tell the polls summed since the last time, if they read or set aside anything."""
        if on_cycle is not None and (self._polls.changes or self._polls.dead_letters):
            on_cycle(self._polls)
        self._polls, self._polls_since = Cycle(self.job.name, 0, 0.0, 0), time.monotonic()

    def _dead_letters(self) -> int:
        return sum(e.dead for e in self.metrics.sample().entities)

    def _figures(self) -> None:
        """Refresh the source's figures in the live view, at most every `_FIGURES_EVERY_S` (one query)."""
        now = time.monotonic()
        if now - self._figures_at < _FIGURES_EVERY_S:
            return
        self._figures_at = now
        try:
            self.metrics.figures = self.reader.status()
        except KanalError as exc:
            self.metrics.figures = {"source": f"unreachable: {exc.message}"}

    def _transport(self, fresh_topics: bool) -> _Transport:
        return _Transport(self.loaded, self.kafka, self.topics, self.sinks, self.metrics, self._on_receipt, fresh_topics)

    def _catch_up(self) -> None:
        """Read until the source has nothing more, publishing and confirming as deliveries complete."""
        while not self.stop.is_set():
            self._confirm_while(lambda: self.confirmations.pending >= _MAX_READS_IN_FLIGHT)
            changes = call_with_retry(
                lambda: self.reader.read(self.position), self.job.errors.retry, cancel=self.stop, on_wait=self.metrics.waiting("source")
            )
            transport, publisher = self.transport, self.transport.publisher
            self._seq += 1
            read_id = f"{transport.attempt[:12]}-{self._seq}"
            self.confirmations.expect(self._seq, changes.position, set(changes.frames))
            for entity, frame in changes.frames.items():
                publisher.publish_changes(transport.flows[entity], frame, read_id)
            if publisher.rejected:
                r = publisher.rejected[0]
                raise JobFailed(
                    f"{sum(x.count for x in publisher.rejected)} invalid change(s) under error policy 'fail'; first: "
                    f"{r.entity} key {r.first_key!r}: {r.first_reason}. Nothing after the last delivered change was "
                    "confirmed: fix the source and run again"
                )
            self.position = changes.position
            transport.broker_bytes += broker_bytes(changes.frames, self.topics.partitions)
            self.report.reads += 1
            self.report.changes += changes.rows
            self._check()
            self._confirm()
            if transport.broker_bytes >= self.recycle_after and self.job.kafka.embedded:
                self._recycle()
            if not changes.rows:
                return

    def _recycle(self) -> None:
        """Free the embedded broker's memory: once every read is confirmed, delete the topics and start over.

        Only then does the broker hold nothing still needed: every message was
        written by every sink, and the position after it is stored. Dead
        letters are in the local store too (`core.dlq`). The new topics start
        at offset 0, and the new deliveries read them from there.
        """
        started = time.monotonic()
        self._confirm_while(lambda: self.confirmations.pending > 0)
        if self.confirmations.pending:
            return  # stopping: the final drain confirms what is left
        self.transport.close(failed=False)
        self.transport.check()
        self.kafka.delete_topics([*self.topics.names.values(), self.topics.dlq])
        self.topics = pipeline.Topics.open(self.loaded, self.kafka)
        self.transport = self._transport(fresh_topics=True)
        self.report.recycles += 1
        log.info(
            "recycled the embedded broker's topics in %.2fs (%d so far, after %d reads)",
            time.monotonic() - started, self.report.recycles, self.report.reads,
        )  # fmt: skip

    def _confirm_while(self, busy: Callable[[], bool]) -> None:
        """Keep confirming what completes while `busy()` holds, unless the stream is stopping."""
        while busy() and not self.stop.is_set():
            self._check()
            self._confirm()
            time.sleep(0.01)

    def _pause(self) -> None:
        """Between polls of a continuous stream: keep confirming what completes."""
        self._figures()
        deadline = time.monotonic() + self._poll_s()
        while not self.stop.is_set() and time.monotonic() < deadline:
            self._check()
            self._confirm()
            self.stop.wait(0.02)

    def _poll_s(self) -> float:
        polls = [getattr(o.delta, "poll_s", None) for o in pipeline.require_delta(self.loaded).entities.values()]
        return min([p for p in polls if p] or [0.1])

    def _drain(self) -> None:
        """Stopping: wait for what is in flight, so the final position is confirmed."""
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        while self.confirmations.pending and time.monotonic() < deadline:
            self._check()
            self._confirm()
            time.sleep(0.02)
        self._confirm()

    def _check(self) -> None:
        self.transport.check()

    def _confirm(self) -> None:
        position = self.confirmations.confirmable()
        if position is None:
            return
        call_with_retry(
            lambda: self.reader.confirm(position), self.job.errors.retry, cancel=self.stop, on_wait=self.metrics.waiting("source")
        )
        with self._lock:
            delivered, self._delivered = self._delivered, {}
        Positions(self.loaded, self.state, self.reader).confirmed(position, delivered)
        self.report.position = self.reader.describe(position)
