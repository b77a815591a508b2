"""Cursor deltas from PostgreSQL (`delta: {cursor: updated_at}`): poll a change column.

For tables that cannot use log-based capture (no `wal_level=logical`, a
view, a managed database without replication rights). Each read selects the
rows whose cursor is at or after the last one seen *minus an overlap*, so a
row written with a slightly older timestamp (clock skew, a transaction that
committed late: `now()` is its start time) is still found. Rows re-read
inside the overlap are recognised by a hash of their content and dropped, so
the overlap costs reads, never duplicates; the hashes of the rows inside the
window travel in the position, so a restarted job does not hand them out
again either. The version of a row is its cursor in epoch microseconds, which
the sinks compare.

What a cursor cannot see: hard deletes (use `delta: cdc`) and rows whose
cursor is NULL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl
import psycopg

from kanal.connectors.postgres.config import PostgresSourceOptions
from kanal.connectors.postgres.db import connect, translated
from kanal.connectors.postgres.rows import read_rows
from kanal.core.connector import OP, UPSERT, VERSION, Changes, CursorDelta, DeltaContext, DeltaReader
from kanal.core.errors import ConfigError

if TYPE_CHECKING:
    from kanal.connectors.postgres.source import PostgresSource

_HASH = "_kanal_hash"


class CursorReader(DeltaReader):
    def __init__(self, source: PostgresSource, context: DeltaContext) -> None:
        self.source, self.system = source, source.system
        self.entities: dict[str, tuple[PostgresSourceOptions, CursorDelta]] = {}
        for entity, options in context.entities.items():
            assert isinstance(options, PostgresSourceOptions) and isinstance(options.delta, CursorDelta)
            self.entities[entity] = (options, options.delta)
        self._conn: psycopg.Connection | None = None
        self._seen: dict[str, pl.DataFrame] = {}
        self._paging: set[str] = set()

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.source.config)
            self._conn.autocommit = True
        return self._conn

    def start(self) -> dict[str, Any]:
        with translated(self.system):
            for entity, (options, delta) in self.entities.items():
                types = dict(self.source.columns(options))
                if delta.cursor not in types:
                    raise ConfigError(f"{self.system}: {entity}: cursor column {delta.cursor!r} is not in {options.table}")
                if not types[delta.cursor].startswith(("timestamp", "date")):
                    raise ConfigError(f"{self.system}: {entity}: cursor column {delta.cursor!r} must be a timestamp")
            row = self._connection().execute("select (extract(epoch from now()) * 1000000)::int8").fetchone()
        assert row is not None
        return {"cursors": {entity: int(row[0]) for entity in self.entities}}

    def read(self, position: dict[str, Any]) -> Changes:
        cursors = dict(position["cursors"])
        for entity, pairs in position.get("seen", {}).items():
            if entity not in self._seen and pairs:
                self._seen[entity] = pl.DataFrame(pairs, schema={_HASH: pl.UInt64, VERSION: pl.Int64}, orient="row")
        frames = {}
        for entity, (options, delta) in self.entities.items():
            last = int(cursors.get(entity, 0))
            low = last if entity in self._paging else last - int(delta.overlap_s * 1_000_000)
            fresh, newest = self._read(entity, options, delta, low)
            cursors[entity] = max(last, newest)
            if not fresh.is_empty():
                frames[entity] = fresh
        seen = {e: s.rows() for e, s in self._seen.items()}  # kept in the position: a restart re-reads the
        return Changes(frames, {"cursors": cursors, "seen": seen})  # overlap, but hands out nothing twice

    def _read(self, entity: str, options: PostgresSourceOptions, delta: CursorDelta, low: int) -> tuple[pl.DataFrame, int]:
        """Rows at or after `low` not seen before, and the newest cursor among them."""
        limit = self.source.config.delta_rows
        condition = f"\"{delta.cursor}\" >= to_timestamp({low} / 1000000.0)"
        if options.where:
            condition += f" and ({options.where})"
        where = f"{self.system} ({options.schema_name}.{options.table}, cursor {delta.cursor})"
        columns = self.source.columns(options)
        rows = read_rows(self._connection(), where, options, columns, condition, f' order by "{delta.cursor}" limit {limit}')
        if rows.is_empty():
            self._paging.discard(entity)
            return rows, low
        rows = rows.with_columns(pl.col(delta.cursor).dt.epoch("us").alias(VERSION)).with_columns(rows.hash_rows().alias(_HASH))
        newest = int(rows.get_column(VERSION).max())  # type: ignore[arg-type]
        if rows.height == limit:
            if newest == int(rows.get_column(VERSION).min()):  # type: ignore[arg-type]
                raise ConfigError(f"{where}: more than {limit} rows share one cursor value; raise delta_rows")
            self._paging.add(entity)
        else:
            self._paging.discard(entity)
        seen = self._seen.get(entity)
        fresh = rows if seen is None else rows.join(seen, on=_HASH, how="anti")
        window = newest - int(delta.overlap_s * 1_000_000)
        kept = pl.concat([s for s in (seen, fresh.select(_HASH, VERSION)) if s is not None])
        self._seen[entity] = kept.filter(pl.col(VERSION) >= window)
        return fresh.drop(_HASH).with_columns(pl.lit(UPSERT).alias(OP)), newest

    def describe(self, position: dict[str, Any]) -> str:
        def when(micros: int) -> str:
            return datetime.fromtimestamp(micros / 1e6, UTC).isoformat(timespec="milliseconds")

        return ", ".join(f"{e} {when(int(c))}" for e, c in sorted(position["cursors"].items()))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
