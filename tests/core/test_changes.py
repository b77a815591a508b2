"""Change frames into canonical rows: old images become deletes only when the key changed;
deletes and truncates skip validation; a truncate reaches every partition."""

from __future__ import annotations

import polars as pl
import pytest

from kanal.core import model, wire
from kanal.core.changes import TRUNCATE_KEY, conform_changes
from kanal.core.connector import OP, VERSION, Changes


def _frame(rows: list[tuple[str, str | None, str | None, int]]) -> pl.DataFrame:
    """(op, sku, name, version) rows of products."""
    return pl.DataFrame(
        {"sku": [r[1] for r in rows], "name": [r[2] for r in rows], OP: [r[0] for r in rows], VERSION: [r[3] for r in rows]},
        schema_overrides={"sku": pl.String, "name": pl.String},
    )


def _ops(frame: pl.DataFrame) -> list[tuple]:
    return frame.select("sku", OP, VERSION).rows()


def test_an_old_image_deletes_the_old_key_only_when_the_key_changed() -> None:
    frame = _frame(
        [
            ("before", "A", "x", 1), ("upsert", "B", "x", 1),  # key A became B
            ("before", "C", "x", 2), ("upsert", "C", "y", 2),  # only the name changed (REPLICA IDENTITY FULL)
            ("upsert", "D", "z", 3),
        ]
    )
    valid, invalid = conform_changes(frame, model.PRODUCT, lambda f: f)
    assert invalid.is_empty()
    assert _ops(valid) == [("A", "delete", 1), ("B", "upsert", 1), ("C", "upsert", 2), ("D", "upsert", 3)]
    assert Changes({"products": frame}, {}).rows == 3  # old images are not changes of their own


def test_an_invalid_new_image_still_deletes_the_old_key() -> None:
    frame = _frame([("before", "A", "x", 1), ("upsert", "", "x", 1)])  # the key became empty: invalid
    valid, invalid = conform_changes(frame, model.PRODUCT, lambda f: f)
    assert _ops(valid) == [("A", "delete", 1)]
    assert invalid.height == 1


def test_truncates_and_deletes_skip_validation_and_keep_their_place() -> None:
    frame = _frame([("upsert", "A", "x", 1), ("truncate", None, None, 2), ("delete", "B", None, 3), ("upsert", "C", "y", 4)])
    valid, invalid = conform_changes(frame, model.PRODUCT, lambda f: f)
    assert invalid.is_empty()
    assert _ops(valid) == [("A", "upsert", 1), (None, "truncate", 2), ("B", "delete", 3), ("C", "upsert", 4)]
    assert valid.filter(pl.col(OP) == "truncate").get_column("_kanal_key").to_list() == [TRUNCATE_KEY]


def test_an_old_image_without_key_fields_is_refused() -> None:
    with pytest.raises(ValueError, match="REPLICA IDENTITY FULL"):
        conform_changes(_frame([("before", None, None, 1), ("upsert", "B", "x", 1)]), model.PRODUCT, lambda f: f)


def test_a_truncate_is_sent_to_every_partition_in_order() -> None:
    valid, _ = conform_changes(
        _frame([("upsert", "A", "x", 1), ("truncate", None, None, 2), ("upsert", "B", "y", 3)]), model.PRODUCT, lambda f: f
    )
    records = wire.record_messages(valid, 4)
    truncates = [r for r in records if r.op == b"truncate"]
    assert sorted(r.partition for r in truncates) == [0, 1, 2, 3]
    assert all(r.value is not None and r.version == b"2" for r in truncates)
    assert [r.op for r in records] == [b"upsert", *[b"truncate"] * 4, b"upsert"]
