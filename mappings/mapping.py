"""`Mapping`: a checked mapping file, applied to frames as one polars `select`."""

from __future__ import annotations

import os
from typing import Any

import polars as pl

from kanal.core.errors import ConfigError
from kanal.mappings.compile import compile_select
from kanal.core.places import read_yaml
from kanal.mappings.spec import Direction, MappingSpec, parse_spec


class Mapping:
    """Maps the columns of a frame to other columns; pure: no I/O, no per-row Python.

    The polars expressions depend on the input's dtypes, so they are compiled
    on first use for each schema; the last schema's plan is kept because a
    job's batches nearly always share one.
    """

    def __init__(self, spec: MappingSpec) -> None:
        self._spec = spec
        self._plan: tuple[tuple[tuple[str, pl.DataType], ...], list[pl.Expr]] | None = None

    @classmethod
    def identity(cls) -> Mapping:
        """The mapping that returns every frame unchanged (no mapping file)."""
        return cls(MappingSpec("identity", None, "source", True, ()))

    @property
    def entity(self) -> str | None:
        """The canonical entity the mapping produces (source) or consumes (sink), if named."""
        return self._spec.entity.name if self._spec.entity else None

    @property
    def direction(self) -> Direction:
        return self._spec.direction

    @property
    def source(self) -> str:
        """The file (or name) the mapping came from, as used in messages."""
        return self._spec.source

    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The mapped frame; raises ConfigError when the input lacks a column the mapping reads."""
        if not self._spec.fields:
            return frame
        key = tuple(frame.schema.items())
        if self._plan is None or self._plan[0] != key:
            self._plan = (key, compile_select(self._spec, frame.schema))
        return frame.lazy().select(self._plan[1]).collect()

    def __repr__(self) -> str:
        return f"Mapping({self.source!r}, entity={self.entity!r}, direction={self.direction!r})"


def parse_mapping(spec: Any, source: str = "<mapping>") -> Mapping:
    """A Mapping from an already loaded document; `source` names it in messages."""
    return Mapping(parse_spec(spec, source))


def load_mapping(path: str | os.PathLike[str]) -> Mapping:
    """Read and check a mapping file; every ConfigError starts with `path` as given."""
    source = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the mapping file: {exc}") from None
    data, lines = read_yaml(text, source)
    return Mapping(parse_spec(data, source, lines))
