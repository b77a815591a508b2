"""Reading a mapping file into a typed, checked `MappingSpec`.

Parsing collects every problem before raising, so one `ConfigError` lists all
of them, each as "<file>: fields.<target>.<key>: <what is wrong>". Nothing
here knows about the data: checks that need the input frame (missing columns,
dtypes) happen when the mapping is applied.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from kanal.core.errors import ConfigError
from kanal.core.places import Loc, Problems, unknown_key
from kanal.core.model import ADDRESS_FIELDS, ENTITIES, Entity, Kind
from kanal.mappings.expr import Expression, ExpressionError, parse_expression
from kanal.mappings.values import CASTS, TRANSFORMS

Scalar = str | int | float | bool | dt.date | dt.datetime | None
Direction = Literal["source", "sink"]

TOP_KEYS = ("entity", "direction", "keep_unmapped", "fields")
OPERATIONS = ("from", "const", "split", "concat", "expr")
FIELD_KEYS = (*OPERATIONS, "sep", "lookup", "default", "transform", "cast", "required")
SPLIT_KEYS = ("from", "sep", "index")
ROLES = ("billing", "shipping")
RESERVED_PREFIX = "_kanal_"


@dataclass(frozen=True)
class Column:
    """Read one input column (or a dotted path into a struct column)."""

    name: str

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.name,)


@dataclass(frozen=True)
class Const:
    """The same value on every row."""

    value: Scalar

    @property
    def reads(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class Split:
    """Split a column's text on `sep` and take part `index` (negative counts from the end)."""

    name: str
    sep: str
    index: int

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.name,)


@dataclass(frozen=True)
class Concat:
    """Join the text of several columns with `sep`, skipping null and blank parts."""

    names: tuple[str, ...]
    sep: str

    @property
    def reads(self) -> tuple[str, ...]:
        return self.names


Operation = Column | Const | Split | Concat | Expression


@dataclass(frozen=True)
class Lookup:
    """A value table; keys are compared as text, `dtype` is the type of the values."""

    table: dict[str, Scalar]
    dtype: pl.DataType


@dataclass(frozen=True)
class FieldSpec:
    """One target column and how to compute it.

    The steps run in this order: operation, transforms, lookup (its default
    replaces unmatched values), default (fills nulls), cast, required check.
    """

    target: str
    op: Operation
    transforms: tuple[str, ...] = ()
    lookup: Lookup | None = None
    default: Scalar = None
    cast: str | None = None
    required: bool = False

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.target.split("."))

    @property
    def origin(self) -> str:
        """Where the value comes from, for messages: "from ustid", "const 'EUR'"."""
        if isinstance(self.op, Const):
            return f"const {self.op.value!r}"
        if self.op.reads:
            return "from " + ", ".join(self.op.reads)
        return f"from expression {self.op.text!r}"


@dataclass(frozen=True)
class MappingSpec:
    source: str
    entity: Entity | None
    direction: Direction
    keep_unmapped: bool
    fields: tuple[FieldSpec, ...] = ()


def parse_spec(data: Any, source: str, lines: dict[Loc, int] | None = None) -> MappingSpec:
    """Check a loaded mapping document; raises one ConfigError listing every problem.

    With the `lines` of the document (`kanal.core.places.read_yaml`) each
    problem names its line: "<file>:<line>: fields.<target>.<key>: ...".
    """
    return _Parser(source, lines).parse(data)


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | dt.date)


def _dtype_of(values: list[Scalar]) -> pl.DataType | None:
    """One polars dtype for YAML scalars, or None when they mix types."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pl.String()
    if kinds == {int, float}:
        return pl.Float64()
    if len(kinds) > 1:
        return None
    return {
        str: pl.String(),
        bool: pl.Boolean(),
        int: pl.Int64(),
        float: pl.Float64(),
        dt.date: pl.Date(),
        dt.datetime: pl.Datetime("us"),
    }[kinds.pop()]


def _key_text(key: Scalar) -> str:
    """A lookup key as the text the input value is compared with."""
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


class _Parser:
    def __init__(self, source: str, lines: dict[Loc, int] | None) -> None:
        self.source = source
        self.found = Problems(source, lines)

    @property
    def problems(self) -> list[str]:
        return self.found.problems

    def problem(self, where: str, what: str) -> None:
        self.found.add_at(where, what)

    def parse(self, data: Any) -> MappingSpec:
        if not isinstance(data, dict):
            raise ConfigError(
                f"{self.source}: a mapping file must be a YAML mapping with keys {', '.join(TOP_KEYS)}, "
                f"got {_kind(data)}"
            )
        for key in data:
            if key not in TOP_KEYS:
                self.problem(str(key), unknown_key(key, TOP_KEYS))
        direction = self.direction(data.get("direction", "source"))
        entity = self.entity(data.get("entity"))
        keep = data.get("keep_unmapped", direction == "source")
        if not isinstance(keep, bool):
            self.problem("keep_unmapped", f"must be true or false, got {keep!r}")
        fields = self.fields(data.get("fields"), entity if direction == "source" else None)
        if self.problems:
            count = len(self.problems)
            raise ConfigError(f"{self.source}: invalid mapping ({count} problem{'s' * (count > 1)})", self.problems)
        return MappingSpec(self.source, entity, direction, keep, fields)

    def direction(self, value: Any) -> Direction:
        if value not in ("source", "sink"):
            self.problem("direction", f"must be 'source' or 'sink', got {value!r}")
            return "source"
        return value

    def entity(self, value: Any) -> Entity | None:
        if value is None:
            return None
        if not isinstance(value, str) or value not in ENTITIES:
            self.problem("entity", f"unknown entity {value!r} (known: {', '.join(ENTITIES)})")
            return None
        return ENTITIES[value]

    def fields(self, value: Any, entity: Entity | None) -> tuple[FieldSpec, ...]:
        if not isinstance(value, dict) or not value:
            self.problem("fields", f"must be a non-empty mapping of target: source, got {_kind(value)}")
            return ()
        parsed = []
        for target, spec in value.items():
            if not isinstance(target, str):
                self.problem(f"fields.{target}", f"a target name must be text, got {_kind(target)}")
                continue
            valid = self.target(target, entity)
            parsed_field = self.field(target, spec)
            if valid and parsed_field is not None:
                parsed.append(parsed_field)
        self.conflicts([f.target for f in parsed])
        return tuple(parsed)

    def target(self, target: str, entity: Entity | None) -> bool:
        where = f"fields.{target}"
        parts = target.split(".")
        if not all(parts):
            self.problem(where, "a target name has an empty part")
            return False
        if target.startswith(RESERVED_PREFIX):
            self.problem(where, f"names starting with {RESERVED_PREFIX!r} are reserved for Kanal")
            return False
        if entity is None:
            return True
        if parts[0] not in entity.field_names:
            valid = ", ".join(entity.field_names)
            self.problem(where, f"{parts[0]!r} is not a field of {entity.name} (valid: {valid})")
            return False
        if len(parts) == 1:
            return True
        if entity.field(parts[0]).kind != Kind.ADDRESSES:
            self.problem(where, f"{parts[0]!r} is not nested; only address fields take a dotted path")
            return False
        if len(parts) != 3 or parts[1] not in ROLES or parts[2] not in ADDRESS_FIELDS:
            self.problem(
                where,
                f"expected {parts[0]}.<{'|'.join(ROLES)}>.<{'|'.join(ADDRESS_FIELDS)}>",
            )
            return False
        return True

    def conflicts(self, targets: list[str]) -> None:
        """`addresses` and `addresses.billing.city` cannot both be targets."""
        names = set(targets)
        for target in targets:
            parts = target.split(".")
            for cut in range(1, len(parts)):
                prefix = ".".join(parts[:cut])
                if prefix in names:
                    self.problem(f"fields.{target}", f"conflicts with target {prefix!r}, which sets the whole value")

    def field(self, target: str, spec: Any) -> FieldSpec | None:
        where = f"fields.{target}"
        if isinstance(spec, str):
            return FieldSpec(target, Column(spec)) if self.name(where, spec) else None
        if not isinstance(spec, dict):
            ops = ", ".join(OPERATIONS)
            self.problem(where, f"expected a column name or a mapping with one of {ops}, got {_kind(spec)}")
            return None
        before = len(self.problems)
        for key in spec:
            if key not in FIELD_KEYS:
                self.problem(where, unknown_key(key, FIELD_KEYS))
        ops = [k for k in OPERATIONS if k in spec]
        if not ops:
            self.problem(where, f"no operation: give one of {', '.join(OPERATIONS)}")
            return None
        if len(ops) > 1:
            self.problem(where, f"two operations in one field ({' and '.join(ops)}); give only one")
            return None
        op = self.operation(where, ops[0], spec)
        transforms = self.transforms(where, spec.get("transform"))
        lookup = self.lookup(where, spec.get("lookup"), spec.get("default")) if "lookup" in spec else None
        default = spec.get("default")
        if not _is_scalar(default):
            self.problem(f"{where}.default", f"must be a single value, got {_kind(default)}")
        cast = spec.get("cast")
        if cast is not None and (not isinstance(cast, str) or cast not in CASTS):
            self.problem(f"{where}.cast", f"unknown cast {cast!r} (known: {', '.join(CASTS)})")
        required = spec.get("required", False)
        if not isinstance(required, bool):
            self.problem(f"{where}.required", f"must be true or false, got {required!r}")
        if op is None or len(self.problems) > before:
            return None
        return FieldSpec(target, op, transforms, lookup, default, cast, required)

    def operation(self, where: str, name: str, spec: dict[str, Any]) -> Operation | None:
        value = spec[name]
        if "sep" in spec and name != "concat":
            self.problem(f"{where}.sep", "sep belongs to concat (split takes its sep inside the split block)")
        match name:
            case "from":
                return Column(value) if self.name(f"{where}.from", value) else None
            case "const":
                if not _is_scalar(value):
                    self.problem(f"{where}.const", f"must be a single value, got {_kind(value)}")
                    return None
                return Const(value)
            case "split":
                return self.split(f"{where}.split", value)
            case "concat":
                sep = spec.get("sep", " ")
                if not isinstance(sep, str):
                    self.problem(f"{where}.sep", f"must be text, got {_kind(sep)}")
                if not isinstance(value, list) or not value:
                    self.problem(f"{where}.concat", f"needs a non-empty list of column names, got {value!r}")
                    return None
                names = [self.name(f"{where}.concat[{i}]", v) for i, v in enumerate(value)]
                return Concat(tuple(value), sep) if all(names) and isinstance(sep, str) else None
            case _:
                if not isinstance(value, str):
                    self.problem(f"{where}.expr", f"must be the expression as text, got {_kind(value)}")
                    return None
                try:
                    return parse_expression(value)
                except ExpressionError as exc:
                    self.problem(f"{where}.expr", str(exc))
                    return None

    def name(self, where: str, value: Any) -> bool:
        if isinstance(value, str) and value:
            return True
        got = repr(value) if isinstance(value, str) else _kind(value)
        self.problem(where, f"needs a column name, got {got}")
        return False

    def split(self, where: str, value: Any) -> Split | None:
        if not isinstance(value, dict):
            self.problem(where, f"needs a mapping with from, sep and index, got {_kind(value)}")
            return None
        ok = True
        for key in value:
            if key not in SPLIT_KEYS:
                self.problem(where, unknown_key(key, SPLIT_KEYS))
                ok = False
        ok = self.name(f"{where}.from", value.get("from")) and ok
        sep, index = value.get("sep", " "), value.get("index")
        if not isinstance(sep, str) or not sep:
            self.problem(f"{where}.sep", f"must be non-empty text, got {sep!r}")
            ok = False
        if type(index) is not int:
            self.problem(f"{where}.index", f"needs the number of the part to take (0 first, -1 last), got {index!r}")
            ok = False
        return Split(value["from"], sep, index) if ok else None

    def transforms(self, where: str, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list):
            self.problem(f"{where}.transform", f"must be a name or a list of names, got {_kind(value)}")
            return ()
        for name in names:
            if not isinstance(name, str) or name not in TRANSFORMS:
                self.problem(f"{where}.transform", f"unknown transform {name!r} (known: {', '.join(TRANSFORMS)})")
        return tuple(names)

    def lookup(self, where: str, value: Any, default: Any) -> Lookup | None:
        where = f"{where}.lookup"
        if not isinstance(value, dict) or not value:
            self.problem(where, f"needs a non-empty mapping of value: replacement, got {_kind(value)}")
            return None
        table: dict[str, Scalar] = {}
        for key, replacement in value.items():
            if key is None or not _is_scalar(key):
                self.problem(where, f"key {key!r} cannot be looked up; use default for nulls")
            elif not _is_scalar(replacement):
                self.problem(f"{where}.{key}", f"must be a single value, got {_kind(replacement)}")
            elif _key_text(key) in table:
                self.problem(where, f"key {key!r} appears twice")
            else:
                table[_key_text(key)] = replacement
        dtype = _dtype_of([*table.values(), default] if _is_scalar(default) else list(table.values()))
        if dtype is None:
            self.problem(where, "the values and the default mix types; use one type")
            return None
        return Lookup(table, dtype)
