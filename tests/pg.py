"""Test helpers around pgserver: start, stop (to simulate an outage), restart, query."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pgserver
import psycopg
from pgserver._commands import pg_ctl


@dataclass
class Server:
    handle: pgserver.PostgresServer
    folder: Path

    @classmethod
    def start(cls, folder: Path) -> Server:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o777)
        handle = pgserver.get_server(folder, cleanup_mode="stop")
        return cls(handle, folder)

    def configure(self, **settings: str) -> None:
        """ALTER SYSTEM each setting, then restart so that server-start settings (wal_level) apply."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            for name, value in settings.items():
                conn.execute(f"alter system set {name} = '{value}'")
        self.kill()
        self.restart()

    @property
    def socket_dir(self) -> str:
        return parse_qs(urlparse(self.handle.get_uri()).query)["host"][0]

    def dsn(self, database: str = "postgres") -> str:
        return self.handle.get_uri(database)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'create database "{name}"')
        return self.dsn(name)

    def kill(self) -> None:
        """Stop at once, as a crash or a maintenance cut would."""
        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.handle.pgdata, user=self.handle.system_user)

    def restart(self) -> None:
        pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.handle.log), "start"],
            pgdata=self.handle.pgdata,
            user=self.handle.system_user,
            timeout=30,
        )

    def stop(self) -> None:
        self.handle.cleanup()


def query(dsn: str, sql: str, params: tuple | None = None) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []
