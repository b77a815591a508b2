"""How batches travel through Kafka: keyed messages, and the bulk wire format.

Two value formats, told apart by the `kanal.format` header; consumers accept both:

* `arrow` (migrations): many records of *one partition* in one message, as an
  Arrow IPC stream compressed with lz4. One message per record costs several
  microseconds of Python on each side and caps a bulk path near 80-130k
  records/s here; a partition-grouped batch keeps per-key order because every
  version of a key hashes to the same partition.
* `json` (deltas): one keyed message per record (orjson), so compaction and
  per-key consumers work.

Partitions are chosen by Kanal, not by librdkafka, from a hash of the stable
key string, so bulk and per-record messages of one key meet on one partition.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import orjson
import polars as pl

from kanal.core.connector import DELETE, OP, TRUNCATE, VERSION
from kanal.core.model import Entity
from kanal.core.validate import KEY

_SEED = 0x4B414E41  # fixed, so a key maps to the same partition in every process

H_ENTITY = "kanal.entity"
H_FORMAT = "kanal.format"
H_CHUNK = "kanal.chunk"
H_PART = "kanal.part"
H_PARTS = "kanal.parts"
H_COUNT = "kanal.count"
H_ATTEMPT = "kanal.attempt"
H_JOB = "kanal.job"
H_SOURCE = "kanal.source"
H_OP = "kanal.op"
H_SCHEMA = "kanal.schema"
H_VERSION = "kanal.version"
H_RECORD = "kanal.record"
"""On a delete (a tombstone: no value), the key fields as one JSON line. A
truncate is a record with op `truncate`, key `core.changes.TRUNCATE_KEY` and
no fields, on every partition."""
SCHEMA_VERSION = b"1"


@dataclass(frozen=True)
class Part:
    """One message worth of a chunk: its partition, index and rows."""

    partition: int
    index: int
    frame: pl.DataFrame


PARTITION = "_kanal_partition"
"""Optional column of a frame to publish: hashed instead of the key to choose the
partition (`Entity.partition_by`); never sent."""


def with_partition_basis(frame: pl.DataFrame, entity: Entity) -> pl.DataFrame:
    """Add `PARTITION` when the entity is partitioned by other fields than its key."""
    expr = entity.partition_expr()
    return frame if expr is None or frame.is_empty() else frame.with_columns(expr.alias(PARTITION))


def _basis(frame: pl.DataFrame) -> str:
    return PARTITION if PARTITION in frame.columns else KEY


def split_for_partitions(frame: pl.DataFrame, partitions: int, max_rows: int) -> list[Part]:
    """Group rows by partition of their key (or `PARTITION`), then cut groups into messages of `max_rows`."""
    if frame.is_empty():
        return []
    hashed = frame.with_columns((pl.col(_basis(frame)).hash(seed=_SEED) % partitions).cast(pl.Int32).alias("_kanal_p"))
    hashed = hashed.drop(PARTITION, strict=False)
    parts: list[Part] = []
    for (partition,), group in sorted(hashed.partition_by("_kanal_p", as_dict=True, include_key=False).items()):
        for offset in range(0, group.height, max_rows):
            parts.append(Part(int(partition), len(parts), group.slice(offset, max_rows)))
    return parts


def partition_of(keys: pl.Series, partitions: int) -> pl.Series:
    """The partition of each key string (same function as the bulk path)."""
    return (keys.hash(seed=_SEED) % partitions).cast(pl.Int32)


@dataclass(frozen=True)
class Record:
    """One delta record as a keyed message: `value` is None for a delete (tombstone)."""

    partition: int
    key: bytes
    value: bytes | None
    op: bytes
    version: bytes
    line: bytes


def record_messages(frame: pl.DataFrame, partitions: int) -> list[Record]:
    """One message per row of a change frame (with `_kanal_op`, `_kanal_version`), in frame order.

    A truncate row concerns every key, so it becomes one message on each
    partition, between the records before and after it there. Rows become
    JSON lines in one polars call; Python only slices them.
    """
    if frame.is_empty():
        return []
    parts = partition_of(frame.get_column(_basis(frame)), partitions).to_list()
    frame = frame.drop(PARTITION, strict=False)
    lines = frame.write_ndjson().encode().splitlines()
    keys = frame.get_column(KEY).to_list()
    ops = frame.get_column(OP).to_list()
    versions = frame.get_column(VERSION).to_list()
    everywhere = range(partitions)
    return [
        Record(q, k.encode(), None if op == DELETE else line, op.encode(), str(v).encode(), line)
        for p, k, op, v, line in zip(parts, keys, ops, versions, lines, strict=True)
        for q in (everywhere if op == TRUNCATE else (p,))
    ]


_TIMES_AS_TEXT_FROM = 64


def decode_lines(lines: list[bytes], schema: pl.Schema) -> pl.DataFrame:
    """Many JSON-line records (delta messages) into one typed frame, as the JSON reader types them, at a fraction of its cost.

    The JSON reader parses timestamps typed as datetimes eight times slower
    than it reads the rest of a record; read as text, a whole column is parsed
    at once. That parse takes the format of the column's first value: when a
    timestamp in another format is left unparsed, the batch is read the slow
    way, so the result never differs. Below `_TIMES_AS_TEXT_FROM` lines the
    second pass costs more than it saves.
    """
    data = b"\n".join(lines)
    times = {n: t for n, t in schema.items() if isinstance(t, pl.Datetime) and t.time_zone == "UTC"}
    if not times or len(lines) < _TIMES_AS_TEXT_FROM:
        return pl.read_ndjson(io.BytesIO(data), schema=schema)
    text = pl.read_ndjson(io.BytesIO(data), schema={n: pl.String if n in times else t for n, t in schema.items()})
    parsed = text.with_columns(
        pl.col(n).str.to_datetime(time_unit=t.time_unit, time_zone="UTC", strict=False) for n, t in times.items()
    )
    if not parsed.select(*times).null_count().equals(text.select(*times).null_count()):
        return pl.read_ndjson(io.BytesIO(data), schema=schema)
    return parsed


def messages_frame(messages: list[tuple[bytes | None, dict[str, str]]], schema: pl.Schema) -> pl.DataFrame:
    """The records of one entity's messages, given as (value, headers), as one frame in `schema`.

    Takes both formats (JSON lines of deltas, Arrow batches of migrations);
    deletes (tombstones) carry no record and are skipped.
    """
    lines = [v for v, h in messages if v is not None and h.get(H_OP) != DELETE and h.get(H_FORMAT, "json") == "json"]
    frames = [decode_arrow(v) for v, h in messages if v is not None and h.get(H_FORMAT) == "arrow"]
    if lines:
        frames.append(decode_lines(lines, schema))
    if not frames:
        return pl.DataFrame(schema=schema)
    frame = pl.concat(frames, how="diagonal_relaxed")
    return frame.select([pl.col(n).cast(t) if n in frame.columns else pl.lit(None, t).alias(n) for n, t in schema.items()])


def encode_arrow(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc_stream(buf, compression="lz4")
    return buf.getvalue()


def decode_arrow(value: bytes) -> pl.DataFrame:
    return pl.read_ipc_stream(io.BytesIO(value))


def headers_of(raw: list[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode() for k, v in (raw or []) if v is not None}
