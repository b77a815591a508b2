"""`kanal dlq show|replay`: inspect and re-deliver dead letters.

Replay re-validates each dead letter against the canonical model (so records
that were fixed by a changed rule or mapping pass) and writes the valid ones
straight to the sinks of the job (all sinks for records refused at the
source, the refusing sink for records a sink refused). What succeeds leaves
the DLQ; what fails again stays, with its new reason.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from kanal.core.dlq import STAGE_SOURCE
from kanal.core.isolate import write_isolating
from kanal.core.model import entity as canonical
from kanal.core.retry import call_with_retry
from kanal.core.validate import KEY, REASON, conform
from kanal.jobs.load import LoadedJob
from kanal.jobs.runtime import dead_letter_store, make_sink, sink_transform


def show(loaded: LoadedJob, entity: str | None = None) -> list[dict[str, Any]]:
    return [entry for _, entry in dead_letter_store(loaded).read(entity)]


@dataclass(frozen=True)
class ReplayResult:
    replayed: int
    still_failing: int


def replay(loaded: LoadedJob, entity: str | None = None) -> ReplayResult:
    store = dead_letter_store(loaded)
    by_file: dict[Path, list[dict[str, Any]]] = defaultdict(list)
    for path, entry in store.read(entity):
        by_file[path].append(entry)
    replayed = failing = 0
    sinks = {plan.name: (plan, make_sink(plan)) for plan in loaded.sinks}
    try:
        for plan, sink in sinks.values():
            for e, ep in plan.entities.items():
                sink.prepare(e, ep.options)
        for path, entries in by_file.items():
            remaining = _replay_file(loaded, entries, sinks)
            replayed += len(entries) - len(remaining)
            failing += len(remaining)
            store.replace_file(path, remaining)
    finally:
        for _, sink in sinks.values():
            sink.close()
    return ReplayResult(replayed, failing)


def _replay_file(loaded: LoadedJob, entries: list[dict[str, Any]], sinks: dict[str, Any]) -> list[dict[str, Any]]:
    name = entries[0]["entity"]
    model = canonical(name)
    frame = pl.DataFrame([e["record"] for e in entries], infer_schema_length=None)
    checked = conform(frame, model)
    reasons = dict(zip(checked.get_column(KEY).to_list(), checked.get_column(REASON).to_list(), strict=True))
    valid = checked.filter(pl.col(REASON).is_null()).drop(REASON)
    refused: dict[str, str] = {}
    targets = [entries[0]["sink"]] if entries[0]["stage"] != STAGE_SOURCE else list(sinks)
    for sink_name in targets:
        plan, sink = sinks[sink_name]
        if name not in plan.entities or valid.is_empty():
            continue
        ep = plan.entities[name]
        data = sink_transform(ep)(valid)
        result = call_with_retry(
            lambda s=sink, o=ep.options, d=data: write_isolating(lambda f: s.write(name, o, f, "dlq-replay"), d),
            loaded.job.errors.retry,
        )
        if result.failed is not None:
            refused.update(zip(result.failed.get_column(KEY).to_list(), result.failed.get_column("reason").to_list(), strict=True))
    remaining = []
    for entry in entries:
        reason = reasons.get(entry["key"]) or refused.get(entry["key"])
        if reason:
            remaining.append({**entry, "reason": reason})
    return remaining
