"""Loading a job file: YAML, `${VAR}` substitution, validation with exact places.

Every problem is reported as `file:line: path.in.file: problem`, all of them
at once (mapping files included), and never as a traceback. A problem is
reported where it is: a sink entity the source does not provide points at
that sink's entity line, an unknown key says which key was probably meant.

`${VAR}` takes its value from the environment, else from a `.env` file
beside the job file (the environment wins); `${VAR:-default}` falls back to
`default`; `$${` is a literal `${`. Substituted values are not secret by
themselves: the values of secret settings (passwords, tokens, keys, DSN
passwords; see `kanal.core.errors.register_secrets`) are, wherever they
came from, and are never echoed back in a message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import BaseModel, ValidationError

from kanal.core import registry
from kanal.core.connector import ConnectorSpec, CursorDelta, DeltaKind, EntityOptions
from kanal.core.errors import ConfigError, register_secrets
from kanal.core.model import AVAILABILITY, ENTITIES, STOCK_LEVEL
from kanal.core.places import Loc, Problems, did_you_mean, read_yaml
from kanal.jobs.model import Job, SinkSpec, SourceSpec
from kanal.mappings import load_mapping

DERIVED = (STOCK_LEVEL.name, AVAILABILITY.name)
"""What `kanal inventory` publishes from a job's stock movements: its sinks may take them too."""
_ENV = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ENV_FILE = ".env"


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
    lines: dict[Loc, int] = field(default_factory=dict, repr=False, compare=False)

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

    def place(self, *loc: str | int) -> str:
        """`job.yaml:9: source.entities.products`, for messages about a setting found wrong while running."""
        return Problems(self.path.name, self.lines).locate(loc)

    @contextmanager
    def at(self, entity: str, sink: str | None = None) -> Iterator[None]:
        """A setting found wrong while running is reported at its place in the job file.

        A connector raises ConfigError when the system refuses an entity's
        settings (a missing table, a `where:` PostgreSQL cannot parse); inside
        this block the message gets the entity's place on the source, or on
        the sink named `sink`: `job.yaml:9: source.entities.products: ...`.
        """
        try:
            yield
        except ConfigError as exc:
            index = next((i for i, s in enumerate(self.sinks) if s.name == sink), None)
            loc = ("source", "entities", entity) if index is None else ("sinks", index, "entities", entity)
            raise ConfigError(f"{self.place(*loc)}: {exc.message}") from None


def load_job(path: str | Path) -> LoadedJob:
    """Read, substitute and validate a job file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read job file {path}: {exc.strerror}") from None
    raw, lines = read_yaml(text, path.name)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path.name}: a job file must be a YAML mapping (name, kafka, source, sinks, ...)")
    found = Problems(path.name, lines)
    data = _substitute(raw, (), _environment(path, found), found)
    register_secrets(data)
    try:
        job: Job | None = Job.model_validate(data)
    except ValidationError as exc:
        found.pydantic((), Job, data, exc)
        job = None
    source, sinks = (job.source, list(enumerate(job.sinks))) if job else _parts(data)
    loaded = _resolve(path, job, source, sinks, found)
    if found or loaded is None:
        raise ConfigError(f"invalid job file {path}", found.problems)
    return loaded


def _environment(path: Path, found: Problems) -> Mapping[str, str]:
    """The variables `${VAR}` can name: the process environment over the `.env` file beside the job file."""
    env_file = path.parent / ENV_FILE
    if not env_file.is_file():
        return os.environ
    try:
        values = dotenv_values(env_file, interpolate=False)
    except (OSError, UnicodeDecodeError) as exc:
        found.extend([f"{env_file}: cannot read: {exc}"])
        return os.environ
    return {**{k: v for k, v in values.items() if v is not None}, **os.environ}


def _substitute(value: Any, loc: Loc, env: Mapping[str, str], found: Problems) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, (*loc, k), env, found) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*loc, i), env, found) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def variable(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name is None:  # `$${`: a literal `${`
            return "${"
        if name in env:
            return env[name]
        if default is not None:
            return default
        found.add(loc, f"environment variable {name} is not set (nor in {ENV_FILE} beside the job file)")
        return ""

    return _ENV.sub(variable, value)


def _parts(data: dict[str, Any]) -> tuple[SourceSpec | None, list[tuple[int, SinkSpec]]]:
    """The source and sinks that are valid on their own when the job as a whole is not.

    Their connector settings are then still checked, so one run of `kanal
    validate` shows every problem; their own errors are already reported.
    """

    def valid(model: type[BaseModel], value: Any) -> Any:
        try:
            return model.model_validate(value)
        except ValidationError:
            return None

    source = valid(SourceSpec, data.get("source"))
    sinks = data.get("sinks") if isinstance(data.get("sinks"), list) else []
    return source, [(i, s) for i, s in enumerate(valid(SinkSpec, v) for v in sinks) if s is not None]


def _typed(model: type[BaseModel], data: dict[str, Any], loc: Loc, found: Problems) -> BaseModel | None:
    try:
        typed = model.model_validate(data)
    except ValidationError as exc:
        found.pydantic(loc, model, data, exc)
        return None
    register_secrets(typed)
    return typed


def _delta_kind(delta: object) -> DeltaKind:
    return DeltaKind.CURSOR if isinstance(delta, CursorDelta) else DeltaKind(delta or "none")


def _known_entities(side: Loc, entities: dict[str, Any], found: Problems) -> dict[str, Any]:
    known = {}
    for entity, options in entities.items():
        if entity in ENTITIES:
            known[entity] = options
        else:
            hint = did_you_mean(entity, ENTITIES)
            found.add((*side, "entities", entity), f"unknown entity {entity!r} (known: {', '.join(ENTITIES)}){hint}")
    return known


def _entities(
    side: Loc, specs: dict[str, Any], spec: ConnectorSpec, options_model: type[EntityOptions], base: Path,
    found: Problems,
) -> dict[str, EntityPlan]:
    """Typed options per entity, held to what the connector declares it can do.

    A connector's capabilities are binding: an entity it does not offer, or a
    delta kind it cannot read, is a job-file error here, not a traceback in
    the middle of a migration. Mapping files are read and checked here too.
    """
    plans = {}
    declared = spec.capabilities
    for entity, options in specs.items():
        loc = (*side, "entities", entity)
        if entity not in declared.entities:
            found.add(loc, f"connector {spec.name!r} does not handle {entity} (it handles: {', '.join(declared.entities)})")
            continue
        typed = _typed(options_model, options, loc, found)
        if typed is None:
            continue
        assert isinstance(typed, EntityOptions)
        kind = _delta_kind(typed.delta)
        if kind is not DeltaKind.NONE and kind not in declared.delta:
            offered = [k.value for k in declared.delta if k is not DeltaKind.NONE]
            found.add(
                (*loc, "delta"),
                f"connector {spec.name!r} cannot read delta: {kind.value}"
                + (f" (it reads: {', '.join(offered)})" if offered else " (it reads no deltas)"),
            )
        plans[entity] = EntityPlan(entity, typed, _mapping(typed.mapping, base, (*loc, "mapping"), found))
    return plans


def _mapping(name: str | None, base: Path, loc: Loc, found: Problems) -> Path | None:
    """The mapping file's path, after checking its content: its problems are the job's problems."""
    if not name:
        return None
    path = base / name
    if not path.is_file():
        found.add(loc, f"mapping file {name} not found (relative to the job file's folder)")
    else:
        try:
            load_mapping(path)
        except ConfigError as exc:
            found.extend(exc.problems or [exc.message])
    return path.resolve()


def _connector(name: str, loc: Loc, found: Problems, role: str) -> ConnectorSpec | None:
    try:
        spec = registry.get(name)
    except ConfigError as exc:
        found.add((*loc, "connector"), exc.message)
        return None
    if getattr(spec, role) is None:
        found.add((*loc, "connector"), f"connector {name!r} has no {role}")
        return None
    return spec


def _sink_names(sinks: list[tuple[int, SinkSpec]], found: Problems) -> None:
    seen: dict[str, int] = {}
    for i, sink in sinks:
        if sink.name in seen:
            found.add(("sinks", i, "name"), f"sink name {sink.name!r} is already used by sinks[{seen[sink.name]}]; "
                                            "sink names must be unique")
        seen.setdefault(sink.name, i)


def _resolve(
    path: Path, job: Job | None, source_spec: SourceSpec | None, sink_specs: list[tuple[int, SinkSpec]],
    found: Problems,
) -> LoadedJob | None:
    """The typed job, or None when a problem was found (all of them are in `found`)."""
    base = path.parent
    _sink_names(sink_specs, found)
    source = source_config = source_entities = None
    provided: set[str] | None = None
    if source_spec is not None:
        wanted = _known_entities(("source",), source_spec.entities, found)
        provided = set(wanted) | (set(DERIVED) if job is not None and job.inventory is not None else set())
        source = _connector(source_spec.connector, ("source",), found, "source")
        if source and source.source:
            source_config = _typed(source.config, source_spec.config, ("source", "config"), found)
            source_entities = _entities(("source",), wanted, source, source.source.entity_options, base, found)
    sinks = []
    for i, sink in sink_specs:
        wanted = _known_entities(("sinks", i), sink.entities, found)
        for entity in wanted if provided is not None else ():
            if entity not in provided:
                found.add(("sinks", i, "entities", entity),
                          f"sink {sink.name!r} wants {entity!r}, which the source does not provide "
                          f"(source entities: {', '.join(sorted(provided))})")
        spec = _connector(sink.connector, ("sinks", i), found, "sink")
        if spec is None or spec.sink is None:
            continue
        config = _typed(spec.config, sink.config, ("sinks", i, "config"), found)
        entities = _entities(("sinks", i), wanted, spec, spec.sink.entity_options, base, found)
        if config is not None:
            sinks.append(SinkPlan(sink.name, spec, config, entities))
    if found or job is None or source is None or source_config is None or source_entities is None:
        return None
    return LoadedJob(path.resolve(), job, source, source_config, source_entities, sinks, found.lines)
