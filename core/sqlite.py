"""Write transactions on SQLite files that several threads or processes share (ledgers, outboxes, journals).

`BEGIN IMMEDIATE` takes the write lock when the transaction starts, not at
its first write: a check and the write it allows (a reservation's stock
check, a journal's duplicate test) cannot interleave with another writer's,
and a writer waits for the lock (busy timeout) instead of failing half-way.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


@contextlib.contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on `db` (opened with `isolation_level=None`): committed at the end, rolled back on error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
