"""Cursor deltas for any source whose records carry a change time (`delta: {cursor: updated_at}`).

A connector writes one method, `CursorReader.fetch`: the rows of an entity
whose cursor is at or after a time (at that very time: after a tiebreak), in
(cursor, tiebreak) order, at most N of them, plus the source's clock. A SQL
table answers it with one query, an HTTP API with an `updated_at_min`-style
filter. Everything that makes polling lose nothing lives here:

* **Start.** `start` reads the source's clock *before* a snapshot, so every
  change after it is found by the first reads (gap-free handover).
* **Overlap.** Each read begins `overlap_s` before the high-water mark: a row
  committed late with an older cursor (`now()` is a transaction's start;
  writers' clocks drift) is still found.
* **Re-reads.** Rows read again inside that window are recognised by a hash
  of their content and dropped, so the overlap costs reads, never
  duplicates. The hashes of the rows inside the window travel in the
  position: a restarted job hands nothing out twice either (polars keeps
  its row hash stable within a version; after an upgrade the window's rows
  may go out once more, which the sinks' version check makes harmless).
  When a fetch names each row (`IDENTITY`: its primary key), a row is
  dropped only if its content equals what was last handed out *for that
  row*: a row whose cursor stays put while it changes (stamped in the
  future, or by `greatest(updated_at, now())`) and goes back to an earlier
  content is handed out again, not taken for a re-read.
* **Paging.** When a page is full, the next read continues strictly after its
  last (cursor, tiebreak) pair, so any number of rows sharing one cursor
  value (a bulk update stamps them all with one `now()`) pass in pages.
* **Clock bound.** The high-water mark never passes the source's clock. One
  row stamped in the future would otherwise move the window past every
  normal change after it; it is handed out once, and its hash stays in the
  window (its version is ahead of the mark) until the clock reaches it. A
  source may report a clock held back (PostgreSQL: to the start of the
  oldest transaction that has written and not committed); the mark follows
  it, down if need be, so that transaction's rows are found when it commits.
* **Version.** A row's version is its cursor in epoch microseconds
  (`cursor_version`), from datetime, date or ISO 8601 text columns alike;
  snapshot rows carry the same, so sinks compare snapshot and changes.

What a cursor cannot see: hard deletes, rows whose cursor is NULL, and
changes that leave the cursor as it was.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from kanal.core.connector import OP, UPSERT, VERSION, Changes, CursorDelta, DeltaReader

TIEBREAK = "_kanal_tiebreak"
"""Text column of fetched rows that orders rows sharing one cursor value (dropped before handing out)."""

IDENTITY = "_kanal_identity"
"""Optional text column of fetched rows naming the row (its primary key); dropped before handing out."""

_HASH = "_kanal_hash"
_PREVIOUS = "_kanal_previous_hash"
_SEEN = {_HASH: pl.UInt64, VERSION: pl.Int64, IDENTITY: pl.String}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class CursorPage:
    """One answer of `CursorReader.fetch`.

    `rows`: the source's columns plus `TIEBREAK`, in (cursor, tiebreak)
    order. `clock`: the source's time in epoch microseconds, read *before*
    the rows, so that nothing committed after the rows were read can carry
    a cursor below it (a source may lower it for that, see the module).
    """

    rows: pl.DataFrame
    clock: int


@dataclass
class _Window:
    """Where one entity's reads stand: high-water mark, paging point, hashes inside the overlap."""

    mark: int
    after: tuple[int, str] | None
    seen: pl.DataFrame


class CursorReader(DeltaReader):
    """Polls entities by a change column; subclasses implement `fetch` (and may add `check`, `status`).

    Position: ``{"cursors": {entity: mark}, "seen": {entity: [[hash,
    version, identity], ...]}, "after": {entity: [cursor, tiebreak]}}``
    (times in epoch microseconds; identity null when the fetch names no
    rows; `after` only while paging).
    """

    def __init__(self, entities: Mapping[str, CursorDelta], page_rows: int) -> None:
        self.cursors = dict(entities)
        self.page_rows = page_rows
        self._seen_cache: dict[str, tuple[object, pl.DataFrame]] = {}

    @abstractmethod
    def fetch(self, entity: str, since: int, tiebreak: str | None, limit: int) -> CursorPage:
        """Rows of `entity` whose cursor is after `since` or at it (then with a tiebreak after `tiebreak`, if given).

        `since` is in epoch microseconds; at most `limit` rows, in (cursor,
        tiebreak) order; `limit` 0 asks only for the clock. The tiebreak must
        tell apart every two rows of different content sharing one cursor
        value, and stay the same for a row whose content does not change.
        Rows may carry `IDENTITY` (see the module) where the source has a
        key that is never NULL.
        """

    def start(self) -> dict[str, Any]:
        return {"cursors": {entity: self.fetch(entity, 0, None, 0).clock for entity in self.cursors}}

    def snapshot_version(self, entity: str, position: dict[str, Any]) -> pl.Expr | None:
        return cursor_version(pl.col(self.cursors[entity].cursor))

    def read(self, position: dict[str, Any]) -> Changes:
        cursors, seen, after = dict(position["cursors"]), dict(position.get("seen", {})), dict(position.get("after", {}))
        frames = {}
        for entity, delta in self.cursors.items():
            paging = after.get(entity)
            window = _Window(
                int(cursors.get(entity, 0)), (int(paging[0]), str(paging[1])) if paging else None, self._seen(entity, seen)
            )
            fresh = self._read_entity(entity, delta, window)
            if not fresh.is_empty():
                frames[entity] = fresh
            cursors[entity] = window.mark
            seen[entity] = window.seen.rows()
            self._seen_cache[entity] = (seen[entity], window.seen)
            if window.after is None:
                after.pop(entity, None)
            else:
                after[entity] = list(window.after)
        return Changes(frames, {"cursors": cursors, "seen": seen, "after": after})

    def _read_entity(self, entity: str, delta: CursorDelta, window: _Window) -> pl.DataFrame:
        """Pages until one holds rows not handed out before, or the source has no more; moves `window`."""
        overlap = round(delta.overlap_s * 1_000_000)
        while True:
            since, tiebreak = window.after or (window.mark - overlap, None)
            page = self.fetch(entity, since, tiebreak, self.page_rows)
            rows = page.rows.with_columns(
                cursor_version(pl.col(delta.cursor)).alias(VERSION),
                page.rows.drop(TIEBREAK, IDENTITY, strict=False).hash_rows().alias(_HASH),
            )
            if IDENTITY not in rows.columns:
                rows = rows.with_columns(pl.lit(None, pl.String).alias(IDENTITY))
            full = rows.height >= self.page_rows
            window.after = (int(rows.get_column(VERSION)[-1]), str(rows.get_column(TIEBREAK)[-1])) if full else None
            newest = window.mark if rows.is_empty() else max(window.mark, int(rows.get_column(VERSION).max()))  # type: ignore[arg-type]
            window.mark = min(newest, page.clock)
            fresh = _not_handed_out(rows, window.seen)
            window.seen = _last_handed_out(pl.concat([window.seen, fresh.select(list(_SEEN))])).filter(
                pl.col(VERSION) >= window.mark - overlap
            )
            if not fresh.is_empty() or not full:
                return fresh.drop(_HASH, TIEBREAK, IDENTITY).with_columns(pl.lit(UPSERT).alias(OP))

    def _seen(self, entity: str, seen: dict[str, Any]) -> pl.DataFrame:
        """The hashes the position holds, as a frame (reused while the position is the one last returned)."""
        pairs = seen.get(entity) or []
        cached = self._seen_cache.get(entity)
        if cached is not None and cached[0] is pairs:
            return cached[1]
        if pairs and len(pairs[0]) == 2:  # a position stored before rows were named
            pairs = [[*pair, None] for pair in pairs]
        return pl.DataFrame(pairs, schema=_SEEN, orient="row")

    def describe(self, position: dict[str, Any]) -> str:
        paging = position.get("after", {})
        return ", ".join(
            f"{entity} {_iso(int(mark))}" + (" (paging)" if entity in paging else "")
            for entity, mark in sorted(position["cursors"].items())
        )


def _not_handed_out(rows: pl.DataFrame, seen: pl.DataFrame) -> pl.DataFrame:
    """Rows whose content is not what was last handed out for them (by identity where named, else by any row)."""
    named = pl.col(IDENTITY).is_not_null()
    last = seen.filter(named).select(IDENTITY, pl.col(_HASH).alias(_PREVIOUS))
    changed = (
        rows.filter(named)
        .join(last, on=IDENTITY, how="left", maintain_order="left")
        .filter(pl.col(_PREVIOUS).is_null() | (pl.col(_PREVIOUS) != pl.col(_HASH)))
        .drop(_PREVIOUS)
    )
    unnamed = rows.filter(~named & ~pl.col(_HASH).is_in(seen.get_column(_HASH).implode()))
    return pl.concat([unnamed, changed])


def _last_handed_out(seen: pl.DataFrame) -> pl.DataFrame:
    """One entry per named row (its last content handed out), one per content for unnamed rows."""
    named = pl.col(IDENTITY).is_not_null()
    return pl.concat([
        seen.filter(~named).unique(_HASH, keep="last", maintain_order=True),
        seen.filter(named).unique(IDENTITY, keep="last", maintain_order=True),
    ])  # fmt: skip


def cursor_version(cursor: pl.Expr) -> pl.Expr:
    """A cursor column as epoch microseconds (Int64), whether the source yields datetimes, dates or ISO 8601 text.

    The column's type is known only when a frame arrives, so the conversion
    runs once per frame (never per row).
    """
    return cursor.map_batches(_epoch_micros, return_dtype=pl.Int64)


def _epoch_micros(values: pl.Series) -> pl.Series:
    dtype = values.dtype
    if dtype == pl.Date:
        return values.cast(pl.Datetime("us")).dt.epoch("us")
    if isinstance(dtype, pl.Datetime):
        return values.dt.epoch("us")
    if dtype == pl.String:
        return _parse_iso(values).dt.epoch("us")
    if dtype == pl.Null:
        return values.cast(pl.Int64)
    raise ValueError(f"cursor column {values.name!r} holds {dtype}; a cursor must be a timestamp, a date or ISO 8601 text")


def _parse_iso(values: pl.Series) -> pl.Series:
    """ISO 8601 text (`2024-05-01`, `...T12:00:00Z`, `... 12:00:00.5+02`, `+0200`, no offset: UTC) as UTC datetimes."""
    text = (
        values.str.strip_chars()
        .str.replace(r"^(\d{4}-\d{2}-\d{2})$", "${1} 00:00:00")
        .str.replace("T", " ", literal=True)
        .str.replace(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?)$", "${1}+00:00")
        .str.replace(r"[zZ]$", "+00:00")
        .str.replace(r"([+-]\d{2})(\d{2})$", "${1}:${2}")
        .str.replace(r"([+-]\d{2})$", "${1}:00")
    )
    parsed = text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f%:z", time_unit="us", time_zone="UTC", strict=False)
    bad = values.filter(parsed.is_null() & values.is_not_null())
    if not bad.is_empty():
        raise ValueError(
            f"cursor column {values.name!r}: {bad[0]!r} is not an ISO 8601 timestamp ({bad.len()} such value(s)); "
            "choose a change column holding timestamps"
        )
    return parsed


def _iso(micros: int) -> str:
    """UTC with a Z suffix, as every time Kanal shows (`kanal status`)."""
    return (_EPOCH + timedelta(microseconds=micros)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
