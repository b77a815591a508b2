"""A cursor connector over records kept in memory, filtered as an HTTP API filters them.

Its `fetch` selects by an `updated_at_min`-style time and an id tiebreak and
yields ISO 8601 text timestamps, the way an API connector would, without the
HTTP.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from kanal.core.connector import CursorDelta
from kanal.core.cursor import TIEBREAK, CursorPage, CursorReader


def micros(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1_000_000)


class ApiReader(CursorReader):
    def __init__(
        self, records: list[dict[str, str]], clock: str, page_rows: int = 100, overlap_s: float = 5, entity: str = "products"
    ) -> None:
        super().__init__({entity: CursorDelta(cursor="updated_at", overlap_s=overlap_s)}, page_rows)
        self.records, self.clock = records, clock

    def fetch(self, entity: str, since: int, tiebreak: str | None, limit: int) -> CursorPage:
        def after(record: dict[str, str]) -> bool:
            at = micros(record["updated_at"])
            return at > since or (at == since and (tiebreak is None or record["id"] > tiebreak))

        page = sorted((r for r in self.records if after(r)), key=lambda r: (micros(r["updated_at"]), r["id"]))[:limit]
        rows = pl.DataFrame(page, schema={"id": pl.String, "name": pl.String, "updated_at": pl.String})
        return CursorPage(rows.with_columns(pl.col("id").alias(TIEBREAK)), micros(self.clock))
