import polars as pl

from kanal.core.connector import WriteResult
from kanal.core.errors import BatchRejected
from kanal.core.isolate import write_isolating
from kanal.core.validate import KEY


def test_bisection_finds_each_bad_record_and_writes_the_rest() -> None:
    written: list[str] = []
    calls = 0

    def write(frame: pl.DataFrame) -> WriteResult:
        nonlocal calls
        calls += 1
        bad = [k for k in frame[KEY].to_list() if k.startswith("bad")]
        if bad:
            raise BatchRejected("target", f"value too long for {bad[0]}")
        written.extend(frame[KEY].to_list())
        return WriteResult(written=frame.height)

    keys = [f"k{i}" for i in range(100)]
    keys[17], keys[80] = "bad17", "bad80"
    result = write_isolating(write, pl.DataFrame({KEY: keys}))
    assert result.written == 98 and sorted(written) == sorted(k for k in keys if not k.startswith("bad"))
    assert result.failed is not None
    assert dict(result.failed.iter_rows()) == {
        "bad17": "target: value too long for bad17",
        "bad80": "target: value too long for bad80",
    }
    assert calls < 40
