"""Documentation that stands alone: generated references are current, every option is described,
the job-file schema accepts the examples and refuses mistakes, nothing cites a document outside the repository."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from kanal.jobs import docgen
from kanal.jobs.schema import job_schema

ROOT = Path(__file__).resolve().parent.parent


def test_generated_references_are_current() -> None:
    for name, text in docgen.pages().items():
        stored = (docgen.DOCS / name).read_text()
        assert stored == text, f"docs/{name} is stale: run `python -m kanal.jobs.docgen` and commit the result"


def test_every_option_has_a_description() -> None:
    models = [s.model for s in docgen.JOB_SECTIONS]
    for spec in docgen.builtin_connectors().values():
        models += [model for _, model in docgen.connector_models(spec)]
    assert docgen.fields_without_description(models) == []


def test_reference_lists_every_job_file_key_and_connector() -> None:
    page = (docgen.DOCS / docgen.JOB_FILE_PAGE).read_text()
    for key in ("message_rows", "max_elapsed_s", "topic_prefix", "overlap_s", "state_dir", "schedule"):
        assert f"| `{key}` |" in page
    connectors = (docgen.DOCS / docgen.CONNECTORS_PAGE).read_text()
    for name in ("postgres", "files", "shopify", "woocommerce"):
        assert f"\n## {name}\n" in connectors
    assert "| `version_column` | string or null | `updated_at` |" in connectors


def test_a_field_without_description_is_named() -> None:
    from pydantic import BaseModel

    class Undocumented(BaseModel):
        size: int = 1

    assert docgen.fields_without_description([Undocumented]) == ["Undocumented.size"]


def _example_jobs() -> list[Path]:
    found = []
    for path in sorted((ROOT / "examples").rglob("*.y*ml")):
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and "sinks" in doc and "source" in doc:
            found.append(path)
    return found


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = job_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_accepts_every_example_job(validator: jsonschema.Draft202012Validator) -> None:
    jobs = _example_jobs()
    assert jobs, "no example job file found under examples/"
    for path in jobs:
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], f"{path.relative_to(ROOT)} does not match `kanal schema`"


def test_schema_accepts_the_readme_job(validator: jsonschema.Draft202012Validator) -> None:
    readme = (ROOT / "README.md").read_text()
    jobs = [block for block in re.findall(r"```yaml\n(.*?)```", readme, re.S) if block.startswith("# job.yaml")]
    assert jobs, "README.md shows no job file starting with '# job.yaml'"
    for block in jobs:
        assert [e.message for e in validator.iter_errors(yaml.safe_load(block))] == []


def test_schema_refuses_mistakes_in_connector_options(validator: jsonschema.Draft202012Validator) -> None:
    good = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())

    def errors(change) -> list[str]:  # type: ignore[no-untyped-def]
        """The places the schema finds wrong after `change`."""
        doc = copy.deepcopy(good)
        change(doc)
        return sorted({".".join(map(str, e.absolute_path)) for e in validator.iter_errors(doc)})

    assert errors(lambda d: d["source"]["config"].update(dsnn="x")) == ["source.config"]
    assert errors(lambda d: d["sinks"][0]["entities"]["prices"].update(tabel="x")) == ["sinks.0.entities.prices"]
    assert errors(lambda d: d["sinks"][1]["config"].update(format="xlsx")) == ["sinks.1.config.format"]
    assert errors(lambda d: d["source"]["entities"].update(orders={})) == ["source.entities"]
    assert errors(lambda d: d.update(batch={"message_rows": 5})) == ["batch.message_rows"]
    assert errors(lambda d: d["source"].update(connector="oracle")) == ["source.connector"]
    assert errors(lambda d: d["sinks"][0].pop("name")) == ["sinks.0"]
    # ${VAR} is substituted before validation, so a number may be one
    assert errors(lambda d: d["kafka"].update(partitions="${PARTITIONS}")) == []


def test_kanal_schema_prints_the_schema() -> None:
    proc = subprocess.run([sys.executable, "-m", "kanal", "schema"], capture_output=True, text=True, check=True)
    schema = json.loads(proc.stdout)
    assert schema["$schema"].endswith("2020-12/schema")
    assert {"source", "sinks", "kafka"} <= set(schema["properties"])


_OUTSIDE = re.compile(r"DESIGN|§|\.\./shared|\bthe issue\b|this \d-core machine")


def test_repository_cites_no_document_outside_itself() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    here = Path(__file__).relative_to(ROOT).as_posix()
    hits = []
    for name in tracked:
        path = ROOT / name
        if name == here or path.suffix not in {".py", ".md", ".yaml", ".toml", ".tmpl", ".sql"} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if _OUTSIDE.search(line):
                hits.append(f"{name}:{number}: {line.strip()}")
    assert hits == []
