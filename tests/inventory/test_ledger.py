"""The movement ledger: exactly once, Square's count model, transfers, buckets, channel rules, reservations."""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
import threading
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from kanal.core.inventory import ChannelRules, Ledger, Movement

T0 = dt.datetime(2026, 3, 1, 13, 0, tzinfo=dt.UTC)


def at(minute: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minute)


RULES = ChannelRules.model_validate(
    {
        "floors": {"S1": 1},
        "channels": {
            "web": {"locations": ["WH1", "S1"], "buffer": 2},
            "marketplace": {"locations": ["WH1"], "buffer": "10%", "cap": 50},
            "store": {"locations": ["S1"], "floors": {"S1": 0}},
        },
    }
)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite", RULES)


def test_a_sale_recorded_offline_before_a_count_does_not_subtract_twice(ledger: Ledger) -> None:
    """Square's worked example: sale at 13:20 offline, count 95 at 13:30, upload at 13:35, waste at 13:40."""
    ledger.apply([Movement("r", "A", "S1", 100, "receipt", at(0))])
    ledger.apply([Movement("count", "A", "S1", 95, "count", at(30))])
    ledger.apply([Movement("pos-sale", "A", "S1", -2, "sale", at(20))])  # uploaded late
    assert ledger.level("A", "S1").on_hand == 95
    ledger.apply([Movement("waste", "A", "S1", -1, "adjustment", at(40))])
    assert ledger.level("A", "S1").on_hand == 94


def test_any_arrival_order_and_any_duplicates_end_at_the_in_order_levels(tmp_path: Path) -> None:
    moves = [
        Movement("r1", "A", "WH1", 40, "receipt", at(0)),
        Movement("s1", "A", "WH1", -3, "sale", at(5)),
        Movement("c1", "A", "WH1", 30, "count", at(10)),
        Movement("s2", "A", "WH1", -1, "sale", at(12)),
        Movement("c2", "A", "WH1", 28, "count", at(20)),
        Movement("s3", "A", "WH1", -2, "sale", at(15)),  # before the second count: no effect
        Movement("t1", "A", "WH1", -5, "transfer_out", at(25), counterpart="S1"),
        Movement("t2", "A", "S1", 5, "transfer_in", at(40), counterpart="WH1"),
        Movement("d1", "A", "S1", 2, "adjustment", at(41), bucket="unavailable"),
        Movement("res", "A", "S1", -1, "reservation", at(42), reservation_id="o1"),
    ]
    expected = {"WH1": (23, 0, 0, 0), "S1": (5, 1, 2, 0)}
    rng = random.Random(7)
    for run in range(6):
        shuffled = moves + rng.sample(moves, 4)  # some delivered twice
        rng.shuffle(shuffled)
        with Ledger(tmp_path / f"l{run}.sqlite", RULES) as ledger:
            for start in range(0, len(shuffled), 3):  # in batches of 3
                ledger.apply(shuffled[start : start + 3])
            for loc, want in expected.items():
                level = ledger.level("A", loc)
                assert (level.on_hand, level.reserved, level.unavailable, level.incoming) == want, (run, loc)


def test_a_movement_delivered_again_after_a_restart_counts_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path, RULES) as ledger:
        ledger.apply([Movement("r1", "A", "WH1", 10, "receipt", at(0)), Movement("s1", "A", "WH1", -4, "sale", at(1))])
        position = ledger.position
    with Ledger(path, RULES) as reopened:
        changes = reopened.apply([Movement("s1", "A", "WH1", -4, "sale", at(1))])
        assert changes.empty and reopened.position == position
        assert reopened.level("A", "WH1").on_hand == 6


def test_transfers_and_announced_supply_show_as_incoming_until_they_arrive(ledger: Ledger) -> None:
    ledger.apply([
        Movement("r1", "A", "WH1", 10, "receipt", at(0)),
        Movement("out", "A", "WH1", -4, "transfer_out", at(1), counterpart="S1"),
        Movement("po", "A", "WH1", 20, "adjustment", at(2), bucket="incoming"),
    ])  # fmt: skip
    assert ledger.level("A", "S1").incoming == 4 and ledger.level("A", "S1").on_hand == 0
    assert ledger.level("A", "WH1").on_hand == 6 and ledger.level("A", "WH1").incoming == 20
    ledger.apply([
        Movement("in", "A", "S1", 4, "transfer_in", at(3), counterpart="WH1"),
        Movement("po-in", "A", "WH1", 20, "receipt", at(4), bucket="incoming"),
    ])  # fmt: skip
    assert (ledger.level("A", "S1").on_hand, ledger.level("A", "S1").incoming) == (4, 0)
    assert (ledger.level("A", "WH1").on_hand, ledger.level("A", "WH1").incoming) == (26, 0)


def test_channels_apply_floors_buffers_and_caps_and_never_go_negative(ledger: Ledger) -> None:
    ledger.apply([Movement("r1", "A", "WH1", 100, "receipt", at(0)), Movement("r2", "A", "S1", 3, "receipt", at(0))])
    assert ledger.availability("A", "web") == 100 + (3 - 1) - 2  # S1 keeps its floor of 1, web holds back 2
    assert ledger.availability("A", "marketplace") == 50  # 100 - ceil(10%) = 90, capped at 50
    assert ledger.availability("A", "store") == 3  # the store channel has no floor at S1
    ledger.apply([Movement("broken", "A", "WH1", 95, "adjustment", at(1), bucket="unavailable")])
    assert ledger.availability("A", "marketplace") == 4  # 5 sellable - ceil(0.5) held back
    assert ledger.availability("A", "web") == 5
    ledger.apply([Movement("oversold", "A", "WH1", -20, "sale", at(2)), Movement("s1", "A", "S1", -3, "sale", at(2))])
    assert ledger.level("A", "WH1").available == -15  # the physical truth is kept, not clamped
    assert ledger.availability("A", "web") == 0 and ledger.availability("A", "marketplace") == 0
    with pytest.raises(KeyError, match="web, marketplace, store"):
        ledger.availability("A", "pos")


def test_a_batch_publishes_decreases_before_increases(ledger: Ledger) -> None:
    ledger.apply([Movement(f"r{s}", s, "WH1", 10, "receipt", at(0)) for s in "ABC"])
    changes = ledger.apply([
        Movement("up", "A", "WH1", 5, "receipt", at(1)),
        Movement("down", "B", "WH1", -10, "sale", at(1)),
        Movement("less", "C", "WH1", -1, "sale", at(1)),
    ])  # fmt: skip
    assert changes.levels.get_column("sku").to_list() == ["B", "C", "A"]
    web = changes.availability.filter(pl.col("channel") == "web")
    assert web.get_column("sku").to_list() == ["B", "C", "A"]
    assert web.get_column("quantity").to_list() == [0, 7, 13]
    assert set(changes.levels.get_column("version")) == {ledger.position}


def test_refused_movements_come_back_with_their_reason_and_change_nothing(ledger: Ledger) -> None:
    changes = ledger.apply([
        Movement("a", "A", "WH1", 5, "sale", at(0)),
        Movement("b", "A", "WH1", -1, "reservation", at(0)),
        Movement("c", "A", "WH1", 1, "receipt", at(0), bucket="unavailable"),
        Movement("d", "A", "WH1", -2, "count", at(0)),
    ])  # fmt: skip
    reasons = dict(zip(changes.rejected.get_column("event_id"), changes.rejected.get_column("_kanal_reason"), strict=True))
    assert reasons == {
        "a": "sale needs a delta of 0 or less (units leave)",
        "b": "reservation needs a reservation_id",
        "c": "a receipt's bucket can only be incoming (the units were announced)",
        "d": "count needs a delta of 0 or more",
    }
    assert changes.empty and ledger.position == 0


def test_reservations_are_checked_fulfilled_released_and_expire(ledger: Ledger) -> None:
    ledger.apply([Movement("r1", "A", "WH1", 3, "receipt", at(0)), Movement("r2", "A", "S1", 3, "receipt", at(0))])
    assert ledger.availability("A", "web") == 3  # 3 + (3 - 1 floor) - 2 buffer
    first = ledger.reserve("o1", "A", 2, "web", ttl_s=60, now=at(1))
    assert first.granted and first.lines == (("WH1", 2),)
    assert ledger.reserve("o1", "A", 2, "web", now=at(1)).lines == first.lines  # asked again: the same one
    assert ledger.availability("A", "web") == 1
    refused = ledger.reserve("o2", "A", 2, "web", now=at(1))
    assert not refused.granted and refused.available == 1 and ledger.level("A", "WH1").reserved == 2
    second = ledger.reserve("o2", "A", 1, "web", ttl_s=600, now=at(1))
    assert second.granted and ledger.availability("A", "web") == 0

    ledger.apply([Movement("ship-o1", "A", "WH1", -2, "sale", at(2), reservation_id="o1")])  # fulfilment
    assert (ledger.level("A", "WH1").on_hand, ledger.level("A", "WH1").reserved) == (1, 1)
    assert ledger.availability("A", "web") == 0

    ledger.expire(now=at(5))  # o2 lives 10 minutes
    assert ledger.level("A", "WH1").reserved == 1
    ledger.release("o2", now=at(6))  # cancelled: available at once
    ledger.release("o2", now=at(7))
    assert ledger.level("A", "WH1").reserved == 0 and ledger.availability("A", "web") == 1

    third = ledger.reserve("o3", "A", 1, "web", ttl_s=60, now=at(8))
    assert third.granted and ledger.availability("A", "web") == 0
    ledger.expire(now=at(10))
    assert ledger.availability("A", "web") == 1
    expired = ledger._db.execute("SELECT event_id, occurred_us FROM movements WHERE reason = 'release' AND event_id LIKE 'expired:%'").fetchall()
    assert expired == [("expired:o3:A:WH1", int((at(9)).timestamp() * 1_000_000))]


def test_a_return_makes_stock_available_at_once(ledger: Ledger) -> None:
    ledger.apply([Movement("r1", "A", "WH1", 2, "receipt", at(0)), Movement("s1", "A", "WH1", -2, "sale", at(1))])
    assert ledger.availability("A", "web") == 0
    ledger.apply([Movement("ret", "A", "WH1", 3, "return", at(2))])
    assert ledger.availability("A", "web") == 1


_BUYER = """
import sys
from kanal.core.inventory import ChannelRules, Ledger
ledger = Ledger(sys.argv[1], ChannelRules.model_validate_json(sys.argv[2]))
print("ready", flush=True)
sys.stdin.readline()
print(ledger.reserve(sys.argv[3], "A", 1, "store").granted, flush=True)
"""


def test_processes_cannot_both_reserve_the_last_unit(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    with Ledger(path, RULES) as ledger:
        ledger.apply([Movement("r1", "A", "S1", 1, "receipt", at(0))])
        assert ledger.availability("A", "store") == 1
    buyers = [
        subprocess.Popen([sys.executable, "-c", _BUYER, path, RULES.model_dump_json(), f"o{i}"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for i in range(4)
    ]  # fmt: skip
    for b in buyers:
        assert b.stdout is not None and b.stdout.readline().strip() == "ready"
    for b in buyers:  # all open and waiting: start them together
        assert b.stdin is not None
        b.stdin.write("go\n")
        b.stdin.flush()
    granted = sorted(b.communicate(timeout=60)[0].strip() for b in buyers)
    assert granted == ["False", "False", "False", "True"]
    with Ledger(path, RULES) as ledger:
        assert ledger.level("A", "S1").reserved == 1 and ledger.availability("A", "store") == 0


def test_threads_sharing_nothing_but_the_file_never_oversell(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path, RULES) as ledger:
        ledger.apply([Movement("r1", "A", "S1", 5, "receipt", at(0))])
    granted: list[int] = []
    start = threading.Barrier(8)

    def buyer(i: int) -> None:
        with Ledger(path, RULES) as mine:
            start.wait()
            if mine.reserve(f"o{i}", "A", 2, "store").granted:
                granted.append(i)

    threads = [threading.Thread(target=buyer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 2  # 5 units, 2 each: two orders fit, never three


def test_channel_rules_refuse_what_cannot_be_meant() -> None:
    with pytest.raises(ValidationError, match="percentage from 0% to 100%"):
        ChannelRules.model_validate({"channels": {"web": {"locations": ["WH1"], "buffer": "ten"}}})
    with pytest.raises(ValidationError, match="floors name S9"):
        ChannelRules.model_validate({"channels": {"web": {"locations": ["WH1"], "floors": {"S9": 1}}}})
    with pytest.raises(ValidationError, match="at least 1 item"):
        ChannelRules.model_validate({"channels": {"web": {"locations": []}}})


def test_changed_rules_recompute_every_sku_with_a_new_version(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path, RULES) as ledger:
        ledger.apply([Movement("r1", "A", "WH1", 10, "receipt", at(0))])
        before = ledger.position
    tighter = RULES.model_copy(update={"channels": {**RULES.channels, "web": RULES.channels["web"].model_copy(update={"buffer": 5})}})
    with Ledger(path, tighter) as ledger:
        assert ledger.availability("A", "web") == 5
        changed = ledger.changes_since(before).availability
        assert changed.filter(pl.col("channel") == "web").get_column("version").to_list() == [before + 1]


def test_a_write_committed_while_changes_are_read_is_left_for_the_next_read(tmp_path: Path) -> None:
    """The aggregator publishes beside its next batch, and reservations come from other processes:
    `changes_since` must never return a position covering rows it did not return, or they are never published."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, RULES)
    ledger.apply([Movement("r", "A", "S1", 10, "receipt", at(0))])
    other = Ledger(path, RULES)  # another connection, as `kanal reserve` or the edge API open it
    read_levels = ledger._levels_where

    def levels_then_a_reservation(condition: str, params: tuple[object, ...]) -> pl.DataFrame:
        levels = read_levels(condition, params)
        other.reserve("order-1", "A", 1, "store")
        return levels

    ledger._levels_where = levels_then_a_reservation  # type: ignore[method-assign]
    first = ledger.changes_since(0)
    ledger._levels_where = read_levels  # type: ignore[method-assign]
    then = ledger.changes_since(first.position)
    reserved = pl.concat([first.levels, then.levels]).filter(pl.col("reserved") == 1)
    assert reserved.height == 1, "the reservation's stock level was skipped by the outbox"
    other.close()
    ledger.close()
