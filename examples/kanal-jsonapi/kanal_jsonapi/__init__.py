"""Kanal connector for jsonapi: registered under the `kanal.connectors` entry point as `jsonapi`."""

from kanal.core.connector import Capabilities, ConnectorSpec, DeltaKind
from kanal.core.model import ENTITIES
from kanal_jsonapi.config import JsonapiConfig
from kanal_jsonapi.sink import JsonapiSink
from kanal_jsonapi.source import JsonapiSource

CONNECTOR = ConnectorSpec(
    name="jsonapi",
    description="jsonapi HTTP JSON API (source and sink)",
    config=JsonapiConfig,
    capabilities=Capabilities(
        entities=tuple(ENTITIES),
        delta=(DeltaKind.NONE, DeltaKind.CURSOR),
        supports_deletes=True,
        supports_truncate=True,
        max_batch_rows=100,  # the batch endpoint takes at most 100 items
    ),
    source=JsonapiSource,
    sink=JsonapiSink,
)

__all__ = ["CONNECTOR", "JsonapiConfig"]
