"""The pytest plugin of the conformance kit (registered under the `pytest11` entry point).

It makes the kit's assertions readable (pytest rewrites them) and gives the
contract classes a `harness` fixture that explains what to provide when a
test class forgot to define its own.
"""

from __future__ import annotations

import pytest

import kanal.testing  # noqa: F401 - registers the kit's modules for assertion rewriting before they load


@pytest.fixture
def harness() -> None:
    pytest.fail(
        "the connector conformance kit needs a `harness` fixture returning a kanal.testing.Harness: "
        "define one in your test class or conftest.py (see docs/connectors.md)"
    )
