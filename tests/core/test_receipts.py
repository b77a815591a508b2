from kanal.core.receipts import Receipts


def test_chunk_done_only_when_every_sink_wrote_every_part() -> None:
    done = []
    r = Receipts(["shop", "files"], lambda e, c, rows, dead: done.append((e, c, rows, dead)))
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
    r = Receipts(["shop"], lambda *a: done.append(a))
    r.record("shop", "prices", "c1", 0)
    r.expect("prices", "c1", parts=1, rows=5, dead=0)
    assert done == [("prices", "c1", 5, 0)]


def test_chunk_without_valid_rows_is_done_at_once() -> None:
    done = []
    Receipts(["shop"], lambda *a: done.append(a)).expect("prices", "c9", parts=0, rows=0, dead=3)
    assert done == [("prices", "c9", 0, 3)]
