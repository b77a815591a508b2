"""A simulated shop per test, the CLI with its token in the environment, and sinks and frames for direct writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from kanal.connectors.shopify import ShopifyConfig, ShopifySink
from kanal.connectors.shopify.simulator import Simulator
from kanal.core.model import Entity
from kanal.core.sinkmemory import SinkMemory
from tests.conftest import Cli

TOKEN = "shpat_test_token"


def canonical_frame(entity: Entity, rows: list[dict]) -> pl.DataFrame:
    """Rows as the engine hands them to sinks: every canonical column, and the key."""
    given = pl.DataFrame(rows, infer_schema_length=None)
    columns = [(pl.col(n) if n in given.columns else pl.lit(None)).cast(t).alias(n) for n, t in entity.schema.items()]
    return given.select(columns).with_columns(entity.key_expr())


def shopify_sink(shop: Simulator, folder: Path, **settings: object) -> ShopifySink:
    """A sink writing to `shop`, its memory in `folder`."""
    sink = ShopifySink(ShopifyConfig(shop_url=shop.url, access_token=settings.pop("token", TOKEN), **settings))  # type: ignore[arg-type]
    sink.attach(SinkMemory(folder / "memory.sqlite"))
    return sink


@pytest.fixture
def shop() -> Iterator[Simulator]:
    with Simulator(token=TOKEN) as sim:
        yield sim


@pytest.fixture
def sink(shop: Simulator, tmp_path: Path) -> Iterator[ShopifySink]:
    instance = shopify_sink(shop, tmp_path)
    yield instance
    instance.close()


@pytest.fixture
def shop_cli(cli: Cli) -> Cli:
    cli.env["SHOPIFY_TOKEN"] = TOKEN
    return cli
