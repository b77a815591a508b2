"""Building blocks shared by the runners: connectors, transforms, state folders."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from kanal.core.connector import Sink, Source, Transform
from kanal.core.dlq import DeadLetterStore
from kanal.core.validate import KEY
from kanal.jobs.load import EntityPlan, LoadedJob, SinkPlan
from kanal.mappings import load_mapping


def identity(frame: pl.DataFrame) -> pl.DataFrame:
    return frame


def source_transform(plan: EntityPlan) -> Transform:
    """The source mapping of an entity (raw columns -> canonical), or identity."""
    return load_mapping(plan.mapping).apply if plan.mapping else identity


def sink_transform(plan: EntityPlan) -> Transform:
    """The sink mapping (canonical -> target columns); the key column always survives."""
    if not plan.mapping:
        return identity
    apply = load_mapping(plan.mapping).apply

    def transform(frame: pl.DataFrame) -> pl.DataFrame:
        out = apply(frame)
        return out if KEY in out.columns else out.with_columns(frame.get_column(KEY))

    return transform


def make_source(loaded: LoadedJob) -> Source:
    assert loaded.source.source is not None
    return loaded.source.source(loaded.source_config)


def make_sink(plan: SinkPlan) -> Sink:
    assert plan.connector.sink is not None
    return plan.connector.sink(plan.config)


def dead_letter_store(loaded: LoadedJob) -> DeadLetterStore:
    return DeadLetterStore(loaded.state_dir / "dlq")


def report_dir(loaded: LoadedJob) -> Path:
    return loaded.state_dir
