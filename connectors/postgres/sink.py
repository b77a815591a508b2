"""PostgreSQL sink: bulk, idempotent, version-checked writes.

Two write paths, chosen by the state of the target table (see `ddl`):

* upsert (existing tables, deltas): COPY the batch into a temporary staging
  table, then `insert ... on conflict (key) do update ... where` the incoming
  version is not older than the stored one. Rows the version check refuses
  are counted as skipped-older.
* bulk load (tables this migration created): COPY straight into the table;
  the key is built once at the end (`finish`).

Deltas: each key's last row of a batch wins (rows of a key arrive in source
order). Delete rows remove the stored row unless it holds a newer version;
a delete that carries no version (an existing table compared by
`updated_at`: deletes carry only the key) applies, since it arrives after
every earlier change of its key. The version compared is `_kanal_version`
(the source position) when the table has that column (tables Kanal creates
do), else `version_column`.

A truncate row (it arrives once per partition) empties the table the first
time it arrives and records its version as the table's floor in
`_kanal_floor` (see `ddl`); every later record not newer than the floor is
skipped, so rows the truncate removed never come back from a partition that
lags or from a replay.

Rows travel as CSV produced by polars in one call; nested values (addresses)
are JSON-encoded for jsonb columns.
"""

from __future__ import annotations

import io
from typing import ClassVar

import polars as pl
import psycopg

from kanal.connectors.postgres import ddl
from kanal.connectors.postgres.config import PostgresConfig, PostgresSinkOptions
from kanal.connectors.postgres.db import connect, describe, qualified, reraise, translated
from kanal.core.connector import DELETE, OP, TRUNCATE, UPSERT, VERSION, EntityOptions, Sink, WriteResult
from kanal.core.errors import ConfigError, ConnectorError
from kanal.core.model import Entity
from kanal.core.model import entity as canonical
from kanal.core.validate import KEY

_COPY = "(FORMAT csv, NULL '\\N')"


class PostgresSink(Sink):
    entity_options: ClassVar[type[EntityOptions]] = PostgresSinkOptions
    config: PostgresConfig

    def __init__(self, config: PostgresConfig) -> None:
        super().__init__(config)
        self.system = describe(config)
        self._conn: psycopg.Connection | None = None
        self._targets: dict[str, ddl.Target] = {}
        self._staged: set[str] = set()
        self._floors: set[str] = set()

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.config)
            self._staged.clear()
        return self._conn

    def check(self) -> None:
        with translated(self.system):
            self._connection().execute("select 1")
            self._connection().rollback()

    def accepts(self, entity: str, options: EntityOptions, schema: pl.Schema) -> list[str]:
        """A missing table (create: false), or an existing one that cannot take these columns (nothing is created)."""
        opts = self._opts(options)
        name = f"{opts.schema_name}.{opts.table}"
        with translated(self.system):
            conn = self._connection()
            target = ddl.inspect(conn, opts.schema_name, opts.table)
            required = ddl.not_null_without_default(conn, opts.schema_name, opts.table) if target else []
            conn.rollback()
        if target is None:
            if opts.create:
                return []
            return [f"{self.system}: table {name} does not exist (create: false); create it, or set `create: true`"]
        return _shape_problems(self.system, name, canonical(entity), target, required, schema)

    def prepare(self, entity: str, options: EntityOptions) -> None:
        opts = self._opts(options)
        model = canonical(entity)
        with translated(self.system):
            conn = self._connection()
            target = ddl.inspect(conn, opts.schema_name, opts.table)
            if target is None:
                if not opts.create:
                    raise ConfigError(f"{self.system}: table {opts.schema_name}.{opts.table} does not exist (create: false)")
                ddl.create_table(conn, qualified(opts.schema_name, opts.table), model)
                target = ddl.inspect(conn, opts.schema_name, opts.table)
            conn.commit()
        assert target is not None
        if not target.bulk_load and not target.conflict:
            raise ConfigError(
                f"{self.system}: table {opts.schema_name}.{opts.table} has no primary key or unique index; "
                f"upserts need one (e.g. on {', '.join(model.key)})"
            )
        self._targets[entity] = target

    def write(self, entity: str, options: EntityOptions, frame: pl.DataFrame, batch_id: str) -> WriteResult:
        target = self._targets[entity]
        version = self._version(target, options, frame)
        if target.bulk_load is False and frame.get_column(KEY).is_duplicated().any():
            # One statement cannot update a row twice: keep each key's last row.
            if OP not in frame.columns and version:
                frame = frame.sort(version, nulls_last=False)
            frame = frame.unique(subset=[KEY], keep="last", maintain_order=True)
        ops = set(frame.get_column(OP).unique().to_list()) if OP in frame.columns else None
        if ops is not None:
            self._check_changes(entity, options, target, ops)
        conn = self._connection()
        try:
            if not target.bulk_load:
                self._stage(conn, entity, target)  # may commit: before the truncate floor is locked
            with conn.cursor() as cur:
                written = 0
                rows = frame
                if ops is not None:
                    written = self._truncate(cur, options, target, rows) if TRUNCATE in ops else 0
                    rows = self._newer_than_floor(cur, options, rows)
                mixed = ops is not None and ops != {UPSERT}  # a live batch is mostly upserts only: no filtering then
                upserts = rows.filter(pl.col(OP) == UPSERT) if mixed else rows
                deletes = rows.filter(pl.col(OP) == DELETE) if mixed else rows.clear()
                if not upserts.is_empty():
                    written += self._upsert(cur, entity, target, upserts, version, then_deletes=not deletes.is_empty())
                if not deletes.is_empty():
                    written += self._delete(cur, entity, target, deletes, version)
            conn.commit()
        except psycopg.Error as exc:
            _rollback(conn)
            reraise(self.system, exc)
        return WriteResult(written=written, skipped_older=frame.height - written)

    def _check_changes(self, entity: str, options: EntityOptions, target: ddl.Target, ops: set[str]) -> None:
        """Refuse what this sink cannot apply (`ops`: the batch's operations); ready the truncate floor once per entity."""
        unknown = sorted(str(op) for op in ops - {UPSERT, DELETE, TRUNCATE})
        if unknown:
            raise ConnectorError(self.system, f"{target.table}: unknown change operation(s) {unknown} for {entity}")
        if target.bulk_load and ops != {UPSERT}:
            raise ConfigError(f"{self.system}: {target.table} is still being bulk-loaded; run the migration to the end first")
        if entity not in self._floors:
            opts = self._opts(options)
            with translated(self.system):
                ddl.ensure_floor(self._connection(), opts.schema_name, opts.table)
            self._floors.add(entity)

    def _truncate(self, cur: psycopg.Cursor, options: EntityOptions, target: ddl.Target, frame: pl.DataFrame) -> int:
        """Apply the newest truncate of the batch once, whichever partition brings it first.

        The floor row is locked, so no write of another partition can slip an
        older record in between; rows of newer versions can only follow the
        truncate on their own partition, so none exists yet.
        """
        newest = frame.filter(pl.col(OP) == TRUNCATE).get_column(VERSION).max()
        if newest is None:
            return 0
        opts = self._opts(options)
        floor = ddl.floor_table(opts.schema_name)
        row = cur.execute(f"select version from {floor} where target = %s for update", (opts.table,)).fetchone()
        if row is not None and newest <= row[0]:
            return 0
        older = f' where "{VERSION}" is null or "{VERSION}" <= %s' if VERSION in target.columns else ""
        cur.execute(f"delete from {target.table}{older}", (newest,) if older else None)
        cur.execute(
            f"insert into {floor} values (%s, %s) on conflict (target) do update set version = excluded.version",
            (opts.table, newest),
        )
        return 1

    def _newer_than_floor(self, cur: psycopg.Cursor, options: EntityOptions, frame: pl.DataFrame) -> pl.DataFrame:
        """Drop records a truncate already removed (they arrive late from other partitions, or again).

        The floor row stays share-locked until commit, so a truncate applied
        by another writer waits for this batch, and deletes what it wrote.
        """
        opts = self._opts(options)
        row = cur.execute(
            f"select version from {ddl.floor_table(opts.schema_name)} where target = %s for key share", (opts.table,)
        ).fetchone()
        floor = row[0] if row else 0
        return frame.filter(pl.col(VERSION).is_null() | (pl.col(VERSION) > floor)) if floor else frame

    def _upsert(
        self, cur: psycopg.Cursor, entity: str, target: ddl.Target, frame: pl.DataFrame, version: str | None, *,
        then_deletes: bool = False,
    ) -> int:  # fmt: skip
        """Upsert through the stage, emptied for deletes that follow in the transaction (the commit empties it anyway)."""
        columns = [c for c in frame.columns if c in target.columns]
        data = _csv(frame.select(columns))
        names = ", ".join(f'"{c}"' for c in columns)
        if target.bulk_load:
            with cur.copy(f"copy {target.table} ({names}) from stdin {_COPY}") as copy:
                copy.write(data)
            return frame.height
        stage = self._stage(cur.connection, entity, target)
        with cur.copy(f"copy {stage} ({names}) from stdin {_COPY}") as copy:
            copy.write(data)
        cur.execute(_upsert_sql(target, stage, columns, version))
        written = cur.rowcount
        if then_deletes:
            cur.execute(f"truncate {stage}")
        return written

    def _delete(self, cur: psycopg.Cursor, entity: str, target: ddl.Target, frame: pl.DataFrame, version: str | None) -> int:
        columns = [c for c in (*target.conflict, *([version] if version else [])) if c in frame.columns]
        missing = [c for c in target.conflict if c not in columns]
        if missing:
            raise ConfigError(f"{target.table}: key columns {missing} are not in the deletes being applied")
        stage = self._stage(cur.connection, entity, target)
        names = ", ".join(f'"{c}"' for c in columns)
        with cur.copy(f"copy {stage} ({names}) from stdin {_COPY}") as copy:
            copy.write(_csv(frame.select(columns)))
        cur.execute(f"analyze {stage}")  # a handful of keys: the planner should walk the key index
        # A delete without the version (an existing table's `updated_at`: deletes carry only the key)
        # still applies: it arrives after every earlier change of its key.
        guard = f' and (t."{version}" is null or s."{version}" is null or s."{version}" >= t."{version}")' if version else ""
        deleted = 0
        # `is not distinct from` cannot use an index; one statement per pattern of NULL key parts can.
        for pattern in frame.select([pl.col(c).is_null() for c in target.conflict]).unique().iter_rows():
            match = " and ".join(
                f't."{c}" is null and s."{c}" is null' if null else f't."{c}" = s."{c}"'
                for c, null in zip(target.conflict, pattern, strict=True)
            )
            cur.execute(f"delete from {target.table} t using {stage} s where {match}{guard}")
            deleted += cur.rowcount
        return deleted  # the commit empties the stage

    def read_back(self, entity: str, options: EntityOptions) -> pl.DataFrame:
        """The table's canonical columns (and `_kanal_version`, NULL without it) as text, one `COPY` out."""
        opts = self._opts(options)
        model = canonical(entity)
        with translated(self.system):
            conn = self._connection()
            target = ddl.inspect(conn, opts.schema_name, opts.table)
            columns = [f.name for f in model.fields if target is None or f.name in target.columns]
            empty = pl.DataFrame(schema={**{c: pl.String for c in columns}, VERSION: pl.Int64})
            if target is None:
                conn.rollback()
                return empty
            version = f'"{VERSION}"::text' if VERSION in target.columns else "null::text"
            names = ", ".join(f'"{c}"::text' for c in columns)
            buf = io.BytesIO()
            with conn.cursor() as cur:
                query = f"copy (select {names}, {version} from {target.table}) to stdout {_COPY}"
                with cur.copy(query) as copy:
                    for data in copy:
                        buf.write(data)
            conn.rollback()
        if not buf.tell():
            return empty
        names_out = [*columns, VERSION]
        frame = pl.read_csv(
            buf.getvalue(), has_header=False, new_columns=names_out, schema={c: pl.String for c in names_out},
            null_values="\\N",
        )  # fmt: skip
        return frame.with_columns(pl.col(VERSION).cast(pl.Int64))

    def finish(self, entity: str, options: EntityOptions) -> str | None:
        target = self._targets[entity]
        if not target.bulk_load:
            return None
        opts = self._opts(options)
        model = canonical(entity)
        removed = 0
        with translated(self.system):
            conn = self._connection()
            conn.rollback()  # a retried attempt starts afresh, not in the transaction the failed one left aborted
            # Every worker of a shared migration builds the keys once it sees the migration complete, often at the
            # same moment: one at a time, or two removing the same duplicates deadlock.
            conn.execute("select pg_advisory_xact_lock(hashtext(%s))", [target.table])
            try:
                with conn.transaction():
                    conn.execute(ddl.key_ddl(target.table, opts.table, model))
            except (psycopg.errors.DuplicateTable, psycopg.errors.InvalidTableDefinition):
                conn.rollback()  # another worker of the job built it first
                self._targets[entity] = ddl.inspect(conn, opts.schema_name, opts.table) or target
                conn.commit()
                return f"key on {opts.table} built by another worker"
            except psycopg.errors.UniqueViolation:
                removed = conn.execute(ddl.dedupe_sql(target.table, model.key, self._configured_version(target, options))).rowcount
                conn.execute(ddl.key_ddl(target.table, opts.table, model))
            conn.execute(f"comment on table {target.table} is null")
            conn.commit()
        self._targets[entity] = ddl.inspect(self._connection(), opts.schema_name, opts.table) or target
        self._connection().commit()
        return f"key built on {opts.table}" + (f", {removed} re-delivered duplicates removed" if removed else "")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _stage(self, conn: psycopg.Connection, entity: str, target: ddl.Target) -> str:
        """A temporary table shaped like the target (every column), emptied after each use."""
        stage = f'"_kanal_stage_{entity}"'
        if entity not in self._staged:
            conn.execute(f"drop table if exists {stage}")
            conn.execute(f"create temp table {stage} on commit delete rows as select * from {target.table} with no data")
            conn.commit()
            self._staged.add(entity)
        return stage

    @staticmethod
    def _version(target: ddl.Target, options: EntityOptions, frame: pl.DataFrame) -> str | None:
        """`_kanal_version` when both the batch and the table have it, else the configured column."""
        if VERSION in target.columns and VERSION in frame.columns:
            return VERSION
        return PostgresSink._configured_version(target, options)

    @staticmethod
    def _configured_version(target: ddl.Target, options: EntityOptions) -> str | None:
        column = PostgresSink._opts(options).version_column
        return column if column and column in target.columns else None

    @staticmethod
    def _opts(options: EntityOptions) -> PostgresSinkOptions:
        assert isinstance(options, PostgresSinkOptions)
        return options


def _upsert_sql(target: ddl.Target, stage: str, columns: list[str], version: str | None) -> str:
    missing = [c for c in target.conflict if c not in columns]
    if missing:
        raise ConfigError(f"{target.table}: key columns {missing} are not in the records being written")
    names = ", ".join(f'"{c}"' for c in columns)
    keys = ", ".join(f'"{c}"' for c in target.conflict)
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in target.conflict)
    action = f"do update set {updates}" if updates else "do nothing"
    guard = f' where {target.table}."{version}" is null or excluded."{version}" >= {target.table}."{version}"' if version and updates else ""
    return f"insert into {target.table} ({names}) select {names} from {stage} on conflict ({keys}) {action}{guard}"


def _csv(frame: pl.DataFrame) -> bytes:
    nested = [name for name, dtype in frame.schema.items() if isinstance(dtype, pl.Struct | pl.List)]
    if nested:
        frame = frame.with_columns([pl.col(n).struct.json_encode() for n in nested])
    buf = io.BytesIO()
    frame.write_csv(buf, include_header=False, null_value="\\N")
    return buf.getvalue()


def _shape_problems(
    system: str, name: str, entity: Entity, target: ddl.Target, required: list[str], schema: pl.Schema
) -> list[str]:
    """Why writes of frames with `schema` into an existing table would fail or lose values, each with its fix."""
    incoming = [c for c in schema if not c.startswith("_kanal_")]
    problems = []
    if not target.bulk_load and not target.conflict:
        problems.append(f"{system}: table {name} has no primary key or unique index; upserts need one (e.g. on {', '.join(entity.key)})")
    lacking_key = [c for c in target.conflict if c not in schema]
    if lacking_key:
        problems.append(f"{system}: table {name}: its key column(s) {', '.join(lacking_key)} get no value; map a field to them (sink mapping)")
    absent = [c for c in incoming if c not in target.columns]
    if absent:
        add = ", ".join(f'add column "{c}" {ddl.pg_type(ddl.values_of(c, schema[c], entity))}' for c in absent)
        problems.append(
            f"{system}: table {name} has no column(s) {', '.join(absent)} (their values would be lost); "
            f"alter table {name} {add}; or leave them out with a sink mapping"
        )
    unfilled = [c for c in required if c not in schema]
    if unfilled:
        problems.append(
            f"{system}: table {name}: NOT NULL column(s) {', '.join(unfilled)} without a default get no value; "
            "give them a default, or map a field to them (sink mapping)"
        )
    for column in incoming:
        pg = target.columns.get(column)
        values = ddl.values_of(column, schema[column], entity)
        if pg is not None and not ddl.holds(pg, values):
            problems.append(
                f"{system}: table {name}: column {column} is {pg} but receives {values} values; "
                f"alter table {name} alter column \"{column}\" type {ddl.pg_type(values)}, or cast it in a sink mapping"
            )
    return problems


def _rollback(conn: psycopg.Connection) -> None:
    try:
        conn.rollback()
    except psycopg.Error:
        conn.close()
