"""The conformance kit: the contract every Kanal connector meets, as pytest tests you inherit.

A connector author writes a `Harness` (how to reach the system, put records
into it and read them back) and one test class::

    import pytest
    from kanal.testing import Harness, SinkContract, SourceContract

    class TestMySystem(SourceContract, SinkContract):
        @pytest.fixture
        def harness(self, simulator) -> Harness:
            return MyHarness(simulator)

The kit checks check/discover/plan/snapshot shapes, chunk ids stable across
runs, idempotent re-writes, older versions never winning, deletes and
truncates (if declared), deltas after a position arriving once (if a delta
kind is declared), refused credentials raising `AuthError` at once and a
refused record isolated. See docs/connectors.md.

Kanal registers `kanal.testing.plugin` with pytest (entry point `pytest11`),
so the kit's assertions explain themselves in any project that installs Kanal.
"""

import pytest

pytest.register_assert_rewrite("kanal.testing.contract")

from kanal.testing.contract import SinkContract, SourceContract  # noqa: E402
from kanal.testing.harness import BASE_TIME, MARKERS, Harness, as_changes, micros, truncate_row  # noqa: E402

__all__ = ["BASE_TIME", "MARKERS", "Harness", "SinkContract", "SourceContract", "as_changes", "micros", "truncate_row"]
