"""Change frames on their way to the canonical model.

A change frame is a source frame plus the engine columns `OP` and `VERSION`
(see `core.connector`). Mappings and `conform` work on source and canonical
columns only, so the engine columns are set aside and re-attached by row
position: both are row-preserving, which `_reattach` checks rather than
assumes. Delete rows carry only what makes the key; they skip validation,
which would reject their missing fields, and need only a non-empty key.
"""

from __future__ import annotations

import polars as pl

from kanal.core.connector import DELETE, OP, VERSION, Transform
from kanal.core.model import Entity
from kanal.core.validate import KEY, conform, split

ENGINE_COLUMNS = (OP, VERSION)


def _reattach(out: pl.DataFrame, extras: pl.DataFrame, what: str) -> pl.DataFrame:
    if not extras.width:
        return out
    if out.height != extras.height:
        raise ValueError(f"{what} changed the number of rows ({extras.height} -> {out.height}); it must map row by row")
    return out.hstack(extras)


def keeping_engine_columns(transform: Transform, frame: pl.DataFrame, what: str = "the mapping") -> pl.DataFrame:
    """Apply `transform`, carrying `_kanal_key`, `OP` and `VERSION` across it."""
    carried = [c for c in (KEY, *ENGINE_COLUMNS) if c in frame.columns]
    if not carried:
        return transform(frame)
    out = transform(frame.drop(carried))
    return _reattach(out.drop([c for c in carried if c in out.columns]), frame.select(carried), what)


def conform_changes(frame: pl.DataFrame, entity: Entity, transform: Transform) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Map and validate a source frame (snapshot or changes) into (valid, invalid) canonical rows.

    Valid rows keep `OP`/`VERSION` when the input had them, in input order,
    so per-key source order survives.
    """
    carried = [c for c in ENGINE_COLUMNS if c in frame.columns]
    is_delete = frame.get_column(OP) == DELETE if OP in frame.columns else None
    if is_delete is None or not is_delete.any():
        return split(_conformed(frame, entity, transform, carried))
    indexed = frame.with_row_index("_kanal_row")
    upserts = indexed.filter(~is_delete)
    deletes = indexed.filter(is_delete)
    valid, invalid = split(_conformed(upserts.drop("_kanal_row"), entity, transform, carried).hstack(upserts.select("_kanal_row")))
    keys = _delete_keys(deletes, entity, transform)
    merged = pl.concat([valid, keys], how="diagonal_relaxed").sort("_kanal_row").drop("_kanal_row")
    return merged, invalid.drop("_kanal_row")


def _conformed(frame: pl.DataFrame, entity: Entity, transform: Transform, carried: list[str]) -> pl.DataFrame:
    checked = conform(transform(frame.drop(carried)), entity)
    return _reattach(checked, frame.select(carried), "the mapping")


def _delete_keys(deletes: pl.DataFrame, entity: Entity, transform: Transform) -> pl.DataFrame:
    """Key fields, `_kanal_key`, `OP`, `VERSION` of delete rows; an empty key is an error row."""
    extras = deletes.select("_kanal_row", OP, VERSION)
    mapped = _reattach(transform(deletes.drop("_kanal_row", OP, VERSION)), extras, "the mapping")
    present = [k for k in entity.key if k in mapped.columns]
    keyed = conform(mapped.select(present), entity).select([*entity.key, KEY]).hstack(extras)
    empty = keyed.filter(pl.col(KEY).str.replace_all(r"\|", "") == "")
    if not empty.is_empty():
        raise ValueError(
            f"{empty.height} delete(s) of {entity.name} carry no key fields ({', '.join(entity.key)}); "
            "the source must send the old key (PostgreSQL: ALTER TABLE ... REPLICA IDENTITY FULL)"
        )
    return keyed
