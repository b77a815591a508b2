"""The real-time inventory landscape on one machine, every part a real process on loopback.

`kanal demo --inventory`, bench/inventory_latency.py and the end-to-end test
run what a merchant runs, as `kanal` commands, in one folder:

* a broker every other process shares (the embedded Tansu of `kanal broker`);
* one `kanal edge` agent per site (stores and a warehouse), each with its
  own journal, port and bearer token;
* `kanal inventory JOB`, the aggregator, and `kanal sync JOB`, which
  delivers stock levels and availability to Redis (an embedded Valkey that
  this process owns, so that it outlives a sync killed on purpose) and to
  the shop's PostgreSQL.

A site goes offline the way a store whose internet line is down does: its
agent is restarted with a broker address nothing answers on, keeps taking
and journaling the tills' movements and lets its backlog grow; back online,
it is restarted with the real address and forwards the backlog.

`reconcile` is the proof a run ends with: the aggregator's ledgers equal a
ledger recomputed from every movement posted (duplicates included), Redis
and the shop table hold exactly the availability that ledger derives, and no
location holds fewer than zero units (nothing was oversold).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import psycopg

from kanal.core.embedded import EmbeddedBroker, die_with_parent, free_port
from kanal.core.errors import KanalError
from kanal.core.inventory import ChannelRules, Ledger
from kanal.jobs.inventory import ledger_path
from kanal.jobs.load import LoadedJob, load_job

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "inventory.yaml"
KANAL = [sys.executable, "-m", "kanal"]
LEVEL_COLUMNS = ["sku", "location", "on_hand", "reserved", "unavailable", "incoming"]
_STOP_S = 15.0


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `condition` until it is truthy; a KanalError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (httpx.HTTPError, psycopg.Error, OSError):
            value = None  # a process still starting, a table not created yet
        if value:
            return value
        if time.monotonic() > deadline:
            raise KanalError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL if it has not ended after a while; a process that ended already is left alone."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(_STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _spawn(args: list[str], folder: Path, env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
    """A `kanal` command in `folder`, its output in logs/<log>.log (a pipe nobody reads would stall it).

    On Linux the kernel kills it when this process dies, even by kill -9, so
    that no agent or sync outlives the landscape it belongs to.
    """
    with (folder / "logs" / f"{log}.log").open("a") as out:
        return subprocess.Popen(args, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent if sys.platform == "linux" else None)  # fmt: skip


@dataclass
class Site:
    """A store or warehouse: its `kanal edge` agent as a subprocess, and a client of its API."""

    code: str
    folder: Path
    token: str
    port: int = field(default_factory=free_port)
    online: bool = True
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )

    @property
    def journal(self) -> Path:
        return self.folder / "journals" / self.code

    def start(self, env: dict[str, str]) -> None:
        args = [*KANAL, "edge", "job.yaml", "--store", self.code, "--journal", str(self.journal), "--port", str(self.port)]
        self.proc = _spawn(args, self.folder, env, f"edge-{self.code}")

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise KanalError(f"the agent of {self.code} exited ({self.proc.returncode}); see logs/edge-{self.code}.log")
        return self.http.get("/status").status_code == 200

    def stop(self) -> None:
        _stop(self.proc)

    def post(self, records: list[dict[str, Any]], timeout: float = 30.0) -> dict[str, Any]:
        """POST /movements; while the agent restarts, the till sends the same request again (duplicates are ignored)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = self.http.post("/movements", json=records)
                answer.raise_for_status()
                return answer.json()  # type: ignore[no-any-return]
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def figure(self, sku: str) -> dict[str, Any]:
        """What the agent itself shows for `sku` (from its journal and the central movements it has seen)."""
        return self.http.get(f"/availability/{sku}").json()  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        return self.http.get("/status").json()  # type: ignore[no-any-return]


class Landscape:
    """Broker, agents, aggregator and sinks of `job` (examples/inventory.yaml by default) under `folder`."""

    def __init__(self, folder: Path, shop_dsn: str, sites: Sequence[str] = ("WH1", "S1", "S2"), job: Path = EXAMPLE) -> None:
        self.folder = folder
        for sub in ("logs", "journals", "drop"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(job, folder / "job.yaml")
        self.token = secrets.token_hex(16)
        self.sites = {code: Site(code, folder, self.token) for code in sites}
        self.broker = EmbeddedBroker()
        self.shop_dsn = shop_dsn
        self.unreachable = f"127.0.0.1:{free_port()}"
        """A broker address nothing answers on: an agent started with it is offline."""
        self.aggregator: subprocess.Popen[bytes] | None = None
        self.sync: subprocess.Popen[bytes] | None = None
        self.redis: Any = None
        self.loaded: LoadedJob | None = None

    def env(self, bootstrap: str | None = None) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if k != "KANAL_STATE_DIR"}  # the state lives in the folder
        return {
            **inherited, "KAFKA_BOOTSTRAP": bootstrap or self.broker.bootstrap, "SHOP_DSN": self.shop_dsn,
            "DROP_DIR": str(self.folder / "drop"), "KANAL_EDGE_TOKENS": self.token,
        }  # fmt: skip

    @property
    def rules(self) -> ChannelRules:
        assert self.loaded is not None and self.loaded.job.inventory is not None
        return self.loaded.job.inventory

    def _kanal(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return _spawn([*KANAL, *args], self.folder, self.env(), name)

    def start(self) -> Landscape:
        from kanal.connectors.redis import RedisInventory

        self.broker.start()
        env = self.env()
        # `.env` beside the job: this process loads it without touching its environment, and so can a user
        (self.folder / ".env").write_text("".join(f"{k}={env[k]}\n" for k in ("KAFKA_BOOTSTRAP", "SHOP_DSN", "DROP_DIR")))
        self.loaded = load_job(self.folder / "job.yaml")
        self.redis = RedisInventory(data_dir=str(self.folder / ".kanal" / "redis"))
        self.redis.connection.client.ping()  # ours: it runs until `close`, whatever happens to `kanal sync`
        for site in self.sites.values():
            site.start(env)
        self.start_aggregator()
        self.sync = self._kanal("sync", "sync", "job.yaml")
        for site in self.sites.values():
            wait_until(site.ready, 60, f"the agent of {site.code} to serve")
        return self

    def start_aggregator(self) -> None:
        self.aggregator = self._kanal("inventory", "inventory", "job.yaml")

    def kill_aggregator(self) -> None:
        """kill -9: no chance to finish anything (the ledger's transactions and offsets must carry it)."""
        assert self.aggregator is not None
        self.aggregator.kill()
        self.aggregator.wait()

    def offline(self, code: str) -> None:
        """The site's line to the centre is cut: its agent runs on, with a broker address nothing answers on."""
        site = self.sites[code]
        site.stop()
        site.online = False
        site.start(self.env(self.unreachable))
        wait_until(site.ready, 60, f"the agent of {code} to serve offline")

    def back_online(self, code: str) -> None:
        site = self.sites[code]
        site.stop()
        site.start(self.env())
        wait_until(site.ready, 60, f"the agent of {code} to serve again")
        site.online = True

    def backlog(self, code: str) -> int:
        return int(self.sites[code].status()["backlog"])

    def ledgers(self) -> list[Ledger]:
        """The aggregator's ledgers, one per partition of the movements topic it has written (open them, then close)."""
        assert self.loaded is not None
        paths = [ledger_path(self.loaded, p) for p in range(self.loaded.job.kafka.partitions)]
        return [Ledger(p, self.rules) for p in paths if p.exists()]

    def central_levels(self) -> pl.DataFrame:
        ledgers = self.ledgers()
        try:
            frames = [ledger.levels().select(LEVEL_COLUMNS) for ledger in ledgers]
        finally:
            for ledger in ledgers:
                ledger.close()
        return pl.concat(frames).sort("sku", "location") if frames else pl.DataFrame()

    def shop_availability(self) -> pl.DataFrame:
        with psycopg.connect(self.shop_dsn) as conn:
            rows = conn.execute("select sku, channel, quantity::bigint from shop_availability").fetchall()
        return pl.DataFrame(rows, schema={"sku": pl.String, "channel": pl.String, "quantity": pl.Int64}, orient="row")

    def redis_availability(self) -> pl.DataFrame:
        frame = self.redis.read("availability")
        if frame.is_empty():
            return pl.DataFrame(schema={"sku": pl.String, "channel": pl.String, "quantity": pl.Int64})
        return frame.select("sku", "channel", pl.col("quantity").cast(pl.Decimal(38, 4)).cast(pl.Int64))

    def close(self) -> None:
        """Stop every process this landscape started: sinks first (they write to Redis), Redis last."""
        _stop(self.sync)
        _stop(self.aggregator)
        for site in self.sites.values():
            site.stop()
            site.http.close()
        self.broker.stop()
        if self.redis is not None:
            self.redis.close()

    def __enter__(self) -> Landscape:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Reconciliation:
    """What a run ended with, against a ledger recomputed from every movement posted."""

    movements: int
    """Distinct movements posted (by event_id)."""
    level_drift: pl.DataFrame
    """(sku, location) rows where the aggregator's ledgers differ from the recomputed one."""
    redis_drift: int
    shop_drift: int
    """(sku, channel) rows of Redis / the shop table that differ from the recomputed availability (or are missing)."""
    oversold: dict[str, int]
    """Per channel: units below zero at its locations (sold although not there)."""
    expected: pl.DataFrame
    """The recomputed availability (sku, channel, quantity)."""

    @property
    def ok(self) -> bool:
        return self.level_drift.is_empty() and not self.redis_drift and not self.shop_drift and not any(self.oversold.values())


def _drift(shown: pl.DataFrame, expected: pl.DataFrame) -> int:
    joined = expected.join(shown, on=["sku", "channel"], how="full", suffix="_shown", coalesce=True)
    return joined.filter(pl.col("quantity").ne_missing(pl.col("quantity_shown"))).height


def reconcile(landscape: Landscape, posted: pl.DataFrame) -> Reconciliation:
    """Compare what the landscape shows with a ledger of every posted movement (see the module docstring)."""
    with tempfile.TemporaryDirectory() as scratch, Ledger(Path(scratch) / "reference.sqlite", landscape.rules) as ref:
        ref.apply_frame(posted)
        levels = ref.levels().select(LEVEL_COLUMNS).sort("sku", "location")
        expected = ref.changes_since(0).availability.select("sku", "channel", "quantity")
    central = landscape.central_levels()
    drift = (
        levels.join(central, on=["sku", "location"], how="full", suffix="_central", coalesce=True)
        .filter(pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"{c}_central")) for c in LEVEL_COLUMNS[2:]))
        if not central.is_empty() else levels
    )  # fmt: skip
    below = levels.filter(pl.col("on_hand") < 0)
    oversold = {
        name: int(-below.filter(pl.col("location").is_in(ch.locations))["on_hand"].sum())
        for name, ch in landscape.rules.channels.items()
    }
    return Reconciliation(
        posted["event_id"].n_unique(), drift, _drift(landscape.redis_availability(), expected),
        _drift(landscape.shop_availability(), expected), oversold, expected,
    )  # fmt: skip
