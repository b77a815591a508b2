"""The sink memory keeps ids and last-written hashes per entity, across instances and threads."""

from __future__ import annotations

import threading

import polars as pl

from kanal.core.connector import VERSION
from kanal.core.sinkmemory import HASH, SinkMemory, content_hash
from kanal.core.validate import KEY


def test_ids_survive_a_new_instance_and_are_per_entity(tmp_path) -> None:
    SinkMemory(tmp_path / "shop.sqlite").remember_ids("products", {"A": "gid://shopify/Product/1", "B": "2"})
    memory = SinkMemory(tmp_path / "shop.sqlite")
    assert memory.ids("products", ["A", "B", "C"]) == {"A": "gid://shopify/Product/1", "B": "2"}
    assert memory.ids("customers", ["A"]) == {}
    memory.forget("products", ["A"])
    assert memory.ids("products", ["A", "B"]) == {"B": "2"}


def test_written_hashes_and_versions_round_trip_and_keep_ids(tmp_path) -> None:
    memory = SinkMemory(tmp_path / "m.sqlite")
    memory.remember_ids("prices", {"k1": "77"})
    frame = pl.DataFrame({KEY: ["k1", "k2"], "amount": ["1.00", "2.00"], VERSION: [5, 6]})
    memory.remember_written("prices", frame.with_columns(content_hash(frame, ["amount"])))
    got = memory.written("prices", pl.Series(["k1", "k2", "k3"])).sort(KEY)
    assert got.get_column(KEY).to_list() == ["k1", "k2"]
    assert got.get_column(VERSION).to_list() == [5, 6]
    assert got.get_column(HASH).to_list() == content_hash(frame, ["amount"]).to_list()
    assert memory.ids("prices", ["k1"]) == {"k1": "77"}  # the id outlives a hash update


def test_hash_changes_with_content_only(tmp_path) -> None:
    a = pl.DataFrame({"sku": ["A"], "name": ["x"], VERSION: [1]})
    b = pl.DataFrame({"sku": ["A"], "name": ["x"], VERSION: [2]})
    c = pl.DataFrame({"sku": ["A"], "name": ["y"], VERSION: [2]})
    h = [content_hash(f, ["sku", "name"]).item() for f in (a, b, c)]
    assert h[0] == h[1] != h[2]


def test_threads_each_use_their_own_connection(tmp_path) -> None:
    memory = SinkMemory(tmp_path / "m.sqlite")

    def write(n: int) -> None:
        memory.remember_ids("products", {f"{n}-{i}": str(i) for i in range(200)})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(memory.ids("products", [f"{n}-{i}" for n in range(4) for i in range(200)])) == 800


def _batch(rows: list[tuple[str, str, int, str]]) -> pl.DataFrame:
    from kanal.core.connector import OP

    return pl.DataFrame(rows, schema={KEY: pl.String, "name": pl.String, VERSION: pl.Int64, OP: pl.String}, orient="row")


def test_sift_sends_changed_records_only_and_never_older_ones(tmp_path) -> None:
    from kanal.core.connector import WriteResult
    from kanal.core.sinkmemory import remember_result, sift

    memory = SinkMemory(tmp_path / "m.sqlite")
    first = _batch([("A", "a", 10, "upsert"), ("B", "b", 10, "upsert"), ("C", "c", 10, "upsert")])
    sifted = sift(memory, "products", first)
    assert sifted.send.height == 3
    failed = pl.DataFrame({KEY: ["C"], "reason": ["refused"]})
    remember_result(memory, "products", sifted.send, WriteResult(written=2, failed=failed))

    again = _batch([("A", "a", 11, "upsert"), ("B", "b2", 11, "upsert"), ("C", "c", 11, "upsert"), ("D", "d", 11, "upsert")])
    sifted = sift(memory, "products", again)
    assert sorted(sifted.send.get_column(KEY).to_list()) == ["B", "C", "D"]  # A unchanged; C was refused before
    assert (sifted.unchanged, sifted.older) == (1, 0)
    remember_result(memory, "products", sifted.send, WriteResult(written=3))

    stale = _batch([("B", "b-old", 5, "upsert"), ("B", "b", 5, "delete")])
    sifted = sift(memory, "products", stale)
    assert sifted.older == 1 and sifted.send.get_column("_kanal_op").to_list() == ["delete"]  # deletes always go


def test_a_delete_or_truncate_forgets_what_was_written(tmp_path) -> None:
    from kanal.core.connector import WriteResult
    from kanal.core.sinkmemory import remember_result, sift

    memory = SinkMemory(tmp_path / "m.sqlite")
    batch = _batch([("A", "a", 1, "upsert"), ("B", "b", 1, "upsert")])
    remember_result(memory, "products", sift(memory, "products", batch).send, WriteResult(written=2))
    remember_result(memory, "products", sift(memory, "products", _batch([("A", None, 2, "delete")])).send, WriteResult(written=1))
    assert sift(memory, "products", _batch([("A", "a", 3, "upsert")])).send.height == 1  # A was deleted: send again
    remember_result(memory, "products", sift(memory, "products", _batch([("", None, 4, "truncate")])).send, WriteResult())
    assert sift(memory, "products", _batch([("B", "b", 5, "upsert")])).send.height == 1


def test_records_older_than_a_truncate_stay_out(tmp_path) -> None:
    from kanal.core.connector import WriteResult
    from kanal.core.sinkmemory import remember_result, sift

    memory = SinkMemory(tmp_path / "m.sqlite")
    remember_result(memory, "products", sift(memory, "products", _batch([("", None, 50, "truncate")])).send, WriteResult())
    late = sift(memory, "products", _batch([("A", "a", 40, "upsert"), ("B", "b", 60, "upsert"), ("C", None, 45, "delete")]))
    assert late.send.get_column(KEY).to_list() == ["B"] and late.older == 2
    assert SinkMemory(tmp_path / "m.sqlite").floor("products") == 50  # durable
