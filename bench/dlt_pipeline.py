"""The dlt peer: erp_prices -> shop_prices with dlt's sql_database source and postgres destination.

Runs inside bench/.venv-dlt (bench/migrate.py creates it and starts this
script there as a subprocess); it never imports Kanal or the bench package.

    python bench/dlt_pipeline.py --src DSN --dst DSN --workdir DIR
        [--backend connectorx|pyarrow|auto] [--key natural|surrogate|auto]
        [--dataset bench_dlt] [--chunk-size 100000] [--cx-stream]

What it does (dlt's fastest merge setup measured here):
* `sql_table(erp_prices)` with `backend="connectorx"` (Arrow tables straight from
  Rust) or `backend="pyarrow"` (SQLAlchemy + psycopg2 rows turned into Arrow);
* destination `postgres`, `write_disposition="merge"` with the price key as the
  primary key, `loader_file_format="parquet"` (loaded through ADBC: without
  adbc-driver-postgresql dlt silently falls back to gzip'd CSV);
* the table is written as `<dataset>.shop_prices`.

NULL key parts: dlt's merge (delete-insert) matches keys with `=`, so a key
with a NULL customer_no (list and tier prices) or NULL min_qty never matches:
the first load into an empty table is right, but a re-run inserts every such
row again (measured: 1,000,000 -> 1,913,774 rows). `--key natural` uses the 5
key columns as they are; `--key surrogate` adds
`customer_key = coalesce(customer_no, '')` and `qty_key = coalesce(min_qty::text, '')` in the source query and uses
(sku, price_list, customer_key, currency, qty_key) as the primary key, keeping
the original nullable columns as data, and a re-run leaves the table as it was.
`auto` (the default) uses the surrogate (see bench/README.md).

Prints one JSON line on stdout: backend and key actually used and dlt's step
timings (or the attempts' errors).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

T_START = time.perf_counter()

# No telemetry or network from dlt; keep its config and data in the workdir.
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("DLT_TELEMETRY", "false")

NATURAL_KEY = ["sku", "price_list", "customer_no", "currency", "min_qty"]
SURROGATE_KEY = ["sku", "price_list", "customer_key", "currency", "qty_key"]


def connectorx_url(dsn: str) -> str:
    """postgresql://u:@/db?host=/sock -> postgresql://u@%2Fsock/db (connectorx needs the socket in the host)."""
    u = urlsplit(dsn)
    q = parse_qs(u.query)
    host = q.get("host", [u.hostname or "localhost"])[0]
    user = u.username or "postgres"
    auth = user if not u.password else f"{user}:{quote(u.password, safe='')}"
    port = f":{u.port}" if u.port else ""
    db = u.path.lstrip("/") or "postgres"
    return f"postgresql://{auth}@{quote(host, safe='')}{port}/{db}"


def sqlalchemy_url(dsn: str) -> str:
    """A libpq URL as SQLAlchemy/psycopg2 understands it (host in the query is fine)."""
    return dsn.replace("postgresql://", "postgresql+psycopg2://", 1) if dsn.startswith("postgresql://") else dsn


def destination_credentials(dsn: str) -> dict:
    """dlt's postgres credentials require a host and render a URL for psycopg2.

    A unix-socket folder cannot be the URL's host, so it goes in the query
    (`?host=/socket/dir`), which libpq lets override the placeholder host.
    """
    u = urlsplit(dsn)
    q = {k: v[0] for k, v in parse_qs(u.query).items()}
    return {
        "drivername": "postgresql",
        "database": u.path.lstrip("/") or "postgres",
        "username": u.username or "postgres",
        "password": u.password or "",
        "host": u.hostname or "localhost",
        "port": u.port or 5432,
        "query": q,
    }


def build_resource(args: argparse.Namespace, backend: str, key: str):  # type: ignore[no-untyped-def]
    import sqlalchemy as sa
    from dlt.sources.sql_database import sql_table

    backend_kwargs: dict = {}
    if backend == "connectorx":
        backend_kwargs["conn"] = connectorx_url(args.src)
        if args.cx_stream:
            backend_kwargs["return_type"] = "arrow_stream"
            backend_kwargs["batch_size"] = args.chunk_size

    query_adapter = None
    if key == "surrogate":

        def query_adapter(query, table):  # type: ignore[no-untyped-def]
            return query.add_columns(
                sa.func.coalesce(table.c.customer_no, sa.literal("")).label("customer_key"),
                # text, so every batch has the same Arrow type (a numeric coalesce
                # gets its decimal precision inferred per batch by the pyarrow backend)
                sa.func.coalesce(sa.cast(table.c.min_qty, sa.Text), sa.literal("")).label("qty_key"),
            )

    resource = sql_table(
        credentials=sqlalchemy_url(args.src),
        table=args.source_table,
        backend=backend,
        chunk_size=args.chunk_size,
        backend_kwargs=backend_kwargs or None,
        query_adapter_callback=query_adapter,
        reflection_level="full_with_precision",
        write_disposition="merge",
        primary_key=NATURAL_KEY if key == "natural" else SURROGATE_KEY,
    )
    resource.apply_hints(table_name=args.target_table)
    return resource


def run_once(args: argparse.Namespace, backend: str, key: str) -> dict:
    import dlt

    pipeline = dlt.pipeline(
        pipeline_name=f"kanal_bench_{backend}_{key}",
        pipelines_dir=str(Path(args.workdir) / "pipelines"),
        destination=dlt.destinations.postgres(credentials=destination_credentials(args.dst)),
        dataset_name=args.dataset,
        progress="log" if args.verbose else None,
    )
    resource = build_resource(args, backend, key)
    t0 = time.perf_counter()
    pipeline.extract(resource, loader_file_format=args.file_format)
    t1 = time.perf_counter()
    pipeline.normalize(workers=args.normalize_workers)
    t2 = time.perf_counter()
    info = pipeline.load()
    t3 = time.perf_counter()
    info.raise_on_failed_jobs()
    return {
        "backend": backend,
        "key": key,
        "file_format": args.file_format,
        "normalize_workers": args.normalize_workers,
        "chunk_size": args.chunk_size,
        "cx_stream": bool(args.cx_stream) and backend == "connectorx",
        "table": f"{args.dataset}.{args.target_table}",
        "extract_s": round(t1 - t0, 3),
        "normalize_s": round(t2 - t1, 3),
        "load_s": round(t3 - t2, 3),
        "pipeline_s": round(t3 - t0, 3),
    }


def reset_target(args: argparse.Namespace) -> None:
    """Drop the dataset a failed attempt left behind, so the next attempt starts empty."""
    import psycopg2

    conn = psycopg2.connect(args.dst)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'drop schema if exists "{args.dataset}" cascade')
        cur.execute(f'drop schema if exists "{args.dataset}_staging" cascade')
    conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="libpq URL of the erp database")
    ap.add_argument("--dst", required=True, help="libpq URL of the shop database")
    ap.add_argument("--workdir", required=True, help="folder for dlt's pipeline state and load packages")
    ap.add_argument("--source-table", default="erp_prices")
    ap.add_argument("--target-table", default="shop_prices")
    ap.add_argument("--dataset", default="bench_dlt")
    ap.add_argument("--backend", choices=("connectorx", "pyarrow", "auto"), default="auto")
    ap.add_argument("--key", choices=("natural", "surrogate", "auto"), default="auto")
    ap.add_argument("--file-format", default="parquet")
    ap.add_argument("--chunk-size", type=int, default=100_000)
    ap.add_argument("--normalize-workers", type=int, default=1)
    ap.add_argument(
        "--cx-stream", action="store_true", help="connectorx arrow_stream (batches) instead of one Arrow table"
    )
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    backends = ["connectorx", "pyarrow"] if args.backend == "auto" else [args.backend]
    keys = ["surrogate"] if args.key == "auto" else [args.key]
    attempts: list[dict] = []
    t_import = time.perf_counter()
    import dlt  # noqa: F401  - import time is reported separately

    import_s = time.perf_counter() - t_import
    for backend in backends:
        for key in keys:
            try:
                result = run_once(args, backend, key)
            except Exception as e:  # noqa: BLE001 - report and try the fallback
                msg = f"{type(e).__name__}: {e}"
                print(f"dlt attempt backend={backend} key={key} failed: {msg}", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)
                attempts.append({"backend": backend, "key": key, "error": msg[:2000]})
                try:
                    reset_target(args)
                except Exception as e2:  # noqa: BLE001
                    print(f"could not reset target: {e2}", file=sys.stderr)
                continue
            result["attempts"] = attempts
            result["dlt_import_s"] = round(import_s, 3)
            result["process_s"] = round(time.perf_counter() - T_START, 3)
            result["dlt_version"] = dlt.__version__
            print(json.dumps(result), flush=True)
            return 0
    print(json.dumps({"error": "all dlt attempts failed", "attempts": attempts}), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
