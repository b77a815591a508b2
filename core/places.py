"""Places in the YAML files users write (job files, mapping files), and how problems name them.

Every problem found in a file is worded the same way, `file:line: path: what`,
so that an editor can jump to it: `job.yaml:14: sinks[0].entities.prices:
...`. `read_yaml` parses a document once and keeps the line of every key;
`Problems` collects the problems of one file so that all of them are
reported at once. `unknown_key` words a typo with the closest known key.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from kanal.core.errors import ConfigError, InvalidKey, is_secret_name

Loc = tuple[str | int, ...]
"""A path inside a document: keys and list positions, `("sinks", 0, "config")`."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys instead of keeping the last one silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, list | dict):
                continue  # unhashable; the base class reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    """The document and the 1-based line of each path in it; syntax errors are a ConfigError at their place."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return data, (_lines(node) if node is not None else {})


def _lines(node: yaml.Node, loc: Loc = ()) -> dict[Loc, int]:
    found = {loc: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = (*loc, key.value)
            found.update(_lines(value, path))
            found[path] = key.start_mark.line + 1  # a key's problem is on the key's line
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            found.update(_lines(value, (*loc, i)))
    return found


def dotted(loc: Iterable[str | int]) -> str:
    """`("sinks", 0, "config", "dsn")` as `sinks[0].config.dsn`; the empty path is `(top)`."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).removeprefix(".")
    return text or "(top)"


class Problems:
    """The problems of one file, each worded `file:line: path: what`.

    A path that is not in the file (a required key that is missing, a key
    a default filled in) is placed on the line of its closest parent.
    """

    def __init__(self, source: str, lines: dict[Loc, int] | None = None) -> None:
        self.source = source
        self._found: list[tuple[float, str]] = []
        self.lines = lines or {}
        self._by_text = {dotted(loc): line for loc, line in self.lines.items()}

    def line(self, loc: Loc) -> int | None:
        while loc and loc not in self.lines:
            loc = loc[:-1]
        return self.lines.get(loc)

    def _line_of(self, where: str) -> int | None:
        """The line of a path given as text (`fields.addresses.billing.city.from`), by its longest known prefix."""
        while where:
            if where in self._by_text:
                return self._by_text[where]
            cut = max(where.rfind("."), where.rfind("["))
            where = where[:cut] if cut > 0 else ""
        return self.lines.get(())

    def place(self, line: int | None) -> str:
        return f"{self.source}:{line}" if line else self.source

    @property
    def problems(self) -> list[str]:
        """Every problem, in the order of the file's lines (problems of other files last)."""
        return [text for _, text in sorted(self._found, key=lambda found: found[0])]

    def locate(self, loc: Loc) -> str:
        """`job.yaml:9: source.entities.products`."""
        return f"{self.place(self.line(loc))}: {dotted(loc)}"

    def add(self, loc: Loc, what: str) -> None:
        """A problem at `loc`."""
        self._found.append((self.line(loc) or 0, f"{self.locate(loc)}: {what}"))

    def add_at(self, where: str, what: str) -> None:
        """A problem at a path written as text, for parsers that build such paths themselves."""
        line = self._line_of(where)
        self._found.append((line or 0, f"{self.place(line)}: {where}: {what}"))

    def extend(self, problems: Iterable[str]) -> None:
        """Problems already worded (another file's, found while checking this one)."""
        self._found.extend((float("inf"), text) for text in problems)

    def __bool__(self) -> bool:
        return bool(self._found)

    def pydantic(self, base: Loc, model: type[BaseModel], data: Any, exc: ValidationError) -> None:
        """The errors of validating `data` (found at `base`) against `model`, one problem per place, worded for people.

        Pydantic names the members of a union in its paths (`delta.literal['cdc','files']`,
        `delta.CursorDelta.cursor`) and reports each member that failed. Here a
        member's name never shows: when one member took the value's shape and failed
        inside it, only its problems are reported (`delta.cursor: required key is
        missing`); when none did, one problem lists what the place accepts.
        """
        unions: dict[Loc, list[tuple[Loc, ErrorDetails]]] = {}
        for err in exc.errors():
            loc, union_at = _real_loc(err, data)
            error = (err.get("ctx") or {}).get("error")
            if isinstance(error, InvalidKey):
                loc = (*loc, error.key)
            if union_at is None:
                self.add((*base, *loc), _wording(err, model, loc))
            else:
                unions.setdefault(loc[:union_at], []).append((loc, err))
        for at, errs in unions.items():
            inside = [(loc, err) for loc, err in errs if len(loc) > len(at)]
            for loc, err in inside:
                self.add((*base, *loc), _wording(err, model, err["loc"]))
            if not inside:
                accepted = " or ".join(dict.fromkeys(_accepts(err) for _, err in errs))
                value = errs[0][1]["input"]
                secret = is_secret_name(next((str(p) for p in reversed(at) if isinstance(p, str)), ""))
                got = f", got {value!r}" if _is_scalar(value) and not secret else f", got {_kind(value)}"
                self.add((*base, *at), f"must be {accepted}{got}")


def did_you_mean(word: object, known: Iterable[str]) -> str:
    """`; did you mean 'cursor'?` when a known word is close to `word`, else nothing."""
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown_key(key: object, known: Iterable[str]) -> str:
    """`unknown key 'pasword' (known: ...); did you mean 'password'?`"""
    known = list(known)
    return f"unknown key {key!r} (known: {', '.join(known)}){did_you_mean(key, known)}"


# pydantic's error types whose input is an ordinary setting (never a secret), worth repeating back
_SHOW_INPUT = re.compile(r"_parsing$|^(literal_error|enum|string_pattern_mismatch|(greater|less)_than(_equal)?)$")


def _real_loc(err: ErrorDetails, data: Any) -> tuple[Loc, int | None]:
    """The path of an error in the user's document, without pydantic's union member names.

    A part of pydantic's path that is not in the document is a member name,
    except the last part of a `missing` error (the key the user left out).
    Also returns where the first member name stood (None: not in a union).
    """
    loc: list[str | int] = []
    union_at: int | None = None
    parts = err["loc"]
    for i, part in enumerate(parts):
        present = (isinstance(data, dict) and part in data) or (
            isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        )
        if present:
            data = data[part]  # type: ignore[index]
            loc.append(part)
        elif i == len(parts) - 1 and err["type"] == "missing":
            loc.append(part)
        elif union_at is None:
            union_at = len(loc)
    return tuple(loc), union_at


def _wording(err: ErrorDetails, model: type[BaseModel], model_loc: Loc) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _keys_at(model, model_loc[:-1])
        key = model_loc[-1]
        return unknown_key(key, known) if known else f"unknown key {key!r}"
    if kind == "missing":
        return "required key is missing"
    text = _human(err["msg"])
    key = next((p for p in reversed(model_loc) if isinstance(p, str)), "")
    if _SHOW_INPUT.search(kind) and _is_scalar(err["input"]) and not is_secret_name(key):
        text += f", got {err['input']!r}"
    return text


def _human(msg: str) -> str:
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    msg = re.sub(r"a valid dictionary( or instance of \w+)?", "a mapping (key: value)", msg)
    return re.sub(r"^(Input|String|Value|List|Dictionary) should", "must", msg)


def _accepts(err: ErrorDetails) -> str:
    """What one member of a union accepts: `'cdc' or 'files'`, `a mapping (key: value)`."""
    return _human(err["msg"]).removeprefix("must be ").removeprefix("must ")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


def _keys_at(model: Any, loc: Loc) -> list[str] | None:
    """The keys the model accepts at `loc` (pydantic's path, member names included), if it is a model there."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return None
    current = _without_none(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return None


def _step(tp: Any, part: str | int) -> Any:
    tp = _without_none(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        fields = {f.alias or name: f.annotation for name, f in tp.model_fields.items()}
        return fields.get(str(part))
    origin, args = get_origin(tp), get_args(tp)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin in (list, tuple) and args:
        return args[0]
    if origin in (Union, types.UnionType):
        return next((a for a in args if getattr(a, "__name__", None) == part), None)
    return None


def _without_none(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp
