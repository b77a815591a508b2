"""The expression form: literals, operators, truthiness and every function."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from kanal.core.model import ADDRESSES_DTYPE
from tests.mappings.helpers import column, run


def ev(expr: str, frame: dict[str, list[Any]] | pl.DataFrame | None = None) -> list[Any]:
    """The values of `expr` over `frame` (one dummy row by default)."""
    return column({"out": {"expr": expr}}, frame if frame is not None else {"_": [0]}, "out")


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("'text'", ["text"]),
        ("42", [42]),
        ("1.5", [1.5]),
        ("True", [True]),
        ("None", [None]),
        ("-3", [-3]),
    ],
)
def test_literals(expr: str, expected: list[Any]) -> None:
    assert ev(expr) == expected


def test_columns_by_name_by_col_and_by_path() -> None:
    frame = pl.DataFrame(
        {"plain": [1], "odd name": [2], "addresses": [{"billing": {"city": "Ulm"}, "shipping": None}]},
        schema={"plain": pl.Int64, "odd name": pl.Int64, "addresses": ADDRESSES_DTYPE},
    )
    assert ev("plain + col('odd name')", frame) == [3]
    assert ev("upper(addresses.billing.city)", frame) == ["ULM"]
    assert ev("col('addresses.billing.city')", frame) == ["Ulm"]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("a + b", [7, None]),
        ("a - b", [3, None]),
        ("a * b", [10, None]),
        ("a / b", [2.5, None]),
        ("(a + 1) * 2", [12, 4]),
        ("-a", [-5, -1]),
    ],
)
def test_arithmetic(expr: str, expected: list[Any]) -> None:
    assert ev(expr, {"a": [5, 1], "b": [2, None]}) == expected


def test_plus_joins_texts() -> None:
    assert ev("first + ' ' + last", {"first": ["Ada", None], "last": ["Lovelace", "X"]}) == ["Ada Lovelace", None]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("n == 2", [False, True, None]),
        ("n != 2", [True, False, None]),
        ("n < 2", [True, False, None]),
        ("n <= 2", [True, True, None]),
        ("n > 1", [False, True, None]),
        ("n >= 1", [True, True, None]),
        ("0 < n <= 1", [True, False, None]),
        ("n is None", [False, False, True]),
        ("n is not None", [True, True, False]),
        ("s == 'b'", [False, True, None]),
    ],
)
def test_comparisons(expr: str, expected: list[Any]) -> None:
    assert ev(expr, {"n": [1, 2, None], "s": ["a", "b", None]}) == expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("x and y", [True, False, False, False]),
        ("x or y", [True, True, False, True]),
        ("not x", [False, False, True, True]),
        ("x and not y", [False, True, False, False]),
    ],
)
def test_boolean_logic_uses_truthiness_and_never_gives_null(expr: str, expected: list[bool]) -> None:
    frame = {"x": ["a", "b", " ", None], "y": [1, 0, 0, 3]}
    assert ev(expr, frame) == expected


def test_conditional_truthiness_of_text_numbers_and_null() -> None:
    frame = {"s": ["x", "", "  ", None], "n": [1, 0, None, 2], "b": [True, False, None, True]}
    assert ev("'yes' if s else 'no'", frame) == ["yes", "no", "no", "no"]
    assert ev("'yes' if n else 'no'", frame) == ["yes", "no", "no", "yes"]
    assert ev("'yes' if b else 'no'", frame) == ["yes", "no", "no", "yes"]


def test_the_documented_example() -> None:
    frame = {"pgroup": [" vip ", "", None]}
    assert ev("upper(trim(pgroup)) if pgroup else 'STANDARD'", frame) == ["VIP", "STANDARD", "STANDARD"]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("lower(s)", ["  hello world ", None]),
        ("upper(s)", ["  HELLO WORLD ", None]),
        ("trim(s)", ["Hello World", None]),
        ("coalesce(s, t, 'z')", ["  Hello World ", "t2"]),
        ("coalesce(None, t)", ["t1", "t2"]),
        ("concat(t, s)", ["t1   Hello World ", "t2"]),
        ("concat(t, 'x', sep='-')", ["t1-x", "t2-x"]),
        ("concat(s, None)", ["  Hello World ", None]),
        ("substr(t, 1)", ["1", "2"]),
        ("substr(trim(s), 0, 5)", ["Hello", None]),
        ("substr(trim(s), -5, 5)", ["World", None]),
        ("replace(s, 'l', 'L')", ["  HeLLo WorLd ", None]),
        ("len(s)", [14, None]),
        ("len(n)", [3, 3]),
        ("str(n)", ["2.5", "7.0"]),
        ("abs(m)", [3, 0]),
        ("round(n, 0)", [2.0, 7.0]),
        ("round(f, 2)", [1.23, -2.5]),
        ("round(f)", [1.0, -2.0]),
        ("int(i)", [12, None]),
        ("int(n)", [None, 7]),
        ("float(i)", [12.0, 0.5]),
    ],
)
def test_functions(expr: str, expected: list[Any]) -> None:
    frame = {
        "s": ["  Hello World ", None],
        "t": ["t1", "t2"],
        "n": [2.5, 7.0],
        "m": [-3, 0],
        "f": [1.2345, -2.5],
        "i": [" 12 ", "0.5"],
    }
    assert ev(expr, frame) == expected


def test_functions_nest_and_mix_with_operators() -> None:
    frame = {"a": ["x"], "n": [3]}
    assert ev("upper(a) + str(n * 2) if len(a) == 1 else 'long'", frame) == ["X6"]


def test_expression_reads_count_as_mapped_for_pass_through() -> None:
    assert run({"out": {"expr": "a + b"}}, {"a": [1], "b": [2], "c": [3]}).columns == ["out", "c"]
