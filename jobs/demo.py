"""`kanal demo`: a migration, then streaming changes, on one machine with nothing installed.

Starts two throwaway PostgreSQL servers (pgserver): an "ERP" (with
`wal_level=logical`) seeded with a wholesaler's data (at scale 1: 100k
articles, 50k customers with billing and shipping addresses, 1.2M prices of
which 900k are customer-specific and 200k tier prices, stock for three
locations) and an empty "shop". Then it runs `examples/demo.yaml` as `kanal
run` would, through the embedded broker into the shop database and into
Parquet files: the migration with its live progress and report, then a burst
of ERP changes (stock and price updates, new articles, deletes) streamed by
CDC, until the shop equals the ERP again.

The demo ends by printing commands to try next. With `--keep` both servers
stay up (and the job's replication slot stays, so `kanal sync` goes on from
where the demo stopped) and the commands come with the exports they need;
`kanal demo --stop` stops the servers. Without it the servers stop with the
demo, and only what outlives them (the Parquet files) is offered.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import psycopg
from rich.console import Console

from kanal.core.errors import KanalError
from kanal.core.state import StateStore
from kanal.jobs.cleanup import cleanup
from kanal.jobs.load import LoadedJob, load_job
from kanal.jobs.migrate import MigrationReport
from kanal.jobs.pipeline import MIGRATION, STREAM
from kanal.jobs.stream import StreamReport, sync

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LOCATIONS = ("WH-BERLIN", "WH-HAMBURG", "STORE-MUNICH")


def pg_server(folder: Path):  # type: ignore[no-untyped-def]
    # pgserver asks platformdirs for a runtime folder it does not need here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        import pgserver  # type: ignore[import-untyped]
    except ImportError:
        raise KanalError("the demo needs pgserver: pip install 'kanal[embedded]'") from None
    if not folder.exists():  # an existing data folder keeps the 0700 PostgreSQL insists on
        folder.mkdir(parents=True)
        folder.chmod(0o777)  # pgserver runs PostgreSQL as its own user when started by root
    return pgserver.get_server(folder, cleanup_mode="stop")


def _logical(folder: Path):  # type: ignore[no-untyped-def]
    """The ERP server with wal_level=logical: set once, then a restart applies it."""
    server = pg_server(folder)
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        if conn.execute("show wal_level").fetchone() == ("logical",):
            return server
        conn.execute("alter system set wal_level = logical")
    server.cleanup()
    return pg_server(folder)


CHANGES = """
update erp_stock set on_hand = on_hand + 1, updated_at = now() where sku in (select item_no from erp_items order by item_no limit {n});
update erp_prices set amount = amount * 1.05, updated_at = now()
  where price_list = 'retail' and sku in (select item_no from erp_items order by item_no desc limit {n});
insert into erp_items (item_no, item_name, base_unit, blocked, changed_at)
  select 'NEW-' || g, 'New article ' || g, 'PCE', false, now() from generate_series(1, {new}) g;
delete from erp_prices where price_list = 'contract' and sku in (select item_no from erp_items order by item_no limit {new});
"""


def _stream_changes(erp: str, loaded: LoadedJob, scale: float, console: Console) -> tuple[int, float]:
    """Apply a burst of ERP changes while the job streams; wait until every one is delivered."""
    n, new = max(10, int(5_000 * scale)), max(5, int(500 * scale))
    with psycopg.connect(erp, autocommit=True) as conn:
        started = time.monotonic()
        counts = [conn.execute(sql).rowcount for sql in CHANGES.format(n=n, new=new).strip().split(";\n") if sql.strip()]
    expected = sum(counts)
    console.print(f"ERP: {expected:,} records changed (stock and price updates, new articles, deleted prices); streaming ...")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        delivered = sum(e.get("changes", 0) for e in (StateStore(loaded.state_dir).get(STREAM) or {}).get("entities", {}).values())
        if delivered >= expected:
            return delivered, time.monotonic() - started
        time.sleep(0.05)
    raise KanalError(f"the demo's {expected:,} changes were not all delivered within 120 s")


def seed_sql(scale: float) -> str:
    products = max(100, int(100_000 * scale))
    customers = max(20, int(50_000 * scale))
    locations = ", ".join(f"'{loc}'" for loc in LOCATIONS)
    return (EXAMPLES / "demo_erp.sql").read_text().format(products=products, customers=customers, locations=locations)


def stop(folder: str) -> list[str]:
    """Stop the servers a `kanal demo --keep` left running in `folder`."""
    root = Path(folder).resolve()
    lines = []
    for name in ("erp-pg", "shop-pg"):
        if not (root / name / "PG_VERSION").exists():
            lines.append(f"{root / name}: no demo database here")
            continue
        pg_server(root / name).cleanup()
        lines.append(f"stopped the demo database in {root / name}")
    return lines


def _kanal() -> str:
    """How this process was started, so that printed commands run the same Kanal."""
    started = Path(sys.argv[0])
    if started.name == "kanal" and started.exists():
        found = shutil.which("kanal")
        return "kanal" if found and Path(found).resolve() == started.resolve() else shlex.quote(str(started.resolve()))
    return f"{shlex.quote(sys.executable)} -m kanal"


def _hints(root: Path, job: Path, env: dict[str, str], keep: bool) -> list[str]:
    """Commands that work when copied, as things stand after the demo."""
    kanal, quoted = _kanal(), shlex.quote(str(job))
    if not keep:
        return [
            f"Parquet files: {root / 'parquet'} (changes under <entity>/changes/)",
            "the demo's databases stopped with it; `kanal demo --keep` keeps them running and prints commands to try",
        ]
    import pgserver  # type: ignore[import-untyped]

    psql = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return [
        f"the demo's databases keep running (stop them: {kanal} demo --stop --folder {shlex.quote(str(root))}); "
        "in a shell:",
        f"  export {exports}",
        f"  {kanal} status {quoted}",
        f"  {kanal} dlq {quoted} show",
        f"  {kanal} sync {quoted} --once      # streams what changed in the ERP since the demo",
        f"  {shlex.quote(str(psql))} \"$SHOP_DSN\" -c 'select count(*) from shop_products'",
        f"Parquet files: {root / 'parquet'} (changes under <entity>/changes/)",
    ]


def fresh_database(server, name: str) -> str:  # type: ignore[no-untyped-def]
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    return str(server.get_uri(name))


def run(
    folder: str,
    scale: float,
    *,
    console: Console,
    out: Console,
    present: Callable[[MigrationReport, str], None],
    keep: bool = False,
) -> StreamReport:
    """Run the demo in `folder`; `keep`: leave its databases running (see the module docstring)."""
    root = Path(folder).resolve()
    erp_server, shop_server = _logical(root / "erp-pg"), pg_server(root / "shop-pg")
    try:
        erp, shop = fresh_database(erp_server, "erp"), fresh_database(shop_server, "shop")
        started = time.monotonic()
        console.print(f"seeding the demo ERP (scale {scale}) ...")
        with psycopg.connect(erp, autocommit=True) as conn:
            conn.execute(seed_sql(scale))
            counts = {t: conn.execute(f"select count(*) from {t}").fetchone()[0]  # type: ignore[index]
                      for t in ("erp_items", "erp_customers", "erp_prices", "erp_stock")}
        console.print(
            "ERP ready in {:.1f}s: {:,} articles, {:,} customers, {:,} prices, {:,} stock levels".format(
                time.monotonic() - started, *counts.values()
            )
        )
        job = root / "demo.yaml"
        shutil.copy(EXAMPLES / "demo.yaml", job)
        shutil.copytree(EXAMPLES / "mappings", root / "mappings", dirs_exist_ok=True)
        shutil.rmtree(root / ".kanal", ignore_errors=True)
        shutil.rmtree(root / "parquet", ignore_errors=True)
        env = {"ERP_DSN": erp, "SHOP_DSN": shop, "OUTPUT_DIR": str(root / "parquet")}
        os.environ.update(env)
        loaded = load_job(job)
        stop = threading.Event()
        result: list[StreamReport | BaseException] = []

        def stream() -> None:
            try:
                result.append(sync(loaded, migrate_first=True, stop=stop, console=console))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                result.append(exc)
                stop.set()

        runner = threading.Thread(target=stream, name="kanal-demo-run")
        runner.start()
        try:
            while not stop.is_set() and (StateStore(loaded.state_dir).get(MIGRATION) or {}).get("status") != "done":
                time.sleep(0.1)
            changed = None if stop.is_set() else _stream_changes(erp, loaded, scale, console)
        finally:
            stop.set()
            runner.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        report = result[0]
        assert report.migrated is not None
        present(report.migrated, str(job))
        if changed:
            out.print(f"\nthen streamed {changed[0]:,} ERP changes by CDC into both sinks in {changed[1]:.1f}s "
                      f"(source commit to the last sink write)")
        if not keep:
            for line in cleanup(loaded):
                console.print(line)
        out.print(f"\njob file: {job} (it reads ERP_DSN, SHOP_DSN and OUTPUT_DIR from the environment)")
        for line in _hints(root, job, env, keep):
            out.print(line)
        if keep:
            erp_server.cleanup_mode = shop_server.cleanup_mode = None  # the handles let go, the servers run on
        return report
    finally:
        erp_server.cleanup()
        shop_server.cleanup()
