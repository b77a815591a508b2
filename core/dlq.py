"""Dead letters: records that could not be delivered, with the reason.

Every dead letter is written twice: to the DLQ topic `<prefix>.dlq.<job>`
(value = the canonical record as JSON, headers naming entity, key, reason,
stage and sink) for systems that watch Kafka, and to a local store under the
job's state folder, because the embedded broker forgets everything when the
command ends and `kanal dlq show` must still work afterwards.

Local files are named by where the records came from (`<entity>/<stage>-<tag>`)
and replaced whole, so re-processing a chunk after a crash replaces its dead
letters instead of repeating them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from kanal.core.kafka import BoundedProducer
from kanal.core.wire import H_ENTITY, H_JOB

from kanal.core.validate import KEY, REASON

STAGE_SOURCE = "source"
STAGE_SINK = "sink"


def _safe(tag: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)


def letters_frame(rows: pl.DataFrame, entity: str, stage: str, sink: str | None, fields: tuple[str, ...]) -> pl.DataFrame:
    """Shape rejected rows (with `_kanal_key`, `_kanal_reason`) as dead-letter entries."""
    present = [f for f in fields if f in rows.columns]
    return rows.select(
        pl.lit(entity).alias("entity"),
        pl.col(KEY).alias("key"),
        pl.col(REASON).alias("reason"),
        pl.lit(stage).alias("stage"),
        pl.lit(sink, pl.String).alias("sink"),
        pl.struct(present).alias("record"),
    )


class DeadLetterStore:
    """The local half of the DLQ (see module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def put(self, entity: str, stage: str, tag: str, letters: pl.DataFrame) -> None:
        """Replace the dead letters of (entity, stage, tag) with `letters`."""
        path = self.folder / entity / f"{stage}-{_safe(tag)}.jsonl"
        if letters.is_empty():
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            letters.write_ndjson(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def files(self, entity: str | None = None) -> list[Path]:
        if not self.folder.exists():
            return []
        pattern = f"{entity}/*.jsonl" if entity else "*/*.jsonl"
        return sorted(self.folder.glob(pattern))

    def read(self, entity: str | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
        for path in self.files(entity):
            with open(path, "rb") as fh:
                for line in fh:
                    if line.strip():
                        yield path, orjson.loads(line)

    def count(self, entity: str | None = None) -> int:
        return sum(1 for _ in self.read(entity))

    def replace_file(self, path: Path, entries: list[dict[str, Any]]) -> None:
        """Rewrite one file with the entries that remain (after a replay)."""
        if not entries:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
        os.replace(tmp, path)


def publish_dead_letters(producer: BoundedProducer, topic: str, letters: pl.DataFrame, job: str) -> None:
    """One DLQ message per dead letter: value = the JSON entry, error details in headers."""
    lines = letters.write_ndjson().splitlines()
    for line, row in zip(lines, letters.select("entity", "key", "reason", "stage", "sink").iter_rows(), strict=True):
        entity, key, reason, stage, sink = row
        headers = [
            ("kanal.error.reason", str(reason).encode()),
            ("kanal.error.stage", stage.encode()),
            (H_ENTITY, entity.encode()),
            (H_JOB, job.encode()),
        ]
        if sink:
            headers.append(("kanal.error.sink", sink.encode()))
        producer.send(topic, line.encode(), key=str(key).encode(), headers=headers, on_ack=lambda err: None)
