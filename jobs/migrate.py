"""`kanal migrate`: snapshot every entity to completion, resumable after any crash.

Order of a run:
1. lock the job's state folder; reach the broker (or start the embedded one),
   the source and every sink, and prepare the targets — before any data moves;
2. plan the chunks of every entity, or resume the stored plan of an
   unfinished migration (chunks already receipted are skipped);
3. start one delivery per sink (consumer + writers), then read the chunks in
   parallel and publish them;
4. a chunk is checkpointed when every sink wrote all of it (`core.receipts`);
5. when every chunk is checkpointed, sinks build what they deferred
   (`finish`), and the migration is marked done.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from kanal.core.connector import Chunk, Sink, Source
from kanal.core.deliver import SinkDelivery, first_error
from kanal.core.errors import JobFailed
from kanal.core.kafka import BoundedProducer, KafkaConnection, quiet_rdkafka
from kanal.core.model import entity as canonical
from kanal.core.progress import Metrics, ProgressDisplay
from kanal.core.publish import Publisher, Rejected, SourceFlow
from kanal.core.receipts import Receipts
from kanal.core.retry import RetryPolicy, call_with_retry
from kanal.core.state import StateStore
from kanal.jobs.load import EntityPlan, LoadedJob
from kanal.jobs.shared import SharedSnapshot
from kanal.jobs.model import ErrorPolicy
from kanal.jobs.runtime import (
    build_deliveries,
    dead_letter_store,
    receipt_parties,
    wait_consumed,
    make_sink,
    make_source,
    snapshot_version,
    source_transform,
)

MIGRATION = "migration"
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


def _plan(loaded: LoadedJob, source: Source, state: StateStore) -> tuple[dict[str, list[Chunk]], set[tuple[str, str]], dict[str, Any]]:
    """Reuse an unfinished migration's plan, or make a new one."""
    stored = state.get(MIGRATION)
    if stored and stored.get("status") == "running" and set(stored["entities"]) == set(loaded.source_entities):
        plans = {e: [Chunk(c["id"], c["spec"], c.get("rows")) for c in v["chunks"]] for e, v in stored["entities"].items()}
        done = {(e, cid) for e, v in stored["entities"].items() for cid in v.get("done", {})}
        return plans, done, stored
    plans = {e: source.plan(e, p.options) for e, p in loaded.source_entities.items()}
    doc = {
        "status": "running",
        "run": uuid.uuid4().hex,
        "started": time.time(),
        "entities": {
            e: {"chunks": [{"id": c.id, "spec": c.spec, "rows": c.estimated_rows} for c in chunks], "done": {}}
            for e, chunks in plans.items()
        },
    }
    state.update(lambda d: d.__setitem__(MIGRATION, doc))
    return plans, set(), doc


def migrate(loaded: LoadedJob, *, console: Console | None = None, quiet: bool = False, verbose: bool = False) -> MigrationReport:
    job = loaded.job
    state = StateStore(loaded.state_dir).acquire()
    try:
        with quiet_rdkafka(verbose), KafkaConnection(job.kafka) as kafka:
            return run_with(loaded, kafka, state, console, quiet)
    finally:
        state.release()


def _connect_all(loaded: LoadedJob) -> tuple[Source, dict[str, list[Sink]]]:
    """Reach every system and prepare targets before anything moves."""
    source = make_source(loaded)
    call_with_retry(source.check, loaded.job.errors.retry)
    return source, connect_sinks(loaded)


def connect_sinks(loaded: LoadedJob, streaming: bool = False) -> dict[str, list[Sink]]:
    """One instance per writer of every sink, checked and with its targets prepared.

    `streaming`: deltas must upsert and delete by key, so a table left in
    bulk-load state (created by a migration that never finished, or just now)
    gets its key first (`finish`), and every instance learns that.
    """
    retry = loaded.job.errors.retry
    sinks: dict[str, list[Sink]] = {}
    for plan in loaded.sinks:
        instances = [make_sink(plan) for _ in range(loaded.job.batch.sink_writers)]
        for sink in instances:
            call_with_retry(sink.check, retry)
        _prepare(instances, plan.entities, retry)
        if streaming:
            for entity, ep in plan.entities.items():
                call_with_retry(lambda e=entity, o=ep.options: instances[0].finish(e, o), retry)
            _prepare(instances, plan.entities, retry)
        sinks[plan.name] = instances
    return sinks


def _prepare(instances: list[Sink], entities: dict[str, EntityPlan], retry: RetryPolicy) -> None:
    for sink in instances:
        for entity, ep in entities.items():
            call_with_retry(lambda s=sink, e=entity, o=ep.options: s.prepare(e, o), retry)


def run_with(
    loaded: LoadedJob, kafka: KafkaConnection, state: StateStore, console: Console | None, quiet: bool, explicit: bool = True
) -> MigrationReport:
    """Migrate on an open broker connection and state (also the first step of `kanal run`).

    With a durable broker the chunks are shared with the job's other workers
    (`jobs.shared`); `explicit` (a `kanal migrate`) starts a new migration
    even when an earlier one was completed by another worker.
    """
    job = loaded.job
    started = time.monotonic()
    source, sinks = _connect_all(loaded)
    log.debug("systems reached and targets prepared")
    entities = list(loaded.source_entities)
    topics = {e: job.kafka.topic(e) for e in entities}
    kafka.ensure_topics(list(topics.values()), compact=True)
    dlq_topic = job.kafka.dlq_topic(job.name)
    kafka.ensure_topics([dlq_topic], compact=False)
    partitions = {e: kafka.partitions_of(t) for e, t in topics.items()}

    shared = None if job.kafka.embedded else SharedSnapshot(loaded, kafka)
    if shared is None:
        plans, done, doc = _plan(loaded, source, state)
    else:
        joining = shared.pending() > 0
        if not joining and not explicit and shared.completed_before():
            log.info("the migration of %s was completed by another worker", job.name)
            source.close()
            state.update(lambda d: d.__setitem__(MIGRATION, {"status": "done", "entities": {}, "finished": time.time()}))
            return MigrationReport(job.name, time.monotonic() - started, 0, Metrics([p.name for p in loaded.sinks]))
        plans = {} if joining else {e: source.plan(e, p.options) for e, p in loaded.source_entities.items()}
        done, doc = set(), {"entities": {e: {"done": {}} for e in plans}}
        state.update(lambda d: d.__setitem__(MIGRATION, {"status": "running", "started": time.time(), "entities": {}}))
    log.debug("planned %d chunks (%d done before)", sum(len(c) for c in plans.values()), len(done))
    metrics = Metrics([p.name for p in loaded.sinks])
    for e, chunks in plans.items():
        c = metrics.entity(e)
        c.total = sum(ch.estimated_rows or 0 for ch in chunks)
        c.chunks = len(chunks)
        finished = doc["entities"][e].get("done", {})
        c.chunks_done = len(finished)
        c.already = sum(v.get("rows", 0) + v.get("dead", 0) for v in finished.values())
        c.dead = sum(v.get("dead", 0) for v in finished.values())
    todo = [(e, ch) for e in entities for ch in plans.get(e, []) if (e, ch.id) not in done]
    use_dlq = job.errors.policy == ErrorPolicy.DLQ
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

    receipts = Receipts(receipt_parties(loaded), checkpoint)
    attempt = uuid.uuid4().hex
    dead_letters = dead_letter_store(loaded)
    producer = BoundedProducer(kafka, max_in_flight=job.batch.max_in_flight, **{"compression.type": "none"})
    publisher = Publisher(
        job=job.name,
        source_name=job.source.connector,
        producer=producer,
        receipts=receipts,
        dead_letters=dead_letters,
        dlq_topic=dlq_topic,
        use_dlq=use_dlq,
        message_rows=job.batch.message_rows,
        attempt=attempt,
        metrics=metrics,
    )
    deliveries = build_deliveries(
        loaded, kafka, sinks, receipts=receipts, dead_letters=dead_letters, producer=producer,
        topics=topics, partitions=partitions, attempt=attempt, metrics=metrics,
    )
    flows = {
        e: SourceFlow(canonical(e), ep.options, source_transform(ep), topics[e], partitions[e], snapshot_version(ep.options))
        for e, ep in loaded.source_entities.items()
    }
    report = MigrationReport(job.name, 0.0, len(done), metrics)
    title = f"kanal migrate {job.name}" + (f" (resuming: {len(done)} chunks already delivered)" if done else "")
    try:
        with ProgressDisplay(metrics, title, console=console, quiet=quiet):
            for d in deliveries:
                d.start()
            def check_failed() -> None:
                if (err := first_error(deliveries)) is not None:
                    raise err
                publisher.raise_send_errors()

            if shared is None:
                if not todo:
                    all_done.set()
                _read_all(loaded, flows, todo, publisher, deliveries, source)
                log.debug("every chunk read and published")
                while not all_done.wait(0.1):
                    check_failed()
            else:
                if plans:
                    shared.publish_plan(producer, plans)
                _read_shared(loaded, shared, flows, publisher, source, acked, lock, metrics, check_failed)
            wait_consumed(loaded, kafka, topics, check_failed)
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
                for plan in loaded.sinks:
                    for e, ep in plan.entities.items():
                        sink = sinks[plan.name][0]
                        note = call_with_retry(lambda s=sink, e=e, o=ep.options: s.finish(e, o), job.errors.retry)
                        if note:
                            report.finish_notes.append(f"{plan.name}: {note}")
                state.update(lambda d: d[MIGRATION].update(status="done", finished=time.time()))
    finally:
        for d in deliveries:
            d.stop()
        source.close()
        for instances in sinks.values():
            for s in instances:
                s.close()
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


def _read_all(
    loaded: LoadedJob,
    flows: dict[str, SourceFlow],
    todo: list[tuple[str, Chunk]],
    publisher: Publisher,
    deliveries: list[SinkDelivery],
    first_source: Source,
) -> None:
    """Read chunks with `source_workers` threads, each with its own source connection."""
    work: queue.Queue[tuple[str, Chunk]] = queue.Queue()
    for item in todo:
        work.put(item)
    errors: list[BaseException] = []
    retry = loaded.job.errors.retry

    def worker(index: int) -> None:
        source = first_source if index == 0 else make_source(loaded)
        try:
            while not errors and first_error(deliveries) is None:
                try:
                    entity, chunk = work.get_nowait()
                except queue.Empty:
                    return
                call_with_retry(lambda: publisher.publish(source, flows[entity], chunk), retry)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
        finally:
            if index:
                source.close()

    workers = min(loaded.job.batch.source_workers, max(1, len(todo)))
    with ThreadPoolExecutor(workers, thread_name_prefix="kanal-source") as pool:
        for f in [pool.submit(worker, i) for i in range(workers)]:
            f.result()
    if errors:
        raise errors[0]


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
        call_with_retry(lambda: publisher.publish(source, flows[entity], chunk), retry)
        while not event.wait(0.1):  # the broker acknowledged every record of the chunk
            failed()
        metrics.entity(entity).chunks_done += 1

    try:
        shared.work(handle, loaded.job.batch.source_workers, failed)
    finally:
        for source in opened[1:]:
            source.close()
