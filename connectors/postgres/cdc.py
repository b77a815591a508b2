"""Log-based change capture from PostgreSQL (`delta: cdc`), over `pgoutput`.

Kanal owns one publication and one logical replication slot per job (named
`kanal_<job>` unless configured). The slot is the position: `start` creates
it *before* a snapshot, so every change committed after that point is in the
slot (gap-free handover). Changes are *peeked*, not consumed; `confirm`
advances the slot only to what the engine reports delivered, so a crash
re-reads the rest and WAL is released as soon as it is safe.

Why the SQL interface and not the streaming replication protocol: it needs
no replication connection (psycopg 3 has none) and works through any pooler.
A peek starts at the slot's confirmed position and returns whole
transactions, so what was handed out before (see `pgoutput.Position`) is
skipped without being decoded. Reads stay bounded inside a big transaction:
the peek is streamed through a server-side cursor and a read stops after
`delta_rows` changes, at a position inside the transaction; the slot is
advanced only to transaction ends.

The version of a change comes from its transaction's commit LSN (see
`pgoutput`); snapshot rows carry the start LSN, older than every change in
the slot.

What reaches the entities:

* The publication publishes partitioned tables through their root, so a
  change of any partition arrives under the table the entity names (a leaf
  truncate is the exception: PostgreSQL does not publish it). Changes decoded
  from before that setting still name the partition; they are routed to the
  entity of its root. A table no entity reads is skipped, with a warning.
* One table may feed several entities: each gets every change.
* An update that sends the old key (the key changed) or the old row (REPLICA
  IDENTITY FULL) yields the old image as a `BEFORE` row just before the new
  one; `core.changes` turns it into a delete of the old key when the key
  changed. `check` refuses tables whose replica identity cannot show the
  entity's key.
* A TRUNCATE becomes one `TRUNCATE` row, or stops the stream when the entity
  says `truncate: fail`.

When the watched tables are quiet, a heartbeat (a transactional logical
message) gives the slot something to confirm, so the WAL written by other
tables is not retained forever.

Only one process reads a slot: the reader holds a session advisory lock; in
a scale-out deployment the other processes stand by and take over when the
holder's connection goes away.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import polars as pl
import psycopg

from kanal.connectors.postgres.config import PostgresConfig, PostgresSourceOptions
from kanal.connectors.postgres.db import connect, qualified, translated
from kanal.connectors.postgres.pgoutput import (
    DELETE,
    INSERT,
    TRUNCATE,
    UNCHANGED,
    UPDATE,
    Change,
    Decoder,
    Position,
    Read,
    Relation,
    TooManyTruncates,
    lsn_text,
)
from kanal.core import connector as ops
from kanal.core.connector import OP, VERSION, Changes, DeltaContext, DeltaReader
from kanal.core.errors import ConfigError, ConnectorError
from kanal.core.model import entity as canonical

log = logging.getLogger("kanal.cdc")
_TIMESTAMPTZ, _TIMESTAMP, _DATE = 1184, 1114, 1082
_FETCH_ROWS = 5_000
_PEEK = (
    "select lsn::text, xid, data from pg_logical_slot_peek_binary_changes(%s, NULL, %s, "
    "'proto_version', '1', 'publication_names', %s, 'messages', 'true')"
)
_PUBLISH = "publish = 'insert, update, delete, truncate', publish_via_partition_root = true"
# The table and its leaf partitions (rows live in leaves; each needs its own replica identity).
_IDENTITIES = """
select n.nspname || '.' || c.relname, c.relreplident,
       array(select a.attname::text from pg_index i
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
             where i.indrelid = c.oid
               and (i.indisprimary and c.relreplident = 'd' or i.indisreplident and c.relreplident = 'i'))
from (select %(t)s::regclass as relid union select relid from pg_partition_tree(%(t)s::regclass) where isleaf) t
join pg_class c on c.oid = t.relid join pg_namespace n on n.oid = c.relnamespace
"""
_ANCESTORS = """
select n.nspname, c.relname from pg_partition_ancestors(%s::oid::regclass) a
join pg_class c on c.oid = a.relid join pg_namespace n on n.oid = c.relnamespace
where exists (select 1 from pg_class where oid = %s::oid)
"""


def default_name(job: str) -> str:
    return "kanal_" + job.replace("-", "_")


class CdcReader(DeltaReader):
    def __init__(self, config: PostgresConfig, system: str, context: DeltaContext) -> None:
        self.config, self.system = config, system
        self.slot = config.slot or default_name(context.job)
        self.publication = config.publication or default_name(context.job)
        self.options: dict[str, PostgresSourceOptions] = {}
        self.tables: dict[tuple[str, str], list[str]] = {}  # (schema, table) -> the entities reading it
        for entity, options in context.entities.items():
            assert isinstance(options, PostgresSourceOptions)
            if options.where:
                raise ConfigError(f"{system}: {entity}: 'where' cannot be combined with delta: cdc (changes are not filtered)")
            self.options[entity] = options
            self.tables.setdefault((options.schema_name, options.table), []).append(entity)
        self._routes: dict[tuple[int, str, str], tuple[str, ...]] = {}
        self._conn: psycopg.Connection | None = None
        self._decoder = Decoder()
        self._leader = False
        self._created = False
        self._handed_out = Position(0)
        self._handed_rows = 0  # peeked messages up to the end of the last read (the next peek starts before them)
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
            for (schema, table), entities in self.tables.items():
                self._check_identity(schema, table, entities)

    def start(self) -> dict[str, Any]:
        self.check()
        with translated(self.system):
            tables = ", ".join(qualified(s, t) for s, t in self.tables)
            # Workers of one job start together: one at a time, or PostgreSQL refuses the second
            # catalog update ("tuple concurrently updated") or the second create.
            with self._connection().transaction():
                self._one("select pg_advisory_xact_lock(hashtext(%s))", (f"kanal:publication:{self.publication}",))
                if self._one("select 1 from pg_publication where pubname = %s", (self.publication,)):
                    self._connection().execute(f'alter publication "{self.publication}" set table {tables}')
                    self._connection().execute(f'alter publication "{self.publication}" set ({_PUBLISH})')
                else:
                    self._connection().execute(f'create publication "{self.publication}" for table {tables} with ({_PUBLISH})')
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

    def _check_identity(self, schema: str, table: str, entities: list[str]) -> None:
        """Refuse a table whose changes could not be matched in the targets.

        A delete, and an update that changes the key, reach us with the old
        replica identity only: it must exist, and where the entity's key
        columns are known (no mapping file) it must include them.
        """
        name = qualified(schema, table)
        if self._one("select to_regclass(%s)", (name,)) is None:
            raise ConfigError(f"{self.system}: table {schema}.{table} does not exist")
        columns = {r[0] for r in self._connection().execute(
            "select attname::text from pg_attribute where attrelid = %s::regclass and attnum > 0 and not attisdropped", (name,)
        ).fetchall()}
        keys = {e: canonical(e).key for e in entities if self.options[e].mapping is None}
        for relation, identity, identity_columns in self._connection().execute(_IDENTITIES, {"t": name}).fetchall():
            if identity == "f":
                continue
            if not identity_columns:
                raise ConfigError(
                    f"{self.system}: table {relation} has no replica identity, so its deletes cannot be "
                    f"captured (and PostgreSQL refuses deletes on published tables without one). Run "
                    f"ALTER TABLE {relation} REPLICA IDENTITY FULL; or give it a primary key"
                )
            for entity, key in keys.items():
                missing = [k for k in key if k in columns and k not in identity_columns]
                if missing:
                    raise ConfigError(
                        f"{self.system}: the replica identity of table {relation} ({', '.join(identity_columns)}) does "
                        f"not include {', '.join(missing)} of the key of {entity} ({', '.join(key)}), so its deletes and "
                        f"key changes could not be matched in the targets. Run ALTER TABLE {relation} REPLICA IDENTITY FULL;"
                    )

    def resumable(self, position: dict[str, Any]) -> bool:
        """A slot created just now cannot hold the changes since an earlier stored position."""
        return not self._created

    def snapshot_version(self, entity: str, position: dict[str, Any]) -> pl.Expr | None:
        """The start LSN: every change in the slot commits after it (see `pgoutput`)."""
        return pl.lit(Position.of(position).lsn, pl.Int64)

    # reading ---------------------------------------------------------------

    def _lead(self) -> bool:
        if not self._leader:
            self._leader = bool(self._one("select pg_try_advisory_lock(hashtext(%s))", (f"kanal:{self.slot}",)))
        return self._leader

    def read(self, position: dict[str, Any]) -> Changes:
        start = Position.of(position)
        with translated(self.system):
            if not self._lead():
                return Changes({}, position)  # another worker reads the slot; stand by
            read = self._peek(start)
            self._handed_out, self._handed_rows = read.position, read.rows
            if read.position == start and time.monotonic() - self._last_advance >= self.config.heartbeat_s:
                self._connection().execute("select pg_logical_emit_message(true, 'kanal.heartbeat', '')")
                self._last_advance = time.monotonic()
            frames = self._frames(read.changes)  # may read TOASTed values from the tables
        if read.position != start:
            self._last_advance = time.monotonic()
        return Changes(frames, read.position.to_json())

    def _peek(self, start: Position) -> Read:
        """Up to `delta_rows` changes after `start`.

        The peek must reach past what was handed out before (it starts at the
        slot's confirmed position); when it holds nothing new and was cut by
        its limit, look further.
        """
        limit = self.config.delta_rows + self._handed_rows
        while True:
            read = self._decode(start, limit)
            if read.changes or read.rows < limit:
                return read
            limit *= 2

    def _decode(self, start: Position, limit: int) -> Read:
        """Stream the peek through a server-side cursor: memory holds one read, not the transaction."""
        conn = self._connection()
        with conn.transaction(), conn.cursor(name="kanal_peek") as cur:
            cur.itersize = _FETCH_ROWS
            cur.execute(_PEEK, (self.slot, limit, self.publication))
            try:
                return self._decoder.read(cur, start, self.config.delta_rows)
            except TooManyTruncates as exc:
                raise ConnectorError(self.system, str(exc)) from None

    def _frames(self, changes: list[Change]) -> dict[str, pl.DataFrame]:
        """Per entity, one frame of its changes in source order."""
        by_oid: dict[int, list[Change]] = {}
        for change in changes:
            by_oid.setdefault(change.relation.oid, []).append(change)
        by_route: dict[tuple[str, ...], list[int]] = {}
        for oid, group in by_oid.items():
            if entities := self._route(group[0].relation):
                by_route.setdefault(entities, []).append(oid)
        frames: dict[str, pl.DataFrame] = {}
        for entities, oids in by_route.items():
            # several relations of one table: partitions named in changes decoded before publishing via the root
            routed = by_oid[oids[0]] if len(oids) == 1 else [c for c in changes if c.relation.oid in oids]
            self._refuse_truncate(routed, entities)
            parts = [self._frame(run) for run in _runs(routed)]
            frame = pl.concat(parts, how="diagonal_relaxed") if len(parts) > 1 else parts[0]
            frames.update(dict.fromkeys(entities, frame))
        return frames

    def _route(self, relation: Relation) -> tuple[str, ...]:
        key = (relation.oid, relation.schema, relation.name)
        if key not in self._routes:
            self._routes[key] = self._entities_of(relation)
        return self._routes[key]

    def _entities_of(self, relation: Relation) -> tuple[str, ...]:
        """The entities reading the table, or the partitioned table it is a partition of."""
        direct = self.tables.get((relation.schema, relation.name))
        if direct:
            return tuple(direct)
        for table in self._connection().execute(_ANCESTORS, (relation.oid, relation.oid)).fetchall():
            if table in self.tables:
                return tuple(self.tables[table])
        log.warning(
            "%s: changes of table %s.%s are skipped: no entity of the job reads it (was it removed from the job?)",
            self.system, relation.schema, relation.name,
        )
        return ()

    def _refuse_truncate(self, run: list[Change], entities: tuple[str, ...]) -> None:
        failing = [e for e in entities if self.options[e].truncate == "fail"]
        truncate = next((c for c in run if c.kind == TRUNCATE), None) if failing else None
        if truncate is None:
            return
        r = truncate.relation
        raise ConnectorError(
            self.system,
            f"table {r.schema}.{r.name} was truncated and entity {failing[0]} has `truncate: fail`: the stream "
            f"stops here, nothing after it is confirmed. Set `truncate: delete` on {failing[0]} in the job file to "
            f"delete its records in the targets, or run `kanal cleanup` and `kanal run` to migrate again",
        )

    def _frame(self, changes: list[Change]) -> pl.DataFrame:
        """The rows of changes of one relation version; an update's old image comes first as a `BEFORE` row."""
        relation = changes[0].relation
        columns: list[list[object]] = [[] for _ in relation.columns]
        op: list[str] = []
        version: list[int] = []
        for change in changes:
            if change.kind == UPDATE and change.old is not None:
                _append(columns, change.old)
                op.append(ops.BEFORE)
                version.append(change.version)
            if change.kind == TRUNCATE:
                for column in columns:
                    column.append(None)
            elif change.kind == DELETE:
                _append(columns, change.values)
            else:
                for i, value in enumerate(change.values):
                    columns[i].append(self._unchanged(change, i) if value is UNCHANGED else value)
            op.append(_OPS[change.kind])
            version.append(change.version)
        frame = pl.DataFrame({n: pl.Series(n, c, pl.String) for n, c in zip(relation.columns, columns, strict=True)})
        frame = frame.with_columns(
            [_temporal(pl.col(n), t).alias(n) for n, t in zip(relation.columns, relation.types, strict=True) if t in (_TIMESTAMPTZ, _TIMESTAMP, _DATE)]
        )
        return frame.with_columns(pl.Series(OP, op, pl.String), pl.Series(VERSION, version, pl.Int64))

    def _unchanged(self, change: Change, index: int) -> object:
        """An unchanged TOASTed value, which PostgreSQL does not send.

        Under REPLICA IDENTITY FULL the old tuple has it (an old key tuple has
        NULL there). Otherwise it is read from the table by the row's key: the
        row may be newer than this change by then, which is harmless (the later
        changes follow, with higher versions); a row deleted since yields NULL
        until its delete arrives.
        """
        if change.old is not None and change.relation.replica_identity == "f" and change.old[index] is not UNCHANGED:
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
        """Advance the slot to the last transaction end at or before `position`."""
        confirmed = Position.of(position)
        with translated(self.system):
            if self._lead():
                self._connection().execute(
                    "select pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, lsn_text(confirmed.lsn))
                )
                if confirmed == self._handed_out:
                    self._handed_rows = 0  # the next peek starts where the last read ended (or at its transaction)

    def describe(self, position: dict[str, Any]) -> str:
        at = Position.of(position)
        text = f"LSN {lsn_text(at.lsn)}"
        return text + (f" + {at.changes} changes of the transaction committed at {lsn_text(at.commit)}" if at.inside else "")

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

    def gauges(self) -> dict[str, float]:
        """The WAL the slot keeps the server from removing, in bytes (none until the slot exists)."""
        with translated(self.system):
            retained = self._one(
                "select pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) from pg_replication_slots where slot_name = %s",
                (self.slot,),
            )
        return {} if retained is None else {"cdc_slot_retained_wal_bytes": float(retained)}

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


_OPS = {INSERT: ops.UPSERT, UPDATE: ops.UPSERT, DELETE: ops.DELETE, TRUNCATE: ops.TRUNCATE}


def _append(columns: list[list[object]], values: tuple[object, ...]) -> None:
    """An old image (key or full row): only what was sent; an unsent TOASTed value is not part of any key."""
    for column, value in zip(columns, values, strict=True):
        column.append(None if value is UNCHANGED else value)


def _runs(changes: list[Change]) -> list[list[Change]]:
    """Consecutive changes sharing one relation version (a column added mid-read starts a new run)."""
    runs = [[changes[0]]]
    for change in changes[1:]:
        last = runs[-1][0].relation
        if change.relation is last or change.relation == last:
            runs[-1].append(change)
        else:
            runs.append([change])
    return runs


def _temporal(col: pl.Expr, oid: int) -> pl.Expr:
    """Text timestamps and dates (session TimeZone is UTC) as UTC datetimes; 'infinity' becomes NULL."""
    if oid == _DATE:
        return col.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if oid == _TIMESTAMP:
        return col.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us", strict=False).dt.replace_time_zone("UTC")
    text = col.str.replace(r"([+-]\d\d)$", "${1}:00")
    return text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f%:z", time_unit="us", time_zone="UTC", strict=False)
