"""PostgreSQL source: a parallel, resumable snapshot read with COPY.

Chunks are ranges of heap pages (`ctid` ranges, PostgreSQL 14+ scans them
directly): they need no index, split any table evenly whatever its key looks
like (composite, NULL parts, text), and each chunk reads exactly its pages.
The last chunk is open-ended so rows appended after planning are not missed.

A migration reads one consistent snapshot: the first instance exports it
(`pg_export_snapshot()` in a REPEATABLE READ transaction it holds open until
`release_snapshot`) and every instance reads each chunk in its own REPEATABLE
READ transaction that joins it. Chunks read at different moments would lose
a row that an UPDATE moves from a chunk not read yet into one already read.

Rows leave the server as CSV through `COPY ... TO STDOUT` and are parsed by
polars in one call per chunk: no Python runs per row. Timestamps are sent as
epoch microseconds (integers parse far faster than dates) and typed here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import ClassVar

import polars as pl
import psycopg
from psycopg import sql

from kanal.connectors.postgres.cdc import CdcReader
from kanal.connectors.postgres.config import PostgresConfig, PostgresSourceOptions
from kanal.connectors.postgres.cursor import PostgresCursorReader
from kanal.connectors.postgres.db import connect, describe, qualified, translated
from kanal.connectors.postgres.rows import TEMPORAL, read_rows
from kanal.core.connector import Chunk, CursorDelta, DeltaContext, DeltaReader, EntityInfo, EntityOptions, Source
from kanal.core.delta import combined, split_context
from kanal.core.errors import ConfigError, ConnectorError
from kanal.core.model import ENTITIES

_MAX_FRAME_ROWS = 200_000
_SNAPSHOT_ID = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$")


class PostgresSource(Source):
    entity_options: ClassVar[type[EntityOptions]] = PostgresSourceOptions
    config: PostgresConfig

    def __init__(self, config: PostgresConfig) -> None:
        super().__init__(config)
        self.system = describe(config)
        self._conn: psycopg.Connection | None = None
        self._exporter: psycopg.Connection | None = None
        self._snapshot: str | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.config)
            self._conn.autocommit = True
        return self._conn

    def check(self) -> None:
        with translated(self.system):
            self._connection().execute("select 1")

    def discover(self) -> list[EntityInfo]:
        with translated(self.system):
            rows = self._connection().execute(
                "select table_name from information_schema.tables where table_schema = 'public'"
            ).fetchall()
        tables = {r[0] for r in rows}
        return [EntityInfo(name, e.key) for name, e in ENTITIES.items() if name in tables]

    def _columns(self, opts: PostgresSourceOptions) -> list[tuple[str, str]]:
        with translated(self.system):
            rows = self._connection().execute(
                "select column_name, data_type from information_schema.columns "
                "where table_schema = %s and table_name = %s order by ordinal_position",
                (opts.schema_name, opts.table),
            ).fetchall()
        if not rows:
            raise ConfigError(f"{self.system}: table {opts.schema_name}.{opts.table} does not exist or has no columns")
        return [(r[0], r[1]) for r in rows]

    def plan(self, entity: str, options: EntityOptions) -> list[Chunk]:
        opts = self._opts(options)
        self._columns(opts)  # fails clearly when the table is missing
        table = qualified(opts.schema_name, opts.table)
        with translated(self.system):
            conn = self._connection()
            pages = conn.execute(
                "select pg_relation_size(%s::regclass) / current_setting('block_size')::int", (table,)
            ).fetchone()
            rows = self._count(conn, table, opts)
        total_pages, total_rows = int(pages[0] if pages else 0), int(rows[0] if rows else 0)
        if total_pages == 0 or total_rows <= opts.chunk_rows:
            return [Chunk(f"{entity}-0", {"from": 0, "to": None}, total_rows)]
        pages_per_chunk = max(1, math.ceil(total_pages * opts.chunk_rows / total_rows))
        starts = list(range(0, total_pages, pages_per_chunk))
        chunks, planned = [], 0
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else None
            rows = total_rows - planned if end is None else round(total_rows * (end - start) / total_pages)
            planned += rows
            chunks.append(Chunk(f"{entity}-{start}", {"from": start, "to": end}, rows))
        return chunks

    def _count(self, conn: psycopg.Connection, table: str, opts: PostgresSourceOptions) -> tuple[int] | None:
        """The rows a snapshot will read; a `where:` that PostgreSQL refuses is a job-file error naming it."""
        if not opts.where:
            return conn.execute(f"select count(*) from {table}").fetchone()
        try:
            return conn.execute(f"select count(*) from {table} where {opts.where}").fetchone()
        except psycopg.Error as exc:
            if not (exc.sqlstate or "").startswith(("42", "22")):  # syntax or access rule, data exception
                raise
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"{self.system}: where: {opts.where!r} is not a filter PostgreSQL accepts on "
                f"{opts.schema_name}.{opts.table}: {reason}"
            ) from None

    def snapshot(self, entity: str, options: EntityOptions, chunk: Chunk) -> Iterator[pl.DataFrame]:
        opts = self._opts(options)
        conditions = [f"ctid >= '({int(chunk.spec['from'])},0)'::tid"]
        if chunk.spec.get("to") is not None:
            conditions.append(f"ctid < '({int(chunk.spec['to'])},0)'::tid")
        if opts.where:
            conditions.append(f"({opts.where})")
        where = f"{self.system} ({opts.schema_name}.{opts.table}, chunk {chunk.id})"
        columns, condition = self._columns(opts), " and ".join(conditions)
        if self._snapshot is None:
            frame = read_rows(self._connection(), where, opts, columns, condition)
        else:
            with translated(where), self._connection().transaction():
                self._enter_snapshot(self._snapshot)
                frame = read_rows(self._connection(), where, opts, columns, condition)
        for offset in range(0, frame.height, _MAX_FRAME_ROWS):
            yield frame.slice(offset, _MAX_FRAME_ROWS)

    def fields(self, entity: str, options: EntityOptions) -> pl.Schema:
        """The table's columns as a snapshot types them: timestamps and dates as UTC datetimes, the rest text."""
        return pl.Schema(
            {name: pl.Datetime("us", "UTC") if dtype in TEMPORAL else pl.String() for name, dtype in self._columns(self._opts(options))}
        )

    def sample(self, entity: str, options: EntityOptions, rows: int) -> pl.DataFrame:
        """The first `rows` rows (matching `where`) by a LIMIT query: no planning, no count of the table."""
        opts = self._opts(options)
        where = f"{self.system} ({opts.schema_name}.{opts.table})"
        return read_rows(self._connection(), where, opts, self._columns(opts), opts.where or "true", f" limit {int(rows)}")

    # one consistent snapshot per migration -----------------------------------

    def export_snapshot(self) -> str:
        """Hold a REPEATABLE READ transaction open on a connection of its own and export its snapshot.

        It only reads, so it holds no cursor delta back (see `cursor`); the
        session's idle-in-transaction timeout is lifted for it, since it
        waits idle while the chunks are read on other connections.
        """
        self.release_snapshot()
        with translated(self.system):
            conn = connect(self.config)
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            conn.execute("set idle_in_transaction_session_timeout = 0")
            row = conn.execute("select pg_export_snapshot()").fetchone()
        assert row is not None
        self._exporter, self._snapshot = conn, str(row[0])
        return self._snapshot

    def join_snapshot(self, token: str) -> None:
        if not _SNAPSHOT_ID.match(token):
            raise ConfigError(f"{self.system}: {token!r} is not a PostgreSQL snapshot id (from pg_export_snapshot)")
        self._snapshot = token

    def release_snapshot(self) -> None:
        if self._exporter is not None:
            self._exporter.close()  # ends the transaction: the snapshot is gone
            self._exporter = None
        self._snapshot = None

    def _enter_snapshot(self, token: str) -> None:
        """Make the transaction just begun on the source's connection read in snapshot `token`."""
        conn = self._connection()
        conn.execute("set transaction isolation level repeatable read, read only")
        try:
            conn.execute(sql.SQL("set transaction snapshot {}").format(sql.Literal(token)))
        except (psycopg.errors.InvalidParameterValue, psycopg.errors.ObjectNotInPrerequisiteState) as exc:
            raise ConnectorError(
                self.system,
                f"the migration's snapshot {token} is no longer open (the session that exported it ended: "
                f"{str(exc).strip()}); run the migration again: it resumes with the chunks not yet written",
            ) from None

    # deltas ------------------------------------------------------------------

    def delta(self, context: DeltaContext) -> DeltaReader:
        """One reader per way of streaming (CDC, cursor), combined when a job uses both."""
        parts = split_context(context, self._delta_kind)
        return combined({kind: (self._delta_reader(kind, part), part) for kind, part in parts.items()})

    def _delta_reader(self, kind: str, context: DeltaContext) -> DeltaReader:
        return CdcReader(self.config, self.system, context) if kind == "cdc" else PostgresCursorReader(self, context)

    def _delta_kind(self, entity: str, options: EntityOptions) -> str:
        if options.delta == "cdc":
            return "cdc"
        if isinstance(options.delta, CursorDelta):
            return "cursor"
        raise ConfigError(
            f"{self.system}: {entity}: the postgres source streams with delta: cdc or delta: {{cursor: <column>}}, "
            f"not delta: {options.delta}"
        )

    def cleanup(self, context: DeltaContext) -> list[str]:
        """Drop the job's slot and publication (whatever its entities stream by now: a slot left behind keeps WAL)."""
        cdc = {e: o for e, o in context.entities.items() if o.delta == "cdc"}
        reader = CdcReader(self.config, self.system, DeltaContext(context.job, cdc))
        try:
            return reader.cleanup()
        finally:
            reader.close()

    def close(self) -> None:
        self.release_snapshot()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def columns(self, opts: PostgresSourceOptions) -> list[tuple[str, str]]:
        return self._columns(opts)

    @staticmethod
    def _opts(options: EntityOptions) -> PostgresSourceOptions:
        assert isinstance(options, PostgresSourceOptions)
        return options

