"""Write entities as one file per Kafka message under `<path>/<folder>/`.

Files have no upsert, so this sink is idempotent by naming: it declares
`stable_batches`, the engine hands it one Kafka message per `write` with a
`batch_id` that is the same on every re-delivery, and the batch lands in
`<batch_id>.<ext>`. A re-delivered batch replaces its own file instead of
adding a second copy, and the atomic replace means a crash never leaves half
a file under that name.

Deltas are written as a change log under `<folder>/changes/`: files of
records with their `_kanal_op` (upsert/delete/truncate) and `_kanal_version`.
A truncate record has no fields: every record of an older version is gone.
It arrives once per partition of the entity's topic, so the log holds it
several times with one version. Delta batches are cut by time and size, so
after a crash a re-delivered change may land in a second file; its key and
version identify the repeat.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from urllib.parse import quote

import polars as pl

from kanal.connectors.files.config import FilesConfig, FilesSinkOptions, Format
from kanal.connectors.files.formats import SUFFIXES, SYSTEM, disk_error, read, write
from kanal.core.connector import OP, UPSERT, VERSION, EntityOptions, Sink, WriteResult
from kanal.core.errors import BatchRejected, ConnectorError
from kanal.core.model import entity as canonical
from kanal.core.validate import KEY

INTERNAL_PREFIX = "_kanal_"
"""Columns the engine adds (`_kanal_key`); they are not written."""
_MAX_STEM = 200
_ORDER = "_kanal_file_order"


def file_stem(batch_id: str) -> str:
    """A file name for `batch_id`: distinct ids give distinct names, none hidden or climbing."""
    if not batch_id:
        raise ValueError("batch_id must not be empty")
    stem = quote(batch_id, safe="-_.=+@,")
    if stem.startswith("."):
        stem = "%2E" + stem[1:]
    if len(stem) > _MAX_STEM:
        stem = f"{stem[:_MAX_STEM - 65]}-{hashlib.sha256(batch_id.encode()).hexdigest()}"
    return stem


class FilesSink(Sink):
    """Writes each batch to its own file, replaced on re-delivery."""

    entity_options = FilesSinkOptions
    config: FilesConfig

    def __init__(self, config: FilesConfig) -> None:
        super().__init__(config)
        self.base = Path(config.path)

    def check(self) -> None:
        try:
            self.base.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.base, prefix=".kanal-check-", suffix=".tmp"):
                pass
        except OSError as exc:
            raise disk_error("write to folder", self.base, exc) from None

    def prepare(self, entity: str, options: EntityOptions) -> None:
        folder = self.folder(entity, options)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error("create folder", folder, exc) from None

    def write(self, entity: str, options: EntityOptions, frame: pl.DataFrame, batch_id: str) -> WriteResult:
        fmt = self.format(options)
        changes = OP in frame.columns  # deltas: the files are a change log, keep operation and version
        folder = self.folder(entity, options) / ("changes" if changes else "")
        target = folder / f"{file_stem(batch_id)}{SUFFIXES[fmt]}"
        data = frame.drop(
            [n for n in frame.columns if n.startswith(INTERNAL_PREFIX) and not (changes and n in (OP, VERSION))]
        )
        if data.height == 0:
            return WriteResult()
        encoding = self.config.encoding
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write(data, target, fmt, delimiter=self.config.delimiter, encoding=encoding)
        except OSError as exc:
            raise disk_error("write", target, exc) from None
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start : exc.end]
            raise BatchRejected(SYSTEM, f"{target}: {bad!r} cannot be written as {encoding}") from None
        except pl.exceptions.PolarsError as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConnectorError(SYSTEM, f"cannot write {target} as {fmt}: {reason}") from None
        return WriteResult(written=data.height)

    def read_back(self, entity: str, options: EntityOptions) -> pl.DataFrame:
        """What the files hold now: the snapshot files, overlaid per key by the change log's newest record.

        Change records are ordered by version, then by file time (a repair
        written later at an equal version wins); a delete removes its key.
        """
        fmt = self.format(options)
        folder = self.folder(entity, options)
        model = canonical(entity)
        base = self._read_all(sorted(folder.glob(f"*{SUFFIXES[fmt]}")), fmt)
        changes = self._read_all(sorted((folder / "changes").glob(f"*{SUFFIXES[fmt]}"), key=_mtime), fmt, ordered=True)
        empty = pl.DataFrame(schema={**{f.name: pl.String for f in model.fields}, VERSION: pl.Int64})
        base = pl.concat([empty, base], how="diagonal_relaxed") if base is not None else empty
        if changes is None:
            return base.with_columns(pl.col(VERSION).cast(pl.Int64))
        changes = pl.concat([empty, changes], how="diagonal_relaxed").with_columns(model.key_expr())
        newest = changes.sort([VERSION, _ORDER], nulls_last=False).unique(KEY, keep="last", maintain_order=True)
        kept = base.with_columns(model.key_expr()).join(newest.select(KEY), on=KEY, how="anti")
        upserts = newest.filter(pl.col(OP) == UPSERT)
        return pl.concat([kept, upserts], how="diagonal_relaxed").select(empty.columns).with_columns(pl.col(VERSION).cast(pl.Int64))

    def _read_all(self, paths: list[Path], fmt: Format, *, ordered: bool = False) -> pl.DataFrame | None:
        """Every row of `paths`, as text (`ordered`: with the file's place in the list, in `_ORDER`)."""
        frames = []
        for i, path in enumerate(paths):
            for frame in read(path, fmt, delimiter=self.config.delimiter, encoding=self.config.encoding):
                text = frame.select(_as_text(frame))
                frames.append(text.with_columns(pl.lit(i).alias(_ORDER)) if ordered else text)
        return pl.concat(frames, how="diagonal_relaxed") if frames else None

    def folder(self, entity: str, options: EntityOptions) -> Path:
        """The folder that receives `entity`'s files."""
        return self.base / (_sink_options(options).folder or entity)

    def format(self, options: EntityOptions) -> Format:
        """The format written: the entity's, else the connector's, else parquet."""
        return _sink_options(options).format or self.config.format or "parquet"


def _mtime(path: Path) -> tuple[int, str]:
    return path.stat().st_mtime_ns, path.name


def _as_text(frame: pl.DataFrame) -> list[pl.Expr]:
    """Columns as text (structs as JSON, times in ISO 8601), versions as integers: files of any format compare alike."""
    out = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if name == VERSION:
            out.append(col.cast(pl.Int64))
        elif isinstance(dtype, pl.Struct | pl.List):
            out.append(col.struct.json_encode() if isinstance(dtype, pl.Struct) else col.cast(pl.String))
        elif isinstance(dtype, pl.Datetime):
            out.append(col.dt.to_string("%Y-%m-%dT%H:%M:%S%.f%z") if dtype.time_zone else col.dt.to_string("%Y-%m-%dT%H:%M:%S%.f"))
        else:
            out.append(col.cast(pl.String))
    return out


def _sink_options(options: EntityOptions) -> FilesSinkOptions:
    if isinstance(options, FilesSinkOptions):
        return options
    return FilesSinkOptions(mapping=options.mapping)
