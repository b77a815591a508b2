"""Field operations, modifiers, nesting, pass-through and the public surface."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

import kanal.mappings
from kanal.core.model import ADDRESSES_DTYPE, CUSTOMER
from kanal.core.validate import REASON, conform
from kanal.mappings import Mapping, load_mapping, parse_mapping
from tests.mappings.helpers import SOURCE, column, run

UTC = dt.timezone.utc


def test_public_surface() -> None:
    assert kanal.mappings.__all__ == ["Mapping", "load_mapping", "parse_mapping"]
    assert all(hasattr(kanal.mappings, name) for name in kanal.mappings.__all__)


# --- operations ------------------------------------------------------------


def test_shorthand_and_from_rename_columns() -> None:
    out = run({"customer_no": "kunnr", "company": {"from": "name1"}}, {"kunnr": ["1"], "name1": ["ACME"]})
    assert out.columns == ["customer_no", "company"]
    assert out.row(0) == ("1", "ACME")


def test_const_fills_every_row() -> None:
    assert column({"currency": {"const": "EUR"}}, {"x": [1, 2, 3]}, "currency") == ["EUR"] * 3


def test_const_null_is_a_typed_null() -> None:
    out = run({"note": {"const": None}}, {"x": [1]})
    assert out.schema["note"] == pl.String and out["note"].to_list() == [None]


def test_split_takes_parts_from_start_and_end() -> None:
    fields = {
        "first_name": {"split": {"from": "full_name", "sep": " ", "index": 0}},
        "last_name": {"split": {"from": "full_name", "index": -1}},
        "middle": {"split": {"from": "full_name", "sep": " ", "index": 1}},
    }
    out = run(fields, {"full_name": ["Anna Maria Schmidt", "Cher", None]})
    assert out["first_name"].to_list() == ["Anna", "Cher", None]
    assert out["last_name"].to_list() == ["Schmidt", "Cher", None]
    assert out["middle"].to_list() == ["Maria", None, None]


def test_split_other_separator_and_non_text_input() -> None:
    assert column({"a": {"split": {"from": "x", "sep": "-", "index": 1}}}, {"x": ["DE-123"]}, "a") == ["123"]
    assert column({"a": {"split": {"from": "n", "sep": ".", "index": 0}}}, {"n": [12.5]}, "a") == ["12"]


def test_concat_skips_null_and_blank_parts() -> None:
    frame = {"area": ["030", None, "  ", None], "number": ["123", "456", "789", None]}
    assert column({"phone": {"concat": ["area", "number"], "sep": " "}}, frame, "phone") == [
        "030 123", "456", "789", None,
    ]


def test_concat_default_separator_is_a_space_and_numbers_become_text() -> None:
    assert column({"a": {"concat": ["x", "n"]}}, {"x": ["No"], "n": [7]}, "a") == ["No 7"]
    assert column({"a": {"concat": ["x", "n"], "sep": ""}}, {"x": ["No"], "n": [7]}, "a") == ["No7"]


# --- modifiers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("transform", "expected"),
    [
        ("lower", ["  mixed case  "]),
        ("upper", ["  MIXED CASE  "]),
        ("strip", ["Mixed CASE"]),
        ("title", ["  Mixed Case  "]),
        (["strip", "lower"], ["mixed case"]),
    ],
)
def test_transforms(transform: str | list[str], expected: list[str]) -> None:
    assert column({"a": {"from": "x", "transform": transform}}, {"x": ["  Mixed CASE  "]}, "a") == expected


def test_transform_of_numbers_works_on_their_text() -> None:
    out = run({"a": {"from": "n", "transform": "strip"}}, {"n": [5]})
    assert out.schema["a"] == pl.String and out["a"].to_list() == ["5"]


def test_lookup_with_default_replaces_unmatched_and_null() -> None:
    fields = {"type": {"from": "kind", "lookup": {"B": "b2b", "C": "b2c"}, "default": "b2c"}}
    assert column(fields, {"kind": ["B", "C", "X", None]}, "type") == ["b2b", "b2c", "b2c", "b2c"]


def test_lookup_without_default_gives_null() -> None:
    fields = {"type": {"from": "kind", "lookup": {"B": "b2b"}}}
    assert column(fields, {"kind": ["B", "X", None]}, "type") == ["b2b", None, None]


def test_lookup_keys_compare_as_text_and_values_keep_their_type() -> None:
    fields = {"active": {"from": "status", "lookup": {1: True, 0: False}}}
    out = run(fields, {"status": [1, 0, 7]})
    assert out.schema["active"] == pl.Boolean
    assert out["active"].to_list() == [True, False, None]


def test_lookup_runs_after_transforms() -> None:
    fields = {"type": {"from": "kind", "transform": ["strip", "upper"], "lookup": {"B": "b2b"}}}
    assert column(fields, {"kind": [" b "]}, "type") == ["b2b"]


def test_default_fills_nulls_only() -> None:
    assert column({"note": {"from": "x", "default": "n/a"}}, {"x": ["a", None, ""]}, "note") == ["a", "n/a", ""]


def test_default_keeps_numbers() -> None:
    out = run({"qty": {"from": "q", "default": 0}}, {"q": [5, None]})
    assert out["qty"].to_list() == [5, 0]


# --- casts -----------------------------------------------------------------


def test_cast_str() -> None:
    out = run({"a": {"from": "n", "cast": "str"}}, {"n": [1, None]})
    assert out.schema["a"] == pl.String and out["a"].to_list() == ["1", None]


def test_cast_int_from_text_and_whole_floats() -> None:
    fields = {"a": {"from": "s", "cast": "int"}, "b": {"from": "f", "cast": "int"}}
    out = run(fields, {"s": [" 42 ", "7"], "f": [2.0, 3.0]})
    assert out.schema["a"] == pl.Int64 and out["a"].to_list() == [42, 7]
    assert out["b"].to_list() == [2, 3]
    assert out[REASON].to_list() == [None, None]


def test_cast_int_refuses_fractions_instead_of_truncating() -> None:
    out = run({"a": {"from": "f", "cast": "int"}}, {"f": [2.5]})
    assert out["a"].to_list() == [None]
    assert out[REASON].to_list() == [f"mapping {SOURCE}: a: '2.5' is not a valid int (from f)"]


def test_cast_float() -> None:
    out = run({"a": {"from": "s", "cast": "float"}}, {"s": ["1.5", " 2 "]})
    assert out.schema["a"] == pl.Float64 and out["a"].to_list() == [1.5, 2.0]


def test_cast_decimal_keeps_the_exact_text() -> None:
    fields = {"a": {"from": "s", "cast": "decimal"}, "b": {"from": "n", "cast": "decimal"}}
    out = run(fields, {"s": [" 12.50 ", "1e3"], "n": [3, 4]})
    assert out["a"].to_list() == ["12.50", "1e3"]
    assert out["b"].to_list() == ["3", "4"]
    assert out[REASON].to_list() == [None, None]


def test_cast_bool() -> None:
    fields = {"a": {"from": "s", "cast": "bool"}, "b": {"from": "n", "cast": "bool"}}
    out = run(fields, {"s": ["Yes", "0"], "n": [2, 0]})
    assert out["a"].to_list() == [True, False]
    assert out["b"].to_list() == [True, False]


def test_cast_datetime_reads_iso_forms_as_utc() -> None:
    values = ["2024-01-02T03:04:05+02:00", "2024-01-02 03:04:05", "2024-01-02", "2024-01-02T03:04:05.5Z"]
    out = run({"ts": {"from": "s", "cast": "datetime"}}, {"s": values})
    assert out.schema["ts"] == pl.Datetime("us", "UTC")
    assert out["ts"].to_list() == [
        dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC),
        dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        dt.datetime(2024, 1, 2, tzinfo=UTC),
        dt.datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC),
    ]


def test_cast_datetime_from_naive_datetimes_and_dates() -> None:
    frame = pl.DataFrame({"d": [dt.date(2024, 5, 6)], "t": [dt.datetime(2024, 5, 6, 7, 8)]})
    out = run({"a": {"from": "d", "cast": "datetime"}, "b": {"from": "t", "cast": "datetime"}}, frame)
    expected = (dt.datetime(2024, 5, 6, tzinfo=UTC), dt.datetime(2024, 5, 6, 7, 8, tzinfo=UTC))
    assert out.select("a", "b").row(0) == expected


def test_failed_cast_rejects_the_row_naming_field_value_and_source() -> None:
    out = run({"weight": {"from": "gross_weight", "cast": "decimal"}}, {"gross_weight": ["1.5", "abc", None, ""]})
    assert out["weight"].to_list() == ["1.5", None, None, None]
    assert out[REASON].to_list() == [
        None,
        f"mapping {SOURCE}: weight: 'abc' is not a valid decimal (from gross_weight)",
        None,
        None,
    ]


def test_cast_applies_to_the_default() -> None:
    assert column({"a": {"from": "s", "cast": "int", "default": "0"}}, {"s": [None, "3"]}, "a") == [0, 3]


# --- required --------------------------------------------------------------


def test_required_rejects_null_and_blank_results() -> None:
    out = run({"vat_id": {"from": "ustid", "required": True}}, {"ustid": ["DE1", None, "  "]})
    message = f"mapping {SOURCE}: vat_id is required (from ustid)"
    assert out[REASON].to_list() == [None, message, message]
    assert out["vat_id"].to_list() == ["DE1", None, "  "]


def test_required_after_lookup_without_default() -> None:
    out = run({"type": {"from": "k", "lookup": {"B": "b2b"}, "required": True}}, {"k": ["B", "Z"]})
    assert out[REASON].to_list() == [None, f"mapping {SOURCE}: type is required (from k)"]


def test_all_failures_of_a_row_are_listed() -> None:
    fields = {"a": {"from": "x", "required": True}, "b": {"from": "y", "required": True}}
    out = run(fields, {"x": [None], "y": [None]})
    assert out[REASON].to_list() == [
        f"mapping {SOURCE}: a is required (from x); mapping {SOURCE}: b is required (from y)"
    ]


def test_existing_reason_wins() -> None:
    frame = {"ustid": [None, None, "DE1"], REASON: ["earlier problem", None, None]}
    out = run({"vat_id": {"from": "ustid", "required": True}}, frame, keep_unmapped=False)
    assert out[REASON].to_list() == ["earlier problem", f"mapping {SOURCE}: vat_id is required (from ustid)", None]
    assert out.columns == ["vat_id", REASON]


def test_no_reason_column_without_checks() -> None:
    assert REASON not in run({"a": "x"}, {"x": [None]}).columns


def test_existing_reason_passes_through_without_checks() -> None:
    out = run({"a": "x"}, {"x": [1], REASON: ["bad"]}, keep_unmapped=False)
    assert out.columns == ["a", REASON] and out[REASON].to_list() == ["bad"]


# --- nesting ---------------------------------------------------------------


def test_address_targets_build_the_canonical_struct() -> None:
    fields = {
        "customer_no": "kunnr",
        "addresses.billing.street": {"from": "bill_street"},
        "addresses.billing.country": {"from": "bill_country", "transform": "upper"},
        "addresses.shipping.zip": "ship_zip",
    }
    frame = {"kunnr": ["1"], "bill_street": ["Hauptstr. 1"], "bill_country": ["de"], "ship_zip": [10115]}
    out = run(fields, frame, entity="customers")
    assert out.columns == ["customer_no", "addresses"]
    assert out.schema["addresses"] == ADDRESSES_DTYPE
    assert out["addresses"].to_list() == [
        {
            "billing": {"street": "Hauptstr. 1", "zip": None, "city": None, "country": "DE"},
            "shipping": {"street": None, "zip": "10115", "city": None, "country": None},
        }
    ]


def test_unmapped_address_role_is_null() -> None:
    out = run({"addresses.billing.city": "c"}, {"c": ["Berlin"]}, entity="customers")
    assert out.schema["addresses"] == ADDRESSES_DTYPE
    assert out["addresses"].to_list() == [
        {"billing": {"street": None, "zip": None, "city": "Berlin", "country": None}, "shipping": None}
    ]


def test_mapped_addresses_pass_conform() -> None:
    fields = {
        "customer_no": "kunnr",
        "addresses.billing.city": "city",
        "addresses.billing.country": {"from": "country", "transform": "upper"},
    }
    mapped = run(fields, {"kunnr": ["1"], "city": ["Wien"], "country": ["at"]}, entity="customers")
    out = conform(mapped, CUSTOMER)
    assert out[REASON].to_list() == [None]
    assert out["addresses"].to_list()[0]["billing"]["country"] == "AT"


def test_dotted_targets_without_entity_build_plain_structs() -> None:
    out = run({"billing.city": "c", "billing.geo.lat": "lat", "id": "i"}, {"c": ["Rom"], "lat": [41.9], "i": [1]},
              direction="sink")
    assert out.columns == ["billing", "id"]
    assert out["billing"].to_list() == [{"city": "Rom", "geo": {"lat": 41.9}}]


# --- pass-through ----------------------------------------------------------


def test_keep_unmapped_defaults_to_true_for_source() -> None:
    out = run({"customer_no": "kunnr", "email": {"from": "email", "transform": "lower"}},
              {"kunnr": ["1"], "email": ["A@B.DE"], "extra": [9]})
    assert out.columns == ["customer_no", "email", "extra"]
    assert out.row(0) == ("1", "a@b.de", 9)


def test_keep_unmapped_false_drops_other_columns() -> None:
    out = run({"customer_no": "kunnr"}, {"kunnr": ["1"], "extra": [9]}, keep_unmapped=False)
    assert out.columns == ["customer_no"]


def test_keep_unmapped_defaults_to_false_for_sink() -> None:
    out = run({"kundennr": "customer_no"}, {"customer_no": ["1"], "email": ["x"]}, direction="sink")
    assert out.columns == ["kundennr"]


def test_sink_keep_unmapped_true_keeps_other_columns() -> None:
    out = run({"kundennr": "customer_no"}, {"customer_no": ["1"], "email": ["x"]}, direction="sink", keep_unmapped=True)
    assert out.columns == ["kundennr", "email"]


def test_kanal_columns_always_pass_through() -> None:
    out = run({"kundennr": "customer_no"}, {"customer_no": ["1"], "_kanal_key": ["1"]}, direction="sink")
    assert out.columns == ["kundennr", "_kanal_key"]


def test_mapped_field_replaces_input_column_of_the_same_name() -> None:
    out = run({"company": "name1"}, {"name1": ["new"], "company": ["old"]})
    assert out.columns == ["company"] and out["company"].to_list() == ["new"]


# --- sink direction ---------------------------------------------------------


def test_sink_reads_dotted_paths_into_structs() -> None:
    frame = pl.DataFrame(
        {"customer_no": ["1"], "addresses": [{"billing": {"street": "S", "zip": "1", "city": "Köln", "country": "DE"},
                                             "shipping": None}]},
        schema={"customer_no": pl.String, "addresses": ADDRESSES_DTYPE},
    )
    fields = {"KUNNR": "customer_no", "ORT01": "addresses.billing.city",
              "LAND1": {"from": "addresses.billing.country", "transform": "lower"},
              "SHIP": {"from": "addresses.shipping.city", "default": "-"}}
    out = run(fields, frame, direction="sink", entity="customers")
    assert out.row(0) == ("1", "Köln", "de", "-")


def test_sink_targets_are_free_names() -> None:
    m = parse_mapping({"direction": "sink", "entity": "customers", "fields": {"Any Name!": "customer_no"}}, "s.yaml")
    assert m.entity == "customers" and m.direction == "sink"
    assert m.apply(pl.DataFrame({"customer_no": ["1"]})).columns == ["Any Name!"]


def test_a_column_named_with_dots_wins_over_a_path() -> None:
    assert column({"a": "x.y"}, {"x.y": [1]}, "a") == [1]


# --- mapping objects -------------------------------------------------------


def test_identity_returns_the_frame_unchanged() -> None:
    frame = pl.DataFrame({"b": [1], "a": ["x"], REASON: [None]})
    m = Mapping.identity()
    assert m.entity is None
    assert m.apply(frame) is frame


def test_entity_property() -> None:
    assert parse_mapping({"entity": "products", "fields": {"sku": "matnr"}}).entity == "products"
    assert parse_mapping({"fields": {"x": "y"}}).entity is None


def test_load_mapping_from_file(tmp_path: Path) -> None:
    path = tmp_path / "erp_customers.yaml"
    path.write_text(
        """
entity: customers
fields:
  customer_no: kunnr
  type: {from: kind, lookup: {B: b2b, C: b2c}, default: b2c}
  vat_id: {from: ustid, required: true}
  price_group: {expr: "upper(trim(pgroup)) if pgroup else 'STANDARD'"}
"""
    )
    m = load_mapping(path)
    assert m.entity == "customers" and m.source == str(path)
    frame = pl.DataFrame({"kunnr": ["1", "2"], "kind": ["B", None], "ustid": ["DE1", None], "pgroup": [" vip", ""]})
    out = m.apply(frame)
    assert out["type"].to_list() == ["b2b", "b2c"]
    assert out["price_group"].to_list() == ["VIP", "STANDARD"]
    assert out[REASON].to_list() == [None, f"mapping {path}: vat_id is required (from ustid)"]


def test_apply_is_pure_and_reusable_across_schemas() -> None:
    m = parse_mapping({"fields": {"a": {"from": "x", "transform": "upper"}}})
    first = pl.DataFrame({"x": ["a"]})
    assert m.apply(first)["a"].to_list() == ["A"]
    assert m.apply(pl.DataFrame({"x": [1]}))["a"].to_list() == ["1"]
    assert m.apply(first)["a"].to_list() == ["A"]
    assert first.columns == ["x"] and first["x"].to_list() == ["a"]


def test_a_full_mapping_on_a_million_rows() -> None:
    """Correctness at volume (the speed itself is measured in bench/, not asserted here)."""
    n = 1_000_000
    i = pl.int_range(0, n, eager=True)
    frame = pl.DataFrame({
        "kunnr": i.cast(pl.String),
        "name1": "Firma " + i.cast(pl.String),
        "kind": pl.Series(["B", "C", "X", None] * (n // 4)),
        "mail": "USER" + i.cast(pl.String) + "@EXAMPLE.COM",
        "full_name": "Max Muster" + i.cast(pl.String),
        "area": pl.Series(["030", None] * (n // 2)),
        "number": i.cast(pl.String),
        "ustid": pl.Series(["DE1", ""] * (n // 2)),
        "pgroup": pl.Series([" vip ", "", None, "gold"] * (n // 4)),
        "street": "Weg " + i.cast(pl.String),
        "country": pl.Series(["de", "at"] * (n // 2)),
        "changed": pl.Series(["2024-01-02 03:04:05"] * n),
        "weight": i / 4,
    })
    fields = {
        "customer_no": "kunnr",
        "company": {"from": "name1"},
        "type": {"from": "kind", "lookup": {"B": "b2b", "C": "b2c"}, "default": "b2c"},
        "currency": {"const": "EUR"},
        "email": {"from": "mail", "transform": "lower"},
        "first_name": {"split": {"from": "full_name", "sep": " ", "index": 0}},
        "last_name": {"split": {"from": "full_name", "sep": " ", "index": -1}},
        "phone": {"concat": ["area", "number"], "sep": " "},
        "vat_id": {"from": "ustid", "required": True},
        "price_group": {"expr": "upper(trim(pgroup)) if pgroup else 'STANDARD'"},
        "addresses.billing.street": "street",
        "addresses.billing.country": {"from": "country", "transform": "upper"},
        "updated_at": {"from": "changed", "cast": "datetime"},
        "w": {"from": "weight", "cast": "decimal"},
    }
    out = run(fields, frame, entity=None)
    assert out.height == n
    assert out.row(3, named=True) == {
        "customer_no": "3", "company": "Firma 3", "type": "b2c", "currency": "EUR", "email": "user3@example.com",
        "first_name": "Max", "last_name": "Muster3", "phone": "3", "vat_id": "",
        "price_group": "GOLD",
        "addresses": {"billing": {"street": "Weg 3", "country": "AT"}},
        "updated_at": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "w": "0.75",
        REASON: f"mapping {SOURCE}: vat_id is required (from ustid)",
    }
    assert out[REASON].null_count() == n // 2
    assert out["type"].value_counts().sort("type").rows() == [("b2b", n // 4), ("b2c", 3 * n // 4)]
    assert out["price_group"].value_counts().sort("price_group").rows() == [
        ("GOLD", n // 4), ("STANDARD", n // 2), ("VIP", n // 4)
    ]
