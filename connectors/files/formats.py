"""The three file formats, read and written the same way by the source and the sink.

Reading yields frames of at most `BATCH_ROWS` rows, whatever the file size:

* CSV is streamed by polars with every column as text: `conform` types the
  values and rejects the bad ones, polars never guesses. An encoding other
  than UTF-8 is first converted into a temporary UTF-8 copy.
* JSON Lines is read in blocks of whole lines. Nested objects (customer
  addresses) become structs, dates stay text (typed date parsing in
  `read_ndjson` is the slow part), and every line of a block
  takes part in the block's schema so that a field seen late is not dropped.
  JSON numbers lose their spelling (12.50 reads as 12.5): write money as text.
* Parquet comes as record batches through pyarrow, typed as stored.

Writing is atomic: a hidden temporary file in the target folder, flushed to
disk, then renamed over the target, so a reader or a crash never sees half a
file. CSV and JSON Lines hold datetimes as ISO 8601 UTC text; CSV holds
structs as JSON text.

A file that cannot be parsed raises `ConnectorError` naming it (and the line
when it can be found); a disk that fails raises `Unreachable` when waiting may
help (disk full, I/O error) and `ConnectorError` otherwise.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from kanal.connectors.files.config import Format
from kanal.core.errors import ConnectorError, Unreachable

SYSTEM = "files"
BATCH_ROWS = 100_000
"""Most rows in one frame a source yields."""
JSONL_BLOCK_BYTES = 32 << 20
"""Bytes of JSON Lines parsed at once (rounded to whole lines)."""

EXTENSIONS: dict[str, Format] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
SUFFIXES: dict[Format, str] = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}
ISO_UTC = "%Y-%m-%dT%H:%M:%S%.6fZ"

_NATIVE_ENCODINGS = ("utf8", "utf8-lossy")
_TRANSIENT = {
    code
    for name in ("ENOSPC", "EDQUOT", "EIO", "EAGAIN", "EBUSY", "ETIMEDOUT", "ESTALE", "EINTR")
    if (code := getattr(errno, name, None)) is not None
}
_OS_ERROR_CODE = re.compile(r"\s*\(os error (\d+)\)")


def format_of(path: Path) -> Format | None:
    """The format a file's extension stands for, or None."""
    return EXTENSIONS.get(path.suffix.lower())


def disk_error(action: str, path: Path, exc: OSError) -> ConnectorError:
    """Turn an OSError into Unreachable (worth a retry) or ConnectorError, naming `path`."""
    text = str(exc)
    found = _OS_ERROR_CODE.search(text)  # polars reports "(os error 28)" without errno
    code = exc.errno if exc.errno is not None else (int(found.group(1)) if found else None)
    reason = exc.strerror or (text[: found.start()] if found else text)
    message = f"cannot {action} {path}: {reason}"
    return Unreachable(SYSTEM, message) if code in _TRANSIENT else ConnectorError(SYSTEM, message)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _malformed(kind: str, path: Path, exc: BaseException, where: str | None) -> ConnectorError:
    if where:
        return ConnectorError(SYSTEM, f"{path}: malformed {kind} at {where}")
    return ConnectorError(SYSTEM, f"{path}: malformed {kind}: {_first_line(exc)}")


def _bounded(frame: pl.DataFrame, rows: int) -> Iterator[pl.DataFrame]:
    if frame.height:
        yield from frame.iter_slices(rows)


# --------------------------------------------------------------------- reading


def count_rows(path: Path, fmt: Format) -> int | None:
    """Row count when the file states it cheaply (parquet footer), else None."""
    if fmt != "parquet":
        return None
    try:
        return pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException):
        return None  # the read will say what is wrong


def read(
    path: Path,
    fmt: Format,
    *,
    delimiter: str = ",",
    encoding: str = "utf8",
    batch_rows: int = BATCH_ROWS,
    block_bytes: int = JSONL_BLOCK_BYTES,
) -> Iterator[pl.DataFrame]:
    """Yield the rows of one file as frames of at most `batch_rows` rows.

    `delimiter` and `encoding` apply to CSV, `block_bytes` to JSON Lines.
    """
    try:
        if fmt == "csv":
            yield from _read_csv(path, delimiter, encoding, batch_rows)
        elif fmt == "jsonl":
            yield from _read_jsonl(path, batch_rows, block_bytes)
        else:
            yield from _read_parquet(path, batch_rows)
    except OSError as exc:
        raise disk_error("read", path, exc) from None


def columns(path: Path, fmt: Format, *, delimiter: str = ",", encoding: str = "utf8") -> pl.Schema | None:
    """The columns `read` yields for a file, from its header (CSV), footer (Parquet) or first 1 MiB (JSON Lines).

    None: the file holds no records to tell them from. A JSON Lines field
    that first appears after the first MiB is not seen.
    """
    try:
        if fmt == "csv":
            with _as_utf8(path, encoding) as text:
                return pl.scan_csv(text, separator=delimiter, infer_schema=False, raise_if_empty=False).collect_schema()
        if fmt == "parquet":
            return cast(pl.DataFrame, pl.from_arrow(pq.read_schema(path).empty_table())).schema
        first = next(_read_jsonl(path, 1, 1 << 20), None)
        return None if first is None else first.schema
    except OSError as exc:
        raise disk_error("read", path, exc) from None
    except (pl.exceptions.PolarsError, pa.ArrowException) as exc:
        raise _malformed(fmt, path, exc, None) from None


def _read_csv(path: Path, delimiter: str, encoding: str, batch_rows: int) -> Iterator[pl.DataFrame]:
    with _as_utf8(path, encoding) as text:
        frames = pl.scan_csv(
            text,
            separator=delimiter,
            infer_schema=False,
            raise_if_empty=False,
            encoding="utf8-lossy" if encoding == "utf8-lossy" else "utf8",
        ).collect_batches(chunk_size=batch_rows)
        try:
            for frame in frames:
                yield from _bounded(frame, batch_rows)
        except pl.exceptions.PolarsError as exc:
            raise _malformed("CSV", path, exc, _csv_problem(path, delimiter, encoding)) from None


@contextlib.contextmanager
def _as_utf8(path: Path, encoding: str) -> Iterator[Path]:
    """`path` itself when polars reads its encoding, else a temporary UTF-8 copy."""
    if encoding in _NATIVE_ENCODINGS:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="kanal-files-") as folder:
        copy = Path(folder) / "utf8.csv"
        try:
            with open(path, encoding=encoding, newline="") as src, open(copy, "w", encoding="utf-8", newline="") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except UnicodeError as exc:
            line = _undecodable_line(path, encoding)
            where = f" at line {line}" if line else ""
            reason = exc.reason if isinstance(exc, UnicodeDecodeError) else str(exc)
            message = f"{path}: malformed CSV{where}: not valid {encoding} text ({reason})"
            raise ConnectorError(SYSTEM, message) from None
        yield copy


def _undecodable_line(path: Path, encoding: str) -> int | None:
    """Number of the first line that does not decode (ASCII-compatible encodings)."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            try:
                line.decode(encoding)
            except UnicodeError:
                return number
    return None


def _csv_problem(path: Path, delimiter: str, encoding: str) -> str | None:
    """Find the line polars stumbled on (only runs after a failure)."""
    if encoding == "utf8":
        line = _undecodable_line(path, "utf-8")
        if line:
            return f"line {line}: not valid utf8 text"
    codec = "utf-8" if encoding in _NATIVE_ENCODINGS else encoding
    with open(path, encoding=codec, errors="replace", newline="") as fh:
        rows = csv.reader(fh, delimiter=delimiter, strict=True)
        try:
            header = next(rows, None)
            if header is None:
                return None
            for row in rows:
                if len(row) > len(header):
                    return f"line {rows.line_num}: {len(row)} fields, but the header has {len(header)}"
        except csv.Error as exc:
            hint = " (a quoted field is never closed)" if "end of data" in str(exc) else ""
            return f"line {rows.line_num}: {exc}{hint}"
    return None


def _read_jsonl(path: Path, batch_rows: int, block_bytes: int) -> Iterator[pl.DataFrame]:
    lines_before = 0
    for block in _line_blocks(path, block_bytes):
        if block.strip():
            try:
                frame = pl.read_ndjson(io.BytesIO(block), infer_schema_length=None)
            except pl.exceptions.PolarsError as exc:
                raise _malformed("JSON Lines", path, exc, _jsonl_problem(block, lines_before)) from None
            yield from _bounded(frame, batch_rows)
        lines_before += block.count(b"\n")


def _line_blocks(path: Path, size: int) -> Iterator[bytes]:
    """Blocks of about `size` bytes, each ending at a line end (the last one may not)."""
    with open(path, "rb") as fh:
        rest = fh.read(len(codecs.BOM_UTF8))
        if rest == codecs.BOM_UTF8:
            rest = b""
        while data := fh.read(size):
            data = rest + data
            cut = data.rfind(b"\n") + 1
            block, rest = data[:cut], data[cut:]
            if block:
                yield block
        if rest:
            yield rest


def _jsonl_problem(block: bytes, lines_before: int) -> str | None:
    """Find the first line of `block` that is not a JSON object (only runs after a failure)."""
    for number, line in enumerate(block.split(b"\n"), lines_before + 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return f"line {number}, column {exc.colno}: {exc.msg}"
        except UnicodeDecodeError:
            return f"line {number}: not valid UTF-8 text"
        if not isinstance(value, dict):
            return f"line {number}: not a JSON object (JSON Lines holds one object per line)"
    return None


def _read_parquet(path: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
    try:
        with pq.ParquetFile(path) as parquet:
            for batch in parquet.iter_batches(batch_size=batch_rows):
                yield from _bounded(cast(pl.DataFrame, pl.from_arrow(batch)), batch_rows)
    except OSError:
        raise
    except pa.ArrowException as exc:
        raise _malformed("Parquet", path, exc, None) from None


# --------------------------------------------------------------------- writing


def write(frame: pl.DataFrame, target: Path, fmt: Format, *, delimiter: str = ",", encoding: str = "utf8") -> None:
    """Write `frame` to `target` atomically, replacing an older file of that name.

    Raises OSError for the disk, UnicodeEncodeError for a CSV value the
    encoding cannot hold, a polars error for a frame the format cannot hold.
    """
    if fmt == "parquet":
        _replace_atomically(target, frame.write_parquet)
    elif fmt == "jsonl":
        _replace_atomically(target, _datetimes_as_text(frame).write_ndjson)
    else:
        flat = _structs_as_json(_datetimes_as_text(frame))
        if encoding in _NATIVE_ENCODINGS:
            _replace_atomically(target, lambda tmp: flat.write_csv(tmp, separator=delimiter))
        else:
            data = flat.write_csv(separator=delimiter).encode(encoding)
            _replace_atomically(target, lambda tmp: tmp.write_bytes(data))


def _datetimes_as_text(frame: pl.DataFrame) -> pl.DataFrame:
    """Datetime columns as ISO 8601 UTC text; naive values are taken as UTC."""
    columns = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Datetime):
            col = pl.col(name)
            utc = col.dt.replace_time_zone("UTC") if dtype.time_zone is None else col.dt.convert_time_zone("UTC")
            columns.append(utc.dt.to_string(ISO_UTC).alias(name))
    return frame.with_columns(columns) if columns else frame


def _structs_as_json(frame: pl.DataFrame) -> pl.DataFrame:
    """Struct columns as JSON text (NULL stays NULL), since CSV cells are flat."""
    columns = [
        pl.when(pl.col(name).is_not_null()).then(pl.col(name).struct.json_encode()).alias(name)
        for name, dtype in frame.schema.items()
        if isinstance(dtype, pl.Struct)
    ]
    return frame.with_columns(columns) if columns else frame


def _replace_atomically(target: Path, produce: Callable[[Path], object]) -> None:
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        produce(temporary)
        _fsync(temporary)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX only; some file systems refuse, which is harmless)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
