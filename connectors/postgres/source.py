"""PostgreSQL source: a parallel, resumable snapshot read with COPY.

Chunks are ranges of heap pages (`ctid` ranges, PostgreSQL 14+ scans them
directly): they need no index, split any table evenly whatever its key looks
like (composite, NULL parts, text), and each chunk reads exactly its pages.
The last chunk is open-ended so rows appended after planning are not missed.

Rows leave the server as CSV through `COPY ... TO STDOUT` and are parsed by
polars in one call per chunk: no Python runs per row. Timestamps are sent as
epoch microseconds (integers parse far faster than dates) and typed here.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import ClassVar

import polars as pl
import psycopg

from kanal.connectors.postgres.config import PostgresConfig, PostgresSourceOptions
from kanal.connectors.postgres.db import connect, describe, qualified, translated
from kanal.connectors.postgres.cdc import CdcReader
from kanal.connectors.postgres.rows import read_rows
from kanal.connectors.postgres.cursor import CursorReader
from kanal.core.connector import Chunk, DeltaContext, DeltaKind, DeltaReader, EntityInfo, EntityOptions, Source
from kanal.core.errors import ConfigError
from kanal.core.model import ENTITIES

_MAX_FRAME_ROWS = 200_000


class PostgresSource(Source):
    entity_options: ClassVar[type[EntityOptions]] = PostgresSourceOptions
    config: PostgresConfig

    def __init__(self, config: PostgresConfig) -> None:
        super().__init__(config)
        self.system = describe(config)
        self._conn: psycopg.Connection | None = None

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
        where = f" where {opts.where}" if opts.where else ""
        with translated(self.system):
            conn = self._connection()
            pages = conn.execute(
                "select pg_relation_size(%s::regclass) / current_setting('block_size')::int", (table,)
            ).fetchone()
            rows = conn.execute(f"select count(*) from {table}{where}").fetchone()
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

    def snapshot(self, entity: str, options: EntityOptions, chunk: Chunk) -> Iterator[pl.DataFrame]:
        opts = self._opts(options)
        conditions = [f"ctid >= '({int(chunk.spec['from'])},0)'::tid"]
        if chunk.spec.get("to") is not None:
            conditions.append(f"ctid < '({int(chunk.spec['to'])},0)'::tid")
        if opts.where:
            conditions.append(f"({opts.where})")
        where = f"{self.system} ({opts.schema_name}.{opts.table}, chunk {chunk.id})"
        frame = read_rows(self._connection(), where, opts, self._columns(opts), " and ".join(conditions))
        for offset in range(0, frame.height, _MAX_FRAME_ROWS):
            yield frame.slice(offset, _MAX_FRAME_ROWS)

    def delta(self, context: DeltaContext) -> DeltaReader:
        kinds = {type(o.delta).__name__ if not isinstance(o.delta, str) else o.delta for o in context.entities.values()}
        if kinds == {"cdc"}:
            return CdcReader(self.config, self.system, context)
        if kinds == {"CursorDelta"}:
            return CursorReader(self, context)
        raise ConfigError(
            f"{self.system}: the postgres source reads either delta: cdc or delta: {{cursor: ...}} for all "
            f"entities of a job, not a mix ({', '.join(sorted(kinds))})"
        )

    def cleanup(self, context: DeltaContext) -> list[str]:
        reader = CdcReader(self.config, self.system, context)
        try:
            return reader.cleanup()
        finally:
            reader.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def columns(self, opts: PostgresSourceOptions) -> list[tuple[str, str]]:
        return self._columns(opts)

    @staticmethod
    def _opts(options: EntityOptions) -> PostgresSourceOptions:
        assert isinstance(options, PostgresSourceOptions)
        return options

