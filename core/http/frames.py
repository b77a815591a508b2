"""Typed polars frames from JSON records, with the schema declared once.

A connector declares the columns it wants from an API record, each with a
JSON path and a type::

    PRODUCT = RecordSchema({
        "id": "int",
        "sku": "text",
        "price": ("regular_price", "decimal"),
        "email": ("billing.email", "text"),
        "updated_at": ("date_modified_gmt", "datetime"),
    })
    frame = PRODUCT.frame(response.content, at="products")

The raw response body goes to polars' JSON reader in one call, with a schema
built from the declared paths, so no Python runs per record; keys not
declared are skipped by the reader. Every declared leaf is read as text
(a JSON string, number or boolean all fit), then typed with polars
expressions:

* `decimal` stays text ("12.50" arrives as "12.50"), so money is exact. A
  JSON *number* is read as a double by any JSON parser: 12.50 arrives as
  "12.5" (same value), and more than ~15 significant digits cannot be exact.
* `datetime` is UTC (`Datetime("us", "UTC")`): offsets are converted, values
  without an offset are taken as UTC (read WooCommerce's `*_gmt` fields).
* `int`, `float`, `bool` (JSON true/false), `text`; or any polars dtype
  (e.g. `pl.List(pl.Struct(...))`) to keep a nested part as it is.

A value that does not fit its declared type is an error naming the column,
its path and an example, never a silent null: declare the column `text` if
the API is loose about it and let the mapping decide.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Literal, TypeAlias

import polars as pl

from kanal.core.errors import ConnectorError
from kanal.core.validate import _DECIMAL, _to_datetime

Path: TypeAlias = str | tuple[str, ...]
"""A path into a JSON object: "billing.email", or a tuple when a key holds a dot."""
Kind = Literal["text", "int", "float", "decimal", "bool", "datetime"]
FieldType: TypeAlias = Kind | pl.DataType
_RECORD = "_kanal_record"
_TYPED: dict[str, pl.DataType] = {
    "text": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "decimal": pl.String(),
    "bool": pl.Boolean(),
    "datetime": pl.Datetime("us", "UTC"),
}
_BOOLS = {"true": True, "false": False}


def keys(path: Path | None) -> tuple[str, ...]:
    """The keys of a path (None and "" are the root)."""
    if not path:
        return ()
    return tuple(path.split(".")) if isinstance(path, str) else tuple(path)


def _convert(raw: pl.Expr, kind: FieldType) -> pl.Expr:
    """The typed value of a text leaf; null where it does not convert."""
    if not isinstance(kind, str):
        return raw
    match kind:
        case "int":
            return raw.str.strip_chars().cast(pl.Int64, strict=False)
        case "float":
            return raw.str.strip_chars().cast(pl.Float64, strict=False)
        case "decimal":
            digits = raw.str.strip_chars()
            return pl.when(digits.str.contains(_DECIMAL)).then(digits)
        case "bool":
            return raw.replace_strict(_BOOLS, default=None, return_dtype=pl.Boolean)
        case "datetime":
            return _to_datetime(raw, pl.String())
        case _:
            return raw


class RecordSchema:
    """Columns of one kind of API record: name -> type, or name -> (JSON path, type)."""

    def __init__(self, columns: Mapping[str, FieldType | tuple[Path, FieldType]]) -> None:
        self.columns: dict[str, tuple[tuple[str, ...], FieldType]] = {}
        for name, spec in columns.items():
            path, kind = spec if isinstance(spec, tuple) else (name, spec)
            if isinstance(kind, str) and kind not in _TYPED:
                raise ValueError(
                    f"column {name!r}: unknown type {kind!r} (one of {', '.join(_TYPED)}, or a polars dtype)"
                )
            self.columns[name] = (keys(path), kind)
        self._record = self._record_dtype()

    @property
    def schema(self) -> pl.Schema:
        """The schema of the frames this produces."""
        return pl.Schema({n: _TYPED[k] if isinstance(k, str) else k for n, (_, k) in self.columns.items()})

    def _record_dtype(self) -> pl.Struct:
        """The polars type of one JSON record, holding only the declared paths."""
        tree: dict[str, object] = {}
        for name, (path, kind) in self.columns.items():
            node = tree
            for depth, key in enumerate(path):
                leaf = depth == len(path) - 1
                dtype = pl.String() if isinstance(kind, str) else kind
                existing = node.setdefault(key, dtype if leaf else {})
                if (leaf and existing != dtype) or (not leaf and not isinstance(existing, dict)):
                    raise ValueError(f"column {name!r}: path {'.'.join(path)!r} clashes with another column's path")
                if not leaf:
                    node = existing  # type: ignore[assignment]
        return _struct(tree)

    def frame(
        self, content: bytes, at: Path | None = None, *, system: str = "api", what: str = "answer"
    ) -> pl.DataFrame:
        """The records of a raw JSON body as a typed frame.

        `at` is where the list of records is in the body (None: the body is
        the list); `system` and `what` name the answer in errors.
        """
        where = keys(at)
        try:
            if where:
                nested: pl.DataType = pl.List(self._record)
                for key in reversed(where[1:]):
                    nested = pl.Struct({key: nested})
                document = pl.read_json(io.BytesIO(content), schema={where[0]: nested})
                records = document.select(_path(pl.col(where[0]), where[1:]).alias(_RECORD))
            else:
                fields = {f.name: f.dtype for f in self._record.fields}
                records = pl.read_json(io.BytesIO(content), schema=fields).select(pl.struct(pl.all()).alias(_RECORD))
        except pl.exceptions.PolarsError as exc:
            first = str(exc).split("\n", 1)[0]
            raise ConnectorError(
                system, f"{what}: the records do not fit the connector's declared columns ({first})"
            ) from None
        rows = records.explode(_RECORD, keep_nulls=False).filter(pl.col(_RECORD).is_not_null()) if where else records
        return self._typed(rows, system, what)

    def _typed(self, rows: pl.DataFrame, system: str, what: str) -> pl.DataFrame:
        raws = {name: _path(pl.col(_RECORD), path) for name, (path, _) in self.columns.items()}
        checked = [name for name, (_, kind) in self.columns.items() if isinstance(kind, str) and kind != "text"]
        typed = rows.select(
            *[_convert(raws[name], kind).alias(name) for name, (_, kind) in self.columns.items()],
            *[raws[name].alias(f"_raw_{name}") for name in checked],
        )
        failed = {name: pl.col(f"_raw_{name}").is_not_null() & pl.col(name).is_null() for name in checked}
        counts = (
            typed.select([rule.sum().alias(name) for name, rule in failed.items()]).row(0, named=True) if failed else {}
        )
        problems = []
        for name, count in counts.items():
            if count:
                path, kind = self.columns[name]
                example = typed.filter(failed[name]).get_column(f"_raw_{name}")[0]
                problems.append(
                    f"column {name!r} (JSON {'.'.join(path)}): {count} value(s) are not {kind}, e.g. {example!r}"
                )
        if problems:
            raise ConnectorError(
                system,
                f"{what}: " + "; ".join(problems) + " (declare the column as text if the API is loose about it)",
            )
        return typed.select(list(self.columns))


def _path(expr: pl.Expr, path: tuple[str, ...]) -> pl.Expr:
    for key in path:
        expr = expr.struct.field(key)
    return expr


def _struct(tree: dict[str, object]) -> pl.Struct:
    return pl.Struct({key: _struct(sub) if isinstance(sub, dict) else sub for key, sub in tree.items()})  # type: ignore[misc]
