"""How to reach jsonapi (the job file's `config:` block), its HTTP client and the shape of its records."""

from __future__ import annotations

from functools import cache

from pydantic import Field, SecretStr

from kanal.core.connector import FrozenModel
from kanal.core.http import Bearer, HttpClient, HttpSettings, Lane, RecordSchema
from kanal.core.model import ADDRESSES_DTYPE, Kind, entity as canonical


class JsonapiConfig(FrozenModel):
    url: str = Field(description="base URL of the API, e.g. https://erp.example.com/api")
    token: SecretStr = Field(description="API token, sent as `Authorization: Bearer`; use ${ENV_VAR}")
    page_size: int = Field(100, ge=1, le=1000, description="records per page")
    http: HttpSettings = HttpSettings()


def client(config: JsonapiConfig, lane: Lane = Lane.BACKFILL) -> HttpClient:
    """Retries, rate limits, keep-alive and secret-free messages come with the kit's client."""
    return HttpClient("jsonapi", config.url, Bearer(config.token.get_secret_value()), settings=config.http, lane=lane)


_TYPES = {Kind.DECIMAL: "decimal", Kind.DATETIME: "datetime", Kind.BOOL: "bool", Kind.FLOAT: "float",
          Kind.ADDRESSES: ADDRESSES_DTYPE}


@cache
def schema(entity: str) -> RecordSchema:
    """This API's records carry the canonical fields by name and the record's `key`; declare your API's paths here."""
    fields = {f.name: _TYPES.get(f.kind, "text") for f in canonical(entity).fields}
    return RecordSchema({**fields, "key": "text"})
