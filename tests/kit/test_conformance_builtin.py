"""The built-in connectors meet the connector contract (`kanal.testing`), against real systems.

PostgreSQL runs it twice, streaming by cursor and by CDC; the files
connector with CSV in cp1252, whose sink refuses a value the encoding cannot
hold.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from kanal.connectors.files import CONNECTOR as FILES
from kanal.connectors.files import FilesConfig, FilesSinkOptions, FilesSourceOptions
from kanal.connectors.files.formats import write
from kanal.connectors.postgres import CONNECTOR as POSTGRES
from kanal.connectors.postgres import PostgresConfig, PostgresSinkOptions, PostgresSourceOptions
from kanal.connectors.postgres.ddl import create_table
from kanal.core.connector import DELETE, OP, VERSION, EntityOptions
from kanal.core.model import PRODUCT
from kanal.testing import Harness, SinkContract, SourceContract
from tests.conftest import Databases

# PostgreSQL ------------------------------------------------------------------------------------


class PostgresHarness(Harness):
    """Source: table `products` of the ERP database; sink: `kit_products` of the shop database."""

    spec = POSTGRES
    delta: Any = {"cursor": "updated_at"}

    def __init__(self, dbs: Databases) -> None:
        self.dbs = dbs

    def config(self, dsn: str | None = None) -> PostgresConfig:
        return PostgresConfig(dsn=dsn or self.dbs.erp)

    def bad_credentials(self) -> PostgresConfig:
        return self.config(make_conninfo(self.dbs.erp, user="kit_nobody"))

    def source_options(self) -> EntityOptions:
        return PostgresSourceOptions(table="products")

    def delta_options(self) -> EntityOptions:
        return PostgresSourceOptions.model_validate({"table": "products", "delta": self.delta})

    def seed(self, frame: pl.DataFrame) -> None:
        with psycopg.connect(self.dbs.erp, autocommit=True) as conn:
            conn.execute("drop table if exists products")
            create_table(conn, "products", PRODUCT)
            conn.execute("alter table products add primary key (sku)")
        self.change(frame)

    def change(self, frame: pl.DataFrame) -> None:
        columns = list(PRODUCT.field_names)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
        with psycopg.connect(self.dbs.erp, autocommit=True) as conn:
            conn.cursor().executemany(
                f"insert into products ({', '.join(columns)}) values ({', '.join(['%s'] * len(columns))}) "
                f"on conflict (sku) do update set {updates}",
                frame.select(columns).rows(),
            )

    def sink_options(self) -> EntityOptions:
        return PostgresSinkOptions(table="kit_products")

    def read(self) -> pl.DataFrame:
        return pl.DataFrame(self.dbs.shop_sql("select sku, name from kit_products"), schema=["sku", "name"], orient="row")

    def refuse(self, record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "attributes": "{not json"}  # the jsonb column refuses it


class PostgresSinkHarness(PostgresHarness):
    def config(self, dsn: str | None = None) -> PostgresConfig:
        return PostgresConfig(dsn=dsn or self.dbs.shop)


class TestPostgresSourceCursor(SourceContract):
    @pytest.fixture
    def harness(self, dbs: Databases) -> Harness:
        return PostgresHarness(dbs)


class TestPostgresSourceCdc(SourceContract):
    @pytest.fixture
    def harness(self, dbs: Databases) -> Harness:
        harness = PostgresHarness(dbs)
        harness.delta = "cdc"
        return harness


class TestPostgresSink(SinkContract):
    @pytest.fixture
    def harness(self, dbs: Databases) -> Harness:
        return PostgresSinkHarness(dbs)


# files -----------------------------------------------------------------------------------------


class FilesHarness(Harness):
    """CSV in cp1252 under one folder: the source reads `products/`, the sink writes `out/`."""

    spec = FILES

    def __init__(self, base: Path) -> None:
        self.base = base
        self.files = itertools.count()
        base.mkdir(parents=True, exist_ok=True)

    def config(self) -> FilesConfig:
        return FilesConfig(path=str(self.base), format="csv", encoding="cp1252")

    def source_options(self) -> EntityOptions:
        return FilesSourceOptions()

    def delta_options(self) -> EntityOptions:
        return FilesSourceOptions(delta="files")

    def seed(self, frame: pl.DataFrame) -> None:
        for old in (self.base / "products").glob("*.csv"):
            old.unlink()
        self.change(frame)

    def change(self, frame: pl.DataFrame) -> None:
        (self.base / "products").mkdir(parents=True, exist_ok=True)
        write(frame.drop("_kanal_key"), self.base / "products" / f"export-{next(self.files)}.csv", "csv", encoding="cp1252")

    def sink_options(self) -> EntityOptions:
        return FilesSinkOptions(folder="out")

    def read(self) -> pl.DataFrame:
        """The records the files hold, read as the change log is meant to be: per key its newest version."""
        paths = sorted((self.base / "out").rglob("*.csv"))
        if not paths:
            return pl.DataFrame(schema={"sku": pl.String, "name": pl.String})
        frames = [pl.read_csv(p.read_bytes().decode("cp1252").encode(), infer_schema=False) for p in paths]
        log = pl.concat(frames, how="diagonal_relaxed")
        if VERSION not in log.columns:
            return log
        newest = log.with_columns(pl.col(VERSION).cast(pl.Int64)).sort(VERSION, nulls_last=False).unique("sku", keep="last")
        return newest.filter(pl.col(OP).is_null() | (pl.col(OP) != DELETE))

    def refuse(self, record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "name": "漢字"}  # not in cp1252


class TestFiles(SourceContract, SinkContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        return FilesHarness(tmp_path / "exchange")
