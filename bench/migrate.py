"""Bulk migration benchmark: the same erp_prices rows moved by COPY, dlt and Kanal.

    .venv/bin/python bench/migrate.py --rows 1000000 [--repeat 1] [--only kanal,dlt,copy] [--json]
    (--only also takes copy-late-index; the default is copy,dlt,kanal)

One run starts throwaway PostgreSQL (databases `erp` and `shop`), generates
`--rows` price rows in erp, then for each repeat and method:

  1. drops and recreates the shop database (every method starts from nothing),
     and CHECKPOINTs, so no method inherits another one's dirty buffers;
  2. starts the method as a child process (own process group) and samples the
     RSS of its whole process tree every 50 ms (the postgres servers are not in
     that tree: they are started here, not by the method);
  3. stops the clock when the target holds all rows: at the child's exit, or,
     if rows are still missing then, when a count first shows them all (up to
     --settle seconds);
  4. verifies row count, sum(amount) and a hash over every canonical row
     against the source (not timed).

Methods:
  copy   the floor: COPY (select ...) TO STDOUT piped into COPY shop_prices FROM
         STDIN (binary), into a fresh table with the unique key index
         (NULLS NOT DISTINCT); bench/copy_pipe.py
  copy-late-index  (opt-in) the same COPY into a table without index, then the
         unique key index built in the same transaction, all timed: the floor
         for a loader that, like Kanal, builds the key after a bulk load
  dlt    dlt 1.31 sql_database(backend=connectorx) -> postgres, merge on the price
         key, parquet via ADBC; bench/dlt_pipeline.py in bench/.venv-dlt
  kanal  `kanal migrate JOB` with a job file written to a temp folder and
         ERP_DSN / SHOP_DSN in its environment; Kanal creates shop_prices itself

Exit status: 0 if at least one method moved and verified all rows, 1 if every
selected method failed, 2 on a setup error (servers, data).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_DIR,
    KEY_INDEX_DDL,
    REPO_DIR,
    SOURCE_TABLE,
    TARGET_TABLE,
    Checksum,
    RunResult,
    Servers,
    checksum,
    create_target,
    exit_on_sigterm,
    find_table,
    fmt_bytes,
    generate_prices,
    log,
    row_count,
    run_measured,
    server_cpu_seconds,
    tail,
    temp_dir,
    wait_idle,
)

METHODS = ("copy", "copy-late-index", "dlt", "kanal")
DLT_VENV = BENCH_DIR / ".venv-dlt"
DLT_REQUIREMENTS = BENCH_DIR / "requirements-dlt.txt"
DLT_DATASET = "bench_dlt"
DEFAULT_KANAL = REPO_DIR / ".venv" / "bin" / "kanal"

KANAL_JOB = """\
name: bench-prices
kafka:
  bootstrap_servers: embedded
source:
  connector: postgres
  config: {dsn: "${ERP_DSN}"}
  entities:
    prices: {table: erp_prices}
sinks:
  - name: shop
    connector: postgres
    config: {dsn: "${SHOP_DSN}"}
    entities:
      prices: {table: shop_prices}
errors:
  policy: dlq
"""


@dataclasses.dataclass
class Result:
    method: str
    repeat: int
    rows_expected: int
    ok: bool = False
    rows: int = 0  # rows found in the target
    seconds: float | None = None  # start -> target holds all rows
    rows_per_s: float | None = None
    peak_rss: int = 0  # bytes, process tree of the method
    peak_procs: int = 0
    cpu_s: float | None = None  # user+sys of the method's process tree
    server_cpu_s: float | None = None  # user+sys of the postgres servers meanwhile
    machine_cpu_s: float | None = None  # user+sys of the whole machine meanwhile (others' load shows here)
    checksum_ok: bool | None = None
    returncode: int | None = None
    error: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["peak_rss_mib"] = round(self.peak_rss / 2**20, 1)
        for k in ("seconds", "rows_per_s", "cpu_s", "server_cpu_s", "machine_cpu_s"):
            if d[k] is not None:
                d[k] = round(d[k], 3)
        return d


# --------------------------------------------------------------------------- dlt venv


def _requirements_digest() -> str:
    return hashlib.sha256(DLT_REQUIREMENTS.read_bytes()).hexdigest()[:16]


def ensure_dlt_venv(timeout: float = 900.0) -> Path:
    """Create bench/.venv-dlt with requirements-dlt.txt unless it is already there and current."""
    py = DLT_VENV / "bin" / "python"
    marker = DLT_VENV / ".bench-requirements"
    digest = _requirements_digest()
    if py.exists() and marker.exists() and marker.read_text().strip() == digest:
        return py
    log(f"creating the dlt venv {DLT_VENV} (once; pip install -r {DLT_REQUIREMENTS.name})")
    base = getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"
    t0 = time.monotonic()
    if not py.exists():
        subprocess.run([base, "-m", "venv", str(DLT_VENV)], check=True, timeout=120)
    pip = [str(py), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    proc = subprocess.run(
        [*pip, "-r", str(DLT_REQUIREMENTS)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pip install for the dlt venv failed:\n{tail(proc.stderr, 30)}")
    check = subprocess.run(
        [str(py), "-c", "import dlt, connectorx, adbc_driver_postgresql, psycopg2; print(dlt.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check.returncode != 0:
        raise RuntimeError(f"the dlt venv does not import dlt/connectorx/adbc:\n{tail(check.stderr)}")
    marker.write_text(digest + "\n")
    log(f"dlt venv ready (dlt {check.stdout.strip()}) in {time.monotonic() - t0:.0f}s")
    return py


# --------------------------------------------------------------------------- methods


class Bench:
    """Holds the servers and the source fingerprint; runs one method at a time."""

    def __init__(self, servers: Servers, rows: int, args: argparse.Namespace) -> None:
        self.servers = servers
        self.rows = rows
        self.args = args
        self.source: Checksum | None = None

    # -- shared steps

    def prepare_source(self) -> None:
        secs = generate_prices(self.servers.erp_dsn, self.rows)
        t0 = time.monotonic()
        self.source = checksum(self.servers.erp_dsn, SOURCE_TABLE)
        log(
            f"source: {self.source.rows} rows in erp.{SOURCE_TABLE} "
            f"(generated in {secs:.1f}s, checksum {time.monotonic() - t0:.1f}s)"
        )

    def _fresh_target(self) -> None:
        self.servers.recreate_shop()
        self.servers.checkpoint()

    def _finish(
        self,
        res: Result,
        run: RunResult,
        schemas: list[str],
        cpu0: float,
    ) -> Result:
        """Wait until the target holds all rows (up to --settle), then verify it."""
        assert self.source is not None
        res.returncode = run.returncode
        res.peak_rss = run.peak_rss
        res.peak_procs = run.peak_procs
        res.cpu_s = run.cpu_seconds
        res.machine_cpu_s = run.machine_cpu_seconds
        res.details["peak_rss_by_process_mib"] = {k: round(v / 2**20, 1) for k, v in sorted(run.peak_by_name.items())}
        seconds = run.seconds
        if run.timed_out:
            res.error = f"timed out after {self.args.timeout:.0f}s"
            res.details["stderr_tail"] = tail(run.stderr)
            return res
        if run.returncode != 0:
            res.error = f"exit code {run.returncode}: {tail(run.stderr, 8) or tail(run.stdout, 8)}"
            res.details["stderr_tail"] = tail(run.stderr, 30)
        # The target may be committed a little after the process exits (or the
        # method may report success early): poll the count for up to --settle s.
        t_exit = time.perf_counter()
        schema = find_table(self.servers.shop_dsn, TARGET_TABLE, schemas)
        n = row_count(self.servers.shop_dsn, TARGET_TABLE, schema) if schema else 0
        polled = False
        while n < self.rows and run.returncode == 0 and time.perf_counter() - t_exit < self.args.settle:
            polled = True
            time.sleep(0.2)
            schema = schema or find_table(self.servers.shop_dsn, TARGET_TABLE, schemas)
            n = row_count(self.servers.shop_dsn, TARGET_TABLE, schema) if schema else 0
        if polled and n >= self.rows:
            # The rows were not all there at exit: the clock runs until a count showed them.
            seconds += time.perf_counter() - t_exit
            res.details["completed_after_exit_s"] = round(time.perf_counter() - t_exit, 3)
        time.sleep(0.3)  # let the server reap the method's backends before reading its CPU
        res.server_cpu_s = server_cpu_seconds(self.servers.server_pids) - cpu0
        res.rows = n
        res.details["target"] = f"{schema}.{TARGET_TABLE}" if schema else None
        if schema is None:
            res.error = res.error or f"no table {TARGET_TABLE} in shop"
            return res
        got = checksum(self.servers.shop_dsn, TARGET_TABLE, schema)
        res.checksum_ok = got.same_data(self.source)
        if not res.checksum_ok:
            res.details["checksum_target"] = dataclasses.asdict(got)
            res.details["checksum_source"] = dataclasses.asdict(self.source)
            res.error = res.error or (
                f"target differs from source: {got.rows} rows vs {self.source.rows}"
                + (" (same count, different data)" if got.rows == self.source.rows else "")
            )
            return res
        if res.error is None:
            res.ok = True
            res.seconds = seconds
            res.rows_per_s = self.rows / seconds if seconds > 0 else None
        return res

    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(extra)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    # -- COPY

    def run_copy(self, repeat: int, *, late_index: bool = False) -> Result:
        res = Result("copy-late-index" if late_index else "copy", repeat, self.rows)
        self._fresh_target()
        # The empty table is made before the clock starts; the unique key index
        # either exists already (copy) or is built after the COPY, timed (copy-late-index).
        create_target(self.servers.shop_dsn, with_index=not late_index)
        cpu0 = server_cpu_seconds(self.servers.server_pids)
        cmd = [
            sys.executable,
            str(BENCH_DIR / "copy_pipe.py"),
            "--src",
            self.servers.erp_dsn,
            "--dst",
            self.servers.shop_dsn,
            "--format",
            self.args.copy_format,
        ]
        if late_index:
            cmd += ["--build-index", KEY_INDEX_DDL.format(index=f"{TARGET_TABLE}_key", table=TARGET_TABLE)]
        run = run_measured(cmd, env=self._env(), timeout=self.args.timeout)
        res.details["format"] = self.args.copy_format
        res.details.update(_last_json(run.stdout))
        return self._finish(res, run, ["public"], cpu0)

    # -- dlt

    def run_dlt(self, repeat: int) -> Result:
        res = Result("dlt", repeat, self.rows)
        try:
            py = ensure_dlt_venv()
        except Exception as e:  # noqa: BLE001 - reported as this method's failure
            res.error = f"dlt venv: {e}"
            return res
        backends = [self.args.dlt_backend] if self.args.dlt_backend != "auto" else ["connectorx", "pyarrow"]
        failures: list[str] = []
        for backend in backends:
            self._fresh_target()
            cpu0 = server_cpu_seconds(self.servers.server_pids)
            with temp_dir("kbench-dlt-") as work:
                cmd = [
                    str(py),
                    str(BENCH_DIR / "dlt_pipeline.py"),
                    "--src",
                    self.servers.erp_dsn,
                    "--dst",
                    self.servers.shop_dsn,
                    "--workdir",
                    str(work),
                    "--dataset",
                    DLT_DATASET,
                    "--backend",
                    backend,
                    "--key",
                    self.args.dlt_key,
                    "--chunk-size",
                    str(self.args.dlt_chunk_size),
                ]
                if self.args.dlt_cx_stream:
                    cmd.append("--cx-stream")
                run = run_measured(cmd, env=self._env(), cwd=work, timeout=self.args.timeout)
            info = _last_json(run.stdout)
            if run.returncode == 0 and "error" not in info:
                res.details.update(info)
                res.details["backend_used"] = backend
                if failures:
                    res.details["fallback_from"] = failures
                    log(f"dlt: backend {backends[0]} failed, measured the {backend} backend instead")
                return self._finish(res, run, [DLT_DATASET], cpu0)
            why = (
                f"timed out after {self.args.timeout:.0f}s"
                if run.timed_out
                else (json.dumps(info.get("attempts")) if info else tail(run.stderr, 8))
            )
            failures.append(f"{backend}: {why}")
            log(f"dlt with backend {backend} failed: {why[:500]}")
            res.returncode = run.returncode
        res.error = "; ".join(failures)
        return res

    # -- Kanal

    def run_kanal(self, repeat: int) -> Result:
        res = Result("kanal", repeat, self.rows)
        kanal = Path(self.args.kanal)
        if not kanal.exists():
            res.error = f"{kanal} does not exist"
            return res
        self._fresh_target()
        with temp_dir("kbench-kanal-") as work:
            job = work / "bench-prices.yaml"
            job.write_text(KANAL_JOB)
            env = self._env(ERP_DSN=self.servers.erp_dsn, SHOP_DSN=self.servers.shop_dsn)
            cpu0 = server_cpu_seconds(self.servers.server_pids)
            run = run_measured([str(kanal), "migrate", str(job)], env=env, cwd=work, timeout=self.args.timeout)
            res.details["stdout_tail"] = tail(run.stdout, 5)
            result = self._finish(res, run, ["public"], cpu0)
            if not result.ok and self.args.keep_failed:
                keep = Path(self.args.keep_failed) / f"kanal-{repeat}"
                shutil.copytree(work, keep, dirs_exist_ok=True)
                (keep / "stdout.txt").write_text(run.stdout)
                (keep / "stderr.txt").write_text(run.stderr)
                result.details["kept"] = str(keep)
        return result

    def run(self, method: str, repeat: int) -> Result:
        load = wait_idle(self.args.wait_idle, self.args.idle_load)
        log(f"{method}: run {repeat + 1}/{self.args.repeat} ({self.rows} rows, load average {load:.2f})")
        try:
            runners = {
                "copy": self.run_copy,
                "copy-late-index": lambda r: self.run_copy(r, late_index=True),
                "dlt": self.run_dlt,
                "kanal": self.run_kanal,
            }
            res = runners[method](repeat)
        except Exception as e:  # noqa: BLE001 - one method's crash must not end the benchmark
            res = Result(method, repeat, self.rows, error=f"harness error: {type(e).__name__}: {e}")
        res.details["loadavg_1m_before"] = round(load, 2)
        if res.ok:
            log(
                f"{method}: {res.rows} rows in {res.seconds:.2f}s = {res.rows_per_s:,.0f} rows/s, "
                f"peak RSS {fmt_bytes(res.peak_rss)}, verified"
            )
        else:
            log(f"{method}: FAILED: {res.error}")
        return res


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return dict(json.loads(line))
            except ValueError:
                continue
    return {}


# --------------------------------------------------------------------------- report


def summarize(results: list[Result]) -> dict[str, dict[str, float]]:
    """Median seconds / rows/s / peak RSS per method over its successful runs."""
    out: dict[str, dict[str, float]] = {}
    for m in METHODS:
        ok = [r for r in results if r.method == m and r.ok]
        if ok:
            out[m] = {
                "seconds": statistics.median(r.seconds for r in ok),  # type: ignore[misc]
                "rows_per_s": statistics.median(r.rows_per_s for r in ok),  # type: ignore[misc]
                "peak_rss": statistics.median(r.peak_rss for r in ok),
                "runs": len(ok),
            }
    return out


def print_table(results: list[Result], rows: int, topology: str, file: Any = None) -> None:
    import builtins
    from functools import partial

    print = partial(builtins.print, file=file or sys.stdout)  # noqa: A001 - the table goes to one stream
    hdr = (
        f"{'method':<15} {'run':>3} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'peak RSS':>9} {'procs':>5} "
        f"{'CPU s':>6} {'PG CPU':>6} {'others':>7}  result"
    )
    print()
    print(f"Bulk migration of {rows:,} erp_prices rows ({topology} PostgreSQL server(s), {os.cpu_count()} cores)")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        secs = f"{r.seconds:.2f}" if r.seconds is not None else "-"
        rps = f"{r.rows_per_s:,.0f}" if r.rows_per_s is not None else "-"
        rss = fmt_bytes(r.peak_rss) if r.peak_rss else "-"
        cpu = f"{r.cpu_s:.1f}" if r.cpu_s is not None else "-"
        pgc = f"{r.server_cpu_s:.1f}" if r.server_cpu_s is not None else "-"
        others = (r.machine_cpu_s or 0.0) - (r.cpu_s or 0.0) - (r.server_cpu_s or 0.0)
        allc = f"{max(others, 0.0):.1f}" if r.machine_cpu_s is not None else "-"
        if r.ok:
            note = "ok (count+checksum)"
            if r.method == "dlt":
                note += f" backend={r.details.get('backend_used')} key={r.details.get('key')}"
        else:
            note = "FAILED: " + (r.error or "?").splitlines()[0][:160]
        print(
            f"{r.method:<15} {r.repeat + 1:>3} {r.rows:>10,} {secs:>8} {rps:>10} {rss:>9} {r.peak_procs:>5} "
            f"{cpu:>6} {pgc:>6} {allc:>7}  {note}"
        )
    summary = summarize(results)
    if any(s["runs"] > 1 for s in summary.values()):
        print("\nmedian of successful runs:")
        for m, s in summary.items():
            rss = fmt_bytes(int(s["peak_rss"]))
            print(f"  {m:<15} {s['seconds']:.2f}s  {s['rows_per_s']:,.0f} rows/s  peak RSS {rss}  ({s['runs']} runs)")
    print()
    k = summary.get("kanal")
    labels = {"dlt": "Kanal/dlt", "copy": "Kanal/COPY", "copy-late-index": "Kanal/COPY, index built after load"}
    for peer in ("dlt", "copy", "copy-late-index"):
        if peer == "copy-late-index" and not any(r.method == peer for r in results):
            continue
        label = labels[peer]
        p = summary.get(peer)
        if k and p:
            print(
                f"{label:<10}: time {k['seconds'] / p['seconds']:.2f}x  "
                f"(throughput {k['rows_per_s'] / p['rows_per_s']:.2f}x)  "
                f"peak RSS {k['peak_rss'] / max(p['peak_rss'], 1):.2f}x"
            )
        else:
            missing = "kanal" if not k else peer
            ran = any(r.method == missing for r in results)
            print(f"{label:<10}: n/a ({missing} {'has no successful run' if ran else 'not run'})")
    failed = sorted({r.method for r in results if not r.ok})
    if failed:
        print(f"\nfailed: {', '.join(failed)}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=1, help="runs per method (the summary takes medians)")
    ap.add_argument("--only", default="copy,dlt,kanal", help="comma list of methods, run in this order")
    ap.add_argument(
        "--json", action="store_true", help="print each result as a JSON line on stdout (the table goes to stderr)"
    )
    ap.add_argument(
        "--topology", choices=("one", "two"), default="one", help="one server with two databases, or two servers"
    )
    ap.add_argument("--timeout", type=float, default=None, help="seconds per method run (default 120 + rows/5000)")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds to wait after exit for rows to appear")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run wait up to S seconds for the load average to drop",
    )
    ap.add_argument("--idle-load", type=float, default=0.3, help="load average counted as idle by --wait-idle")
    ap.add_argument("--kanal", default=str(DEFAULT_KANAL), help="the kanal executable")
    ap.add_argument(
        "--keep-failed", default=None, metavar="DIR", help="copy a failed Kanal run's job folder and output here"
    )
    ap.add_argument("--copy-format", choices=("binary", "text"), default="binary")
    ap.add_argument(
        "--dlt-backend",
        choices=("connectorx", "pyarrow", "auto"),
        default="auto",
        help="auto: connectorx, pyarrow if it fails",
    )
    ap.add_argument(
        "--dlt-key",
        choices=("surrogate", "natural"),
        default="surrogate",
        help="see bench/README.md: dlt and NULL key parts",
    )
    ap.add_argument("--dlt-chunk-size", type=int, default=100_000)
    ap.add_argument(
        "--dlt-cx-stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="connectorx arrow_stream batches (default: as fast, less memory here) instead of one Arrow table",
    )
    args = ap.parse_args(argv)
    args.methods = [m.strip() for m in args.only.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    if args.timeout is None:
        args.timeout = 120 + args.rows / 5000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    try:
        servers = Servers(args.topology)
    except Exception as e:  # noqa: BLE001
        log(f"could not start PostgreSQL: {e}")
        return 2
    results: list[Result] = []
    with servers:
        bench = Bench(servers, args.rows, args)
        try:
            bench.prepare_source()
        except Exception as e:  # noqa: BLE001
            log(f"could not generate the source data: {e}")
            return 2
        for repeat in range(args.repeat):
            for method in args.methods:
                res = bench.run(method, repeat)
                results.append(res)
                if args.json:
                    print(json.dumps({"rows_total": args.rows, "topology": args.topology, **res.as_json()}), flush=True)
    # With --json, stdout carries only the JSON lines; the table goes to stderr.
    print_table(results, args.rows, args.topology, file=sys.stderr if args.json else sys.stdout)
    failed = sorted({r.method for r in results if not r.ok})
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if results and not any(r.ok for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
