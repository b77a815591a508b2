"""The example connector package (examples/kanal-jsonapi) passes the kit, and the kit fails connectors that break the contract."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.kit.conftest import EXAMPLE, KANAL, install

BROKEN = '''
import dataclasses
import uuid

import pytest

from kanal.core.connector import Chunk
from kanal.testing import SinkContract, SourceContract
from kanal_jsonapi import CONNECTOR
from kanal_jsonapi.simulator import Simulator
from kanal_jsonapi.source import JsonapiSource
from test_conformance import SimulatorHarness


class LastWriteWins(Simulator):
    """Ignores versions: a replayed older record replaces a newer one, a late record outlives a truncate."""

    def _apply(self, entity, item):
        return super()._apply(entity, {**item, "version": None})


class ChangesIgnoreTheTime(Simulator):
    """Answers every record to a "changed since" request."""

    def _changes(self, entity, since, after, limit):
        return super()._changes(entity, "1970-01-01T00:00:00+00:00", "", limit)


class SwallowsRefusals(Simulator):
    """Reports a record it refused as written."""

    def _apply(self, entity, item):
        answer = super()._apply(entity, item)
        return {"key": item["key"], "status": "applied"} if answer["status"] == "refused" else answer


class NewChunkIds(JsonapiSource):
    def plan(self, entity, options):
        return [Chunk(f"{entity}-{uuid.uuid4().hex}")]


def harness_on(simulator, spec=CONNECTOR):
    @pytest.fixture
    def harness(self):
        with simulator() as running:
            harness = SimulatorHarness(running)
            harness.spec = spec
            yield harness
    return harness


class TestLastWriteWins(SinkContract):
    harness = harness_on(LastWriteWins)


class TestChangesIgnoreTheTime(SourceContract):
    harness = harness_on(ChangesIgnoreTheTime)


class TestSwallowsRefusals(SinkContract):
    harness = harness_on(SwallowsRefusals)


class TestNewChunkIds(SourceContract):
    harness = harness_on(Simulator, dataclasses.replace(CONNECTOR, source=NewChunkIds))
'''


def test_the_example_installs_and_passes_the_kit_and_the_kit_fails_broken_variants(tmp_path: Path) -> None:
    installed = install(EXAMPLE, tmp_path)
    proc, results = installed.pytest("tests/test_conformance.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    not_passed = {name: outcome for name, outcome in results.items() if outcome != "passed"}
    # read_back is optional: the example's sink does not offer it, so `kanal verify` lists it as "not compared"
    assert not_passed == {"TestJsonapi::test_read_back_lists_every_record_held_once": "skipped"}, results
    assert len(results) == 15, results

    (installed.folder / "tests" / "test_broken.py").write_text(BROKEN)
    proc, results = installed.pytest("tests/test_broken.py")
    failed = sorted(name for name, outcome in results.items() if outcome == "failed")
    assert failed == [
        "TestChangesIgnoreTheTime::test_deltas_after_a_position_arrive_once_and_are_newer_than_the_snapshot",
        "TestLastWriteWins::test_an_older_version_never_replaces_a_newer_one",
        "TestLastWriteWins::test_truncates_apply_and_older_records_stay_out",
        "TestNewChunkIds::test_plan_is_the_same_in_every_run",
        "TestSwallowsRefusals::test_a_refused_record_is_isolated_and_the_others_are_written",
    ], proc.stdout


def test_connectors_json_gives_per_entity_option_schemas(tmp_path: Path) -> None:
    proc = subprocess.run([*KANAL, "connectors", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    specs = {spec["name"]: spec for spec in map(json.loads, proc.stdout.splitlines())}
    postgres, files = specs["postgres"], specs["files"]
    assert "dsn" in postgres["config"]["properties"]
    assert {"table", "schema", "where", "chunk_rows", "delta", "mapping"} <= set(postgres["entity_options"]["source"]["properties"])
    assert {"table", "create", "version_column"} <= set(postgres["entity_options"]["sink"]["properties"])
    assert postgres["entity_options"]["source"]["required"] == ["table"]
    assert "pattern" in files["entity_options"]["source"]["properties"]
    assert "folder" in files["entity_options"]["sink"]["properties"]
