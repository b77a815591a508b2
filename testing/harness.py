"""What a connector author provides to the conformance kit: a way to reach and inspect the system.

The kit (`kanal.testing.contract`) knows the contract; it does not know
your system. A `Harness` tells it how to build a config, how to put records
into the system (for sources) and how to read back what a sink wrote. The
records themselves come from the kit (`Harness.record`), in the canonical
model, so every connector is held to the same data.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
from pydantic import BaseModel

from kanal.core.changes import TRUNCATE_KEY
from kanal.core.connector import OP, TRUNCATE, VERSION, ConnectorSpec, EntityOptions
from kanal.core.model import Kind, entity as canonical
from kanal.core.validate import KEY

MARKERS = {"products": "name", "customers": "last_name", "prices": "amount", "stock_levels": "available",
           "stock_movements": "source"}
"""Per entity, the field whose value tells record versions apart in the kit's comparisons."""

FIXED = {"price_list": "retail", "currency": "EUR", "location": "WH1"}
"""Values of non-varying key parts and required fields (a list price in EUR, stock at WH1)."""

BASE_TIME = datetime(2024, 1, 1, tzinfo=UTC)
"""Seeded records were last changed long before any test starts (cursor deltas must not see them)."""


class Harness:
    """Reach one connector's system for the kit; subclass it and override what your connector needs.

    Required: `spec`, `config`. A source needs `seed` (and `change` when it
    reads deltas, with `delta_options`); a sink needs `read`. Everything else
    has a default that fits most connectors.
    """

    spec: ConnectorSpec
    entity: str = "products"
    """The entity the kit moves; one your connector handles."""

    def config(self) -> BaseModel:
        """A config reaching the system with valid credentials."""
        raise NotImplementedError("the harness must say how to reach the system (config)")

    def bad_credentials(self) -> BaseModel | None:
        """A config whose credentials the system refuses; None: the system has no credentials."""
        return None

    # source side ------------------------------------------------------------------------------

    def source_options(self) -> EntityOptions:
        """The job file's `entities:` options of `entity` for a snapshot."""
        assert self.spec.source is not None
        return self.spec.source.entity_options()

    def delta_options(self) -> EntityOptions | None:
        """Options of `entity` with `delta:` set; None: the kit skips the delta contract."""
        return None

    def seed(self, frame: pl.DataFrame) -> None:
        """Put these canonical records (all of them, replacing what the system holds) into the system."""
        raise NotImplementedError("the harness must say how to put records into the system (seed)")

    def change(self, frame: pl.DataFrame) -> None:
        """Insert or update these canonical records in the system, as a user of the system would."""
        raise NotImplementedError("the harness must say how to change records in the system (change)")

    def to_canonical(self, frame: pl.DataFrame) -> pl.DataFrame:
        """A frame the source yielded, in canonical column names (what the job's mapping would do)."""
        return frame

    # sink side --------------------------------------------------------------------------------

    def sink_options(self) -> EntityOptions:
        """The job file's `entities:` options of `entity` for the sink."""
        assert self.spec.sink is not None
        return self.spec.sink.entity_options()

    def read(self) -> pl.DataFrame:
        """What the system holds for `entity` now, in canonical column names (the key fields and the marker)."""
        raise NotImplementedError("the harness must say how to read what the sink wrote (read)")

    def refuse(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """`record` changed so that the system refuses its data; None: the system refuses nothing."""
        return None

    # data -------------------------------------------------------------------------------------

    @property
    def marker(self) -> str:
        return MARKERS[self.entity]

    def record(self, i: int, version: int, updated_at: datetime) -> dict[str, Any]:
        """Record `i` as of `version`: key fields, required fields, the marker and `updated_at`; others empty."""
        model = canonical(self.entity)
        row: dict[str, Any] = {}
        for f in model.fields:
            if f.name in model.key[:1]:
                row[f.name] = f"KIT-{i:05d}"
            elif f.name == self.marker:
                row[f.name] = str(version * 100_000 + i) if f.kind is Kind.DECIMAL else f"v{version} of {i}"
            elif f.name in FIXED and (f.required or f.name in model.key):
                row[f.name] = FIXED[f.name]
            elif f.name == "updated_at":
                row[f.name] = updated_at
            elif f.required:
                row[f.name] = "1" if f.kind is Kind.DECIMAL else f"{f.name}-{i}"
        return row

    def frame(self, records: list[dict[str, Any]]) -> pl.DataFrame:
        """Canonical records as the engine hands them to a sink (canonical schema plus `_kanal_key`)."""
        model = canonical(self.entity)
        return pl.DataFrame(records, schema=model.schema, orient="row").with_columns(model.key_expr())

    def records(self, ids: range, version: int = 1, updated_at: datetime | None = None) -> pl.DataFrame:
        at = updated_at or BASE_TIME + timedelta(seconds=version)
        return self.frame([self.record(i, version, at) for i in ids])


def as_changes(frame: pl.DataFrame, op: str, version: int) -> pl.DataFrame:
    """`frame` as delta records: every row with `op` and `version` (epoch microseconds)."""
    return frame.with_columns(pl.lit(op).alias(OP), pl.lit(version, pl.Int64).alias(VERSION))


def truncate_row(frame: pl.DataFrame, version: int) -> pl.DataFrame:
    """A truncate record shaped like `frame`: every field NULL, the truncate key, `version`."""
    empty = pl.DataFrame([pl.Series(name, [None], dtype) for name, dtype in frame.schema.items()])
    return as_changes(empty.with_columns(pl.lit(TRUNCATE_KEY).alias(KEY)), TRUNCATE, version)


def micros(at: datetime) -> int:
    """A datetime as the epoch microseconds versions are counted in."""
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
