"""Every mistake is a ConfigError that starts with the file and names the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from kanal.core.errors import ConfigError
from kanal.mappings import load_mapping, parse_mapping

SOURCE = "mappings/erp_customers.yaml"


def problem(spec: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_mapping(spec, source=SOURCE)
    message = str(info.value)
    assert message.startswith(SOURCE + ": ")
    return message


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("entity: customers\nfields:\n  customer_no: [kunnr\n")
    with pytest.raises(ConfigError) as info:
        load_mapping(path)
    assert str(info.value).startswith(f"{path}:4:")
    assert "invalid YAML" in str(info.value)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("fields:\n  email: mail\n  email: mail2\n")
    with pytest.raises(ConfigError) as info:
        load_mapping(path)
    assert str(info.value) == f"{path}:3:3: invalid YAML: duplicate key 'email'"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml: cannot read the mapping file"):
        load_mapping(tmp_path / "missing.yaml")


@pytest.mark.parametrize("document", [None, [1, 2], "just text"])
def test_top_level_must_be_a_mapping(document: Any) -> None:
    assert "a mapping file must be a YAML mapping" in problem(document)


def test_empty_file_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match="empty.yaml: a mapping file must be a YAML mapping.*got nothing"):
        load_mapping(path)


def test_unknown_top_level_key_suggests_the_right_one() -> None:
    message = problem({"fields": {"a": "b"}, "keep_unmaped": True})
    assert f"{SOURCE}: keep_unmaped: unknown key 'keep_unmaped'" in message
    assert "did you mean 'keep_unmapped'?" in message


def test_unknown_field_key() -> None:
    message = problem({"fields": {"vat_id": {"from": "ustid", "requierd": True}}})
    assert f"{SOURCE}: fields.vat_id: unknown key 'requierd'" in message
    assert "did you mean 'required'?" in message


def test_unknown_entity() -> None:
    message = problem({"entity": "kunden", "fields": {"a": "b"}})
    assert f"{SOURCE}: entity: unknown entity 'kunden' (known: customers," in message


def test_bad_direction_and_keep_unmapped() -> None:
    message = problem({"direction": "both", "keep_unmapped": "yes", "fields": {"a": "b"}})
    assert f"{SOURCE}: direction: must be 'source' or 'sink', got 'both'" in message
    assert f"{SOURCE}: keep_unmapped: must be true or false, got 'yes'" in message


def test_fields_missing_or_empty() -> None:
    assert f"{SOURCE}: fields: must be a non-empty mapping" in problem({"entity": "customers"})
    assert f"{SOURCE}: fields: must be a non-empty mapping" in problem({"fields": {}})


def test_target_not_in_entity_lists_the_valid_fields() -> None:
    message = problem({"entity": "customers", "fields": {"custmer_no": "kunnr"}})
    assert f"{SOURCE}: fields.custmer_no: 'custmer_no' is not a field of customers" in message
    assert "(valid: customer_no, type, company," in message
    assert "updated_at)" in message


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("addresses.billing.strasse", "expected addresses.<billing|shipping>.<street|zip|city|country>"),
        ("addresses.home.city", "expected addresses.<billing|shipping>.<street|zip|city|country>"),
        ("addresses.billing", "expected addresses.<billing|shipping>.<street|zip|city|country>"),
        ("company.name", "'company' is not nested"),
        ("adresses.billing.city", "'adresses' is not a field of customers"),
    ],
)
def test_bad_nested_targets(target: str, expected: str) -> None:
    message = problem({"entity": "customers", "fields": {target: "x"}})
    assert f"{SOURCE}: fields.{target}: {expected}" in message


def test_whole_value_and_part_cannot_both_be_targets() -> None:
    message = problem({"entity": "customers", "fields": {"addresses": "addr", "addresses.billing.city": "c"}})
    assert f"{SOURCE}: fields.addresses.billing.city: conflicts with target 'addresses'" in message


def test_reserved_target_names() -> None:
    message = problem({"direction": "sink", "fields": {"_kanal_reason": "x"}})
    assert f"{SOURCE}: fields._kanal_reason: names starting with '_kanal_' are reserved" in message


def test_sink_targets_are_not_checked_against_the_entity() -> None:
    assert parse_mapping({"direction": "sink", "entity": "customers", "fields": {"KUNNR": "customer_no"}}).entity


def test_unknown_transform() -> None:
    message = problem({"fields": {"email": {"from": "mail", "transform": ["lower", "shout"]}}})
    assert f"{SOURCE}: fields.email.transform: unknown transform 'shout' (known: lower, upper, strip, title)" in message


def test_unknown_cast() -> None:
    message = problem({"fields": {"weight": {"from": "w", "cast": "money"}}})
    known = "(known: str, int, float, decimal, bool, datetime)"
    assert f"{SOURCE}: fields.weight.cast: unknown cast 'money' {known}" in message


def test_field_without_operation() -> None:
    message = problem({"fields": {"type": {"lookup": {"B": "b2b"}}}})
    assert f"{SOURCE}: fields.type: no operation: give one of from, const, split, concat, expr" in message


def test_two_operations_in_one_field() -> None:
    message = problem({"fields": {"currency": {"from": "waers", "const": "EUR"}}})
    assert f"{SOURCE}: fields.currency: two operations in one field (from and const)" in message


@pytest.mark.parametrize(
    ("spec", "where", "expected"),
    [
        ({"split": {"sep": " ", "index": 0}}, "split.from", "needs a column name"),
        ({"split": {"from": "full_name"}}, "split.index", "needs the number of the part to take"),
        ({"split": {"from": "full_name", "index": 0, "sep": ""}}, "split.sep", "must be non-empty text"),
        ({"split": {"from": "full_name", "index": 0, "part": 1}}, "split", "unknown key 'part'"),
        ({"split": "full_name"}, "split", "needs a mapping with from, sep and index"),
        ({"concat": []}, "concat", "needs a non-empty list of column names"),
        ({"concat": "area"}, "concat", "needs a non-empty list of column names"),
        ({"concat": ["area", 5]}, "concat[1]", "needs a column name"),
        ({"from": None}, "from", "needs a column name"),
        ({"from": "x", "sep": " "}, "sep", "sep belongs to concat"),
        ({"const": [1, 2]}, "const", "must be a single value"),
        ({"expr": ""}, "expr", "the expression is empty"),
        ({"expr": 5}, "expr", "must be the expression as text"),
        ({"from": "x", "lookup": {}}, "lookup", "needs a non-empty mapping"),
        ({"from": "x", "lookup": {"a": 1, "b": "two"}}, "lookup", "the values and the default mix types"),
        ({"from": "x", "lookup": {"a": "x"}, "default": 0}, "lookup", "the values and the default mix types"),
        ({"from": "x", "default": {"a": 1}}, "default", "must be a single value"),
        ({"from": "x", "required": "yes"}, "required", "must be true or false"),
    ],
)
def test_operation_arguments(spec: dict[str, Any], where: str, expected: str) -> None:
    message = problem({"fields": {"name": spec}})
    assert f"{SOURCE}: fields.name.{where}: {expected}" in message


def test_field_of_the_wrong_type() -> None:
    message = problem({"fields": {"name": 5}})
    assert f"{SOURCE}: fields.name: expected a column name or a mapping" in message


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_mapping(
            {"entity": "customers", "fields": {"nope": "x", "email": {"from": "m", "cast": "money"}}}, source=SOURCE
        )
    assert str(info.value).startswith(f"{SOURCE}: invalid mapping (2 problems)")
    assert [p.split(":")[1].strip() for p in info.value.problems] == ["fields.nope", "fields.email.cast"]


@pytest.mark.parametrize(
    ("expr", "token"),
    [
        ("x[0]", "'x[0]': Subscript is not allowed"),
        ("foo(x)", "'foo': unknown function"),
        ("lowr(x)", "did you mean 'lower'?"),
        ("x.lower()", "'x.lower': only plain function calls are allowed"),
        ("__import__('os').system('x')", "only plain function calls are allowed"),
        ("x % 2", "'x % 2': operator '%' is not supported"),
        ("x ** 2", "operator '**' is not supported"),
        ("x in ('a', 'b')", "operator 'in' is not supported"),
        ("~x", "operator '~' is not supported"),
        ("lambda: 1", "'lambda: 1': Lambda is not allowed"),
        ("[x]", "List is not allowed"),
        ("x == None", "use 'x is None'"),
        ("x is y", "'is' only compares with None"),
        ("round(x, n)", "'n': must be a literal value"),
        ("round(x, 1.5)", "round() digits must be a whole number"),
        ("col(x)", "col() takes one text literal"),
        ("lower(x, y)", "lower() takes 1 argument(s), got 2"),
        ("substr(x)", "substr() takes 2 to 3 argument(s), got 1"),
        ("coalesce()", "coalesce() takes at least 1 argument(s), got 0"),
        ("upper(x, sep='-')", "upper() takes no keyword 'sep'"),
        ("concat(x, sep=y)", "'y': must be a literal value"),
        ("concat(*x)", "'*' arguments are not allowed"),
        ("x +", "invalid syntax"),
        ("a if b", "'a if b': expected 'else' after 'if' expression"),
        ("x.y()", "only plain function calls"),
        ("(x).y.z + f(1).a", "only column names can be joined with '.'"),
        ("b'bytes'", "only text, number, True, False and None literals are allowed"),
        ("x := 1", "invalid syntax"),
    ],
)
def test_bad_expressions_name_field_and_token(expr: str, token: str) -> None:
    message = problem({"fields": {"price_group": {"expr": expr}}})
    assert f"{SOURCE}: fields.price_group.expr: " in message
    assert token in message


# --- errors when applying ----------------------------------------------------


def test_missing_columns_are_all_reported_with_the_available_ones() -> None:
    m = parse_mapping(
        {"fields": {"customer_no": "kunnr", "vat_id": "ustid", "phone": {"concat": ["area", "number"]},
                    "x": {"expr": "upper(pgroup)"}}},
        source=SOURCE,
    )
    with pytest.raises(ConfigError) as info:
        m.apply(pl.DataFrame({"kunnr": ["1"], "area": ["030"]}))
    assert str(info.value).startswith(f"{SOURCE}: the input lacks columns the mapping reads (available: kunnr, area)")
    assert info.value.problems == [
        f"{SOURCE}: fields.vat_id: column 'ustid' is not in the input",
        f"{SOURCE}: fields.phone: column 'number' is not in the input",
        f"{SOURCE}: fields.x: column 'pgroup' is not in the input",
    ]


def test_missing_struct_path_is_a_missing_column() -> None:
    m = parse_mapping({"direction": "sink", "fields": {"city": "addresses.billing.town"}}, source=SOURCE)
    frame = pl.DataFrame({"addresses": [{"billing": {"city": "Ulm"}}]})
    with pytest.raises(ConfigError, match=r"fields.city: column 'addresses.billing.town' is not in the input"):
        m.apply(frame)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("round(s, 1)", "fields.out: 'round(s, 1)' needs a number, got String"),
        ("abs(s)", "fields.out: 'abs(s)' needs a number, got String"),
        ("-s", "fields.out: '-s' needs a number, got String"),
        ("s + 1", "fields.out: 's + 1': '+' joins two texts, and + - * / need two numbers"),
        ("s * n", "fields.out: 's * n': '+' joins two texts"),
        ("s < 1", "fields.out: 's < 1' compares text with a number"),
        ("substr(s, s)", "fields.out: 'substr(s, s)' needs a number"),
    ],
)
def test_type_mismatches_name_the_field_when_applied(expr: str, expected: str) -> None:
    m = parse_mapping({"fields": {"out": {"expr": expr}}}, source=SOURCE)
    with pytest.raises(ConfigError) as info:
        m.apply(pl.DataFrame({"s": ["a"], "n": [1]}))
    assert str(info.value).startswith(f"{SOURCE}: the mapping does not fit the input's column types")
    assert f"{SOURCE}: {expected}" in str(info.value)
