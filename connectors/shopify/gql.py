"""A small GraphQL reader and executor for the Shopify simulator.

Enough of the GraphQL language for what Admin API clients send: operations
with variable definitions, fields with aliases and arguments (variables,
strings, numbers, enums, lists, objects), nested selections, inline
fragments (`... on Product`). Named fragments and directives are refused
with an error, as a server lacking them would.

Execution walks a selection over plain Python objects: a dict value is an
object, a list a list, a callable a field with arguments (called with them),
anything else a scalar. Only the selected fields reach the answer, as with a
real GraphQL server, so a client asking for too little gets too little.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(
    r'\s*(?:(?P<comment>#[^\n]*)|(?P<spread>\.\.\.)|(?P<punct>[{}()\[\]:!$=,@])|'
    r'(?P<string>"(?:[^"\\]|\\.)*")|(?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<name>[_A-Za-z][_0-9A-Za-z]*))'
)


_LITERALS = {"true": True, "false": False, "null": None}


class GraphQLError(Exception):
    """A request the server cannot run; `code` goes to `extensions.code`."""

    def __init__(self, message: str, code: str = "GRAPHQL_PARSE_FAILED") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Variable:
    name: str


@dataclass(frozen=True)
class Enum:
    name: str


@dataclass
class Field:
    name: str
    alias: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    selection: list[Field | Fragment] | None = None

    @property
    def key(self) -> str:
        return self.alias or self.name


@dataclass
class Fragment:
    """An inline fragment: its fields apply when the object's `__typename` matches."""

    on: str | None
    selection: list[Field | Fragment]


@dataclass
class Operation:
    kind: str
    """`query` or `mutation`."""
    selection: list[Field | Fragment]


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                if text[pos:].strip() == "":
                    break
                raise GraphQLError(f"syntax error at position {pos}: {text[pos:pos + 20]!r}")
            pos = match.end()
            kind = match.lastgroup
            if kind == "comment" or kind is None:
                continue
            self.tokens.append((kind, match.group(kind)))
        self.at = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise GraphQLError(f"expected {value or 'more'}, found {token[1] if token else 'end of document'}")
        self.at += 1
        return token

    def skip(self, value: str) -> bool:
        token = self.peek()
        if token is not None and token[1] == value:
            self.at += 1
            return True
        return False

    def operation(self) -> Operation:
        kind = "query"
        token = self.peek()
        if token is not None and token[0] == "name":
            kind = self.take()[1]
            if kind not in ("query", "mutation"):
                raise GraphQLError(f"unsupported operation {kind!r}")
            if self.peek() and self.peek()[0] == "name":  # type: ignore[index]
                self.take()
            if self.skip("("):
                while not self.skip(")"):
                    self.take("$")
                    self.take()
                    self.take(":")
                    self._type()
                    if self.skip("="):
                        self.value()
                    self.skip(",")
        selection = self.selection()
        if self.peek() is not None:
            raise GraphQLError("only one operation per document is supported")
        return Operation(kind, selection)

    def _type(self) -> None:
        if self.skip("["):
            self._type()
            self.take("]")
        else:
            self.take()
        self.skip("!")

    def selection(self) -> list[Field | Fragment]:
        self.take("{")
        items: list[Field | Fragment] = []
        while not self.skip("}"):
            if self.skip("..."):
                if not self.skip("on"):
                    raise GraphQLError("named fragments are not supported")
                on = self.take()[1]
                items.append(Fragment(on, self.selection()))
                continue
            if self.peek() and self.peek()[1] == "@":  # type: ignore[index]
                raise GraphQLError("directives are not supported")
            name = self.take()[1]
            alias = None
            if self.skip(":"):
                alias, name = name, self.take()[1]
            arguments: dict[str, Any] = {}
            if self.skip("("):
                while not self.skip(")"):
                    arg = self.take()[1]
                    self.take(":")
                    arguments[arg] = self.value()
                    self.skip(",")
            sub = self.selection() if self.peek() and self.peek()[1] == "{" else None  # type: ignore[index]
            items.append(Field(name, alias, arguments, sub))
            self.skip(",")
        return items

    def value(self) -> Any:
        kind, text = self.take()
        if text == "$":
            return Variable(self.take()[1])
        if kind == "string":
            return _unquote(text)
        if kind == "number":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if text == "[":
            items = []
            while not self.skip("]"):
                items.append(self.value())
                self.skip(",")
            return items
        if text == "{":
            obj = {}
            while not self.skip("}"):
                key = self.take()[1]
                self.take(":")
                obj[key] = self.value()
                self.skip(",")
            return obj
        if kind == "name":
            return _LITERALS[text] if text in _LITERALS else Enum(text)
        raise GraphQLError(f"unexpected {text!r}")


def _unquote(text: str) -> str:
    return json.loads(text)


def parse(text: str) -> Operation:
    """The one operation of a document; GraphQLError says what is wrong."""
    return _Parser(text).operation()


def resolve(value: Any, variables: Mapping[str, Any]) -> Any:
    """An argument's value with variables filled in and enums as their names."""
    if isinstance(value, Variable):
        return variables.get(value.name)
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, list):
        return [resolve(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, variables) for k, v in value.items()}
    return value


def execute(selection: list[Field | Fragment], obj: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, Any]:
    """The selected fields of `obj` (see the module docstring)."""
    out: dict[str, Any] = {}
    for item in selection:
        if isinstance(item, Fragment):
            if item.on is None or obj.get("__typename") in (None, item.on):
                out.update(execute(item.selection, obj, variables))
            continue
        if item.name == "__typename":
            out[item.key] = obj.get("__typename")
            continue
        if item.name not in obj:
            typename = obj.get("__typename", "object")
            raise GraphQLError(f"Field '{item.name}' doesn't exist on type '{typename}'", "undefinedField")
        value = obj[item.name]
        if callable(value):
            value = value({k: resolve(v, variables) for k, v in item.arguments.items()})
        out[item.key] = _shape(value, item.selection, variables)
    return out


def _shape(value: Any, selection: list[Field | Fragment] | None, variables: Mapping[str, Any]) -> Any:
    if selection is None or value is None:
        return value
    if isinstance(value, list):
        return [_shape(v, selection, variables) for v in value]
    return execute(selection, value, variables)


MUTATION_COST = 10
"""Points one mutation field costs (Shopify's documented figure)."""


def requested_cost(operation: Operation, variables: Mapping[str, Any]) -> int:
    """The cost Shopify's model gives a document before running it.

    Scalars cost 0, objects 1, a connection 2 plus `first` times the cost of
    one node, a mutation 10 (whatever its answer selects).
    """
    if operation.kind == "mutation":
        return MUTATION_COST * sum(isinstance(f, Field) for f in operation.selection)
    return max(1, _cost(operation.selection, variables))


def actual_cost(operation: Operation, variables: Mapping[str, Any], data: Mapping[str, Any]) -> int:
    """The cost of what a query returned: connections count the nodes they hold, not `first`."""
    if operation.kind == "mutation":
        return requested_cost(operation, variables)
    return max(1, _spent(operation.selection, data))


def _spent(selection: list[Field | Fragment], data: Any) -> int:
    if not isinstance(data, Mapping):
        return 0
    total = 0
    for item in selection:
        if isinstance(item, Fragment):
            total += _spent(item.selection, data)
            continue
        value = data.get(item.key)
        if item.selection is None or value is None:
            continue
        if "first" in item.arguments and isinstance(value, Mapping):
            nodes = value.get("nodes") or [e.get("node") for e in value.get("edges") or []]
            sub = next((f for f in item.selection if isinstance(f, Field) and f.name in ("nodes", "edges")), None)
            inner = (sub.selection or []) if sub is not None else []
            if sub is not None and sub.name == "edges":
                inner = next((f.selection or [] for f in inner if isinstance(f, Field) and f.name == "node"), [])
            total += 2 + sum(1 + _spent(inner, n) for n in nodes)
        elif isinstance(value, list):
            total += sum(1 + _spent(item.selection, v) for v in value)
        else:
            total += 1 + _spent(item.selection, value)
    return total


def _cost(selection: list[Field | Fragment], variables: Mapping[str, Any]) -> int:
    total = 0
    for item in selection:
        if isinstance(item, Fragment):
            total += _cost(item.selection, variables)
            continue
        if item.selection is None:
            continue
        first = resolve(item.arguments.get("first"), variables)
        if isinstance(first, int):
            node = next((f for f in item.selection if isinstance(f, Field) and f.name in ("nodes", "edges")), None)
            per_node = 1 + _cost(node.selection or [], variables) if node is not None else 1
            total += 2 + first * per_node
        elif item.name in ("nodes", "edges", "pageInfo", "node"):
            total += _cost(item.selection, variables)
        else:
            total += 1 + _cost(item.selection, variables)
    return total

