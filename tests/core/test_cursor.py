"""The generic cursor reader (`core.cursor`) over a source that yields ISO 8601 text, as an HTTP API would."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl
import pytest

from kanal.core.connector import VERSION
from kanal.core.cursor import cursor_version
from tests.core.api import ApiReader
from tests.core.api import micros

_T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _ids(reader: ApiReader, position: dict) -> tuple[list[str], dict]:
    changes = reader.read(position)
    frame = changes.frames.get("products")
    return ([] if frame is None else frame.get_column("id").to_list()), json.loads(json.dumps(changes.position))


def test_text_timestamps_in_any_iso_form_give_the_same_version_as_datetimes() -> None:
    texts = ["2024-05-01T12:00:00Z", "2024-05-01 14:00:00+02:00", "2024-05-01T07:00:00-0500", "2024-05-01 12:00:00",
             "2024-05-01T12:00:00.000+00", "2024-05-01"]
    versions = pl.DataFrame({"at": texts}).select(cursor_version(pl.col("at"))).to_series().to_list()
    noon = int(_T0.timestamp() * 1_000_000)
    assert versions == [noon] * 5 + [noon - 12 * 3_600_000_000]
    typed = pl.DataFrame({"at": [_T0]}).select(cursor_version(pl.col("at"))).item()
    day = pl.DataFrame({"at": [_T0.date()]}).select(cursor_version(pl.col("at"))).item()
    assert (typed, day) == (noon, noon - 12 * 3_600_000_000)


def test_text_that_is_no_timestamp_is_a_clear_error() -> None:
    with pytest.raises(Exception, match=r"cursor column 'at': 'yesterday' is not an ISO 8601 timestamp"):
        pl.DataFrame({"at": ["2024-05-01", "yesterday"]}).select(cursor_version(pl.col("at")))


def test_snapshot_rows_of_a_text_source_carry_the_version_its_changes_carry() -> None:
    reader = ApiReader([{"id": "a", "name": "A", "updated_at": "2024-05-01T12:00:01.5Z"}], clock="2024-05-01T12:00:00+00:00")
    position = reader.start()
    expr = reader.snapshot_version("products", position)
    assert expr is not None
    snapshot = reader.fetch("products", 0, None, 10).rows.select(expr.alias(VERSION))
    assert snapshot.item() == reader.read(position).frames["products"].get_column(VERSION).item()


def test_a_future_row_is_sent_once_and_does_not_hide_later_rows() -> None:
    records = [{"id": "future", "name": "F", "updated_at": "2030-01-01T00:00:00Z"}]
    reader = ApiReader(records, clock="2024-05-01T12:00:00Z")
    ids, position = _ids(reader, reader.start())
    assert ids == ["future"]
    assert position["cursors"]["products"] == micros("2024-05-01T12:00:00+00:00")  # bounded by the clock
    records.append({"id": "normal", "name": "N", "updated_at": "2024-05-01T12:00:10Z"})
    reader.clock = "2024-05-01T12:00:20Z"
    ids, position = _ids(reader, position)
    assert ids == ["normal"]
    assert _ids(reader, position)[0] == []


def test_equal_timestamps_page_through_a_restart_handing_each_row_out_once() -> None:
    records = [{"id": f"{i:04}", "name": "bulk", "updated_at": "2024-05-01T12:00:00Z"} for i in range(250)]
    position = ApiReader(records, clock="2024-05-01T12:00:00Z").start()
    seen: list[str] = []
    for _ in range(6):
        reader = ApiReader(records, clock="2024-05-01T12:00:30Z")  # a new process each read: only the position carries over
        ids, position = _ids(reader, position)
        assert len(ids) <= 100
        seen += ids
        if not ids:
            break
    assert seen == [f"{i:04}" for i in range(250)]
    records[7] = {**records[7], "name": "changed"}  # same cursor, new content: inside the overlap, sent again
    assert _ids(ApiReader(records, clock="2024-05-01T12:00:31Z"), position)[0] == ["0007"]


def test_a_clock_held_back_lowers_the_mark_so_older_rows_committed_later_are_found() -> None:
    records = [{"id": "a", "name": "A", "updated_at": "2024-05-01T12:00:50Z"}]
    reader = ApiReader(records, clock="2024-05-01T12:01:00Z", overlap_s=1)
    _, position = _ids(reader, {"cursors": {"products": micros("2024-05-01T12:00:00+00:00")}})
    reader.clock = "2024-05-01T12:00:10Z"  # a writer open since 12:00:10 (the source holds its clock back to it)
    _, position = _ids(reader, position)
    records.append({"id": "late", "name": "L", "updated_at": "2024-05-01T12:00:10Z"})  # it commits
    reader.clock = "2024-05-01T12:01:05Z"
    ids, position = _ids(reader, position)
    assert ids == ["late"]
    assert "products 2024-05-01T12:00:50.000Z" == reader.describe(position)
