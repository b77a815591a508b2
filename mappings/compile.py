"""A `MappingSpec` compiled, for one input schema, into a single polars `select`.

Every field becomes one expression; dotted targets are assembled into struct
columns; the checks that may reject a row (`required`, failed casts) are
joined into `_kanal_reason`. Nothing runs per row in Python, and the whole
mapping is one lazy `select`, so polars can share common sub-expressions and
run the fields in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from kanal.core.errors import ConfigError
from kanal.core.validate import REASON
from kanal.mappings.spec import RESERVED_PREFIX, Column, Concat, Const, FieldSpec, MappingSpec, Split
from kanal.mappings.values import CASTS, TRANSFORMS, Scope, TypeProblem, is_blank, join_texts, text

Tree = dict[str, "Tree | pl.Expr"]


@dataclass(frozen=True)
class _Compiled:
    value: pl.Expr
    checks: list[pl.Expr]


def compile_select(spec: MappingSpec, schema: pl.Schema) -> list[pl.Expr]:
    """The expressions of one `select` that applies `spec` to frames with `schema`.

    Raises ConfigError listing every column the mapping reads that the input
    lacks, or every field whose operation does not fit the input's dtypes.
    """
    scope = Scope(schema)
    read = _read_columns(spec, scope)
    compiled: dict[str, _Compiled] = {}
    problems: list[str] = []
    for f in spec.fields:
        try:
            compiled[f.target] = _field(f, spec.source, scope)
        except TypeProblem as exc:
            problems.append(f"{spec.source}: fields.{f.target}: {exc}")
    if problems:
        raise ConfigError(f"{spec.source}: the mapping does not fit the input's column types", problems)

    outputs = _outputs(spec, {target: c.value for target, c in compiled.items()})
    checks = [check for c in compiled.values() for check in c.checks]
    written = {f.path[0] for f in spec.fields}
    for name in scope.columns:
        if name in written or (name == REASON and checks):
            continue
        if name.startswith(RESERVED_PREFIX) or (spec.keep_unmapped and name not in read):
            outputs.append(pl.col(name))
    if checks:
        outputs.append(_reason(checks, REASON in scope.columns))
    return outputs


def _read_columns(spec: MappingSpec, scope: Scope) -> set[str]:
    """The top-level input columns the mapping reads; all missing ones are reported at once."""
    read: set[str] = set()
    problems: list[str] = []
    for f in spec.fields:
        for name in dict.fromkeys(f.op.reads):
            found = scope.locate(name)
            if found is None:
                problems.append(f"{spec.source}: fields.{f.target}: column {name!r} is not in the input")
            else:
                read.add(found[0])
    if problems:
        raise ConfigError(
            f"{spec.source}: the input lacks columns the mapping reads "
            f"(available: {', '.join(scope.columns) or 'none'})",
            problems,
        )
    return read


def _operation(f: FieldSpec, scope: Scope) -> pl.Expr:
    op = f.op
    match op:
        case Column(name=name):
            return scope.column(name)
        case Const(value=value):
            return pl.lit(value, pl.String) if value is None else pl.lit(value)
        case Split(name=name, sep=sep, index=index):
            value = scope.column(name)
            return text(value, scope.dtype(value)).str.split(sep).list.get(index, null_on_oob=True)
        case Concat(names=names, sep=sep):
            parts = [scope.column(name) for name in names]
            return join_texts([text(p, scope.dtype(p)) for p in parts], sep)
        case _:
            return op.build(scope)


def _field(f: FieldSpec, source: str, scope: Scope) -> _Compiled:
    """One field's value and the checks that reject its row (text when failing, else null)."""
    value = _operation(f, scope)
    if f.transforms:
        value = text(value, scope.dtype(value))
        for name in f.transforms:
            value = TRANSFORMS[name](value)
    if f.lookup is not None:
        default = pl.lit(f.default, f.lookup.dtype)
        value = text(value, scope.dtype(value)).replace_strict(
            f.lookup.table, default=default, return_dtype=f.lookup.dtype
        )
    elif f.default is not None:
        value = pl.coalesce(value, pl.lit(f.default))
    dtype = scope.dtype(value)
    checks = []
    if f.cast is not None:
        cast = CASTS[f.cast](value, dtype)
        checks.append(
            pl.when(~is_blank(value, dtype) & cast.is_null()).then(
                pl.concat_str(
                    pl.lit(f"mapping {source}: {f.target}: '"),
                    text(value, dtype),
                    pl.lit(f"' is not a valid {f.cast} ({f.origin})"),
                )
            )
        )
        value, dtype = cast, scope.dtype(cast)
    if f.required:
        message = f"mapping {source}: {f.target} is required ({f.origin})"
        checks.append(pl.when(is_blank(value, dtype)).then(pl.lit(message)))
    return _Compiled(value, checks)


def _outputs(spec: MappingSpec, values: dict[str, pl.Expr]) -> list[pl.Expr]:
    """Plain targets as columns; dotted targets grouped into one struct per top name, in file order."""
    order: dict[str, None] = {}
    plain: dict[str, pl.Expr] = {}
    trees: dict[str, Tree] = {}
    for target, value in values.items():
        top, *rest = target.split(".")
        order[top] = None
        if not rest:
            plain[top] = value
            continue
        node = trees.setdefault(top, {})
        for part in rest[:-1]:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[rest[-1]] = value
    return [
        (plain[top] if top in plain else _struct(trees[top], _template(spec, top))).alias(top) for top in order
    ]


def _template(spec: MappingSpec, top: str) -> pl.Struct | None:
    """The canonical struct dtype a source mapping must produce for `top`, if any."""
    if spec.direction != "source" or spec.entity is None:
        return None
    dtype = spec.entity.field(top).dtype
    return dtype if isinstance(dtype, pl.Struct) else None


def _struct(tree: Tree, dtype: pl.Struct | None) -> pl.Expr:
    """A struct from `tree`; with a dtype, missing parts are typed nulls and leaves are cast."""
    if dtype is None:
        return pl.struct([(_struct(v, None) if isinstance(v, dict) else v).alias(k) for k, v in tree.items()])
    parts = []
    for fld in dtype.fields:
        sub = tree.get(fld.name)
        if sub is None:
            parts.append(pl.lit(None, fld.dtype).alias(fld.name))
        elif isinstance(sub, dict):
            parts.append(_struct(sub, fld.dtype).alias(fld.name))  # type: ignore[arg-type]
        else:
            parts.append(sub.cast(fld.dtype, strict=False).alias(fld.name))
    return pl.struct(parts)


def _reason(checks: list[pl.Expr], existing: bool) -> pl.Expr:
    """All failing checks of a row joined with "; "; an earlier reason on the input wins."""
    joined = pl.concat_str(checks, separator="; ", ignore_nulls=True)
    reason = pl.when(joined != "").then(joined)
    if existing:
        reason = pl.coalesce(pl.col(REASON), reason)
    return reason.alias(REASON)
