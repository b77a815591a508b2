"""End-to-end latency and throughput of Kanal's PostgreSQL CDC stream (`kanal run`, `delta: cdc`).

    .venv/bin/python bench/latency.py                      # 1,000 changes/s for 60 s, then 20 s flat out
    .venv/bin/python bench/latency.py --rate 2000 --seconds 90 --burst-seconds 10
    .venv/bin/python bench/latency.py --quick              # smoke run: 10k SKUs, 10 s + 2 s

One run:

  1. starts a throwaway PostgreSQL (pgserver) with wal_level=logical (ALTER
     SYSTEM, then a restart: the setting only applies at server start), with
     databases `erp` and `shop`;
  2. seeds the ERP: per SKU two stock rows (locations A, B) and two prices
     (a STANDARD list price, a B2B customer price); erp_prices has no primary
     key and REPLICA IDENTITY FULL, as an ERP price table often has;
  3. creates the shop tables itself, with the columns Kanal's postgres sink
     would create plus `synced_at` (set by a default on insert and a BEFORE
     UPDATE trigger to clock_timestamp()) and an AFTER DELETE trigger that logs
     (key, clock_timestamp()) to `deleted_log`: Kanal writes only the columns it
     knows, so these record when each change reached the shop;
  4. starts `python -m kanal run JOB --quiet` (embedded broker), waits until
     the migration has copied every row and one probe change has streamed;
  5. latency phase: `--rate` changes/s for `--seconds`, in transactions of
     `--per-txn` changes paced on a monotonic clock (a late transaction does
     not shift the ones after it); 80% updates, 10% inserts, 10% deletes, half
     on stock, half on prices, every change on a key no other change of the
     phase touches, so each one is visible on its own in the shop. Then it
     waits until the shop equals the ERP and reads, per change, sink time minus
     source time;
  6. throughput phase: for `--burst-seconds` as fast as one connection can
     write (1,000-row UPDATEs plus small INSERTs and DELETEs, one statement per
     transaction), then waits until the shop equals the ERP: Kanal's sustained
     rate is changes / (last shop write - first ERP commit);
  7. stops Kanal with SIGTERM (it must exit 0), drops the slot with `kanal
     cleanup`, stops PostgreSQL, prints the summary.

Times on both ends come from the same PostgreSQL server's clock (both
databases live on it), so no clock skew enters the figures.

Exit status: 0 when every phase was measured and Kanal exited 0; 1 when a
phase could not be measured (e.g. the shop did not converge) or Kanal did not
exit 0; 2 when the setup failed (servers, seed, Kanal's start or migration).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    REPO_DIR,
    Servers,
    TreeSampler,
    exit_on_sigterm,
    fmt_bytes,
    log,
    machine_busy_seconds,
    server_cpu_seconds,
    tail,
    temp_dir,
    wait_idle,
)

JOB_NAME = "bench-latency"
JOB = f"""\
name: {JOB_NAME}
kafka:
  bootstrap_servers: embedded
source:
  connector: postgres
  config: {{dsn: "${{ERP_DSN}}", heartbeat_s: 1}}
  entities:
    stock_levels: {{table: erp_stock, delta: cdc}}
    prices: {{table: erp_prices, delta: cdc}}
sinks:
  - name: shop
    connector: postgres
    config: {{dsn: "${{SHOP_DSN}}"}}
    entities:
      stock_levels: {{table: shop_stock}}
      prices: {{table: shop_prices}}
"""

# Seed rows carry an old fixed updated_at, so "updated_at >= phase start" selects
# exactly the rows a phase wrote.
ERP_SCHEMA = """
create table erp_stock (sku text, location text, on_hand numeric(12,3), updated_at timestamptz not null,
                        primary key (sku, location));
create table erp_prices (sku text not null, price_list text not null, customer_no text, currency text not null,
                         min_qty numeric(12,3), amount numeric(12,2) not null, updated_at timestamptz not null);
alter table erp_prices replica identity full;
create unique index erp_prices_key on erp_prices (sku, price_list, customer_no, currency, min_qty) nulls not distinct;
create table erp_deleted (entity text not null, key text not null, deleted_at timestamptz not null);
"""
ERP_SEED = """
insert into erp_stock
  select 'P' || lpad(g::text, 6, '0'), l, g % 90, timestamptz '2025-01-01 00:00+00'
  from generate_series(0, {n} - 1) g, unnest(array['A', 'B']) l;
insert into erp_prices
  select 'P' || lpad(g::text, 6, '0'), 'STANDARD', null, 'EUR', null, 1 + g % 500, timestamptz '2025-01-01 00:00+00'
  from generate_series(0, {n} - 1) g;
insert into erp_prices
  select 'P' || lpad(g::text, 6, '0'), 'B2B', 'C' || lpad((g % 5000)::text, 5, '0'), 'EUR',
         case when g % 2 = 0 then 10 end, 0.9 * (1 + g % 500), timestamptz '2025-01-01 00:00+00'
  from generate_series(0, {n} - 1) g;
"""

# The columns Kanal's sink creates for stock_levels and prices (canonical fields
# + _kanal_version, connectors/postgres/ddl.py) with the canonical key, plus
# synced_at, which the sink never names and so never overwrites.
SHOP_SCHEMA = """
create table shop_stock (
  sku text not null, location text not null, on_hand numeric, reserved numeric, available numeric,
  updated_at timestamptz, version numeric, _kanal_version bigint,
  synced_at timestamptz not null default clock_timestamp(),
  primary key (sku, location));
create table shop_prices (
  sku text not null, price_list text, customer_no text, currency text not null, min_qty numeric,
  amount numeric not null, valid_from timestamptz, valid_to timestamptz, updated_at timestamptz,
  _kanal_version bigint,
  synced_at timestamptz not null default clock_timestamp(),
  unique nulls not distinct (sku, price_list, customer_no, currency, min_qty));
create table deleted_log (entity text not null, key text not null, deleted_at timestamptz not null);
create function bench_synced() returns trigger language plpgsql as $$
begin
  new.synced_at := clock_timestamp();
  return new;
end $$;
-- tg_argv: entity, second key column; the key text is built as the ERP builds it.
create function bench_deleted() returns trigger language plpgsql as $$
begin
  insert into deleted_log
    values (tg_argv[0], (to_jsonb(old) ->> 'sku') || '|' || (to_jsonb(old) ->> tg_argv[1]), clock_timestamp());
  return null;
end $$;
create trigger synced before update on shop_stock for each row execute function bench_synced();
create trigger synced before update on shop_prices for each row execute function bench_synced();
create trigger deleted after delete on shop_stock
  for each row execute function bench_deleted('stock_levels', 'location');
create trigger deleted after delete on shop_prices
  for each row execute function bench_deleted('prices', 'price_list');
"""


@dataclasses.dataclass(frozen=True)
class Table:
    """One ERP table streamed into one shop table, and how the benchmark addresses its rows.

    Rows are addressed by two text columns, `pair`: (sku, location) for stock,
    (sku, price_list) for prices, which the seed keeps unique (one STANDARD
    and one B2B price per SKU; inserts add new SKUs). The canonical price key
    still has NULL parts (customer_no, min_qty), so the sink's NULLS NOT
    DISTINCT key is exercised.
    """

    entity: str
    erp: str
    shop: str
    pair: tuple[str, str]
    value: str  # the column an update changes
    insert_sql: str  # inserts one row per new SKU in %s (a text array)
    row_sql: str  # canonical text of a row, identical for the ERP and the shop table

    @property
    def update_sql(self) -> str:
        a, b = self.pair
        return (
            f"update {self.erp} r set {self.value} = r.{self.value} + 1, updated_at = clock_timestamp() "
            f"from unnest(%s::text[], %s::text[]) k(a, b) where r.{a} = k.a and r.{b} = k.b"
        )

    @property
    def delete_sql(self) -> str:
        """Deletes the rows and logs (entity, key, time) in the same statement: the
        source time of a delete, which leaves no row behind to carry it."""
        a, b = self.pair
        return (
            f"with gone as (delete from {self.erp} r using unnest(%s::text[], %s::text[]) k(a, b) "
            f"where r.{a} = k.a and r.{b} = k.b returning r.{a}, r.{b}) "
            f"insert into erp_deleted select %s, {a} || '|' || {b}, clock_timestamp() from gone"
        )

    @property
    def range_update_sql(self) -> str:
        return (
            f"update {self.erp} set {self.value} = {self.value} + 1, updated_at = clock_timestamp() "
            "where sku >= %s and sku < %s"
        )


# Numbers through trim_scale (numeric(12,3) 5.000 in the ERP, numeric 5 in the
# shop), times as epoch with microseconds, NULL as '-'.
STOCK = Table(
    "stock_levels",
    "erp_stock",
    "shop_stock",
    ("sku", "location"),
    "on_hand",
    "insert into erp_stock (sku, location, on_hand, updated_at) select s, 'A', 1, clock_timestamp() "
    "from unnest(%s::text[]) s",
    "concat_ws('|', sku, location, coalesce(trim_scale(on_hand)::text, '-'), extract(epoch from updated_at)::text)",
)
PRICES = Table(
    "prices",
    "erp_prices",
    "shop_prices",
    ("sku", "price_list"),
    "amount",
    "insert into erp_prices (sku, price_list, currency, amount, updated_at) "
    "select s, 'STANDARD', 'EUR', 9.99, clock_timestamp() from unnest(%s::text[]) s",
    "concat_ws('|', sku, price_list, coalesce(customer_no, '-'), currency, coalesce(trim_scale(min_qty)::text, '-'), "
    "trim_scale(amount)::text, extract(epoch from updated_at)::text)",
)
TABLES = (STOCK, PRICES)
UPDATE_SHARE, INSERT_SHARE = 0.8, 0.1  # the rest are deletes
BURST_ROWS = 1_000  # rows per UPDATE statement in the throughput phase (500 SKUs x 2 rows)
BURST_SMALL = 20  # rows per INSERT and per DELETE statement in the throughput phase
POLL_S = 1.0  # between checks of the shop; no figure depends on it


class BenchError(Exception):
    """A phase could not be measured; the message says why."""


# --------------------------------------------------------------------------- servers


class LogicalServers(Servers):
    """The benchmark's one PostgreSQL server, restarted with wal_level=logical.

    wal_level only applies at server start, so it is set with ALTER SYSTEM and
    the server restarted with pg_ctl (same data folder, socket and log).
    pgserver keeps the postmaster it started in `_postmaster_info` and stops
    only that one at exit, so the record is re-read after the restart;
    otherwise the restarted server would outlive the benchmark.
    """

    def __init__(self) -> None:
        super().__init__("one")

    def _start(self) -> tuple[str, str]:
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import time
        from pgserver.utils import PostmasterInfo

        dsns = super()._start()
        t0 = time.monotonic()
        for srv in self._servers:
            with psycopg.connect(srv.get_uri(), autocommit=True) as conn:
                conn.execute("alter system set wal_level = 'logical'")
            pg_ctl(
                ["-w", "-m", "fast", "-l", str(srv.log), "restart"], pgdata=srv.pgdata, user=srv.system_user, timeout=60
            )
            srv._postmaster_info = PostmasterInfo.read_from_pgdata(srv.pgdata)  # noqa: SLF001 - no public re-read
        with psycopg.connect(dsns[0]) as conn:
            level = scalar(conn, "show wal_level")
        if level != "logical":
            raise BenchError(f"wal_level is {level!r} after the restart")
        log(f"restarted with wal_level=logical in {time.monotonic() - t0:.1f}s")
        return dsns


def seed(erp_dsn: str, shop_dsn: str, products: int) -> None:
    with psycopg.connect(erp_dsn, autocommit=True) as conn:
        conn.execute(ERP_SCHEMA)
        conn.execute(ERP_SEED.format(n=int(products)))
        conn.execute("vacuum analyze erp_stock, erp_prices")
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute(SHOP_SCHEMA)


def scalar(conn: psycopg.Connection, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
    """The first column of the first row, for queries that always return one."""
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def db_now(conn: psycopg.Connection) -> dt.datetime:
    """The server's clock: every time in this benchmark is read from it."""
    return scalar(conn, "select clock_timestamp()")  # type: ignore[no-any-return]


def fingerprint(conn: psycopg.Connection, table: str, row_sql: str) -> tuple[int, str]:
    """Row count and an order-independent sum of row hashes: equal on both sides means equal tables."""
    row = conn.execute(
        f"select count(*), coalesce(sum(hashtextextended({row_sql}, 0)::numeric), 0)::text from {table}"
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def count_rows(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(scalar(conn, f"select count(*) from {table}"))


# --------------------------------------------------------------------------- kanal


class Kanal:
    """`python -m kanal run JOB --quiet` as a child in its own process group.

    Its output goes to files (a pipe nobody reads could stall it). Its own
    session keeps a Ctrl-C of the benchmark away from it, so the benchmark
    decides how it stops: SIGTERM, which must end in exit 0.
    """

    def __init__(self, work: Path, erp_dsn: str, shop_dsn: str) -> None:
        self.work = work
        self.job = work / f"{JOB_NAME}.yaml"
        self.job.write_text(JOB)
        self.env = {**os.environ, "ERP_DSN": erp_dsn, "SHOP_DSN": shop_dsn, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        self._out, self._err = work / "kanal.out", work / "kanal.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kanal", "run", str(self.job), "--quiet"],
                cwd=self.work,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        return self.proc.pid

    @property
    def stdout(self) -> str:
        return self._out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._err.read_text(errors="replace")

    def check(self) -> None:
        """Raise if Kanal has exited: every wait would otherwise run into its timeout."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(
                f"kanal exited early (exit code {self.proc.returncode}; the benchmark had not stopped it), "
                f"its stderr:\n{tail(self.stderr, 20)}"
            )

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM (finish in-flight changes, exit 0); the whole group is killed if it hangs."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"kanal did not exit {timeout:.0f}s after SIGTERM; killing its process group {self.proc.pid}")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                return None
        return self.proc.returncode

    def cleanup(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kanal", "cleanup", str(self.job)],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )


def wait_until(what: str, done: Callable[[], bool], timeout: float, kanal: Kanal, interval: float = 0.2) -> float:
    """Poll `done` until it holds; the seconds that took. Fails early if Kanal exits."""
    t0 = time.monotonic()
    while not done():
        kanal.check()
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - t0


def tree_cpu(pid: int) -> float:
    """user+sys of a live process and its live descendants (Kanal and its embedded broker)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return total
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


@dataclasses.dataclass(frozen=True)
class Cpu:
    """CPU seconds by who spent them; the difference of two readings covers one phase.

    On a 2-core machine Kanal, PostgreSQL and the benchmark's own writer
    compete; `others` shows whether something outside the benchmark did too.
    """

    wall: float
    kanal: float
    postgres: float
    bench: float
    machine: float

    @classmethod
    def read(cls, kanal_pid: int, postgres_pids: Sequence[int]) -> Cpu:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            time.monotonic(),
            tree_cpu(kanal_pid),
            server_cpu_seconds(postgres_pids),
            own.ru_utime + own.ru_stime,
            machine_busy_seconds(),
        )

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(*(a - b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)))

    @property
    def others(self) -> float:
        return max(self.machine - self.kanal - self.postgres - self.bench, 0.0)

    def describe(self) -> str:
        cores = os.cpu_count() or 1
        return (
            f"kanal {self.kanal:.1f}s ({self.kanal / self.wall:.0%} of a core), postgres {self.postgres:.1f}s "
            f"(all backends, the writer's included), bench {self.bench:.1f}s, others {self.others:.1f}s; "
            f"machine {self.machine / (self.wall * cores):.0%} busy over {self.wall:.1f}s on {cores} cores"
        )

    def warning(self) -> str | None:
        """A phase during which other processes took more than 10% of the machine did not
        measure Kanal alone: say so next to its figures."""
        share = self.others / (self.wall * (os.cpu_count() or 1))
        if share <= 0.1:
            return None
        return (
            f"WARNING: other processes used {self.others:.1f}s of CPU ({share:.0%} of the machine): figures disturbed"
        )


# --------------------------------------------------------------------------- phases


@dataclasses.dataclass
class Applied:
    """What a phase wrote to the ERP, counted by rows the statements changed."""

    updates: int = 0
    inserts: int = 0
    deletes: int = 0
    started: dt.datetime | None = None  # server clock before the first statement
    first_commit: dt.datetime | None = None  # server clock right after the first commit
    ended: dt.datetime | None = None  # server clock after the last commit
    seconds: float = 0.0  # monotonic duration of the phase
    behind_s: float = 0.0  # latency phase: the most a transaction started after its slot

    @property
    def changes(self) -> int:
        return self.updates + self.inserts + self.deletes

    @property
    def mix(self) -> str:
        return (
            f"{self.changes:,} changes ({self.updates:,} updates, {self.inserts:,} inserts, {self.deletes:,} deletes)"
        )


class ErpWriter:
    """Writes the changes of both phases on one autocommit connection.

    `pools` hold the seeded keys of each table in random order; the latency
    phase pops from them, so no two of its changes touch the same key and
    every change stays visible in the shop (a later change of the same key
    would overwrite the earlier one's times). New SKUs (`N0000001`, ...) are
    never seeded, so inserts never collide with anything.
    """

    def __init__(self, dsn: str, products: int, seed_value: int) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.products = products
        self.rnd = random.Random(seed_value)
        self.pools: dict[Table, list[tuple[str, str]]] = {}
        for table in TABLES:
            keys = self.conn.execute(f"select {table.pair[0]}, {table.pair[1]} from {table.erp}").fetchall()
            self.rnd.shuffle(keys)
            self.pools[table] = [tuple(k) for k in keys]  # type: ignore[misc]
        self._new_sku = 0

    def close(self) -> None:
        self.conn.close()

    def take(self, table: Table) -> tuple[Table, tuple[str, str]]:
        """A key no change has touched yet; from the other table if this one ran out."""
        if not self.pools[table]:
            table = PRICES if table is STOCK else STOCK
        return table, self.pools[table].pop()

    def new_skus(self, n: int) -> list[str]:
        first = self._new_sku + 1
        self._new_sku += n
        return [f"N{i:07d}" for i in range(first, first + n)]

    def probe(self) -> tuple[tuple[str, str], dt.datetime]:
        """Change one stock row now (the benchmark waits for it to prove the stream
        is live); its key and its new updated_at."""
        key = self.pools[STOCK].pop()
        sent = scalar(self.conn, STOCK.update_sql + " returning r.updated_at", ([key[0]], [key[1]]))
        return key, sent

    # -- latency phase

    def _transaction(self, size: int, applied: Applied) -> None:
        """`size` changes in one transaction, grouped into one statement per kind and table."""
        updates: dict[Table, list[tuple[str, str]]] = {t: [] for t in TABLES}
        deletes: dict[Table, list[tuple[str, str]]] = {t: [] for t in TABLES}
        inserts: dict[Table, int] = {t: 0 for t in TABLES}
        for _ in range(size):
            table = STOCK if self.rnd.random() < 0.5 else PRICES
            kind = self.rnd.random()
            if kind < UPDATE_SHARE:
                t, key = self.take(table)
                updates[t].append(key)
            elif kind < UPDATE_SHARE + INSERT_SHARE:
                inserts[table] += 1
            else:
                t, key = self.take(table)
                deletes[t].append(key)
        with self.conn.transaction():
            for t in TABLES:
                if updates[t]:
                    cur = self.conn.execute(t.update_sql, ([k[0] for k in updates[t]], [k[1] for k in updates[t]]))
                    applied.updates += cur.rowcount
                if inserts[t]:
                    cur = self.conn.execute(t.insert_sql, (self.new_skus(inserts[t]),))
                    applied.inserts += cur.rowcount
                if deletes[t]:
                    keys = deletes[t]
                    cur = self.conn.execute(t.delete_sql, ([k[0] for k in keys], [k[1] for k in keys], t.entity))
                    applied.deletes += cur.rowcount

    def paced(self, rate: float, seconds: float, per_txn: int, kanal: Kanal) -> Applied:
        """`rate` changes/s for `seconds`: transaction i starts at t0 + i * per_txn / rate.

        The slots are fixed in advance, so a late transaction does not delay the
        ones after it (no drift); the phase ends at the end of the last slot.
        """
        txns = max(1, round(rate * seconds / per_txn))
        interval = per_txn / rate
        applied = Applied(started=db_now(self.conn))
        t0 = time.monotonic()
        next_report = t0 + 10
        for i in range(txns):
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                applied.behind_s = max(applied.behind_s, -delay)
            self._transaction(per_txn, applied)
            if time.monotonic() >= next_report:
                kanal.check()
                log(f"latency phase: {time.monotonic() - t0:.0f}s, {applied.changes:,} changes")
                next_report += 10
        remaining = t0 + txns * interval - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        applied.seconds = time.monotonic() - t0
        applied.ended = db_now(self.conn)
        return applied

    # -- throughput phase

    def flat_out(self, seconds: float) -> Applied:
        """For `seconds`, one statement per transaction, as fast as this connection goes:
        per round a 1,000-row UPDATE on each table (consecutive SKU ranges, wrapping),
        then BURST_SMALL inserted and BURST_SMALL deleted rows on each table."""
        applied = Applied(started=db_now(self.conn))
        skus_per_update = BURST_ROWS // 2
        t0 = time.monotonic()
        start = 0
        while time.monotonic() - t0 < seconds:
            low, high = f"P{start:06d}", f"P{start + skus_per_update:06d}"
            start = (start + skus_per_update) % self.products
            for t in TABLES:
                applied.updates += self.conn.execute(t.range_update_sql, (low, high)).rowcount
                if applied.first_commit is None:
                    applied.first_commit = db_now(self.conn)
            for t in TABLES:
                applied.inserts += self.conn.execute(t.insert_sql, (self.new_skus(BURST_SMALL),)).rowcount
                keys = [self.pools[t].pop() for _ in range(min(BURST_SMALL, len(self.pools[t])))]
                if keys:
                    cur = self.conn.execute(t.delete_sql, ([k[0] for k in keys], [k[1] for k in keys], t.entity))
                    applied.deletes += cur.rowcount
        applied.seconds = time.monotonic() - t0
        applied.ended = db_now(self.conn)
        return applied


def wait_converged(erp_dsn: str, shop_dsn: str, stall_s: float, kanal: Kanal) -> float:
    """Wait until every shop table equals its ERP table (row count and row-hash sum).

    The ERP is quiet by now, so it is fingerprinted once; only the shop is
    polled. A long backlog may take minutes to drain, so the wait only gives
    up when the shop stops changing for `stall_s`. The seconds returned are
    not a measurement (the polling interval is in them): the phases take their
    end times from the shop's own timestamps.
    """
    with psycopg.connect(erp_dsn) as conn:
        want = {t: fingerprint(conn, t.erp, t.row_sql) for t in TABLES}
    t0 = time.monotonic()
    last: dict[Table, tuple[int, str]] = {}
    changed = t0
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        while True:
            got = {t: fingerprint(conn, t.shop, t.row_sql) for t in TABLES}
            if got == want:
                return time.monotonic() - t0
            kanal.check()
            if got != last:
                last, changed = got, time.monotonic()
            elif time.monotonic() - changed > stall_s:
                raise BenchError(f"the shop stopped changing for {stall_s:.0f}s before it equalled the ERP")
            time.sleep(POLL_S)


@dataclasses.dataclass(frozen=True)
class Sample:
    kind: str  # update, insert, delete
    offset_s: float  # source time since the phase started
    latency_ms: float


def latency_samples(erp_dsn: str, shop_dsn: str, since: dt.datetime) -> tuple[list[Sample], int]:
    """Per change of the phase: sink time minus source time. Also the number of ERP
    deletes without a shop delete (0 once the shop has converged)."""
    samples: list[Sample] = []
    with psycopg.connect(shop_dsn) as conn:
        for t in TABLES:
            rows = conn.execute(
                f"select left(sku, 1) = 'N', extract(epoch from updated_at - %(s)s)::float8, "
                f"extract(epoch from synced_at - updated_at)::float8 * 1000 from {t.shop} where updated_at >= %(s)s",
                {"s": since},
            ).fetchall()
            samples += [Sample("insert" if new else "update", off, ms) for new, off, ms in rows]
        shop_deleted = {
            (e, k): at
            for e, k, at in conn.execute(
                "select entity, key, deleted_at from deleted_log where deleted_at >= %s", (since,)
            ).fetchall()
        }
    with psycopg.connect(erp_dsn) as conn:
        erp_deleted = conn.execute(
            "select entity, key, deleted_at from erp_deleted where deleted_at >= %s", (since,)
        ).fetchall()
    unmatched = 0
    for entity, key, at in erp_deleted:
        sink = shop_deleted.get((entity, key))
        if sink is None:
            unmatched += 1
            continue
        samples.append(Sample("delete", (at - since).total_seconds(), (sink - at).total_seconds() * 1000))
    return samples, unmatched


def last_shop_write(shop_dsn: str, since: dt.datetime) -> dt.datetime:
    """When the shop received its last change of a phase: its newest synced_at or delete time.

    Taken once the shop has converged, so it is the moment the shop first held
    every change, whatever the polling interval was.
    """
    with psycopg.connect(shop_dsn) as conn:
        times = [scalar(conn, f"select max(synced_at) from {t.shop} where updated_at >= %s", (since,)) for t in TABLES]
        times.append(scalar(conn, "select max(deleted_at) from deleted_log where deleted_at >= %s", (since,)))
    found = [t for t in times if t is not None]
    if not found:
        raise BenchError("the shop holds no change of the throughput phase")
    return max(found)


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: always a latency that occurred, no interpolation."""
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def spread(values: Sequence[float]) -> str:
    ordered = sorted(values)
    if not ordered:
        return "no samples"
    return (
        f"p50 {percentile(ordered, 50):,.0f} ms  p90 {percentile(ordered, 90):,.0f} ms  "
        f"p99 {percentile(ordered, 99):,.0f} ms  max {ordered[-1]:,.0f} ms  ({len(ordered):,} changes)"
    )


# --------------------------------------------------------------------------- run


@dataclasses.dataclass
class Report:
    """Everything the summary prints; filled in as the run goes, so a failed run
    still shows what it measured before the failure."""

    products: int
    rate: float
    seconds: float
    per_txn: int
    burst_seconds: float
    pg_version: str = "?"
    revision: str = "?"  # of Kanal, when it started
    stock_rows: int = 0
    price_rows: int = 0
    migration_s: float | None = None
    probe_ms: float | None = None
    latency: Applied | None = None
    samples: list[Sample] = dataclasses.field(default_factory=list)
    unmatched_deletes: int = 0
    latency_cpu: Cpu | None = None
    burst: Applied | None = None
    burst_last_write: dt.datetime | None = None
    burst_cpu: Cpu | None = None
    peak_rss: int = 0
    kanal_exit: int | None = None
    kanal_final: str = ""
    kanal_stderr: str = ""
    cleanup: str = ""
    errors: list[str] = dataclasses.field(default_factory=list)


def run(args: argparse.Namespace, servers: LogicalServers, report: Report) -> None:
    erp, shop = servers.erp_dsn, servers.shop_dsn
    t0 = time.monotonic()
    seed(erp, shop, args.products)
    report.stock_rows, report.price_rows = count_rows(erp, "erp_stock"), count_rows(erp, "erp_prices")
    with psycopg.connect(erp) as conn:
        report.pg_version = scalar(conn, "show server_version")
    log(f"seeded {report.stock_rows:,} stock and {report.price_rows:,} price rows in {time.monotonic() - t0:.1f}s")
    writer = ErpWriter(erp, args.products, args.seed)
    with temp_dir("kbench-latency-") as work:
        kanal = Kanal(work, erp, shop)
        report.revision = kanal_revision()
        pid = kanal.start()
        try:
            sampler = TreeSampler(pid, interval=0.5)
            sampler.start()
            try:
                measure(args, servers, report, writer, kanal, pid)
            finally:
                sampler.stop()
                report.peak_rss = sampler.peak_rss
        finally:
            writer.close()
            report.kanal_exit = kanal.stop()
            report.kanal_stderr = kanal.stderr
            lines = [line for line in kanal.stdout.splitlines() if line.startswith("sync ")]
            report.kanal_final = lines[-1] if lines else ""
            if report.kanal_exit is None:
                report.errors.append("kanal did not exit after SIGTERM and was killed")
            elif report.kanal_exit != 0:
                report.errors.append(f"kanal exited with {report.kanal_exit} after SIGTERM")
            done = kanal.cleanup()
            report.cleanup = "; ".join(line.strip() for line in done.stdout.splitlines() if line.strip())
            if done.returncode != 0:
                report.errors.append(f"kanal cleanup exited with {done.returncode}: {tail(done.stderr, 5)}")


def measure(
    args: argparse.Namespace, servers: LogicalServers, report: Report, writer: ErpWriter, kanal: Kanal, pid: int
) -> None:
    erp, shop = servers.erp_dsn, servers.shop_dsn
    t0 = time.monotonic()
    report.migration_s = wait_until(
        "the migration to copy every row",
        lambda: (
            count_rows(shop, "shop_stock") == report.stock_rows and count_rows(shop, "shop_prices") == report.price_rows
        ),
        args.timeout,
        kanal,
    )
    log(f"migration complete {report.migration_s:.1f}s after starting kanal")

    # The stream starts after the migration; one change that arrives proves it is
    # live, so the latency phase does not measure its start-up.
    key, sent = writer.probe()
    with psycopg.connect(shop, autocommit=True) as conn:
        wait_until(
            "the first streamed change",
            lambda: scalar(conn, "select updated_at from shop_stock where sku = %s and location = %s", key) == sent,
            args.timeout,
            kanal,
            interval=0.05,
        )
        synced = scalar(conn, "select synced_at from shop_stock where sku = %s and location = %s", key)
    report.probe_ms = (synced - sent).total_seconds() * 1000
    log(f"stream live: the probe change took {report.probe_ms:.0f} ms ({time.monotonic() - t0:.1f}s after start)")

    log(f"latency phase: {args.rate:,.0f} changes/s for {args.seconds:.0f}s, {args.per_txn} per transaction")
    cpu0 = Cpu.read(pid, servers.server_pids)
    applied = writer.paced(args.rate, args.seconds, args.per_txn, kanal)
    report.latency = applied
    took = wait_converged(erp, shop, args.timeout, kanal)
    report.latency_cpu = Cpu.read(pid, servers.server_pids) - cpu0
    assert applied.started is not None
    report.samples, report.unmatched_deletes = latency_samples(erp, shop, applied.started)
    log(f"latency phase: {applied.changes:,} changes; the shop equalled the ERP {took:.1f}s after the last one")
    if len(report.samples) != applied.changes:
        report.errors.append(f"measured {len(report.samples):,} changes of {applied.changes:,} applied")

    log(f"throughput phase: as fast as possible for {args.burst_seconds:.0f}s")
    cpu0 = Cpu.read(pid, servers.server_pids)
    burst = writer.flat_out(args.burst_seconds)
    report.burst = burst
    log(f"throughput phase: the ERP wrote {burst.changes:,} changes in {burst.seconds:.1f}s; waiting for the shop")
    took = wait_converged(erp, shop, args.timeout, kanal)
    report.burst_cpu = Cpu.read(pid, servers.server_pids) - cpu0
    assert burst.started is not None
    report.burst_last_write = last_shop_write(shop, burst.started)
    log(f"throughput phase: the shop equalled the ERP {took:.1f}s after the ERP stopped")


# --------------------------------------------------------------------------- report


def machine_line() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM, {system}"


def kanal_revision() -> str:
    """The commit measured, and whether Kanal's code (bench/ aside) differed from it.

    Read when Kanal starts: the tree may change while a long run goes on, and
    the running process keeps the code it imported.
    """
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        diff = ["git", "-C", str(REPO_DIR), "diff", "--quiet", "HEAD", "--", ".", ":(exclude)bench"]
        dirty = subprocess.run(diff, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "?"


def print_report(r: Report) -> None:
    print()
    print("Kanal CDC stream: PostgreSQL -> embedded Kafka -> PostgreSQL (`kanal run`, delta: cdc, heartbeat_s 1)")
    print(f"machine: {machine_line()}")
    print(f"postgres: {r.pg_version} (pgserver), one server with databases erp and shop, wal_level=logical")
    print(f"kanal commit: {r.revision}")
    print(
        f"seed: {r.products:,} SKUs = {r.stock_rows:,} erp_stock + {r.price_rows:,} erp_prices rows "
        "(REPLICA IDENTITY FULL)"
    )
    if r.migration_s is not None:
        probe = f"{r.probe_ms:,.0f} ms" if r.probe_ms is not None else "-"
        print(f"start-up + migration: {r.migration_s:.1f}s; first streamed change (probe): {probe}")
    if r.peak_rss:
        print(f"peak RSS of kanal + embedded broker: {fmt_bytes(r.peak_rss)}")

    a = r.latency
    if a is not None:
        print()
        print(
            f"latency phase: target {r.rate:,.0f} changes/s for {r.seconds:.0f}s, {r.per_txn} changes per transaction "
            f"({UPDATE_SHARE:.0%} updates, {INSERT_SHARE:.0%} inserts, {1 - UPDATE_SHARE - INSERT_SHARE:.0%} deletes; "
            "stock and prices alike; every change on its own key)"
        )
        print(
            f"  applied   {a.mix} in {a.seconds:.1f}s = {a.changes / a.seconds:,.0f} changes/s "
            f"(at most {a.behind_s * 1000:.0f} ms behind schedule)"
        )
        print(
            f"  measured  {len(r.samples):,} of {a.changes:,} changes"
            + (f"; {r.unmatched_deletes:,} deletes never reached the shop" if r.unmatched_deletes else "")
        )
        print(f"  latency   {spread([s.latency_ms for s in r.samples])}")
        for kind in ("update", "insert", "delete"):
            print(f"    {kind:<7} {spread([s.latency_ms for s in r.samples if s.kind == kind])}")
        windows: dict[int, list[float]] = {}
        for s in r.samples:
            windows.setdefault(int(s.offset_s // 10), []).append(s.latency_ms)
        if len(windows) > 1:
            print(
                "  p99 per 10 s of the phase: "
                + "  ".join(f"{percentile(sorted(v), 99):,.0f}" for _, v in sorted(windows.items()))
                + " ms"
            )
        if r.latency_cpu is not None:
            print(f"  CPU       {r.latency_cpu.describe()}")
            if warning := r.latency_cpu.warning():
                print(f"  {warning}")

    b = r.burst
    if b is not None:
        print()
        print(
            f"throughput phase: for {r.burst_seconds:.0f}s as fast as one connection writes (per round a "
            f"{BURST_ROWS:,}-row UPDATE on each table, {BURST_SMALL}-row INSERTs and DELETEs; one statement per "
            "transaction)"
        )
        print(f"  ERP wrote {b.mix} in {b.seconds:.1f}s = {b.changes / b.seconds:,.0f} changes/s")
        if r.burst_last_write is not None and b.first_commit is not None and b.ended is not None:
            span = (r.burst_last_write - b.first_commit).total_seconds()
            drained = (r.burst_last_write - b.ended).total_seconds()
            print(
                f"  delivered all {b.changes:,} changes {span:.1f}s after the first commit = "
                f"{b.changes / span:,.0f} changes/s sustained (the shop held the last one {drained:.1f}s after the "
                "ERP's last commit)"
            )
        if r.burst_cpu is not None:
            print(f"  CPU       {r.burst_cpu.describe()}")
            if warning := r.burst_cpu.warning():
                print(f"  {warning}")

    print()
    print(f"kanal: SIGTERM -> exit {r.kanal_exit}" + (f'; "{r.kanal_final}"' if r.kanal_final else ""))
    if r.kanal_exit != 0 and r.kanal_stderr:
        print("kanal stderr (tail):\n" + tail(r.kanal_stderr, 20))
    print(f"cleanup: {r.cleanup or '-'}")
    print()
    print(
        "Latency = sink time - source time, both from the one PostgreSQL server's clock. Source: the ERP row's "
        "updated_at = clock_timestamp() in the changing statement (deletes: logged by the deleting statement). Sink: "
        "clock_timestamp() in the shop's trigger or column default, i.e. during Kanal's write statement, a few ms "
        "before its commit; close enough, but the true commit-to-commit time is slightly longer."
    )
    if r.samples and r.burst is not None and r.burst_last_write is not None and r.burst.first_commit is not None:
        p99 = percentile(sorted(s.latency_ms for s in r.samples), 99)
        rate = r.burst.changes / (r.burst_last_write - r.burst.first_commit).total_seconds()
        print(
            f"targets: p99 < 1,000 ms at {r.rate:,.0f} changes/s: {'met' if p99 < 1000 else 'MISSED'} ({p99:,.0f} ms); "
            f"sustained > 10,000 changes/s: {'met' if rate > 10_000 else 'MISSED'} ({rate:,.0f})"
        )
    for e in r.errors:
        print(f"FAILED: {e}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1_000.0, help="changes/s in the latency phase (default 1000)")
    ap.add_argument("--seconds", type=float, default=None, help="length of the latency phase (default 60, --quick 10)")
    ap.add_argument(
        "--burst-seconds", type=float, default=None, help="length of the throughput phase (default 20, --quick 2)"
    )
    ap.add_argument("--per-txn", type=int, default=10, help="changes per transaction in the latency phase (default 10)")
    ap.add_argument(
        "--products",
        type=int,
        default=None,
        help="SKUs seeded; 2 stock + 2 price rows each (default 50000, --quick 10000)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 s latency, 2 s throughput, 10k SKUs")
    ap.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the migration, or for the shop to change again while it converges",
    )
    ap.add_argument("--seed", type=int, default=7, help="random seed of the change mix")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S seconds for the 1-minute load average to drop below --idle-load",
    )
    ap.add_argument("--idle-load", type=float, default=0.3, help="load average counted as idle by --wait-idle")
    args = ap.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds if args.seconds is not None else (10.0 if quick else 60.0)
    args.burst_seconds = args.burst_seconds if args.burst_seconds is not None else (2.0 if quick else 20.0)
    args.products = args.products if args.products is not None else (10_000 if quick else 50_000)
    if args.rate <= 0 or args.seconds <= 0 or args.burst_seconds <= 0 or args.per_txn < 1:
        ap.error("--rate, --seconds, --burst-seconds must be positive and --per-txn at least 1")
    if args.products < BURST_ROWS:
        ap.error(f"--products must be at least {BURST_ROWS}")
    # Every change of the latency phase takes a key of its own (plus one for the
    # probe); the seed has four keys per SKU.
    needed = round(args.rate * args.seconds) + 1
    if needed > 4 * args.products:
        ap.error(f"{needed:,} changes need as many seeded keys: raise --products to {math.ceil(needed / 4):,}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    if args.wait_idle > 0:
        log(f"load average {wait_idle(args.wait_idle, args.idle_load):.2f} at start")
    report = Report(args.products, args.rate, args.seconds, args.per_txn, args.burst_seconds)
    try:
        servers = LogicalServers()
    except Exception as e:  # noqa: BLE001 - reported as a setup failure
        log(f"could not start PostgreSQL with wal_level=logical: {e}")
        return 2
    with servers:
        try:
            run(args, servers, report)
        except BenchError as e:
            report.errors.append(str(e))
        except psycopg.Error as e:
            report.errors.append(f"database error: {type(e).__name__}: {e}")
    print_report(report)
    if report.errors:
        return 2 if report.migration_s is None else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
