"""Writes jsonapi through its batch endpoint; the API applies a record only if its version is not older."""

from __future__ import annotations

import json

import polars as pl

from kanal.core.connector import OP, UPSERT, VERSION, EntityOptions, Sink, WriteResult
from kanal.core.validate import KEY
from kanal_jsonapi.config import JsonapiConfig, client


class JsonapiSink(Sink):
    def __init__(self, config: JsonapiConfig) -> None:
        super().__init__(config)
        self.client = client(config)

    def check(self) -> None:
        self.client.request("GET", "ping")

    def write(self, entity: str, options: EntityOptions, frame: pl.DataFrame, batch_id: str) -> WriteResult:
        items = frame.select(  # snapshot rows carry no op (upserts), and a version only when the job streams
            (pl.col(OP) if OP in frame.columns else pl.lit(UPSERT)).alias("op"), pl.col(KEY).alias("key"),
            (pl.col(VERSION) if VERSION in frame.columns else pl.lit(None, pl.Int64)).alias("version"),
            pl.struct(c for c in frame.columns if not c.startswith("_kanal_")).alias("record"),
        )
        answer = self.client.request("POST", f"{entity}/batch", json={"items": json.loads(items.write_json())})
        results = pl.DataFrame(answer.json()["results"], schema={"key": pl.String, "status": pl.String, "message": pl.String})
        refused = results.filter(pl.col("status") == "refused").select(pl.col("key").alias(KEY), pl.col("message").alias("reason"))
        status = results.get_column("status")
        return WriteResult(int((status == "applied").sum()), int((status == "stale").sum()), refused if refused.height else None)

    def close(self) -> None:
        self.client.close()
