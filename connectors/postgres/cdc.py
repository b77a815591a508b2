"""Log-based change capture from PostgreSQL (`delta: cdc`), over `pgoutput`.

Kanal owns one publication and one logical replication slot per job (named
`kanal_<job>` unless configured). The slot is the position: `start` creates
it *before* a snapshot, so every change committed after that point is in the
slot (gap-free handover). Changes are *peeked*, not consumed; `confirm`
advances the slot only to what the engine reports delivered, so a crash
re-reads the rest and WAL is released as soon as it is safe.

Why the SQL interface and not the streaming replication protocol: it needs
no replication connection (psycopg 3 has none), works through any pooler,
and each peek reads complete transactions. A peek starts at the slot's
confirmed position, so transactions already handed out (end LSN at or below
the reader's position) are skipped.

The version of a change is its LSN: per row, a later change always has a
higher LSN (the second writer waits for the first to commit), so sinks can
refuse older versions. Snapshot rows get version 0, older than any change.

When the watched tables are quiet, a heartbeat (a transactional logical
message) gives the slot something to confirm, so the WAL written by other
tables is not retained forever.

Only one process reads a slot: the reader holds a session advisory lock; in
a scale-out deployment the other processes stand by and take over when the
holder's connection goes away.
"""

from __future__ import annotations

import time
from typing import Any

import polars as pl
import psycopg

from kanal.connectors.postgres.config import PostgresConfig, PostgresSourceOptions
from kanal.connectors.postgres.db import connect, qualified, translated
from kanal.connectors.postgres.pgoutput import DELETE, UNCHANGED, Change, Decoder, Relation, lsn_int, lsn_text
from kanal.core.connector import DELETE as OP_DELETE
from kanal.core.connector import OP, UPSERT, VERSION, Changes, DeltaContext, DeltaReader
from kanal.core.errors import ConfigError, ConnectorError

_TIMESTAMPTZ, _TIMESTAMP, _DATE = 1184, 1114, 1082


def default_name(job: str) -> str:
    return "kanal_" + job.replace("-", "_")


class CdcReader(DeltaReader):
    def __init__(self, config: PostgresConfig, system: str, context: DeltaContext) -> None:
        self.config, self.system = config, system
        self.slot = config.slot or default_name(context.job)
        self.publication = config.publication or default_name(context.job)
        self.entities: dict[tuple[str, str], str] = {}
        for entity, options in context.entities.items():
            assert isinstance(options, PostgresSourceOptions)
            if options.where:
                raise ConfigError(f"{system}: {entity}: 'where' cannot be combined with delta: cdc (changes are not filtered)")
            self.entities[(options.schema_name, options.table)] = entity
        self._conn: psycopg.Connection | None = None
        self._decoder = Decoder()
        self._leader = False
        self._created = False
        self._unconfirmed_rows = 0  # rows a peek returns before reaching new changes (the slot restarts there)
        self._handed_out = 0
        self._last_advance = time.monotonic()

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.config)
            self._conn.autocommit = True
            self._leader = False
        return self._conn

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = self._connection().execute(sql, params).fetchone()
        return None if row is None else row[0]

    # setup -----------------------------------------------------------------

    def check(self) -> None:
        with translated(self.system):
            level = self._one("show wal_level")
            if level != "logical":
                raise ConfigError(
                    f"{self.system}: wal_level is '{level}', but delta: cdc needs 'logical'. Run "
                    "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL "
                    "(or use delta: {cursor: <change column>} instead)"
                )
            for schema, table in self.entities:
                self._check_identity(schema, table)

    def start(self) -> dict[str, Any]:
        self.check()
        with translated(self.system):
            tables = ", ".join(qualified(s, t) for s, t in self.entities)
            if self._one("select 1 from pg_publication where pubname = %s", (self.publication,)):
                self._connection().execute(f'alter publication "{self.publication}" set table {tables}')
            else:
                self._connection().execute(f'create publication "{self.publication}" for table {tables}')
            row = self._connection().execute(
                "select confirmed_flush_lsn::text, database, current_database() from pg_replication_slots "
                "where slot_name = %s",
                (self.slot,),
            ).fetchone()
            if row is not None and row[1] != row[2]:
                raise ConfigError(
                    f"{self.system}: replication slot {self.slot} belongs to database {row[1]} (slot names are "
                    f"server-wide); set `slot:` (and `publication:`) in the source config to names of this job's own"
                )
            lsn = row[0] if row else None
            if lsn is None:
                try:
                    lsn = self._one("select lsn::text from pg_create_logical_replication_slot(%s, 'pgoutput')", (self.slot,))
                    self._created = True
                except psycopg.errors.DuplicateObject:  # another worker of the job created it just now
                    lsn = self._one("select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s", (self.slot,))
        return {"lsn": lsn}

    def _check_identity(self, schema: str, table: str) -> None:
        row = self._connection().execute(
            "select c.relreplident, exists(select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary) "
            "from pg_class c where c.oid = %s::regclass",
            (qualified(schema, table),),
        ).fetchone()
        if row is None:
            raise ConfigError(f"{self.system}: table {schema}.{table} does not exist")
        identity, has_pk = row
        if identity == "n" or (identity == "d" and not has_pk):
            raise ConfigError(
                f"{self.system}: table {schema}.{table} has no replica identity, so its deletes cannot be "
                f"captured (and PostgreSQL refuses deletes on published tables without one). Run "
                f"ALTER TABLE {schema}.{table} REPLICA IDENTITY FULL; or give it a primary key"
            )

    def resumable(self, position: dict[str, Any]) -> bool:
        """A slot created just now cannot hold the changes since an earlier stored position."""
        return not self._created

    # reading ---------------------------------------------------------------

    def _lead(self) -> bool:
        if not self._leader:
            self._leader = bool(self._one("select pg_try_advisory_lock(hashtext(%s))", (f"kanal:{self.slot}",)))
        return self._leader

    def read(self, position: dict[str, Any]) -> Changes:
        after = lsn_int(position["lsn"])
        with translated(self.system):
            if not self._lead():
                return Changes({}, position)  # another worker reads the slot; stand by
            changes: list[Change] = []
            end = after
            limit = self.config.delta_rows + self._unconfirmed_rows
            while True:
                rows = self._connection().execute(
                    "select lsn::text, xid, data from pg_logical_slot_peek_binary_changes(%s, NULL, %s, "
                    "'proto_version', '1', 'publication_names', %s, 'messages', 'true')",
                    (self.slot, limit, self.publication),
                ).fetchall()
                for txn in self._decoder.transactions(rows, after):
                    changes.extend(txn.changes)
                    end = txn.end_lsn
                if changes or len(rows) < limit:
                    break
                limit *= 2  # only changes handed out before fit under the limit: look further
            self._unconfirmed_rows = len(rows)
            self._handed_out = end
            if end == after and time.monotonic() - self._last_advance >= self.config.heartbeat_s:
                self._connection().execute("select pg_logical_emit_message(true, 'kanal.heartbeat', '')")
                self._last_advance = time.monotonic()
        if end > after:
            self._last_advance = time.monotonic()
        return Changes(self._frames(changes), {"lsn": lsn_text(end)})

    def _frames(self, changes: list[Change]) -> dict[str, pl.DataFrame]:
        by_relation: dict[int, list[Change]] = {}
        for change in changes:
            by_relation.setdefault(change.relation.oid, []).append(change)
        frames: dict[str, list[pl.DataFrame]] = {}
        for group in by_relation.values():
            relation = group[0].relation
            entity = self.entities.get((relation.schema, relation.name))
            if entity is not None:
                frames.setdefault(entity, []).append(self._frame(relation, group))
        return {e: pl.concat(f, how="diagonal_relaxed") if len(f) > 1 else f[0] for e, f in frames.items()}

    def _frame(self, relation: Relation, changes: list[Change]) -> pl.DataFrame:
        columns: list[list[object]] = [[] for _ in relation.columns]
        for change in changes:
            for i, value in enumerate(change.values):
                columns[i].append(self._unchanged(change, i) if value is UNCHANGED else value)
        frame = pl.DataFrame({n: pl.Series(n, c, pl.String) for n, c in zip(relation.columns, columns, strict=True)})
        frame = frame.with_columns(
            [_temporal(pl.col(n), t).alias(n) for n, t in zip(relation.columns, relation.types, strict=True) if t in (_TIMESTAMPTZ, _TIMESTAMP, _DATE)]
        )
        return frame.with_columns(
            pl.Series(OP, [OP_DELETE if c.kind == DELETE else UPSERT for c in changes], pl.String),
            pl.Series(VERSION, [c.lsn for c in changes], pl.Int64),
        )

    def _unchanged(self, change: Change, index: int) -> object:
        """An unchanged TOASTed value, which PostgreSQL does not send.

        Under REPLICA IDENTITY FULL the old tuple has it. Otherwise it is read
        from the table by the row's key: the row may be newer than this change
        by then, which is harmless (the later changes follow, with higher
        versions); a row deleted since yields NULL until its delete arrives.
        """
        if change.old is not None and change.old[index] is not UNCHANGED:
            return change.old[index]
        r = change.relation
        if not r.key:
            raise ConnectorError(
                self.system,
                f"an update of {r.schema}.{r.name} left the large (TOASTed) column {r.columns[index]!r} unchanged, "
                f"PostgreSQL did not send it, and the table has no key to read it by. Run "
                f"ALTER TABLE {r.schema}.{r.name} REPLICA IDENTITY FULL;",
            )
        match = " and ".join(f'"{r.columns[k]}"::text = %s' for k in r.key)
        row = self._connection().execute(
            f'select "{r.columns[index]}"::text from {qualified(r.schema, r.name)} where {match}',
            tuple(change.values[k] for k in r.key),
        ).fetchone()
        return None if row is None else row[0]

    # position --------------------------------------------------------------

    def confirm(self, position: dict[str, Any]) -> None:
        with translated(self.system):
            if self._lead():
                self._connection().execute("select pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, position["lsn"]))
                if lsn_int(position["lsn"]) >= self._handed_out:
                    self._unconfirmed_rows = 0  # the next peek starts at new changes

    def describe(self, position: dict[str, Any]) -> str:
        return f"LSN {position['lsn']}"

    def status(self) -> dict[str, str]:
        with translated(self.system):
            row = self._connection().execute(
                "select confirmed_flush_lsn::text, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), active "
                "from pg_replication_slots where slot_name = %s",
                (self.slot,),
            ).fetchone()
        if row is None:
            return {"slot": f"{self.slot} (not created yet)"}
        return {"slot": self.slot, "slot confirmed": row[0], "retained WAL": row[1]}

    def cleanup(self) -> list[str]:
        done = []
        with translated(self.system):
            if self._one("select 1 from pg_replication_slots where slot_name = %s", (self.slot,)):
                self._connection().execute("select pg_drop_replication_slot(%s)", (self.slot,))
                done.append(f"dropped replication slot {self.slot}")
            if self._one("select 1 from pg_publication where pubname = %s", (self.publication,)):
                self._connection().execute(f'drop publication "{self.publication}"')
                done.append(f"dropped publication {self.publication}")
        return done or [f"nothing to drop (no slot {self.slot}, no publication {self.publication})"]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _temporal(col: pl.Expr, oid: int) -> pl.Expr:
    """Text timestamps and dates (session TimeZone is UTC) as UTC datetimes; 'infinity' becomes NULL."""
    if oid == _DATE:
        return col.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if oid == _TIMESTAMP:
        return col.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us", strict=False).dt.replace_time_zone("UTC")
    text = col.str.replace(r"([+-]\d\d)$", "${1}:00")
    return text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f%:z", time_unit="us", time_zone="UTC", strict=False)
