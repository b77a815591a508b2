"""Per-request retries and what each answer means: waited out, refused, or one record's failure."""

from __future__ import annotations

import gzip
import time

import httpx
import orjson
import pytest
import respx

from kanal.core.errors import AuthError, ConnectorError, Unreachable
from kanal.core.http import (
    BudgetSpec,
    HeaderToken,
    HttpClient,
    HttpError,
    PageNumber,
    PageRequest,
    RecordFailure,
    failures_frame,
)
from kanal.core.retry import RetryPolicy
from kanal.core.validate import KEY


class Arrivals:
    """A respx side effect answering from a script and noting when each request arrived."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.times.append(time.monotonic())
        return self.answers.pop(0)

    def gap(self, index: int) -> float:
        return self.times[index] - self.times[index - 1]


def test_a_burst_of_502_and_503_is_waited_out(
    base_url: str, router: respx.Router, transport: httpx.MockTransport, fast: RetryPolicy
) -> None:
    route = router.get("/products").mock(
        side_effect=[
            httpx.Response(502),
            httpx.Response(503),
            httpx.Response(503),
            httpx.Response(200, json=[{"id": 1}]),
        ]
    )
    retries: list[int] = []
    with HttpClient(
        "shop", base_url, transport=transport, retry=fast, on_retry=lambda exc, n: retries.append(n)
    ) as client:
        assert client.request("GET", "products").json() == [{"id": 1}]
    assert route.call_count == 4
    assert retries == [1, 2, 3]


def test_an_outage_longer_than_the_retry_budget_fails_with_the_last_answer(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    router.get("/products").mock(return_value=httpx.Response(503, text="maintenance"))
    policy = RetryPolicy(max_elapsed_s=0.3, initial_s=0.01, max_wait_s=0.05)
    with HttpClient("shop", base_url, transport=transport, retry=policy) as client:
        with pytest.raises(Unreachable, match=r"503.*maintenance"):
            client.request("GET", "products")


def test_connection_errors_are_retried(
    base_url: str, router: respx.Router, transport: httpx.MockTransport, fast: RetryPolicy
) -> None:
    route = router.get("/products").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.Response(200, json=[])]
    )
    with HttpClient("shop", base_url, transport=transport, retry=fast) as client:
        assert client.request("GET", "products").status_code == 200
    assert route.call_count == 3


def test_retry_after_zero_is_held_to_the_floor(
    base_url: str, router: respx.Router, transport: httpx.MockTransport, fast: RetryPolicy
) -> None:
    script = Arrivals(httpx.Response(429, headers={"Retry-After": "0"}), httpx.Response(200, json=[]))
    router.get("/products").mock(side_effect=script)
    with HttpClient(
        "shop", base_url, transport=transport, retry=fast, budget=BudgetSpec(min_retry_after_s=0.3)
    ) as client:
        client.request("GET", "products")
        assert client.budget.status().throttled == 1
    assert script.gap(1) >= 0.3


def test_fractional_retry_after_is_honoured(
    base_url: str, router: respx.Router, transport: httpx.MockTransport, fast: RetryPolicy
) -> None:
    script = Arrivals(httpx.Response(429, headers={"Retry-After": "0.4"}), httpx.Response(200, json=[]))
    router.get("/products").mock(side_effect=script)
    with HttpClient(
        "shop", base_url, transport=transport, retry=fast, budget=BudgetSpec(min_retry_after_s=0.05)
    ) as client:
        client.request("GET", "products")
    assert script.gap(1) >= 0.4


def test_a_throttle_in_a_200_graphql_body_is_waited_not_failed(
    base_url: str, router: respx.Router, transport: httpx.MockTransport, fast: RetryPolicy
) -> None:
    bucket = {"maximumAvailable": 1000.0, "currentlyAvailable": 0, "restoreRate": 50.0}
    throttled = {
        "errors": [
            {
                "message": "Throttled",
                "extensions": {"code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"},
            }
        ],
        "extensions": {"cost": {"requestedQueryCost": 15, "actualQueryCost": None, "throttleStatus": bucket}},
    }
    served = {
        "data": {"shop": {"name": "Demo"}},
        "extensions": {
            "cost": {
                "requestedQueryCost": 15,
                "actualQueryCost": 1,
                "throttleStatus": {**bucket, "currentlyAvailable": 14},
            }
        },
    }
    script = Arrivals(httpx.Response(200, json=throttled), httpx.Response(200, json=served))
    router.post("/graphql.json").mock(side_effect=script)
    spec = BudgetSpec(name="graphql", min_retry_after_s=0.05)
    with HttpClient(
        "shop",
        base_url,
        HeaderToken("X-Shopify-Access-Token", "shpat_gql_1"),
        budget=spec,
        transport=transport,
        retry=fast,
    ) as client:
        assert client.graphql("graphql.json", "{ shop { name } }") == {"shop": {"name": "Demo"}}
        status = client.budget.status()
    assert status.throttled == 1
    assert script.gap(1) >= 0.3  # (15 - 0) points at 50 per second
    assert status.capacity == 1000


def test_graphql_errors_other_than_throttling_are_not_retried(
    base_url: str, router: respx.Router, transport: httpx.MockTransport, fast: RetryPolicy
) -> None:
    denied = {"errors": [{"message": "Access denied for products field.", "extensions": {"code": "ACCESS_DENIED"}}]}
    route = router.post("/graphql.json").mock(return_value=httpx.Response(200, json=denied))
    with HttpClient("shop", base_url, transport=transport, retry=fast) as client:
        with pytest.raises(AuthError, match="Access denied for products"):
            client.graphql("graphql.json", "{ products(first: 1) { nodes { id } } }")
        route.mock(
            return_value=httpx.Response(
                200, json={"errors": [{"message": "Field 'nope' doesn't exist on type 'Product'"}]}
            )
        )
        with pytest.raises(ConnectorError, match="nope"):
            client.graphql("graphql.json", "{ products(first: 1) { nodes { nope } } }")
    assert route.call_count == 2


def test_a_record_the_api_refuses_is_a_record_failure_and_the_others_are_written(
    base_url: str, router: respx.Router, transport: httpx.MockTransport, fast: RetryPolicy
) -> None:
    def woo(request: httpx.Request) -> httpx.Response:
        product = orjson.loads(request.content)
        if product["sku"] == "B":
            return httpx.Response(
                400,
                json={"code": "product_invalid_sku", "message": "Invalid or duplicated SKU.", "data": {"status": 400}},
            )
        if product["sku"] == "C":
            return httpx.Response(422, json={"errors": {"regular_price": ["is not a number"]}})
        return httpx.Response(201, json={"id": 7, **product})

    route = router.post("/products").mock(side_effect=woo)
    with HttpClient("shop", base_url, transport=transport, retry=fast) as client:
        outcomes = [client.submit("POST", "products", json={"sku": sku}, key=sku) for sku in ("A", "B", "C", "D")]
    assert route.call_count == 4  # refused records are not retried
    assert [o.status_code if isinstance(o, httpx.Response) else None for o in outcomes] == [201, None, None, 201]
    failures = [o for o in outcomes if isinstance(o, RecordFailure)]
    assert failures == [
        RecordFailure(400, "Invalid or duplicated SKU.", "B"),
        RecordFailure(422, "regular_price: is not a number", "C"),
    ]
    frame = failures_frame(failures)
    assert frame is not None and frame.columns == [KEY, "reason"]
    assert frame.rows() == [
        ("B", "HTTP 400: Invalid or duplicated SKU."),
        ("C", "HTTP 422: regular_price: is not a number"),
    ]


def test_a_404_on_a_list_is_an_error_naming_the_request_not_retried(
    base_url: str, router: respx.Router, transport: httpx.MockTransport, fast: RetryPolicy
) -> None:
    route = router.get("/prodcts").mock(
        return_value=httpx.Response(404, json={"code": "rest_no_route", "message": "No route was found"})
    )
    with HttpClient("shop", base_url, transport=transport, retry=fast) as client:
        with pytest.raises(HttpError, match=r"GET .*/v1/prodcts answered 404 Not Found: No route was found") as refused:
            client.request("GET", "prodcts")
    assert refused.value.status == 404
    assert route.call_count == 1


def test_a_page_that_is_not_json_is_an_error_naming_the_request(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    router.get("/products").mock(return_value=httpx.Response(200, text="<html>Maintenance mode</html>"))
    with HttpClient("shop", base_url, transport=transport) as client:
        with pytest.raises(ConnectorError, match="shop: GET products answered 200 without JSON: '<html>Maintenance"):
            list(client.pages(PageRequest("products"), PageNumber(10, pages_header=None)))


def test_a_redirect_is_refused_rather_than_followed(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    # followed, a 302 turns this POST into a GET that "succeeds" and writes nothing
    route = router.post("/products").mock(
        return_value=httpx.Response(302, headers={"Location": "https://elsewhere.test/products"})
    )
    with HttpClient("shop", base_url, transport=transport) as client:
        with pytest.raises(HttpError, match=r"moved to https://elsewhere\.test/products"):
            client.submit("POST", "products", json={"sku": "A"})
    assert route.call_count == 1


def test_credentials_are_never_sent_to_another_host(base_url: str, transport: httpx.MockTransport) -> None:
    with HttpClient("shop", base_url, HeaderToken("X-Api-Key", "key-123456"), transport=transport) as client:
        with pytest.raises(ConnectorError, match="refusing to send credentials"):
            client.request("GET", "https://evil.test/steal")


def test_gzip_answers_are_asked_for_and_decoded(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    payload = orjson.dumps([{"id": n, "name": "x" * 50} for n in range(100)])
    route = router.get("/products").mock(
        return_value=httpx.Response(
            200,
            content=gzip.compress(payload),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
    )
    with HttpClient("shop", base_url, transport=transport) as client:
        assert client.request("GET", "products").content == payload
    assert "gzip" in route.calls[0].request.headers["Accept-Encoding"]
