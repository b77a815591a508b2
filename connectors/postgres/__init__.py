"""PostgreSQL connector: parallel COPY snapshot and CDC/cursor delta source; bulk idempotent upsert/delete sink."""

from kanal.connectors.postgres.config import PostgresConfig, PostgresSinkOptions, PostgresSourceOptions
from kanal.connectors.postgres.sink import PostgresSink
from kanal.connectors.postgres.source import PostgresSource
from kanal.core.connector import Capabilities, ConnectorSpec, DeltaKind
from kanal.core.model import ENTITIES

CONNECTOR = ConnectorSpec(
    name="postgres",
    description="PostgreSQL tables: snapshot by page ranges with COPY; upsert with COPY + ON CONFLICT",
    config=PostgresConfig,
    capabilities=Capabilities(
        entities=tuple(ENTITIES),
        supports_deletes=True,
        supports_truncate=True,
        delta=(DeltaKind.NONE, DeltaKind.CDC, DeltaKind.CURSOR),
        parallel_snapshot=True,
    ),
    source=PostgresSource,
    sink=PostgresSink,
)

__all__ = ["CONNECTOR", "PostgresConfig", "PostgresSink", "PostgresSinkOptions", "PostgresSource", "PostgresSourceOptions"]
