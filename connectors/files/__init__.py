"""Files connector: CSV, JSON Lines and Parquet under one base folder.

As a source it reads the files a glob selects (one chunk per file, frames of
at most 100,000 rows), and with `delta: files` new and changed files after that; as a sink it writes one file per Kafka message, named
after the message's stable batch id, so re-delivery replaces instead of
duplicating. Configuration: `FilesConfig`; per entity: `FilesSourceOptions`,
`FilesSinkOptions`.
"""

from __future__ import annotations

from kanal.connectors.files.config import FilesConfig, FilesSinkOptions, FilesSourceOptions
from kanal.connectors.files.sink import FilesSink
from kanal.connectors.files.source import FilesSource
from kanal.core.connector import Capabilities, ConnectorSpec, DeltaKind
from kanal.core.model import ENTITIES

CONNECTOR = ConnectorSpec(
    name="files",
    description="CSV, JSON Lines and Parquet files in a folder (source and sink)",
    config=FilesConfig,
    capabilities=Capabilities(
        entities=tuple(ENTITIES),
        delta=(DeltaKind.NONE, DeltaKind.FILES),
        parallel_snapshot=True,
        stable_batches=True,
    ),
    source=FilesSource,
    sink=FilesSink,
)

__all__ = ["CONNECTOR", "FilesConfig", "FilesSink", "FilesSinkOptions", "FilesSource", "FilesSourceOptions"]
