"""The small expression language of mapping fields, compiled to polars.

The text is parsed with the stdlib `ast` module in eval mode and every node is
checked against a whitelist; Python never evaluates any of it. Parsing happens
when the mapping is loaded, so mistakes are reported with the file. Building
the polars expression waits for the input's schema (`Scope`), because
truthiness, type checks and the reading of dotted paths depend on dtypes.

Semantics (see the package docstring for the user-facing summary):

* names are columns; `col("odd name")` for any name, `a.b.c` for a struct path;
* literals: strings, integers, floats, True, False, None;
* `+ - * /` on numbers, `+` also joins two texts; null in, null out;
* comparisons `== != < <= > >=` (chains allowed), `x is None`, `x is not None`;
* `and`, `or`, `not` and the test of `a if cond else b` use truthiness:
  null, false, 0 and blank text are false. `and`/`or`/`not` give true/false
  (never null, never an operand: use coalesce for fallbacks);
* functions in `_FUNCTIONS`, plus `col`, `round` and `concat` built in `_call`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from kanal.core.places import did_you_mean
from kanal.mappings.values import Scope, TypeProblem, join_texts, text, to_float, to_int, truthy

Build = Callable[[Scope], pl.Expr]


class ExpressionError(ValueError):
    """The expression uses syntax, an operator or a function outside the whitelist."""


@dataclass(frozen=True)
class Expression:
    """A parsed expression: its text, the columns it reads, and how to build it."""

    text: str
    reads: tuple[str, ...]
    _build: Build

    def build(self, scope: Scope) -> pl.Expr:
        return self._build(scope)


def parse_expression(source: str) -> Expression:
    """Parse and whitelist `source`; raises ExpressionError naming the offending token."""
    if not source.strip():
        raise ExpressionError("the expression is empty")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"{source.strip()!r}: {exc.msg} (at column {exc.offset or 1})") from None
    except (ValueError, RecursionError, MemoryError):
        raise ExpressionError("the expression cannot be parsed (too deeply nested or contains NUL)") from None
    compiler = _Compiler(source.strip())
    try:
        build = compiler.node(tree.body)
    except RecursionError:
        raise ExpressionError("the expression is too deeply nested") from None
    return Expression(source.strip(), tuple(dict.fromkeys(compiler.columns)), build)


def _number(scope: Scope, expr: pl.Expr, where: str) -> pl.Expr:
    dtype = scope.dtype(expr)
    if not (dtype.is_numeric() or dtype == pl.Null):
        raise TypeProblem(f"{where!r} needs a number, got {dtype}")
    return expr


def _text(scope: Scope, expr: pl.Expr) -> pl.Expr:
    return text(expr, scope.dtype(expr))


def _truth(scope: Scope, expr: pl.Expr) -> pl.Expr:
    return truthy(expr, scope.dtype(expr))


def _substr(scope: Scope, where: str, value: pl.Expr, start: pl.Expr, length: pl.Expr | None) -> pl.Expr:
    """Python-like: `start` counts from 0, negative from the end; no length means to the end."""
    if length is not None:
        length = _number(scope, length, where)
    return _text(scope, value).str.slice(_number(scope, start, where), length)


# name -> (min args, max args, builder(scope, where, *args))
_FUNCTIONS: dict[str, tuple[int, int | None, Callable[..., pl.Expr]]] = {
    "lower": (1, 1, lambda s, w, x: _text(s, x).str.to_lowercase()),
    "upper": (1, 1, lambda s, w, x: _text(s, x).str.to_uppercase()),
    "trim": (1, 1, lambda s, w, x: _text(s, x).str.strip_chars()),
    "coalesce": (1, None, lambda s, w, *xs: pl.coalesce(xs)),
    "substr": (2, 3, lambda s, w, x, start, length=None: _substr(s, w, x, start, length)),
    "replace": (3, 3, lambda s, w, x, old, new: _text(s, x).str.replace_all(
        _text(s, old), _text(s, new), literal=True)),
    "abs": (1, 1, lambda s, w, x: _number(s, x, w).abs()),
    "len": (1, 1, lambda s, w, x: _text(s, x).str.len_chars().cast(pl.Int64)),
    "str": (1, 1, lambda s, w, x: _text(s, x)),
    "int": (1, 1, lambda s, w, x: to_int(x, s.dtype(x))),
    "float": (1, 1, lambda s, w, x: to_float(x, s.dtype(x))),
}
_BUILTINS = ("col", "concat", "round")
_KNOWN = sorted([*_FUNCTIONS, *_BUILTINS])

_ARITHMETIC: dict[type[ast.operator], Callable[[pl.Expr, pl.Expr], pl.Expr]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}
_COMPARE: dict[type[ast.cmpop], Callable[[pl.Expr, pl.Expr], pl.Expr]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
}
_SYMBOLS = {
    ast.Mod: "%", ast.FloorDiv: "//", ast.Pow: "**", ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|",
    ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>", ast.In: "in", ast.NotIn: "not in", ast.Invert: "~",
}


class _Compiler:
    """Turns a whitelisted AST into a `Build`, collecting the columns it reads."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.columns: list[str] = []

    def token(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or type(node).__name__

    def refuse(self, node: ast.AST, what: str | None = None) -> ExpressionError:
        what = what or f"{type(node).__name__} is not allowed"
        return ExpressionError(f"{self.token(node)!r}: {what}")

    def node(self, node: ast.expr) -> Build:
        match node:
            case ast.Constant(value=value) if value is None or isinstance(value, str | int | float):
                return lambda s: pl.lit(value)
            case ast.Name(id=name):
                return self.read(name)
            case ast.Attribute():
                return self.read(self.path(node))
            case ast.UnaryOp(op=ast.Not(), operand=operand):
                inner = self.node(operand)
                return lambda s: ~_truth(s, inner(s))
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                inner, where = self.node(operand), self.token(node)
                return lambda s: -_number(s, inner(s), where)
            case ast.UnaryOp(op=ast.UAdd(), operand=operand):
                inner, where = self.node(operand), self.token(node)
                return lambda s: _number(s, inner(s), where)
            case ast.BinOp(op=op, left=left, right=right) if type(op) in _ARITHMETIC:
                a, b, kind, where = self.node(left), self.node(right), type(op), self.token(node)
                return lambda s: _arithmetic(s, a(s), b(s), kind, where)
            case ast.BoolOp(op=op, values=values):
                parts = [self.node(v) for v in values]
                if isinstance(op, ast.And):
                    return lambda s: pl.all_horizontal([_truth(s, p(s)) for p in parts])
                return lambda s: pl.any_horizontal([_truth(s, p(s)) for p in parts])
            case ast.Compare():
                return self.compare(node)
            case ast.IfExp(test=test, body=body, orelse=orelse):
                cond, then, other = self.node(test), self.node(body), self.node(orelse)
                return lambda s: pl.when(_truth(s, cond(s))).then(then(s)).otherwise(other(s))
            case ast.Call():
                return self.call(node)
            case ast.BinOp(op=op) | ast.UnaryOp(op=op):
                raise self.refuse(node, f"operator {_SYMBOLS.get(type(op), type(op).__name__)!r} is not supported")
            case ast.Constant():
                raise self.refuse(node, "only text, number, True, False and None literals are allowed")
            case _:
                raise self.refuse(node)

    def read(self, name: str) -> Build:
        self.columns.append(name)
        return lambda s: s.column(name)

    def path(self, node: ast.expr) -> str:
        """`a.b.c` as the dotted path "a.b.c" (only names joined by dots)."""
        match node:
            case ast.Name(id=name):
                return name
            case ast.Attribute(value=value, attr=attr):
                return f"{self.path(value)}.{attr}"
        raise self.refuse(node, "only column names can be joined with '.'")

    def literal(self, node: ast.expr) -> object:
        """The Python value of a literal argument (negative numbers included)."""
        match node:
            case ast.Constant(value=value):
                return value
            case ast.UnaryOp(op=ast.USub(), operand=ast.Constant(value=int() | float() as value)):
                return -value
        raise self.refuse(node, "must be a literal value")

    def compare(self, node: ast.Compare) -> Build:
        where = self.token(node)
        left = node.left
        steps: list[Build] = []
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, ast.Is | ast.IsNot):
                if not (isinstance(right, ast.Constant) and right.value is None):
                    raise self.refuse(node, "'is' only compares with None")
                operand = self.node(left)
                test = (lambda e: e.is_null()) if isinstance(op, ast.Is) else (lambda e: e.is_not_null())
                steps.append(lambda s, operand=operand, test=test: test(operand(s)))
            elif type(op) in _COMPARE:
                if any(isinstance(side, ast.Constant) and side.value is None for side in (left, right)):
                    raise self.refuse(node, "comparing with None is always null; use 'x is None'")
                a, b, apply = self.node(left), self.node(right), _COMPARE[type(op)]
                steps.append(lambda s, a=a, b=b, apply=apply: _compared(s, a(s), b(s), apply, where))
            else:
                raise self.refuse(node, f"operator {_SYMBOLS.get(type(op), type(op).__name__)!r} is not supported")
            left = right
        if len(steps) == 1:
            return steps[0]
        return lambda s: pl.all_horizontal([step(s) for step in steps])

    def call(self, node: ast.Call) -> Build:
        if not isinstance(node.func, ast.Name):
            raise self.refuse(node.func, "only plain function calls are allowed, e.g. lower(x)")
        name, where = node.func.id, self.token(node)
        if name not in _FUNCTIONS and name not in _BUILTINS:
            raise self.refuse(node.func, f"unknown function (known: {', '.join(_KNOWN)}){did_you_mean(name, _KNOWN)}")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise self.refuse(node, "'*' arguments are not allowed")
        allowed_keywords = {"sep"} if name == "concat" else set()
        for kw in node.keywords:
            if kw.arg not in allowed_keywords:
                raise self.refuse(node, f"{name}() takes no keyword {kw.arg or '**'!r}")
        if name == "col":
            match node.args:
                case [ast.Constant(value=str() as column)]:
                    return self.read(column)
            raise self.refuse(node, "col() takes one text literal, the column name")
        if name == "concat":
            return self.concat(node)
        if name == "round":
            return self.round(node)
        low, high, builder = _FUNCTIONS[name]
        count = len(node.args)
        if count < low or (high is not None and count > high):
            expected = f"{low}" if low == high else f"{low} to {high}" if high else f"at least {low}"
            raise self.refuse(node, f"{name}() takes {expected} argument(s), got {count}")
        args = [self.node(a) for a in node.args]
        return lambda s: builder(s, where, *(a(s) for a in args))

    def concat(self, node: ast.Call) -> Build:
        if not node.args:
            raise self.refuse(node, "concat() needs at least one argument")
        sep = " "
        for kw in node.keywords:
            sep = self.literal(kw.value)
            if not isinstance(sep, str):
                raise self.refuse(kw.value, "sep must be a text literal")
        args = [self.node(a) for a in node.args]
        return lambda s: join_texts([_text(s, a(s)) for a in args], sep)

    def round(self, node: ast.Call) -> Build:
        if not 1 <= len(node.args) <= 2:
            raise self.refuse(node, f"round() takes 1 or 2 arguments, got {len(node.args)}")
        digits = self.literal(node.args[1]) if len(node.args) == 2 else 0
        if type(digits) is not int or digits < 0:
            raise self.refuse(node, "round() digits must be a whole number >= 0")
        value, where = self.node(node.args[0]), self.token(node)
        return lambda s: _number(s, value(s), where).round(digits)


def _kinds(scope: Scope, *exprs: pl.Expr) -> list[str]:
    """Coarse kinds for type messages: text, number (null literals count as numbers) or other."""
    kinds = []
    for expr in exprs:
        dtype = scope.dtype(expr)
        kinds.append("text" if dtype == pl.String else "number" if dtype.is_numeric() or dtype == pl.Null else "other")
    return kinds


def _arithmetic(scope: Scope, a: pl.Expr, b: pl.Expr, op: type[ast.operator], where: str) -> pl.Expr:
    kinds = set(_kinds(scope, a, b))
    if "text" in kinds and not (op is ast.Add and kinds == {"text"}):
        got = " and ".join(sorted(kinds))
        raise TypeProblem(f"{where!r}: '+' joins two texts, and + - * / need two numbers; got {got}")
    return _ARITHMETIC[op](a, b)


def _compared(
    scope: Scope, a: pl.Expr, b: pl.Expr, apply: Callable[[pl.Expr, pl.Expr], pl.Expr], where: str
) -> pl.Expr:
    if set(_kinds(scope, a, b)) == {"text", "number"}:
        raise TypeProblem(f"{where!r} compares text with a number; convert one side with int(), float() or str()")
    return apply(a, b)
