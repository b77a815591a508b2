"""Value rules shared by mapping fields and expressions, as polars expressions.

A mapping is compiled against the schema of the frame it meets, so each rule
can pick the polars operation that fits the input's dtype (text is stripped
before it is parsed as a number, a float must be whole to become an int)
instead of casting blindly. `Scope` is that schema; the functions below take
an expression together with its dtype.

Casts never raise on bad data: a value that does not convert becomes null,
and the caller decides whether that rejects the row (field casts do, see
`compile`) or is simply null (the expression functions `int()`/`float()`).
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

_DECIMAL = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_TRUE = ("true", "t", "1", "yes", "y")
_FALSE = ("false", "f", "0", "no", "n")
_OFFSET = r"(Z|[+-]\d\d(:?\d\d)?)$"
_ISO_ZONED = "%Y-%m-%dT%H:%M:%S%.f%#z"


class TypeProblem(Exception):
    """An operation does not fit the dtype it meets in the input frame."""


class Scope:
    """The columns of one input frame: resolves names and dotted paths, infers dtypes."""

    def __init__(self, schema: pl.Schema) -> None:
        self._schema = schema
        self._probe = pl.LazyFrame(schema=schema)

    @property
    def columns(self) -> list[str]:
        return list(self._schema)

    def locate(self, name: str) -> tuple[str, tuple[str, ...]] | None:
        """The top-level column and struct path that `name` reads, or None.

        A name that is a column wins, so raw columns with dots in their names
        keep working; otherwise a dotted name is a path into struct columns
        (`addresses.billing.city`), trying the longest column prefix first.
        """
        if name in self._schema:
            return name, ()
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            top = ".".join(parts[:cut])
            if top in self._schema and _has_path(self._schema[top], parts[cut:]):
                return top, tuple(parts[cut:])
        return None

    def column(self, name: str) -> pl.Expr:
        """The expression reading `name`; callers check `locate` first."""
        found = self.locate(name)
        if found is None:
            raise TypeProblem(f"column {name!r} is not in the input")
        top, path = found
        expr = pl.col(top)
        for part in path:
            expr = expr.struct.field(part)
        return expr

    def dtype(self, expr: pl.Expr) -> pl.DataType:
        """The dtype `expr` has on this input; polars' type errors become TypeProblem."""
        try:
            return self._probe.select(expr).collect_schema().dtypes()[0]
        except pl.exceptions.PolarsError as exc:
            raise TypeProblem(str(exc).split("\n", 1)[0]) from None


def _has_path(dtype: pl.DataType, path: list[str]) -> bool:
    for part in path:
        if not isinstance(dtype, pl.Struct):
            return False
        inner = {f.name: f.dtype for f in dtype.fields}
        if part not in inner:
            return False
        dtype = inner[part]
    return True


def text(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """`expr` as text (string functions work on any input by turning it into text)."""
    return expr if dtype == pl.String else expr.cast(pl.String)


def is_blank(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Null, or text that is empty after stripping: what `required` rejects."""
    if dtype == pl.String:
        return expr.is_null() | (expr.str.strip_chars() == "")
    return expr.is_null()


def truthy(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Python-like truth, never null: null and blank text are false, numbers are != 0."""
    if dtype == pl.Boolean:
        return expr.fill_null(False)
    if dtype == pl.String:
        return (expr.str.strip_chars() != "").fill_null(False)
    if dtype.is_numeric():
        return (expr != 0).fill_null(False)
    return expr.is_not_null()


def join_texts(parts: list[pl.Expr], sep: str) -> pl.Expr:
    """Join text parts with `sep`, skipping null and blank ones; null if none is left."""
    kept = [pl.when(part.str.strip_chars() != "").then(part) for part in parts]
    joined = pl.concat_str(kept, separator=sep, ignore_nulls=True)
    return pl.when(joined != "").then(joined)


def to_int(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        return expr.str.strip_chars().cast(pl.Int64, strict=False)
    if dtype.is_float():
        # 2.0 becomes 2, but 2.5 does not silently lose its fraction.
        return pl.when(expr.round(0) == expr).then(expr.cast(pl.Int64, strict=False))
    return expr.cast(pl.Int64, strict=False)


def to_float(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        expr = expr.str.strip_chars()
    return expr.cast(pl.Float64, strict=False)


def to_decimal(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Canonical decimal text ("12.50"): the number as written, never through a float parse."""
    digits = text(expr, dtype).str.strip_chars()
    return pl.when(digits.str.contains(_DECIMAL)).then(digits)


def to_bool(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.Boolean:
        return expr
    if dtype == pl.String:
        low = expr.str.strip_chars().str.to_lowercase()
        return pl.when(low.is_in(_TRUE)).then(True).when(low.is_in(_FALSE)).then(False)
    if dtype.is_numeric():
        return expr != 0
    return expr.cast(pl.Boolean, strict=False)


def to_datetime(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A UTC timestamp; naive input is read as UTC, integers as microseconds (as `core.validate`)."""
    utc = pl.Datetime("us", "UTC")
    if dtype == pl.String:
        # One parse is twice as fast as trying several formats, so first bring
        # "2024-01-02", "2024-01-02 03:04:05" and offset-less times to one form.
        iso = expr.str.strip_chars().str.replace(" ", "T", literal=True, n=1)
        zoned = (
            pl.when(iso.str.len_bytes() == 10)
            .then(iso + "T00:00:00Z")
            .when(iso.str.contains(_OFFSET))
            .then(iso)
            .otherwise(iso + "Z")
        )
        return zoned.str.to_datetime(_ISO_ZONED, time_unit="us", time_zone="UTC", strict=False)
    if isinstance(dtype, pl.Datetime):
        expr = expr.dt.cast_time_unit("us")
        if dtype.time_zone is None:
            return expr.dt.replace_time_zone("UTC")
        return expr.dt.convert_time_zone("UTC")
    if dtype.is_integer():
        return expr.cast(pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if dtype == pl.Date:
        return expr.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    return expr.cast(utc, strict=False)


CASTS: dict[str, Callable[[pl.Expr, pl.DataType], pl.Expr]] = {
    "str": text,
    "int": to_int,
    "float": to_float,
    "decimal": to_decimal,
    "bool": to_bool,
    "datetime": to_datetime,
}

TRANSFORMS: dict[str, Callable[[pl.Expr], pl.Expr]] = {
    "lower": lambda e: e.str.to_lowercase(),
    "upper": lambda e: e.str.to_uppercase(),
    "strip": lambda e: e.str.strip_chars(),
    "title": lambda e: e.str.to_titlecase(),
}
