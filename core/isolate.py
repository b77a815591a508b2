"""Find the records at fault when a target refuses a whole batch.

A bulk write (COPY, a batch API call) fails as a whole when one record is
bad. Rather than fail the batch, the engine splits it in halves and retries
each, down to single records, so one poison record is dead-lettered with the
target's own error message and every other record is written. Cost: about
2·log2(n) extra writes per bad record, only on the failure path.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from kanal.core.connector import WriteResult
from kanal.core.errors import BatchRejected
from kanal.core.validate import KEY

Write = Callable[[pl.DataFrame], WriteResult]


def write_isolating(write: Write, frame: pl.DataFrame) -> WriteResult:
    """Call `write`; on BatchRejected bisect until the refused records are found."""
    try:
        return write(frame)
    except BatchRejected as exc:
        if frame.height == 1:
            failed = frame.select(KEY, pl.lit(exc.message).alias("reason"))
            return WriteResult(failed=failed)
    half = frame.height // 2
    left = write_isolating(write, frame.slice(0, half))
    right = write_isolating(write, frame.slice(half))
    failed = [f for f in (left.failed, right.failed) if f is not None and not f.is_empty()]
    return WriteResult(
        written=left.written + right.written,
        skipped_older=left.skipped_older + right.skipped_older,
        failed=pl.concat(failed) if failed else None,
    )
