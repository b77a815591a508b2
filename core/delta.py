"""Several delta readers behind one: a source whose entities stream in different ways.

Tables that suit log-based capture next to tables that only have a change
column are the common case, so a connector groups its entities by how they
stream (`split_context`), builds one reader per group and hands the engine
`combined(...)`. The engine sees one reader and one position; the position
holds each part's own, under the part's name, and every call is delegated
to the parts (to the owner of an entity where one entity is meant).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import polars as pl

from kanal.core.connector import Changes, DeltaContext, DeltaReader, EntityOptions


def split_context(context: DeltaContext, kind: Callable[[str, EntityOptions], str]) -> dict[str, DeltaContext]:
    """The entities of `context` grouped by `kind(entity, options)`, one context per group."""
    groups: dict[str, dict[str, EntityOptions]] = {}
    for entity, options in context.entities.items():
        groups.setdefault(kind(entity, options), {})[entity] = options
    return {name: DeltaContext(context.job, entities) for name, entities in groups.items()}


def combined(parts: Mapping[str, tuple[DeltaReader, DeltaContext]]) -> DeltaReader:
    """One reader over `parts` (name -> reader and its entities); a single part is returned as it is.

    A single part keeps its own position format, so a job that streams one
    way resumes from positions stored before it could stream two ways.
    """
    if len(parts) == 1:
        return next(iter(parts.values()))[0]
    return CompositeReader(parts)


class CompositeReader(DeltaReader):
    """Delegates to one reader per part; position: ``{part name: that part's position}``."""

    def __init__(self, parts: Mapping[str, tuple[DeltaReader, DeltaContext]]) -> None:
        self.parts = {name: reader for name, (reader, _) in parts.items()}
        self.owners = {entity: name for name, (_, context) in parts.items() for entity in context.entities}

    def check(self) -> None:
        for reader in self.parts.values():
            reader.check()

    def start(self) -> dict[str, Any]:
        return {name: reader.start() for name, reader in self.parts.items()}

    def resumable(self, position: dict[str, Any]) -> bool:
        """Every part can go on from its stored position (a part missing from it was added since: cannot)."""
        return all(name in position and reader.resumable(position[name]) for name, reader in self.parts.items())

    def snapshot_version(self, entity: str, position: dict[str, Any]) -> pl.Expr | None:
        name = self.owners[entity]
        return self.parts[name].snapshot_version(entity, position[name])

    def read(self, position: dict[str, Any]) -> Changes:
        """Each part reads once (each bounded), so a busy part never starves the others."""
        frames: dict[str, pl.DataFrame] = {}
        after = {}
        for name, reader in self.parts.items():
            changes = reader.read(position[name])
            frames.update(changes.frames)
            after[name] = changes.position
        return Changes(frames, after)

    def confirm(self, position: dict[str, Any]) -> None:
        for name, reader in self.parts.items():
            reader.confirm(position[name])

    def gauges(self) -> dict[str, float]:
        return {name: value for reader in self.parts.values() for name, value in reader.gauges().items()}

    def status(self) -> dict[str, str]:
        figures: dict[str, str] = {}
        for name, reader in self.parts.items():
            for key, value in reader.status().items():
                figures[f"{name} {key}" if key in figures else key] = value
        return figures

    def describe(self, position: dict[str, Any]) -> str:
        return "; ".join(
            reader.describe(position[name]) if name in position else f"{name}: no position" for name, reader in self.parts.items()
        )

    def close(self) -> None:
        for reader in self.parts.values():
            reader.close()
