from kanal.core.errors import ConfigError, ConnectorError, redact, register_secret


def test_registered_secrets_and_dsn_passwords_never_appear() -> None:
    register_secret("s3cr3t-token")
    err = ConnectorError("postgres db", "failed for postgresql://bob:hunter2@db/x with s3cr3t-token and password=abc")
    assert "hunter2" not in str(err) and "s3cr3t-token" not in str(err) and "abc" not in str(err)
    assert redact("host=db password='p w' user=x") == "host=db password=*** user=x"


def test_config_error_lists_every_problem() -> None:
    err = ConfigError("invalid job file job.yaml", ["job.yaml:3: name: bad", "job.yaml:9: sinks: empty"])
    assert err.message.splitlines() == ["invalid job file job.yaml", "  - job.yaml:3: name: bad", "  - job.yaml:9: sinks: empty"]
