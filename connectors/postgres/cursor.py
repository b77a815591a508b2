"""Cursor deltas from PostgreSQL (`delta: {cursor: updated_at}`): the fetch behind `core.cursor`.

For tables that cannot use log-based capture (no `wal_level=logical`, a
view, a managed database without replication rights). The generic reader
(`core.cursor`) owns overlap, re-reads, paging, the clock bound and the
position; this module answers its one question with one query per page and
adds what only PostgreSQL can tell.

Tiebreak: the md5 of the row's text, not the key columns nor `ctid`. It
works for every relation (views and tables without a primary key have no
key to find; views have no `ctid`), it stays put when a row does not change
(`ctid` moves on every UPDATE and under VACUUM FULL, CLUSTER or pg_repack,
which could skip a row mid-paging), and two rows with the same text are the
same record for every later step anyway.

Identity: the primary key's text, where the relation has one (a view has
none): the generic reader then tells a re-read from a row that changed back
to an earlier content while its cursor stayed put.

Clock: `clock_timestamp()`, held back to the start of the oldest transaction
in this database that has written (has an xid) and not committed, read
*before* the page. Such a transaction's rows carry its start (`now()`) as
cursor, so the mark waits for it and its rows are found when it commits,
however long it runs. Read-only transactions (pg_dump, reports, Kanal's own
migration snapshot) hold nothing back: they write no cursor. What is left
to the overlap: a transaction that starts long before its first write and
commits between two polls; other roles' transactions, which PostgreSQL shows
only to members of pg_read_all_stats; prepared (two-phase) transactions.
`check` and `status` name every transaction open longer than an entity's
`overlap_s`, so the risk is visible before it costs a row.

A `timestamp without time zone` cursor is read as UTC; written in local time
east of UTC it looks like the future and is re-read (once handed out) until
the clock reaches it: prefer `timestamptz`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl
import psycopg

from kanal.connectors.postgres.config import PostgresSourceOptions
from kanal.connectors.postgres.db import connect, translated
from kanal.connectors.postgres.rows import read_rows
from kanal.core.connector import CursorDelta, DeltaContext
from kanal.core.cursor import IDENTITY, TIEBREAK, CursorPage, CursorReader
from kanal.core.errors import ConfigError

if TYPE_CHECKING:
    from kanal.connectors.postgres.source import PostgresSource

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MD5 = re.compile(r"^[0-9a-f]{32}$")

_CLOCK = """
select (extract(epoch from clock_timestamp()) * 1000000)::int8,
       (extract(epoch from min(xact_start)) * 1000000)::int8
from pg_stat_activity
where datname = current_database() and pid <> pg_backend_pid() and backend_xid is not null
"""

_PRIMARY_KEY = """
select array(select a.attname from unnest(i.indkey) k join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k)
from pg_index i where i.indrelid = %s::regclass and i.indisprimary
"""

_LONG_TRANSACTIONS = """
select pid, coalesce(nullif(application_name, ''), usename::text, 'unknown'), coalesce(state, 'unknown'),
       extract(epoch from clock_timestamp() - xact_start)::float8
from pg_stat_activity
where datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend'
  and xact_start < clock_timestamp() - make_interval(secs => %s)
order by xact_start
"""


class PostgresCursorReader(CursorReader):
    def __init__(self, source: PostgresSource, context: DeltaContext) -> None:
        self.source, self.system = source, source.system
        self.options: dict[str, PostgresSourceOptions] = {}
        for entity, options in context.entities.items():
            assert isinstance(options, PostgresSourceOptions) and isinstance(options.delta, CursorDelta)
            self.options[entity] = options
        super().__init__({e: o.delta for e, o in self.options.items()}, source.config.delta_rows)  # type: ignore[misc]
        self._conn: psycopg.Connection | None = None
        self._identities: dict[str, str | None] = {}

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.source.config)
            self._conn.autocommit = True
        return self._conn

    def check(self) -> None:
        self._check_columns()
        long = self._long_transactions()
        if long:
            raise ConfigError(
                f"{self.system}: {'; '.join(long)}. Rows such a transaction commits carry its start as cursor, older "
                "than the window a cursor delta re-reads, and can be missed: raise `overlap_s` in "
                "`delta: {cursor: ..., overlap_s: ...}` above the longest transaction the source runs, or end it"
            )

    def start(self) -> dict[str, Any]:
        self._check_columns()
        return super().start()

    def _check_columns(self) -> None:
        for entity, options in self.options.items():
            cursor = self.cursors[entity].cursor
            types = dict(self.source.columns(options))
            if cursor not in types:
                raise ConfigError(f"{self.system}: {entity}: cursor column {cursor!r} is not in {options.table}")
            if not types[cursor].startswith(("timestamp", "date")):
                raise ConfigError(f"{self.system}: {entity}: cursor column {cursor!r} must be a timestamp or a date")

    def fetch(self, entity: str, since: int, tiebreak: str | None, limit: int) -> CursorPage:
        options = self.options[entity]
        with translated(self.system):
            row = self._connection().execute(_CLOCK).fetchone()
        assert row is not None
        clock = min(v for v in row if v is not None)
        if limit == 0:
            return CursorPage(pl.DataFrame(), clock)
        columns = self.source.columns(options)
        cursor, at = f'"{self.cursors[entity].cursor}"', _timestamp(since)
        row_hash = "md5(row(" + ", ".join(f'"{name}"' for name, _ in columns) + ')::text) collate "C"'
        condition = f"{cursor} >= {at}"
        if tiebreak is not None:
            if not _MD5.match(tiebreak):
                raise ConfigError(f"{self.system}: {entity}: the stored position holds an invalid tiebreak {tiebreak!r}")
            condition += f" and ({cursor} > {at} or {row_hash} > '{tiebreak}')"
        if options.where:
            condition += f" and ({options.where})"
        where = f"{self.system} ({options.schema_name}.{options.table}, cursor {self.cursors[entity].cursor})"
        tail = f" order by {cursor}, {row_hash} limit {limit}"
        computed = {TIEBREAK: row_hash}
        identity = self._identity(entity)
        if identity is not None:
            computed[IDENTITY] = identity
        return CursorPage(read_rows(self._connection(), where, options, columns, condition, tail, computed), clock)

    def _identity(self, entity: str) -> str | None:
        """The SQL text of a row's primary key (None for a relation without one), looked up once per entity."""
        if entity not in self._identities:
            options = self.options[entity]
            with translated(self.system):
                row = self._connection().execute(_PRIMARY_KEY, (f'"{options.schema_name}"."{options.table}"',)).fetchone()
            names = row[0] if row else None
            self._identities[entity] = "row(" + ", ".join(f'"{n}"' for n in names) + ")::text" if names else None
        return self._identities[entity]

    def _long_transactions(self) -> list[str]:
        """Transactions open on the source longer than some entity's overlap, for people."""
        shortest = min(d.overlap_s for d in self.cursors.values())
        with translated(self.system):
            rows = self._connection().execute(_LONG_TRANSACTIONS, (shortest,)).fetchall()
        found = []
        for pid, application, state, seconds in rows:
            exposed = sorted(e for e, d in self.cursors.items() if d.overlap_s < seconds)
            overlaps = ", ".join(f"{e} ({self.cursors[e].overlap_s:g}s)" for e in exposed)
            found.append(
                f"a transaction open {seconds:.1f}s (pid {pid}, {application}, {state}) is longer than overlap_s of {overlaps}"
            )
        return found

    def status(self) -> dict[str, str]:
        return {"long transactions": "; ".join(self._long_transactions()) or "none"}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _timestamp(micros: int) -> str:
    """An exact timestamptz literal (no float rounding: equal cursors must compare equal)."""
    return f"'{(_EPOCH + timedelta(microseconds=micros)).isoformat()}'::timestamptz"
