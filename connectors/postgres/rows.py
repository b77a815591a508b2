"""Reading rows through COPY, shared by the snapshot and the cursor deltas."""

from __future__ import annotations

import io
from collections.abc import Mapping

import polars as pl
import psycopg

from kanal.connectors.postgres.config import PostgresSourceOptions
from kanal.connectors.postgres.db import qualified, translated

TEMPORAL = ("timestamp with time zone", "timestamp without time zone", "date")


def read_rows(
    conn: psycopg.Connection,
    where: str,
    opts: PostgresSourceOptions,
    columns: list[tuple[str, str]],
    condition: str,
    tail: str = "",
    computed: Mapping[str, str] | None = None,
) -> pl.DataFrame:
    """`select` the rows matching `condition` through COPY, parsed by polars in one call.

    Timestamps and dates leave the server as epoch microseconds ('infinity',
    an open-ended valid_to, has none and becomes NULL: "no end").
    `computed` adds text columns (name -> SQL expression), e.g. a tiebreak.
    """
    computed = computed or {}
    select = ", ".join(
        f'case when isfinite("{name}") then (extract(epoch from "{name}") * 1000000)::int8 end'
        if dtype in TEMPORAL
        else f'"{name}"'
        for name, dtype in columns
    )
    select += "".join(f", {expression}" for expression in computed.values())
    sql = (
        f"COPY (select {select} from {qualified(opts.schema_name, opts.table)} where {condition}{tail}) "
        "TO STDOUT (FORMAT csv, NULL '\\N')"
    )
    names = [name for name, _ in columns] + list(computed)
    temporal = [name for name, dtype in columns if dtype in TEMPORAL]
    buf = io.BytesIO()
    with translated(where), conn.cursor().copy(sql) as copy:
        for data in copy:
            buf.write(data)
    if buf.tell() == 0:
        return pl.DataFrame(schema={n: pl.Datetime("us", "UTC") if n in temporal else pl.String for n in names})
    frame = pl.read_csv(
        buf.getvalue(),
        has_header=False,
        new_columns=names,
        infer_schema=False,
        null_values="\\N",
        schema_overrides={n: pl.Int64 for n in temporal},
    )
    if temporal:
        frame = frame.with_columns([pl.col(n).cast(pl.Datetime("us")).dt.replace_time_zone("UTC") for n in temporal])
    return frame
