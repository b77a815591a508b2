"""Does a long `kanal run` stream hold its memory? RSS of Kanal + embedded broker while N CDC changes stream.

    .venv/bin/python bench/stream_memory.py --changes 2000000            # about 4 minutes
    .venv/bin/python bench/stream_memory.py --changes 10000000 --every 30
    .venv/bin/python bench/stream_memory.py --quick                      # 200k changes, 10k SKUs

One run, on the ERP and shop of bench/latency.py (same servers, seed, job):

  1. starts PostgreSQL with wal_level=logical, seeds `--products` SKUs and
     starts `python -m kanal run JOB --quiet` (embedded broker);
  2. waits for the migration, then writes `--changes` changes to the ERP as
     fast as one connection goes (latency.py's throughput phase: 1,000-row
     UPDATEs plus small INSERTs and DELETEs); Kanal streams them meanwhile;
  3. waits until the shop equals the ERP, stops Kanal (SIGTERM, exit 0),
     drops the slot with `kanal cleanup`.

Every `--every` seconds, from Kanal's start to its exit, it prints one line:
the changes written to the ERP, the changes Kanal has confirmed (its state
file), the peak RSS of Kanal + broker over that window (sampled every 0.2 s)
and each process's share. At the end: the overall peak, the peak before and
after half the changes were confirmed, and the verdict against `--limit`.

A flat curve is what bounded memory looks like: the embedded broker keeps
every message in memory until Kanal recycles its topics (jobs/stream.py,
RECYCLE_AFTER), so without recycling the broker's RSS grows with every change.

Exit status: 0 when the shop equalled the ERP, Kanal exited 0 and the peak
stayed under `--limit`; 1 otherwise; 2 when the setup failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TreeSampler, exit_on_sigterm, fmt_bytes, log, tail, temp_dir  # noqa: E402
from latency import (  # noqa: E402
    BURST_ROWS,
    Applied,
    BenchError,
    ErpWriter,
    Kanal,
    LogicalServers,
    count_rows,
    kanal_revision,
    machine_line,
    seed,
    wait_converged,
    wait_until,
)

SAMPLE_S = 0.2
WRITE_SLICE_S = 1.0  # the writer checks its total (and that Kanal lives) this often


@dataclasses.dataclass(frozen=True)
class Window:
    """One line of the curve: the peak RSS over `--every` seconds."""

    at_s: float  # since Kanal started
    written: int  # ERP changes written so far
    confirmed: int  # changes Kanal has confirmed so far
    peak: int
    by_process: dict[str, int]


def confirmed_changes(work: Path) -> int:
    """Changes Kanal has confirmed, from its state file (0 before the first confirmation)."""
    total = 0
    for path in work.glob("**/state.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # being replaced right now: the next window reads it
        total += sum(e.get("changes", 0) for e in doc.get("stream", {}).get("entities", {}).values())
    return total


class Curve(threading.Thread):
    """Every `every` seconds, the peak RSS of Kanal's process tree over that window, logged as it goes."""

    def __init__(self, pid: int, work: Path, every: float, written: list[int]) -> None:
        super().__init__(daemon=True)
        self.pid, self.work, self.every, self.written = pid, work, every, written
        self.windows: list[Window] = []
        self._t0 = time.monotonic()
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            sampler = TreeSampler(self.pid, interval=SAMPLE_S)
            sampler.start()
            self._stop_evt.wait(self.every)
            sampler.stop()
            if not sampler.samples:
                continue
            w = Window(
                time.monotonic() - self._t0,
                self.written[0],
                confirmed_changes(self.work),
                sampler.peak_rss,
                dict(sampler.peak_by_name),
            )
            self.windows.append(w)
            log(f"{w.at_s:6.0f}s  written {w.written:>11,}  confirmed {w.confirmed:>11,}  peak RSS {describe(w)}")

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=self.every + 10)


def describe(w: Window) -> str:
    parts = ", ".join(f"{name} {fmt_bytes(rss)}" for name, rss in sorted(w.by_process.items()))
    return f"{fmt_bytes(w.peak):>10}  ({parts})"


@dataclasses.dataclass
class Result:
    changes: int
    products: int
    revision: str = "?"
    migration_s: float | None = None
    applied: Applied | None = None
    converged_s: float | None = None
    windows: list[Window] = dataclasses.field(default_factory=list)
    kanal_exit: int | None = None
    kanal_final: str = ""
    kanal_stderr: str = ""
    errors: list[str] = dataclasses.field(default_factory=list)


def write_changes(writer: ErpWriter, changes: int, written: list[int], kanal: Kanal) -> Applied:
    """Flat out until `changes` are written; `written[0]` follows the total for the curve."""
    total = Applied()
    t0 = time.monotonic()
    while total.changes < changes:
        kanal.check()
        part = writer.flat_out(WRITE_SLICE_S)
        total.updates += part.updates
        total.inserts += part.inserts
        total.deletes += part.deletes
        written[0] = total.changes
    total.seconds = time.monotonic() - t0
    return total


def run(args: argparse.Namespace, servers: LogicalServers, result: Result) -> None:
    erp, shop = servers.erp_dsn, servers.shop_dsn
    seed(erp, shop, args.products)
    stock_rows, price_rows = count_rows(erp, "erp_stock"), count_rows(erp, "erp_prices")
    log(f"seeded {stock_rows:,} stock and {price_rows:,} price rows")
    writer = ErpWriter(erp, args.products, seed_value=7)
    written = [0]
    with temp_dir("kbench-stream-memory-") as work:
        kanal = Kanal(work, erp, shop)
        result.revision = kanal_revision()
        curve = Curve(kanal.start(), work, args.every, written)
        curve.start()
        try:
            result.migration_s = wait_until(
                "the migration",
                lambda: count_rows(shop, "shop_stock") == stock_rows and count_rows(shop, "shop_prices") == price_rows,
                args.timeout,
                kanal,
            )
            log(f"migrated in {result.migration_s:.1f}s; writing {args.changes:,} changes flat out")
            result.applied = write_changes(writer, args.changes, written, kanal)
            a = result.applied
            log(f"the ERP wrote {a.mix} in {a.seconds:.0f}s; waiting for the shop")
            result.converged_s = wait_converged(erp, shop, args.timeout, kanal)
            log(f"the shop equalled the ERP {result.converged_s:.0f}s after the last change")
        finally:
            writer.close()
            result.kanal_exit = kanal.stop()
            curve.stop()
            result.windows = curve.windows
            result.kanal_stderr = kanal.stderr
            lines = [line for line in kanal.stdout.splitlines() if line.startswith("sync ")]
            result.kanal_final = lines[-1] if lines else ""
            if result.kanal_exit != 0:
                result.errors.append(f"kanal exited with {result.kanal_exit} after SIGTERM")
            done = kanal.cleanup()
            if done.returncode != 0:
                result.errors.append(f"kanal cleanup exited with {done.returncode}: {tail(done.stderr, 5)}")


def print_report(r: Result, limit: int) -> None:
    print()
    print("Kanal CDC stream memory: PostgreSQL -> embedded Kafka -> PostgreSQL (`kanal run`, delta: cdc)")
    print(f"machine: {machine_line()}")
    print(f"kanal commit: {r.revision}")
    print(f"seed: {r.products:,} SKUs; target: {r.changes:,} changes written flat out after the migration")
    if r.applied is not None:
        a = r.applied
        print(f"ERP wrote {a.mix} in {a.seconds:.0f}s")
    if r.converged_s is not None:
        print(f"the shop equalled the ERP {r.converged_s:.0f}s after the ERP's last change")
    if r.windows:
        peak = max(r.windows, key=lambda w: w.peak)
        half = [w for w in r.windows if w.confirmed >= r.changes // 2]
        first_half = [w for w in r.windows if w.confirmed < r.changes // 2]
        print(f"peak RSS of kanal + embedded broker: {describe(peak)} at {peak.at_s:.0f}s")
        if first_half and half:
            print(
                f"  peak while the first half streamed: {fmt_bytes(max(w.peak for w in first_half))}; "
                f"the second half: {fmt_bytes(max(w.peak for w in half))}"
            )
        verdict = "met" if peak.peak < limit else "MISSED"
        print(f"target: peak RSS < {fmt_bytes(limit)}: {verdict}")
        if peak.peak >= limit:
            r.errors.append(f"peak RSS {fmt_bytes(peak.peak)} is over {fmt_bytes(limit)}")
    print(f"kanal: SIGTERM -> exit {r.kanal_exit}" + (f'; "{r.kanal_final}"' if r.kanal_final else ""))
    if r.kanal_exit != 0 and r.kanal_stderr:
        print("kanal stderr (tail):\n" + tail(r.kanal_stderr, 20))
    for e in r.errors:
        print(f"FAILED: {e}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=None, help="ERP changes to stream (default 2,000,000, --quick 200,000)")
    ap.add_argument("--products", type=int, default=None, help="SKUs seeded, 4 rows each (default 50,000, --quick 10,000)")
    ap.add_argument("--every", type=float, default=10.0, help="seconds per line of the curve (default 10)")
    ap.add_argument("--limit-mib", type=int, default=1024, help="the peak RSS that counts as bounded (default 1024)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the migration, or for progress")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200k changes, 10k SKUs")
    args = ap.parse_args(argv)
    args.changes = args.changes if args.changes is not None else (200_000 if args.quick else 2_000_000)
    args.products = args.products if args.products is not None else (10_000 if args.quick else 50_000)
    if args.changes < 1 or args.every <= 0:
        ap.error("--changes and --every must be positive")
    if args.products < BURST_ROWS:
        ap.error(f"--products must be at least {BURST_ROWS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    result = Result(args.changes, args.products)
    try:
        servers = LogicalServers()
    except Exception as e:  # noqa: BLE001 - reported as a setup failure
        log(f"could not start PostgreSQL with wal_level=logical: {e}")
        return 2
    with servers:
        try:
            run(args, servers, result)
        except BenchError as e:
            result.errors.append(str(e))
        except psycopg.Error as e:
            result.errors.append(f"database error: {type(e).__name__}: {e}")
    print_report(result, args.limit_mib * 2**20)
    if result.errors:
        return 2 if result.migration_s is None else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
