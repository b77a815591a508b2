"""Malformed job files: one message per problem naming file, line, path and problem; exit 2; no traceback."""

from __future__ import annotations

import pytest

from tests import erp


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("connector: postgres\n  config", "connector: postgress\n  config", 1),
         "job.yaml:6: source.connector: unknown connector 'postgress' (installed: files, postgres, "),
        (lambda t: t.replace("connector: postgres\n  config", "connector: postgress\n  config", 1), "did you mean 'postgres'?"),
        (lambda t: t.replace("  - name: shop\n", "  - label: shop\n"), "sinks[0].name: required key is missing"),
        (lambda t: t.replace("prices: {table: erp_prices}", "prices: {table: erp_prices, chunk_rows: lots}"),
         "job.yaml:10: source.entities.prices.chunk_rows: must be a valid integer, unable to parse string as an integer, got 'lots'"),
        (lambda t: t.replace("policy: dlq", "policy: ignore"), "job.yaml:19: errors.policy: must be 'dlq' or 'fail', got 'ignore'"),
        (lambda t: t.replace("prices: {table: erp_prices}", "price: {table: erp_prices}"),
         "job.yaml:10: source.entities.price: unknown entity 'price' (known: customers, products, prices, "),
        (lambda t: t.replace("prices: {table: erp_prices}", "price: {table: erp_prices}"), "did you mean 'prices'?"),
        (lambda t: t.replace("prices: {table: erp_prices}", "prices: {table: [erp_prices"), "job.yaml:11:6: invalid YAML: expected ',' or ']'"),
        (lambda t: t.replace("${SHOP_DSN}", "${NOT_SET_ANYWHERE}"),
         "job.yaml:14: sinks[0].config.dsn: environment variable NOT_SET_ANYWHERE is not set"),
        (lambda t: t.replace("config: {dsn: \"${ERP_DSN}\"}", "config: {dsn: \"${ERP_DSN}\", pasword: x}"),
         "job.yaml:7: source.config.pasword: unknown key 'pasword' (known: dsn, "),
    ],
)
def test_bad_job_file_is_explained(cli, edit, expected) -> None:
    job = cli.write_job(edit(erp.job()))
    for command in ("validate", "migrate"):
        proc = cli.run(command, str(job), timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_valid_job_file_validates(cli) -> None:
    proc = cli.run("validate", str(cli.write_job(erp.job())), check=True)
    assert "valid job erp-to-shop" in proc.stdout


def test_missing_job_file(cli) -> None:
    proc = cli.run("migrate", "nope.yaml")
    assert proc.returncode == 2 and "cannot read job file nope.yaml" in proc.stderr


def test_secrets_from_the_environment_never_show(cli, dbs) -> None:
    env_secret = "postgresql://kanal:Sup3rS3cret@127.0.0.1:1/x"
    cli.env["SHOP_DSN"] = env_secret
    erp.seed(dbs.erp_sql, products=5)
    text = erp.job().replace("policy: dlq", "policy: dlq\n  retry: {max_elapsed_s: 1}")
    proc = cli.run("migrate", str(cli.write_job(text)), timeout=120)
    assert proc.returncode == 1
    assert "Sup3rS3cret" not in proc.stderr + proc.stdout
    assert "127.0.0.1" in proc.stderr


def test_a_delta_kind_the_connector_cannot_read_is_a_job_file_error(cli) -> None:
    (cli.folder / "in").mkdir()
    job = cli.write_job(
        """
        name: drop
        kafka: {bootstrap_servers: embedded}
        source:
          connector: files
          config: {path: in}
          entities:
            stock_levels: {delta: cdc}
        sinks:
          - name: out
            connector: files
            config: {path: out}
            entities:
              stock_levels: {}
        """
    )
    proc = cli.run("validate", str(job), timeout=60)
    assert proc.returncode == 2
    assert "source.entities.stock_levels.delta: connector 'files' cannot read delta: cdc (it reads: files)" in proc.stderr


def test_an_entity_the_connector_does_not_offer_is_a_job_file_error(tmp_path, monkeypatch) -> None:
    import dataclasses

    from kanal.core import registry
    from kanal.core.errors import ConfigError
    from kanal.jobs.load import load_job

    files = registry.get("files")
    narrow = dataclasses.replace(files, capabilities=dataclasses.replace(files.capabilities, entities=("stock_levels",)))
    monkeypatch.setattr(registry, "get", lambda name: narrow if name == "files" else files)
    (tmp_path / "in").mkdir()
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: drop\nkafka: {bootstrap_servers: embedded}\n"
        "source: {connector: files, config: {path: in}, entities: {prices: {}}}\n"
        "sinks: [{name: out, connector: files, config: {path: out}, entities: {prices: {}}}]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_job(job)
    assert "source.entities.prices: connector 'files' does not handle prices (it handles: stock_levels)" in err.value.message
