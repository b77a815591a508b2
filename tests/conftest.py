"""Shared fixtures: a real PostgreSQL (pgserver), fresh databases per test, the CLI.

Nothing here is mocked: databases are real PostgreSQL 16 servers started by
pgserver in temporary folders, and the CLI runs as a real subprocess with the
embedded broker, exactly as a user would run it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests import pg

KANAL = [sys.executable, "-m", "kanal"]


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pg.Server]:
    server = pg.Server.start(tmp_path_factory.mktemp("pg-main"))
    server.configure(wal_level="logical", max_replication_slots="64", max_wal_senders="64")
    yield server
    server.stop()


@dataclass(frozen=True)
class Databases:
    erp: str
    shop: str

    def erp_sql(self, sql: str, params: tuple | None = None) -> list[tuple]:
        return pg.query(self.erp, sql, params)

    def shop_sql(self, sql: str, params: tuple | None = None) -> list[tuple]:
        return pg.query(self.shop, sql, params)


@pytest.fixture
def dbs(pg_server: pg.Server) -> Databases:
    """A fresh ERP and shop database on the shared server."""
    suffix = uuid.uuid4().hex[:8]
    return Databases(pg_server.create_database(f"erp_{suffix}"), pg_server.create_database(f"shop_{suffix}"))


@dataclass
class Cli:
    """Runs `kanal` as a subprocess with a job folder as working directory."""

    folder: Path
    env: dict[str, str]

    def write_job(self, text: str, name: str = "job.yaml") -> Path:
        path = self.folder / name
        path.write_text(textwrap.dedent(text))
        return path

    def run(self, *args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*KANAL, *args], cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kanal {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*KANAL, *args], cwd=self.folder, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )


@pytest.fixture
def cli(tmp_path: Path, dbs: Databases) -> Cli:
    env = {**os.environ, "ERP_DSN": dbs.erp, "SHOP_DSN": dbs.shop, "COLUMNS": "200"}
    return Cli(tmp_path, env)


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True)
