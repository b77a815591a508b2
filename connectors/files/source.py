"""Read entities from CSV, JSON Lines and Parquet files under one base folder.

An entity is a set of files chosen by a glob (`FilesSourceOptions.pattern`),
for example a folder a WMS drops its exports into. Each file is one chunk;
its id is the file's path relative to the base folder, so a resumed run
reads exactly the files it had not finished. Files and folders whose name
starts with a dot are never read (the sink's temporary files are hidden).

Discovery is by name: an entity is offered when the base folder holds a
folder `<entity>/` or a file `<entity>.<csv|jsonl|ndjson|json|parquet>`,
which is also what `plan` reads when no pattern is given.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from kanal.connectors.files.config import FilesConfig, FilesSourceOptions, Format
from kanal.connectors.files.formats import BATCH_ROWS, EXTENSIONS, SYSTEM, columns, count_rows, disk_error, format_of, read
from kanal.connectors.files.delta import FilesDelta
from kanal.core.connector import Chunk, DeltaContext, DeltaReader, EntityInfo, EntityOptions, Source
from kanal.core.errors import ConfigError, ConnectorError
from kanal.core.model import ENTITIES


_DELIMITERS = (";", ",", "\t", "|")
"""Column separators tried when a CSV header reads as one column."""


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


class FilesSource(Source):
    """Each matching file is one chunk, read in frames of at most 100,000 rows."""

    entity_options = FilesSourceOptions
    config: FilesConfig

    def __init__(self, config: FilesConfig) -> None:
        super().__init__(config)
        self.base = Path(config.path)

    def check(self) -> None:
        self._base_folder()

    def discover(self) -> list[EntityInfo]:
        base = self._base_folder()
        return [
            EntityInfo(name, e.key)
            for name, e in ENTITIES.items()
            if self._default_files(base, name, self.config.format)
        ]

    def plan(self, entity: str, options: EntityOptions) -> list[Chunk]:
        opts = _source_options(options)
        base = self._base_folder()
        fmt = opts.format or self.config.format
        if opts.pattern:
            files = self._matching_files(base, opts.pattern, fmt)
            wanted = f"pattern {opts.pattern!r}"
        else:
            files = self._default_files(base, entity, fmt)
            wanted = f"folder {entity!r} or file {entity!r} with extension {', '.join(EXTENSIONS)} (no pattern set)"
        if not files:
            raise ConfigError(f"entity {entity!r}: no files match {wanted} in folder {base}")
        chunks = []
        for relative in files:
            path = base / relative
            file_format = fmt or format_of(path)
            if file_format is None:
                raise ConfigError(
                    f"entity {entity!r}: cannot tell the format of {path} from its extension; "
                    "set `format` (csv, jsonl or parquet)"
                )
            try:
                stat = path.stat()
            except OSError as exc:
                raise disk_error("read", path, exc) from None
            name = relative.as_posix()
            spec = {"path": name, "format": file_format, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            chunks.append(Chunk(name, spec, count_rows(path, file_format)))
        return chunks

    def snapshot(self, entity: str, options: EntityOptions, chunk: Chunk) -> Iterator[pl.DataFrame]:
        path = self.base / chunk.spec.get("path", chunk.id)
        fmt: Format | None = chunk.spec.get("format") or _source_options(options).format or self.config.format
        fmt = fmt or format_of(path)
        if fmt is None:
            raise ConfigError(f"entity {entity!r}: cannot tell the format of {path}; set `format`")
        config = self.config
        frames = read(path, fmt, delimiter=config.delimiter, encoding=config.encoding, batch_rows=BATCH_ROWS)
        first = next(frames, None)  # its columns are the file's: CSV header, Parquet schema, first JSON Lines block
        if first is None:
            return
        _check_columns(entity, path, fmt, first.columns, config.delimiter, _source_options(options).mapping is not None)
        yield first
        yield from frames

    def fields(self, entity: str, options: EntityOptions) -> pl.Schema | None:
        """The columns every file of the entity has (a column missing from one file is missing)."""
        found: pl.Schema | None = None
        for chunk in self.plan(entity, options):
            schema = columns(self.base / chunk.spec["path"], chunk.spec["format"], delimiter=self.config.delimiter,
                             encoding=self.config.encoding)
            if schema is not None:
                found = schema if found is None else pl.Schema({n: t for n, t in found.items() if n in schema})
        return found

    def delta(self, context: DeltaContext) -> DeltaReader:
        wrong = [e for e, o in context.entities.items() if o.delta != "files"]
        if wrong:
            raise ConfigError(f"entity {wrong[0]!r}: the files source reads `delta: files` (new and changed files) only")
        return FilesDelta(self, context)

    # ----------------------------------------------------------------- helpers

    def _base_folder(self) -> Path:
        """The base folder, after making sure it exists and can be listed."""
        base = self.base
        try:
            if not base.is_dir():
                problem = f"{base} is not a folder" if base.exists() else f"folder {base} does not exist"
                raise ConnectorError(SYSTEM, problem)
            with os.scandir(base) as entries:
                next(entries, None)
        except OSError as exc:
            raise disk_error("read folder", base, exc) from None
        return base

    @staticmethod
    def _matching_files(base: Path, pattern: str, fmt: Format | None) -> list[Path]:
        """Files matching `pattern`, relative to `base`, sorted; a matching folder adds its files."""
        found: set[Path] = set()
        try:
            for hit in base.glob(pattern):
                relative = hit.relative_to(base)
                if _hidden(relative):
                    continue
                if hit.is_file():
                    found.add(relative)
                elif hit.is_dir():
                    found.update(_files_in(base, relative, fmt))
        except OSError as exc:
            raise disk_error("read folder", base, exc) from None
        except ValueError as exc:  # a pattern pathlib cannot use
            raise ConfigError(f"pattern {pattern!r}: {exc}") from None
        return sorted(found, key=lambda p: p.as_posix())

    @staticmethod
    def _default_files(base: Path, entity: str, fmt: Format | None) -> list[Path]:
        """The folder `<entity>/` (its files) and the files `<entity>.<known extension>`."""
        found: list[Path] = []
        try:
            if (base / entity).is_dir() and not entity.startswith("."):
                found.extend(_files_in(base, Path(entity), fmt))
            with os.scandir(base) as entries:
                for entry in entries:
                    path = Path(entry.name)
                    if path.stem == entity and path.suffix.lower() in EXTENSIONS and entry.is_file():
                        found.append(path)
        except OSError as exc:
            raise disk_error("read folder", base, exc) from None
        return sorted(found, key=lambda p: p.as_posix())


def _files_in(base: Path, folder: Path, fmt: Format | None) -> list[Path]:
    """Visible files directly in `folder` in the given format, or with a known extension."""
    with os.scandir(base / folder) as entries:
        return [
            folder / entry.name
            for entry in entries
            if not entry.name.startswith(".")
            and entry.is_file()
            and (fmt is not None or format_of(Path(entry.name)) is not None)
        ]


def _check_columns(entity: str, path: Path, fmt: Format, found: list[str], delimiter: str, mapped: bool) -> None:
    """Refuse a file whose columns cannot be what the job expects.

    Read without a mapping, at least one column must be a field of the
    entity; otherwise every row would be set aside as "required field is
    empty", a job-file problem (a wrong delimiter, a missing mapping), not one
    of the records. A mapping reports the columns it lacks itself; a CSV
    header that reads as one column holding another separator is a wrong
    `delimiter` either way.
    """
    guess = _delimiter_guess(fmt, found, delimiter)
    fix = (f"the file seems to separate columns by {guess!r}, not {delimiter!r}: set `delimiter: {guess!r}` in the "
           "files connector's config") if guess else None
    if mapped:
        if fix:
            raise ConfigError(f"{path}: the header reads as one column {found[0]!r}; {fix}")
        return
    model = ENTITIES[entity]
    if set(found) & set(model.field_names):
        return
    columns = ", ".join(repr(c) for c in found)
    expected = f"{entity} has {', '.join(model.field_names)} (key: {', '.join(model.key)})"
    rename = f"rename the columns, or map them with a mapping file (source entities.{entity}.mapping)"
    if fix is None and fmt == "csv":
        fix = f"check the files connector's `delimiter` ({delimiter!r}) and that the file starts with a header row, or {rename}"
    raise ConfigError(f"{path}: none of its columns is a field of {entity}: found {columns}; {expected}; {fix or rename}")


def _delimiter_guess(fmt: Format, found: list[str], delimiter: str) -> str | None:
    """The separator a CSV header read as one column seems to use, if any."""
    if fmt != "csv" or len(found) != 1:
        return None
    return next((c for c in _DELIMITERS if c != delimiter and c in found[0]), None)


def _source_options(options: EntityOptions) -> FilesSourceOptions:
    if isinstance(options, FilesSourceOptions):
        return options
    return FilesSourceOptions(mapping=options.mapping)
