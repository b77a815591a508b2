"""A simulated shop per test, and the CLI with its token in the environment."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kanal.connectors.shopify.simulator import Simulator
from tests.conftest import Cli

TOKEN = "shpat_test_token"


@pytest.fixture
def shop() -> Iterator[Simulator]:
    with Simulator(token=TOKEN) as sim:
        yield sim


@pytest.fixture
def shop_cli(cli: Cli) -> Cli:
    cli.env["SHOPIFY_TOKEN"] = TOKEN
    return cli
