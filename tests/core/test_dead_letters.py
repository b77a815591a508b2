"""The local dead-letter store: what a letter keeps, and copies of one record counted once."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from kanal.core.connector import OP, UPSERT, VERSION
from kanal.core.dlq import STAGE_SINK, DeadLetterStore, letters_frame
from kanal.core.model import PRODUCT
from kanal.core.validate import KEY, REASON


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
