"""The delivery side across runs: what one run wrote or set aside, the next never loses or overwrites.

Each test drives `kanal` as a user would (CDC from a real ERP database, a
real shop database, a files sink, the embedded broker) over several runs:
the embedded broker lives for one command, so Kafka offsets restart at 0
with each run, and anything named by them would be replaced by the next run.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from kanal.jobs.load import load_job
from kanal.jobs.stream import sync
from tests.conftest import Cli, Databases

JOB = """
name: deliver
kafka: {{bootstrap_servers: embedded, partitions: 1}}
source:
  connector: postgres
  config: {{dsn: "${{ERP_DSN}}", heartbeat_s: 1, delta_rows: {delta_rows}}}
  entities:
    products: {{table: erp_products, delta: cdc}}
sinks:
  - name: shop
    connector: postgres
    config: {{dsn: "${{SHOP_DSN}}"}}
    entities:
      products: {{table: shop_products}}
{files}
errors: {{policy: {policy}}}
"""
FILES = """  - name: files
    connector: files
    config: {{path: "{path}", format: jsonl}}
    entities:
      products: {{}}
"""
SLOT = "select confirmed_flush_lsn from pg_replication_slots where slot_name = 'kanal_deliver'"


def _start(
    cli: Cli, dbs: Databases, products: int = 40, policy: str = "dlq", files: bool = False, delta_rows: int = 50_000
) -> None:
    """An ERP table, the job, and a first `sync --once` that fixes the stream position and creates the shop table."""
    dbs.erp_sql(
        "create table erp_products (sku text primary key, name text, weight text, updated_at timestamptz default now())"
    )
    dbs.erp_sql(f"insert into erp_products (sku, name, weight) select 'P' || g, 'n' || g, '1' from generate_series(1, {products}) g")
    files_sink = FILES.format(path=cli.folder / "out") if files else ""
    cli.write_job(JOB.format(policy=policy, files=files_sink, delta_rows=delta_rows))
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)


def _change_log(cli: Cli) -> pl.DataFrame:
    return pl.concat([pl.read_ndjson(p) for p in sorted((cli.folder / "out" / "products" / "changes").glob("*.jsonl"))])


def _dead_letters(cli: Cli) -> list[dict]:
    shown = cli.run("dlq", "job.yaml", "show", "--json", check=True).stdout
    return [json.loads(line) for line in shown.splitlines() if line.strip()]


def test_a_second_run_keeps_the_first_runs_change_files_and_dead_letters(cli: Cli, dbs: Databases) -> None:
    _start(cli, dbs, files=True)
    dbs.shop_sql("alter table shop_products alter column name type varchar(12)")
    dbs.erp_sql("update erp_products set name = name || '+' where sku between 'P1' and 'P27'")  # P1, P10..P19, P2, P20..P27
    dbs.erp_sql("update erp_products set name = 'far too long a name' where sku = 'P3'")
    first = cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert "21 changes" in first.stdout
    dbs.erp_sql("update erp_products set name = name || '-' where sku between 'P1' and 'P27'")
    dbs.erp_sql("update erp_products set name = 'another far too long one' where sku = 'P4'")
    second = cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert "21 changes" in second.stdout

    changes = _change_log(cli)
    assert changes.height == 42  # both runs' change logs: the second run's files did not replace the first's
    assert changes.select("sku", "_kanal_version").n_unique() == 42
    refused = {(d["key"], d["sink"]) for d in _dead_letters(cli)}
    assert refused == {("P3", "shop"), ("P4", "shop")}  # the shop refused one record in each run


def test_change_files_survive_the_stream_recycling_its_topics(
    cli: Cli, dbs: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recycled topics restart at offset 0 within one run: batches after a recycle must not take earlier names."""
    _start(cli, dbs, products=400, files=True, delta_rows=100)
    for low in range(0, 400, 100):
        dbs.erp_sql(f"update erp_products set name = name || '+' where substr(sku, 2)::int between {low + 1} and {low + 100}")
    monkeypatch.setenv("ERP_DSN", dbs.erp)
    monkeypatch.setenv("SHOP_DSN", dbs.shop)
    report = sync(load_job(cli.folder / "job.yaml"), once=True, quiet=True, recycle_after=1)  # after every read
    assert report.recycles >= 3 and report.changes == 400
    changes = _change_log(cli)
    assert changes.height == 400 and changes.select("sku", "_kanal_version").n_unique() == 400


def test_replay_does_not_write_an_older_version_over_a_newer_one(cli: Cli, dbs: Databases) -> None:
    _start(cli, dbs)
    dbs.shop_sql("alter table shop_products alter column name type varchar(12)")
    dbs.erp_sql("update erp_products set name = 'far too long a name' where sku = 'P1'")
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    [letter] = _dead_letters(cli)
    assert letter["key"] == "P1" and letter["record"]["_kanal_version"] > 0  # kept with its version

    dbs.shop_sql("alter table shop_products alter column name type text")  # the target is fixed
    dbs.erp_sql("update erp_products set name = 'newer' where sku = 'P1'")
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert dbs.shop_sql("select name from shop_products where sku = 'P1'") == [("newer",)]

    replayed = cli.run("dlq", "job.yaml", "replay", check=True)
    assert "still failing 0" in replayed.stdout
    assert dbs.shop_sql("select name from shop_products where sku = 'P1'") == [("newer",)]  # not the older letter
    assert _dead_letters(cli) == []  # the newer version stands in for it


def test_replay_writes_a_dead_letter_the_target_now_takes(cli: Cli, dbs: Databases) -> None:
    _start(cli, dbs)
    dbs.shop_sql("alter table shop_products alter column name type varchar(12)")
    dbs.erp_sql("update erp_products set name = 'far too long a name' where sku = 'P1'")
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    dbs.shop_sql("alter table shop_products alter column name type text")
    assert "replayed 1, still failing 0" in cli.run("dlq", "job.yaml", "replay", check=True).stdout
    assert dbs.shop_sql("select name from shop_products where sku = 'P1'") == [("far too long a name",)]


def test_a_target_refusing_every_change_fails_the_run_and_confirms_nothing(cli: Cli, dbs: Databases) -> None:
    _start(cli, dbs, products=300)
    dbs.shop_sql("alter table shop_products alter column name type integer using null")  # wrong for this data
    position = dbs.erp_sql(SLOT)
    dbs.erp_sql("update erp_products set name = 'renamed ' || sku")
    failed = cli.run("sync", "job.yaml", "--once")
    assert failed.returncode == 1, failed.stderr
    assert "sink 'shop', products (table: shop_products)" in failed.stderr
    assert "invalid input syntax for type integer" in failed.stderr
    assert dbs.erp_sql(SLOT) == position  # nothing confirmed: the changes are read again
    assert _dead_letters(cli) == []

    dbs.shop_sql("alter table shop_products alter column name type text")
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert dbs.shop_sql("select count(*) from shop_products where name like 'renamed %'") == [(300,)]


def test_policy_fail_passes_once_the_invalid_row_is_fixed_in_the_source(cli: Cli, dbs: Databases) -> None:
    """An invalid change stays at the head of the stream; the fix after it in the same read supersedes it."""
    _start(cli, dbs, policy="fail")
    dbs.erp_sql("update erp_products set weight = 'heavy' where sku = 'P1'")
    failed = cli.run("sync", "job.yaml", "--once")
    assert failed.returncode == 1 and "weight: 'heavy' is not a decimal number" in failed.stderr
    dbs.erp_sql("update erp_products set weight = '2.5' where sku = 'P1'")
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)
    assert dbs.shop_sql("select weight::text from shop_products where sku = 'P1'") == [("2.5",)]
