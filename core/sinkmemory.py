"""What a sink remembers about the system it writes: ids, and what it last wrote there.

API systems address records by their own ids (a Shopify product GID, a
WooCommerce numeric id), not by the canonical key. A sink that learnt "sku
A-1 is product 4711" from a write response or a lookup keeps that here, so a
re-run updates instead of creating a duplicate, and never looks every record
up again. The same store keeps, per key, a hash of the content last written
and its version; the engine uses them (see `core.deliver`) to send nothing
for a record whose content is unchanged — API budgets are the scarcest
resource an integrator has — and nothing older than what the system already
holds.

Losing this store costs calls, never correctness: a sink rebuilds its id map
by looking records up by their natural key (SKU, email), never by creating
again, and a missing hash only means the record is sent once more.

One SQLite file per (job, sink) under the job's state folder, so it lives
with the rest of the job's state (several workers of one job share it
through a shared `state_dir`). SQLite serialises writers; each thread uses
its own connection.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from kanal.core.connector import DELETE, OP, TRUNCATE, VERSION, WriteResult
from kanal.core.isolate import ROW, accepted_rows
from kanal.core.validate import KEY

HASH = "_kanal_hash"
"""Column of `written` frames: the content hash of a record as last written."""

_SCHEMA = """
create table if not exists memory (
    entity text not null,
    key text not null,
    system_id text,
    hash integer,
    version integer,
    primary key (entity, key)
) without rowid;
create table if not exists floors (entity text primary key, version integer not null)
"""


class SinkMemory:
    """Ids and last-written hashes of one sink's records, per entity (see module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as conn:
            conn.execute("pragma journal_mode=wal")
            conn.executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.execute("pragma synchronous=normal")
            self._local.conn = conn
        return conn

    # ids -----------------------------------------------------------------------

    def ids(self, entity: str, keys: Iterable[str]) -> dict[str, str]:
        """The system ids known for `keys` (keys without one are absent)."""
        found: dict[str, str] = {}
        wanted = list(dict.fromkeys(keys))
        conn = self._connection()
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = conn.execute(
                f"select key, system_id from memory where entity = ? and system_id is not null and key in ({marks})",
                (entity, *part),
            )
            found.update(rows)
        return found

    def remember_ids(self, entity: str, ids: Mapping[str, str]) -> None:
        with self._connection() as conn:
            conn.executemany(
                "insert into memory (entity, key, system_id) values (?, ?, ?) "
                "on conflict (entity, key) do update set system_id = excluded.system_id",
                [(entity, k, v) for k, v in ids.items()],
            )

    def forget(self, entity: str, keys: Iterable[str]) -> None:
        """The records are gone from the system (deleted): forget their ids and hashes."""
        with self._connection() as conn:
            conn.executemany("delete from memory where entity = ? and key = ?", [(entity, k) for k in keys])

    def truncated(self, entity: str, version: int | None) -> None:
        """Every record of `entity` older than `version` is gone: forget them, and refuse older ones from now on.

        Records older than a truncate may still arrive (from other partitions,
        or replayed); a system that cannot compare versions itself would bring
        them back, so the floor is kept here.
        """
        with self._connection() as conn:
            conn.execute("delete from memory where entity = ?", (entity,))
            if version is not None:
                conn.execute(
                    "insert into floors values (?, ?) on conflict (entity) do update "
                    "set version = max(floors.version, excluded.version)",
                    (entity, version),
                )

    def floor(self, entity: str) -> int | None:
        """The version of the latest truncate of `entity`: nothing older may be written."""
        row = self._connection().execute("select version from floors where entity = ?", (entity,)).fetchone()
        return None if row is None else int(row[0])

    # what was written ------------------------------------------------------------

    def written(self, entity: str, keys: pl.Series) -> pl.DataFrame:
        """`KEY`, `HASH`, `VERSION` of what was last written for `keys` (unknown keys absent)."""
        wanted = keys.unique().to_list()
        rows: list[tuple[str, int | None, int | None]] = []
        conn = self._connection()
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            rows.extend(
                conn.execute(
                    f"select key, hash, version from memory where entity = ? and hash is not null and key in ({marks})",
                    (entity, *part),
                )
            )
        schema = {KEY: pl.String, HASH: pl.Int64, VERSION: pl.Int64}
        return pl.DataFrame(rows, schema=schema, orient="row")

    def remember_written(self, entity: str, frame: pl.DataFrame) -> None:
        """Store `KEY`, `HASH` (and `VERSION` where present) of records the system accepted."""
        versions = frame.get_column(VERSION) if VERSION in frame.columns else pl.repeat(None, frame.height, dtype=pl.Int64, eager=True)
        rows = zip(frame.get_column(KEY).to_list(), frame.get_column(HASH).to_list(), versions.to_list(), strict=True)
        with self._connection() as conn:
            conn.executemany(
                "insert into memory (entity, key, hash, version) values (?, ?, ?, ?) "
                "on conflict (entity, key) do update set hash = excluded.hash, version = excluded.version",
                [(entity, key, h, v) for key, h, v in rows],
            )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def content_hash(frame: pl.DataFrame, columns: list[str]) -> pl.Series:
    """A hash of each record's content (the given columns), as Int64 for storage.

    polars guarantees the same hash only within one polars version: after an
    upgrade, unchanged records are sent once more, which is harmless.
    """
    return frame.select(columns).hash_rows(seed=0).reinterpret(signed=True).alias(HASH)


@dataclass(frozen=True)
class Sifted:
    """A batch after `sift`: what to send, and how many records need no call."""

    send: pl.DataFrame
    unchanged: int
    older: int


def sift(memory: SinkMemory, entity: str, frame: pl.DataFrame) -> Sifted:
    """Drop records whose content equals what was last written, or that are older than it (or a truncate).

    The hash covers every column the sink would receive except the engine's
    op and version, so a record re-read with a new version but the same
    content costs no call. Deletes and truncates are sent unless older than
    the last truncate.
    """
    content = [c for c in frame.columns if c not in (OP, VERSION, HASH, ROW)]
    hashed = frame.with_columns(content_hash(frame, content))
    floor = memory.floor(entity)
    known = memory.written(entity, frame.get_column(KEY))
    if known.is_empty() and floor is None:
        return Sifted(hashed, 0, 0)
    joined = hashed.join(known.rename({HASH: "_kanal_prev_hash", VERSION: "_kanal_prev_version"}), on=KEY, how="left")
    upsert = ~pl.col(OP).is_in([DELETE, TRUNCATE]) if OP in frame.columns else pl.lit(True)
    version = pl.col(VERSION) if VERSION in frame.columns else pl.lit(None, pl.Int64)
    older = upsert & (version < pl.col("_kanal_prev_version")).fill_null(False)
    below_floor = (version < pl.lit(floor, pl.Int64)).fill_null(False)
    same = upsert & (pl.col(HASH) == pl.col("_kanal_prev_hash")).fill_null(False)
    flags = joined.select((older | below_floor).alias("older"), same.alias("same"))
    drop_older = flags.get_column("older")
    drop_same = flags.get_column("same") & ~drop_older
    return Sifted(hashed.filter(~(drop_older | drop_same)), int(drop_same.sum()), int(drop_older.sum()))


def remember_result(memory: SinkMemory, entity: str, sent: pl.DataFrame, result: WriteResult) -> None:
    """Remember what the system now holds: written upserts by hash, deletes and truncates forgotten."""
    sent = accepted_rows(sent, result.failed)
    if OP in sent.columns:
        truncates = sent.filter(pl.col(OP) == TRUNCATE)
        if truncates.height:
            memory.truncated(entity, truncates.get_column(VERSION).max() if VERSION in sent.columns else None)  # type: ignore[arg-type]
        gone = sent.filter(pl.col(OP) == DELETE).get_column(KEY).to_list()
        if gone:
            memory.forget(entity, gone)
        sent = sent.filter(~pl.col(OP).is_in([DELETE, TRUNCATE]))
    if not sent.is_empty():
        memory.remember_written(entity, sent.unique(KEY, keep="last", maintain_order=True))
