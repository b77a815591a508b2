"""The floor: stream `COPY (select ...) TO STDOUT` from erp into `COPY ... FROM STDIN` on shop.

Run as its own process by bench/migrate.py so that its memory is measured the
same way as dlt's and Kanal's (process tree RSS; the postgres servers are not
part of it). One transaction on the target; prints a JSON line with its timings.

    python bench/copy_pipe.py --src DSN --dst DSN [--format binary|text] [--build-index SQL]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import psycopg

COLUMNS = "sku, price_list, customer_no, currency, min_qty, amount, valid_from, valid_to, updated_at"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--source-table", default="erp_prices")
    ap.add_argument("--target-table", default="shop_prices")
    ap.add_argument("--format", choices=("binary", "text"), default="binary")
    ap.add_argument(
        "--build-index",
        metavar="SQL",
        default=None,
        help="a CREATE INDEX to run after the COPY, in the same transaction (the 'index after load' variant)",
    )
    a = ap.parse_args(argv)

    t0 = time.perf_counter()
    fmt = "(format binary)" if a.format == "binary" else ""
    nbytes = 0
    chunks = 0
    with psycopg.connect(a.src) as src, psycopg.connect(a.dst) as dst:
        with src.cursor() as rc, dst.cursor() as wc:
            # libpq hands COPY OUT over one row per chunk; psycopg's writer batches them.
            with (
                rc.copy(f"copy (select {COLUMNS} from {a.source_table}) to stdout {fmt}") as cin,
                wc.copy(f"copy {a.target_table} ({COLUMNS}) from stdin {fmt}") as cout,
            ):
                for data in cin:
                    cout.write(data)
                    nbytes += len(data)
                    chunks += 1
            rows = wc.rowcount
            t_copy = time.perf_counter() - t0
            if a.build_index:
                wc.execute(a.build_index)
        dst.commit()
    print(
        json.dumps(
            {"rows": rows, "bytes": nbytes, "chunks": chunks, "copy_s": t_copy, "seconds": time.perf_counter() - t0}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
