"""Loading a job file: YAML, `${ENV}` substitution, validation with exact places.

Every problem is reported as `file:line: path.in.file: problem`, all of them
at once, and never as a traceback. Values of substituted variables are
registered as secrets, so a password that came from the environment can never
be echoed back in an error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kanal.core import registry
from kanal.core.connector import ConnectorSpec, CursorDelta, DeltaKind, EntityOptions
from kanal.core.errors import ConfigError, KanalError, register_secret
from kanal.jobs.model import Job

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class EntityPlan:
    """Typed options of one entity on one side, with its mapping file resolved."""

    entity: str
    options: EntityOptions
    mapping: Path | None


@dataclass(frozen=True)
class SinkPlan:
    name: str
    connector: ConnectorSpec
    config: BaseModel
    entities: dict[str, EntityPlan]


@dataclass(frozen=True)
class LoadedJob:
    """A validated job with its connectors resolved and configs typed."""

    path: Path
    job: Job
    source: ConnectorSpec
    source_config: BaseModel
    source_entities: dict[str, EntityPlan]
    sinks: list[SinkPlan]

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def state_dir(self) -> Path:
        base = os.environ.get("KANAL_STATE_DIR") or self.job.state_dir
        root = Path(base) if base else self.path.parent / ".kanal"
        if not root.is_absolute():
            root = self.path.parent / root
        return root / self.job.name


def _lines(node: yaml.Node, loc: Loc = ()) -> dict[Loc, int]:
    """Map each path in the document to its 1-based line."""
    found = {loc: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            found.update(_lines(value, (*loc, key.value)))
            found[(*loc, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            found.update(_lines(value, (*loc, i)))
    return found


class _Reporter:
    def __init__(self, path: Path, lines: dict[Loc, int]) -> None:
        self.path, self.lines, self.problems = path, lines, []  # type: ignore[var-annotated]

    def add(self, loc: Loc, message: str) -> None:
        probe = loc
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe, 1)
        where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[") or "(top)"
        self.problems.append(f"{self.path.name}:{line}: {where}: {message}")

    def pydantic(self, base: Loc, exc: ValidationError) -> None:
        for err in exc.errors():
            loc = (*base, *err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required key is missing"
            self.add(loc, msg)


def _substitute(value: Any, loc: Loc, report: _Reporter) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, (*loc, k), report) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*loc, i), report) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def env(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            register_secret(os.environ[name])
            return os.environ[name]
        if default is not None:
            return default
        report.add(loc, f"environment variable {name} is not set")
        return ""

    return _ENV.sub(env, value)


def load_job(path: str | Path) -> LoadedJob:
    """Read, substitute and validate a job file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read job file {path}: {exc.strerror}") from None
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path.name}{where}: invalid YAML: {problem}") from None
    if not isinstance(raw, dict) or node is None:
        raise ConfigError(f"{path.name}: a job file must be a YAML mapping (name, kafka, source, sinks, ...)")
    report = _Reporter(path, _lines(node))
    data = _substitute(raw, (), report)
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        report.pydantic((), exc)
        raise ConfigError(f"invalid job file {path}", report.problems) from None
    loaded = _resolve(path, job, report)
    if report.problems:
        raise ConfigError(f"invalid job file {path}", report.problems)
    assert loaded is not None
    return loaded


def _typed(model: type[BaseModel], data: dict[str, Any], loc: Loc, report: _Reporter) -> BaseModel | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        report.pydantic(loc, exc)
        return None


def _delta_kind(delta: object) -> DeltaKind:
    return DeltaKind.CURSOR if isinstance(delta, CursorDelta) else DeltaKind(delta or "none")


def _entities(
    side: Loc, specs: dict[str, Any], spec: ConnectorSpec, options_model: type[EntityOptions], base: Path, report: _Reporter
) -> dict[str, EntityPlan]:
    """Typed options per entity, held to what the connector declares it can do.

    A connector's capabilities are binding: an entity it does not offer, or a
    delta kind it cannot read, is a job-file error here, not a traceback in
    the middle of a migration.
    """
    plans = {}
    declared = spec.capabilities
    for entity, options in specs.items():
        loc = (*side, "entities", entity)
        if entity not in declared.entities:
            report.add(loc, f"connector {spec.name!r} does not handle {entity} (it handles: {', '.join(declared.entities)})")
            continue
        typed = _typed(options_model, options, loc, report)
        if typed is None:
            continue
        assert isinstance(typed, EntityOptions)
        kind = _delta_kind(typed.delta)
        if kind is not DeltaKind.NONE and kind not in declared.delta:
            offered = [k.value for k in declared.delta if k is not DeltaKind.NONE]
            report.add(
                (*loc, "delta"),
                f"connector {spec.name!r} cannot read delta: {kind.value}"
                + (f" (it reads: {', '.join(offered)})" if offered else " (it reads no deltas)"),
            )
        mapping = None
        if typed.mapping:
            mapping = (base / typed.mapping).resolve()
            if not mapping.is_file():
                report.add((*side, "entities", entity, "mapping"), f"mapping file {typed.mapping} not found")
        plans[entity] = EntityPlan(entity, typed, mapping)
    return plans


def _connector(name: str, loc: Loc, report: _Reporter, role: str) -> ConnectorSpec | None:
    try:
        spec = registry.get(name)
    except KanalError as exc:
        report.add((*loc, "connector"), exc.message)
        return None
    if getattr(spec, role) is None:
        report.add((*loc, "connector"), f"connector {name!r} has no {role}")
        return None
    return spec


def _resolve(path: Path, job: Job, report: _Reporter) -> LoadedJob | None:
    base = path.parent
    source = _connector(job.source.connector, ("source",), report, "source")
    source_config = source_entities = None
    if source and source.source:
        source_config = _typed(source.config, job.source.config, ("source", "config"), report)
        source_entities = _entities(("source",), job.source.entities, source, source.source.entity_options, base, report)
    sinks = []
    for i, sink in enumerate(job.sinks):
        spec = _connector(sink.connector, ("sinks", i), report, "sink")
        if spec is None or spec.sink is None:
            continue
        config = _typed(spec.config, sink.config, ("sinks", i, "config"), report)
        entities = _entities(("sinks", i), sink.entities, spec, spec.sink.entity_options, base, report)
        if config is not None:
            sinks.append(SinkPlan(sink.name, spec, config, entities))
    if report.problems or source is None or source_config is None or source_entities is None:
        return None
    return LoadedJob(path.resolve(), job, source, source_config, source_entities, sinks)
