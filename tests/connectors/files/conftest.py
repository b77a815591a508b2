"""Canonical frames shared by the files connector tests."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from kanal.core.model import CUSTOMER, PRICE

UTC = dt.timezone.utc


def canonical(rows: dict[str, list], entity) -> pl.DataFrame:
    """A frame as the engine hands it to a sink: canonical schema plus `_kanal_key`."""
    return pl.DataFrame(rows, schema=entity.schema).with_columns(entity.key_expr())


@pytest.fixture
def prices() -> pl.DataFrame:
    return canonical(
        {
            "sku": ["A-1", "A-1", "B-2"],
            "price_list": ["retail", "wholesale", None],
            "customer_no": [None, None, "C-77"],
            "currency": ["EUR", "EUR", "CHF"],
            "min_qty": [None, "10", "1.000"],
            "amount": ["12.50", "9.90", "1000"],
            "valid_from": [
                dt.datetime(2024, 1, 1, tzinfo=UTC),
                None,
                dt.datetime(2024, 6, 30, 22, 0, 0, 5, tzinfo=UTC),
            ],
            "valid_to": [None, None, dt.datetime(2030, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)],
            "updated_at": [dt.datetime(2024, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)] * 3,
        },
        PRICE,
    )


@pytest.fixture
def customers() -> pl.DataFrame:
    berlin = {"street": "Hauptstraße 1", "zip": "10115", "city": "Berlin", "country": "DE"}
    zurich = {"street": "Bahnhofstr. 2, 3. OG", "zip": "8001", "city": "Zürich", "country": "CH"}
    return canonical(
        {
            "customer_no": ["K-1", "K-2", "K-3"],
            "type": ["b2b", "b2c", None],
            "company": ['Müller "&" Söhne GmbH', None, None],
            "first_name": [None, "Ann", None],
            "last_name": [None, "Lee", None],
            "email": ["info@mueller.example", None, None],
            "phone": [None, "+49 30 1234", None],
            "vat_id": ["DE123456789", None, None],
            "currency": ["EUR", "CHF", None],
            "price_group": ["A", None, None],
            "addresses": [
                {"billing": berlin, "shipping": zurich},
                {"billing": zurich, "shipping": None},
                None,
            ],
            "updated_at": [dt.datetime(2024, 2, 29, 23, 59, 59, 1, tzinfo=UTC), None, None],
        },
        CUSTOMER,
    )
