"""Shared pieces of the Kanal benchmarks: throwaway PostgreSQL, test data, checks.

Everything here runs with the project's own venv (/work/main/.venv): pgserver,
psycopg 3 and psutil. Nothing in this module imports Kanal, so the harness keeps
working while Kanal itself is being built.

* `Servers` starts the "ERP" and "shop" databases on throwaway PostgreSQL 16
  instances (pgserver), either one server with two databases or two servers
  (`topology`), and stops them again (also at interpreter exit).
* `generate_prices` fills `erp_prices` with N rows in one INSERT ... SELECT over
  generate_series (no Python row loop).
* `checksum` is an order-independent fingerprint of the canonical columns that
  does not care how a target typed them (numeric vs text, timestamp vs
  timestamptz), so a table written by COPY, dlt or Kanal compares with the source.
* `run_measured` runs a command as a child process group, samples the RSS of its
  whole process tree every 50 ms, and kills the group on timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent

SOURCE_TABLE = "erp_prices"
TARGET_TABLE = "shop_prices"
KEY_COLUMNS = ("sku", "price_list", "customer_no", "currency", "min_qty")
COLUMNS = (
    "sku",
    "price_list",
    "customer_no",
    "currency",
    "min_qty",
    "amount",
    "valid_from",
    "valid_to",
    "updated_at",
)

PRICES_DDL = """
create table {table} (
  sku text not null,
  price_list text not null,
  customer_no text,
  currency text not null,
  min_qty numeric(12,3),
  amount numeric(12,2) not null,
  valid_from timestamptz,
  valid_to timestamptz,
  updated_at timestamptz not null
)
"""

# The key is unique with NULL counted as a value (a list price has no customer).
KEY_INDEX_DDL = (
    "create unique index {index} on {table} (sku, price_list, customer_no, currency, min_qty) nulls not distinct"
)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so atexit stops the servers and a running
    method's process group is killed (run_measured) when the harness is stopped."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- servers


class Servers:
    """Throwaway PostgreSQL for the benchmark: databases `erp` and `shop`.

    topology "one": one server, two databases (the default; one set of
    background processes on a 2-core machine).
    topology "two": one server per database, as an ERP and a shop would be.
    Measured at 1M rows, "two" makes every method 2-3% faster (separate shared
    buffers) and leaves the ratios between methods unchanged (bench/README.md).

    pgserver runs postgres as the system user `pgserver` when we are root, so
    the data folders live under a world-accessible temp folder. `close()` stops
    the servers and deletes the folders; it is also registered with atexit.
    """

    def __init__(self, topology: str = "one", base_dir: str | None = None) -> None:
        if topology not in ("one", "two"):
            raise ValueError("topology must be 'one' or 'two'")
        self.topology = topology
        self._root = Path(tempfile.mkdtemp(prefix="kbench-", dir=base_dir))
        os.chmod(self._root, 0o777)
        self._servers: list[Any] = []
        self._closed = False
        atexit.register(self.close)
        self.erp_dsn, self.shop_dsn = self._start()

    def _server(self, name: str) -> Any:
        import pgserver  # imported late: only the harness process needs it

        folder = self._root / name
        folder.mkdir()
        os.chmod(folder, 0o777)
        srv = pgserver.get_server(folder, cleanup_mode="stop")
        self._servers.append(srv)
        return srv

    def _start(self) -> tuple[str, str]:
        t0 = time.monotonic()
        if self.topology == "one":
            srv = self._server("pg")
            self._tune(srv.get_uri())
            with psycopg.connect(srv.get_uri(), autocommit=True) as conn:
                conn.execute("create database erp")
                conn.execute("create database shop")
            dsns = srv.get_uri("erp"), srv.get_uri("shop")
            self._shop_admin = srv.get_uri()
        else:
            erp, shop = self._server("pg-erp"), self._server("pg-shop")
            for srv, db in ((erp, "erp"), (shop, "shop")):
                self._tune(srv.get_uri())
                with psycopg.connect(srv.get_uri(), autocommit=True) as conn:
                    conn.execute(f"create database {db}")
            dsns = erp.get_uri("erp"), shop.get_uri("shop")
            self._shop_admin = shop.get_uri()
        log(f"postgres up ({self.topology} server(s)) in {time.monotonic() - t0:.1f}s: {dsns[0]} / {dsns[1]}")
        return dsns

    @staticmethod
    def _tune(admin_dsn: str) -> None:
        """pgserver's defaults stay (128 MB shared_buffers, fsync on); only the
        checkpoint spacing is widened so that no method is hit by a WAL-size
        checkpoint another method triggered: we CHECKPOINT between methods."""
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute("alter system set max_wal_size = '4GB'")
            conn.execute("alter system set checkpoint_timeout = '30min'")
            conn.execute("select pg_reload_conf()")

    def recreate_shop(self) -> None:
        """Drop and recreate the shop database: every method starts from an empty target."""
        with psycopg.connect(self._shop_admin, autocommit=True) as conn:
            conn.execute("drop database if exists shop with (force)")
            conn.execute("create database shop")

    @property
    def server_pids(self) -> list[int]:
        return [int(s.get_pid()) for s in self._servers if s.get_pid()]

    def checkpoint(self) -> None:
        """Flush dirty buffers on every server so each method starts from the same state."""
        for dsn in {self.erp_dsn, self.shop_dsn}:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("checkpoint")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for srv in self._servers:
            with contextlib.suppress(Exception):
                srv.cleanup()
        # Belt and braces: a postmaster that outlived pg_ctl stop (it should not)
        # is one we started, so we stop it by its pid.
        for srv in self._servers:
            with contextlib.suppress(Exception):
                info = srv._postmaster_info  # noqa: SLF001 - pgserver has no public accessor
                if info is not None and info.process.is_running():
                    info.process.terminate()
                    info.process.wait(5)
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- data

# Row i (0-based) of N. With S = min(100_000, N // 10) SKUs, row i belongs to SKU i % S
# and is that SKU's slot j = i // S. The key stays unique by construction:
#   slot 0            list price: customer_no NULL, min_qty NULL, EUR
#   slot 1, 2         tier prices (every 5th SKU): customer_no NULL, min_qty 10 / 100
#   every other slot  customer price: customer_no = C + ((j*7919 + sku*13) mod 50000),
#                     injective in j for a fixed SKU (7919 is prime to 50000), so no
#                     SKU has two rows for one customer; 10% of them also min_qty 10.
# Currency: list and tier prices EUR; customer prices ~90% EUR, 7% CHF, 3% USD.
# At 1M rows: 100k SKUs, ~10% list, ~4% tier, ~86% customer-specific rows,
# ~49k distinct customers. A unique index (NULLS NOT DISTINCT) over the key,
# built after the load, proves the uniqueness.
GENERATE_SQL = """
insert into erp_prices (sku, price_list, customer_no, currency, min_qty, amount,
                        valid_from, valid_to, updated_at)
select
  'SKU' || lpad(s::text, 6, '0')                                        as sku,
  case when kind = 'customer' then 'B2B' else 'STANDARD' end             as price_list,
  case when kind = 'customer'
       then 'C' || lpad(((j * 7919 + s * 13) % 50000)::text, 6, '0') end as customer_no,
  case when kind <> 'customer' then 'EUR'
       when h % 100 < 90 then 'EUR'
       when h % 100 < 97 then 'CHF'
       else 'USD' end                                                    as currency,
  case when kind = 'tier' then (case when j = 1 then 10 else 100 end)::numeric(12,3)
       when kind = 'customer' and h % 10 = 0 then 10::numeric(12,3) end  as min_qty,
  round((0.50 + (h % 500000) / 100.0)
        * case when kind = 'tier' then (case when j = 1 then 0.95 else 0.90 end)
               else 1 end, 2)::numeric(12,2)                             as amount,
  timestamptz '2024-01-01 00:00:00+00' + ((h % 365) * interval '1 day')  as valid_from,
  case when h % 7 = 0 then timestamptz '2026-12-31 23:59:59+00' end     as valid_to,
  timestamptz '2025-06-01 00:00:00+00' - (i * interval '1 second')       as updated_at
from (
  select i, s, j, h,
         case when j = 0 then 'list'
              when j in (1, 2) and s % 5 = 0 then 'tier'
              else 'customer' end as kind
  from (
    select i, i % {skus} as s, i / {skus} as j,
           (hashint8(i) & 2147483647)::bigint as h
    from generate_series(0::bigint, {rows}::bigint - 1) as i
  ) base
) t
"""


def generate_prices(dsn: str, rows: int, *, skus: int | None = None) -> float:
    """(Re)create erp_prices with `rows` rows; return the seconds it took.

    SKUs default to rows/10 capped at 100k, so every size up to 1M rows has the
    same mix (10 price rows per SKU: 1 list, tiers on every 5th SKU, the rest
    customer prices).
    """
    if skus is None:
        skus = min(100_000, rows // 10)
    skus = max(1, min(skus, rows))
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"drop table if exists {SOURCE_TABLE}")
        conn.execute(PRICES_DDL.format(table=SOURCE_TABLE))
        conn.execute(GENERATE_SQL.format(rows=int(rows), skus=int(skus)))  # no params: % is modulo
        # Proves the key is unique (NULL customer_no counted as a value), like an
        # ERP that enforces it, and gives readers an index on the key.
        conn.execute(KEY_INDEX_DDL.format(index="erp_prices_key", table=SOURCE_TABLE))
        # Sets hint bits and the visibility map now, so the first method to read
        # the table does not pay for that and the later ones get it free.
        conn.execute(f"vacuum (analyze, freeze) {SOURCE_TABLE}")
    return time.monotonic() - t0


def create_target(dsn: str, table: str = TARGET_TABLE, *, with_index: bool = True) -> None:
    """A fresh target with the same columns and (unless told not to) the unique key index."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"drop table if exists {table} cascade")
        conn.execute(PRICES_DDL.format(table=table))
        if with_index:
            conn.execute(KEY_INDEX_DDL.format(index=f"{table}_key", table=table))


def drop_table(dsn: str, table: str, schema: str = "public") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop table if exists {} cascade").format(sql.Identifier(schema, table)))


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))


def reset_targets(dsn: str, extra_schemas: Sequence[str] = ()) -> None:
    """Empty the shop database: no shop_prices anywhere, no dataset schemas."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in extra_schemas:
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))
        rows = conn.execute(
            "select table_schema from information_schema.tables where table_name = %s",
            (TARGET_TABLE,),
        ).fetchall()
        for (schema,) in rows:
            conn.execute(sql.SQL("drop table if exists {} cascade").format(sql.Identifier(schema, TARGET_TABLE)))


def find_table(dsn: str, table: str, schemas: Sequence[str] | None = None) -> str | None:
    """The schema holding `table` (first of `schemas` if given), or None."""
    with psycopg.connect(dsn) as conn:
        found = [
            r[0]
            for r in conn.execute(
                "select table_schema from information_schema.tables where table_name = %s order by 1",
                (table,),
            ).fetchall()
        ]
    if schemas:
        for s in schemas:
            if s in found:
                return s
    return found[0] if found else None


def row_count(dsn: str, table: str, schema: str = "public") -> int:
    with psycopg.connect(dsn) as conn:
        q = sql.SQL("select count(*) from {}").format(sql.Identifier(schema, table))
        return int(conn.execute(q).fetchone()[0])  # type: ignore[index]


# Each column rendered canonically whatever type the target gave it: via text,
# so numeric(38,9), text '12.50' and numeric(12,2) all read 12.50, and
# timestamp / timestamptz / ISO text all read the same instant (session in UTC).
_CANON = {
    "sku": "{c}::text",
    "price_list": "{c}::text",
    "customer_no": "{c}::text",
    "currency": "{c}::text",
    "min_qty": "({c}::text::numeric)::numeric(12,3)::text",
    "amount": "({c}::text::numeric)::numeric(12,2)::text",
    "valid_from": "extract(epoch from {c}::text::timestamptz)::text",
    "valid_to": "extract(epoch from {c}::text::timestamptz)::text",
    "updated_at": "extract(epoch from {c}::text::timestamptz)::text",
}


def _row_text() -> str:
    # NULL is rendered as \N so that NULL and '' differ; parts joined by U+001F.
    parts = [f"coalesce({_CANON[c].format(c=sql.Identifier(c).as_string(None))}, '\\N')" for c in COLUMNS]
    return "concat_ws(chr(31), " + ", ".join(parts) + ")"


@dataclasses.dataclass(frozen=True)
class Checksum:
    rows: int
    amount_sum: str
    row_hash_sum: str  # sum of 64-bit hashes of each canonical row (order-independent)
    distinct_keys: int | None = None

    def same_data(self, other: Checksum) -> bool:
        return (self.rows, self.amount_sum, self.row_hash_sum) == (other.rows, other.amount_sum, other.row_hash_sum)


def checksum(dsn: str, table: str, schema: str = "public", *, distinct_keys: bool = False) -> Checksum:
    """count, sum(amount) and the sum of per-row hashes over the canonical columns.

    A hash *sum* is order-independent and needs no sort (a 1M-row check is a
    sequential scan); a missing, duplicated or altered row changes it.
    `distinct_keys` also counts distinct keys (NULL as a value), which costs a sort.
    """
    tbl = sql.Identifier(schema, table).as_string(None)
    q = (
        f"select count(*), coalesce(sum(amount::text::numeric), 0)::numeric(20,2)::text, "
        f"coalesce(sum(hashtextextended({_row_text()}, 0)::numeric), 0)::text from {tbl}"
    )
    with psycopg.connect(dsn) as conn:
        conn.execute("set timezone = 'UTC'")
        conn.execute("set extra_float_digits = 3")
        n, amount, h = conn.execute(q).fetchone()  # type: ignore[misc]
        dk = None
        if distinct_keys:
            keys = ", ".join(f"coalesce({_CANON[c].format(c=c)}, '\\N')" for c in KEY_COLUMNS)
            dk = int(conn.execute(f"select count(distinct ({keys})) from {tbl}").fetchone()[0])  # type: ignore[index]
    return Checksum(int(n), str(amount), str(h), dk)


def table_size(dsn: str, table: str, schema: str = "public") -> int:
    with psycopg.connect(dsn) as conn:
        return int(
            conn.execute("select pg_total_relation_size(%s::regclass)", (f'"{schema}"."{table}"',)).fetchone()[0]  # type: ignore[index]
        )


def source_select_sql() -> str:
    return f"select {', '.join(COLUMNS)} from {SOURCE_TABLE}"


# --------------------------------------------------------------------------- processes


@dataclasses.dataclass
class RunResult:
    returncode: int | None  # None: killed on timeout
    seconds: float  # wall time from start to exit
    peak_rss: int  # bytes, sum over the process tree, max over the 50 ms samples
    peak_procs: int  # most processes seen in the tree at once
    cpu_seconds: float  # user+sys of the tree (children that were waited for)
    stdout: str
    stderr: str
    timed_out: bool = False
    samples: int = 0
    machine_cpu_seconds: float = 0.0  # user+sys of the whole machine while it ran (all processes)
    peak_by_name: dict[str, int] = dataclasses.field(default_factory=dict)


class TreeSampler(threading.Thread):
    """Every `interval` s, sum RSS over a process and all its descendants; keep the peak."""

    def __init__(self, pid: int, interval: float = 0.05, exclude: Sequence[int] = ()) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.exclude = set(exclude)
        self.peak_rss = 0
        self.peak_procs = 0
        self.samples = 0
        self.peak_by_name: dict[str, int] = {}  # per process name: max over samples of its summed RSS
        self.cpu_by_pid: dict[int, float] = {}  # last seen user+sys of every process of the tree
        self._stop_evt = threading.Event()

    def sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        n = 0
        by_name: dict[str, int] = {}
        for p in procs:
            if p.pid in self.exclude:
                continue
            try:
                rss = p.memory_info().rss
                name = p.name()
                ct = p.cpu_times()
                self.cpu_by_pid[p.pid] = ct.user + ct.system
            except psutil.Error:
                continue
            total += rss
            n += 1
            by_name[name] = by_name.get(name, 0) + rss
        for name, rss in by_name.items():
            self.peak_by_name[name] = max(self.peak_by_name.get(name, 0), rss)
        self.samples += 1
        self.peak_rss = max(self.peak_rss, total)
        self.peak_procs = max(self.peak_procs, n)

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.sample()
            self._stop_evt.wait(self.interval)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=5)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, all processes)."""
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def _merge_truncated(peaks: dict[str, int]) -> dict[str, int]:
    """Fold a 15-character kernel comm (seen just before exec) into the full name it prefixes."""
    out = dict(peaks)
    for name in list(out):
        if len(name) == 15:
            longer = [n for n in out if n != name and n.startswith(name)]
            if longer:
                out[longer[0]] = max(out[longer[0]], out.pop(name))
    return out


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_measured(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 1800.0,
    interval: float = 0.05,
    exclude_pids: Sequence[int] = (),
    echo_stderr: bool = False,
) -> RunResult:
    """Run `cmd` in its own process group; sample tree RSS; kill the group on timeout.

    stdout and stderr go to temp files (a pipe that nobody reads could stall the
    child). The postgres servers are not descendants of the child, so their
    memory is never counted; `exclude_pids` is there for anything else.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        cpu0 = _children_cpu()
        busy0 = machine_busy_seconds()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=None if echo_stderr else err,
            start_new_session=True,
        )
        sampler = TreeSampler(proc.pid, interval, exclude_pids)
        sampler.sample()
        sampler.start()
        timed_out = False
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            rc = None
        except BaseException:  # Ctrl-C: do not leave the group running
            _kill_group(proc)
            sampler.stop()
            raise
        seconds = time.perf_counter() - t0
        busy = machine_busy_seconds() - busy0
        sampler.stop()
        if timed_out:
            _kill_group(proc)
        else:
            # Descendants left behind by a child that exited are ours to stop.
            _kill_group(proc, quiet=True)
        # CPU of the tree: rusage counts the child and every descendant it waited
        # for; the samples also see descendants nobody waited for (e.g. a broker
        # killed by PDEATHSIG), each up to its last 50 ms. Take the larger.
        cpu = max(_children_cpu() - cpu0, sum(sampler.cpu_by_pid.values()))
        out.seek(0)
        err.seek(0)
        return RunResult(
            returncode=rc,
            seconds=seconds,
            peak_rss=sampler.peak_rss,
            peak_procs=sampler.peak_procs,
            cpu_seconds=cpu,
            stdout=out.read(),
            stderr=err.read(),
            timed_out=timed_out,
            samples=sampler.samples,
            machine_cpu_seconds=busy,
            peak_by_name=_merge_truncated(sampler.peak_by_name),
        )


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group `pgid`.

    `killpg(pgid, 0)` is not enough: a descendant reparented to a PID 1 that
    does not reap (as in some sandboxes) stays a zombie in the group forever.
    """
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return False


def _kill_group(proc: subprocess.Popen[Any], quiet: bool = False) -> None:
    """Stop the process group we created for `proc` (start_new_session: pgid == pid): TERM, then KILL."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(pgid):
            break
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(pgid):
            with contextlib.suppress(ChildProcessError):
                proc.poll()  # reap our own child as soon as it exits
            time.sleep(0.05)
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)
    if not quiet and (proc.returncode is None or _group_alive(pgid)):
        log(f"process group {pgid} did not stop")


def server_cpu_seconds(postmaster_pids: Sequence[int]) -> float:
    """CPU used so far by the postgres servers: postmaster + live children + reaped backends.

    A backend's CPU lands in the postmaster's children_* times once it exits and
    is reaped, so a delta of this across a method counts the method's backends.
    """
    total = 0.0
    for pid in postmaster_pids:
        try:
            pm = psutil.Process(pid)
            t = pm.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
            for child in pm.children():
                with contextlib.suppress(psutil.Error):
                    ct = child.cpu_times()
                    total += ct.user + ct.system
        except psutil.Error:
            pass
    return total


def fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


if __name__ == "__main__":
    # Smoke test: python bench/common.py [ROWS] [one|two]
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    topo = sys.argv[2] if len(sys.argv) > 2 else "one"
    with Servers(topo) as s:
        secs = generate_prices(s.erp_dsn, n)
        log(f"generated {n} rows in {secs:.1f}s ({table_size(s.erp_dsn, SOURCE_TABLE) / 2**20:.0f} MiB with index)")
        t = time.monotonic()
        c = checksum(s.erp_dsn, SOURCE_TABLE, distinct_keys=True)
        log(f"checksum {c} in {time.monotonic() - t:.2f}s")
        with psycopg.connect(s.erp_dsn) as conn:
            for r in conn.execute(
                "select case when customer_no is not null then 'customer' when min_qty is not null then 'tier' "
                "else 'list' end k, currency, count(*) from erp_prices group by 1, 2 order by 1, 2"
            ):
                print(*r)
            print(conn.execute("select count(distinct sku), count(distinct customer_no) from erp_prices").fetchone())
            for r in conn.execute("select * from erp_prices order by sku, customer_no nulls first limit 6"):
                print(r)


def wait_idle(seconds: float, idle_load: float, poll_s: float = 2.0) -> float:
    """Wait (up to `seconds`) until the 1-minute load average drops below `idle_load`.

    Figures on a small shared machine suffer from any other load; returns the last reading.
    """
    deadline = time.monotonic() + seconds
    load = os.getloadavg()[0]
    while load > idle_load and time.monotonic() < deadline:
        time.sleep(poll_s)
        load = os.getloadavg()[0]
    return load
