"""JSON records become typed frames in one call: exact decimals, UTC timestamps, loud mismatches."""

from __future__ import annotations

import datetime as dt

import httpx
import orjson
import polars as pl
import pytest
import respx

from kanal.core.errors import ConnectorError
from kanal.core.http import GraphQLCursor, HttpClient, PageNumber, PageRequest, RecordSchema

UTC = dt.UTC

CUSTOMER = RecordSchema(
    {
        "id": "int",
        "email": "text",
        "city": ("billing.city", "text"),
        "country": ("billing.country", "text"),
        "spent": ("total_spent", "decimal"),
        "discount": ("meta.discount", "float"),
        "paying": ("is_paying_customer", "bool"),
        "updated_at": ("date_modified_gmt", "datetime"),
        "tags": ("tags", pl.List(pl.String)),
    }
)

WOO = [
    {
        "id": 1,
        "email": "a@example.com",
        "billing": {"city": "Berlin", "country": "DE", "phone": "+49"},
        "total_spent": "1234.50",
        "meta": {"discount": 0.1},
        "is_paying_customer": True,
        "date_modified_gmt": "2024-03-01T10:00:00",
        "tags": ["vip"],
        "avatar_url": "https://example.com/a.png",
    },
    {
        "id": 2,
        "email": "b@example.com",
        "billing": None,
        "total_spent": 19.99,
        "is_paying_customer": False,
        "date_modified_gmt": "2024-03-01T12:30:00+02:00",
        "tags": [],
    },
    {"id": 3, "email": None, "total_spent": "0.00", "date_modified_gmt": "2024-03-01T10:00:00.250Z"},
]


def test_records_become_a_typed_frame_with_exact_decimals_and_utc_times() -> None:
    frame = CUSTOMER.frame(orjson.dumps(WOO))
    assert frame.schema == CUSTOMER.schema
    assert frame.schema["updated_at"] == pl.Datetime("us", "UTC")
    assert frame.rows() == [
        (1, "a@example.com", "Berlin", "DE", "1234.50", 0.1, True, dt.datetime(2024, 3, 1, 10, tzinfo=UTC), ["vip"]),
        (2, "b@example.com", None, None, "19.99", None, False, dt.datetime(2024, 3, 1, 10, 30, tzinfo=UTC), []),
        (3, None, None, None, "0.00", None, None, dt.datetime(2024, 3, 1, 10, 0, 0, 250000, tzinfo=UTC), None),
    ]


def test_records_inside_an_envelope_and_empty_answers() -> None:
    body = {"data": {"products": {"nodes": [{"id": "gid://shopify/Product/1", "price": "9.90"}], "pageInfo": {}}}}
    schema = RecordSchema({"id": "text", "price": "decimal"})
    assert schema.frame(orjson.dumps(body), "data.products.nodes").rows() == [("gid://shopify/Product/1", "9.90")]
    assert schema.frame(b'{"data": {"products": {"nodes": []}}}', "data.products.nodes").is_empty()
    assert schema.frame(b'{"data": null}', "data.products.nodes").is_empty()
    assert schema.frame(b"[]").schema == schema.schema


def test_keys_holding_dots_use_tuple_paths() -> None:
    schema = RecordSchema({"etag": (("@odata.etag",), "text"), "number": "text"})
    body = {"value": [{"@odata.etag": 'W/"1"', "number": "1000"}], "@odata.nextLink": "x"}
    assert schema.frame(orjson.dumps(body), "value").rows() == [('W/"1"', "1000")]


def test_a_value_that_does_not_fit_its_type_is_an_error_naming_the_column() -> None:
    bad = [
        {"id": 1, "total_spent": "12,50"},
        {"id": "x2", "total_spent": "1"},
        {"id": 3, "date_modified_gmt": "0000-00-00 00:00:00x"},
    ]
    with pytest.raises(ConnectorError) as wrong:
        CUSTOMER.frame(orjson.dumps(bad), system="shop", what="GET customers")
    message = str(wrong.value)
    assert message.startswith("shop: GET customers: ")
    assert "column 'id' (JSON id): 1 value(s) are not int, e.g. 'x2'" in message
    assert "column 'spent' (JSON total_spent): 1 value(s) are not decimal, e.g. '12,50'" in message
    assert "column 'updated_at' (JSON date_modified_gmt)" in message


def test_a_structure_that_does_not_fit_is_an_error() -> None:
    with pytest.raises(ConnectorError, match="do not fit the connector's declared columns"):
        CUSTOMER.frame(orjson.dumps([{"id": 1, "billing": "not an object"}]), system="shop")


def test_clashing_paths_are_refused_when_declared() -> None:
    with pytest.raises(ValueError, match="clashes"):
        RecordSchema({"billing": "text", "city": ("billing.city", "text")})
    with pytest.raises(ValueError, match="unknown type"):
        RecordSchema({"id": "integer"})  # type: ignore[dict-item]


def test_pages_hand_their_raw_body_to_the_frame(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    router.get("/customers").mock(
        side_effect=lambda r: httpx.Response(
            200, json=WOO if r.url.params["page"] == "1" else [], headers={"X-WP-TotalPages": "1"}
        )
    )
    query = (
        "query($after: String) { products(first: 50, after: $after) "
        "{ nodes { id price } pageInfo { hasNextPage endCursor } } }"
    )
    router.post("/graphql.json").mock(
        return_value=httpx.Response(
            200,
            json={"data": {"products": {"nodes": [{"id": "p1", "price": "5.00"}], "pageInfo": {"hasNextPage": False}}}},
        )
    )
    with HttpClient("shop", base_url, transport=transport) as client:
        woo = [page.frame(CUSTOMER) for page in client.pages(PageRequest("customers"), PageNumber(10))]
        gql = [
            page.frame(RecordSchema({"id": "text", "price": "decimal"}))
            for page in client.pages(
                PageRequest("graphql.json", method="POST", json={"query": query}), GraphQLCursor("data.products")
            )
        ]
    assert [f.height for f in woo] == [3]
    assert gql[0].rows() == [("p1", "5.00")]
