"""Output for scripts and state operations: --json reports, status without a terminal, reset, dlq export/purge."""

from __future__ import annotations

import csv
import json
import re

import pytest

from kanal.core.errors import ConfigError
from kanal.jobs import dlq
from kanal.jobs.load import load_job
from kanal.jobs.reset import reset
from tests import erp as bulk_erp
from tests.conftest import Cli, Databases
from tests.streaming import erp

_AGED = "update {table} set updated_at = now() - interval '1 hour'"


def _document(proc) -> dict:  # type: ignore[no-untyped-def]
    """The one JSON document a --json command prints on stdout (nothing else may be there)."""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr
    return json.loads(lines[0])


def _read(doc: dict) -> dict[str, int]:
    return {name: e["read"] for name, e in doc["entities"].items()}


def test_json_reports_status_and_reset_of_a_cursor_job(cli: Cli, dbs: Databases) -> None:
    erp.seed(dbs.erp, products=40)
    for table in ("erp_products", "erp_prices", "erp_stock"):
        dbs.erp_sql(_AGED.format(table=table))
    prices, stock = (dbs.erp_sql(f"select count(*) from {t}")[0][0] for t in ("erp_prices", "erp_stock"))
    cli.write_job(erp.job(delta=erp.CURSOR))

    valid = _document(cli.run("validate", "job.yaml", "--json", check=True))
    assert valid["ok"] and valid["exit_status"] == 0 and valid["job"] == "erp-stream"
    assert valid["sinks"] == [{"name": "shop", "connector": "postgres", "entities": ["products", "prices", "stock_levels"]}]

    migrated = _document(cli.run("migrate", "job.yaml", "--json", check=True))
    assert migrated["command"] == "migrate" and migrated["exit_status"] == 0
    assert _read(migrated) == {"prices": prices, "products": 40, "stock_levels": stock}
    assert migrated["entities"]["stock_levels"]["sinks"]["shop"] == {"written": stock, "unchanged": 0, "older": 0, "refused": 0}

    # --cursor moves one entity's high-water mark back: the next stream reads its rows again, only them
    moved = cli.run("reset", "job.yaml", "--entity", "stock_levels", "--cursor", "2020-01-01T00:00:00Z", check=True)
    assert "to 2020-01-01T00:00:00Z" in moved.stdout
    synced = _document(cli.run("sync", "job.yaml", "--once", "--json", check=True))
    assert synced["command"] == "sync" and synced["schedule"] == "once"
    assert _read(synced) == {"prices": 0, "products": 0, "stock_levels": stock}
    assert synced["changes"] == stock and "stock_levels 20" in synced["position"]

    # a snapshot again: sync waits for it, migrate reads that entity only
    again = cli.run("reset", "job.yaml", "--entity", "products", check=True)
    assert "products: will be read again" in again.stdout
    refused = cli.run("sync", "job.yaml", "--once", "--json")
    assert refused.returncode == 2
    failure = _document(refused)
    assert failure == {**failure, "command": "sync", "ok": False, "exit_status": 2, "file": "job.yaml"}
    assert "migration of this job is unfinished" in failure["error"]
    dbs.erp_sql("insert into erp_products values ('NEW', 'New', '1', true, now() - interval '1 hour')")
    resnapshot = _document(cli.run("migrate", "job.yaml", "--json", check=True))
    assert _read(resnapshot) == {"prices": 0, "products": 41, "stock_levels": 0}
    assert dbs.shop_sql("select count(*) from shop_products where sku = 'NEW'") == [(1,)]

    # piped status: full values, UTC times with Z
    status = cli.run("status", "job.yaml", check=True).stdout
    assert "…" not in status and "erp-stream: migration done" in status
    times = re.findall(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}[^\s,;]*", status)
    assert times and all(t.endswith("Z") for t in times), times
    rows = [json.loads(line) for line in cli.run("status", "job.yaml", "--json", check=True).stdout.splitlines()]
    assert rows[0]["stream"]["confirmed_at"].endswith("Z")
    assert next(r for r in rows if r["entity"] == "stock_levels")["last_write"].endswith("Z")


def test_reset_refuses_what_does_not_apply(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ERP_DSN", "SHOP_DSN"):
        monkeypatch.setenv(name, cli.env[name])
    unknown = cli.run("reset", str(cli.write_job(erp.job(delta=erp.CDC))), "--entity", "orders")
    assert unknown.returncode == 2
    assert "has no entity 'orders' (its source entities: products, prices, stock_levels)" in unknown.stderr
    cdc = load_job(cli.folder / "job.yaml")
    with pytest.raises(ConfigError, match=r"--cursor applies to entities with `delta: \{cursor: column\}`; prices: .*cdc"):
        reset(cdc, "prices", snapshot=False, cursor="2026-01-01T00:00:00Z")
    cursor = load_job(cli.write_job(erp.job(delta=erp.CURSOR)))
    with pytest.raises(ConfigError, match="'yesterday' is not an ISO 8601 time"):
        reset(cursor, "prices", snapshot=False, cursor="yesterday")
    with pytest.raises(ConfigError, match="prices has no stream position yet"):
        reset(cursor, "prices", snapshot=False, cursor="2026-01-01")
    assert "never migrated" in reset(cursor, "prices", snapshot=True, cursor=None)[0]
    broken = cli.write_job("name: x\nsource: {connector: postgres, entities: {prices: {}}}\nsinks: []\n", "broken.yaml")
    invalid = _document(cli.run("migrate", str(broken), "--json"))
    assert invalid["exit_status"] == 2 and invalid["problems"] and not invalid["ok"]


def test_dlq_export_and_purge(cli: Cli, dbs: Databases, monkeypatch: pytest.MonkeyPatch) -> None:
    bulk_erp.seed(dbs.erp_sql, products=20, customers=1)
    cli.write_job(bulk_erp.job())
    migrated = _document(cli.run("migrate", "job.yaml", "--json", check=True))
    assert migrated["entities"]["prices"]["dead"] == 3

    cli.run("dlq", "job.yaml", "export", "letters.jsonl", check=True)
    letters = [json.loads(line) for line in (cli.folder / "letters.jsonl").read_text().splitlines()]
    assert {(d["key"], d["reason"]) for d in letters} == set(bulk_erp.INVALID_PRICES.items())
    for name in ("ERP_DSN", "SHOP_DSN"):
        monkeypatch.setenv(name, cli.env[name])
    loaded = load_job(cli.folder / "job.yaml")
    assert dlq.export(loaded, cli.folder / "letters.csv", "prices") == 3
    with open(cli.folder / "letters.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["key"], r["reason"], r["stage"]) for r in rows} == {(k, r, "source") for k, r in bulk_erp.INVALID_PRICES.items()}
    assert {r["currency"] for r in rows} == {"EUR", "EURO"}  # record fields have columns of their own
    with pytest.raises(ConfigError, match=r"export writes .jsonl, .ndjson, .csv files"):
        dlq.export(loaded, cli.folder / "letters.xlsx")
    assert dlq.purge(loaded, "products") == 0

    unconfirmed = cli.run("dlq", "job.yaml", "purge")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert len(dlq.show(loaded)) == 3
    assert "purged 3 dead letter(s)" in cli.run("dlq", "job.yaml", "purge", "--yes", check=True).stdout
    assert dlq.show(loaded) == []
