"""The WooCommerce simulator on a loopback port, one per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kanal.connectors.woocommerce.simulator import WooSimulator


@pytest.fixture
def sim() -> Iterator[WooSimulator]:
    simulator = WooSimulator().start()
    yield simulator
    simulator.stop()
