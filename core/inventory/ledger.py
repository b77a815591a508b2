"""The movement ledger: durable, exactly-once stock levels and channel availability in one SQLite file.

Why SQLite: the aggregator needs one transaction that covers "these
movements were applied", "these are the levels now" and "this is how far the
input topic was read", so a crash at any point either happened before all of
it or after all of it. A local file in WAL mode gives that at well above the
rates a merchant's movements arrive at, with no server to run; one ledger per
input partition spreads the work over processes (`jobs.inventory`).

What makes the numbers right:

* **Exactly once.** Every movement's `event_id` is stored (primary key);
  a movement seen before is ignored, in the same batch or years later.
* **Order does not matter.** Deltas are sums, so they commute. A `count`
  follows Square's model: a quantity is the latest count (by `occurred_at`,
  then `event_id`) plus the deltas that occurred *after* it. A sale recorded
  offline before a count and uploaded after it is in the ledger but does not
  change the level twice; any arrival order ends at the in-order result.
  A delta at the very instant of a count is taken as before the count.
* **Reservations are sums too**: per reservation line, reserved − released −
  consumed by sales, never below zero. An expiry is recorded as a release
  movement (`expired:<reservation>:<sku>:<location>`), so the ledger alone
  explains every level.
* **Batches, not rows**: a batch goes through temporary tables and a few set
  statements; Python never loops over movements.

Every committed change set increments the ledger position; rows it changed
carry it as their `version`, which is what sinks compare. `changes_since`
is an outbox: the aggregator publishes what changed after the position it
last published, so a crash between commit and publish loses nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from kanal.core.inventory.movements import BUCKETED, MOVEMENT_SCHEMA, Movement, check, movements_frame
from kanal.core.inventory.rules import ChannelRules
from kanal.core.sqlite import immediate

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS movements (
    position INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, sku TEXT, location TEXT, delta INTEGER,
    reason TEXT, occurred_us INTEGER, source TEXT, sequence TEXT, reservation_id TEXT, expires_us INTEGER,
    bucket TEXT, counterpart TEXT, batch INTEGER);
CREATE TABLE IF NOT EXISTS effects (
    event_id TEXT, sku TEXT, location TEXT, bucket TEXT, kind TEXT, amount INTEGER, occurred_us INTEGER);
CREATE INDEX IF NOT EXISTS effects_key ON effects (sku, location, bucket, occurred_us);
CREATE TABLE IF NOT EXISTS levels (
    sku TEXT, location TEXT, bucket TEXT, total INTEGER NOT NULL, count_us INTEGER, count_id TEXT,
    PRIMARY KEY (sku, location, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id TEXT, sku TEXT, location TEXT, reserved INTEGER, released INTEGER, consumed INTEGER,
    expires_us INTEGER, open INTEGER GENERATED ALWAYS AS (max(0, reserved - released - consumed)) STORED,
    PRIMARY KEY (reservation_id, sku, location)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reservations_key ON reservations (sku, location);
CREATE INDEX IF NOT EXISTS reservations_due ON reservations (expires_us) WHERE open > 0;
CREATE TABLE IF NOT EXISTS stock (
    sku TEXT, location TEXT, on_hand INTEGER, reserved INTEGER, unavailable INTEGER, incoming INTEGER,
    previous INTEGER, version INTEGER, updated_us INTEGER, PRIMARY KEY (sku, location)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stock_version ON stock (version);
CREATE TABLE IF NOT EXISTS availability (
    sku TEXT, channel TEXT, quantity INTEGER, previous INTEGER, version INTEGER, computed_us INTEGER,
    PRIMARY KEY (sku, channel)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS availability_version ON availability (version);
CREATE TABLE IF NOT EXISTS offsets (topic TEXT, partition INTEGER, next INTEGER, PRIMARY KEY (topic, partition));
CREATE TEMP TABLE IF NOT EXISTS b_eff (
    event_id TEXT, sku TEXT, location TEXT, bucket TEXT, kind TEXT, amount INTEGER, occurred_us INTEGER);
CREATE TEMP TABLE IF NOT EXISTS b_hold (
    event_id TEXT, reservation_id TEXT, sku TEXT, location TEXT, reserved INTEGER, released INTEGER,
    consumed INTEGER, expires_us INTEGER);
CREATE TEMP TABLE IF NOT EXISTS b_keys (sku TEXT, location TEXT, PRIMARY KEY (sku, location));
CREATE TEMP TABLE IF NOT EXISTS b_avail (sku TEXT, channel TEXT, quantity INTEGER);
CREATE TEMP TABLE IF NOT EXISTS r_channels (channel TEXT PRIMARY KEY, buffer INTEGER, percent REAL, cap INTEGER);
CREATE TEMP TABLE IF NOT EXISTS r_pool (location TEXT, channel TEXT, floor INTEGER, PRIMARY KEY (location, channel));
"""

# What the movements of a batch (those that got a position after :last) do, as `core.inventory.movements`
# tells per reason: effects on quantities, one row per change, and on reservation lines.
_EFFECTS = f"""
INSERT INTO b_eff (event_id, sku, location, bucket, kind, amount, occurred_us)
SELECT event_id, sku, location,
       CASE WHEN reason IN ({", ".join(f"'{r}'" for r in BUCKETED)}) THEN COALESCE(bucket, 'on_hand') ELSE 'on_hand' END,
       CASE reason WHEN 'count' THEN 'count' ELSE 'delta' END, delta, occurred_us
FROM movements WHERE position > :last AND reason NOT IN ('reservation', 'release')
UNION ALL
SELECT event_id, sku, location, 'incoming', 'delta', -delta, occurred_us
FROM movements WHERE position > :last
  AND ((reason = 'receipt' AND bucket = 'incoming') OR (reason = 'transfer_in' AND counterpart IS NOT NULL))
UNION ALL
SELECT event_id, sku, counterpart, 'incoming', 'delta', -delta, occurred_us
FROM movements WHERE position > :last AND reason = 'transfer_out' AND counterpart IS NOT NULL
"""
_BATCH_HOLDS = """
INSERT INTO b_hold (event_id, reservation_id, sku, location, reserved, released, consumed, expires_us)
SELECT event_id, reservation_id, sku, location, CASE reason WHEN 'reservation' THEN -delta ELSE 0 END,
       CASE reason WHEN 'release' THEN delta ELSE 0 END, CASE reason WHEN 'sale' THEN -delta ELSE 0 END, expires_us
FROM movements WHERE position > :last
  AND (reason IN ('reservation', 'release') OR (reason = 'sale' AND reservation_id IS NOT NULL))
"""

_SELLABLE = "MAX(0, s.on_hand - s.reserved - s.unavailable - p.floor)"
"""What a `stock` row `s` gives the channel of its `r_pool` row `p`: after the location's floor, never negative."""


def _availability_of(skus: str) -> str:
    """SELECT sku, channel, quantity for every sku of `skus` (a query of one `sku` column) and every channel.

    The channel rules' formula (`core.inventory.rules`) with the rules loaded
    into `r_channels` and `r_pool`. A percentage buffer is rounded up less a
    hair: a float error just above a whole number (3.0000000000000004) must
    not hold back one unit more.
    """
    return f"""
WITH skus AS ({skus}),
pooled AS (
    SELECT s.sku, p.channel, SUM({_SELLABLE}) AS pooled FROM stock s JOIN r_pool p ON p.location = s.location
    WHERE s.sku IN (SELECT sku FROM skus) GROUP BY s.sku, p.channel),
shares AS (
    SELECT k.sku, c.channel, COALESCE(q.pooled, 0) AS pooled, c.buffer, c.cap,
           COALESCE(q.pooled, 0) * c.percent / 100.0 - 1e-9 AS share
    FROM skus k CROSS JOIN r_channels c LEFT JOIN pooled q ON q.sku = k.sku AND q.channel = c.channel),
held AS (
    SELECT sku, channel, pooled, cap,
           CASE WHEN share IS NULL THEN buffer ELSE CAST(share AS INTEGER) + (share > CAST(share AS INTEGER)) END AS back
    FROM shares)
SELECT sku, channel, MIN(COALESCE(cap, {2**63 - 1}), MAX(0, pooled - back)) AS quantity FROM held"""


_DELTAS = """
UPDATE levels SET total = levels.total + d.amount FROM (
    SELECT e.sku, e.location, e.bucket, SUM(e.amount) AS amount
    FROM b_eff e JOIN levels l ON l.sku = e.sku AND l.location = e.location AND l.bucket = e.bucket
    WHERE e.kind = 'delta' AND (l.count_us IS NULL OR e.occurred_us > l.count_us)
    GROUP BY e.sku, e.location, e.bucket) AS d
WHERE levels.sku = d.sku AND levels.location = d.location AND levels.bucket = d.bucket
"""
_COUNTS = """
UPDATE levels SET count_us = c.occurred_us, count_id = c.event_id, total = c.amount + COALESCE((
        SELECT SUM(x.amount) FROM effects x WHERE x.sku = c.sku AND x.location = c.location
        AND x.bucket = c.bucket AND x.kind = 'delta' AND x.occurred_us > c.occurred_us), 0)
FROM (SELECT sku, location, bucket, amount, occurred_us, event_id, ROW_NUMBER() OVER (
        PARTITION BY sku, location, bucket ORDER BY occurred_us DESC, event_id DESC) AS rn
      FROM b_eff WHERE kind = 'count') AS c
WHERE c.rn = 1 AND levels.sku = c.sku AND levels.location = c.location AND levels.bucket = c.bucket
  AND (levels.count_us IS NULL OR (c.occurred_us, c.event_id) > (levels.count_us, levels.count_id))
"""
_HOLDS = """
INSERT INTO reservations (reservation_id, sku, location, reserved, released, consumed, expires_us)
SELECT reservation_id, sku, location, SUM(reserved), SUM(released), SUM(consumed), MAX(expires_us)
FROM b_hold WHERE true GROUP BY reservation_id, sku, location
ON CONFLICT (reservation_id, sku, location) DO UPDATE SET
    reserved = reserved + excluded.reserved, released = released + excluded.released,
    consumed = consumed + excluded.consumed,
    expires_us = CASE WHEN expires_us IS NULL THEN excluded.expires_us WHEN excluded.expires_us IS NULL
                 THEN expires_us ELSE max(expires_us, excluded.expires_us) END
"""
_RESERVED = """
INSERT INTO levels (sku, location, bucket, total)
SELECT r.sku, r.location, 'reserved', SUM(r.open) FROM reservations r
WHERE (r.sku, r.location) IN (SELECT sku, location FROM b_hold) GROUP BY r.sku, r.location
ON CONFLICT (sku, location, bucket) DO UPDATE SET total = excluded.total
"""
_STOCK = """
INSERT INTO stock (sku, location, on_hand, reserved, unavailable, incoming, previous, version, updated_us)
SELECT n.sku, n.location, n.on_hand, n.reserved, n.unavailable, n.incoming,
       s.on_hand - s.reserved - s.unavailable, :version, :now
FROM (SELECT k.sku, k.location,
        COALESCE(SUM(CASE l.bucket WHEN 'on_hand' THEN l.total END), 0) AS on_hand,
        COALESCE(SUM(CASE l.bucket WHEN 'reserved' THEN l.total END), 0) AS reserved,
        COALESCE(SUM(CASE l.bucket WHEN 'unavailable' THEN l.total END), 0) AS unavailable,
        COALESCE(SUM(CASE l.bucket WHEN 'incoming' THEN l.total END), 0) AS incoming
      FROM b_keys k LEFT JOIN levels l ON l.sku = k.sku AND l.location = k.location
      GROUP BY k.sku, k.location) AS n
LEFT JOIN stock s ON s.sku = n.sku AND s.location = n.location
WHERE s.sku IS NULL OR (s.on_hand, s.reserved, s.unavailable, s.incoming)
                      <> (n.on_hand, n.reserved, n.unavailable, n.incoming)
ON CONFLICT (sku, location) DO UPDATE SET
    on_hand = excluded.on_hand, reserved = excluded.reserved, unavailable = excluded.unavailable,
    incoming = excluded.incoming, previous = excluded.previous, version = excluded.version,
    updated_us = excluded.updated_us
"""
_AVAILABILITY = """
INSERT INTO availability (sku, channel, quantity, previous, version, computed_us)
SELECT b.sku, b.channel, b.quantity, a.quantity, :version, :now
FROM b_avail b LEFT JOIN availability a ON a.sku = b.sku AND a.channel = b.channel
WHERE a.sku IS NULL OR a.quantity <> b.quantity
ON CONFLICT (sku, channel) DO UPDATE SET
    previous = excluded.previous, quantity = excluded.quantity, version = excluded.version,
    computed_us = excluded.computed_us
"""

LEVEL_SCHEMA = pl.Schema(
    {"sku": pl.String, "location": pl.String, "on_hand": pl.Int64, "reserved": pl.Int64, "unavailable": pl.Int64,
     "incoming": pl.Int64, "available": pl.Int64, "version": pl.Int64, "updated_at": pl.Datetime("us", "UTC")}
)  # fmt: skip
AVAILABILITY_SCHEMA = pl.Schema(
    {"sku": pl.String, "channel": pl.String, "quantity": pl.Int64, "version": pl.Int64,
     "computed_at": pl.Datetime("us", "UTC")}
)  # fmt: skip


@dataclass(frozen=True)
class Changes:
    """What a change set did: changed stock levels and availability rows (decreases first), and refused movements."""

    levels: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=LEVEL_SCHEMA))
    availability: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=AVAILABILITY_SCHEMA))
    position: int = 0
    rejected: pl.DataFrame = field(default_factory=pl.DataFrame)
    """Movements not applied, with the rule they broke in `_kanal_reason`."""

    @property
    def empty(self) -> bool:
        return self.levels.is_empty() and self.availability.is_empty()


@dataclass(frozen=True)
class StockLevel:
    sku: str
    location: str
    on_hand: int = 0
    reserved: int = 0
    unavailable: int = 0
    incoming: int = 0
    version: int = 0

    @property
    def available(self) -> int:
        """On hand minus reserved and unavailable; negative when more was sold than the ledger knew of."""
        return self.on_hand - self.reserved - self.unavailable


@dataclass(frozen=True)
class Reservation:
    """The answer to `Ledger.reserve`: granted or not, and from which locations."""

    reservation_id: str
    sku: str
    channel: str
    quantity: int
    granted: bool
    available: int
    """What the channel showed when asked (before this reservation)."""
    lines: tuple[tuple[str, int], ...] = ()
    expires_at: dt.datetime | None = None


def _us(moment: dt.datetime | float | None, clock: Callable[[], float]) -> int:
    if moment is None:
        return int(clock() * 1_000_000)
    if isinstance(moment, dt.datetime):
        return int(moment.timestamp() * 1_000_000)
    return int(moment * 1_000_000)


def _first(rows: list[tuple[object, ...]]) -> tuple[object, ...] | None:
    """The first row of a statement run to its end (an unfinished one would keep a read transaction open,
    and a read transaction cannot wait for the write lock: BEGIN IMMEDIATE would fail at once)."""
    return rows[0] if rows else None


def _datetime(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / 1_000_000, dt.UTC)


class Ledger:
    """Durable movement ledger (see the module docstring). Safe to share between threads; other processes may open the same file."""

    def __init__(self, path: str | Path, rules: ChannelRules | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rules = rules or ChannelRules()
        self.clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA cache_size=-65536")  # 64 MiB: the indexes of a busy day stay in memory
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.executescript(_SCHEMA)
        self._load_rules()
        self._recompute_if_rules_changed()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at its start (BEGIN IMMEDIATE): a check and the write it allows cannot interleave."""
        with self._lock, immediate(self._db) as db:
            yield db

    # reading ----------------------------------------------------------------

    @property
    def position(self) -> int:
        with self._lock:
            rows = self._db.execute("SELECT value FROM meta WHERE name = 'position'").fetchall()
        return int(rows[0][0]) if rows else 0

    def level(self, sku: str, location: str) -> StockLevel:
        with self._lock:
            row = _first(self._db.execute(
                "SELECT on_hand, reserved, unavailable, incoming, version FROM stock WHERE sku = ? AND location = ?",
                (sku, location),
            ).fetchall())
        return StockLevel(sku, location, *row) if row else StockLevel(sku, location)

    def levels(self) -> pl.DataFrame:
        """Every stock level (for checks and reports)."""
        return self._levels_where("true", ())

    def availability(self, sku: str, channel: str) -> int:
        """What `channel` may sell of `sku` now (unknown channel: KeyError naming the known ones)."""
        self.rules.channel(channel)
        with self._lock:
            row = _first(self._db.execute(
                "SELECT quantity FROM availability WHERE sku = ? AND channel = ?", (sku, channel)
            ).fetchall())
            if row is not None:
                return int(row[0])
            return self._compute(self._db, sku, channel)

    @property
    def published(self) -> int:
        """The position up to which changes were published (`mark_published`)."""
        with self._lock:
            row = _first(self._db.execute("SELECT value FROM meta WHERE name = 'published'").fetchall())
        return int(row[0]) if row else 0

    def mark_published(self, position: int) -> None:
        """Everything up to `position` reached the broker: `changes_since(published)` starts after it next time."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('published', ?)", (position,))

    def offsets(self) -> dict[tuple[str, int], int]:
        """Per input (topic, partition), the next offset to read: stored in the same transaction as what was read."""
        with self._lock:
            return {(t, p): n for t, p, n in self._db.execute("SELECT topic, partition, next FROM offsets")}

    def changes_since(self, position: int) -> Changes:
        """Rows changed after `position` (the outbox), decreases first, then by key.

        Read in one read transaction: a write committed meanwhile (by this
        process's next batch, or a reservation from another process) must not
        raise the position returned beyond the rows returned, or marking that
        position published would skip its rows.
        """
        with self._lock:
            self._db.execute("BEGIN")
            try:
                levels = self._levels_where("version > ?", (position,))
                rows = self._db.execute(
                    "SELECT sku, channel, quantity, version, computed_us, quantity - COALESCE(previous, 0) AS change "
                    "FROM availability WHERE version > ? ORDER BY change, sku, channel",
                    (position,),
                ).fetchall()
                at = self.position
            finally:
                self._db.execute("COMMIT")
        avail = pl.DataFrame(
            [r[:5] for r in rows],
            schema={"sku": pl.String, "channel": pl.String, "quantity": pl.Int64, "version": pl.Int64, "computed_us": pl.Int64},
            orient="row",
        ).select("sku", "channel", "quantity", "version", pl.from_epoch("computed_us", "us").dt.replace_time_zone("UTC").alias("computed_at"))
        return Changes(levels, avail, at)

    def _levels_where(self, condition: str, params: tuple[object, ...]) -> pl.DataFrame:
        with self._lock:
            rows = self._db.execute(
                "SELECT sku, location, on_hand, reserved, unavailable, incoming, version, updated_us, "
                "(on_hand - reserved - unavailable) - COALESCE(previous, 0) AS change "
                f"FROM stock WHERE {condition} ORDER BY change, sku, location",
                params,
            ).fetchall()
        schema = {"sku": pl.String, "location": pl.String, "on_hand": pl.Int64, "reserved": pl.Int64,
                  "unavailable": pl.Int64, "incoming": pl.Int64, "version": pl.Int64, "updated_us": pl.Int64}  # fmt: skip
        frame = pl.DataFrame([r[:8] for r in rows], schema=schema, orient="row")
        return frame.select(
            "sku", "location", "on_hand", "reserved", "unavailable", "incoming",
            (pl.col("on_hand") - pl.col("reserved") - pl.col("unavailable")).alias("available"), "version",
            pl.from_epoch("updated_us", "us").dt.replace_time_zone("UTC").alias("updated_at"),
        )  # fmt: skip

    # writing ----------------------------------------------------------------

    def apply(self, movements: Sequence[Movement]) -> Changes:
        """Apply movements in one transaction; duplicates (by event_id) are ignored."""
        return self.apply_frame(movements_frame(movements))

    def apply_frame(self, frame: pl.DataFrame, offsets: dict[tuple[str, int], int] | None = None) -> Changes:
        """Apply a canonical `stock_movements` frame in one transaction, with the input `offsets` it ends at."""
        before, rejected = self._ingest(frame, offsets)
        changes = self.changes_since(before)
        return Changes(changes.levels, changes.availability, changes.position, rejected)

    def ingest(self, frame: pl.DataFrame, offsets: dict[tuple[str, int], int] | None = None) -> pl.DataFrame:
        """`apply_frame` without reading the changes back: returns the rejected movements only.

        For a caller that publishes from the outbox (`changes_since(published)`)
        anyway, as the aggregator does: reading each batch's changes twice cost
        as much as a quarter of applying it.
        """
        return self._ingest(frame, offsets)[1]

    def _ingest(self, frame: pl.DataFrame, offsets: dict[tuple[str, int], int] | None) -> tuple[int, pl.DataFrame]:
        """(the position before, the rejected movements)."""
        now = _us(None, self.clock)
        valid, rejected = check(frame, now)
        with self._transaction() as db:
            before = self._position(db)
            self._apply(db, valid, now)
            if offsets:
                db.executemany(
                    "INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE SET next = excluded.next",
                    [(t, p, n) for (t, p), n in offsets.items()],
                )
        return before, rejected

    def reserve(
        self, reservation_id: str, sku: str, quantity: int, channel: str, *, ttl_s: float | None = None,
        now: dt.datetime | float | None = None,
    ) -> Reservation:  # fmt: skip
        """Check and reserve in one transaction: granted only if `channel` shows at least `quantity` of `sku`.

        The units are taken from the channel's locations in the order the
        job file lists them, never below a location's floor. Asking again
        with the same `reservation_id` answers the first reservation and
        reserves nothing more. Two callers can never both get the last unit:
        the check and the write hold SQLite's write lock together, across
        threads and processes.
        """
        if quantity <= 0:
            raise ValueError(f"reservation {reservation_id}: quantity must be positive, not {quantity}")
        ch = self.rules.channel(channel)
        now_us = _us(now, self.clock)
        expires_us = now_us + int((ttl_s if ttl_s is not None else self.rules.reservation_ttl_s) * 1_000_000)
        with self._transaction() as db:
            held = db.execute(
                "SELECT location, reserved, expires_us FROM reservations WHERE reservation_id = ? AND sku = ?",
                (reservation_id, sku),
            ).fetchall()
            if held:
                lines = tuple((loc, n) for loc, n, _ in held)
                expiry = max((e for _, _, e in held if e is not None), default=None)
                return Reservation(reservation_id, sku, channel, sum(n for _, n in lines), True, self._compute(db, sku, channel),
                                   lines, _datetime(expiry) if expiry else None)  # fmt: skip
            available = self._compute(db, sku, channel)
            if quantity > available:
                return Reservation(reservation_id, sku, channel, quantity, False, available)
            sellable = dict(db.execute(
                f"SELECT s.location, {_SELLABLE} FROM stock s JOIN r_pool p ON p.location = s.location "
                "WHERE s.sku = ? AND p.channel = ?", (sku, channel),
            ).fetchall())
            lines, need = [], quantity
            for location in ch.locations:
                take = min(need, sellable.get(location, 0))
                if take > 0:
                    lines.append((location, take))
                    need -= take
            expires = _datetime(expires_us)
            movements = [
                Movement(f"reserve:{reservation_id}:{sku}:{loc}", sku, loc, -n, "reservation", _datetime(now_us),
                         source="kanal.reserve", reservation_id=reservation_id, expires_at=expires)
                for loc, n in lines
            ]  # fmt: skip
            valid, _ = check(movements_frame(movements), now_us)
            self._apply(db, valid, now_us)
        return Reservation(reservation_id, sku, channel, quantity, True, available, tuple(lines), expires)

    def release(self, reservation_id: str, *, now: dt.datetime | float | None = None) -> Changes:
        """Give back what is still reserved under `reservation_id` (a cancelled order): available at once. Idempotent."""
        return self._close("release", "reservation_id = ?", (reservation_id,), now)

    def expire(self, now: dt.datetime | float | None = None) -> Changes:
        """Release every reservation whose `expires_at` has passed, recorded as release movements in the ledger."""
        return self._close("expired", "expires_us <= ?", (_us(now, self.clock),), now)

    def _close(self, prefix: str, condition: str, params: tuple[object, ...], now: dt.datetime | float | None) -> Changes:
        now_us = _us(now, self.clock)
        with self._transaction() as db:
            before = self._position(db)
            due = db.execute(
                f"SELECT reservation_id, sku, location, open, expires_us FROM reservations WHERE open > 0 AND {condition}", params
            ).fetchall()
            if not due:
                return Changes(position=before)
            frame = pl.DataFrame(
                [(f"{prefix}:{r}:{s}:{loc}", s, loc, n, "release", (e if prefix == "expired" else now_us), r)
                 for r, s, loc, n, e in due],
                schema={"event_id": pl.String, "sku": pl.String, "location": pl.String, "delta": pl.Int64,
                        "reason": pl.String, "occurred_at": pl.Int64, "reservation_id": pl.String},
                orient="row",
            )  # fmt: skip
            valid, _ = check(frame, now_us)
            self._apply(db, valid, now_us)
        return self.changes_since(before)

    def recompute(self) -> Changes:
        """Compute every sku's availability again (the channel rules changed); rows that differ get a new version."""
        now = _us(None, self.clock)
        with self._transaction() as db:
            before = self._position(db)
            db.execute("DELETE FROM b_keys")
            db.execute("INSERT INTO b_keys SELECT sku, location FROM stock")
            version = before + 1
            if self._write_availability(db, version, now):
                self._set_position(db, version)
            self._set_rules(db)
        return self.changes_since(before)

    # internals --------------------------------------------------------------

    def _position(self, db: sqlite3.Connection) -> int:
        row = _first(db.execute("SELECT value FROM meta WHERE name = 'position'").fetchall())
        return int(row[0]) if row else 0

    def _set_position(self, db: sqlite3.Connection, position: int) -> None:
        db.execute("INSERT OR REPLACE INTO meta VALUES ('position', ?)", (position,))

    def _set_rules(self, db: sqlite3.Connection) -> None:
        db.execute("INSERT OR REPLACE INTO meta VALUES ('rules', ?)", (self.rules.model_dump_json(),))

    def _recompute_if_rules_changed(self) -> None:
        with self._lock:
            row = _first(self._db.execute("SELECT value FROM meta WHERE name = 'rules'").fetchall())
        if row is None or row[0] != self.rules.model_dump_json():
            self.recompute()

    def _apply(self, db: sqlite3.Connection, valid: pl.DataFrame, now: int) -> None:
        """Apply checked movements inside the caller's transaction; the new ones get the next position."""
        if valid.is_empty():
            return
        for table in ("b_eff", "b_hold", "b_keys"):
            db.execute(f"DELETE FROM {table}")
        version = self._position(db) + 1
        last = db.execute("SELECT COALESCE(MAX(position), 0) FROM movements").fetchall()[0][0]
        # Straight into the ledger: the UNIQUE event_id drops what was seen before (`check` dropped
        # repeats within the batch), and what is new is what got a position after `last`.
        columns = ", ".join(MOVEMENT_SCHEMA)
        db.executemany(
            f"INSERT OR IGNORE INTO movements ({columns}, batch) VALUES ({', '.join('?' * (len(MOVEMENT_SCHEMA) + 1))})",
            valid.with_columns(pl.lit(version).alias("batch")).sort("event_id").iter_rows(),  # in index order
        )
        fresh = db.execute("SELECT count(*) FROM movements WHERE position > ?", (last,)).fetchall()[0][0]
        if fresh == 0:
            return
        db.execute(_EFFECTS, {"last": last})
        db.execute(_BATCH_HOLDS, {"last": last})
        db.execute("INSERT INTO effects SELECT * FROM b_eff ORDER BY sku, location, bucket, occurred_us")
        db.execute("INSERT OR IGNORE INTO levels (sku, location, bucket, total) SELECT DISTINCT sku, location, bucket, 0 FROM b_eff")
        db.execute(_DELTAS)
        db.execute(_COUNTS)
        db.execute(_HOLDS)
        db.execute(_RESERVED)
        db.execute("INSERT OR IGNORE INTO b_keys SELECT sku, location FROM b_eff UNION SELECT sku, location FROM b_hold")
        db.execute(_STOCK, {"version": version, "now": now})
        self._write_availability(db, version, now)
        self._set_position(db, version)

    def _compute(self, db: sqlite3.Connection, sku: str, channel: str) -> int:
        row = _first(db.execute(f"{_availability_of('SELECT ? AS sku')} WHERE channel = ?", (sku, channel)).fetchall())
        return int(row[2]) if row is not None else 0

    def _write_availability(self, db: sqlite3.Connection, version: int, now: int) -> bool:
        """Availability of the skus in `b_keys` on every channel; rows whose quantity changed get `version`."""
        if not self.rules.channels:
            return False
        db.execute("DELETE FROM b_avail")
        db.execute(f"INSERT INTO b_avail {_availability_of('SELECT DISTINCT sku FROM b_keys')}")
        return db.execute(_AVAILABILITY, {"version": version, "now": now}).rowcount > 0

    def _load_rules(self) -> None:
        """The channel rules as the tables the availability statements join (this connection's, in memory)."""
        rules = self.rules
        with self._lock, immediate(self._db) as db:
            db.execute("DELETE FROM r_channels")
            db.execute("DELETE FROM r_pool")
            db.executemany("INSERT INTO r_channels VALUES (?, ?, ?, ?)", [
                (name, ch.buffer if ch.percent is None else None, ch.percent, ch.cap) for name, ch in rules.channels.items()
            ])  # fmt: skip
            db.executemany("INSERT INTO r_pool VALUES (?, ?, ?)", [
                (loc, name, rules.floor(name, loc)) for name, ch in rules.channels.items() for loc in ch.locations
            ])  # fmt: skip
