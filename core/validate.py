"""Vectorized conformance and validation of batches against the canonical model.

`conform` turns a frame of raw columns (strings from a CSV, epoch integers,
naive timestamps, JSON text for nested fields) into the canonical schema and
tags every row that breaks a rule with `_kanal_reason` (NULL when valid).
Everything is a polars expression: no Python runs per row, so validation costs
little even on millions of records. A value that cannot be converted is never
silently turned into NULL: the row is rejected naming the field and the value.
"""

from __future__ import annotations

import functools

import polars as pl

from kanal.core.iso import COUNTRIES, CURRENCIES
from kanal.core.model import ADDRESS_FIELDS, ADDRESSES_DTYPE, Entity, Field, Kind

REASON = "_kanal_reason"
KEY = "_kanal_key"
_EARLIER = "_kanal_earlier_reason"
_DECIMAL = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_TRUE = ("true", "t", "1", "yes", "y")
# Text timestamps are tried against these in turn, so one column may mix them
# (polars would otherwise guess one format from the first value).
_DATETIME_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d",
)
_FALSE = ("false", "f", "0", "no", "n")


def _to_datetime(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        # ISO 8601 text, with or without an offset; naive values are UTC.
        text = col.str.strip_chars().str.replace(r"Z$", "+00:00")
        return pl.coalesce(
            [
                text.str.to_datetime(fmt, time_unit="us", time_zone="UTC", strict=False, ambiguous="earliest")
                for fmt in _DATETIME_FORMATS
            ]
        )
    if dtype.is_integer():
        return col.cast(pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if dtype == pl.Date:
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return col.dt.cast_time_unit("us").dt.replace_time_zone("UTC")
        return col.dt.cast_time_unit("us").dt.convert_time_zone("UTC")
    return col.cast(pl.Datetime("us", "UTC"), strict=False)


def _to_bool(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.Boolean:
        return col
    if dtype == pl.String:
        low = col.str.strip_chars().str.to_lowercase()
        return pl.when(low.is_in(_TRUE)).then(True).when(low.is_in(_FALSE)).then(False).otherwise(None)
    return col.cast(pl.Boolean, strict=False)


def _to_addresses(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        return col.str.json_decode(ADDRESSES_DTYPE)
    if isinstance(dtype, pl.Struct):
        names = {f.name for f in dtype.fields}
        parts = []
        for role in ("billing", "shipping"):
            if role in names:
                inner = col.struct.field(role)
                inner_dtype = next(f.dtype for f in dtype.fields if f.name == role)
                inner_names = {f.name for f in inner_dtype.fields} if isinstance(inner_dtype, pl.Struct) else set()
                fields = [
                    (inner.struct.field(n).cast(pl.String) if n in inner_names else pl.lit(None, pl.String)).alias(n)
                    for n in ADDRESS_FIELDS
                ]
                parts.append(pl.struct(fields).alias(role))
            else:
                parts.append(pl.lit(None, ADDRESSES_DTYPE.fields[0].dtype).alias(role))
        return pl.when(col.is_null()).then(pl.lit(None, ADDRESSES_DTYPE)).otherwise(pl.struct(parts))
    return pl.lit(None, ADDRESSES_DTYPE)


def _convert(f: Field, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(f.name)
    match f.kind:
        case Kind.DATETIME:
            return _to_datetime(col, dtype)
        case Kind.BOOL:
            return _to_bool(col, dtype)
        case Kind.FLOAT:
            return col.cast(pl.Float64, strict=False)
        case Kind.ADDRESSES:
            return _to_addresses(col, dtype)
        case _:
            text = col if dtype == pl.String else col.cast(pl.String, strict=False)
            return text.str.strip_chars() if f.kind in (Kind.DECIMAL, Kind.CURRENCY) else text


def _rules(f: Field) -> list[pl.Expr]:
    """Expressions yielding a reason string where the converted value breaks a rule."""
    col, raw = pl.col(f.name), pl.col(f"_raw_{f.name}")
    rules: list[pl.Expr] = []
    if f.required:
        empty = col.is_null()
        if f.dtype == pl.String:
            empty = empty | (col.str.strip_chars() == "")
        rules.append(pl.when(empty).then(pl.lit(f"{f.name}: required field is empty")))
    if f.kind in (Kind.DATETIME, Kind.BOOL, Kind.FLOAT, Kind.ADDRESSES):
        rules.append(
            pl.when(raw.is_not_null() & col.is_null()).then(
                pl.format(f"{f.name}: {{}} is not a valid {f.kind.value}", raw.cast(pl.String, strict=False))
            )
        )
    elif f.kind == Kind.DECIMAL:
        rules.append(
            pl.when(col.is_not_null() & ~col.str.contains(_DECIMAL)).then(
                pl.format(f"{f.name}: '{{}}' is not a decimal number", col)
            )
        )
    elif f.kind == Kind.CURRENCY:
        rules.append(
            pl.when(col.is_not_null() & ~col.is_in(CURRENCIES)).then(
                pl.format(f"{f.name}: '{{}}' is not an ISO 4217 currency code", col)
            )
        )
    elif f.kind == Kind.ENUM:
        rules.append(
            pl.when(col.is_not_null() & ~col.is_in(f.values)).then(
                pl.format(f"{f.name}: '{{}}' is not one of {', '.join(f.values)}", col)
            )
        )
    elif f.kind == Kind.JSON:
        rules.append(
            pl.when(col.is_not_null() & ~col.str.strip_chars().str.starts_with("{")).then(
                pl.lit(f"{f.name}: not a JSON object")
            )
        )
    if f.kind == Kind.ADDRESSES:
        for role in ("billing", "shipping"):
            country = col.struct.field(role).struct.field("country")
            rules.append(
                pl.when(country.is_not_null() & ~country.is_in(COUNTRIES)).then(
                    pl.format(f"{f.name}.{role}.country: '{{}}' is not an ISO 3166-1 alpha-2 code", country)
                )
            )
    return rules


def conform(frame: pl.DataFrame, entity: Entity) -> pl.DataFrame:
    """Return `frame` in the canonical schema with `_kanal_key` and `_kanal_reason`.

    Canonical fields missing from `frame` become NULL columns; columns that
    are not canonical are dropped. Valid rows have `_kanal_reason` NULL. A
    `_kanal_reason` already on `frame` (a mapping's failed cast or required
    field, whose value it left NULL) is kept, before the rules' own.
    """
    read, checked = _plan(entity, tuple(frame.schema.items()))
    # One plan, one collect: a small batch (a till's request) costs polars' fixed overhead once, not per step.
    return frame.lazy().select(read).with_columns(checked).select(*entity.field_names, KEY, REASON).collect()


@functools.lru_cache(maxsize=256)
def _plan(entity: Entity, schema: tuple[tuple[str, pl.DataType], ...]) -> tuple[list[pl.Expr], list[pl.Expr]]:
    """`conform`'s expressions for frames of `schema` (reading, then checking), built once per entity and shape.

    A live stream sends many small batches of one shape; building the
    expressions cost as much as evaluating them.
    """
    dtypes = dict(schema)
    present = {f.name: dtypes[f.name] for f in entity.fields if f.name in dtypes}
    converted = [
        (_convert(f, present[f.name]) if f.name in present else pl.lit(None, f.dtype)).cast(f.dtype).alias(f.name)
        for f in entity.fields
    ]
    raw = [pl.col(n).alias(f"_raw_{n}") for n in present]
    rules = [r for f in entity.fields if f.name in present or f.required for r in _rules(f)]
    reason = pl.coalesce(rules) if rules else pl.lit(None, pl.String)
    earlier = [pl.col(REASON).cast(pl.String).alias(_EARLIER)] if REASON in dtypes else []
    if earlier:
        joined = pl.concat_str([pl.col(_EARLIER), reason], separator="; ", ignore_nulls=True)
        reason = pl.when(pl.col(_EARLIER).is_null() & reason.is_null()).then(None).otherwise(joined)
    return [*converted, *raw, *earlier], [entity.key_expr(), reason.alias(REASON)]


def split(checked: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split a conformed frame into (valid rows without the reason, invalid rows)."""
    bad = checked.get_column(REASON).is_not_null()
    if not bad.any():
        return checked.drop(REASON), checked.clear()
    return checked.filter(~bad).drop(REASON), checked.filter(bad)
