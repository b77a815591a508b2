"""A short torture run: a few fixed seeds of hostile sequences; every sink must equal the source.

Replay one sequence exactly (same actions, same writes; timing aside) with
the command its report prints: `KANAL_TORTURE_SEED=<seed>` (several: comma
separated), `KANAL_TORTURE_ACTIONS` (the bound on commands, 4 here) and
`KANAL_TORTURE_FEATURES` (see `scenario.FEATURES`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pg
from tests.torture.harness import Servers, run_sequence, stop_server
from tests.torture.scenario import features_from_env, generate

SEEDS = (216, 9, 15)


def _seeds() -> list[int]:
    chosen = os.environ.get("KANAL_TORTURE_SEED")
    return [int(s) for s in chosen.split(",")] if chosen else list(SEEDS)


@pytest.fixture(scope="module")
def servers(pg_server: pg.Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The ERP on the session's server; the shop on a server of its own that sequences stop and start."""
    sink = pg.Server.start(tmp_path_factory.mktemp("torture-sink"))
    yield Servers(pg_server, sink)
    stop_server(sink)


@pytest.mark.parametrize("seed", _seeds())
def test_sequence(seed: int, servers: Servers, tmp_path: Path) -> None:
    scenario = generate(seed, features_from_env(), max_actions=int(os.environ.get("KANAL_TORTURE_ACTIONS", "4")))
    result = run_sequence(scenario, servers, tmp_path / f"seed-{seed}")
    print(result.report())
    assert result.ok, result.report()
