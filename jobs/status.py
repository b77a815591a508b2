"""`kanal status`: what the state store knows about a job, per entity."""

from __future__ import annotations

from dataclasses import dataclass

from kanal.core.state import StateStore
from kanal.jobs.load import LoadedJob
from kanal.jobs.migrate import MIGRATION
from kanal.jobs.runtime import dead_letter_store


@dataclass(frozen=True)
class EntityStatus:
    entity: str
    chunks: int
    chunks_done: int
    rows_delivered: int
    dead_letters: int


@dataclass(frozen=True)
class JobStatus:
    job: str
    migration: str  # never run | running | done
    entities: list[EntityStatus]


def status(loaded: LoadedJob) -> JobStatus:
    doc = StateStore(loaded.state_dir).get(MIGRATION)
    dlq = dead_letter_store(loaded)
    if not doc:
        return JobStatus(loaded.name, "never run", [EntityStatus(e, 0, 0, 0, dlq.count(e)) for e in loaded.source_entities])
    entities = []
    for name, e in doc["entities"].items():
        done = e.get("done", {})
        entities.append(
            EntityStatus(name, len(e["chunks"]), len(done), sum(v.get("rows", 0) for v in done.values()), dlq.count(name))
        )
    return JobStatus(loaded.name, doc.get("status", "unknown"), entities)
