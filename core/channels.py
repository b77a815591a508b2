"""Publishing availability to API sales channels within their limits: coalesced, decreases first, never backwards.

A web shop or a marketplace is not a database: every update is an API call
out of a budget (Shopify's cost points, a marketplace's revisions per
listing per day), and an availability that changes 100 times a second must
not cost 100 calls. `ChannelPublisher` sits between the delivery of the
`availability` entity and a sink that meters its calls:

* **Durable outbox.** `offer` stores the records in a SQLite file (the
  delivery commits the Kafka offsets only after that), `flush` sends them
  later: a crash in between loses nothing, the next run sends what waits.
* **Coalescing.** Per key (sku, channel) only the newest version waits; a
  key is sent once `window_s` has passed since its first waiting value, so
  100 updates of one sku inside the window make one call with the last
  value.
* **Never older after newer.** A value is accepted only if its version is
  newer than the one waiting and than the one last sent for the key; what
  is sent is marked sent only after the sink took it.
* **Decreases first.** Within a flush, keys whose quantity goes down (to
  zero first: the biggest drops lead) are sent before the others, so an
  oversell window closes before new stock is advertised.
* **Per-key daily caps.** `daily[channel]` updates per key per UTC day at
  most; a key that used its allowance keeps its newest value waiting and is
  sent when the day turns.

The sink's own rate-limit budget (one per credential, `core.http.budget`)
and its declared `rate_limit_per_s` still pace every call: `send` is the
normal write path (`core.deliver.write_changed`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from kanal.core.connector import OP, UPSERT, VERSION, WriteResult
from kanal.core.model import AVAILABILITY
from kanal.core.sqlite import immediate
from kanal.core.validate import KEY

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    key TEXT PRIMARY KEY, channel TEXT, quantity INTEGER, version INTEGER, since REAL, record TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sent (
    key TEXT PRIMARY KEY, quantity INTEGER, version INTEGER, day TEXT, count INTEGER) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS offered (
    key TEXT PRIMARY KEY, channel TEXT, quantity INTEGER, version INTEGER, record TEXT);
"""
_ACCEPT = """
INSERT INTO pending (key, channel, quantity, version, since, record)
SELECT o.key, o.channel, o.quantity, o.version, :now, o.record FROM offered o LEFT JOIN sent s ON s.key = o.key
WHERE s.version IS NULL OR o.version IS NULL OR o.version > s.version
ON CONFLICT (key) DO UPDATE SET quantity = excluded.quantity, version = excluded.version, record = excluded.record
WHERE excluded.version IS NULL OR pending.version IS NULL OR excluded.version > pending.version
"""
"""Records without a version (a snapshot of a source that has none) cannot be ordered: the last one to arrive wins."""
_DUE = """
SELECT p.key, p.version, p.record FROM pending p LEFT JOIN sent s ON s.key = p.key
WHERE p.since <= :ripe AND (s.day IS NULL OR s.day <> :day OR s.count < COALESCE(
    (SELECT cap FROM caps WHERE caps.channel = p.channel), s.count + 1))
ORDER BY CASE WHEN p.quantity < s.quantity THEN 0 ELSE 1 END, p.quantity - COALESCE(s.quantity, p.quantity), p.key
"""
_SENT = """
INSERT INTO sent (key, quantity, version, day, count)
SELECT key, quantity, version, :day, 1 FROM pending WHERE key = :key AND version IS :version
ON CONFLICT (key) DO UPDATE SET quantity = excluded.quantity, version = excluded.version, day = excluded.day,
    count = CASE WHEN sent.day = excluded.day THEN sent.count + 1 ELSE 1 END
"""
_REFUSED = """
INSERT INTO sent (key, quantity, version, day, count) VALUES (:key, NULL, :version, NULL, 0)
ON CONFLICT (key) DO UPDATE SET version = excluded.version
"""
"""A refused value still counts as tried: no older value of its key goes out after it."""
_RECORD_SCHEMA = pl.Schema({**AVAILABILITY.schema, KEY: pl.String, OP: pl.String, VERSION: pl.Int64})


@dataclass(frozen=True)
class Flushed:
    """What one flush did: records sent, refused by the channel (`_kanal_key`, `reason`), and keys left waiting
    (inside their window, or held by a daily cap)."""

    sent: int = 0
    refused: pl.DataFrame | None = None
    waiting: int = 0


class ChannelPublisher:
    """The durable, coalescing, capped outbox of one sink's availability updates (see the module docstring)."""

    def __init__(
        self, path: str | Path, *, window_s: float = 0.2, daily: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.window_s, self.clock = window_s, clock
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS caps (channel TEXT PRIMARY KEY, cap INTEGER)")
        self._db.executemany("INSERT OR REPLACE INTO temp.caps VALUES (?, ?)", (daily or {}).items())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def offer(self, frame: pl.DataFrame) -> int:
        """Keep the newest version per key of `frame` waiting (durably); returns how many keys now wait with it."""
        if frame.is_empty():
            return 0
        if VERSION not in frame.columns:
            frame = frame.with_columns(pl.lit(None, pl.Int64).alias(VERSION))
        newest = frame.sort(VERSION, nulls_last=False, maintain_order=True).unique(KEY, keep="last", maintain_order=True)
        records = newest.select([c for c in _RECORD_SCHEMA if c in newest.columns])
        if OP not in records.columns:
            records = records.with_columns(pl.lit(UPSERT).alias(OP))
        rows = zip(
            records.get_column(KEY).to_list(), records.get_column("channel").to_list(),
            records.get_column("quantity").cast(pl.Float64).round(0).cast(pl.Int64).to_list(),
            records.get_column(VERSION).to_list(), records.write_ndjson().splitlines(), strict=True,
        )  # fmt: skip
        with self._lock, self._transaction() as db:
            db.execute("DELETE FROM offered")
            db.executemany("INSERT INTO offered VALUES (?, ?, ?, ?, ?)", rows)
            return db.execute(_ACCEPT, {"now": self.clock()}).rowcount

    def waiting(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM pending").fetchone()[0])

    def flush(self, send: Callable[[pl.DataFrame], WriteResult], *, all_ripe: bool = False) -> Flushed:
        """Send what is due (`all_ripe`: also values still inside their window), decreases first, in one call.

        `send` writes the records through the sink's normal path; an error
        it raises leaves everything waiting. One flush at a time: a value
        is never sent twice or out of order by concurrent flushes.
        """
        with self._lock:
            now = self.clock()
            ripe = now if all_ripe else now - self.window_s
            day = dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()
            due = self._db.execute(_DUE, {"ripe": ripe, "day": day}).fetchall()
            waiting = self.waiting() - len(due)
            if not due:
                return Flushed(waiting=waiting)
            frame = pl.read_ndjson("\n".join(r[2] for r in due).encode(), schema=_RECORD_SCHEMA)
            result = send(frame)
            refused = result.failed if result.failed is not None and not result.failed.is_empty() else None
            refused_keys = set(refused.get_column(KEY).to_list()) if refused is not None else set()
            with self._transaction() as db:
                db.executemany(_SENT, [{"key": k, "version": v, "day": day} for k, v, _ in due if k not in refused_keys])
                db.executemany(_REFUSED, [{"key": k, "version": v} for k, v, _ in due if k in refused_keys])
                db.executemany("DELETE FROM pending WHERE key = ? AND version IS ?", [(k, v) for k, v, _ in due])
            return Flushed(len(due) - len(refused_keys), refused, waiting)

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate(self._db)
