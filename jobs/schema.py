"""`kanal schema`: the JSON Schema of a job file, for editors and CI checks.

The schema is made from the same pydantic models `kanal validate` uses
(`jobs.model`), completed with each installed connector's own models: under
`source:` or a sink, the `config:` block and every entity's options are
checked against the connector named beside them. An editor with the YAML
language server completes and checks a job file that starts with::

    # yaml-language-server: $schema=kanal-job.schema.json

after `kanal schema > kanal-job.schema.json`.

Values may be `${VAR}` references (`jobs.load` substitutes them before
validating), so every number or boolean also accepts such a reference.
`kanal validate` stays the full check: it also knows which mapping files
exist and which delta kinds a connector reads.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from kanal.core import registry
from kanal.core.connector import ConnectorSpec
from kanal.core.model import ENTITIES
from kanal.jobs.model import Job, SinkSpec, SourceSpec

_REF = "#/$defs/{model}"
_VARIABLE = {"type": "string", "pattern": r"^.*\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}.*$"}


def job_schema(connectors: dict[str, ConnectorSpec] | None = None) -> dict[str, Any]:
    """The job-file schema with the options of `connectors` (default: every installed one)."""
    connectors = registry.installed() if connectors is None else connectors
    models: list[type[BaseModel]] = [Job]
    for spec in connectors.values():
        models.append(spec.config)
        models.extend(side.entity_options for side in (spec.source, spec.sink) if side is not None)
    unique = list(dict.fromkeys(models))
    refs, top = models_json_schema([(m, "validation") for m in unique], ref_template=_REF)
    defs: dict[str, Any] = top["$defs"]

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return dict(refs[(model, "validation")])

    job = defs.pop(Job.__name__)
    sources = {n: s for n, s in connectors.items() if s.source is not None}
    sinks = {n: s for n, s in connectors.items() if s.sink is not None}
    defs[SourceSpec.__name__] = _per_connector(defs[SourceSpec.__name__], sources, "source", ref)
    defs[SinkSpec.__name__] = _per_connector(defs[SinkSpec.__name__], sinks, "sink", ref)
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **job,
        "title": "Kanal job file",
        "description": "A Kanal job: the source, the sinks and the Kafka connection (see docs/job-file.md).",
        "$defs": defs,
    }
    return _accept_variables(schema)


def _per_connector(
    spec_schema: dict[str, Any], connectors: dict[str, ConnectorSpec], side: str, ref: Any
) -> dict[str, Any]:
    """A source or sink block: the connector's name picks the schemas of `config` and the entity options."""
    properties = dict(spec_schema["properties"])
    properties["connector"] = {**properties["connector"], "enum": sorted(connectors)}
    properties["entities"] = {**properties["entities"], "propertyNames": {"enum": list(ENTITIES)}}
    rules = []
    for name, spec in connectors.items():
        options = getattr(spec, side).entity_options
        entity = {"anyOf": [ref(options), {"type": "null"}]}
        rules.append({
            "if": {"properties": {"connector": {"const": name}}, "required": ["connector"]},
            "then": {
                "properties": {
                    "config": ref(spec.config),
                    "entities": {
                        "properties": {e: entity for e in spec.capabilities.entities},
                        "additionalProperties": False,
                    },
                },
            },
        })  # fmt: skip
    return {**spec_schema, "properties": properties, "allOf": rules}


def _accept_variables(node: Any) -> Any:
    """Let every number and boolean also be a `${VAR}` reference (substituted before validation)."""
    if isinstance(node, list):
        return [_accept_variables(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _accept_variables(v) for k, v in node.items()}
    if node.get("type") in ("integer", "number", "boolean"):
        typed = {k: node.pop(k) for k in list(node) if k not in ("title", "description", "default")}
        node["anyOf"] = [typed, _VARIABLE]
    return node
