"""New and changed files as deltas (`delta: files`): a folder an ERP or WMS drops exports into.

The position is the signature (size, modification time) of every file seen.
A read picks the oldest new or changed file of each entity and hands out all
its rows as upserts, versioned by the file's modification time (a newer
export wins in the sinks). A file modified within the last `SETTLE_S`
seconds is left for a later read: it may still be being written. Removed
files are not deletes: an export that is cleaned up says nothing about the
records in it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import polars as pl

from kanal.core.connector import OP, UPSERT, VERSION, Changes, DeltaContext, DeltaReader
from kanal.core.errors import ConfigError

if TYPE_CHECKING:
    from kanal.connectors.files.source import FilesSource

SETTLE_S = 1.0


class FilesDelta(DeltaReader):
    def __init__(self, source: FilesSource, context: DeltaContext) -> None:
        self.source, self.entities = source, context.entities

    def _signatures(self, entity: str) -> dict[str, tuple[list[int], Any]]:
        """path -> ([size, mtime_ns], chunk) of the entity's files now."""
        try:
            chunks = self.source.plan(entity, self.entities[entity])
        except ConfigError:  # no file (yet): nothing to read
            return {}
        return {c.id: ([c.spec["size"], c.spec["mtime_ns"]], c) for c in chunks}

    def start(self) -> dict[str, Any]:
        return {"files": {e: {path: sig for path, (sig, _) in self._signatures(e).items()} for e in self.entities}}

    def read(self, position: dict[str, Any]) -> Changes:
        seen = {e: dict(files) for e, files in position["files"].items()}
        settled = (time.time() - SETTLE_S) * 1e9
        frames = {}
        for entity, options in self.entities.items():
            known = seen.setdefault(entity, {})
            fresh = [
                (sig, chunk)
                for path, (sig, chunk) in self._signatures(entity).items()
                if known.get(path) != sig and sig[1] <= settled
            ]
            if not fresh:
                continue
            sig, chunk = min(fresh, key=lambda f: f[0][1])  # oldest first: exports apply in order
            parts = list(self.source.snapshot(entity, options, chunk))
            known[chunk.id] = sig
            if parts:
                frames[entity] = pl.concat(parts, how="diagonal_relaxed").with_columns(
                    pl.lit(UPSERT).alias(OP), pl.lit(sig[1] // 1000, pl.Int64).alias(VERSION)
                )
        return Changes(frames, {"files": seen})

    def describe(self, position: dict[str, Any]) -> str:
        return ", ".join(f"{e} {len(files)} file(s) seen" for e, files in sorted(position["files"].items()))
