"""Small helpers shared by the mapping tests."""

from __future__ import annotations

from typing import Any

import polars as pl

from kanal.mappings import parse_mapping

SOURCE = "erp_customers.yaml"


def run(fields: dict[str, Any], frame: pl.DataFrame | dict[str, list[Any]], **top: Any) -> pl.DataFrame:
    """Apply a mapping made of `fields` (and top-level keys) to `frame`."""
    data = frame if isinstance(frame, pl.DataFrame) else pl.DataFrame(frame)
    return parse_mapping({"fields": fields, **top}, source=SOURCE).apply(data)


def column(fields: dict[str, Any], frame: pl.DataFrame | dict[str, list[Any]], name: str, **top: Any) -> list[Any]:
    return run(fields, frame, **top)[name].to_list()
