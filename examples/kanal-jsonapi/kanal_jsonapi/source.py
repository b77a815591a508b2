"""Reads jsonapi: snapshots page by page, then changes by `updated_at` (`delta: {cursor: updated_at}`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta

import polars as pl

from kanal.core.connector import Chunk, CursorDelta, DeltaContext, DeltaKind, EntityInfo, EntityOptions, Source
from kanal.core.cursor import TIEBREAK, CursorPage, CursorReader
from kanal.core.http import HttpClient, Lane, PageNumber, PageRequest
from kanal.core.model import ENTITIES
from kanal_jsonapi.config import JsonapiConfig, client, schema

EPOCH, MICRO = datetime(1970, 1, 1, tzinfo=UTC), timedelta(microseconds=1)


class JsonapiSource(Source):
    def __init__(self, config: JsonapiConfig) -> None:
        super().__init__(config)
        self.client = client(config)

    def check(self) -> None:
        self.client.request("GET", "ping")

    def discover(self) -> list[EntityInfo]:
        return [EntityInfo(e, ENTITIES[e].key, delta=DeltaKind.CURSOR) for e in self.client.request("GET", "").json()["entities"]]

    def plan(self, entity: str, options: EntityOptions) -> list[Chunk]:
        return [Chunk(f"{entity}-all")]  # page numbers shift while records are added: one chunk, paged inside

    def snapshot(self, entity: str, options: EntityOptions, chunk: Chunk) -> Iterator[pl.DataFrame]:
        pages = PageNumber(self.config.page_size, pages_header="X-Total-Pages", total_header="X-Total")
        for page in self.client.pages(PageRequest(entity), pages):
            yield page.frame(schema(entity)).drop("key")

    def delta(self, context: DeltaContext) -> JsonapiChanges:
        cursors = {e: o.delta for e, o in context.entities.items() if isinstance(o.delta, CursorDelta)}
        return JsonapiChanges(client(self.config, Lane.DELTA), cursors, self.config.page_size)

    def close(self) -> None:
        self.client.close()


class JsonapiChanges(CursorReader):
    """`GET /<entity>/changes`; the kit's reader owns overlap, re-reads, paging through equal times, positions."""

    def __init__(self, client: HttpClient, cursors: Mapping[str, CursorDelta], page_rows: int) -> None:
        super().__init__(cursors, page_rows)
        self.client = client

    def fetch(self, entity: str, since: int, tiebreak: str | None, limit: int) -> CursorPage:
        params = {"since": (EPOCH + since * MICRO).isoformat(), "after": tiebreak or "", "limit": limit}
        page = self.client.fetch(PageRequest(f"{entity}/changes", params), items="records")
        rows = page.frame(schema(entity)).rename({"key": TIEBREAK})
        return CursorPage(rows, (datetime.fromisoformat(page.body["clock"]) - EPOCH) // MICRO)

    def close(self) -> None:
        self.client.close()
