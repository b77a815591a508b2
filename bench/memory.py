"""Does Kanal's memory grow with the row count? Peak RSS of `kanal migrate` at several sizes.

    .venv/bin/python bench/memory.py --rows 200000,1000000 [--methods kanal[,dlt,copy]] [--repeat 1] [--json]

For each size the same throwaway PostgreSQL is reused: erp_prices is generated
anew with that many rows, the shop database is recreated, and the migration
runs as in bench/migrate.py. Peak RSS is the largest sum, over the 50 ms
samples, of the RSS of `kanal migrate` and all its descendants (the embedded
broker included); the postgres servers are started by this script, not by
Kanal, so they are never in that tree. Every run is verified (count + checksum).

The summary gives, per method, the peak RSS at the smallest and the largest
size, their ratio, and the growth in MiB per million rows. A bounded-memory
pipeline shows a ratio near 1 while the row count grows several times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Servers, exit_on_sigterm, fmt_bytes, log  # noqa: E402
from migrate import DEFAULT_KANAL, METHODS, Bench, Result  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="200000,1000000", help="comma list of row counts")
    ap.add_argument("--methods", default="kanal", help="comma list among copy,dlt,kanal (default kanal)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="JSON lines on stdout, the table on stderr")
    ap.add_argument("--topology", choices=("one", "two"), default="one")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run (default 120 + rows/5000)")
    ap.add_argument("--settle", type=float, default=30.0)
    ap.add_argument("--kanal", default=str(DEFAULT_KANAL))
    ap.add_argument("--keep-failed", default=None, metavar="DIR")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S")
    ap.add_argument("--idle-load", type=float, default=0.3)
    args = ap.parse_args(argv)
    args.sizes = sorted({int(x.replace("_", "")) for x in args.rows.split(",") if x.strip()})
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.sizes:
        ap.error(f"bad --methods {bad} or empty --rows")
    # settings migrate.Bench reads
    args.copy_format = "binary"
    args.dlt_backend = "auto"
    args.dlt_key = "surrogate"
    args.dlt_chunk_size = 100_000
    args.dlt_cx_stream = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    out = sys.stderr if args.json else sys.stdout
    results: list[Result] = []
    try:
        servers = Servers(args.topology)
    except Exception as e:  # noqa: BLE001
        log(f"could not start PostgreSQL: {e}")
        return 2
    with servers:
        for rows in args.sizes:
            run_args = argparse.Namespace(**vars(args))
            run_args.timeout = args.timeout if args.timeout is not None else 120 + rows / 5000
            bench = Bench(servers, rows, run_args)
            try:
                bench.prepare_source()
            except Exception as e:  # noqa: BLE001
                log(f"could not generate {rows} rows: {e}")
                return 2
            for repeat in range(args.repeat):
                for method in args.methods:
                    res = bench.run(method, repeat)
                    results.append(res)
                    if args.json:
                        print(json.dumps({"rows_total": rows, **res.as_json()}), flush=True)

    print(
        f"\nPeak RSS by row count ({args.topology} PostgreSQL server(s); process tree of the method, servers excluded)",
        file=out,
    )
    hdr = f"{'method':<7} {'rows':>10} {'run':>3} {'seconds':>8} {'rows/s':>10} {'peak RSS':>9}  by process / result"
    print(hdr, file=out)
    print("-" * len(hdr), file=out)
    for r in results:
        if r.ok:
            parts = ", ".join(f"{k} {v:.0f}" for k, v in r.details.get("peak_rss_by_process_mib", {}).items())
            print(
                f"{r.method:<7} {r.rows_expected:>10,} {r.repeat + 1:>3} {r.seconds:>8.2f} {r.rows_per_s:>10,.0f} "
                f"{fmt_bytes(r.peak_rss):>9}  {parts} (MiB)",
                file=out,
            )
        else:
            err = (r.error or "?").splitlines()[0][:140]
            print(
                f"{r.method:<7} {r.rows_expected:>10,} {r.repeat + 1:>3} {'-':>8} {'-':>10} {'-':>9}  FAILED: {err}",
                file=out,
            )

    print(file=out)
    any_ok = False
    for method in args.methods:
        per_size = {}
        for rows in args.sizes:
            ok = [r for r in results if r.method == method and r.rows_expected == rows and r.ok]
            if ok:
                per_size[rows] = statistics.median(r.peak_rss for r in ok)
        if len(per_size) >= 1:
            any_ok = True
        if len(per_size) >= 2:
            lo, hi = min(per_size), max(per_size)
            ratio = per_size[hi] / max(per_size[lo], 1)
            slope = (per_size[hi] - per_size[lo]) / 2**20 / ((hi - lo) / 1e6)
            print(
                f"{method}: peak RSS {fmt_bytes(int(per_size[lo]))} at {lo:,} rows -> {fmt_bytes(int(per_size[hi]))} "
                f"at {hi:,} rows ({hi / lo:.1f}x the rows): {ratio:.2f}x, {slope:+.0f} MiB per million rows",
                file=out,
            )
        elif per_size:
            print(f"{method}: only one size succeeded; no growth figure", file=out)
        else:
            print(f"{method}: no successful run", file=out)
    failed = sorted({r.method for r in results if not r.ok})
    if failed:
        print(f"failed: {', '.join(failed)}", file=out)
    return 0 if any_ok else 1


if __name__ == "__main__":
    sys.exit(main())
