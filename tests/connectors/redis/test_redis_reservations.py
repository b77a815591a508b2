"""Reservations against the availability read model: atomic, idempotent per id, expiring by the server's clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import polars as pl
import pytest
from pydantic import SecretStr

from kanal.connectors.redis import RedisConfig, RedisInventory, RedisSink
from kanal.core.model import entity
from tests.waiting import wait_for

AVAILABILITY = entity("availability")


def publish(url: str, sku: str, channel: str, quantity: str, version: str) -> None:
    """Availability as the sink writes it."""
    sink = RedisSink(RedisConfig(url=SecretStr(url)))
    row = {"sku": sku, "channel": channel, "quantity": quantity, "version": version}
    frame = pl.DataFrame([row], schema=AVAILABILITY.schema).with_columns(AVAILABILITY.key_expr())
    assert sink.write("availability", sink.entity_options(), frame, "test").written == 1
    sink.close()


@pytest.fixture
def inventory(redis_url: str) -> Iterator[RedisInventory]:
    with RedisInventory(redis_url) as inventory:
        yield inventory


def test_two_checkouts_never_both_take_the_last_unit(redis_url: str) -> None:
    publish(redis_url, "LAST", "web", "1", "1")
    start = threading.Barrier(16)

    def checkout(i: int) -> bool:
        with RedisInventory(redis_url) as own:  # a checkout service instance of its own
            own.available("LAST", "web")  # connected before the race starts
            start.wait()
            return own.reserve("LAST", "web", 1, f"cart-{i}", ttl_s=60).ok

    for _ in range(5):
        with ThreadPoolExecutor(16) as pool:
            assert sum(pool.map(checkout, range(16))) == 1
        with RedisInventory(redis_url) as inventory:
            assert inventory.available("LAST", "web") == 0
            held = [i for i in range(16) if inventory.release("LAST", "web", f"cart-{i}")]
        assert len(held) == 1


def test_a_retried_reservation_holds_once_and_another_quantity_conflicts(inventory: RedisInventory, redis_url: str) -> None:
    publish(redis_url, "A", "web", "5", "1")
    first = inventory.reserve("A", "web", 2, "cart-1", ttl_s=60)
    again = inventory.reserve("A", "web", 2, "cart-1", ttl_s=60)
    assert (first.status, first.available, again.status, again.available) == ("reserved", 3, "held", 3)
    assert again.expires_at == first.expires_at
    assert inventory.reserve("A", "web", 3, "cart-1", ttl_s=60).status == "conflict"
    assert inventory.reserve("A", "web", 4, "cart-2", ttl_s=60).status == "insufficient"
    assert inventory.reserve("A", "web", 3, "cart-2", ttl_s=60).ok
    assert inventory.available("A", "web") == 0
    assert inventory.release("A", "web", "cart-1") and not inventory.release("A", "web", "cart-1")
    assert inventory.available("A", "web") == 2
    entries = [(f["op"], f["reservation_id"], f["available"]) for _, f in inventory.changes("availability") if f["op"] != "upsert"]
    assert entries == [("reserve", "cart-1", "3"), ("reserve", "cart-2", "0"), ("release", "cart-1", "2")]


def test_holds_survive_a_new_availability_and_expire_by_the_servers_clock(inventory: RedisInventory, redis_url: str) -> None:
    publish(redis_url, "A", "web", "3", "1")
    assert inventory.reserve("A", "web", 2, "cart-1", ttl_s=0.3).ok
    publish(redis_url, "A", "web", "2", "2")  # the sink replaces the hash; the hold stays counted
    assert inventory.available("A", "web") == 0
    assert not inventory.reserve("A", "web", 1, "cart-2", ttl_s=60).ok
    wait_for(lambda: inventory.available("A", "web") == 2, timeout=10, what="the hold to expire")
    assert inventory.reserve("A", "web", Decimal("1.5"), "cart-2", ttl_s=60).available == Decimal("0.5")
    assert not inventory.release("A", "web", "cart-1")  # expired: nothing to give back


def test_an_unknown_sku_has_nothing_to_reserve(inventory: RedisInventory) -> None:
    assert inventory.available("NOPE", "web") == 0
    assert inventory.reserve("NOPE", "web", 1, "cart-1", ttl_s=60).status == "insufficient"
    with pytest.raises(ValueError, match="quantity > 0"):
        inventory.reserve("NOPE", "web", 0, "cart-1", ttl_s=60)
