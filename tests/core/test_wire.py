import io

import polars as pl

from kanal.core import wire
from kanal.core.connector import OP, VERSION
from kanal.core.validate import KEY


def _frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({KEY: [f"k{i % 50}" for i in range(n)], "v": list(range(n))})


def test_parts_group_each_key_on_one_partition_in_order() -> None:
    parts = wire.split_for_partitions(_frame(1000), partitions=4, max_rows=100)
    assert sum(p.frame.height for p in parts) == 1000
    assert all(p.frame.height <= 100 for p in parts)
    where = {}
    for p in parts:
        for key in set(p.frame[KEY].to_list()):
            assert where.setdefault(key, p.partition) == p.partition
    for p in parts:  # order of versions of a key is kept inside a partition
        for _, group in p.frame.group_by(KEY):
            assert group["v"].is_sorted()
    assert [p.index for p in parts] == list(range(len(parts)))


def test_partition_of_matches_bulk_split() -> None:
    frame = _frame(200)
    parts = wire.split_for_partitions(frame, partitions=8, max_rows=1000)
    expected = dict(zip(frame[KEY].to_list(), wire.partition_of(frame[KEY], 8).to_list(), strict=True))
    for p in parts:
        assert {expected[k] for k in p.frame[KEY].to_list()} == {p.partition}


def test_arrow_round_trip_keeps_types() -> None:
    frame = pl.DataFrame({"a": ["x", None], "t": pl.Series([1, 2]).cast(pl.Datetime("us", "UTC"))})
    assert wire.decode_arrow(wire.encode_arrow(frame)).equals(frame)


def test_json_records_decode_with_schema() -> None:
    lines = [b'{"sku": "A", "amount": "1.50"}', b'{"sku": "B"}']
    frame = wire.decode_lines(lines, pl.Schema({"sku": pl.String, "amount": pl.String}))
    assert frame.to_dicts() == [{"sku": "A", "amount": "1.50"}, {"sku": "B", "amount": None}]


def test_record_messages_round_trip_with_tombstones() -> None:
    frame = _frame(5).with_columns(
        pl.Series(OP, ["upsert", "delete", "upsert", "upsert", "delete"]), pl.Series(VERSION, [1, 2, 3, 4, 5])
    )
    records = wire.record_messages(frame, 4)
    assert [r.value is None for r in records] == [False, True, False, False, True]
    assert [r.key.decode() for r in records] == frame[KEY].to_list()
    assert [r.partition for r in records] == wire.partition_of(frame[KEY], 4).to_list()
    decoded = wire.decode_lines([r.line for r in records], frame.schema)
    assert decoded.equals(frame)


def test_empty_frame_has_no_parts() -> None:
    assert wire.split_for_partitions(_frame(0), 4, 10) == []


def test_json_records_decode_as_the_json_reader_types_them_whatever_their_timestamp_formats() -> None:
    schema = pl.Schema({"event_id": pl.String, "occurred_at": pl.Datetime("us", "UTC"), "expires_at": pl.Datetime("us", "UTC")})
    lines = [b'{"event_id": "a", "occurred_at": "2026-01-01T04:37:40.5+02:00"}',
             b'{"event_id": "b", "occurred_at": "2026-01-01 04:37:40", "expires_at": "2026-01-02T00:00:00Z"}',
             b'{"event_id": "c", "expires_at": "2026-01-02"}', b'{"event_id": "d"}']  # fmt: skip
    for batch in (lines, lines * 20, lines[:1] * 80, lines[2:] * 40):  # small batches take the JSON reader's way
        assert wire.decode_lines(batch, schema).equals(pl.read_ndjson(io.BytesIO(b"\n".join(batch)), schema=schema))
    assert wire.decode_lines(lines * 20, schema).get_column("occurred_at")[1] is not None
