"""`kanal connector new`: the generated package installs and passes its conformance tests unchanged."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.kit.conftest import EXAMPLE, KANAL, install


def _new(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KANAL, "connector", "new", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("side", ["source", "sink"])
def test_a_generated_package_installs_registers_and_passes_its_tests(tmp_path: Path, side: str) -> None:
    made = _new(tmp_path, "acme_erp", f"--{side}", "--dir", "pkgs")
    assert made.returncode == 0, made.stderr
    folder = tmp_path / "pkgs" / "kanal-acme-erp"
    other = "sink" if side == "source" else "source"
    assert (folder / "kanal_acme_erp" / f"{side}.py").is_file() and not (folder / "kanal_acme_erp" / f"{other}.py").exists()
    assert "pip install -e ." in made.stdout and "pytest" in made.stdout  # the next commands

    installed = install(folder, tmp_path / "installed")
    proc, results = installed.pytest()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "failed" not in results.values(), results
    signature = "test_deltas_after" if side == "source" else "test_an_older_version_never_replaces"
    assert [outcome for name, outcome in results.items() if signature in name] == ["passed"], results

    listed = installed.kanal("connectors", "--json")
    specs = {spec["name"]: spec for spec in map(json.loads, listed.stdout.splitlines())}
    assert specs["acme_erp"][side] is True and specs["acme_erp"][other] is False
    assert set(specs["acme_erp"]["entity_options"]) == {side}


def test_names_are_checked_and_nothing_is_overwritten(tmp_path: Path) -> None:
    bad = _new(tmp_path, "Acme-ERP")
    assert bad.returncode == 2 and "connector name 'Acme-ERP'" in bad.stderr
    taken = _new(tmp_path, "postgres")
    assert taken.returncode == 2 and "already installed" in taken.stderr
    assert not list(tmp_path.iterdir())
    (tmp_path / "kanal-acme").mkdir()
    (tmp_path / "kanal-acme" / "mine.txt").write_text("keep")
    existing = _new(tmp_path, "acme")
    assert existing.returncode == 2 and "already exists" in existing.stderr
    assert [p.name for p in (tmp_path / "kanal-acme").iterdir()] == ["mine.txt"]


def test_the_example_package_is_what_the_scaffold_generates(tmp_path: Path) -> None:
    assert _new(tmp_path, "jsonapi").returncode == 0
    generated = tmp_path / "kanal-jsonapi"

    def files(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}

    assert files(generated) == files(EXAMPLE), "examples/kanal-jsonapi is out of date: regenerate it with `kanal connector new jsonapi --dir examples`"
