"""Redis sink: the availability read model, version-checked in Redis itself.

Each `write` is one Lua script call (`lua/apply.lua`) for the whole batch:
every record replaces its hash unless the hash (or the tombstone of its
delete) holds a newer version, and every applied change is appended to the
entity's change stream (XADD MAXLEN ~) for listeners. Redis runs the script
alone, so a checkout reading a hash sees a record whole, and a replayed or
lagging older record can never overwrite a newer one nor bring a deleted
one back. Keys and fields: see `layout`.

The version compared is the record's `version` field (the ledger position
of derived inventory entities) when both the record and the stored hash
have one, else the source position `_kanal_version`; equal versions apply
again (a re-delivery rewrites the same content).

Refused records (returned as failed, never written): a channel or location
containing ':' (it would make keys ambiguous), a version that is not a
non-negative number, and truncates (emptying the read model is not a
streamed change this sink applies).
"""

from __future__ import annotations

from typing import ClassVar

import polars as pl
from redis.commands.core import Script

from kanal.connectors.redis import scripts
from kanal.connectors.redis.config import Connection, RedisConfig
from kanal.connectors.redis.inventory import read_records
from kanal.connectors.redis.layout import LAYOUTS, Layout
from kanal.core.connector import DELETE, OP, UPSERT, VERSION, EntityOptions, Sink, WriteResult
from kanal.core.errors import ConfigError, ConnectorError
from kanal.core.model import entity as canonical
from kanal.core.validate import KEY

ENTITIES = tuple(LAYOUTS)
MAX_BATCH_ROWS = 1_000
"""Records per script call: Redis serves nobody else while a script runs (this many take about 40 ms
on two shared cores), so readers of the model wait at most that long."""
_NUMBER = r"^\d+(\.\d+)?$"


class RedisSink(Sink):
    config: RedisConfig

    def __init__(self, config: RedisConfig) -> None:
        super().__init__(config)
        self.connection = Connection(config)
        self.system = self.connection.system
        self._script: Script | None = None

    def check(self) -> None:
        with self.connection.translated():
            self.connection.client.ping()
            self.connection.client.script_load(scripts.text("apply"))  # a server without Lua fails here, not mid-run

    def prepare(self, entity: str, options: EntityOptions) -> None:
        if entity not in LAYOUTS:
            raise ConfigError(f"{self.system}: the redis sink writes {', '.join(ENTITIES)}, not {entity}")

    def write(self, entity: str, options: EntityOptions, frame: pl.DataFrame, batch_id: str) -> WriteResult:
        layout = LAYOUTS[entity]
        if OP not in frame.columns:
            frame = frame.with_columns(pl.lit(UPSERT).alias(OP))
        prefix = self.config.prefix
        # One plan: a live batch of a few records pays polars' fixed cost once, not per step.
        checked = frame.lazy().select(
            KEY, _refusal(layout, frame).alias("reason"), layout.key(prefix).alias("_redis_key"),
            _payload(frame).alias("_redis_record"),
        ).collect()  # fmt: skip
        failed = checked.filter(pl.col("reason").is_not_null()).select(KEY, "reason")
        rows = checked.filter(pl.col("reason").is_null()) if failed.height else checked
        applied = skipped = 0
        if rows.height:
            keys = rows.get_column("_redis_key").to_list()
            records = rows.get_column("_redis_record").to_list()
            with self.connection.translated():
                applied, skipped = self._apply()(
                    keys=[layout.tombstones(prefix), layout.stream(prefix), *keys],
                    args=[self.config.stream_maxlen, entity, *records],
                )
        if applied + skipped != rows.height:
            raise ConnectorError(self.system, f"{entity}: the script applied {applied} and skipped {skipped} of {rows.height}")
        return WriteResult(written=int(applied), skipped_older=int(skipped), failed=failed if failed.height else None)

    def read_back(self, entity: str, options: EntityOptions) -> pl.DataFrame:
        """Every record hash of `entity` (`RedisInventory.read`): its fields and `_kanal_version`, as text."""
        frame = read_records(self.connection, self.config.prefix, entity)
        names = [*canonical(entity).field_names, VERSION]
        if not frame.width:
            return pl.DataFrame(schema={**{n: pl.String for n in names}, VERSION: pl.Int64})
        return frame.select([pl.col(n) if n in frame.columns else pl.lit(None, pl.String).alias(n) for n in names]).with_columns(
            pl.col(VERSION).cast(pl.Int64, strict=False)
        )

    def _apply(self) -> Script:
        """The batch script (EVALSHA, loaded again by redis-py when the server lost it)."""
        if self._script is None:
            self._script = self.connection.client.register_script(scripts.text("apply"))
        return self._script

    def close(self) -> None:
        self.connection.close()


def _refusal(layout: Layout, frame: pl.DataFrame) -> pl.Expr:
    """Why a record cannot be written (NULL: it can), in one expression over the batch."""
    op = pl.col(OP)
    reason = pl.when(~op.is_in((UPSERT, DELETE))).then(
        pl.format("the redis sink does not apply {} records (only upserts and deletes)", op)
    )
    reason = reason.when(pl.col(layout.scope).str.contains(":", literal=True)).then(
        pl.format(
            f"{layout.scope} {{}} contains ':', which separates the parts of Redis keys (map it to a name without ':')",
            pl.col(layout.scope),
        )
    )
    if "version" in frame.columns:
        version = pl.col("version").cast(pl.String)
        reason = reason.when(version.is_not_null() & ~version.str.contains(_NUMBER)).then(
            pl.format("version {} is not a non-negative number (versions are compared in Redis)", version)
        )
    return reason.otherwise(None)


def _payload(frame: pl.DataFrame) -> pl.Expr:
    """Each record as the JSON object `apply.lua` reads: op, version, position and its fields as text."""
    fields = [c for c in frame.columns if not c.startswith("_kanal_") and c != "reason"]
    version = pl.col("version").cast(pl.String) if "version" in frame.columns else pl.lit(None, pl.String)
    position = pl.col(VERSION).cast(pl.String) if VERSION in frame.columns else pl.lit(None, pl.String)
    return pl.struct(
        pl.col(OP).alias("o"),
        version.alias("v"),
        position.alias("p"),
        pl.struct([_text(c, frame.schema[c]) for c in fields]).alias("f"),
    ).struct.json_encode()


def _text(column: str, dtype: pl.DataType) -> pl.Expr:
    """A field as Redis stores it: text; timestamps in ISO 8601 UTC (naive ones taken as UTC)."""
    if isinstance(dtype, pl.Datetime):
        stamp = pl.col(column).dt.convert_time_zone("UTC") if dtype.time_zone else pl.col(column)
        return stamp.dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ")
    return pl.col(column).cast(pl.String)
