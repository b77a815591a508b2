"""Configuration of the PostgreSQL connector (connection and per-entity options)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from kanal.core.connector import EntityOptions, FrozenModel
from kanal.core.errors import register_secret

_IDENT = r"^[A-Za-z_][A-Za-z0-9_$]*$"


class PostgresConfig(FrozenModel):
    dsn: SecretStr = Field(description="libpq connection string or URI; use ${ENV_VAR}, never a literal password")
    connect_timeout_s: int = Field(10, ge=1, le=600, description="seconds to wait for a connection")
    application_name: str = Field("kanal", description="shown in pg_stat_activity")
    slot: str | None = Field(
        None, pattern=r"^[a-z0-9_]{1,63}$", description="CDC: replication slot name (default kanal_<job>)"
    )
    publication: str | None = Field(None, pattern=_IDENT, description="CDC: publication name (default kanal_<job>)")
    heartbeat_s: float = Field(
        10.0, gt=0, le=3600, description="CDC: when watched tables are quiet, advance the slot this often"
    )
    delta_rows: int = Field(50_000, ge=100, le=1_000_000, description="changes per read (bounds memory)")

    @field_validator("dsn")
    @classmethod
    def _remember(cls, value: SecretStr) -> SecretStr:
        register_secret(value.get_secret_value())
        return value


class PostgresSourceOptions(EntityOptions):
    table: str = Field(pattern=_IDENT, description="table (or view) to read")
    schema_name: str = Field("public", alias="schema", pattern=_IDENT, description="schema of the table")
    where: str | None = Field(None, description="optional SQL filter, e.g. \"active\"")
    chunk_rows: int = Field(100_000, ge=1_000, le=5_000_000, description="rows per snapshot chunk (resume unit)")
    truncate: Literal["delete", "fail"] = Field(
        "delete",
        description="CDC: on a TRUNCATE of the table, delete the entity's records in the targets, or stop the stream (fail)",
    )


class PostgresSinkOptions(EntityOptions):
    table: str = Field(pattern=_IDENT, description="target table; created from the canonical schema if missing")
    schema_name: str = Field("public", alias="schema", pattern=_IDENT, description="schema of the table")
    create: bool = Field(True, description="create the table when it does not exist")
    version_column: str | None = Field(
        "updated_at", description="an incoming row replaces a stored one only if this column is not older"
    )
