"""Target tables: creating them from the canonical schema and reading what exists.

A table Kanal creates for a migration starts *without* its unique key and
carries the comment `kanal:bulk-load`: COPY into an unindexed table is about
four times faster than maintaining a five-column unique index row by row
(measured: 637k vs 163k rows/s). When the migration has delivered every
record, `finish` removes duplicates left by re-deliveries (keeping the newest
version), builds the key, and clears the comment. The marker lives in the
target itself, so a resumed run, or a later one, knows the table's state
without any connector-side bookkeeping.

Streaming also keeps one small table per target schema, `_kanal_floor`:
per target table, the version of the last truncate applied. It is created on
the first write of changes and read (share-locked) by every such write.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import psycopg

from kanal.core.connector import VERSION
from kanal.core.model import Entity, Kind

BULK_MARK = "kanal:bulk-load"
FLOOR = "_kanal_floor"
"""Per target table of a schema, the version of the last truncate applied to it."""

_PG_TYPES = {
    Kind.TEXT: "text",
    Kind.DECIMAL: "numeric",
    Kind.FLOAT: "double precision",
    Kind.BOOL: "boolean",
    Kind.DATETIME: "timestamptz",
    Kind.JSON: "jsonb",
    Kind.CURRENCY: "text",
    Kind.ENUM: "text",
    Kind.ADDRESSES: "jsonb",
}


_NUMBERS = frozenset({"decimal", "integer", "float"})
_HOLDS: dict[str, frozenset[str]] = {
    "numeric": _NUMBERS,
    "double precision": _NUMBERS,
    "real": _NUMBERS,
    "integer": frozenset({"integer"}),
    "bigint": frozenset({"integer"}),
    "smallint": frozenset({"integer"}),
    "boolean": frozenset({"bool"}),
    "timestamp with time zone": frozenset({"datetime"}),
    "timestamp without time zone": frozenset({"datetime"}),
    "date": frozenset({"datetime"}),
    "json": frozenset({"json"}),
    "jsonb": frozenset({"json"}),
}
"""What values each column type takes (text types take everything; unknown types are not judged)."""
_VALUES = {
    Kind.DECIMAL: "decimal", Kind.FLOAT: "float", Kind.BOOL: "bool", Kind.DATETIME: "datetime",
    Kind.JSON: "json", Kind.ADDRESSES: "json",
}  # fmt: skip


def values_of(name: str, dtype: pl.DataType, entity: Entity) -> str:
    """What a column of incoming frames holds: its canonical kind, or what its polars type says (sink mappings)."""
    known = {f.name: f for f in entity.fields}
    if name in known and known[name].dtype == dtype:
        return _VALUES.get(known[name].kind, "text")
    if dtype.is_integer():
        return "integer"
    if dtype.is_float():
        return "float"
    if dtype == pl.Boolean:
        return "bool"
    if dtype.is_temporal():
        return "datetime"
    if isinstance(dtype, pl.Struct | pl.List):
        return "json"
    return "text"


def holds(pg_type: str, values: str) -> bool:
    """Whether a column of `pg_type` takes every value of that kind (text into a numeric column does not)."""
    allowed = _HOLDS.get(pg_type)
    return allowed is None or values in allowed


def pg_type(kind_values: str) -> str:
    """A column type that takes such values, for the fix Kanal suggests."""
    return {"decimal": "numeric", "integer": "bigint", "float": "double precision", "bool": "boolean",
            "datetime": "timestamptz", "json": "jsonb"}.get(kind_values, "text")  # fmt: skip


def not_null_without_default(conn: psycopg.Connection, schema: str, name: str) -> list[str]:
    """Columns every insert must fill: NOT NULL, no default, not generated or identity."""
    rows = conn.execute(
        "select column_name from information_schema.columns where table_schema = %s and table_name = %s "
        "and is_nullable = 'NO' and column_default is null and is_identity = 'NO' and is_generated = 'NEVER' "
        "order by ordinal_position",
        (schema, name),
    ).fetchall()
    return [r[0] for r in rows]


@dataclass(frozen=True)
class Target:
    """What the sink learned about an existing table."""

    table: str  # qualified, quoted
    columns: dict[str, str]  # name -> data type
    conflict: tuple[str, ...]  # columns of the primary key / unique index used for upserts
    bulk_load: bool


def create_table(conn: psycopg.Connection, table: str, entity: Entity) -> None:
    """The canonical fields plus `_kanal_version`, the source version of each row (LSN, cursor)."""
    cols = ", ".join(
        [f'"{f.name}" {_PG_TYPES[f.kind]}{" not null" if f.required else ""}' for f in entity.fields]
        + [f'"{VERSION}" bigint']
    )
    conn.execute(f"create table if not exists {table} ({cols})")
    conn.execute(f"comment on table {table} is '{BULK_MARK}'")


def key_ddl(table: str, name: str, entity: Entity) -> str:
    """Primary key when every key part is required, else a unique constraint that treats NULL as a value."""
    cols = ", ".join(f'"{k}"' for k in entity.key)
    if all(entity.field(k).required for k in entity.key):
        return f'alter table {table} add constraint "{name}_pkey" primary key ({cols})'
    return f'alter table {table} add constraint "{name}_key" unique nulls not distinct ({cols})'


def dedupe_sql(table: str, key: tuple[str, ...], version: str | None) -> str:
    """Delete all but the newest row of every key (only needed after re-deliveries)."""
    part = ", ".join(f'"{k}"' for k in key)
    order = f'"{version}" desc nulls last' if version else "ctid"
    return (
        f"delete from {table} where ctid = any(array(select ctid from (select ctid, row_number() over "
        f"(partition by {part} order by {order}) as rn from {table}) d where rn > 1))"
    )


def floor_table(schema: str) -> str:
    return f'"{schema}"."{FLOOR}"'


def ensure_floor(conn: psycopg.Connection, schema: str, table: str) -> None:
    """The floor table of `schema` and the row of `table` (version 0: never truncated)."""
    floor = floor_table(schema)
    try:
        # Writers of several sinks prepare it at their first change; `if not exists` alone races on the
        # table's row type ("type ... already exists"), so creators take turns.
        conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (floor,))
        conn.execute(f"create table if not exists {floor} (target text primary key, version bigint not null)")
        conn.commit()
    except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject):
        conn.rollback()  # created by a writer that does not take the lock (an older Kanal)
    conn.execute(f"insert into {floor} values (%s, 0) on conflict do nothing", (table,))
    conn.commit()


def inspect(conn: psycopg.Connection, schema: str, name: str) -> Target | None:
    table = f'"{schema}"."{name}"'
    rows = conn.execute(
        "select column_name, data_type from information_schema.columns "
        "where table_schema = %s and table_name = %s order by ordinal_position",
        (schema, name),
    ).fetchall()
    if not rows:
        return None
    indexes = conn.execute(
        """select i.indisprimary, array(select a.attname from unnest(i.indkey) k
                  join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k)
           from pg_index i where i.indrelid = %s::regclass and i.indisunique and i.indpred is null
           order by i.indisprimary desc""",
        (table,),
    ).fetchall()
    comment = conn.execute("select obj_description(%s::regclass, 'pg_class')", (table,)).fetchone()
    conflict = tuple(indexes[0][1]) if indexes else ()
    return Target(table, {r[0]: r[1] for r in rows}, conflict, bool(comment and comment[0] == BULK_MARK))
