"""The rate-limit budget: fed by what the API says, shared per credential, delta lane first."""

from __future__ import annotations

import threading
import time
from email.utils import formatdate

import httpx
import pytest
import respx

from kanal.core.errors import ConnectorError, Unreachable
from kanal.core.http import Bearer, Budget, BudgetSpec, HttpClient, Lane, parse_retry_after
from tests.waiting import wait_for

NOW = 1_700_000_000.0


def test_retry_after_in_seconds_as_an_http_date_and_zero() -> None:
    assert parse_retry_after("5", NOW) == 5
    assert parse_retry_after("1.5", NOW) == 1.5  # Shopify REST may send fractions
    assert parse_retry_after(formatdate(NOW + 30, usegmt=True), NOW) == 30
    assert parse_retry_after(formatdate(NOW - 30, usegmt=True), NOW) == 0  # already past
    assert parse_retry_after("0", NOW) == 0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("inf", NOW) is None


def test_a_throttle_pauses_at_least_the_floor() -> None:
    budget = Budget("api.test requests", BudgetSpec(min_retry_after_s=2.0))
    assert budget.observe(429, {"Retry-After": "0"}) == 2.0  # Retry-After: 0 must not become a tight loop
    assert budget.observe(429, {"Retry-After": "7"}) == 7.0
    status = budget.status()
    assert status.throttled == 2
    assert 6 < status.paused_s <= 7


def test_the_budget_learns_from_rate_headers_and_waits_for_the_reset() -> None:
    budget = Budget("api.test requests", BudgetSpec())
    budget.observe(200, {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "3600"})
    status = budget.status()
    assert (status.capacity, status.available) == (100, 0)
    # the window resets in an hour: a request gives up at once rather than block past its retry budget
    with pytest.raises(ConnectorError, match="wait 3600 s"):
        budget.acquire(Lane.BACKFILL, give_up_after_s=300)
    epoch = Budget("api.test requests", BudgetSpec(), wall=lambda: NOW)
    epoch.observe(
        200, {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW + 90))}
    )
    with pytest.raises(ConnectorError, match="wait 90 s"):
        epoch.acquire(Lane.BACKFILL, give_up_after_s=60)


def test_a_budget_declared_unknown_takes_the_capacity_the_api_announces() -> None:
    budget = Budget("api.test requests", BudgetSpec())
    assert budget.status().capacity is None
    budget.observe(200, {"X-RateLimit-Limit": "60"})
    assert (budget.status().capacity, budget.status().available) == (60, 60)


def test_shopify_call_limit_and_graphql_cost_set_the_bucket() -> None:
    rest = Budget("shop.test rest", BudgetSpec(name="rest", capacity=40, refill_per_s=2))
    rest.observe(200, {"X-Shopify-Shop-Api-Call-Limit": "32/40"})
    assert rest.status().available == pytest.approx(8, abs=0.1)

    gql = Budget("shop.test graphql", BudgetSpec(name="graphql"))
    body = {
        "data": {},
        "extensions": {
            "cost": {
                "requestedQueryCost": 52,
                "actualQueryCost": 12,
                "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 1988, "restoreRate": 100.0},
            }
        },
    }
    assert gql.observe_graphql(body, "products-query") is None
    status = gql.status()
    assert (status.capacity, status.refill_per_s) == (2000, 100)
    assert status.available == pytest.approx(1988, abs=5)
    assert gql.cost_of("products-query") == 52  # the next call of that query waits until it can pay
    assert gql.cost_of("other-query") == 1


def test_a_throttled_graphql_body_pauses_until_the_bucket_can_pay() -> None:
    budget = Budget("shop.test graphql", BudgetSpec(name="graphql", min_retry_after_s=0.01))
    throttled = {
        "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
        "extensions": {
            "cost": {
                "requestedQueryCost": 202,
                "actualQueryCost": None,
                "throttleStatus": {"maximumAvailable": 1000.0, "currentlyAvailable": 2, "restoreRate": 50.0},
            }
        },
    }
    assert budget.observe_graphql(throttled, "q") == pytest.approx(4.0)  # (202 - 2) / 50
    assert budget.status().throttled == 1


def test_a_waiting_delta_request_goes_before_every_waiting_backfill_request() -> None:
    budget = Budget("erp.test requests", BudgetSpec(capacity=10))
    budget.learn(available=0, reset_in_s=3600)  # spent until further notice
    order: list[str] = []

    def take(name: str, lane: Lane) -> None:
        budget.acquire(lane)
        order.append(name)

    threads = []
    arrivals = (("backfill-1", Lane.BACKFILL), ("backfill-2", Lane.BACKFILL), ("delta-1", Lane.DELTA))
    for queued, (name, lane) in enumerate(arrivals, start=1):
        threads.append(threading.Thread(target=take, args=(name, lane), daemon=True))
        threads[-1].start()
        wait_for(lambda q=queued: sum(budget.status().waiting.values()) == q, 10, f"{name} queued")
    assert order == []
    for granted in range(1, 4):
        budget.learn(available=1)  # the API announces one more request
        wait_for(lambda g=granted: len(order) == g, 10, f"grant {granted} taken")
    assert order == ["delta-1", "backfill-1", "backfill-2"]
    assert budget.status().waits == 3


def test_a_stop_request_ends_a_wait_for_the_budget() -> None:
    budget = Budget("erp.test requests", BudgetSpec())
    budget.throttle(3600)
    cancel = threading.Event()
    failed: list[BaseException] = []

    def take() -> None:
        try:
            budget.acquire(Lane.BACKFILL, cancel=cancel)
        except Unreachable as exc:
            failed.append(exc)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    wait_for(lambda: budget.status().waiting["backfill"] == 1, 10, "the request waits")
    started = time.monotonic()
    cancel.set()
    thread.join(10)
    assert failed and "stopped" in str(failed[0])
    assert time.monotonic() - started < 5


def test_one_budget_per_credential_shared_by_every_client(
    base_url: str, router: respx.Router, transport: httpx.MockTransport
) -> None:
    router.get("/products.json").mock(
        return_value=httpx.Response(200, json={"products": []}, headers={"X-Shopify-Shop-Api-Call-Limit": "40/40"})
    )
    spec = BudgetSpec(name="rest", capacity=40, refill_per_s=2)
    with (
        HttpClient("shop", base_url, Bearer("token-aaa"), budget=spec, transport=transport) as job_a,
        HttpClient("shop", base_url + "/", Bearer("token-aaa"), budget=spec, transport=transport) as job_b,
        HttpClient("shop", base_url, Bearer("token-bbb"), budget=spec, transport=transport) as other_app,
    ):
        assert job_a.budget is job_b.budget
        assert other_app.budget is not job_a.budget
        job_a.request("GET", "products.json")  # the shop says: bucket full
        assert job_b.budget.status().available == pytest.approx(0, abs=0.5)
        assert other_app.budget.status().available == 40
