"""jsonapi against its simulator, held to Kanal's connector contract (kanal.testing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest

from kanal.core.connector import EntityOptions
from kanal.core.model import entity as canonical
from kanal.core.validate import KEY
from kanal.testing import Harness, SourceContract, SinkContract
from kanal_jsonapi import CONNECTOR, JsonapiConfig
from kanal_jsonapi.simulator import Simulator


class SimulatorHarness(Harness):
    """How the kit reaches the system: the simulator's URL and token, its records in memory."""

    spec = CONNECTOR

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator

    def config(self) -> JsonapiConfig:
        return JsonapiConfig(url=self.simulator.url, token=self.simulator.token)

    def bad_credentials(self) -> JsonapiConfig:
        return JsonapiConfig(url=self.simulator.url, token="not-the-token")

    def delta_options(self) -> EntityOptions:
        assert CONNECTOR.source is not None
        return CONNECTOR.source.entity_options.model_validate({"delta": {"cursor": "updated_at"}})

    def seed(self, frame: pl.DataFrame) -> None:
        self.simulator.clear(self.entity)
        self.change(frame)

    def change(self, frame: pl.DataFrame) -> None:
        self.simulator.put(self.entity, json.loads(frame.rename({KEY: "key"}).write_json()))

    def read(self) -> pl.DataFrame:
        columns = (*canonical(self.entity).key, self.marker)
        return pl.DataFrame(self.simulator.records(self.entity), schema=dict.fromkeys(columns, pl.String))

    def refuse(self, record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "name": ""}  # the API refuses blank text


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with Simulator() as running:
        yield running


class TestJsonapi(SourceContract, SinkContract):
    @pytest.fixture
    def harness(self, simulator: Simulator) -> Harness:
        return SimulatorHarness(simulator)
