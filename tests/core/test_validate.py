import polars as pl

from kanal.core import model
from kanal.core.validate import KEY, REASON, conform, split


def test_valid_prices_keep_exact_decimal_text_and_null_key_parts() -> None:
    frame = pl.DataFrame(
        {"sku": ["A"], "price_list": ["base"], "customer_no": [None], "currency": ["EUR"], "min_qty": ["1.000"],
         "amount": ["12.50"], "updated_at": ["2024-03-01T10:00:00Z"]}
    )
    valid, invalid = split(conform(frame, model.PRICE))
    assert invalid.is_empty()
    row = valid.row(0, named=True)
    assert row["amount"] == "12.50" and row["min_qty"] == "1.000"
    assert row["customer_no"] is None
    assert row[KEY] == "A|base||EUR|1.000"
    assert str(row["updated_at"]) == "2024-03-01 10:00:00+00:00"


def test_each_rule_names_field_and_value() -> None:
    frame = pl.DataFrame(
        {"sku": ["", "B", "C", "D"], "currency": ["EUR", "EURO", "EUR", "EUR"], "amount": ["1", "2", "x", "4"],
         "updated_at": [None, None, None, "not a date"]}
    )
    _, invalid = split(conform(frame, model.PRICE))
    reasons = dict(zip(invalid["sku"].to_list(), invalid[REASON].to_list(), strict=True))
    assert reasons[""] == "sku: required field is empty"
    assert reasons["B"] == "currency: 'EURO' is not an ISO 4217 currency code"
    assert reasons["C"] == "amount: 'x' is not a decimal number"
    assert reasons["D"].startswith("updated_at: not a date is not a valid datetime")


def test_a_mapping_rejection_is_kept_before_the_rules_own() -> None:
    """A failed cast leaves its value NULL: without the mapping's reason the row would pass with the value lost."""
    frame = pl.DataFrame(
        {"sku": ["A", "B", "C"], "updated_at": ["2024-01-01", None, None],
         REASON: [None, "mapping m.yaml: updated_at: 'gestern' is not a valid datetime (from changed)", "mapping m.yaml: x"]}
    ).with_columns(pl.col("sku").replace("C", ""))
    checked = conform(frame, model.PRODUCT)
    assert checked[REASON].to_list() == [
        None,
        "mapping m.yaml: updated_at: 'gestern' is not a valid datetime (from changed)",
        "mapping m.yaml: x; sku: required field is empty",
    ]


def test_missing_required_column_rejects_every_row() -> None:
    _, invalid = split(conform(pl.DataFrame({"sku": ["A"], "amount": ["1"]}), model.PRICE))
    assert invalid[REASON].to_list() == ["currency: required field is empty"]


def test_addresses_from_json_text_and_bad_country() -> None:
    frame = pl.DataFrame(
        {"customer_no": ["1", "2"],
         "addresses": ['{"billing": {"street": "Main 1", "zip": "10115", "city": "Berlin", "country": "DE"}}',
                       '{"shipping": {"country": "XX"}}']}
    )
    valid, invalid = split(conform(frame, model.CUSTOMER))
    assert valid.row(0, named=True)["addresses"]["billing"]["city"] == "Berlin"
    assert invalid[REASON].to_list() == ["addresses.shipping.country: 'XX' is not an ISO 3166-1 alpha-2 code"]


def test_booleans_and_epoch_and_naive_datetimes() -> None:
    frame = pl.DataFrame({"sku": ["A", "B", "C"], "active": ["t", "false", "maybe"],
                          "updated_at": pl.Series([0, 1_000_000, None], dtype=pl.Int64)})
    checked = conform(frame, model.PRODUCT)
    assert checked["active"].to_list() == [True, False, None]
    assert checked[REASON].to_list()[2] == "active: maybe is not a valid bool"
    assert str(checked["updated_at"][1]) == "1970-01-01 00:00:01+00:00"


def test_unknown_columns_dropped_missing_ones_null() -> None:
    checked = conform(pl.DataFrame({"sku": ["A"], "erp_internal": [1]}), model.PRODUCT)
    assert "erp_internal" not in checked.columns
    assert checked.schema["updated_at"] == pl.Datetime("us", "UTC")
    assert checked["name"].to_list() == [None]


def test_pydantic_models_mirror_the_canonical_fields() -> None:
    price = model.MODELS["prices"](sku="A", currency="EUR", amount="1.50")
    assert str(price.amount) == "1.50"  # type: ignore[attr-defined]
    assert set(model.MODELS["prices"].model_fields) == set(model.PRICE.field_names)


def test_text_timestamps_may_mix_formats_in_one_column() -> None:
    frame = pl.DataFrame({"sku": ["A", "B", "C", "D"],
                          "updated_at": ["2024-01-02T03:04:05Z", "2024-01-02 03:04:05", "2024-01-02", "2024-01-02T05:04:05.5+02:00"]})
    checked = conform(frame, model.PRODUCT)
    assert checked[REASON].to_list() == [None] * 4
    assert [str(v) for v in checked["updated_at"].to_list()] == [
        "2024-01-02 03:04:05+00:00", "2024-01-02 03:04:05+00:00", "2024-01-02 00:00:00+00:00", "2024-01-02 03:04:05.500000+00:00"]


def test_null_address_struct_stays_null() -> None:
    frame = pl.DataFrame({"customer_no": ["1", "2"], "addresses": [{"billing": {"city": "Berlin"}}, None]})
    checked = conform(frame, model.CUSTOMER)
    assert checked["addresses"].to_list()[1] is None
    assert checked["addresses"].to_list()[0]["billing"]["city"] == "Berlin"
