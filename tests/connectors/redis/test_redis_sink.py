"""The Redis sink's own promises beyond the kit: availability hashes, tombstones, exact versions, the stream, one call per batch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest
from pydantic import SecretStr

from kanal.connectors.redis import MAX_BATCH_ROWS, RedisConfig, RedisInventory, RedisSink
from kanal.core.connector import DELETE, OP, UPSERT, VERSION
from kanal.core.errors import AuthError
from kanal.core.model import entity
from tests.connectors.redis.conftest import PASSWORD, Server

AVAILABILITY = entity("availability")


def changes(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Availability records as the engine hands them over: canonical columns, key, op and position."""
    frame = pl.DataFrame(
        [{k: v for k, v in r.items() if k not in ("op", "position")} for r in rows], schema=AVAILABILITY.schema, orient="row"
    )
    return frame.with_columns(
        AVAILABILITY.key_expr(),
        pl.Series(OP, [r.get("op", UPSERT) for r in rows]),
        pl.Series(VERSION, [r.get("position") for r in rows], pl.Int64),
    )


@pytest.fixture
def sink(redis_url: str) -> Iterator[RedisSink]:
    sink = RedisSink(RedisConfig(url=SecretStr(redis_url), stream_maxlen=10))
    sink.check()
    sink.prepare("availability", sink.entity_options())
    yield sink
    sink.close()


@pytest.fixture
def inventory(redis_url: str) -> Iterator[RedisInventory]:
    with RedisInventory(redis_url) as inventory:
        yield inventory


def write(sink: RedisSink, *rows: dict[str, Any]) -> tuple[int, int]:
    result = sink.write("availability", sink.entity_options(), changes(list(rows)), "test")
    assert result.failed is None
    return result.written, result.skipped_older


def test_availability_is_a_hash_per_channel_and_sku_and_an_older_version_never_wins(
    sink: RedisSink, inventory: RedisInventory
) -> None:
    assert write(sink, {"sku": "A", "channel": "web", "quantity": "5", "version": "7"}) == (1, 0)
    assert write(sink, {"sku": "A", "channel": "web", "quantity": "9", "version": "6"}) == (0, 1)
    assert write(sink, {"sku": "A", "channel": "web", "quantity": "5", "version": "7"}) == (1, 0)  # equal: idempotent
    assert inventory.availability("A", "web") == {"sku": "A", "channel": "web", "quantity": "5", "version": "7"}
    assert write(sink, {"sku": "A", "channel": "web", "quantity": "4", "version": "8"}) == (1, 0)
    assert inventory.availability("A", "web")["quantity"] == "4"  # type: ignore[index]


def test_versions_are_compared_exactly_beyond_float_precision(sink: RedisSink, inventory: RedisInventory) -> None:
    big = 2**53  # as Lua numbers (doubles), 2**53 and 2**53 + 1 are equal
    write(sink, {"sku": "A", "channel": "web", "quantity": "1", "version": str(big + 1)})
    assert write(sink, {"sku": "A", "channel": "web", "quantity": "2", "version": str(big)}) == (0, 1)
    assert write(sink, {"sku": "A", "channel": "web", "quantity": "3", "version": f"{big + 1}.5"}) == (1, 0)
    assert inventory.availability("A", "web")["quantity"] == "3"  # type: ignore[index]


def test_a_delete_removes_the_key_and_its_tombstone_keeps_a_late_older_record_out(
    sink: RedisSink, inventory: RedisInventory
) -> None:
    write(sink, {"sku": "A", "channel": "web", "quantity": "5", "position": 100})
    assert write(sink, {"sku": "A", "channel": "web", "op": DELETE, "position": 90}) == (0, 1)  # older than the record
    assert write(sink, {"sku": "A", "channel": "web", "op": DELETE, "position": 110}) == (1, 0)
    assert inventory.availability("A", "web") is None
    assert write(sink, {"sku": "A", "channel": "web", "quantity": "5", "position": 100}) == (0, 1)  # a replay
    assert inventory.availability("A", "web") is None
    assert write(sink, {"sku": "A", "channel": "web", "quantity": "2", "position": 120}) == (1, 0)
    assert inventory.availability("A", "web")["quantity"] == "2"  # type: ignore[index]


def test_each_applied_change_is_on_the_stream_which_stays_bounded(
    sink: RedisSink, inventory: RedisInventory, redis_server: Server
) -> None:
    write(sink, {"sku": "A", "channel": "web", "quantity": "5", "version": "1"}, {"sku": "B", "channel": "web", "quantity": "0", "version": "1"})
    write(sink, {"sku": "A", "channel": "web", "quantity": "9", "version": "0"})  # skipped: not published
    write(sink, {"sku": "B", "channel": "web", "quantity": "0", "version": "1"})  # re-delivered: nothing new
    entries = [fields for _, fields in inventory.changes("availability")]
    assert [(e["key"], e["op"], e["quantity"], e["version"]) for e in entries] == [
        ("kanal:availability:web:A", "upsert", "5", "1"), ("kanal:availability:web:B", "upsert", "0", "1"),
    ]
    for version in range(2, 400):
        write(sink, {"sku": "A", "channel": "web", "quantity": "1", "version": str(version)})
    with redis_server.client() as client:
        assert client.xlen("kanal:availability:changes") < 250  # MAXLEN ~ 10: trimmed in whole nodes of 100


def test_a_batch_is_one_script_call(sink: RedisSink, redis_server: Server, inventory: RedisInventory) -> None:
    rows = [{"sku": f"S{i}", "channel": "web", "quantity": str(i), "version": "1"} for i in range(MAX_BATCH_ROWS)]
    with redis_server.client() as client:
        client.config_resetstat()
        assert write(sink, *rows) == (MAX_BATCH_ROWS, 0)
        calls = {k: v["calls"] for k, v in client.info("commandstats").items() if k in ("cmdstat_evalsha", "cmdstat_eval")}
    assert sum(calls.values()) == 1, calls
    assert inventory.read("availability").height == MAX_BATCH_ROWS


def test_refused_records_are_named_and_the_others_written(sink: RedisSink, inventory: RedisInventory) -> None:
    frame = changes([
        {"sku": "A", "channel": "web", "quantity": "1", "version": "1"},
        {"sku": "B", "channel": "web:eu", "quantity": "1", "version": "1"},
        {"sku": "C", "channel": "web", "quantity": "1", "version": "-3"},
        {"sku": "D", "channel": "web", "op": "truncate", "position": 5},
    ])  # fmt: skip
    result = sink.write("availability", sink.entity_options(), frame, "test")
    assert result.written == 1
    assert result.failed is not None
    reasons = dict(result.failed.iter_rows())
    assert list(reasons) == ["B|web:eu", "C|web", "D|web"]
    assert "contains ':'" in reasons["B|web:eu"] and "non-negative" in reasons["C|web"] and "truncate" in reasons["D|web"]
    assert inventory.read("availability").get_column("sku").to_list() == ["A"]


def test_a_wrong_password_is_an_auth_error_that_never_shows_the_password(redis_server: Server) -> None:
    sink = RedisSink(RedisConfig(url=SecretStr(redis_server.url("wrong-password-123"))))
    with pytest.raises(AuthError) as caught:
        sink.check()
    sink.close()
    assert "wrong-password-123" not in str(caught.value) and PASSWORD not in sink.system
    assert str(redis_server.sock) in str(caught.value)  # the place is named
