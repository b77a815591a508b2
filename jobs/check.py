"""`kanal check`: everything that would stop a run, found before it starts, without writing anything.

Per system: the broker, the source and every sink are reached (each within
the job's `connect_timeout_s`, like a run), and whether the source can
stream as configured. Per entity, the *shape* of the data:

* the source's table, file or endpoint exists, and the columns it yields
  (`Source.fields`) cover what the entity's mapping reads and give every
  required canonical field — otherwise every record would be dead-lettered;
* every sink target takes the columns it would receive (canonical, or its
  sink mapping's output): `Sink.accepts` names a missing table, key or
  NOT NULL column, or a column of an incompatible type.

`--sample N` (`sample`) reads the first N records of each entity and runs
them through the source mapping, validation and each sink mapping — the
steps of a run before any write — and says which would be dead-lettered and
why. It finds what only values show (a text that is no decimal, an enum
value not allowed), which neither `kanal validate` nor the shape checks can.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from kanal.core.changes import conform_changes, keeping_engine_columns
from kanal.core.connector import VERSION, DeltaReader, EntityOptions, Sink, Source
from kanal.core.errors import KanalError
from kanal.core.kafka import KafkaConnection, quiet_rdkafka
from kanal.core.model import entity as canonical
from kanal.core.validate import KEY, REASON, conform
from kanal.jobs.load import EntityPlan, LoadedJob
from kanal.jobs.pipeline import reach, require_delta
from kanal.jobs.runtime import make_sink, make_source, sink_transform, source_transform

_MAPPING_PREFIX = re.compile(r"^mapping \S+: ")


@dataclass(frozen=True)
class CheckResult:
    """One line of the check: a system (and entity) and what was found."""

    system: str
    ok: bool
    detail: str
    entity: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"system": self.system, "entity": self.entity, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class Rejection:
    """A sampled record that a run would dead-letter."""

    entity: str
    key: str | None
    fields: tuple[str, ...]
    reason: str
    stage: str
    """`source` (mapping or validation), or `sink <name>` (its sink mapping)."""

    def as_dict(self) -> dict[str, Any]:
        return {"entity": self.entity, "key": self.key, "fields": list(self.fields), "reason": self.reason, "stage": self.stage}


@dataclass
class SampleResult:
    """What `--sample` found for one entity."""

    entity: str
    read: int = 0
    passed: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    error: str | None = None
    """Reading or mapping failed as a whole (the message says why)."""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.rejected

    def as_dict(self) -> dict[str, Any]:
        return {
            "sample": self.entity, "read": self.read, "passed": self.passed, "ok": self.ok, "error": self.error,
            "rejected": [r.as_dict() for r in self.rejected],
        }  # fmt: skip


@dataclass
class CheckReport:
    results: list[CheckResult] = field(default_factory=list)
    samples: list[SampleResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results) and all(s.ok for s in self.samples)


def check(loaded: LoadedJob, verbose: bool = False, sample: int | None = None) -> CheckReport:
    """Every check of the job; `sample`: also run that many records per entity through mapping and validation."""
    report = CheckReport()
    try:
        with quiet_rdkafka(verbose), KafkaConnection(loaded.job.kafka) as kafka:
            report.results.append(CheckResult("kafka", True, f"reachable at {kafka.bootstrap}"))
    except KanalError as exc:
        report.results.append(CheckResult("kafka", False, exc.message))
    systems(loaded, report, sample)
    return report


def systems(loaded: LoadedJob, report: CheckReport, sample: int | None = None) -> None:
    """Everything but the broker: the source, its deltas and every sink, each entity's shape, the samples."""
    _check_source(loaded, report, sample)
    if any(p.options.delta is not None for p in loaded.source_entities.values()):
        report.results.append(_probe_deltas(loaded))
    for plan in loaded.sinks:
        system = f"sink {plan.name} ({plan.connector.name})"
        sink = make_sink(loaded, plan)
        try:
            reached = _reach(loaded, system, sink)
            report.results.append(reached)
            if reached.ok:
                report.results.extend(_sink_entity(system, sink, ep) for ep in plan.entities.values())
        finally:
            sink.close()


def _reach(loaded: LoadedJob, system: str, connector: Source | Sink | DeltaReader, what: str = "reachable") -> CheckResult:
    try:
        reach(loaded, connector)
        return CheckResult(system, True, what)
    except KanalError as exc:
        return CheckResult(system, False, exc.message)


def _check_source(loaded: LoadedJob, report: CheckReport, sample: int | None) -> None:
    system = f"source ({loaded.job.source.connector})"
    source = make_source(loaded)
    try:
        reached = _reach(loaded, system, source)
        report.results.append(reached)
        if not reached.ok:
            return
        for plan in loaded.source_entities.values():
            report.results.append(_source_entity(system, source, plan))
        if sample:
            report.samples.extend(_sample(loaded, source, plan, sample) for plan in loaded.source_entities.values())
    finally:
        source.close()


def _probe_deltas(loaded: LoadedJob) -> CheckResult:
    """Whether the source can stream as configured (e.g. CDC's wal_level and replica identities)."""
    deltas = [p.options.delta for p in loaded.source_entities.values() if p.options.delta is not None]
    system = f"source deltas ({', '.join(sorted({d if isinstance(d, str) else 'cursor' for d in deltas}))})"
    source = make_source(loaded)
    try:
        reader = source.delta(require_delta(loaded))
        try:
            return _reach(loaded, system, reader, "ready")
        finally:
            reader.close()
    except KanalError as exc:
        return CheckResult(system, False, exc.message)
    finally:
        source.close()


# shapes ---------------------------------------------------------------------


def place(options: EntityOptions) -> str:
    """What the job file set for an entity (its table, file pattern, mapping), for messages."""
    settings = options.model_dump(exclude_unset=True, exclude={"delta"}, by_alias=True)
    return ", ".join(f"{k}: {v}" for k, v in settings.items())


def _line(system: str, plan: EntityPlan, ok: bool, detail: str) -> CheckResult:
    where = place(plan.options)
    return CheckResult(system, ok, f"[{where}] {detail}" if where else detail, plan.entity)


def _source_entity(system: str, source: Source, plan: EntityPlan) -> CheckResult:
    """The source's columns for the entity against what its mapping reads and the canonical fields it needs."""
    try:
        schema = source.fields(plan.entity, plan.options)
        if schema is None:
            return _line(system, plan, True, "columns are known only from rows: run `kanal check --sample 100`")
        mapped = source_transform(plan)(pl.DataFrame(schema=schema))
        conform(mapped, canonical(plan.entity))  # fails on a column no conversion applies to
    except KanalError as exc:
        return _line(system, plan, False, _with_fix(exc.message, plan))
    except pl.exceptions.PolarsError as exc:
        return _line(system, plan, False, f"its columns do not fit the canonical {plan.entity}: {_first_line(exc)}")
    entity = canonical(plan.entity)
    lacking = [f.name for f in entity.fields if f.required and f.name not in mapped.columns]
    if lacking:
        how = f"map them in {plan.mapping}" if plan.mapping else "add a mapping (`mapping: file.yaml`) that sets them"
        return _line(
            system, plan, False,
            f"no column gives the required field(s) {', '.join(lacking)} of {plan.entity} (columns: "
            f"{', '.join(schema) or 'none'}); every record would be dead-lettered: {how}",
        )  # fmt: skip
    unset = [f.name for f in entity.fields if f.name not in mapped.columns]
    note = f"; not given (stay empty): {', '.join(unset)}" if unset else ""
    return _line(system, plan, True, f"columns cover the required fields of {plan.entity}{note}")


def _with_fix(message: str, plan: EntityPlan) -> str:
    if "lacks columns the mapping reads" in message:
        return f"{message}\n  fix: add the column(s) to the source, or change the field(s) in {plan.mapping}"
    return message


def _sink_entity(system: str, sink: Sink, plan: EntityPlan) -> CheckResult:
    """Whether the sink's target takes the columns it would receive (after its sink mapping)."""
    entity = canonical(plan.entity)
    frame = pl.DataFrame(schema={**entity.schema, KEY: pl.String, VERSION: pl.Int64})
    try:
        schema = keeping_engine_columns(sink_transform(plan), frame, "the sink mapping").schema
        problems = sink.accepts(plan.entity, plan.options, schema)
    except KanalError as exc:
        return _line(system, plan, False, exc.message)
    if problems:
        return _line(system, plan, False, "\n  ".join(problems))
    return _line(system, plan, True, "the target takes the columns")


# samples --------------------------------------------------------------------


def _sample(loaded: LoadedJob, source: Source, plan: EntityPlan, rows: int) -> SampleResult:
    """Read `rows` records and run them through the steps of a run before any write."""
    result = SampleResult(plan.entity)
    entity = canonical(plan.entity)
    try:
        frame = source.sample(plan.entity, plan.options, rows).head(rows)
        result.read = frame.height
        if not frame.height:
            return result
        valid, invalid = conform_changes(frame, entity, source_transform(plan))
        result.rejected.extend(_rejections(plan.entity, invalid, "source"))
        for sink in loaded.sinks:
            if plan.entity in sink.entities:
                valid = _sink_mapped(sink.name, sink.entities[plan.entity], valid, result)
    except (KanalError, ValueError, pl.exceptions.PolarsError) as exc:
        result.error = exc.message if isinstance(exc, KanalError) else _first_line(exc)
        return result
    result.passed = valid.height
    return result


def _sink_mapped(name: str, plan: EntityPlan, valid: pl.DataFrame, result: SampleResult) -> pl.DataFrame:
    """The rows of `valid` that `name`'s sink mapping does not reject (those are added to `result`)."""
    if plan.mapping is None or valid.is_empty():
        return valid
    mapped = keeping_engine_columns(sink_transform(plan), valid, "the sink mapping")
    if REASON not in mapped.columns:
        return valid
    bad = mapped.get_column(REASON).is_not_null()
    result.rejected.extend(_rejections(plan.entity, mapped.filter(bad), f"sink {name}"))
    return valid.filter(~bad)


def _rejections(entity: str, invalid: pl.DataFrame, stage: str) -> list[Rejection]:
    keys = invalid.get_column(KEY).to_list() if KEY in invalid.columns else [None] * invalid.height
    reasons = invalid.get_column(REASON).to_list()
    return [Rejection(entity, key, fields_of(reason), reason, stage) for key, reason in zip(keys, reasons, strict=True)]


def fields_of(reason: str) -> tuple[str, ...]:
    """The fields a reason names: each of its parts (joined by "; ") starts with `field:` (after `mapping <file>: `)."""
    names = []
    for part in reason.split("; "):
        name = _MAPPING_PREFIX.sub("", part).split(":", 1)[0].split(" ", 1)[0]
        if name and name not in names:
            names.append(name)
    return tuple(names)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

