"""The two connector contracts (source, sink) and how a connector declares itself.

A connector package exposes one `ConnectorSpec` (registered under the entry
point group `kanal.connectors`) naming its config model and its source and/or
sink class. Everything a connector can do is *declared* in `Capabilities`;
the engine never guesses.

Lifecycles, all driven by the engine (connectors never persist state, never
talk to Kafka, never decide when something counts as delivered):

Source::

    src = SourceCls(config)          # config: the connector's frozen pydantic model
    src.check()                      # reach the system; raise a ConnectorError
    src.fields(entity, opts)         # `kanal check`: the columns a snapshot yields, without reading rows
    src.sample(entity, opts, n)      # `kanal check --sample`: the first n rows
    src.discover()                   # entities offered, with keys and delta kind
    chunks = src.plan(entity, opts)  # split a snapshot into resumable chunks
    for frame in src.snapshot(entity, opts, chunk): ...
    src.close()

Deltas (sources whose capabilities list a delta kind)::

    reader = src.delta(context)      # a DeltaReader for the entities with `delta:`
    start = reader.start()           # position *before* a snapshot (gap-free handover)
    changes = reader.read(position)  # changes after `position`, bounded; empty when caught up
    reader.confirm(position)         # the engine delivered everything up to `position`
    reader.close()
    src.cleanup(context)             # drop what `start` created (slot, publication)

Sink::

    sink = SinkCls(config)
    sink.check()
    sink.accepts(entity, opts, schema)  # `kanal check`: what would stop writes of that schema (no writes)
    sink.prepare(entity, opts)       # create a missing table, learn the target
    result = sink.write(entity, opts, frame, batch_id)  # idempotent, version-checked
    sink.finish(entity, opts)        # after a migration: build deferred indexes
    sink.read_back(entity, opts)     # `kanal verify`: what the target holds (None: cannot tell)
    sink.close()

`opts` is the connector's per-entity options model (`entity_options`), parsed
from the job file's `entities:` block, so connectors get typed settings too.
Frames handed to sinks carry canonical columns (see `core.model`) plus
`_kanal_key`, the stable key string, and — for deltas — `_kanal_op` and
`_kanal_version` (see `OP`, `VERSION`). A sink that declares
`supports_deletes` applies delete and truncate rows; per key, rows arrive in
source order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from kanal.core.sinkmemory import SinkMemory


Transform = Callable[[pl.DataFrame], pl.DataFrame]
"""A pure frame-to-frame function (a compiled mapping, or identity)."""

OP = "_kanal_op"
"""Engine column of change frames: `upsert`, `delete` or `truncate` (and `before`, from sources only)."""
UPSERT, DELETE = "upsert", "delete"
TRUNCATE = "truncate"
"""Every record of the entity with an older version is gone (the table was
emptied); the row's other columns are NULL. It reaches every partition of the
entity's topic, and sinks skip records older than it that arrive later."""
BEFORE = "before"
"""The old image of an updated record, just before its new image and with the
same version. `core.changes` turns it into a delete of the old key when the
key changed, and drops it otherwise: sinks never see it."""
VERSION = "_kanal_version"
"""Engine column (Int64): the record's version from the source position (LSN,
cursor time in epoch microseconds, file time). Sinks apply a record only if
it is not older than what they hold, so replays and overlaps are harmless."""


class DeltaKind(str, Enum):
    NONE = "none"
    CDC = "cdc"
    CURSOR = "cursor"
    FILES = "files"


class FrozenModel(BaseModel):
    """Base for connector configs: immutable, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class CursorDelta(FrozenModel):
    """`delta: {cursor: updated_at}`: poll rows whose change column moved."""

    cursor: str = Field(description="column that grows on every change (a timestamp)")
    overlap_s: float = Field(
        5.0, ge=0, le=86_400, description="re-read this far behind the last cursor (clock skew, long transactions)"
    )
    poll_s: float = Field(1.0, gt=0, le=86_400, description="seconds between polls when streaming continuously")


class EntityOptions(FrozenModel):
    """Per-entity options in a job file; connectors extend it with their own."""

    mapping: str | None = Field(
        None, description="mapping file (YAML, relative to the job file) between the system's fields and Kanal's"
    )
    delta: Literal["cdc", "files"] | CursorDelta | None = Field(
        None, description="how changes are read after the snapshot: cdc, files, or {cursor: column}"
    )


@dataclass(frozen=True)
class Capabilities:
    """What a connector can do, declared once (shown by `kanal connectors`)."""

    entities: tuple[str, ...]
    supports_deletes: bool = False
    delta: tuple[DeltaKind, ...] = (DeltaKind.NONE,)
    max_batch_rows: int | None = None
    """Sink: the most rows one `write` call receives; the engine writes larger
    batches in pieces, in order (per-key order holds)."""
    rate_limit_per_s: float | None = None
    """Sink: the most `write` calls per second, across all writer threads of
    the sink (bisecting a refused batch makes calls too)."""
    parallel_snapshot: bool = False
    stable_batches: bool = False
    """Sink only: hand it one Kafka message per write with a `batch_id` that is
    the same on every re-delivery, so a sink without upsert (files) stays
    idempotent by overwriting the same object. Others get merged batches.
    A batch written in slices (pieces of `max_batch_rows`, or halves while
    isolating a refused record) gives each slice its own id, `<batch_id>@<offset>+<rows>`."""
    supports_truncate: bool = False
    """Sink only: applies a `truncate` row (the entity emptied at that version; older
    records arriving later stay out). A sink without it dead-letters truncates."""
    skip_unchanged: bool = False
    """Sink only: the engine remembers what it wrote (`core.sinkmemory`) and sends
    it only records whose content changed and that are not older than what the
    system holds — for systems without a version check of their own (APIs)."""


@dataclass(frozen=True)
class EntityInfo:
    """One entity a source offers (answer of `discover`)."""

    entity: str
    key: tuple[str, ...]
    estimated_rows: int | None = None
    delta: DeltaKind = DeltaKind.NONE


@dataclass(frozen=True)
class Chunk:
    """A resumable slice of a snapshot; `id` is stable across re-runs.

    `spec` is opaque to the engine (a ctid range, a file name, a page cursor);
    the plan is stored in the state store, so a resumed run reads exactly the
    slices it did not finish.
    """

    id: str
    spec: dict[str, Any] = field(default_factory=dict)
    estimated_rows: int | None = None


@dataclass
class WriteResult:
    """Per-batch outcome of a sink write.

    `failed` lists records the target refused, as a frame with `_kanal_key`
    and `reason`; they go to the DLQ (or fail the job) while the rest count as
    written. `skipped_older` counts records ignored because the target already
    holds a newer version.
    """

    written: int = 0
    skipped_older: int = 0
    failed: pl.DataFrame | None = None

    @property
    def failed_count(self) -> int:
        return 0 if self.failed is None else self.failed.height


@dataclass(frozen=True)
class DeltaContext:
    """What a delta reader needs to know: the job (names slots) and its entities."""

    job: str
    entities: dict[str, EntityOptions]


@dataclass
class Changes:
    """One read of a delta stream.

    `frames` hold, per entity, the source's columns plus `OP` and `VERSION`
    (delete rows need only the columns that make the key); `position` is
    JSON-able and opaque to the engine: it is stored, handed back to `read`,
    and confirmed once everything up to it is delivered.
    """

    frames: dict[str, pl.DataFrame]
    position: dict[str, Any]

    @property
    def rows(self) -> int:
        """Changes read; an old image (`BEFORE`) travels with its new one and is not one of its own."""
        return sum(f.height - (int((f.get_column(OP) == BEFORE).sum()) if OP in f.columns else 0) for f in self.frames.values())


class DeltaReader(ABC):
    """Reads changes after a position; never decides what counts as delivered."""

    def check(self) -> None:  # noqa: B027 - optional hook
        """Verify the source can stream (settings, rights) without creating anything; raise KanalError."""

    @abstractmethod
    def start(self) -> dict[str, Any]:
        """The current position, fixed *before* a snapshot begins (creating a slot if needed)."""

    def resumable(self, position: dict[str, Any]) -> bool:
        """Whether a stored `position` can still be read from (a dropped CDC slot cannot)."""
        return True

    def snapshot_version(self, entity: str, position: dict[str, Any]) -> pl.Expr | None:
        """The version snapshot rows of `entity` carry, over the source's columns.

        `position` is what `start` returned before the snapshot. A snapshot
        taken after it is at least as new as every change up to it, so its
        rows must compare as not older than those changes (CDC: the start
        LSN) and older than every change after it; a cursor reader returns
        its cursor column. None: snapshot rows carry no version.
        """
        return None

    @abstractmethod
    def read(self, position: dict[str, Any]) -> Changes:
        """Changes after `position`, bounded in size; no frames when caught up."""

    def confirm(self, position: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Everything up to `position` is delivered: let the source release it (WAL)."""

    def status(self) -> dict[str, str]:
        """Source-side figures for `kanal status` (e.g. retained WAL)."""
        return {}

    def gauges(self) -> dict[str, float]:
        """Source-side numbers for monitoring, name -> value; `--http-port` serves each as the gauge `kanal_<name>`.

        Called every few seconds from another thread on a reader of its own
        (never the one streaming), so it may query the source; names are
        snake_case with their unit last (`cdc_slot_retained_wal_bytes`).
        """
        return {}

    def describe(self, position: dict[str, Any]) -> str:
        """A position for people (reports, `kanal status`)."""
        return str(position)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class Source(ABC):
    """Reads one system; yields polars frames of raw or canonical columns."""

    entity_options: ClassVar[type[EntityOptions]] = EntityOptions

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    @abstractmethod
    def check(self) -> None:
        """Reach the system with the configured credentials; raise ConnectorError."""

    def fields(self, entity: str, options: EntityOptions) -> pl.Schema | None:
        """The columns (and their types) a snapshot of `entity` yields, learnt without reading its rows.

        `kanal check` compiles the entity's mapping against them and looks
        for the canonical fields it needs, so a missing column is reported
        before a run, not after a million dead letters. Raise ConfigError
        when the table, file or endpoint does not exist. None: the source
        cannot tell before reading (the check then says so and
        `kanal check --sample` learns the columns from rows).
        """
        return None

    def sample(self, entity: str, options: EntityOptions, rows: int) -> pl.DataFrame:
        """The first `rows` records of `entity` as a snapshot yields them (`kanal check --sample`).

        The default reads the first chunk of the plan and stops once it has
        enough; override it when planning or reading a chunk is costly (a
        `LIMIT` query instead of counting the table).
        """
        chunks = self.plan(entity, options)
        frames: list[pl.DataFrame] = []
        have = 0
        for chunk in chunks:
            for frame in self.snapshot(entity, options, chunk):
                frames.append(frame.head(rows - have))
                have += frames[-1].height
                if have >= rows:
                    return pl.concat(frames, how="diagonal_relaxed")
        return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()

    @abstractmethod
    def discover(self) -> list[EntityInfo]:
        """The entities this source can offer with the current config."""

    @abstractmethod
    def plan(self, entity: str, options: EntityOptions) -> list[Chunk]:
        """Split the snapshot of `entity` into chunks (at least one)."""

    @abstractmethod
    def snapshot(self, entity: str, options: EntityOptions, chunk: Chunk) -> Iterator[pl.DataFrame]:
        """Yield the rows of one chunk as frames (bounded in size)."""

    def export_snapshot(self) -> str | None:
        """Open one consistent snapshot for a whole migration; a token other instances `join_snapshot`.

        Called once on the first source instance before any chunk is read;
        the snapshot stays open until `release_snapshot`. None: the source
        cannot share one (each chunk then reads at its own moment).
        """
        return None

    def join_snapshot(self, token: str) -> None:  # noqa: B027 - optional hook
        """Read the following chunks in the snapshot `token` (from `export_snapshot` of another instance)."""

    def release_snapshot(self) -> None:  # noqa: B027 - optional hook
        """Close what `export_snapshot` opened (every chunk is read, or the run failed)."""

    def delta(self, context: DeltaContext) -> DeltaReader:
        """A reader of changes for the entities of `context` (capability `delta`)."""
        raise NotImplementedError(f"{type(self).__name__} reads no deltas")

    def cleanup(self, context: DeltaContext) -> list[str]:
        """Drop what delta reading created in the source; returns lines for the user."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class Sink(ABC):
    """Writes canonical batches idempotently into one system."""

    entity_options: ClassVar[type[EntityOptions]] = EntityOptions

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    @abstractmethod
    def check(self) -> None:
        """Reach the system with the configured credentials; raise ConnectorError."""

    def attach(self, memory: SinkMemory) -> None:
        """Receive the job's durable memory of this sink (ids of records in the system).

        Called by the engine before `prepare`; API sinks keep canonical key ->
        system id there (`memory.ids`, `memory.remember_ids`).
        """
        self.memory = memory

    def accepts(self, entity: str, options: EntityOptions, schema: pl.Schema) -> list[str]:
        """What would stop writes of frames with `schema` to `entity`'s target, one line per problem.

        Called by `kanal check` after `check`, with the columns the sink
        would receive (canonical, or the sink mapping's output); it must not
        write or create anything. A line names the target and what is wrong
        with it, and the fix (a missing table with creation turned off, a
        key or required column the frames lack, a column whose type cannot
        hold the values). The default finds nothing to inspect.
        """
        return []

    def prepare(self, entity: str, options: EntityOptions) -> None:  # noqa: B027 - optional hook
        """Make the target ready for `entity` (create a missing table)."""

    @abstractmethod
    def write(self, entity: str, options: EntityOptions, frame: pl.DataFrame, batch_id: str) -> WriteResult:
        """Upsert `frame`; raise BatchRejected when data (not the system) is at fault.

        `batch_id` is stable across re-deliveries only when the sink declared
        `stable_batches` (see Capabilities); otherwise it is for logs.
        """

    def read_back(self, entity: str, options: EntityOptions) -> pl.DataFrame | None:
        """Every record of `entity` the target holds now, for `kanal verify` (called without `prepare`: nothing is created).

        Returns the target's canonical columns it has (values as text, or
        canonical types) and `_kanal_version` where the target keeps one
        (NULL otherwise); deleted records are not in it. None: the sink
        cannot read its target back (the default), so `kanal verify` says
        so instead of comparing.
        """
        return None

    def finish(self, entity: str, options: EntityOptions) -> str | None:  # noqa: B027 - optional hook
        """A migration delivered every record of `entity`: build what was deferred.

        Returns a line for the report (e.g. "index built, 3 duplicates removed").
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release connections."""


@dataclass(frozen=True)
class ConnectorSpec:
    """What a connector package registers under the `kanal.connectors` entry point."""

    name: str
    description: str
    config: type[BaseModel]
    capabilities: Capabilities
    source: type[Source] | None = None
    sink: type[Sink] | None = None
