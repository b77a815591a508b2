"""`kanal sync` and `kanal run`: stream changes after (or right after) a migration.

One loop, whatever the schedule: at each fire time the source's delta
reader is read until it is caught up (`--once` stops there; `--every` and
`--cron` wait for the next fire time; continuous streaming polls again after
`poll_s`). Each read is published as one keyed message per record and
delivered by the same sink deliveries as a migration.

What is confirmed, and when (DESIGN §4 "No loss"):

* with the embedded broker (memory only) a read counts as delivered when
  every sink wrote it and committed its offsets (`core.receipts`);
* with a real broker, when the broker acknowledged every message of it
  (it is durable there, and the sinks may run in other processes).

Only the end of the delivered prefix of reads is confirmed to the source (the
slot advances) and stored in the state. A crash or `kill -9` re-reads from
there; sinks are idempotent and version-checked, so nothing repeats visibly.
SIGTERM/SIGINT stop reading, wait for what is in flight, confirm, exit 0.

`kanal run` first fixes the delta position (`DeltaReader.start`, e.g.
creates the slot), then migrates, then streams from that position: writes
made during the snapshot arrive through the stream (gap-free handover).
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
from kanal.core.connector import DeltaContext, DeltaReader
from kanal.core.deliver import SinkDelivery, first_error
from kanal.core.errors import ConfigError, JobFailed
from kanal.core.kafka import BoundedProducer, KafkaConnection, quiet_rdkafka
from kanal.core.model import entity as canonical
from kanal.core.progress import Metrics, ProgressDisplay
from kanal.core.publish import Publisher, SourceFlow
from kanal.core.receipts import Receipts
from kanal.core.retry import call_with_retry
from kanal.core.schedule import Clock, Continuous, Schedule, SystemClock, fire_times
from kanal.core.state import StateStore
from kanal.jobs import migrate as migration
from kanal.jobs.load import LoadedJob
from kanal.jobs.model import ErrorPolicy
from kanal.jobs.runtime import build_deliveries, dead_letter_store, make_source, receipt_parties, source_transform

STREAM = "stream"
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


def delta_context(loaded: LoadedJob) -> DeltaContext:
    entities = {e: p.options for e, p in loaded.source_entities.items() if p.options.delta is not None}
    if not entities:
        raise ConfigError(
            f"{loaded.path}: no entity of the source has `delta:`; add e.g. `delta: cdc` or "
            "`delta: {cursor: updated_at}` to the source entities that should stream"
        )
    return DeltaContext(loaded.name, entities)


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
    """Stream JOB's deltas on `schedule` (continuous by default) until `stop` (or caught up, `once`)."""
    context = delta_context(loaded)
    schedule = schedule or Continuous()
    stop = stop or threading.Event()
    state = open_state(loaded)
    try:
        with quiet_rdkafka(verbose), KafkaConnection(loaded.job.kafka) as kafka:
            source = make_source(loaded)
            call_with_retry(source.check, loaded.job.errors.retry)
            reader = source.delta(context)
            try:
                position = call_with_retry(reader.start, loaded.job.errors.retry)
                stored = state.get(STREAM)
                if stored and stored.get("position"):
                    if not reader.resumable(stored["position"]):
                        raise ConfigError(
                            f"{loaded.path}: the source no longer holds this job's stream position "
                            f"({reader.describe(stored['position'])}; was the replication slot dropped?), so the "
                            f"changes since then cannot be read. Run `kanal cleanup {loaded.path.name}` and "
                            f"`kanal run {loaded.path.name}` to migrate again"
                        )
                    position = stored["position"]
                else:
                    state.update(lambda d: d.__setitem__(STREAM, {"position": position, "since": time.time()}))
                report = StreamReport(loaded.name, "once" if once else schedule.describe())
                if migrate_first and (state.get(migration.MIGRATION) or {}).get("status") != "done":
                    report.migrated = migration.run_with(loaded, kafka, state, console, quiet, explicit=False)
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
        entities = list(self.loaded.source_entities)
        topics = {e: job.kafka.topic(e) for e in entities}
        kafka.ensure_topics(list(topics.values()), compact=True)
        kafka.ensure_topics([job.kafka.dlq_topic(job.name)], compact=False)
        partitions = {e: kafka.partitions_of(t) for e, t in topics.items()}
        sinks = migration.connect_sinks(self.loaded, streaming=True)
        metrics = Metrics([p.name for p in self.loaded.sinks])
        self.report.metrics = metrics
        receipts = Receipts(receipt_parties(self.loaded), self._on_receipt)
        delta_rows = getattr(self.loaded.source_config, "delta_rows", 50_000)
        producer = BoundedProducer(kafka, max_in_flight=delta_rows * _MAX_READS_IN_FLIGHT, **{"linger.ms": 2})
        publisher = Publisher(
            job=job.name,
            source_name=job.source.connector,
            producer=producer,
            receipts=receipts,
            dead_letters=dead_letter_store(self.loaded),
            dlq_topic=job.kafka.dlq_topic(job.name),
            use_dlq=job.errors.policy == ErrorPolicy.DLQ,
            message_rows=job.batch.message_rows,
            attempt=self.attempt,
            metrics=metrics,
        )
        flows = {
            e: SourceFlow(canonical(e), ep.options, source_transform(ep), topics[e], partitions[e])
            for e, ep in self.loaded.source_entities.items()
            if ep.options.delta is not None
        }
        deliveries = build_deliveries(
            self.loaded, kafka, sinks, receipts=receipts, dead_letters=publisher.dead_letters, producer=producer,
            topics=topics, partitions=partitions, attempt=self.attempt, metrics=metrics,
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
            for instances in sinks.values():
                for s in instances:
                    s.close()
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
        polls = [getattr(o.delta, "poll_s", None) for o in delta_context(self.loaded).entities.values()]
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

        def store(doc: dict[str, Any]) -> None:
            stream = doc.setdefault(STREAM, {})
            stream["position"] = position
            stream["confirmed_at"] = time.time()
            entities = stream.setdefault("entities", {})
            for entity, counts in delivered.items():
                entry = entities.setdefault(entity, {"changes": 0})
                entry["changes"] = entry.get("changes", 0) + counts["changes"]
                entry["last_write"] = counts["last"]

        self.state.update(store)
        self.report.position = self.reader.describe(position)
