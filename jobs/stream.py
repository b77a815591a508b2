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
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from kanal.core.confirm import Confirmations
from kanal.core.connector import DeltaReader
from kanal.core.deliver import SinkDelivery, first_error
from kanal.core.errors import JobFailed
from kanal.core.kafka import BoundedProducer, KafkaConnection, quiet_rdkafka
from kanal.core.progress import Metrics, ProgressDisplay
from kanal.core.publish import Publisher, SourceFlow
from kanal.core.receipts import Receipts
from kanal.core.retry import call_with_retry
from kanal.core.schedule import Clock, Continuous, Schedule, SystemClock, fire_times
from kanal.core.state import StateStore
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
log = logging.getLogger("kanal.stream")


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


def open_state(loaded: LoadedJob) -> StateStore:
    """The job's state; exclusive unless the job shares a real broker with other workers."""
    state = StateStore(loaded.state_dir)
    return state.acquire() if loaded.job.kafka.embedded else state


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
) -> StreamReport:
    """Stream JOB's deltas on `schedule` (continuous by default) until `stop` (or caught up, `once`).

    `migrate_first` (`kanal run`): migrate first unless a migration is done;
    either way the position was fixed before the snapshot, and the stream
    starts there.
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
                elif not migrate_first:
                    migrating = not loaded.job.kafka.embedded and SharedSnapshot(loaded, kafka).pending() > 0
                    pipeline.refuse_unfinished(loaded, state, migrating)
                position = positions.for_stream()
                if not stop.is_set():
                    _Stream(loaded, kafka, state, reader, position, report, stop).run(
                        schedule, clock or SystemClock(), once, console, quiet
                    )
                return report
            finally:
                reader.close()
                source.close()
    finally:
        state.release()


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
    ) -> None:
        self.loaded, self.kafka, self.state, self.reader = loaded, kafka, state, reader
        self.position, self.report, self.stop = position, report, stop
        self.job = loaded.job
        self.confirmations = Confirmations()
        self.attempt = uuid.uuid4().hex
        self._seq = 0
        self._delivered: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def _on_receipt(self, entity: str, read_id: str, rows: int, dead: int) -> None:
        """A sink-side receipt (consumer threads): a read's entity is written everywhere."""
        self.confirmations.delivered(int(read_id.rsplit("-", 1)[1]), entity)
        with self._lock:
            counts = self._delivered.setdefault(entity, {"changes": 0, "last": 0.0})
            counts["changes"] += rows
            counts["last"] = time.time()

    def run(self, schedule: Schedule, clock: Clock, once: bool, console: Console | None, quiet: bool) -> None:
        job, kafka = self.job, self.kafka
        started = time.monotonic()
        topics = pipeline.Topics.open(self.loaded, kafka)
        sinks = pipeline.connect_sinks(self.loaded, streaming=True)
        metrics = Metrics([p.name for p in self.loaded.sinks])
        self.report.metrics = metrics
        receipts = Receipts(pipeline.receipt_parties(self.loaded), self._on_receipt)
        delta_rows = getattr(self.loaded.source_config, "delta_rows", 50_000)
        producer = BoundedProducer(kafka, max_in_flight=delta_rows * _MAX_READS_IN_FLIGHT, **{"linger.ms": 2})
        publisher = pipeline.make_publisher(self.loaded, producer, receipts, topics, self.attempt, metrics)
        flows = topics.flows(self.loaded, deltas_only=True)
        deliveries = build_deliveries(
            self.loaded, kafka, sinks, receipts=receipts, dead_letters=publisher.dead_letters, producer=producer,
            topics=topics.names, partitions=topics.partitions, attempt=self.attempt, metrics=metrics,
        )
        failed = False
        title = f"kanal sync {job.name} ({schedule.describe()})"
        try:
            with ProgressDisplay(metrics, title, console=console, quiet=quiet):
                for d in deliveries:
                    d.start()
                for _ in fire_times(schedule, clock, self.stop):
                    self._catch_up(publisher, flows, deliveries)
                    if once:
                        break
                    if isinstance(schedule, Continuous):
                        self._pause(deliveries, publisher)
                self._drain(deliveries, publisher)
        except BaseException:
            failed = True
            raise
        finally:
            for d in deliveries:
                d.stop()
            for d in deliveries:
                d.join()
            producer.close(timeout=5 if failed else 30)
            pipeline.close_all(None, sinks)
            self.report.seconds = time.monotonic() - started
        if (err := first_error(deliveries)) is not None:
            raise err

    def _catch_up(self, publisher: Publisher, flows: dict[str, SourceFlow], deliveries: list[SinkDelivery]) -> None:
        """Read until the source has nothing more, publishing and confirming as deliveries complete."""
        while not self.stop.is_set():
            while self.confirmations.pending >= _MAX_READS_IN_FLIGHT and not self.stop.is_set():
                self._check(deliveries, publisher)
                self._confirm()
                time.sleep(0.01)
            changes = call_with_retry(lambda: self.reader.read(self.position), self.job.errors.retry, cancel=self.stop)
            self._seq += 1
            read_id = f"{self.attempt[:12]}-{self._seq}"
            self.confirmations.expect(self._seq, changes.position, set(changes.frames))
            for entity, frame in changes.frames.items():
                publisher.publish_changes(flows[entity], frame, read_id)
            if publisher.rejected:
                r = publisher.rejected[0]
                raise JobFailed(
                    f"{sum(x.count for x in publisher.rejected)} invalid change(s) under error policy 'fail'; first: "
                    f"{r.entity} key {r.first_key!r}: {r.first_reason}. Nothing after the last delivered change was "
                    "confirmed: fix the source and run again"
                )
            self.position = changes.position
            self.report.reads += 1
            self.report.changes += changes.rows
            self._check(deliveries, publisher)
            self._confirm()
            if not changes.rows:
                return

    def _pause(self, deliveries: list[SinkDelivery], publisher: Publisher) -> None:
        """Between polls of a continuous stream: keep confirming what completes."""
        deadline = time.monotonic() + self._poll_s()
        while not self.stop.is_set() and time.monotonic() < deadline:
            self._check(deliveries, publisher)
            self._confirm()
            self.stop.wait(0.02)

    def _poll_s(self) -> float:
        polls = [getattr(o.delta, "poll_s", None) for o in pipeline.require_delta(self.loaded).entities.values()]
        return min([p for p in polls if p] or [0.1])

    def _drain(self, deliveries: list[SinkDelivery], publisher: Publisher) -> None:
        """Stopping: wait for what is in flight, so the final position is confirmed."""
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        while self.confirmations.pending and time.monotonic() < deadline:
            self._check(deliveries, publisher)
            self._confirm()
            time.sleep(0.02)
        self._confirm()

    def _check(self, deliveries: list[SinkDelivery], publisher: Publisher) -> None:
        if (err := first_error(deliveries)) is not None:
            raise err
        publisher.raise_send_errors()

    def _confirm(self) -> None:
        position = self.confirmations.confirmable()
        if position is None:
            return
        call_with_retry(lambda: self.reader.confirm(position), self.job.errors.retry, cancel=self.stop)
        with self._lock:
            delivered, self._delivered = self._delivered, {}
        Positions(self.loaded, self.state, self.reader).confirmed(position, delivered)
        self.report.position = self.reader.describe(position)
