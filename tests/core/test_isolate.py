import polars as pl
import pytest

from kanal.core.connector import OP, VERSION, WriteResult
from kanal.core.errors import BatchRejected, JobFailed
from kanal.core.isolate import ALIKE_REFUSALS, ROW, accepted_rows, slice_id, standing_refusals, write_isolating
from kanal.core.validate import KEY

TARGET = "sink 'shop', products (table: shop_products)"


def test_bisection_finds_each_bad_record_and_writes_the_rest() -> None:
    written: list[str] = []
    calls = 0

    def write(frame: pl.DataFrame, _at: int) -> WriteResult:
        nonlocal calls
        calls += 1
        bad = [k for k in frame[KEY].to_list() if k.startswith("bad")]
        if bad:
            raise BatchRejected("target", f"value too long for {bad[0]}")
        written.extend(frame[KEY].to_list())
        return WriteResult(written=frame.height)

    keys = [f"k{i}" for i in range(100)]
    keys[17], keys[80] = "bad17", "bad80"
    result = write_isolating(write, pl.DataFrame({KEY: keys}), TARGET)
    assert result.written == 98 and sorted(written) == sorted(k for k in keys if not k.startswith("bad"))
    assert result.failed is not None
    assert result.failed.rows() == [
        ("bad17", "target: value too long for bad17", 17),
        ("bad80", "target: value too long for bad80", 80),
    ]  # key, the target's reason, the position in the frame
    assert calls < 40


def test_a_target_refusing_every_record_alike_is_a_job_error_not_dead_letters() -> None:
    """Every record refused with one message (its value masked out): stop after a few, name the target."""
    calls = 0

    def write(frame: pl.DataFrame, _at: int) -> WriteResult:
        nonlocal calls
        calls += 1
        raise BatchRejected("postgres shop", f'invalid input syntax for type integer: "{frame[KEY][0]}"')

    frame = pl.DataFrame({KEY: [f"Product {i}" for i in range(2_000)]})
    with pytest.raises(JobFailed) as failed:
        write_isolating(write, frame, TARGET)
    assert TARGET in str(failed.value) and "invalid input syntax for type integer" in str(failed.value)
    assert calls < 3 * ALIKE_REFUSALS + 11  # not 3,999 writes: the search stops at the first refusals


def test_bad_records_first_in_a_batch_among_good_ones_are_still_isolated() -> None:
    """Fewer alike refusals than the threshold before a good record: dead letters, not a job error."""
    bad = {f"k{i}" for i in range(ALIKE_REFUSALS - 1)}

    def write(frame: pl.DataFrame, _at: int) -> WriteResult:
        if bad & set(frame[KEY].to_list()):
            raise BatchRejected("target", "value too long for type character varying(5)")
        return WriteResult(written=frame.height)

    result = write_isolating(write, pl.DataFrame({KEY: [f"k{i}" for i in range(64)]}), TARGET)
    assert result.written == 64 - len(bad) and result.failed is not None and set(result.failed[KEY]) == bad


def test_records_refused_for_different_reasons_are_dead_letters() -> None:
    def write(frame: pl.DataFrame, _at: int) -> WriteResult:
        if frame.height > 1:
            raise BatchRejected("target", "batch refused")
        raise BatchRejected("target", f"check constraint c{frame[KEY][0]} violated")

    result = write_isolating(write, pl.DataFrame({KEY: [str(i) for i in range(ALIKE_REFUSALS + 5)]}), TARGET)
    assert result.failed is not None and result.failed.height == ALIKE_REFUSALS + 5


def test_written_slices_are_disjoint_and_named_by_their_place() -> None:
    """A sink naming its output by batch id (files) must get one name per written slice, never one for two."""
    ids: dict[str, list[str]] = {}
    keys = [f"k{i}" for i in range(10)]

    def write(frame: pl.DataFrame, at: int) -> WriteResult:
        if "k3" in frame[KEY].to_list():
            raise BatchRejected("target", "k3 is bad")
        batch = slice_id("chunk-p0", at, frame.height, len(keys))
        assert batch not in ids
        ids[batch] = frame[KEY].to_list()
        return WriteResult(written=frame.height)

    result = write_isolating(write, pl.DataFrame({KEY: keys, VERSION: list(range(10))}), TARGET)
    assert sorted(k for rows in ids.values() for k in rows) == sorted(k for k in keys if k != "k3")
    assert all(b.startswith("chunk-p0@") for b in ids)
    assert result.failed is not None and result.failed.to_dicts() == [{KEY: "k3", VERSION: 3, "reason": "target: k3 is bad", ROW: 3}]


def test_a_refusal_a_later_change_of_its_key_replaces_needs_no_dead_letter() -> None:
    """One transaction renames a row (too long: refused) and then deletes it: the delete stands, not the refusal.

    Both changes share the transaction's version, so only their positions
    tell which came last; telling them apart by key would also hide the
    accepted delete from everything that follows the write.
    """
    frame = pl.DataFrame({KEY: ["P1", "P2", "P1", "P3"], OP: ["upsert", "upsert", "delete", "upsert"], VERSION: [7, 7, 7, 7],
                          "name": ["Long xxxxxxxx", "Long yyyyyyyy", None, "short"]})  # fmt: skip

    def write(part: pl.DataFrame, _at: int) -> WriteResult:
        if part.get_column("name").str.starts_with("Long").any():
            raise BatchRejected("target", "value too long")
        return WriteResult(written=part.height)

    result = write_isolating(write, frame, TARGET)
    assert accepted_rows(frame, result.failed).get_column(KEY).to_list() == ["P1", "P3"]
    standing = standing_refusals(frame, result.failed)
    assert standing is not None and standing.get_column(KEY).to_list() == ["P2"]
