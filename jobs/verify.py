"""`kanal verify JOB`: compare what the source holds with what each sink holds, per entity and key; repair the drift.

A migration and a stream keep sinks exact, but targets are not Kanal's
alone: someone deletes a row by hand, a script edits a price, a restore
brings back rows the source deleted long ago. `verify` finds that drift
without trusting any bookkeeping: it reads the entity from the source
(mapping and validation as a run applies them; records a run would
dead-letter are not expected anywhere) and from every sink that takes it
(`Sink.read_back`), and compares key sets and a digest of the fields both
sides hold. Stock levels and availability of a job with `inventory:` come
from its ledgers (`kanal inventory`) instead of the source.

Per (sink, entity) the report lists keys that are *missing* (in the source,
not in the sink), *extra* (in the sink only) and *different* (both, other
content). `repair` writes exactly those keys through the normal sink path
(`core.deliver.write_changed`: declared limits, retries, isolation of a
refused record): the source's record for missing and different keys, a
delete for extra ones. They carry the newest version the sink holds of the
entity: not older than anything there, so the version check lets them
through. The sinks are read before the source, so any change made after
the sinks were read has a later source position than that version: a
change the stream delivers meanwhile still wins, and one made between the
two reads is in the source's record already. Then it verifies again.

Fields are compared by meaning, not spelling: both sides pass through the
canonical conversion (`core.validate.conform`), decimals lose trailing
zeros, JSON objects are compared decoded, times in UTC.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from kanal.core.changes import conform_changes
from kanal.core.connector import DELETE, OP, UPSERT, VERSION, Sink
from kanal.core.deliver import SinkLimits, describe_target, write_changed
from kanal.core.errors import ConfigError
from kanal.core.inventory import Ledger
from kanal.core.model import Entity, Kind
from kanal.core.model import entity as canonical
from kanal.core.validate import KEY, REASON, conform
from kanal.jobs.inventory import DERIVED, canonical_records, ledger_path
from kanal.jobs.load import LoadedJob, SinkPlan
from kanal.jobs.pipeline import close_all, connect_source, plan_chunks, reach
from kanal.jobs.runtime import make_sink, source_transform

_DIGEST = "_kanal_digest"
KEYS_IN_JSON = 10_000
"""At most this many keys per kind in the JSON report (the counts are always complete)."""


@dataclass
class Drift:
    """What one sink holds of one entity, against the source."""

    sink: str
    entity: str
    source_rows: int = 0
    sink_rows: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    note: str | None = None
    """Why the entity was not compared (the sink cannot read back), or what a repair could not do."""

    @property
    def drifted(self) -> bool:
        return bool(self.missing or self.extra or self.different)

    def as_dict(self) -> dict[str, Any]:
        kinds = {k: {"count": len(v), "keys": v[:KEYS_IN_JSON]} for k, v in
                 (("missing", self.missing), ("extra", self.extra), ("different", self.different))}  # fmt: skip
        return {"sink": self.sink, "entity": self.entity, "source_rows": self.source_rows, "sink_rows": self.sink_rows,
                "drift": self.drifted, **kinds, "note": self.note}  # fmt: skip


@dataclass
class VerifyReport:
    job: str
    drifts: list[Drift] = field(default_factory=list)
    repaired: list[Drift] | None = None
    """With `repair`: the drift found first (and written), `drifts` being the check after the repair."""

    @property
    def drifted(self) -> bool:
        return any(d.drifted for d in self.drifts)

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"command": "verify", "job": self.job, "drift": self.drifted,
                               "entities": [d.as_dict() for d in self.drifts]}  # fmt: skip
        if self.repaired is not None:
            doc["repaired"] = [d.as_dict() for d in self.repaired]
        doc["exit_status"] = 1 if self.drifted else 0
        return doc


@dataclass
class _Compared:
    drift: Drift
    source: pl.DataFrame
    held: pl.DataFrame


def verify(loaded: LoadedJob, entity: str | None = None, *, repair: bool = False) -> VerifyReport:
    """Compare every sink entity of the job (or `entity`) with its source; `repair` writes the drift, then checks again."""
    entities = _entities(loaded, entity)
    report = VerifyReport(loaded.name)
    compared = _compare_all(loaded, entities)
    if not repair:
        report.drifts = [c.drift for c in compared]
        return report
    report.repaired = [c.drift for c in compared]
    _repair(loaded, [c for c in compared if c.drift.drifted])
    report.drifts = [c.drift for c in _compare_all(loaded, entities)]
    return report


def _entities(loaded: LoadedJob, only: str | None) -> list[str]:
    """The entities some sink takes, in the source's order, then the ledger's; `only` must be one of them."""
    wanted = {e for plan in loaded.sinks for e in plan.entities}
    ordered = [e for e in dict.fromkeys((*loaded.source_entities, *DERIVED)) if e in wanted]
    ordered += sorted(wanted - set(ordered))
    if only is None:
        return ordered
    if only not in ordered:
        raise ConfigError(f"{loaded.path}: no sink of job {loaded.name} takes {only!r} (they take: {', '.join(ordered)})")
    return [only]


def _from_ledger(loaded: LoadedJob, entity: str) -> bool:
    """Stock levels and availability of a job with `inventory:` are what its ledgers say (`kanal inventory`)."""
    return entity in DERIVED and loaded.job.inventory is not None


def _compare_all(loaded: LoadedJob, entities: list[str]) -> list[_Compared]:
    results = []
    source = connect_source(loaded) if any(not _from_ledger(loaded, e) for e in entities) else None
    try:
        for name in entities:
            # the sinks first: a change made after they were read is newer than all they hold, so a
            # repair (which carries their newest version) can never overwrite it with older content
            held = [(plan, _read_back(loaded, plan, name)) for plan in loaded.sinks if name in plan.entities]
            expected = _ledger_records(loaded, name) if _from_ledger(loaded, name) else _source_records(loaded, source, name)
            results += [_compare(plan, name, expected, raw) for plan, raw in held]
    finally:
        close_all(source, {})
    return results


def _source_records(loaded: LoadedJob, source: Any, name: str) -> pl.DataFrame:
    """Every record of `name` as a run would publish it: mapped and valid (the invalid ones are dead letters)."""
    if name not in loaded.source_entities:
        raise ConfigError(f"{loaded.path}: the source of job {loaded.name} does not read {name!r}; nothing to compare with")
    plan = loaded.source_entities[name]
    model, transform = canonical(name), source_transform(plan)
    frames = []
    for chunk in plan_chunks(loaded, source, name):
        for frame in source.snapshot(name, plan.options, chunk):
            valid, _ = conform_changes(frame, model, transform)
            frames.append(valid)
    empty = pl.DataFrame(schema={**model.schema, KEY: pl.String})
    return pl.concat([empty, *frames], how="diagonal_relaxed").select(empty.columns)


def _ledger_records(loaded: LoadedJob, name: str) -> pl.DataFrame:
    """Every stock level or availability row of the job's ledgers (one per partition), as canonical records."""
    model = canonical(name)
    frames = []
    rules = loaded.job.inventory
    paths = sorted((loaded.state_dir / "inventory").glob("ledger-p*.sqlite"))
    if not paths:
        raise ConfigError(
            f"{loaded.path}: job {loaded.name} has no inventory ledger yet to compare {name} with; "
            f"run `kanal inventory {loaded.path.name}` first"
        )
    for path in paths:
        partition = int(path.stem.removeprefix("ledger-p"))
        with Ledger(ledger_path(loaded, partition), rules) as ledger:
            changes = ledger.changes_since(0)
        rows = changes.levels if name == DERIVED[0] else changes.availability
        frames.append(canonical_records(model, rows).drop(OP, VERSION))
    empty = pl.DataFrame(schema={**model.schema, KEY: pl.String})
    return pl.concat([empty, *frames], how="diagonal_relaxed").select(empty.columns)


def _read_back(loaded: LoadedJob, plan: SinkPlan, name: str) -> pl.DataFrame | str:
    """What the sink holds of `name`, or why it is not compared."""
    ep = plan.entities[name]
    if ep.mapping:
        return "not compared: the sink maps the records (sink mappings are not compared)"
    sink = make_sink(loaded, plan)
    try:
        reach(loaded, sink)
        with loaded.at(name, sink=plan.name):
            raw = sink.read_back(name, ep.options)
    finally:
        sink.close()
    return f"not compared: the {plan.connector.name} sink cannot read back what it holds" if raw is None else raw


def _compare(plan: SinkPlan, name: str, expected: pl.DataFrame, raw: pl.DataFrame | str) -> _Compared:
    model = canonical(name)
    drift = Drift(plan.name, name, source_rows=expected.height)
    if isinstance(raw, str):
        drift.note = raw
        return _Compared(drift, expected, pl.DataFrame(schema={KEY: pl.String, VERSION: pl.Int64}))
    columns = [f for f in model.field_names if f in raw.columns]
    held = conform(raw, model).drop(REASON).with_columns(raw.get_column(VERSION).cast(pl.Int64).alias(VERSION))
    drift.sink_rows = held.height
    ours = expected.select(KEY, _digest(expected, model, columns, expected))
    theirs = held.select(KEY, _digest(held, model, columns, expected))
    twice = theirs.filter(pl.col(KEY).is_duplicated())  # a key held twice differs, whatever its rows hold
    both = ours.join(theirs.unique(KEY), on=KEY, how="full", coalesce=True, suffix="_sink")
    drift.missing = _keys(both.filter(pl.col(f"{_DIGEST}_sink").is_null()))
    drift.extra = _keys(both.filter(pl.col(_DIGEST).is_null()))
    different = both.filter((pl.col(_DIGEST) != pl.col(f"{_DIGEST}_sink")) | pl.col(KEY).is_in(twice.get_column(KEY)))
    drift.different = _keys(different.filter(pl.col(_DIGEST).is_not_null()))
    return _Compared(drift, expected, held)


def _keys(frame: pl.DataFrame) -> list[str]:
    return frame.get_column(KEY).sort().to_list()


def _digest(frame: pl.DataFrame, model: Entity, columns: list[str], reference: pl.DataFrame) -> pl.Expr:
    """One string per record of the `columns` both sides hold, equal when the values mean the same."""
    parts = [_comparable(frame, model, c, reference).fill_null("\x00") for c in columns]
    if not parts:
        return pl.lit("").alias(_DIGEST)
    return pl.concat_str(parts, separator="\x1f").alias(_DIGEST)


def _comparable(frame: pl.DataFrame, model: Entity, name: str, reference: pl.DataFrame) -> pl.Expr:
    col = pl.col(name)
    kind = model.field(name).kind
    if kind == Kind.DECIMAL:
        return col.str.replace(r"^\+", "").str.replace(r"(\.\d*?)0+$", "${1}").str.replace(r"\.$", "")
    if kind == Kind.DATETIME:
        return col.dt.to_string("%Y-%m-%dT%H:%M:%S%.6f")
    if kind == Kind.ADDRESSES:
        return col.struct.json_encode()
    if kind == Kind.JSON:
        return _json_text(frame, name, reference)
    return col.cast(pl.String)


def _json_text(frame: pl.DataFrame, name: str, reference: pl.DataFrame) -> pl.Expr:
    """JSON objects re-encoded with one shape (the source's), so spacing and key order do not count."""
    try:
        values = pl.concat([reference.get_column(name), frame.get_column(name)]).drop_nulls()
        dtype = values.str.json_decode(infer_schema_length=None).dtype if values.len() else None
    except pl.exceptions.PolarsError:
        dtype = None
    if dtype is None:
        return pl.col(name).str.replace_all(r"\s", "")
    return pl.col(name).str.json_decode(dtype).struct.json_encode() if isinstance(dtype, pl.Struct) else pl.col(name)


def _repair(loaded: LoadedJob, compared: list[_Compared]) -> None:
    """Write the drifted keys of each (sink, entity): source records for missing and different ones, deletes for extras."""
    run = uuid.uuid4().hex[:12]
    for item in compared:
        drift = item.drift
        plan = next(p for p in loaded.sinks if p.name == drift.sink)
        frame = _repair_frame(item, plan)
        if frame.is_empty():
            continue
        sink = make_sink(loaded, plan)
        try:
            reach(loaded, sink)
            _write_repair(loaded, plan, sink, drift, frame, f"verify-repair-{run}")
        finally:
            sink.close()


def _repair_frame(item: _Compared, plan: SinkPlan) -> pl.DataFrame:
    drift, model = item.drift, canonical(item.drift.entity)
    newest = item.held.get_column(VERSION).max()
    rewrite = item.source.filter(pl.col(KEY).is_in([*drift.missing, *drift.different])).with_columns(
        pl.lit(UPSERT).alias(OP), pl.lit(newest, pl.Int64).alias(VERSION)
    )
    frames = [rewrite]
    if drift.extra:
        if plan.connector.capabilities.supports_deletes:
            gone = item.held.filter(pl.col(KEY).is_in(drift.extra))
            frames.append(gone.select(*model.key, KEY, pl.lit(DELETE).alias(OP), pl.lit(newest, pl.Int64).alias(VERSION)))
        else:
            drift.note = f"extra keys stay: the {plan.connector.name} sink applies no deletes"
    return pl.concat(frames, how="diagonal_relaxed")


def _write_repair(loaded: LoadedJob, plan: SinkPlan, sink: Sink, drift: Drift, frame: pl.DataFrame, batch_id: str) -> None:
    """The normal sink path, without a sink memory's "already sent" filter: drift means that memory is wrong."""
    ep = plan.entities[drift.entity]
    with loaded.at(drift.entity, sink=plan.name):
        sink.prepare(drift.entity, ep.options)
    result, _ = write_changed(
        sink, drift.entity, ep.options, frame, batch_id, memory=None, limits=SinkLimits(plan.connector.capabilities),
        target=describe_target(plan.name, drift.entity, ep.options), retry=loaded.job.errors.retry,
        cancel=threading.Event(),
    )  # fmt: skip
    with loaded.at(drift.entity, sink=plan.name):
        sink.finish(drift.entity, ep.options)  # a table the repair created gets its key (duplicates removed)
    if result.failed is not None and not result.failed.is_empty():
        first = result.failed.row(0, named=True)
        drift.note = f"{result.failed.height} record(s) refused by the sink; first: key {first[KEY]!r}: {first['reason']}"
