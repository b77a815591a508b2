"""When does a movement posted at a till show in Redis and in the shop's table? Matching posts with changes.

The poster tells `Tracker` what each movement should make a record show:
after this sale, `kanal:stock:S1:SKU-3` holds `on_hand` 7 (or the `web`
availability of SKU-3 is 41). Watchers report every value a sink shows as it
appears: `RedisWatch` follows the sink's change streams (XREAD BLOCK),
`ShopWatch` has PostgreSQL NOTIFY each row the sink writes (a trigger it
adds to the shop's tables) and LISTENs. A value seen settles the latest
movement of that record expecting it and every earlier one: the sinks may
take several movements in one change, and a movement's latency is the time
from its post to the first change that includes it.

Matching is exact when a record's movements are posted in order by one
poster (sales only, or the store's own running figure). A movement that
brings a record back to a value shown or expected while earlier ones wait (a
return right after a sale) may never show on its own, as the aggregator
publishes only changed levels: such movements are marked `netted` and their
latency is left out of the figures.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg

SINKS = ("redis", "shop")
PLACE = {"stock_levels": "location", "availability": "channel"}
VALUE = {"stock_levels": "on_hand", "availability": "quantity"}
TABLES = {"shop_stock": "stock_levels", "shop_availability": "availability"}


@dataclass
class Posted:
    """One movement on its way: the record it changes, the value it makes it show, when it was posted."""

    entity: str
    sku: str
    place: str
    expected: int
    posted_at: float
    label: str = ""
    offline: bool = False
    """Posted while its site could not reach the broker."""
    before: int | None = None
    """The value the record had before this movement, when the poster knows it."""
    netted: bool = False
    """A later movement brings the record back to a value shown or expected before, so the sinks may never show this
    one on its own (a sale and a return in one batch change no level): its latency is unknown."""
    seen: dict[str, float] = field(default_factory=dict)
    """Per sink, seconds from post to the first change showing it."""


class Tracker:
    """Posted movements waiting to show in each sink; `on_shown(movement)` once every sink showed it."""

    def __init__(self, on_shown: Callable[[Posted], None] | None = None, sinks: tuple[str, ...] = SINKS) -> None:
        self.on_shown, self.sinks = on_shown, sinks
        self._waiting: dict[tuple[str, str, str], list[Posted]] = defaultdict(list)
        self._lock = threading.Lock()
        self.latencies: dict[str, list[float]] = {s: [] for s in sinks}

    def expect(self, movement: Posted) -> None:
        with self._lock:
            waiting = self._waiting[(movement.entity, movement.sku, movement.place)]
            if waiting and movement.expected in {waiting[0].before, *(m.expected for m in waiting)}:
                for earlier in waiting:
                    earlier.netted = True
                movement.netted = True
            waiting.append(movement)

    def seen(self, sink: str, entity: str, sku: str, place: str, value: int, at: float) -> None:
        shown: list[Posted] = []
        with self._lock:
            waiting = self._waiting.get((entity, sku, place))
            if not waiting:
                return
            last = next((i for i in range(len(waiting) - 1, -1, -1) if waiting[i].expected == value), None)
            if last is None:
                return
            for movement in waiting[: last + 1]:
                if sink not in movement.seen:
                    movement.seen[sink] = at - movement.posted_at
                    if not movement.netted:
                        self.latencies[sink].append(movement.seen[sink])
                    if len(movement.seen) == len(self.sinks):
                        shown.append(movement)
            waiting[:] = [m for m in waiting if len(m.seen) < len(self.sinks)]
        for movement in shown:
            if self.on_shown is not None:
                self.on_shown(movement)

    def waiting(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._waiting.values())


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def _int(value: Any) -> int:
    return int(Decimal(str(value)))


class RedisWatch(threading.Thread):
    """Reports each change the Redis sink applies, from its change streams, as it is applied."""

    def __init__(self, client: Any, tracker: Tracker, entities: tuple[str, ...] = ("stock_levels", "availability"),
                 prefix: str = "kanal") -> None:  # fmt: skip
        super().__init__(name="kanal-watch-redis", daemon=True)
        self.client, self.tracker, self.stop = client, tracker, threading.Event()
        areas = {"stock_levels": "stock", "availability": "availability"}
        self.streams = {f"{prefix}:{areas[e]}:changes": e for e in entities}

    def run(self) -> None:
        after = {}
        for stream in self.streams:  # from the last entry now: a '$' in every call would miss what came between
            last = self.client.xrevrange(stream, count=1)
            after[stream] = last[0][0] if last else "0-0"
        while not self.stop.is_set():
            for stream, entries in self.client.xread(after, block=200, count=5000) or []:
                now = time.time()
                name = stream.decode() if isinstance(stream, bytes) else stream
                entity = self.streams[name]
                for entry_id, raw in entries:
                    after[name] = entry_id
                    fields = {k.decode(): v.decode() for k, v in raw.items()}
                    if fields.get("op") == "upsert" and VALUE[entity] in fields:
                        self.tracker.seen("redis", entity, fields["sku"], fields[PLACE[entity]], _int(fields[VALUE[entity]]), now)


_NOTIFY = """
create or replace function kanal_watch_notify() returns trigger language plpgsql as $$
begin
  perform pg_notify('kanal_watch', json_build_object('table', TG_TABLE_NAME, 'row', to_jsonb(new))::text);
  return null;
end $$;
"""


class ShopWatch(threading.Thread):
    """Reports each row the PostgreSQL sink writes to the shop's tables, when its transaction commits (NOTIFY)."""

    def __init__(self, dsn: str, tracker: Tracker, tables: tuple[str, ...] = tuple(TABLES)) -> None:
        super().__init__(name="kanal-watch-shop", daemon=True)
        self.dsn, self.tracker, self.tables, self.stop = dsn, tracker, tables, threading.Event()
        self.listening = threading.Event()

    def _install(self, conn: psycopg.Connection) -> bool:
        """Add the trigger once the sink created its tables; True when every table has it."""
        exists = [t for t in self.tables if conn.execute("select to_regclass(%s)", (t,)).fetchone()[0]]  # type: ignore[index]
        if len(exists) < len(self.tables):
            return False
        conn.execute(_NOTIFY)
        for table in self.tables:
            conn.execute(f"create or replace trigger kanal_watch after insert or update on {table} "
                         "for each row execute function kanal_watch_notify()")  # fmt: skip
        return True

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set() and not self._install(conn):
                self.stop.wait(0.2)
            conn.execute("listen kanal_watch")
            self.listening.set()
            while not self.stop.is_set():
                for note in conn.notifies(timeout=0.2):
                    now = time.time()
                    payload = json.loads(note.payload)
                    entity, row = TABLES[payload["table"]], payload["row"]
                    if row.get(VALUE[entity]) is not None:
                        self.tracker.seen("shop", entity, row["sku"], row[PLACE[entity]], _int(row[VALUE[entity]]), now)
