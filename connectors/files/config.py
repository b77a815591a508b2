"""Configuration of the files connector: one base folder, a default format.

Connector level (`FilesConfig`, the job file's `config:` block)::

    path: /data/exchange       # sources read under it, sinks write under it
    format: csv                # optional; else inferred from the extension
    delimiter: ";"             # CSV only
    encoding: cp1252           # CSV only

Per entity, a source names the files to read (`FilesSourceOptions.pattern`)
and a sink the folder to write (`FilesSinkOptions.folder`). Both are paths
relative to `path` and may not leave it.
"""

from __future__ import annotations

import codecs
from pathlib import PurePosixPath, PureWindowsPath
from typing import Literal

from pydantic import Field, field_validator

from kanal.core.connector import EntityOptions, FrozenModel

Format = Literal["csv", "jsonl", "parquet"]


def _inside_base(value: str, what: str) -> str:
    """Reject a path that is absolute or climbs out of the base folder."""
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() or PureWindowsPath(value).drive:
        raise ValueError(f"{what} {value!r} must be relative to the connector's path")
    if ".." in parts:
        raise ValueError(f"{what} {value!r} must not contain '..'")
    return value


class FilesConfig(FrozenModel):
    """Where the files live and how CSV text is spelled."""

    path: str = Field(
        description="Base folder. A source reads files under it; a sink writes one folder per entity under it.",
        min_length=1,
    )
    format: Format | None = Field(
        None,
        description=(
            "Default file format for every entity. Unset: a source infers it from the file extension "
            "(.csv; .jsonl, .ndjson or .json for JSON Lines; .parquet) and a sink writes parquet."
        ),
    )
    delimiter: str = Field(",", description="CSV field delimiter, one single-byte character (e.g. ';' or a tab).")
    encoding: str = Field(
        "utf8",
        description=(
            "CSV text encoding: utf8 (default), utf8-lossy (read invalid bytes as U+FFFD instead of failing), "
            "or any Python codec such as cp1252 or latin-1, converted while reading and writing."
        ),
    )

    @field_validator("delimiter")
    @classmethod
    def _one_byte(cls, value: str) -> str:
        if len(value.encode("utf-8")) != 1 or value in ('"', "\n", "\r"):
            raise ValueError(f"delimiter must be one single-byte character, not a quote or newline; got {value!r}")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        if value.lower().replace("_", "-") in ("utf8-lossy", "utf-8-lossy"):
            return "utf8-lossy"
        try:
            name = codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return "utf8" if name == "utf-8" else name


class FilesSourceOptions(EntityOptions):
    """Which files hold one entity."""

    pattern: str | None = Field(
        None,
        description=(
            "Glob relative to `path` (e.g. 'exports/stock_*.csv', 'prices.parquet', '**/*.jsonl'). A matching "
            "folder contributes the files directly inside it that have a known extension (all of them when "
            "`format` is set). Unset: the folder '<entity>/' or the file '<entity>.<csv|jsonl|ndjson|json|parquet>', "
            "the same files discovery reports. Names starting with a dot are skipped."
        ),
    )
    format: Format | None = Field(None, description="File format of this entity; overrides the connector's `format`.")

    @field_validator("pattern")
    @classmethod
    def _relative_pattern(cls, value: str | None) -> str | None:
        return None if value is None else _inside_base(value, "pattern")


class FilesSinkOptions(EntityOptions):
    """Where and how one entity is written."""

    folder: str | None = Field(
        None,
        description="Folder relative to `path` that receives one file per batch. Unset: the entity name.",
    )
    format: Format | None = Field(
        None,
        description="File format written for this entity; overrides the connector's `format` (default parquet).",
    )

    @field_validator("folder")
    @classmethod
    def _relative_folder(cls, value: str | None) -> str | None:
        return None if value is None else _inside_base(value, "folder")
