"""A store agent's job file and an agent served in-process on a loopback port (no broker unless a test starts one)."""

from __future__ import annotations

import threading
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kanal.core.embedded import free_port
from kanal.jobs.edge import EdgeOptions
from kanal.jobs.edge_agent import Agent
from kanal.jobs.edge_http import serving
from kanal.jobs.load import LoadedJob, load_job

TOKEN = "store-token-0123456789"
NEXT_TOKEN = "rotated-token-9876543210"


def write_job(folder: Path, bootstrap: str) -> Path:
    """A job whose movements travel through `bootstrap`; `store` sells from S1 only, `web` from WH1 and S1."""
    path = folder / "job.yaml"
    path.write_text(textwrap.dedent(f"""
        name: stores
        kafka: {{bootstrap_servers: "{bootstrap}", partitions: 3, connect_timeout_s: 5, session_timeout_ms: 1500}}
        source:
          connector: files
          config: {{path: "{folder / 'in'}"}}
          entities:
            stock_movements: {{pattern: "*.csv"}}
        sinks:
          - name: archive
            connector: files
            config: {{path: "{folder / 'out'}", format: jsonl}}
            entities:
              stock_movements: {{}}
        inventory:
          floors: {{S1: 1}}
          channels:
            store: {{locations: [S1]}}
            web: {{locations: [WH1, S1], buffer: 2}}
    """))
    return path


@dataclass
class Served:
    url: str
    agent: Agent
    loaded: LoadedJob

    def client(self, token: str | None = TOKEN, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The agent's API without its Kafka threads: what a POS sees while the store is offline."""
    loaded = load_job(write_job(tmp_path, f"127.0.0.1:{free_port()}"))
    options = EdgeOptions("S1", tmp_path / "journal", port=0, tokens=(TOKEN, NEXT_TOKEN))
    agent = Agent(loaded, options, threading.Event())
    try:
        with serving(agent, options) as url:
            yield Served(url, agent, loaded)
    finally:
        agent.close()
