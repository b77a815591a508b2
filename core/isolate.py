"""Find the records at fault when a target refuses a whole batch.

A bulk write (COPY, a batch API call) fails as a whole when one record is
bad. Rather than fail the batch, the engine splits it in halves and retries
each, down to single records, so one poison record is dead-lettered with the
target's own error message and every other record is written. Cost: about
2·log2(n) extra writes per bad record, only on the failure path.

A target that refuses *every* record (a column of the wrong type, a value
that never fits) is not a data problem but a wrong target: dead-lettering
the whole stream record by record would end "successfully" with nothing
written. So when the first `ALIKE_REFUSALS` single records were all refused
with the same error (record values masked out) and no write was accepted,
the search stops with a `JobFailed` naming the target and its message.

Every write call names the slice it writes by its offset in the frame, so a
sink that names its output by batch id (files) gives every written slice its
own name instead of overwriting one slice with the next.

A refused record is named by its position in the frame (`ROW`), not only by
its key: one batch may hold several changes of a key with one version (the
changes of one transaction share its commit version), and a change of the
key written after the refused one (a delete) is what stands in the target.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import replace

import polars as pl

from kanal.core.connector import OP, VERSION, WriteResult
from kanal.core.errors import BatchRejected, JobFailed
from kanal.core.validate import KEY

Write = Callable[[pl.DataFrame, int], WriteResult]
"""Write one slice of the frame; the int is the slice's offset in the frame given to `write_isolating`."""

ALIKE_REFUSALS = 10
"""Single records refused alike, with nothing accepted, that make a refusal a job error. Records
with a bad value spread among good ones almost never fill this many first places: a good
record is written on the way and turns the rule off for the batch."""

ROW = "_kanal_row"
"""Column of `WriteResult.failed` from isolation: the refused record's position in the frame written."""

_RECORD_VALUES = re.compile(r"\"[^\"]*\"|'[^']*'|\([^()]*\)=\([^()]*\)")
"""Quoted values and `(key)=(value)` details: the parts of a target's message that name a record."""


def write_isolating(write: Write, frame: pl.DataFrame, target: str) -> WriteResult:
    """Call `write`; on BatchRejected bisect until the refused records are found.

    `target` names the sink, entity and table for the error raised when the
    target refuses every record alike.
    """
    return _Isolation(write, target).write(frame, 0)


def combine(results: Iterable[WriteResult]) -> WriteResult:
    """The outcome of several writes as one."""
    results = list(results)
    failed = [r.failed for r in results if r.failed is not None and not r.failed.is_empty()]
    return WriteResult(
        written=sum(r.written for r in results),
        skipped_older=sum(r.skipped_older for r in results),
        failed=pl.concat(failed, how="diagonal_relaxed") if failed else None,
    )


def slice_id(batch_id: str, offset: int, rows: int, total: int) -> str:
    """The batch id of one slice of a batch: the batch's own for the whole, else suffixed with `@offset+rows`."""
    return batch_id if offset == 0 and rows == total else f"{batch_id}@{offset}+{rows}"


class _Isolation:
    def __init__(self, write: Write, target: str) -> None:
        self._write, self.target = write, target
        self.accepted = False
        self.refusals: list[str] = []

    def write(self, frame: pl.DataFrame, offset: int) -> WriteResult:
        try:
            result = self._write(frame, offset)
        except BatchRejected as exc:
            if frame.height == 1:
                self._refused_one(exc)
                return WriteResult(failed=frame.select(
                    KEY, *_versions(frame), pl.lit(exc.message).alias("reason"), pl.lit(offset, pl.Int64).alias(ROW)
                ))  # fmt: skip
        else:
            self.accepted = True
            return result
        half = frame.height // 2
        return combine([self.write(frame.slice(0, half), offset), self.write(frame.slice(half), offset + half)])

    def _refused_one(self, exc: BatchRejected) -> None:
        if self.accepted or len(self.refusals) >= ALIKE_REFUSALS:
            return  # decided: the batch holds records the target takes, or differently refused ones
        self.refusals.append(_RECORD_VALUES.sub("…", exc.message))
        if len(self.refusals) == ALIKE_REFUSALS and len(set(self.refusals)) == 1:
            raise JobFailed(
                f"{self.target} refused the first {len(self.refusals)} records one by one with the same error and "
                f"accepted none: {exc.message}. The target does not fit this data (a column's type or length, a "
                "missing column): fix the target (or the sink mapping) and run the same command again; nothing "
                "from this batch on was confirmed"
            )


def shifted(result: WriteResult, by: int) -> WriteResult:
    """`result` of writing a slice that starts at `by`: refused positions counted from the whole frame's start."""
    if result.failed is None or ROW not in result.failed.columns or not by:
        return result
    return replace(result, failed=result.failed.with_columns(pl.col(ROW) + by))


def accepted_rows(frame: pl.DataFrame, failed: pl.DataFrame | None) -> pl.DataFrame:
    """The rows of `frame` its target took: all but the refused positions (or keys, from a sink naming only those)."""
    if failed is None or failed.is_empty():
        return frame
    if ROW in failed.columns:
        return frame.with_row_index(ROW).filter(~pl.col(ROW).is_in(failed.get_column(ROW).implode())).drop(ROW)
    return frame.join(failed.select(KEY), on=KEY, how="anti")


def standing_refusals(frame: pl.DataFrame, failed: pl.DataFrame | None) -> pl.DataFrame | None:
    """The refused records no later accepted change of the same key in `frame` replaces (those need attention)."""
    if failed is None or failed.is_empty() or ROW not in failed.columns:
        return failed
    taken = frame.with_row_index(ROW).filter(~pl.col(ROW).is_in(failed.get_column(ROW).implode()))
    last = taken.group_by(KEY).agg(pl.col(ROW).max().cast(pl.Int64).alias("_kanal_last_taken"))
    return (
        failed.join(last, on=KEY, how="left", maintain_order="left")
        .filter(~(pl.col("_kanal_last_taken") > pl.col(ROW)).fill_null(False))
        .drop("_kanal_last_taken")
    )


def _versions(frame: pl.DataFrame) -> list[str]:
    """`VERSION` and `OP` when the frame has them: a refused record is told from other changes of its key by them."""
    return [c for c in (VERSION, OP) if c in frame.columns]
