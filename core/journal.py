"""A durable local journal: records taken while a system may be offline, forwarded later, never lost.

Used by the store agent (`kanal edge`): a POS posts movements, the agent
answers only once they are here, and forwards them to Kafka whenever the
broker is reachable. Why SQLite in WAL mode with `synchronous=FULL`: a commit
returns only after the write-ahead log is fsynced, so what was acknowledged
survives `kill -9` and a power cut; a store PC or a Raspberry Pi needs no
server for it.

* **Idempotent by key.** A record's key (a movement's `event_id`) is unique:
  appending it again is ignored and counted as a duplicate, so a client may
  retry a request it got no answer for.
* **Ordered.** Every record gets the next `seq`; `pending` hands out the
  unforwarded ones in that order, so what reaches the broker keeps the
  order it was taken in.
* **Forwarded only when acknowledged.** `mark_forwarded` is called with what
  the broker acknowledged; anything else stays pending and goes out again
  after an outage or a restart (a record sent twice is harmless where
  consumers deduplicate by key; one never sent would be lost).
* **Bounded.** `prune` forgets forwarded records older than a retention, so
  a store PC's disk does not fill over the years. A pruned key taken again
  is journaled again and forwarded again, which consumers that keep every
  key (the ledgers) ignore.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kanal.core.sqlite import immediate

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, line BLOB NOT NULL,
    received_us INTEGER NOT NULL, forwarded INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS journal_pending ON journal (seq) WHERE forwarded = 0;
"""


@dataclass(frozen=True)
class Entry:
    seq: int
    key: str
    line: bytes


@dataclass(frozen=True)
class Appended:
    """What an append did: records new to the journal, and records whose key it already held."""

    new: int
    duplicate: int


@dataclass(frozen=True)
class JournalStats:
    journaled: int
    backlog: int
    """Records not forwarded yet."""
    oldest_pending_us: int | None
    """When the oldest unforwarded record was taken (epoch microseconds), None without backlog."""
    last_seq: int


class Journal:
    """The journal in one SQLite file; safe to share between threads, and other processes may append to it too."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, keys: Sequence[str], lines: Sequence[bytes]) -> Appended:
        """Journal records (one key and one line each) in one durable transaction; keys seen before are skipped."""
        now = int(time.time() * 1_000_000)
        with self._lock, immediate(self._db) as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO journal (key, line, received_us) VALUES (?, ?, ?)",
                ((k, line, now) for k, line in zip(keys, lines, strict=True)),
            )
            new = db.total_changes - before
        return Appended(new, len(keys) - new)

    def after(self, seq: int, limit: int) -> list[Entry]:
        """Records journaled after `seq`, in order (forwarded or not)."""
        return self._entries("seq > ?", (seq,), limit)

    def pending(self, limit: int) -> list[Entry]:
        """The oldest records not forwarded yet, in order."""
        return self._entries("forwarded = 0", (), limit)

    def holding(self, keys: Sequence[str]) -> set[str]:
        """Those of `keys` the journal holds (pruned ones not)."""
        found: set[str] = set()
        with self._lock:
            for at in range(0, len(keys), 500):
                part = keys[at:at + 500]
                query = f"SELECT key FROM journal WHERE key IN ({', '.join('?' * len(part))})"
                found.update(r[0] for r in self._db.execute(query, part).fetchall())
        return found

    def mark_forwarded(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        with self._lock, immediate(self._db) as db:
            db.executemany("UPDATE journal SET forwarded = 1 WHERE seq = ?", ((s,) for s in seqs))

    def prune(self, taken_before_us: int, below_seq: int) -> int:
        """Forget forwarded records taken before `taken_before_us` with a seq below `below_seq`; returns how many.

        `below_seq` is how far the caller consumed the journal itself (the
        agent's local ledger): a record it has not applied stays. Seqs are
        never reused after a prune (AUTOINCREMENT), so positions stored
        elsewhere keep their meaning.
        """
        with self._lock, immediate(self._db) as db:
            return db.execute(
                "DELETE FROM journal WHERE forwarded = 1 AND received_us < ? AND seq < ?", (taken_before_us, below_seq)
            ).rowcount

    def stats(self) -> JournalStats:
        with self._lock:
            journaled, last = self._db.execute("SELECT count(*), COALESCE(max(seq), 0) FROM journal").fetchall()[0]
            backlog, oldest = self._db.execute(
                "SELECT count(*), min(received_us) FROM journal WHERE forwarded = 0"
            ).fetchall()[0]
        return JournalStats(journaled, backlog, oldest, last)

    def _entries(self, condition: str, params: tuple[object, ...], limit: int) -> list[Entry]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT seq, key, line FROM journal WHERE {condition} ORDER BY seq LIMIT ?", (*params, limit)
            ).fetchall()
        return [Entry(seq, key, bytes(line)) for seq, key, line in rows]
