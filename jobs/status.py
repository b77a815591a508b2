"""`kanal status`: what the state store knows about a job, per entity, plus live figures.

Live figures are best-effort: the source's delta status (a CDC slot's
confirmed position and retained WAL) and, with a real broker, each sink's
consumer lag. A system that cannot be reached is reported, not fatal.

Times are ISO 8601 in UTC with a `Z` suffix (`2026-01-02T03:04:05Z`), the
same on every machine and in every output, so they can be compared and
parsed by scripts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from kanal.core.errors import KanalError
from kanal.core.kafka import KafkaConnection
from kanal.core.state import StateStore
from kanal.jobs.load import LoadedJob
from kanal.jobs.pipeline import MIGRATION, STREAM, require_delta
from kanal.jobs.runtime import dead_letter_store, make_source


@dataclass(frozen=True)
class EntityStatus:
    entity: str
    chunks: int
    chunks_done: int
    rows_delivered: int
    dead_letters: int
    changes_delivered: int = 0
    last_write: str | None = None
    """When a stream last wrote a change of the entity (UTC, `utc`)."""
    lag: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class JobStatus:
    job: str
    migration: str  # never run | running | done
    entities: list[EntityStatus]
    stream: dict[str, Any] = field(default_factory=dict)

    def documents(self) -> list[dict[str, Any]]:
        """One JSON-ready document per entity (`kanal status --json`)."""
        return [{"job": self.job, "migration": self.migration, **asdict(e), "stream": self.stream} for e in self.entities]


def utc(epoch: float) -> str:
    """An epoch time as ISO 8601 UTC with a Z suffix, to the second."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(loaded: LoadedJob, live: bool = True) -> JobStatus:
    state = StateStore(loaded.state_dir)
    doc = state.get(MIGRATION) or {"entities": {}}
    stream = state.get(STREAM) or {}
    dlq = dead_letter_store(loaded)
    lags = _lags(loaded) if live else {}
    entities = []
    for name in loaded.source_entities:
        e = doc["entities"].get(name, {"chunks": []})
        done = e.get("done", {})
        delta = stream.get("entities", {}).get(name, {})
        entities.append(
            EntityStatus(
                name, len(e["chunks"]), len(done), sum(v.get("rows", 0) for v in done.values()), dlq.count(name),
                delta.get("changes", 0), utc(delta["last_write"]) if delta.get("last_write") else None,
                lags.get(name, {}),
            )
        )
    summary: dict[str, Any] = {}
    if live and any(p.options.delta is not None for p in loaded.source_entities.values()):
        summary.update(_source_status(loaded, stream.get("position")))
    if stream.get("confirmed_at"):
        summary["confirmed_at"] = utc(stream["confirmed_at"])
    return JobStatus(loaded.name, doc.get("status", "never run"), entities, summary)


def _source_status(loaded: LoadedJob, position: dict[str, Any] | None) -> dict[str, str]:
    """The stored position, described by the source, and the source's own figures (slot, WAL)."""
    source = make_source(loaded)
    try:
        reader = source.delta(require_delta(loaded))
        try:
            described = {"position": reader.describe(position)} if position else {}
            return {**described, **reader.status()}
        finally:
            reader.close()
    except KanalError as exc:
        return {"source": f"unreachable: {exc.message}"}
    finally:
        source.close()


def _lags(loaded: LoadedJob) -> dict[str, dict[str, int]]:
    """entity -> sink -> records not yet consumed (real brokers only: the embedded one lives inside a run)."""
    kafka_settings = loaded.job.kafka
    if kafka_settings.embedded:
        return {}
    lags: dict[str, dict[str, int]] = {}
    try:
        with KafkaConnection(kafka_settings) as kafka:
            for plan in loaded.sinks:
                group = f"{kafka_settings.topic_prefix}.{loaded.name}.{plan.name}"
                for entity in plan.entities:
                    lags.setdefault(entity, {})[plan.name] = kafka.lag(group, kafka_settings.topic(entity))
    except KanalError:
        return {}
    return lags
