"""What `migrate`, `sync` and `run` share: connect, fix positions, plan, read, deliver, finish.

Both runners call this module, so the rules that make the guarantees hold
are written once and no command can skip them:

* **Position before snapshot.** A job with `delta:` entities has one stream
  position in its state. Whichever command starts a snapshot fixes it first
  (`Positions.before_snapshot`), and a stream starts from it
  (`Positions.for_stream`). A stream that finds a migration but no position
  refuses, naming the fix, instead of starting from "now" and silently
  skipping what changed in between.
* **Snapshot rows carry the position.** Their version is the one the delta
  reader says a snapshot at that position has (`DeltaReader.snapshot_version`),
  so a fresh snapshot after `kanal cleanup` wins over rows streamed earlier,
  and changes after the position win over the snapshot.
* **One consistent snapshot.** An uninterrupted migration's chunks are read in
  one snapshot of the source when the source can share one
  (`Source.export_snapshot`), so a row an UPDATE moves between chunks is read
  exactly once.
* **Keys are built only when every record is written** (`finish_sinks`), never
  while another worker is still loading.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import polars as pl

from kanal.core import logs
from kanal.core.connector import Chunk, DeltaContext, DeltaReader, Sink, Source
from kanal.core.deadline import deadline
from kanal.core.deliver import SinkDelivery, first_error
from kanal.core.errors import ConfigError, Unreachable
from kanal.core.kafka import BoundedProducer, KafkaConnection
from kanal.core.model import entity as canonical
from kanal.core.progress import Metrics
from kanal.core.publish import Publisher, SourceFlow
from kanal.core.receipts import BROKER, Receipts
from kanal.core.retry import RetryPolicy, call_with_retry
from kanal.core.state import StateStore
from kanal.jobs.load import LoadedJob, SinkPlan
from kanal.jobs.model import ErrorPolicy
from kanal.jobs.runtime import dead_letter_store, make_sink, make_source, source_transform

MIGRATION = "migration"
STREAM = "stream"
log = logging.getLogger("kanal.pipeline")


# connect --------------------------------------------------------------------


def reach(loaded: LoadedJob, connector: Source | Sink | DeltaReader) -> None:
    """First contact with a system at start (`check`): retried within the job's `connect_timeout_s` only.

    A wrong host or a port nobody answers then fails in seconds with the
    system's own message, the time waited and the option to raise, instead
    of after the whole retry budget (`core.deadline`).
    """
    seconds = loaded.job.connect_timeout_s
    with deadline(seconds):
        try:
            call_with_retry(connector.check, loaded.job.errors.retry)
        except Unreachable as exc:
            detail = exc.message.removeprefix(f"{exc.system}: ")
            raise type(exc)(
                exc.system,
                f"not reachable within {seconds:g}s ({detail}); check its address in the job file and that it "
                "is running, or raise `connect_timeout_s`",
            ) from None


def connect_source(loaded: LoadedJob) -> Source:
    source = make_source(loaded)
    try:
        reach(loaded, source)
    except BaseException:
        source.close()
        raise
    return source


def connect_sinks(loaded: LoadedJob, streaming: bool = False) -> dict[str, list[Sink]]:
    """One instance per writer of every sink, checked and with its targets prepared.

    `streaming`: deltas must upsert and delete by key, so a table left in
    bulk-load state gets its key first (`finish`), and every instance learns
    that. Callers make sure no migration is still loading (`refuse_unfinished`).
    """
    retry = loaded.job.errors.retry
    sinks: dict[str, list[Sink]] = {}
    for plan in loaded.sinks:
        instances = [make_sink(loaded, plan) for _ in range(loaded.job.batch.sink_writers)]
        for sink in instances:
            reach(loaded, sink)
        _prepare(loaded, instances, plan, retry)
        if streaming:
            for entity, ep in plan.entities.items():
                call_with_retry(lambda e=entity, o=ep.options: instances[0].finish(e, o), retry)
            _prepare(loaded, instances, plan, retry)
        sinks[plan.name] = instances
    return sinks


def _prepare(loaded: LoadedJob, instances: list[Sink], plan: SinkPlan, retry: RetryPolicy) -> None:
    for sink in instances:
        for entity, ep in plan.entities.items():
            with loaded.at(entity, sink=plan.name):
                call_with_retry(lambda s=sink, e=entity, o=ep.options: s.prepare(e, o), retry)


def plan_chunks(loaded: LoadedJob, source: Source, entity: str) -> list[Chunk]:
    """The snapshot chunks of `entity`; settings the source refuses are reported at the entity's place."""
    with loaded.at(entity):
        return source.plan(entity, loaded.source_entities[entity].options)


def close_all(source: Source | None, sinks: dict[str, list[Sink]]) -> None:
    if source is not None:
        source.close()
    for instances in sinks.values():
        for sink in instances:
            sink.close()


# positions ------------------------------------------------------------------


def delta_context(loaded: LoadedJob) -> DeltaContext | None:
    """The entities that stream, or None when the job has no `delta:` at all."""
    entities = {e: p.options for e, p in loaded.source_entities.items() if p.options.delta is not None}
    return DeltaContext(loaded.name, entities) if entities else None


def require_delta(loaded: LoadedJob) -> DeltaContext:
    context = delta_context(loaded)
    if context is None:
        raise ConfigError(
            f"{loaded.path}: no entity of the source has `delta:`; add e.g. `delta: cdc` or "
            "`delta: {cursor: updated_at}` to the source entities that should stream"
        )
    return context


class Positions:
    """The job's stream position in its state: fixed before any snapshot, resumed by every stream."""

    def __init__(self, loaded: LoadedJob, state: StateStore, reader: DeltaReader) -> None:
        self.loaded, self.state, self.reader = loaded, state, reader
        self._fixed: dict[str, Any] | None = None
        """The position this process fixed itself: a source that just created what
        holds it (a CDC slot) can vouch for it, not for positions stored earlier."""

    def stored(self) -> dict[str, Any] | None:
        return (self.state.get(STREAM) or {}).get("position")

    def _store(self, position: dict[str, Any]) -> None:
        self.state.update(lambda d: d.__setitem__(STREAM, {"position": position, "since": time.time()}))

    def before_snapshot(self) -> tuple[dict[str, Any], bool]:
        """The position a snapshot starts at, and whether it is new.

        A stored position that can still be read is kept: the changes since it
        (deletes among them) must still be streamed, and the overlap with the
        snapshot is harmless. One that cannot (the slot was dropped, `kanal
        cleanup`) is replaced by the current one; a resumed migration must then
        start over, because its earlier chunks are older than the new position.
        """
        current = call_with_retry(self.reader.start, self.loaded.job.errors.retry)
        stored = self.stored()
        if stored is not None and self.reader.resumable(stored):
            return stored, False
        self._store(current)
        self._fixed = current
        log.debug("delta position fixed before the snapshot: %s", self.reader.describe(current))
        return current, True

    def for_stream(self) -> dict[str, Any]:
        """The position a stream starts at; refuses when the changes since the migration cannot be found."""
        current = call_with_retry(self.reader.start, self.loaded.job.errors.retry)
        stored = self.stored()
        name = self.loaded.path.name
        if stored is not None:
            if stored != self._fixed and not self.reader.resumable(stored):
                raise ConfigError(
                    f"{self.loaded.path}: the source no longer holds this job's stream position "
                    f"({self.reader.describe(stored)}; was the replication slot dropped?), so the "
                    f"changes since then cannot be read. Run `kanal cleanup {name}` and "
                    f"`kanal run {name}` to migrate again"
                )
            return stored
        if self.state.get(MIGRATION) is not None:
            raise ConfigError(
                f"{self.loaded.path}: this job was migrated without a stream position (its entities had no "
                f"`delta:` then, or the state was made by an older Kanal), so the changes made since the migration "
                f"cannot be found. Run `kanal migrate {name}` again: it fixes the position before its snapshot "
                f"(rewriting unchanged rows is harmless); then `kanal sync {name}`"
            )
        self._store(current)
        return current

    def confirmed(self, position: dict[str, Any], delivered: dict[str, dict[str, float]]) -> None:
        """Store a confirmed position with the per-entity counts delivered since the last one."""

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


def snapshot_versions(
    loaded: LoadedJob, reader: DeltaReader | None, position: dict[str, Any] | None
) -> dict[str, pl.Expr | None]:
    """Per entity, the version its snapshot rows carry (see `DeltaReader.snapshot_version`)."""
    versions: dict[str, pl.Expr | None] = {}
    for entity, plan in loaded.source_entities.items():
        streams = reader is not None and position is not None and plan.options.delta is not None
        versions[entity] = reader.snapshot_version(entity, position) if streams else None  # type: ignore[union-attr,arg-type]
    return versions


def refuse_unfinished(loaded: LoadedJob, state: StateStore, migrating_elsewhere: bool) -> None:
    """A stream must not start while a migration of the job is still loading.

    Its sinks would build keys on tables another run is still bulk-loading,
    and the chunks not yet read would never arrive.
    """
    name = loaded.path.name
    if migrating_elsewhere:
        raise ConfigError(
            f"{loaded.path}: another worker is migrating this job right now; start this worker with "
            f"`kanal run {name}`, which joins the migration and then streams"
        )
    if (state.get(MIGRATION) or {}).get("status") == "running":
        raise ConfigError(
            f"{loaded.path}: the migration of this job is unfinished; `kanal migrate {name}` resumes it "
            f"(or `kanal run {name}`, which resumes it and then streams)"
        )


# transport ------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    """The job's entity topics (created compacted), their partition counts and its dead-letter topic."""

    names: dict[str, str]
    partitions: dict[str, int]
    dlq: str

    @classmethod
    def open(cls, loaded: LoadedJob, kafka: KafkaConnection) -> Topics:
        job = loaded.job
        wanted = [*loaded.source_entities, *(e for plan in loaded.sinks for e in plan.entities)]
        names = {e: job.kafka.topic(e) for e in wanted}  # a sink may take what `kanal inventory` derives
        kafka.ensure_topics(list(names.values()), compact=True)
        dlq = job.kafka.dlq_topic(job.name)
        kafka.ensure_topics([dlq], compact=False)
        return cls(names, {e: kafka.partitions_of(t) for e, t in names.items()}, dlq)

    def flows(self, loaded: LoadedJob, versions: dict[str, pl.Expr | None] | None = None, deltas_only: bool = False) -> dict[str, SourceFlow]:
        return {
            e: SourceFlow(
                canonical(e), ep.options, source_transform(ep), self.names[e], self.partitions[e], (versions or {}).get(e)
            )
            for e, ep in loaded.source_entities.items()
            if not deltas_only or ep.options.delta is not None
        }


def receipt_parties(loaded: LoadedJob) -> dict[str, list[str]]:
    """Per entity, who must confirm a chunk or a read of it.

    Embedded broker (memory only): every sink that takes the entity. A durable
    broker: the broker itself, whose acks outlive this process.
    """
    if not loaded.job.kafka.embedded:
        return {e: [BROKER] for e in loaded.source_entities}
    return {e: [p.name for p in loaded.sinks if e in p.entities] for e in loaded.source_entities}


def make_publisher(
    loaded: LoadedJob, producer: BoundedProducer, receipts: Receipts, topics: Topics, attempt: str, metrics: Metrics
) -> Publisher:
    job = loaded.job
    return Publisher(
        job=job.name,
        source_name=job.source.connector,
        producer=producer,
        receipts=receipts,
        dead_letters=dead_letter_store(loaded),
        dlq_topic=topics.dlq,
        use_dlq=job.errors.policy == ErrorPolicy.DLQ,
        message_rows=job.batch.message_rows,
        attempt=attempt,
        metrics=metrics,
    )


# read -----------------------------------------------------------------------


def read_chunks(
    loaded: LoadedJob,
    flows: dict[str, SourceFlow],
    todo: list[tuple[str, Chunk]],
    publisher: Publisher,
    deliveries: list[SinkDelivery],
    first_source: Source,
) -> None:
    """Read chunks with `source_workers` threads, each with its own source connection.

    All readers share one snapshot of the source when it can export one, so
    concurrent writes cannot move a row between two chunks read at different
    moments.
    """
    work: queue.Queue[tuple[str, Chunk]] = queue.Queue()
    for item in todo:
        work.put(item)
    errors: list[BaseException] = []
    retry = loaded.job.errors.retry
    waits = publisher.metrics.waiting("source")
    token = call_with_retry(first_source.export_snapshot, retry, on_wait=waits) if todo else None

    def worker(index: int) -> None:
        source = first_source if index == 0 else make_source(loaded)
        try:
            if index and token is not None:
                call_with_retry(lambda: source.join_snapshot(token), retry, on_wait=waits)
            while not errors and first_error(deliveries) is None:
                try:
                    entity, chunk = work.get_nowait()
                except queue.Empty:
                    return
                call_with_retry(lambda: publisher.publish(source, flows[entity], chunk), retry, on_wait=waits)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
        finally:
            if index:
                source.close()

    workers = min(loaded.job.batch.source_workers, max(1, len(todo)))
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="kanal-source") as pool:
            for f in [pool.submit(logs.in_context(worker), i) for i in range(workers)]:  # their logs name the job
                f.result()
    finally:
        if token is not None:
            first_source.release_snapshot()
    if errors:
        raise errors[0]


# finish ---------------------------------------------------------------------


def finish_sinks(loaded: LoadedJob, sinks: dict[str, list[Sink]], metrics: Metrics | None = None) -> list[str]:
    """Every record of the migration is written: sinks build what they deferred (keys); `metrics` shows the waits."""
    notes = []
    for plan in loaded.sinks:
        sink = sinks[plan.name][0]
        waits = metrics.waiting(plan.name) if metrics is not None else None
        for e, ep in plan.entities.items():
            note = call_with_retry(lambda s=sink, e=e, o=ep.options: s.finish(e, o), loaded.job.errors.retry, on_wait=waits)
            if note:
                notes.append(f"{plan.name}: {note}")
    return notes


def wait_until(done: threading.Event, failed: Callable[[], None]) -> None:
    """Wait for `done`, raising as soon as `failed` does."""
    while not done.wait(0.1):
        failed()
