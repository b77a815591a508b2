"""`kanal dlq show|replay|export|purge`: inspect, re-deliver, save and drop dead letters.

Replay re-validates each dead letter against the canonical model (so records
that were fixed by a changed rule or mapping pass) and writes the valid ones
straight to the sinks of the job (all sinks for records refused at the
source, the refusing sink for records a sink refused). What succeeds leaves
the DLQ; what fails again stays, with its new reason.

A record is replayed as the version it was (`_kanal_version`, `_kanal_op`
are kept in the dead letter), so a target that meanwhile holds a newer
version keeps it: the replayed record is skipped as older, and leaves the
DLQ, since the newer version already stands in for it. Replays write
within the sinks' declared limits, like a delivery.

Export writes the dead letters `show` lists to a file, JSON Lines or CSV by
its extension; purge drops them from the local store, under the job's state
lock (so never while a run of the job adds some). Neither touches the DLQ
topic, whose messages stay until the broker's retention removes them.
"""

from __future__ import annotations

import csv
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from kanal.core.changes import conform_changes, identity, keeping_engine_columns
from kanal.core.connector import Sink
from kanal.core.deliver import SinkLimits, describe_target, write_changed
from kanal.core.dlq import STAGE_SOURCE
from kanal.core.errors import ConfigError
from kanal.core.model import entity as canonical
from kanal.core.state import StateStore
from kanal.core.validate import KEY, REASON
from kanal.jobs.load import LoadedJob, SinkPlan
from kanal.jobs.reset import require_entity
from kanal.jobs.runtime import dead_letter_store, make_sink, sink_transform, write_guard


def show(loaded: LoadedJob, entity: str | None = None) -> list[dict[str, Any]]:
    return dead_letter_store(loaded).letters(entity)


EXPORT_FORMATS = (".jsonl", ".ndjson", ".csv")
_COLUMNS = ("entity", "key", "stage", "sink", "reason")


def export(loaded: LoadedJob, path: Path, entity: str | None = None) -> int:
    """Write the dead letters to `path` (JSON Lines: one entry per line, as `show --json`; CSV: one column per
    record field after entity, key, stage, sink, reason; nested values as JSON). Returns how many."""
    if path.suffix.lower() not in EXPORT_FORMATS:
        raise ConfigError(f"{path}: export writes {', '.join(EXPORT_FORMATS)} files; name the file with one of them")
    letters = show(loaded, entity)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        if path.suffix.lower() == ".csv":
            _write_csv(fh, letters)
        else:
            for letter in letters:
                fh.write(orjson.dumps(letter, default=str).decode() + "\n")
    tmp.replace(path)
    return len(letters)


def _write_csv(fh: Any, letters: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(f for letter in letters for f in (letter.get("record") or {})))
    writer = csv.writer(fh)
    writer.writerow([*_COLUMNS, *fields])
    for letter in letters:
        record = letter.get("record") or {}
        writer.writerow([*(letter.get(c) for c in _COLUMNS), *(_cell(record.get(f)) for f in fields)])


def _cell(value: Any) -> Any:
    return orjson.dumps(value, default=str).decode() if isinstance(value, dict | list) else value


def purge(loaded: LoadedJob, entity: str | None = None) -> int:
    """Drop the job's dead letters (of `entity`, or all); returns how many. Refuses while the job runs."""
    if entity is not None:
        require_entity(loaded, entity)
    state = StateStore(loaded.state_dir).acquire()
    try:
        store = dead_letter_store(loaded)
        count = store.count(entity)
        for path in store.files(entity):
            store.replace_file(path, [])
        return count
    finally:
        state.release()


@dataclass(frozen=True)
class ReplayResult:
    replayed: int
    still_failing: int


@dataclass(frozen=True)
class _Target:
    plan: SinkPlan
    sink: Sink
    limits: SinkLimits


def replay(loaded: LoadedJob, entity: str | None = None) -> ReplayResult:
    store = dead_letter_store(loaded)
    by_file: dict[Path, list[dict[str, Any]]] = defaultdict(list)
    for path, entry in store.read(entity):
        by_file[path].append(entry)
    replayed = failing = 0
    targets = {
        plan.name: _Target(plan, make_sink(loaded, plan), SinkLimits(plan.connector.capabilities)) for plan in loaded.sinks
    }
    run = uuid.uuid4().hex[:12]  # a sink naming its output by batch id must not overwrite an earlier replay's
    try:
        for target in targets.values():
            for e, ep in target.plan.entities.items():
                target.sink.prepare(e, ep.options)
        for path, entries in by_file.items():
            remaining = _replay_file(loaded, entries, targets, f"dlq-replay-{run}-{path.parent.name}-{path.stem}")
            replayed += len(entries) - len(remaining)
            failing += len(remaining)
            store.replace_file(path, remaining)
    finally:
        for target in targets.values():
            target.sink.close()
    return ReplayResult(replayed, failing)


def _replay_file(
    loaded: LoadedJob, entries: list[dict[str, Any]], targets: dict[str, _Target], batch_id: str
) -> list[dict[str, Any]]:
    name = entries[0]["entity"]
    frame = pl.DataFrame([e["record"] for e in entries], infer_schema_length=None)
    valid, invalid = conform_changes(frame, canonical(name), identity)
    reasons = dict(zip(invalid.get_column(KEY).to_list(), invalid.get_column(REASON).to_list(), strict=True))
    refused: dict[str, str] = {}
    names = [entries[0]["sink"]] if entries[0]["stage"] != STAGE_SOURCE else list(targets)
    for sink_name in names:
        target = targets[sink_name]
        if name not in target.plan.entities or valid.is_empty():
            continue
        ep = target.plan.entities[name]
        result, _ = write_changed(
            target.sink, name, ep.options, keeping_engine_columns(sink_transform(ep), valid, "the sink mapping"),
            batch_id, memory=write_guard(loaded, target.plan), limits=target.limits,
            target=describe_target(sink_name, name, ep.options), retry=loaded.job.errors.retry, cancel=threading.Event(),
        )  # fmt: skip
        if result.failed is not None:
            refused.update(zip(result.failed.get_column(KEY).to_list(), result.failed.get_column("reason").to_list(), strict=True))
    remaining = []
    for entry in entries:
        reason = reasons.get(entry["key"]) or refused.get(entry["key"])
        if reason:
            remaining.append({**entry, "reason": reason})
    return remaining
