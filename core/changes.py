"""Change frames on their way to the canonical model.

A change frame is a source frame plus the engine columns `OP` and `VERSION`
(see `core.connector`). Mappings and `conform` work on source and canonical
columns only, so the engine columns are set aside and re-attached by row
position: both are row-preserving, which `_reattach` checks rather than
assumes.

Invalid rows carry the source row they came from, as it was read (before
the mapping), in the struct column `SOURCE`: a dead letter keeps it, so the
record can be found and fixed where it came from even when mapping or
conversion left nothing of it (every field NULL under a wrong delimiter).

Only upserts are validated. Delete rows carry only what makes the key; they
skip validation, which would reject their missing fields, and need only a
non-empty key. An old image (`BEFORE`) is keyed the same way and becomes a
delete of its key when the row after it (its new image) has another key: the
key changed, and the old one must go. Otherwise it is dropped, so an old image
on every update (REPLICA IDENTITY FULL) costs no message. A truncate row has
no fields at all; it keeps its version and gets `TRUNCATE_KEY`.
"""

from __future__ import annotations

import polars as pl

from kanal.core.connector import BEFORE, DELETE, OP, TRUNCATE, UPSERT, VERSION, Transform
from kanal.core.model import Entity
from kanal.core.validate import KEY, conform, split

ENGINE_COLUMNS = (OP, VERSION)
SOURCE = "_kanal_source"
"""Struct column of invalid rows: the source row as read, before the mapping."""
TRUNCATE_KEY = "\x00truncate"
"""`_kanal_key` of a truncate row: no key string of a record can be it (text values hold no NUL)."""
_ROW = "_kanal_row"
_OPS = (UPSERT, DELETE, BEFORE, TRUNCATE)


def _reattach(out: pl.DataFrame, extras: pl.DataFrame, what: str) -> pl.DataFrame:
    if not extras.width:
        return out
    if out.height != extras.height:
        raise ValueError(f"{what} changed the number of rows ({extras.height} -> {out.height}); it must map row by row")
    return out.hstack(extras)


def identity(frame: pl.DataFrame) -> pl.DataFrame:
    """The transform of an entity without a mapping file."""
    return frame


def keeping_engine_columns(transform: Transform, frame: pl.DataFrame, what: str = "the mapping") -> pl.DataFrame:
    """Apply `transform`, carrying `_kanal_key`, `OP` and `VERSION` across it."""
    carried = [c for c in (KEY, *ENGINE_COLUMNS) if c in frame.columns]
    if not carried or transform is identity:
        return transform(frame)
    out = transform(frame.drop(carried))
    return _reattach(out.drop([c for c in carried if c in out.columns]), frame.select(carried), what)


def conform_changes(frame: pl.DataFrame, entity: Entity, transform: Transform) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Map and validate a source frame (snapshot or changes) into (valid, invalid) canonical rows.

    Valid rows keep `OP`/`VERSION` when the input had them, in input order,
    so per-key source order survives. Their ops are `upsert`, `delete` and
    `truncate` only (see the module docstring for `before`). Invalid rows
    also hold their source row in `SOURCE`.
    """
    carried = [c for c in ENGINE_COLUMNS if c in frame.columns]
    op = frame.get_column(OP) if OP in frame.columns else None
    indexed = frame.with_row_index(_ROW)
    if op is None or (op == UPSERT).all():
        valid, invalid = split(_conformed(indexed, entity, transform, [_ROW, *carried]))
        return valid.drop(_ROW), _with_source(invalid, frame)
    unknown = op.filter(~op.is_in(_OPS)).unique()
    if not unknown.is_empty():
        raise ValueError(f"changes of {entity.name} carry unknown operation(s) {unknown.to_list()}; expected {', '.join(_OPS)}")
    kind = pl.col(OP)
    upserts = indexed.filter(kind == UPSERT)
    checked = _conformed(upserts.drop(_ROW), entity, transform, carried).hstack(upserts.select(_ROW))
    keyed = _key_rows(indexed.filter(kind.is_in((DELETE, BEFORE))), entity, transform)
    truncates = indexed.filter(kind == TRUNCATE).select(_ROW, OP, VERSION, pl.lit(TRUNCATE_KEY).alias(KEY))
    merged = pl.concat([checked, keyed, truncates], how="diagonal_relaxed").sort(_ROW)
    valid, invalid = split(_old_keys(merged))
    return valid.drop(_ROW), _with_source(invalid, frame)


def _with_source(invalid: pl.DataFrame, frame: pl.DataFrame) -> pl.DataFrame:
    """`invalid` (holding `_ROW`, its row in `frame`) with each row's source row as the struct `SOURCE`."""
    columns = [c for c in frame.columns if c not in ENGINE_COLUMNS]
    rows = invalid.get_column(_ROW)
    invalid = invalid.drop(_ROW)
    if not columns:
        return invalid
    return invalid.with_columns(frame.select(pl.struct(columns).alias(SOURCE)).get_column(SOURCE).gather(rows))


def _conformed(frame: pl.DataFrame, entity: Entity, transform: Transform, carried: list[str]) -> pl.DataFrame:
    checked = conform(transform(frame.drop(carried)), entity)
    return _reattach(checked, frame.select(carried), "the mapping")


def _key_rows(rows: pl.DataFrame, entity: Entity, transform: Transform) -> pl.DataFrame:
    """Key fields, `_kanal_key`, `OP`, `VERSION` of delete and old-image rows; an empty key is an error."""
    extras = rows.select(_ROW, OP, VERSION)
    mapped = _reattach(transform(rows.drop(_ROW, OP, VERSION)), extras, "the mapping")
    present = [k for k in entity.key if k in mapped.columns]
    keyed = conform(mapped.select(present), entity).select([*entity.key, KEY]).hstack(extras)
    empty = keyed.filter(pl.col(KEY).str.replace_all(r"\|", "") == "")
    if not empty.is_empty():
        raise ValueError(
            f"{empty.height} delete(s) or key change(s) of {entity.name} carry no key fields ({', '.join(entity.key)}); "
            "the source must send the old key (PostgreSQL: ALTER TABLE ... REPLICA IDENTITY FULL)"
        )
    return keyed


def _old_keys(merged: pl.DataFrame) -> pl.DataFrame:
    """Old images become deletes where the next row (the new image) has another key; the rest go."""
    before = pl.col(OP) == BEFORE
    moved = pl.col(KEY).ne_missing(pl.col(KEY).shift(-1))
    return merged.filter(~before | moved).with_columns(
        pl.when(before).then(pl.lit(DELETE)).otherwise(pl.col(OP)).alias(OP)
    )
