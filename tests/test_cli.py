"""The CLI surface: help, connectors, check."""

from __future__ import annotations

import json
import signal
import socket
import subprocess

import psutil

from kanal.core.embedded import answers_kafka, free_port
from tests import erp
from tests.conftest import KANAL


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
    erp.seed(dbs.erp_sql, products=5)
    good = cli.run("check", str(cli.write_job(erp.job())), check=True)
    assert "ok  sink shop (postgres)" in good.stdout
    assert "ok  source (postgres) prices: [table: erp_prices] columns cover the required fields" in good.stdout
    cli.env["SHOP_DSN"] = dbs.shop.replace("/shop_", "/missing_")
    bad = cli.run("check", str(cli.write_job(erp.job())))
    assert bad.returncode == 1
    assert "FAIL  sink shop (postgres)" in bad.stdout and "does not exist" in bad.stdout
    assert "ok  kafka" in bad.stdout and "ok  source (postgres)" in bad.stdout


def test_broker_on_a_taken_port_fails_naming_it(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([*KANAL, "broker", "--port", str(port)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use by another program" in proc.stderr
    assert "listening" not in proc.stdout


def test_broker_serves_until_stopped_and_fails_when_it_dies(tmp_path) -> None:
    for end in ("SIGTERM", "broker killed"):
        port = free_port()
        proc = subprocess.Popen([*KANAL, "broker", "--port", str(port)], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert f"listening on 127.0.0.1:{port}" in proc.stdout.readline()
            assert answers_kafka(port)
            if end == "SIGTERM":
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0
            else:
                psutil.Process(proc.pid).children()[0].kill()
                assert proc.wait(timeout=30) == 1
                assert f"it no longer serves 127.0.0.1:{port}" in proc.stderr.read()
        finally:
            proc.kill()
            proc.wait()


FILES_JOB = """\
name: drop
source:
  connector: files
  config: {{path: in, delimiter: "{delimiter}"}}
  entities: {{products: {{}}}}
sinks:
  - name: out
    connector: files
    config: {{path: out, format: jsonl}}
    entities: {{products: {{}}}}
"""


def test_files_with_the_wrong_delimiter_fail_and_dead_letters_keep_the_row_as_read(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "products.csv").write_text("sku;name;weight\nA1;Widget;1.5\n;Nameless;2\n")
    job = tmp_path / "job.yaml"

    def kanal(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*KANAL, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)

    job.write_text(FILES_JOB.format(delimiter=","))
    wrong = kanal("migrate", str(job), "--quiet")
    assert wrong.returncode == 2, wrong.stderr
    assert "products.csv: none of its columns is a field of products: found 'sku;name;weight'" in wrong.stderr
    assert "set `delimiter: ';'`" in wrong.stderr
    assert kanal("dlq", str(job), "show", "--json").stdout == ""

    job.write_text(FILES_JOB.format(delimiter=";"))
    assert kanal("migrate", str(job), "--quiet").returncode == 0
    [letter] = [json.loads(line) for line in kanal("dlq", str(job), "show", "--json").stdout.splitlines()]
    assert letter["reason"] == "sku: required field is empty"
    assert letter["raw"] == {"sku": None, "name": "Nameless", "weight": "2"}
    assert letter["record"]["name"] == "Nameless"
