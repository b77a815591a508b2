"""Dead letters: records that could not be delivered, with the reason.

Every dead letter is written twice: to the DLQ topic `<prefix>.dlq.<job>`
(value = the canonical record as JSON, headers naming entity, key, reason,
stage and sink) for systems that watch Kafka, and to a local store under the
job's state folder, because the embedded broker forgets everything when the
command ends and `kanal dlq show` must still work afterwards.

Local files are named by where the records came from (`<entity>/<stage>-<tag>`)
and replaced whole, so re-processing a chunk after a crash replaces its dead
letters instead of repeating them. Tags of deltas and merged batches are
unique to the run that made them, so a later run never replaces them; a
record read or delivered again after a crash is set aside again under the new
run's tag, and `letters` counts copies of one record version once.

The record keeps the engine columns `_kanal_op` and `_kanal_version` next to
its canonical fields: a replay writes it as the version it was, so a target
that meanwhile holds a newer one refuses it like any older record.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import polars as pl
from confluent_kafka import KafkaError

from kanal.core.changes import SOURCE
from kanal.core.connector import OP, TRUNCATE, VERSION
from kanal.core.errors import BrokerUnavailable
from kanal.core.kafka import BoundedProducer
from kanal.core.validate import KEY, REASON
from kanal.core.wire import H_ENTITY, H_JOB

STAGE_SOURCE = "source"
STAGE_SINK = "sink"


_STORE_LOCK = threading.Lock()
"""Writers of one process replace and prune dead-letter files under this lock, so no update is lost."""


def _safe(tag: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)


def letters_frame(rows: pl.DataFrame, entity: str, stage: str, sink: str | None, fields: tuple[str, ...]) -> pl.DataFrame:
    """Shape rejected rows (with `_kanal_key`, `_kanal_reason`) as dead-letter entries.

    The record holds the canonical `fields` and the engine columns the rows
    have (what a replay writes). `raw` is the record as the stage that set it
    aside read it, before its mapping: the source row (`SOURCE`, at the
    source), or the canonical record a sink took from Kafka.
    """
    present = [f for f in (*fields, OP, VERSION) if f in rows.columns]
    raw = pl.col(SOURCE) if SOURCE in rows.columns else pl.struct([f for f in fields if f in rows.columns])
    return rows.select(
        pl.lit(entity).alias("entity"),
        pl.col(KEY).alias("key"),
        pl.col(REASON).alias("reason"),
        pl.lit(stage).alias("stage"),
        pl.lit(sink, pl.String).alias("sink"),
        pl.struct(present).alias("record"),
        raw.alias("raw"),
    )


class DeadLetterStore:
    """The local half of the DLQ (see module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def put(self, entity: str, stage: str, tag: str, letters: pl.DataFrame) -> None:
        """Replace the dead letters of (entity, stage, tag) with `letters`."""
        with _STORE_LOCK:
            self._put(entity, stage, tag, letters)

    def _put(self, entity: str, stage: str, tag: str, letters: pl.DataFrame) -> None:
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

    def letters(self, entity: str | None = None) -> list[dict[str, Any]]:
        """Each dead letter once: copies of one (entity, stage, sink, key, version) are one, the last read stands."""
        unique: dict[tuple[Any, ...], dict[str, Any]] = {}
        for _, entry in self.read(entity):
            version = (entry.get("record") or {}).get(VERSION)
            unique[(entry["entity"], entry["stage"], entry["sink"], entry["key"], version)] = entry
        return list(unique.values())

    def count(self, entity: str | None = None) -> int:
        return len(self.letters(entity))

    def supersede(self, entity: str, written: pl.DataFrame, sink: str) -> int:
        """Drop dead letters that a later write made obsolete; returns how many.

        `written` holds `KEY` and `VERSION` (and `OP`) of the records `sink` just
        accepted. A dead letter of the same key with an older version — set
        aside by this sink, or at the source — must never be replayed: the
        record was changed or deleted since, and a delete leaves nothing in the
        target for a version check to compare with. A letter this sink set
        aside goes at an equal version too: the changes of one transaction
        share its commit version, and a sink takes each key's changes in
        order, so a write it accepts after the letter is the later change.
        (A source letter is set aside before any sink writes, so an equal
        version says nothing about order there.) A truncate makes every older
        letter of the entity obsolete.
        """
        files = self.files(entity)
        if not files or VERSION not in written.columns or written.is_empty():
            return 0
        truncate = written.filter(pl.col(OP) == TRUNCATE) if OP in written.columns else written.clear()
        floor = truncate.get_column(VERSION).max() if not truncate.is_empty() else None
        newest = dict(written.group_by(KEY).agg(pl.col(VERSION).max()).iter_rows())

        def obsolete(entry: dict[str, Any]) -> bool:
            if entry.get("stage") != STAGE_SOURCE and entry.get("sink") != sink:
                return False
            version = (entry.get("record") or {}).get(VERSION)
            later = max((v for v in (newest.get(entry["key"]), floor) if v is not None), default=None)
            if later is None or version is None:
                return later is not None
            return version <= later if entry.get("stage") != STAGE_SOURCE else version < later

        dropped = 0
        with _STORE_LOCK:
            for path in files:
                try:
                    entries = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
                except FileNotFoundError:
                    continue
                kept = [e for e in entries if not obsolete(e)]
                if len(kept) < len(entries):
                    dropped += len(entries) - len(kept)
                    self.replace_file(path, kept)
        return dropped

    def replace_file(self, path: Path, entries: list[dict[str, Any]]) -> None:
        """Rewrite one file with the entries that remain (after a replay)."""
        if not entries:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
        os.replace(tmp, path)


def publish_dead_letters(
    producer: BoundedProducer, topic: str, letters: pl.DataFrame, job: str, cancel: threading.Event | None = None
) -> None:
    """One DLQ message per dead letter (value = the JSON entry, error details in headers), acknowledged.

    Returns when the broker acknowledged every one; a refused message raises
    BrokerUnavailable (retried like any broker outage, or failing the run),
    so that a dead letter never vanishes while the records after it are
    confirmed. `cancel` (the run is failing anyway) stops the wait.
    """
    acks = _Acks(letters.height)
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
        producer.send(topic, line.encode(), key=str(key).encode(), headers=headers, on_ack=acks)
    acks.wait(topic, cancel)


class _Acks:
    """Delivery reports of a lot of dead letters (called on the producer's poll thread)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = 0
        self.error: KafkaError | None = None
        self._all = threading.Event()
        if not expected:
            self._all.set()

    def __call__(self, err: KafkaError | None) -> None:
        if err is not None and self.error is None:
            self.error = err
        self.received += 1
        if self.received == self.expected:
            self._all.set()

    def wait(self, topic: str, cancel: threading.Event | None) -> None:
        while not self._all.wait(0.1):
            if cancel is not None and cancel.is_set():
                raise BrokerUnavailable("kafka", f"{topic}: the run stopped before the broker acknowledged its dead letters")
        if self.error is not None:
            raise BrokerUnavailable("kafka", f"{topic}: the broker refused a dead letter: {self.error.str()}")
