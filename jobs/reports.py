"""Run reports as JSON documents (`--json` of migrate, run, sync and validate).

One document per command, on stdout, for scripts and CI; progress and
messages stay on stderr. Every document has `command`, `exit_status` (the
process's exit code) and `ok`; a run adds `job`, `seconds` and per-entity
counts per sink, a stream its `position`. A command that fails still prints
one, with `error` (and `problems` for a job-file error), so a script never has
to parse human text. The keys are a stable interface: new ones may be added,
existing ones keep their meaning.

Per entity: `read` (records read from the source by this run), `already`
(delivered by an earlier, interrupted run of the same migration), `dead`
(set aside at the source: invalid records) and per sink `written`,
`unchanged` (not sent: the system already holds them), `older` (skipped:
the target holds a newer version) and `refused` (the sink refused them:
dead letters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kanal.core.errors import ConfigError, KanalError
from kanal.core.progress import Metrics
from kanal.jobs.load import LoadedJob
from kanal.jobs.migrate import MigrationReport
from kanal.jobs.stream import StreamReport


def entities(metrics: Metrics | None, names: list[str] | None = None) -> dict[str, Any]:
    """Counts per entity and sink; `names`: entities listed even when nothing of them moved (zeros)."""
    if metrics is None:
        return {}
    for name in names or []:
        metrics.entity(name)
    return {
        name: {
            "read": c.read,
            "already": c.already,
            "dead": c.dead,
            "sinks": {
                sink: {
                    "written": c.written[sink],
                    "unchanged": c.unchanged[sink],
                    "older": c.skipped[sink],
                    "refused": c.failed[sink],
                }
                for sink in metrics.sinks
            },
        }
        for name, c in sorted(metrics.entities.items())
    }


def migration(report: MigrationReport) -> dict[str, Any]:
    return {
        "job": report.job,
        "seconds": round(report.seconds, 3),
        "resumed_chunks": report.resumed_chunks,
        "entities": entities(report.metrics),
        "notes": list(report.finish_notes),
    }


def finished(command: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"command": command, "ok": True, "exit_status": 0, **body}


def migrate_document(report: MigrationReport) -> dict[str, Any]:
    return finished("migrate", migration(report))


def stream_document(command: str, report: StreamReport, names: list[str]) -> dict[str, Any]:
    """A stream's document; `names`: the job's entities, each listed (a quiet entity with zeros)."""
    return finished(command, {
        "job": report.job,
        "schedule": report.schedule,
        "seconds": round(report.seconds, 3),
        "reads": report.reads,
        "changes": report.changes,
        "position": report.position,
        "entities": entities(report.metrics, names),
        "migration": migration(report.migrated) if report.migrated is not None else None,
    })  # fmt: skip


def validate_document(loaded: LoadedJob) -> dict[str, Any]:
    return finished("validate", {
        "job": loaded.name,
        "file": str(loaded.path),
        "source": {"connector": loaded.job.source.connector, "entities": list(loaded.source_entities)},
        "sinks": [{"name": s.name, "connector": s.connector.name, "entities": list(s.entities)} for s in loaded.sinks],
    })  # fmt: skip


def failed(command: str, job_file: str | None, exc: BaseException, exit_status: int) -> dict[str, Any]:
    """The document of a command that ended with an error (messages are already redacted)."""
    doc: dict[str, Any] = {"command": command, "ok": False, "exit_status": exit_status}
    if job_file is not None:
        doc["file"] = str(Path(job_file))
    if isinstance(exc, KanalError):
        problems = exc.problems if isinstance(exc, ConfigError) else []
        doc["error"] = exc.message.split("\n", 1)[0] if problems else exc.message
        if problems:
            doc["problems"] = problems
    else:
        doc["error"] = "interrupted"
    return doc
