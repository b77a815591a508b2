"""The local dead-letter store: what a letter keeps, and copies of one record counted once."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from kanal.core.changes import conform_changes
from kanal.core.connector import DELETE, OP, UPSERT, VERSION
from kanal.core.dlq import STAGE_SINK, STAGE_SOURCE, DeadLetterStore, letters_frame
from kanal.core.model import PRODUCT
from kanal.core.validate import KEY, REASON
from kanal.mappings import parse_mapping


def _letters(keys: list[str], versions: list[int]) -> pl.DataFrame:
    rows = pl.DataFrame(
        {"sku": keys, "name": ["x"] * len(keys), KEY: keys, OP: [UPSERT] * len(keys), VERSION: versions,
         REASON: ["value too long"] * len(keys)}  # fmt: skip
    )
    return letters_frame(rows, "products", STAGE_SINK, "shop", PRODUCT.field_names)


def test_a_letter_keeps_the_records_operation_and_version(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path)
    store.put("products", STAGE_SINK, "shop-run1", _letters(["P1"], [42]))
    [letter] = store.letters()
    assert letter["record"] == {"sku": "P1", "name": "x", OP: UPSERT, VERSION: 42}


def test_a_record_set_aside_again_after_a_crash_is_one_dead_letter(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path)
    store.put("products", STAGE_SINK, "shop-run1", _letters(["P1", "P2"], [5, 6]))
    store.put("products", STAGE_SINK, "shop-run2", _letters(["P1", "P2"], [5, 7]))  # re-read: P1 v5 again, P2 newer
    assert sorted((d["key"], d["record"][VERSION]) for d in store.letters()) == [("P1", 5), ("P2", 6), ("P2", 7)]
    assert store.count("products") == 3
    assert sum(1 for _ in store.read()) == 4  # replay still sees (and clears) every copy


def test_a_later_write_of_the_key_makes_older_dead_letters_obsolete(tmp_path: Path) -> None:
    """A refused record deleted (or changed) at the source since must never be replayed into existence."""
    store = DeadLetterStore(tmp_path)
    store.put("products", STAGE_SINK, "shop-run1", _letters(["P1", "P2", "P3"], [10, 10, 10]))
    written = pl.DataFrame({KEY: ["P1", "P2"], OP: ["delete", UPSERT], VERSION: [20, 5]})
    assert store.supersede("products", written, "other-sink") == 0  # another sink's letters stay
    assert store.supersede("products", written, "shop") == 1  # P1 deleted later; P2's write is older
    assert sorted(letter["key"] for letter in store.letters()) == ["P2", "P3"]
    truncate = pl.DataFrame({KEY: ["\x00truncate"], OP: ["truncate"], VERSION: [30]})
    assert store.supersede("products", truncate, "shop") == 2
    assert store.letters() == []


def test_a_later_write_at_the_same_version_makes_a_dead_letter_obsolete(tmp_path: Path) -> None:
    """One transaction updates a row (refused: too long) and then deletes it: both changes carry its commit version.

    Deliveries keep each key's order, so a write accepted after the letter
    was set aside is the later change even at an equal version; replaying
    the letter would bring the deleted row back.
    """
    store = DeadLetterStore(tmp_path)
    store.put("products", STAGE_SINK, "shop-run1", _letters(["P1", "P2"], [10, 10]))
    written = pl.DataFrame({KEY: ["P1", "P2"], OP: ["delete", UPSERT], VERSION: [10, 9]})
    assert store.supersede("products", written, "shop") == 1
    assert [letter["key"] for letter in store.letters()] == ["P2"]


def test_an_invalid_source_record_stays_when_a_write_shares_its_version(tmp_path: Path) -> None:
    """Source letters are set aside before sinks write: an equal version tells nothing about which came later."""
    store = DeadLetterStore(tmp_path)
    rows = pl.DataFrame({"sku": ["P1"], KEY: ["P1"], OP: [UPSERT], VERSION: [10], REASON: ["currency: invalid"]})
    store.put("products", STAGE_SOURCE, "run1", letters_frame(rows, "products", STAGE_SOURCE, None, PRODUCT.field_names))
    assert store.supersede("products", pl.DataFrame({KEY: ["P1"], OP: [UPSERT], VERSION: [10]}), "shop") == 0
    assert store.supersede("products", pl.DataFrame({KEY: ["P1"], OP: [UPSERT], VERSION: [11]}), "shop") == 1


def test_a_letter_keeps_the_source_row_as_read_before_the_mapping(tmp_path: Path) -> None:
    """Validation and mapping errors: `raw` is the row the source gave, even when nothing of it reached a field."""
    mapping = parse_mapping({"entity": "products", "fields": {"sku": "artnr", "weight": {"from": "gewicht", "cast": "decimal"}}},
                            source="m.yaml")
    frame = pl.DataFrame({"artnr": ["A1", "", "C3"], "gewicht": ["1.5", "2", "schwer"], "extra": ["x", "y", "z"]})
    _, invalid = conform_changes(frame, PRODUCT, mapping.apply)
    letters = letters_frame(invalid, "products", STAGE_SOURCE, None, PRODUCT.field_names)
    DeadLetterStore(tmp_path).put("products", STAGE_SOURCE, "products.csv", letters)
    by_key = {letter["key"]: letter for letter in DeadLetterStore(tmp_path).letters()}
    assert by_key[""]["raw"] == {"artnr": "", "gewicht": "2", "extra": "y"}
    assert by_key[""]["reason"] == "sku: required field is empty"
    assert by_key["C3"]["raw"] == {"artnr": "C3", "gewicht": "schwer", "extra": "z"}
    assert "'schwer'" in by_key["C3"]["reason"]


def test_a_change_letter_keeps_its_source_row_without_engine_columns() -> None:
    frame = pl.DataFrame({"sku": ["A", None, "B"], "name": ["a", "n", None], OP: [UPSERT, UPSERT, DELETE], VERSION: [1, 2, 3]})
    _, invalid = conform_changes(frame, PRODUCT, lambda f: f)
    letters = letters_frame(invalid, "products", STAGE_SOURCE, None, PRODUCT.field_names)
    assert letters["raw"].to_list() == [{"sku": None, "name": "n"}]
    assert letters["record"].struct.field(VERSION).to_list() == [2]


def test_a_sink_letter_keeps_the_record_the_sink_read() -> None:
    [letter] = _letters(["P1"], [42]).to_dicts()
    assert letter["raw"] == {"sku": "P1", "name": "x"}
