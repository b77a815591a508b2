from kanal.core.receipts import Receipts


def test_chunk_done_only_when_every_sink_wrote_every_part() -> None:
    done = []
    r = Receipts({"prices": ["shop", "files"]}, lambda e, c, rows, dead: done.append((e, c, rows, dead)))
    r.expect("prices", "c1", parts=2, rows=10, dead=1)
    r.record("shop", "prices", "c1", 0)
    r.record("shop", "prices", "c1", 1)
    r.record("files", "prices", "c1", 0)
    r.record("files", "prices", "c1", 0)  # a re-delivery counts once
    assert done == []
    r.record("files", "prices", "c1", 1)
    assert done == [("prices", "c1", 10, 1)]
    assert r.outstanding == 0


def test_receipt_arriving_before_expect_is_kept() -> None:
    done = []
    r = Receipts({"prices": ["shop"]}, lambda *a: done.append(a))
    r.record("shop", "prices", "c1", 0)
    r.expect("prices", "c1", parts=1, rows=5, dead=0)
    assert done == [("prices", "c1", 5, 0)]


def test_chunk_without_valid_rows_is_done_at_once() -> None:
    done = []
    Receipts({"prices": ["shop"]}, lambda *a: done.append(a)).expect("prices", "c9", parts=0, rows=0, dead=3)
    assert done == [("prices", "c9", 0, 3)]


def test_a_sink_that_does_not_take_an_entity_is_not_waited_for() -> None:
    done = []
    r = Receipts({"prices": ["shop"], "products": ["shop", "files"]}, lambda *a: done.append(a))
    r.expect("prices", "c1", parts=1, rows=5, dead=0)
    r.record("files", "prices", "c1", 0)  # files does not take prices: not counted
    assert done == []
    r.record("shop", "prices", "c1", 0)
    assert done == [("prices", "c1", 5, 0)]


def test_an_entity_no_sink_takes_is_done_when_announced() -> None:
    done = []
    Receipts({"prices": ["shop"]}, lambda *a: done.append(a)).expect("stock_levels", "r1", parts=2, rows=7, dead=0)
    assert done == [("stock_levels", "r1", 7, 0)]
