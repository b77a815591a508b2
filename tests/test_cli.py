"""The CLI surface: help, connectors, check."""

from __future__ import annotations

import json

from tests import erp


def test_help_lists_every_command(cli) -> None:
    proc = cli.run("--help", check=True)
    for command in ("validate", "check", "migrate", "status", "dlq", "connectors", "broker", "demo"):
        assert command in proc.stdout
    assert "JOB show|replay" in cli.run("dlq", "--help", check=True).stdout


def test_connectors_declare_capabilities_and_config_schema(cli) -> None:
    rows = {json.loads(line)["name"]: json.loads(line) for line in cli.run("connectors", "--json", check=True).stdout.splitlines()}
    assert set(rows) >= {"postgres", "files"}
    assert rows["postgres"]["source"] and rows["postgres"]["sink"]
    assert "prices" in rows["postgres"]["entities"]
    assert rows["postgres"]["config"]["properties"]["dsn"]["format"] == "password"


def test_check_names_the_system_that_fails(cli, dbs) -> None:
    good = cli.run("check", str(cli.write_job(erp.job())), check=True)
    assert "ok  sink shop (postgres)" in good.stdout
    cli.env["SHOP_DSN"] = dbs.shop.replace("/shop_", "/missing_")
    bad = cli.run("check", str(cli.write_job(erp.job())))
    assert bad.returncode == 1
    assert "FAIL  sink shop (postgres)" in bad.stdout and "does not exist" in bad.stdout
    assert "ok  kafka" in bad.stdout and "ok  source (postgres)" in bad.stdout
