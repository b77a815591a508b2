"""`kanal reset JOB --entity E`: read one entity again, or move its cursor.

Both are changes to the job's state only; no system is contacted, and the
job must not be running (its state lock is taken, so a running `migrate`,
`run` or `sync` makes the reset refuse).

* **Snapshot again** (`--snapshot`, the default): the entity is marked in the
  migration's state, which becomes unfinished. The next `kanal migrate` or
  `kanal run` plans that entity afresh and reads it completely, the other
  entities are not read again; until then `kanal sync` refuses (as after any
  interrupted migration). The snapshot starts at the job's stored stream
  position (kept as it is, see `jobs.pipeline.Positions`), so every change
  after it still arrives through the stream and wins over the snapshot, and
  sinks skip snapshot rows older than what they hold: re-reading is never a
  step back. Rows that were deleted at the source are not deleted in the
  targets by a snapshot (a snapshot has no deletes).
* **Move a cursor** (`--cursor TIME`, entities with `delta: {cursor: ...}`):
  the entity's high-water mark is set to TIME and the rows remembered inside
  its overlap window are forgotten, so the next stream reads every row whose
  cursor is at or after TIME (minus `overlap_s`). Going back repeats changes,
  which sinks absorb (they upsert and compare versions); going forward skips
  the changes in between, which is then the user's choice and is said so.
  CDC has no per-entity cursor: its position is the replication slot's,
  shared by every entity of the job.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kanal.core.connector import CursorDelta
from kanal.core.errors import ConfigError
from kanal.core.state import StateStore
from kanal.jobs.load import LoadedJob
from kanal.jobs.migrate import replanned
from kanal.jobs.pipeline import MIGRATION, STREAM
from kanal.jobs.status import utc

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def reset(loaded: LoadedJob, entity: str, snapshot: bool, cursor: str | None) -> list[str]:
    """Apply the reset to the job's state; the lines say what was done and what to run next."""
    require_entity(loaded, entity)
    moved = _parse_time(cursor) if cursor is not None else None
    if moved is not None:
        _cursor_entity(loaded, entity)
    state = StateStore(loaded.state_dir).acquire()
    try:
        lines = []
        if moved is not None:
            lines += _move_cursor(loaded, state, entity, moved)
        if snapshot:
            lines += _snapshot_again(loaded, state, entity)
        return lines
    finally:
        state.release()


def require_entity(loaded: LoadedJob, entity: str) -> None:
    """Refuse (exit 2) an entity the job's source does not read, listing those it does."""
    if entity not in loaded.source_entities:
        raise ConfigError(
            f"{loaded.path}: job {loaded.name} has no entity {entity!r} "
            f"(its source entities: {', '.join(loaded.source_entities)})"
        )


def _cursor_entity(loaded: LoadedJob, entity: str) -> CursorDelta:
    delta = loaded.source_entities[entity].options.delta
    if isinstance(delta, CursorDelta):
        return delta
    if delta is None:
        why = "it has no `delta:` in the job file, so nothing streams it"
    else:
        why = (
            f"it streams with `delta: {delta}`, whose position belongs to the whole job (for cdc: the "
            "replication slot), not to one entity; to start its stream over, `kanal cleanup` and `kanal run` again"
        )
    raise ConfigError(f"{loaded.path}: --cursor applies to entities with `delta: {{cursor: column}}`; {entity}: {why}")


def _parse_time(text: str) -> int:
    """ISO 8601 (a date, or a time with Z or an offset; without one: UTC) as epoch microseconds."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--cursor {text!r} is not an ISO 8601 time; write e.g. 2026-01-01T00:00:00Z or 2026-01-01"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _move_cursor(loaded: LoadedJob, state: StateStore, entity: str, micros: int) -> list[str]:
    stream = state.get(STREAM) or {}
    position = stream.get("position")
    holder = _cursor_part(position, entity) if position else None
    if holder is None:
        raise ConfigError(
            f"{loaded.path}: {entity} has no stream position yet; `kanal run {loaded.path.name}` (or `migrate`) "
            "fixes one, after which its cursor can be moved"
        )
    before = int(holder["cursors"][entity])
    holder["cursors"][entity] = micros
    for key in ("seen", "after"):
        holder.get(key, {}).pop(entity, None)
    state.update(lambda d: d[STREAM].__setitem__("position", position))
    lines = [f"{entity}: cursor moved from {utc(before / 1e6)} to {utc(micros / 1e6)}"]
    if micros > before:
        lines.append(f"  changes of {entity} between these times will not be streamed (the cursor moved forward)")
    else:
        lines.append(f"  the next `kanal sync` or `kanal run` streams {entity} again from there (sinks skip what they hold)")
    return lines


def _cursor_part(position: dict[str, Any], entity: str) -> dict[str, Any] | None:
    """The part of a stream position that holds `entity`'s cursor (a job may stream in several ways)."""
    if entity in (position.get("cursors") or {}):
        return position
    for part in position.values():
        if isinstance(part, dict) and entity in (part.get("cursors") or {}):
            return part
    return None


def _snapshot_again(loaded: LoadedJob, state: StateStore, entity: str) -> list[str]:
    doc = state.get(MIGRATION)
    name = loaded.path.name
    if doc is None:
        return [f"{entity}: never migrated; the next `kanal migrate {name}` or `kanal run {name}` reads every entity"]
    entities = doc.setdefault("entities", {})
    if set(entities) != set(loaded.source_entities) and loaded.job.kafka.embedded:
        return [
            f"{entity}: the stored migration does not cover the job's entities any more; the next "
            f"`kanal migrate {name}` reads every entity again"
        ]
    entities[entity] = {"chunks": [], "done": {}, "replan": True}
    doc["status"] = "running"
    state.update(lambda d: d.__setitem__(MIGRATION, doc))
    marked = sorted(replanned(state))
    return [
        f"{', '.join(marked)}: will be read again by the next `kanal migrate {name}` or `kanal run {name}` "
        "(the other entities are not re-read); `kanal sync` waits for that migration"
    ]
