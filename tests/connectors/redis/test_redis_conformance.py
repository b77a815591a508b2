"""The Redis sink meets the connector contract (`kanal.testing`) with stock levels, on a real Valkey."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
from pydantic import SecretStr

from kanal.connectors.redis import CONNECTOR, RedisConfig, RedisInventory
from kanal.testing import Harness, SinkContract
from tests.connectors.redis.conftest import Server


class RedisHarness(Harness):
    spec = CONNECTOR
    entity = "stock_levels"

    def __init__(self, server: Server) -> None:
        self.server = server

    def config(self, password: str | None = None) -> RedisConfig:
        return RedisConfig(url=SecretStr(self.server.url(password) if password else self.server.url()))

    def bad_credentials(self) -> RedisConfig:
        return self.config("not-the-password")

    def read(self) -> pl.DataFrame:
        with RedisInventory(config=self.config()) as inventory:
            held = inventory.read("stock_levels")
        return held.select("sku", "location", "available") if held.height else pl.DataFrame(
            schema={"sku": pl.String, "location": pl.String, "available": pl.String}
        )

    def refuse(self, record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "location": "WH:1"}  # ':' separates the parts of keys


class TestRedisSink(SinkContract):
    @pytest.fixture
    def harness(self, redis_server: Server, redis_url: str) -> Harness:
        return RedisHarness(redis_server)
