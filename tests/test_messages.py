"""Every message Kanal prints is true and complete.

Brackets survive every output path (rich would read them as markup), only
real secrets are redacted, job-file problems are worded for people at their
own line, mapping files are checked by `validate`, a broken connector
package does not break other jobs, `.env` and `$${` work, and settings a
system refuses while running exit 2 at their place in the job file.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr
from rich.table import Table

from kanal.core import registry
from kanal.core.errors import ConfigError, redact, register_secrets
from kanal.core.state import StateStore
from kanal.jobs.load import load_job
from tests import erp

BRACKETS = "pip install 'kanal[embedded]' ^[a-z0-9][a-z0-9_-]{0,62}$ tax_code in [standard, reduced] [red]x[/]"


def write(folder: Path, text: str, name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_job(path)
    return info.value.problems


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("ERP_DSN", "postgresql://kanal@127.0.0.1:1/erp")
    monkeypatch.setenv("SHOP_DSN", "postgresql://kanal@127.0.0.1:1/shop")
    return monkeypatch


# 1. brackets ------------------------------------------------------------------


def test_the_cli_consoles_print_brackets_in_text_and_tables_literally() -> None:
    from kanal.cli import err, out

    short = "kanal[embedded] [red]x[/]"
    table = Table(title=f"title {short}")
    table.add_column(f"column {short}")
    table.add_row(f"cell {short}")
    table.caption = f"caption {short}"
    for console in (out, err):
        with console.capture() as captured:
            console.print(f"text {BRACKETS}")
            console.print(table)
        text = captured.get()
        assert f"text {BRACKETS}" in text
        for where in ("title", "column", "cell", "caption"):
            assert f"{where} {short}" in text, text


def test_brackets_survive_every_command(cli, dbs) -> None:
    """Error messages (exit 1 and 2), validate, check lines, the migration report and the dlq table."""
    erp.seed(dbs.erp_sql, products=5, customers=1)
    (cli.folder / "prices[v2].yaml").write_text(
        "entity: prices\nfields:\n  customer_no: {from: customer_no, required: true}\n"
    )
    text = erp.job().replace("prices: {table: erp_prices}", 'prices: {table: erp_prices, mapping: "prices[v2].yaml"}', 1)
    job = cli.write_job(text, name="job[eu].yaml")

    assert "job[eu].yaml: valid job erp-to-shop" in cli.run("validate", job.name, check=True).stdout
    bad = cli.run("validate", str(cli.write_job(text.replace("name: erp-to-shop", "name: Erp[1]"), name="bad.yaml")))
    assert bad.returncode == 2
    assert "String should match pattern" not in bad.stderr
    assert "must match pattern '^[a-z0-9][a-z0-9_-]{0,62}$', got 'Erp[1]'" in bad.stderr

    migrated = cli.run("migrate", job.name, timeout=120, check=True)
    assert "see `kanal dlq job[eu].yaml show`" in migrated.stdout
    shown = cli.run("dlq", job.name, "show", "--limit", "1", check=True)
    assert "prices[v2].yaml: customer_no is required" in shown.stdout, shown.stdout

    cli.env["SHOP_DSN"] = dbs.shop.replace("/shop_", "/missing[1]_")
    checked = cli.run("check", job.name)
    assert checked.returncode == 1
    assert "FAIL  sink shop (postgres)" in checked.stdout and 'database "missing[1]_' in checked.stdout
    failed = cli.run("migrate", job.name, timeout=120)
    assert failed.returncode == 1
    assert 'database "missing[1]_' in failed.stderr, failed.stderr


# 2. secrets -------------------------------------------------------------------


def test_only_real_secrets_are_redacted(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    env.setenv("ERP_DSN", "postgresql://kanal:Dsn-Pa55@127.0.0.1:1/erp")
    env.setenv("TBL", "erp_table_from_env")
    env.setenv("KAFKA_PW", "Kafka-Pa55")
    job = write(
        tmp_path,
        """
        name: secrets
        kafka: {bootstrap_servers: "localhost:1", sasl.username: "user_from_env", sasl.password: "${KAFKA_PW}"}
        source: {connector: postgres, config: {dsn: "${ERP_DSN}"}, entities: {products: {table: "${TBL}"}}}
        sinks: [{name: shop, connector: postgres, config: {dsn: "${SHOP_DSN}"}, entities: {products: {table: t}}}]
        """,
    )
    load_job(job)
    message = redact("table public.erp_table_from_env does not exist; Dsn-Pa55 Kafka-Pa55 user_from_env")
    assert message == "table public.erp_table_from_env does not exist; *** *** user_from_env"


def test_secret_fields_are_found_by_type_and_by_name() -> None:
    class Config(BaseModel):
        dsn: SecretStr
        access_token: str
        token_url: str
        nested: dict[str, str]

    register_secrets(Config(dsn="host=db password='Kv-Pa55' user=x", access_token="shpat_Tok3n", token_url="https://auth.example/token",
                            nested={"client_secret": "Cl1ent-S3cret", "region": "eu-west"}))
    assert redact("Kv-Pa55 shpat_Tok3n Cl1ent-S3cret https://auth.example/token eu-west") == (
        "*** *** *** https://auth.example/token eu-west"
    )


# 3, 4. job-file problems worded for people, at their place --------------------


def test_union_member_names_never_show_and_typos_get_a_suggestion(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    text = erp.job().replace("products: {table: erp_products}", "products: {table: erp_products, delta: cdcx}", 1)
    text = text.replace("prices: {table: erp_prices}", "prices: {table: erp_prices, delta: {cursr: updated_at}}", 1)
    found = problems(write(tmp_path, text))
    assert found == [
        "job.yaml:9: source.entities.products.delta: must be 'cdc' or 'files' or a mapping (key: value), got 'cdcx'",
        "job.yaml:10: source.entities.prices.delta.cursor: required key is missing",
        "job.yaml:10: source.entities.prices.delta.cursr: unknown key 'cursr' (known: cursor, overlap_s, poll_s); "
        "did you mean 'cursor'?",
    ]


def test_a_problem_is_reported_at_its_own_line(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    text = erp.job().replace("    prices: {table: erp_prices}\n", "", 1).replace("policy: dlq", "polcy: dlq")
    found = problems(write(tmp_path, text))
    assert found == [
        "job.yaml:16: sinks[0].entities.prices: sink 'shop' wants 'prices', which the source does not provide "
        "(source entities: products)",
        "job.yaml:18: errors.polcy: unknown key 'polcy' (known: policy, retry); did you mean 'policy'?",
    ]


def test_a_validator_complaining_about_one_key_points_at_that_key(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    found = problems(write(tmp_path, erp.job().replace("bootstrap_servers: embedded", "bootstrap_server: embedded")))
    assert len(found) == 1
    assert found[0].startswith("job.yaml:4: kafka.bootstrap_server: unknown setting 'bootstrap_server' (known: ")
    assert found[0].endswith("did you mean 'bootstrap_servers'?")


# 5. a connector package that fails to import -----------------------------------


@pytest.fixture
def broken_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution `brokenconn` whose connector module cannot import."""
    site = tmp_path / "site"
    info = site / "brokenconn-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenconn\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kanal.connectors]\nbroken = brokenconn:CONNECTOR\n")
    (site / "brokenconn.py").write_text("import kanal_test_module_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(site))
    registry._discover.cache_clear()
    yield site
    registry._discover.cache_clear()


def test_a_plugin_that_fails_to_import_is_named_once_and_breaks_only_its_jobs(
    broken_plugin: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="kanal.registry"):
        assert "postgres" in registry.installed() and "broken" not in registry.installed()
        registry.installed()
    warnings = [r.getMessage() for r in caplog.records if r.name == "kanal.registry"]
    assert len(warnings) == 1
    assert "connector 'broken' (package brokenconn 0.1" in warnings[0]
    assert "No module named 'kanal_test_module_that_does_not_exist'" in warnings[0]
    with pytest.raises(ConfigError, match=r"connector 'broken' \(package brokenconn 0.1, brokenconn:CONNECTOR\) cannot "
                                          r"be loaded: ModuleNotFoundError: No module named"):
        registry.get("broken")


def test_the_cli_runs_jobs_beside_a_broken_plugin(cli, broken_plugin: Path) -> None:
    cli.env["PYTHONPATH"] = str(broken_plugin)
    other = cli.run("validate", str(cli.write_job(erp.job())), check=True)
    assert other.stderr.count("package brokenconn 0.1") == 1 and "Traceback" not in other.stderr
    uses = cli.run("validate", str(cli.write_job(erp.job().replace("connector: postgres", "connector: broken", 1))))
    assert uses.returncode == 2 and "Traceback" not in uses.stderr
    assert "job.yaml:6: source.connector: connector 'broken' (package brokenconn 0.1" in uses.stderr
    assert "No module named 'kanal_test_module_that_does_not_exist'" in uses.stderr


# 6. mapping files are checked by validate ---------------------------------------


def test_validate_reports_every_problem_of_mapping_files_with_lines(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    write(tmp_path, "entity: prices\nfields:\n  amount: {frm: amt}\n  currency: {from: cur, cast: money}\n", "prices.yaml")
    text = erp.job().replace("prices: {table: erp_prices}", "prices: {table: erp_prices, mapping: prices.yaml}", 1)
    found = problems(write(tmp_path, text.replace("policy: dlq", "policy: ignore")))
    assert found[0] == "job.yaml:19: errors.policy: must be 'dlq' or 'fail', got 'ignore'"
    mapping = [p.removeprefix(str(tmp_path) + "/") for p in found[1:]]
    assert mapping[0].startswith("prices.yaml:3: fields.amount: unknown key 'frm' ") and "did you mean 'from'?" in mapping[0]
    assert "prices.yaml:4: fields.currency.cast: unknown cast 'money'" in mapping[-1]


# 7. .env and $${ ---------------------------------------------------------------


def test_dotenv_beside_the_job_file_and_escaped_dollars(tmp_path: Path, env: pytest.MonkeyPatch) -> None:
    env.delenv("ERP_DSN")
    env.setenv("TBL", "from_environment")
    (tmp_path / ".env").write_text("# values for the job\nERP_DSN=postgresql://kanal@127.0.0.1:1/from_dotenv\nTBL=from_dotenv\n")
    text = erp.job().replace("products: {table: erp_products}", "products: {table: \"${TBL}\", where: \"note <> '$${X}'\"}", 1)
    loaded = load_job(write(tmp_path, text))
    assert "from_dotenv" in loaded.source_config.dsn.get_secret_value()  # type: ignore[attr-defined]
    options = loaded.source_entities["products"].options
    assert options.table == "from_environment"  # type: ignore[attr-defined]
    assert options.where == "note <> '${X}'"  # type: ignore[attr-defined]


# 8. settings refused while running, and the exit codes ------------------------


def test_settings_a_system_refuses_exit_2_at_their_place(cli, dbs) -> None:
    job = cli.write_job(erp.job())
    missing = cli.run("migrate", str(job), timeout=120)
    assert missing.returncode == 2, missing.stderr
    assert "job.yaml:9: source.entities.products: postgres" in missing.stderr
    assert "table public.erp_products does not exist" in missing.stderr

    erp.seed(dbs.erp_sql, products=5, customers=1)
    text = erp.job().replace("products: {table: erp_products}", "products: {table: erp_products, where: \"sku ==\"}", 1)
    bad_where = cli.run("migrate", str(cli.write_job(text)), timeout=120)
    assert bad_where.returncode == 2, bad_where.stderr
    assert "job.yaml:9: source.entities.products: postgres" in bad_where.stderr
    assert "where: 'sku ==' is not a filter PostgreSQL accepts on public.erp_products: syntax error" in bad_where.stderr

    state = StateStore(job.parent / ".kanal" / "erp-to-shop").acquire()
    try:
        locked = cli.run("migrate", str(cli.write_job(erp.job())), timeout=120)
    finally:
        state.release()
    assert locked.returncode == 2, locked.stderr
    assert "job 'erp-to-shop': its state" in locked.stderr and "is in use by another kanal process" in locked.stderr


def test_a_setting_refused_while_running_gets_its_place_on_the_source_or_a_sink(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    loaded = load_job(write(tmp_path, erp.job()))
    for sink, place in ((None, "job.yaml:9: source.entities.products"), ("shop", "job.yaml:16: sinks[0].entities.products")):
        with pytest.raises(ConfigError) as info, loaded.at("products", sink=sink):
            raise ConfigError("postgres: table public.x does not exist")
        assert info.value.message == f"{place}: postgres: table public.x does not exist"


def test_help_lists_the_exit_codes() -> None:
    from click.testing import CliRunner

    from kanal.cli import main

    text = CliRunner().invoke(main, ["--help"]).output
    for code in ("0    success", "1    the run failed", "2    the job file", "130  interrupted"):
        assert code in text
