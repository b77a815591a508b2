"""`kanal migrate`: snapshot every entity to completion, resumable after any crash.

Order of a run (the shared steps live in `jobs.pipeline`):
1. lock the job's state folder; reach the broker (or start the embedded one),
   the source and every sink, and prepare the targets — before any data moves;
2. fix the delta position of the entities with `delta:` *before* the
   snapshot (so `kanal sync` or `kanal run` later streams from it, no gap);
3. plan the chunks of every entity, or resume the stored plan of an
   unfinished migration (chunks already receipted are skipped);
4. start one delivery per sink (consumer + writers), then read the chunks in
   parallel, in one consistent snapshot of the source, and publish them;
5. a chunk is checkpointed when every sink wrote all of it (`core.receipts`);
6. when every chunk is checkpointed, sinks build what they deferred
   (`finish`), and the migration is marked done.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from kanal.core import logs
from kanal.core.connector import Chunk, Source
from kanal.core.deliver import first_error
from kanal.core.errors import JobFailed
from kanal.core.kafka import BoundedProducer, KafkaConnection, quiet_rdkafka
from kanal.core.progress import Metrics, MigrationView, ProgressDisplay
from kanal.core.publish import Publisher, Rejected, SourceFlow
from kanal.core.receipts import Receipts
from kanal.core.retry import call_with_retry
from kanal.core.state import StateStore
from kanal.core.telemetry.live import TELEMETRY, chunks_pending
from kanal.jobs import pipeline
from kanal.jobs.load import LoadedJob
from kanal.jobs.pipeline import MIGRATION, Positions
from kanal.jobs.runtime import build_deliveries, make_source, wait_consumed
from kanal.jobs.shared import SharedSnapshot

log = logging.getLogger("kanal.migrate")


@dataclass
class MigrationReport:
    job: str
    seconds: float
    resumed_chunks: int
    metrics: Metrics
    finish_notes: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.rejected


def _plan(
    loaded: LoadedJob, source: Source, state: StateStore, new_position: bool
) -> tuple[dict[str, list[Chunk]], set[tuple[str, str]], dict[str, Any]]:
    """Reuse an unfinished migration's plan, or make a new one.

    A plan is not resumed when the delta position was fixed anew: its
    finished chunks were read before that position, and the changes between
    the two would be in neither.
    """
    stored = state.get(MIGRATION)
    resumable = stored and stored.get("status") == "running" and set(stored["entities"]) == set(loaded.source_entities)
    if resumable and not new_position:
        stored = _replan(loaded, source, state, stored)
        plans = {e: [Chunk(c["id"], c["spec"], c.get("rows")) for c in v["chunks"]] for e, v in stored["entities"].items()}
        done = {(e, cid) for e, v in stored["entities"].items() for cid in v.get("done", {})}
        return plans, done, stored
    plans = {e: pipeline.plan_chunks(loaded, source, e) for e in loaded.source_entities}
    doc = {
        "status": "running",
        "run": uuid.uuid4().hex,
        "started": time.time(),
        "entities": {
            e: {"chunks": _chunk_docs(chunks), "done": {}}
            for e, chunks in plans.items()
        },
    }
    state.update(lambda d: d.__setitem__(MIGRATION, doc))
    return plans, set(), doc


def replanned(state: StateStore) -> set[str]:
    """The entities `kanal reset` marked for a new snapshot (`jobs.reset`)."""
    stored = state.get(MIGRATION) or {}
    return {e for e, v in stored.get("entities", {}).items() if v.get("replan")} if stored.get("status") == "running" else set()


def _replan(loaded: LoadedJob, source: Source, state: StateStore, stored: dict[str, Any]) -> dict[str, Any]:
    """Plan the entities marked by `kanal reset` now, not at the reset: rows added in between are read too."""
    fresh = {e: pipeline.plan_chunks(loaded, source, e) for e in replanned(state)}
    if not fresh:
        return stored

    def store(doc: dict[str, Any]) -> None:
        for e, chunks in fresh.items():
            doc[MIGRATION]["entities"][e] = {"chunks": _chunk_docs(chunks), "done": {}}

    state.update(store)
    return state.get(MIGRATION)


def _chunk_docs(chunks: list[Chunk]) -> list[dict[str, Any]]:
    return [{"id": c.id, "spec": c.spec, "rows": c.estimated_rows} for c in chunks]


@logs.for_job
def migrate(loaded: LoadedJob, *, console: Console | None = None, quiet: bool = False, verbose: bool = False) -> MigrationReport:
    job = loaded.job
    state = StateStore(loaded.state_dir).acquire()
    try:
        with quiet_rdkafka(verbose), KafkaConnection(job.kafka) as kafka:
            return run_with(loaded, kafka, state, console, quiet)
    finally:
        state.release()


def run_with(
    loaded: LoadedJob,
    kafka: KafkaConnection,
    state: StateStore,
    console: Console | None,
    quiet: bool,
    explicit: bool = True,
    positions: Positions | None = None,
) -> MigrationReport:
    """Migrate on an open broker connection and state (also the first step of `kanal run`).

    With a durable broker the chunks are shared with the job's other workers
    (`jobs.shared`); `explicit` (a `kanal migrate`) starts a new migration
    even when an earlier one was completed by another worker. `positions`: the
    caller's (`kanal run`, which streams from them next); otherwise a delta
    reader is opened here when the job has `delta:` entities, to fix their
    position before the snapshot.
    """
    started = time.monotonic()
    metrics = Metrics([p.name for p in loaded.sinks])
    view = MigrationView(f"kanal migrate {loaded.name}")
    metrics.set_phase("connecting")
    with (
        ProgressDisplay(metrics, view, console=console, quiet=quiet),
        TELEMETRY.track(loaded.name, "migrate", metrics, lambda: chunks_pending(metrics), kafka),
    ):
        source = pipeline.connect_source(loaded)
        sinks: dict[str, list[Any]] = {}
        context = pipeline.delta_context(loaded)
        own_reader = source.delta(context) if positions is None and context is not None else None
        if own_reader is not None:
            positions = Positions(loaded, state, own_reader)
        try:
            sinks = pipeline.connect_sinks(loaded)
            log.debug("systems reached and targets prepared")
            return _migrate(loaded, kafka, state, metrics, view, explicit, source, sinks, positions, started)
        finally:
            if own_reader is not None:
                own_reader.close()
            pipeline.close_all(source, sinks)


def _migrate(
    loaded: LoadedJob,
    kafka: KafkaConnection,
    state: StateStore,
    metrics: Metrics,
    view: MigrationView,
    explicit: bool,
    source: Source,
    sinks: dict[str, list[Any]],
    positions: Positions | None,
    started: float,
) -> MigrationReport:
    job = loaded.job
    entities = list(loaded.source_entities)
    topics = pipeline.Topics.open(loaded, kafka)
    position, new_position = positions.before_snapshot() if positions is not None else (None, False)
    metrics.set_phase("planning")

    shared = None if job.kafka.embedded else SharedSnapshot(loaded, kafka)
    if shared is None:
        plans, done, doc = _plan(loaded, source, state, new_position)
    else:
        joining = shared.pending() > 0
        again = set() if joining else replanned(state)  # only the entities `kanal reset` marked
        if not joining and not explicit and not again and shared.completed_before():
            # Its chunks are all read, but its sinks may still be writing: wait, so
            # that nothing (a stream's key build) runs on tables still being loaded.
            wait_consumed(loaded, kafka, topics.names, lambda: None)
            log.info("the migration of %s was completed by another worker", job.name)
            state.update(lambda d: d.__setitem__(MIGRATION, {"status": "done", "entities": {}, "finished": time.time()}))
            return MigrationReport(job.name, time.monotonic() - started, 0, metrics)
        plans = {} if joining else {
            e: pipeline.plan_chunks(loaded, source, e) for e in loaded.source_entities if not again or e in again
        }
        done, doc = set(), {"entities": {e: {"done": {}} for e in plans}}
        state.update(lambda d: d.__setitem__(MIGRATION, {"status": "running", "started": time.time(), "entities": {}}))
    log.debug("planned %d chunks (%d done before)", sum(len(c) for c in plans.values()), len(done))
    for e, chunks in plans.items():
        c = metrics.entity(e)
        c.total = sum(ch.estimated_rows or 0 for ch in chunks)
        c.chunks = len(chunks)
        finished = doc["entities"][e].get("done", {})
        c.chunks_done = len(finished)
        c.already = sum(v.get("rows", 0) + v.get("dead", 0) for v in finished.values())
        c.dead = sum(v.get("dead", 0) for v in finished.values())
    todo = [(e, ch) for e in entities for ch in plans.get(e, []) if (e, ch.id) not in done]
    all_done = threading.Event()
    remaining = [len(todo)]
    lock = threading.Lock()

    acked: dict[tuple[str, str], threading.Event] = {}

    def checkpoint(entity: str, chunk: str, rows: int, dead: int) -> None:
        if shared is not None:  # the work topic's commit is the checkpoint
            with lock:
                event = acked.get((entity, chunk))
            if event is not None:
                event.set()
            return
        with lock:
            if not publisher.has_rejected(entity, chunk):
                state.update(lambda d: d[MIGRATION]["entities"][entity]["done"].__setitem__(chunk, {"rows": rows, "dead": dead}))
            metrics.entity(entity).chunks_done += 1
            remaining[0] -= 1
            if remaining[0] <= 0:
                all_done.set()

    receipts = Receipts(pipeline.receipt_parties(loaded), checkpoint)
    attempt = uuid.uuid4().hex
    producer = BoundedProducer(kafka, max_in_flight=job.batch.max_in_flight, **{"compression.type": "none"})
    publisher = pipeline.make_publisher(loaded, producer, receipts, topics, attempt, metrics)
    deliveries = build_deliveries(
        loaded, kafka, sinks, receipts=receipts, dead_letters=publisher.dead_letters, producer=producer,
        topics=topics.names, partitions=topics.partitions, attempt=attempt, metrics=metrics,
    )
    flows = topics.flows(loaded, pipeline.snapshot_versions(loaded, positions.reader if positions else None, position))
    report = MigrationReport(job.name, 0.0, len(done), metrics)
    if done:
        view.title += f" (resuming: {len(done)} chunks already delivered)"
    try:
        for d in deliveries:
            d.start()

        def check_failed() -> None:
            if (err := first_error(deliveries)) is not None:
                raise err
            publisher.raise_send_errors()

        metrics.set_phase("reading")
        if shared is None:
            if not todo:
                all_done.set()
            pipeline.read_chunks(loaded, flows, todo, publisher, deliveries, source)
            log.debug("every chunk read and published")
            metrics.set_phase("delivering")
            pipeline.wait_until(all_done, check_failed)
        else:
            if plans:
                shared.publish_plan(producer, plans)
            _read_shared(loaded, shared, flows, publisher, source, acked, lock, metrics, check_failed)
            metrics.set_phase("delivering")
        wait_consumed(loaded, kafka, topics.names, check_failed)
        for d in deliveries:
            d.stop()
        for d in deliveries:
            d.join()
        if (err := first_error(deliveries)) is not None:
            raise err
        producer.close()
        log.debug("every chunk delivered")
        report.rejected = publisher.rejected
        if not report.rejected:
            metrics.set_phase("building keys")
            report.finish_notes.extend(pipeline.finish_sinks(loaded, sinks, metrics))
            state.update(lambda d: d[MIGRATION].update(status="done", finished=time.time()))
        metrics.set_phase("done" if not report.rejected else "done, with invalid records")
    finally:
        for d in deliveries:
            d.stop()
    report.seconds = time.monotonic() - started
    if report.rejected:
        total = sum(r.count for r in report.rejected)
        first = report.rejected[0]
        raise JobFailed(
            f"{total} invalid record(s) under error policy 'fail' (all valid records were written); "
            f"first: {first.entity} key {first.first_key!r}: {first.first_reason}. "
            "Fix the source and run the same command again: only the affected chunks are re-read."
        )
    return report


def _read_shared(
    loaded: LoadedJob,
    shared: SharedSnapshot,
    flows: dict[str, SourceFlow],
    publisher: Publisher,
    first_source: Source,
    acked: dict[tuple[str, str], threading.Event],
    lock: threading.Lock,
    metrics: Metrics,
    failed: Callable[[], None],
) -> None:
    """Take chunks from the job's work topic until every chunk of the plan is committed, by anyone."""
    local = threading.local()
    opened: list[Source] = []
    retry = loaded.job.errors.retry

    def handle(entity: str, chunk: Chunk) -> None:
        source = getattr(local, "source", None)
        if source is None:
            with lock:  # one source (connection) per reading thread; the first reuses the checked one
                source = local.source = first_source if not opened else make_source(loaded)
                opened.append(source)
        event = threading.Event()
        with lock:
            acked[(entity, chunk.id)] = event
        call_with_retry(lambda: publisher.publish(source, flows[entity], chunk), retry, on_wait=metrics.waiting("source"))
        while not event.wait(0.1):  # the broker acknowledged every record of the chunk
            failed()
        metrics.entity(entity).chunks_done += 1

    try:
        shared.work(handle, loaded.job.batch.source_workers, failed)
    finally:
        for source in opened[1:]:
            source.close()
