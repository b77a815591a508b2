"""Prices and stock levels whose product is not in the shop yet, kept until it is.

A migration sends products, prices and stock levels at the same time, and
one writer thread takes batches of every entity in turn: a price whose
variant does not exist yet cannot wait for it (its product may be queued
behind it on the same thread). So the sink parks it here, durably, beside
the job's sink memory, and reports it written; the products write that
creates the variant applies what was parked for its SKUs.

No record is lost between the two: the price write parks first and then
checks the ids once more, the products write remembers the ids first and
then drains the parked records, so one of them always sees the other (both
may, and writing a price twice is harmless). A newer record of a key
replaces the parked one. Records still parked when a migration finishes are
named in its report.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

import orjson

from kanal.core.sqlite import immediate

_SCHEMA = """
create table if not exists parked (
    entity text not null,
    key text not null,
    sku text not null,
    version integer,
    record blob not null,
    primary key (entity, key)
) without rowid
"""




class Parked:
    """Records of one sink waiting for their SKU's variant (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as conn:
            conn.execute("pragma journal_mode=wal")
            conn.execute(_SCHEMA)
            conn.execute("create index if not exists parked_sku on parked (sku)")

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._local.conn = conn
        return conn

    def park(self, entity: str, records: Iterable[tuple[str, str, int | None, dict]]) -> None:
        """Keep (key, sku, version, record) rows; a newer version of a key replaces an older one."""
        with immediate(self._connection()) as conn:
            conn.executemany(
                "insert into parked (entity, key, sku, version, record) values (?, ?, ?, ?, ?) "
                "on conflict (entity, key) do update set sku = excluded.sku, version = excluded.version, "
                "record = excluded.record where coalesce(excluded.version, 0) >= coalesce(parked.version, 0)",
                [(entity, key, sku, version, orjson.dumps(record)) for key, sku, version, record in records],
            )

    def take(self, entity: str, skus: Iterable[str]) -> list[dict]:
        """Remove and return the parked records of `entity` for `skus`."""
        wanted = list(dict.fromkeys(skus))
        taken: list[dict] = []
        conn = self._connection()
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            with immediate(conn):
                rows = conn.execute(
                    f"select record from parked where entity = ? and sku in ({marks})", (entity, *part)
                ).fetchall()
                conn.execute(f"delete from parked where entity = ? and sku in ({marks})", (entity, *part))
            taken.extend(orjson.loads(r[0]) for r in rows)
        return taken

    def waiting(self, entity: str) -> tuple[int, list[str]]:
        """How many records of `entity` are parked, and a few of their SKUs."""
        conn = self._connection()
        count = conn.execute("select count(*) from parked where entity = ?", (entity,)).fetchone()[0]
        skus = [r[0] for r in conn.execute("select distinct sku from parked where entity = ? limit 5", (entity,))]
        return count, skus

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
