"""A stateful property test of the ledger: whatever happens, in whatever order, the numbers stay right.

Hypothesis interleaves sales, returns, receipts, transfers, damage, physical
counts, reservations (some fulfilled, some cancelled, some left to expire),
late and out-of-order delivery, duplicate delivery, a store's POS going
offline and uploading its sales later, and crashes of the aggregator (the
ledger reopened from its file). After every step:

* the ledger's stock levels equal what a plain reference model computes from
  the movements the ledger recorded (counts by `occurred_at`, sums after them,
  reservations as sums), so any arrival order converges to the in-order result;
* every channel shows exactly its rules applied to those levels: never more
  than is available, never negative;
* the ledger recorded each delivered movement once;
* a reservation is granted exactly when the channel shows enough.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kanal.core.inventory import ChannelRules, Ledger, Movement

SKUS = ("A", "B")
LOCATIONS = ("WH1", "S1", "S2")
RULES = ChannelRules.model_validate(
    {
        "floors": {"S1": 1},
        "reservation_ttl_s": 600,
        "channels": {
            "web": {"locations": ["WH1", "S1", "S2"], "buffer": 1},
            "marketplace": {"locations": ["WH1"], "buffer": "20%", "cap": 5},
            "store": {"locations": ["S2"], "floors": {"S2": 0}},
        },
    }
)
T0 = dt.datetime(2026, 5, 1, 8, 0, tzinfo=dt.UTC)
_MOVEMENT_COLUMNS = "event_id, sku, location, delta, reason, occurred_us, reservation_id, bucket, counterpart"


def reference_levels(rows: list[tuple]) -> dict[tuple[str, str], dict[str, int]]:
    """Stock per (sku, location) from ledger rows, the plain way: one Python pass, no SQL."""
    effects: dict[tuple[str, str, str], list[tuple[int, str, str, int]]] = defaultdict(list)
    holds: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for event_id, sku, loc, delta, reason, occurred, rid, bucket, counterpart in rows:
        if reason == "reservation":
            holds[(rid, sku, loc)][0] += -delta
            continue
        if reason == "release":
            holds[(rid, sku, loc)][1] += delta
            continue
        if reason == "sale" and rid is not None:
            holds[(rid, sku, loc)][2] += -delta
        own = (bucket or "on_hand") if reason in ("adjustment", "count") else "on_hand"
        effects[(sku, loc, own)].append((occurred, event_id, "count" if reason == "count" else "delta", delta))
        if (reason == "receipt" and bucket == "incoming") or (reason == "transfer_in" and counterpart):
            effects[(sku, loc, "incoming")].append((occurred, event_id, "delta", -delta))
        if reason == "transfer_out" and counterpart:
            effects[(sku, counterpart, "incoming")].append((occurred, event_id, "delta", -delta))
    levels: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {"on_hand": 0, "reserved": 0, "unavailable": 0, "incoming": 0}
    )
    for (sku, loc, bucket), items in effects.items():
        counts = [e for e in items if e[2] == "count"]
        if counts:
            last = max(counts, key=lambda e: (e[0], e[1]))
            total = last[3] + sum(e[3] for e in items if e[2] == "delta" and e[0] > last[0])
        else:
            total = sum(e[3] for e in items)
        levels[(sku, loc)][bucket] = total
    for (_, sku, loc), (reserved, released, consumed) in holds.items():
        levels[(sku, loc)]["reserved"] += max(0, reserved - released - consumed)
    return levels


def reference_availability(levels: dict[tuple[str, str], dict[str, int]], sku: str, channel: str) -> int:
    ch = RULES.channels[channel]
    pooled = 0
    for loc in ch.locations:
        q = levels.get((sku, loc), {"on_hand": 0, "reserved": 0, "unavailable": 0})
        pooled += max(0, q["on_hand"] - q["reserved"] - q["unavailable"] - RULES.floor(channel, loc))
    buffer = int(ch.buffer) if ch.percent is None else math.ceil(pooled * ch.percent / 100)
    quantity = max(0, pooled - buffer)
    return min(quantity, ch.cap) if ch.cap is not None else quantity


quantities = st.integers(min_value=1, max_value=6)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="kanal-ledger-"))
        self.minute = 0
        self.ledger = self._open()
        self.serial = 0
        self.pending: list[Movement] = []  # recorded somewhere, not delivered yet
        self.offline_pos: list[Movement] | None = None  # S2's till while it has no connection
        self.delivered: dict[str, Movement] = {}
        self.reservations: dict[str, tuple[tuple[str, int], ...]] = {}
        self.reservation_sku: dict[str, str] = {}

    def _open(self) -> Ledger:
        return Ledger(self.folder / "ledger.sqlite", RULES, clock=lambda: (T0 + dt.timedelta(minutes=self.minute)).timestamp())

    def _now(self, earlier: int = 0) -> dt.datetime:
        return T0 + dt.timedelta(minutes=self.minute - earlier)

    def _record(self, sku: str, loc: str, delta: int, reason: str, **extra: object) -> Movement:
        self.serial += 1
        m = Movement(f"e{self.serial}", sku, loc, delta, reason, extra.pop("occurred_at", self._now()), source=loc, **extra)  # type: ignore[arg-type]
        if loc == "S2" and self.offline_pos is not None and reason != "count":  # counts come from another device
            self.offline_pos.append(m)
        else:
            self.pending.append(m)
        return m

    def _deliver(self, batch: list[Movement]) -> None:
        self.ledger.apply(batch)
        for m in batch:
            self.delivered[m.event_id] = m

    def _ledger_rows(self) -> list[tuple]:
        return self.ledger._db.execute(f"SELECT {_MOVEMENT_COLUMNS} FROM movements").fetchall()

    # what happens in the shops --------------------------------------------------

    @rule(sku=st.sampled_from(SKUS), loc=st.sampled_from(LOCATIONS), qty=quantities)
    def receipt(self, sku: str, loc: str, qty: int) -> None:
        self._record(sku, loc, qty, "receipt")

    @rule(sku=st.sampled_from(SKUS), loc=st.sampled_from(LOCATIONS), qty=quantities, late=st.integers(0, 30))
    def sale(self, sku: str, loc: str, qty: int, late: int) -> None:
        self._record(sku, loc, -qty, "sale", occurred_at=self._now(late))

    @rule(sku=st.sampled_from(SKUS), loc=st.sampled_from(LOCATIONS), qty=quantities)
    def customer_return(self, sku: str, loc: str, qty: int) -> None:
        self._record(sku, loc, qty, "return")

    @rule(sku=st.sampled_from(SKUS), loc=st.sampled_from(LOCATIONS), qty=st.integers(-2, 3))
    def damaged(self, sku: str, loc: str, qty: int) -> None:
        self._record(sku, loc, qty, "adjustment", bucket="unavailable")

    @rule(sku=st.sampled_from(SKUS), src=st.sampled_from(LOCATIONS), dst=st.sampled_from(LOCATIONS), qty=quantities)
    def transfer(self, sku: str, src: str, dst: str, qty: int) -> None:
        if src == dst:
            return
        self._record(sku, src, -qty, "transfer_out", counterpart=dst)
        self._record(sku, dst, qty, "transfer_in", counterpart=src)

    @rule(sku=st.sampled_from(SKUS), loc=st.sampled_from(LOCATIONS), counted=st.integers(0, 12), late=st.integers(0, 20))
    def physical_count(self, sku: str, loc: str, counted: int, late: int) -> None:
        self._record(sku, loc, counted, "count", occurred_at=self._now(late))

    # the web shop's reservations ---------------------------------------------------

    @rule(sku=st.sampled_from(SKUS), channel=st.sampled_from(sorted(RULES.channels)), qty=st.integers(1, 4))
    def reserve(self, sku: str, channel: str, qty: int) -> None:
        shown = reference_availability(reference_levels(self._ledger_rows()), sku, channel)
        rid = f"o{self.serial}-{sku}-{channel}"
        self.serial += 1
        answer = self.ledger.reserve(rid, sku, qty, channel, now=self._now())
        assert answer.granted == (qty <= shown), (answer, shown)
        if answer.granted:
            assert sum(n for _, n in answer.lines) == qty
            self.reservations[rid] = answer.lines
            self.reservation_sku[rid] = sku

    @precondition(lambda self: self.reservations)
    @rule(data=st.data())
    def fulfil(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.reservations)))
        for loc, n in self.reservations.pop(rid):
            self._record(self.reservation_sku[rid], loc, -n, "sale", reservation_id=rid)

    @precondition(lambda self: self.reservations)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.reservations)))
        self.reservations.pop(rid)
        self.ledger.release(rid, now=self._now())

    @rule(minutes=st.integers(1, 12))
    def time_passes(self, minutes: int) -> None:
        self.minute += minutes
        self.ledger.expire()

    # the way movements travel ------------------------------------------------------------

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def deliver_some(self, data: st.DataObject) -> None:
        batch = data.draw(st.lists(st.sampled_from(self.pending), min_size=1, max_size=8, unique_by=lambda m: m.event_id))
        batch = data.draw(st.permutations(batch))
        self._deliver(batch)
        taken = {m.event_id for m in batch}
        self.pending = [m for m in self.pending if m.event_id not in taken]

    @precondition(lambda self: self.delivered)
    @rule(data=st.data())
    def deliver_again(self, data: st.DataObject) -> None:
        again = data.draw(st.lists(st.sampled_from(sorted(self.delivered)), min_size=1, max_size=6))
        position = self.ledger.position
        changes = self.ledger.apply([self.delivered[e] for e in again])
        assert changes.empty and self.ledger.position == position

    @precondition(lambda self: self.offline_pos is None)
    @rule()
    def store_goes_offline(self) -> None:
        self.offline_pos = []

    @precondition(lambda self: self.offline_pos is not None)
    @rule(data=st.data())
    def store_comes_back(self, data: st.DataObject) -> None:
        journal, self.offline_pos = self.offline_pos or [], None
        journal = data.draw(st.permutations(journal))
        half = len(journal) // 2
        for batch in (journal[:half], journal[half:], journal):  # uploaded in two parts, then all of it again
            if batch:
                self._deliver(list(batch))

    @rule()
    def aggregator_crashes(self) -> None:
        self.ledger.close()
        self.ledger = self._open()

    # what must always hold ----------------------------------------------------------

    @invariant()
    def levels_and_channels_follow_from_the_ledger_alone(self) -> None:
        rows = self._ledger_rows()
        recorded = [r[0] for r in rows if not r[0].startswith(("reserve:", "release:", "expired:"))]
        assert sorted(recorded) == sorted(self.delivered), "a delivered movement is missing or recorded twice"
        expected = reference_levels(rows)
        actual = {(r["sku"], r["location"]): r for r in self.ledger.levels().iter_rows(named=True)}
        for key, want in expected.items():
            got = actual[key]
            assert {b: got[b] for b in want} == want, key
            assert got["available"] == want["on_hand"] - want["reserved"] - want["unavailable"]
        for sku in SKUS:
            for channel in RULES.channels:
                shown = self.ledger.availability(sku, channel)
                assert shown == reference_availability(expected, sku, channel) >= 0, (sku, channel)

    def teardown(self) -> None:
        self.ledger.close()
        shutil.rmtree(self.folder, ignore_errors=True)


LedgerMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLedgerProperties = LedgerMachine.TestCase
